"""Pretraining objectives on one :class:`TransformerEncoder`: BERT, UNILM and GPT.

* :class:`BertForPretraining` — masked LM + next-sentence prediction (Devlin et al. 2019).
* :class:`UnifiedLM` — UNILM (Dong et al. 2019, arXiv 1905.03197): the same encoder and MLM
  head trained under four self-attention masks picked per sample by the collator
  (``attn_mode``, ``src_len``, ``seq_len``); MLM loss over masked tokens of every mode, NSP
  only for bidirectional samples; segment ids also mark the mode (``type_vocab_size`` 6).
* :class:`CausalLM` — GPT-style next-token prediction with the left-to-right mask; labels come
  already shifted from the collator (``loss = CE(logits[:, t], labels[:, t])``).

Every model takes the collator's batch as keyword arguments (``model(**batch)``) and returns a
:class:`PretrainingOutput` whose ``loss`` is ready for ``backward()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import BIDIRECTIONAL, LEFT_TO_RIGHT, _on
from .checkpoint import (
    HEAD_NAMES,
    hf_to_unimask,
    normalize_hf_names,
    read_state_dict,
    save_safetensors,
    unimask_to_hf,
    write_config,
)
from .config import EncoderConfig
from .encoder import TransformerEncoder
from .heads import IGNORE_INDEX, MLMHead, gather_labelled

__all__ = [
    "PretrainingOutput",
    "BertForPretraining",
    "UnifiedLM",
    "CausalLM",
    "UNILM_SEGMENTS",
    "extend_token_types",
]

#: Segment ids of UNILM's released code (microsoft/unilm ``s2s-ft``/v1 ``new_segment_ids``):
#: bidirectional A/B, left-to-right, right-to-left, seq2seq source/target.
UNILM_SEGMENTS = {"bi_a": 0, "bi_b": 1, "l2r": 2, "r2l": 3, "s2s_src": 4, "s2s_tgt": 5}


@dataclass
class PretrainingOutput:
    """Loss and the predictions behind it (only labelled positions, to keep memory small).

    ``mlm_logits [N, V]`` / ``mlm_labels [N]`` are the predicted positions (masked tokens for
    MLM, next tokens for the causal LM); ``nsp_logits [B, 2]`` when the model has an NSP head.
    """

    loss: torch.Tensor | None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    mlm_labels: torch.Tensor | None = None
    nsp_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


def _mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # a batch without any label gives a zero loss that still depends on the graph (DDP-safe)
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels)


def extend_token_types(weight: torch.Tensor, type_vocab_size: int) -> torch.Tensor:
    """Grow a BERT token-type table (2 rows) to UNILM's 6 segment ids.

    unimask's choice (documented in docs/models.md): the new left-to-right, right-to-left and
    seq2seq-source rows start as a copy of segment A (row 0), the seq2seq-target row as a copy
    of segment B (row 1); a pretrained bidirectional model thus starts from BERT's behaviour.
    """
    n = weight.shape[0]
    if type_vocab_size <= n:
        return weight[:type_vocab_size].clone()
    rows = [weight[i] if i < n else weight[min(n - 1, 1 if i == UNILM_SEGMENTS["s2s_tgt"] else 0)]
            for i in range(type_vocab_size)]
    return torch.stack(rows).clone()


class _EncoderWithLMHead(nn.Module):
    """Encoder + tied MLM head (+ optional NSP head); HF BertForPreTraining checkpoints."""

    has_nsp = True
    #: Batch fields the forward reads only on the host (the mask integers and the attention
    #: mask, validated there and then copied to the device by the model itself, without
    #: waiting; the embedding indices ``input_ids`` / ``token_type_ids`` / ``position_ids``,
    #: range-checked there by :meth:`unimask.models.encoder.Embeddings.check_inputs` and copied the
    #: same way; the MLM ``labels``, whose labelled positions are found there:
    #: :func:`unimask.models.heads.gather_labelled`) or not at all (the packing collator's
    #: per-row counts, ``doc_lengths``): :class:`unimask.training.Trainer` leaves them on the
    #: CPU, so neither validating them nor selecting the predicted positions needs a device
    #: synchronisation.
    host_batch_keys = frozenset({"attn_mode", "src_len", "seq_len", "cu_seqlens", "attention_mask", "labels",
                                 "num_documents", "num_tokens", "doc_lengths",
                                 "input_ids", "token_type_ids", "position_ids"})

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if self.has_nsp and not config.add_pooler:
            raise ValueError(f"{type(self).__name__} needs the pooler (config.add_pooler=True) for NSP")
        self.config = config
        self.encoder = TransformerEncoder(config)
        self.mlm = MLMHead(config)
        self.nsp = nn.Linear(config.hidden_size, 2) if self.has_nsp else None
        self.mlm.apply(self.encoder._init_weights)
        if self.nsp is not None:
            self.encoder._init_weights(self.nsp)

    # -- checkpoints (HF BertForPreTraining layout: bert.* + cls.*) -------------------------
    @classmethod
    def from_pretrained(cls, directory: str | Path, config: EncoderConfig | None = None,
                        type_vocab_size: int | None = None):
        """Load an HF BERT checkpoint; heads present in it (``cls.*``) are loaded too, missing
        heads are freshly initialised. ``type_vocab_size`` > the checkpoint's grows the
        segment table with :func:`extend_token_types`."""
        directory = Path(directory)
        if config is None:
            config = EncoderConfig.from_json_file(directory / "config.json")
        sd = normalize_hf_names(read_state_dict(directory))
        if "pooler.dense.weight" not in sd and not cls.has_nsp:
            config.add_pooler = False
        ours, missing = hf_to_unimask(sd, config, prefix="encoder.")
        if missing:
            raise ValueError(f"checkpoint {directory} is missing {len(missing)} encoder weights: {missing}")
        key = "encoder.embeddings.token_type.weight"
        if type_vocab_size is not None and type_vocab_size != config.type_vocab_size:
            ours[key] = extend_token_types(ours[key], type_vocab_size)
            config.type_vocab_size = type_vocab_size
        for name, hf in HEAD_NAMES.items():
            if hf in sd and (cls.has_nsp or not name.startswith("nsp.")):
                ours[name] = sd[hf]
        model = cls(config)
        own = model.state_dict()
        for name, t in ours.items():
            if own[name].shape != t.shape:
                raise ValueError(f"checkpoint tensor {name} has shape {tuple(t.shape)}, expected {tuple(own[name].shape)}")
        model.load_state_dict(ours, strict=False)
        return model

    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` in HF ``BertForPreTraining`` layout."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sd = self.state_dict()
        out = {"bert." + k: v for k, v in unimask_to_hf(sd, self.config, prefix="encoder.").items()}
        for name, hf in HEAD_NAMES.items():
            if name in sd:
                out[hf] = sd[name]
        out["cls.predictions.decoder.weight"] = sd["encoder.embeddings.word.weight"]
        out["cls.predictions.decoder.bias"] = sd["mlm.bias"]
        write_config(self.config, directory, ["BertForPreTraining"])
        save_safetensors(out, directory / "model.safetensors")

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states ``[..., H]`` (MLM head with the tied decoder)."""
        return self.mlm(hidden, self.encoder.embeddings.word.weight)

    def _mlm(self, hidden: torch.Tensor, labels: torch.Tensor | None):
        if labels is None:
            return None, None, None
        h, y = gather_labelled(hidden, labels)
        logits = self.lm_logits(h)
        return _mean_ce(logits, y), logits, y


class BertForPretraining(_EncoderWithLMHead):
    """BERT pretraining: masked LM (tied decoder) + next-sentence prediction on the pooler.

    ``model(input_ids, token_type_ids, attention_mask, labels, next_sentence_label, seq_len)``;
    ``loss = mlm_loss + nsp_loss`` (NSP term only when ``next_sentence_label`` is given).

    Packed rows (``cu_seqlens``, :class:`unimask.packing.PackingCollator`): with ``doc_starts``
    (the flattened position of each sample's ``[CLS]``) the NSP logits are one per sample, taken
    at its own ``[CLS]``, and ``next_sentence_label`` is per sample in the same order; each
    sample's mode is read from the document that starts there.
    """

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                next_sentence_label: torch.Tensor | None = None, seq_len: torch.Tensor | None = None,
                attn_mode: torch.Tensor | None = None, src_len: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                doc_starts: torch.Tensor | None = None, **unused: torch.Tensor) -> PretrainingOutput:
        out = self.encoder(input_ids, token_type_ids, attention_mask, attn_mode, src_len, seq_len=seq_len,
                           cu_seqlens=cu_seqlens, position_ids=position_ids)
        mlm_loss, logits, y = self._mlm(out.last_hidden_state, labels)
        pooled, sample_mode = out.pooler_output, attn_mode
        if cu_seqlens is not None:  # packed rows: one [CLS] per sample, wherever its document starts
            if doc_starts is None:
                if next_sentence_label is not None:
                    raise ValueError("packed rows with next_sentence_label need doc_starts (unimask.packing.PackingCollator)")
                pooled = None
            else:
                starts = _on(doc_starts, out.last_hidden_state.device)
                pooled = self.encoder.pooled_at(out.last_hidden_state, starts)
                if attn_mode is not None:  # the document starting at each sample's [CLS]
                    cu = _on(cu_seqlens, starts.device)
                    sample_mode = _on(attn_mode, starts.device)[torch.searchsorted(cu[1:], starts, right=True)]
        nsp_logits = self.nsp(pooled) if pooled is not None else None
        nsp_loss = None
        if next_sentence_label is not None:
            nsp_label = self._nsp_labels(next_sentence_label, sample_mode)
            # the mean over labelled samples, written as sum / count so that no device value is
            # read (whether any sample is labelled): 0 (still on the graph) when none is
            scored = (nsp_label != IGNORE_INDEX).sum().clamp(min=1)
            nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_label, ignore_index=IGNORE_INDEX,
                                       reduction="sum") / scored
        losses = [t for t in (mlm_loss, nsp_loss) if t is not None]
        loss = sum(losses) if losses else None
        return PretrainingOutput(loss, mlm_loss, nsp_loss, logits, y, nsp_logits, out.last_hidden_state)

    def _nsp_labels(self, label: torch.Tensor, attn_mode: torch.Tensor | None) -> torch.Tensor:
        return label.long()


class UnifiedLM(BertForPretraining):
    """UNILM: one shared encoder under four masks, mixed per sample within a batch.

    The collator sends ``attn_mode`` (0 bidirectional, 1 left-to-right, 2 right-to-left,
    3 seq2seq), ``src_len`` and ``seq_len``; they go unchanged to every attention call. The MLM
    loss covers masked tokens of every mode (arXiv 1905.03197 sec. 2.3); the NSP loss only
    bidirectional samples (sec. 2.4) — ``next_sentence_label`` of other modes is ignored even
    if the collator set one.
    """

    def _nsp_labels(self, label: torch.Tensor, attn_mode: torch.Tensor | None) -> torch.Tensor:
        label = label.long()
        if attn_mode is None:
            return label
        return torch.where(_on(attn_mode, label.device) == BIDIRECTIONAL, label,
                           torch.full_like(label, IGNORE_INDEX))

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: EncoderConfig | None = None,
                        type_vocab_size: int | None = 6):
        """Load a BERT checkpoint, growing its segment table to UNILM's 6 ids by default."""
        return super().from_pretrained(directory, config, type_vocab_size)

    def generate(self, *args, **kwargs):
        """Seq2seq generation; see :func:`unimask.models.generation.generate_unilm`."""
        from .generation import generate_unilm  # noqa: PLC0415

        return generate_unilm(self, *args, **kwargs)


class CausalLM(_EncoderWithLMHead):
    """GPT-style LM: the encoder under the left-to-right mask, next-token loss.

    ``labels`` are already shifted by the collator (``labels[:, t]`` is the token after
    ``input_ids[:, t]``; -100 where there is none). ``attn_mode`` is forced to left-to-right.
    """

    has_nsp = False

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, seq_len: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **unused: torch.Tensor) -> PretrainingOutput:
        B = input_ids.shape[0]
        mode = torch.full((B,), LEFT_TO_RIGHT, dtype=torch.int64)  # on the host: validated without a device read
        out = self.encoder(input_ids, token_type_ids, attention_mask, mode, None, seq_len=seq_len)
        loss, logits, y = self._mlm(out.last_hidden_state, labels)
        return PretrainingOutput(loss, loss, None, logits, y, None, out.last_hidden_state)

    def logits(self, input_ids: torch.Tensor, seq_len: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits ``[B, L, V]`` at every position (for scoring and tests)."""
        B = input_ids.shape[0]
        mode = torch.full((B,), LEFT_TO_RIGHT, dtype=torch.int64)  # on the host: validated without a device read
        return self.lm_logits(self.encoder(input_ids, attn_mode=mode, seq_len=seq_len).last_hidden_state)

    def generate(self, *args, **kwargs):
        """Continue prompts; see :func:`unimask.models.generation.generate_causal`."""
        from .generation import generate_causal  # noqa: PLC0415

        return generate_causal(self, *args, **kwargs)
