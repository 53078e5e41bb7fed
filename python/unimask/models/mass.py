"""MASS: masked sequence-to-sequence pretraining (Song et al. 2019, arXiv 1905.02450).

The encoder (a :class:`TransformerEncoder`, bidirectional) reads the sentence with one
contiguous span masked; the decoder reads the span shifted right, each token at its *original*
position (``decoder_positions``), attends causally over the span only and to the encoder
output through cross-attention, and predicts the span (``decoder_labels``). Encoder and decoder
share the embedding tables, and the output projection is tied to the word embeddings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import LEFT_TO_RIGHT, _check_integers, _on, check_batch_len, to_host
from .checkpoint import (
    hf_to_unimask,
    normalize_hf_names,
    read_state_dict,
    save_safetensors,
    unimask_to_hf,
    write_config,
)
from .config import EncoderConfig
from .encoder import KVCache, SelfAttention, TransformerEncoder, activation, run_layer
from .heads import MLMHead, gather_labelled
from .pretraining import PretrainingOutput, _mean_ce

__all__ = ["MassSeq2Seq", "CrossAttention", "DecoderLayer"]


class CrossAttention(nn.Module):
    """Decoder queries over encoder keys/values; key ``j`` visible when ``j < enc_len[b]``.
    A row with an empty source (``enc_len[b] = 0``) sees no key and gets a zero context (no
    NaN), as padded query rows do in :func:`unimask.attention.unified_attention`."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.num_attention_heads, config.head_dim
        self.q = nn.Linear(config.hidden_size, config.hidden_size)
        self.kv = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def memory(self, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, H, Le, D]`` of the encoder output (computed once per source)."""
        B, Le, C = enc.shape
        k, v = self.kv(enc).split(C, dim=2)
        return (k.view(B, Le, self.n_head, self.head_dim).transpose(1, 2),
                v.view(B, Le, self.n_head, self.head_dim).transpose(1, 2))

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor], enc_len: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        k, v = memory
        q = self.q(x).view(B, L, self.n_head, self.head_dim).transpose(1, 2)
        visible = torch.arange(k.shape[2], device=x.device)[None, :] < enc_len[:, None]  # [B, Le]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        row_any = visible.any(dim=-1)[:, None, None, None]  # [B, 1, 1, 1]: any key at all
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf")).masked_fill(~row_any, 0.0)
        probs = torch.softmax(scores, dim=-1) * row_any
        if self.training and self.dropout_p > 0:
            probs = F.dropout(probs, self.dropout_p)
        return self.proj((probs @ v).transpose(1, 2).reshape(B, L, C))


class DecoderLayer(nn.Module):
    """Post-LN decoder block: causal self-attention, cross-attention, GELU MLP."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(config)
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross = CrossAttention(config)
        self.ln_cross = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.hidden_dropout_prob)
        self.act = activation(config.hidden_act)

    def forward(self, x, dec_len, memory, enc_len, cache=None, slots=None):
        B = x.shape[0]
        mode = torch.full((B,), LEFT_TO_RIGHT, dtype=torch.int64, device=x.device)
        zero = torch.zeros_like(mode)
        x = self.ln1(x + self.drop(self.self_attn(x, mode, zero, dec_len, cache, slots)))
        x = self.ln_cross(x + self.drop(self.cross(x, memory, enc_len)))
        return self.ln2(x + self.drop(self.fc2(self.act(self.fc1(x)))))


@dataclass
class _Memory:
    enc_len: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]

    def reorder(self, index: torch.Tensor) -> None:
        self.enc_len = self.enc_len.index_select(0, index)
        self.kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv]


def _check_decoder_len(decoder_len, B: int, Ld: int) -> torch.Tensor:
    """``decoder_len`` as a tensor, after checking it holds ``B`` integers in ``[0, Ld]``
    (``TypeError``/``ValueError`` naming the value); the values are read on the host: no device
    read for a CPU tensor, one transfer for a device one (:func:`unimask.masks.to_host`)."""
    decoder_len = torch.as_tensor(decoder_len)
    _check_integers("decoder_len", decoder_len)
    check_batch_len("decoder_len", decoder_len, B, "decoder_input_ids has B = {} rows")
    (host,) = to_host(decoder_len)
    bad = (host < 0) | (host > Ld)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise ValueError(f"decoder_len[{b}] = {int(host[b])} is outside [0, {Ld}] (decoder_input_ids has {Ld} columns)")
    return decoder_len


def _decoder_lengths(decoder_len, B: int, Ld: int, device: torch.device, validate: bool = True) -> torch.Tensor:
    """``decoder_len`` (default: ``Ld`` for every row, made on the host) as int64 on ``device``,
    validated (:func:`_check_decoder_len`) unless ``validate`` is off; a CPU tensor is checked on
    the host and copied over without waiting: no device synchronisation."""
    if decoder_len is None:
        decoder_len = torch.full((B,), Ld, dtype=torch.int64)
    if validate:
        decoder_len = _check_decoder_len(decoder_len, B, Ld)
    return _on(decoder_len, device).long()


class MassSeq2Seq(nn.Module):
    """Encoder-decoder for MASS; ``model(**batch)`` with the MASS collator's batch.

    Batch: ``input_ids``, ``attention_mask``/``seq_len`` (encoder), ``decoder_input_ids``,
    ``decoder_positions`` (original positions of the span), ``decoder_labels`` (-100 padding),
    ``decoder_len``. Loss: mean cross-entropy over the span tokens.
    """

    #: Batch fields the forward reads only on the host (validated there, or the labelled
    #: positions found there, then copied to the device without waiting; the embedding indices
    #: range-checked there by :meth:`unimask.models.encoder.Embeddings.check_inputs`):
    #: :class:`unimask.training.Trainer` leaves them on the CPU, so the forward needs no device
    #: synchronisation (see ``_EncoderWithLMHead.host_batch_keys``).
    host_batch_keys = frozenset({"attention_mask", "seq_len", "decoder_len", "decoder_labels",
                                 "input_ids", "token_type_ids", "decoder_input_ids", "decoder_positions"})

    def __init__(self, config: EncoderConfig, num_decoder_layers: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = TransformerEncoder(config)
        n = config.num_hidden_layers if num_decoder_layers is None else num_decoder_layers
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(n))
        self.lm = MLMHead(config)
        self.decoder.apply(self.encoder._init_weights)
        self.lm.apply(self.encoder._init_weights)
        #: activation checkpointing of the decoder's layers (:meth:`gradient_checkpointing_enable`)
        self.gradient_checkpointing = False

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing of every encoder and decoder layer
        (:meth:`TransformerEncoder.gradient_checkpointing_enable`); not in incremental decoding."""
        self.gradient_checkpointing = True
        self.encoder.gradient_checkpointing_enable()

    def gradient_checkpointing_disable(self) -> None:
        """Keep every layer's activations again (the default)."""
        self.gradient_checkpointing = False
        self.encoder.gradient_checkpointing_disable()

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm(hidden, self.encoder.embeddings.word.weight)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               seq_len: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> _Memory:
        """Run the encoder once and precompute every decoder layer's cross-attention keys/values."""
        out = self.encoder(input_ids, token_type_ids, attention_mask, seq_len=seq_len)
        if seq_len is None:
            seq_len = (attention_mask.sum(1) if attention_mask is not None
                       else torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device))
        enc = out.last_hidden_state
        return _Memory(_on(seq_len, enc.device).long(), [layer.cross.memory(enc) for layer in self.decoder])

    def decode(self, memory: _Memory, decoder_input_ids: torch.Tensor, decoder_positions: torch.Tensor,
               decoder_len: torch.Tensor | None = None, cache: KVCache | None = None,
               slots: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder hidden states ``[B, Ld, H]``. With ``cache`` + ``slots`` (step index per
        token) it decodes incrementally; without, the whole span at once (causal)."""
        # the indices validated once here (CPU ones on the host, then sent to the model's device)
        emb = self.encoder.embeddings
        decoder_input_ids, _, decoder_positions = emb.check_inputs(
            decoder_input_ids, None, decoder_positions, names=("decoder_input_ids", "token_type_ids", "decoder_positions"))
        B, Ld = decoder_input_ids.shape
        # validated once here (not in incremental decoding); the decoder layers skip per-layer checks
        decoder_len = _decoder_lengths(decoder_len, B, Ld, decoder_input_ids.device, validate=slots is None)
        x = emb(decoder_input_ids, None, decoder_positions, checked=True)
        for i, layer in enumerate(self.decoder):
            c = (cache.k[i], cache.v[i]) if cache is not None else None
            x = run_layer(layer, self.gradient_checkpointing and cache is None,
                          x, decoder_len, memory.kv[i], memory.enc_len, c, slots)
        return x

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                decoder_positions: torch.Tensor, attention_mask: torch.Tensor | None = None,
                seq_len: torch.Tensor | None = None, decoder_labels: torch.Tensor | None = None,
                decoder_len: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                **unused: torch.Tensor) -> PretrainingOutput:
        if decoder_input_ids.shape != decoder_positions.shape:
            raise ValueError(
                f"decoder_positions shape {tuple(decoder_positions.shape)} must equal "
                f"decoder_input_ids shape {tuple(decoder_input_ids.shape)}"
            )
        memory = self.encode(input_ids, attention_mask, seq_len, token_type_ids)
        hidden = self.decode(memory, decoder_input_ids, decoder_positions, decoder_len)
        loss = logits = y = None
        if decoder_labels is not None:
            h, y = gather_labelled(hidden, decoder_labels)
            logits = self.lm_logits(h)
            loss = _mean_ce(logits, y)
        return PretrainingOutput(loss, loss, None, logits, y, None, hidden)

    # -- checkpoints: encoder in HF BERT names (loadable by transformers.BertModel), decoder
    # and LM head under their unimask names -------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` (+ ``num_decoder_layers``) and ``model.safetensors``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sd = self.state_dict()
        out = unimask_to_hf(sd, self.config, prefix="encoder.")
        out.update({k: v for k, v in sd.items() if k.startswith(("decoder.", "lm."))})
        write_config(self.config, directory, ["MassSeq2Seq"])
        cfg = json.loads((directory / "config.json").read_text())
        cfg["unimask"]["num_decoder_layers"] = len(self.decoder)
        (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        save_safetensors(out, directory / "model.safetensors")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MassSeq2Seq:
        """Load what :meth:`save_pretrained` wrote (strict)."""
        directory = Path(directory)
        raw = json.loads((directory / "config.json").read_text())
        config = EncoderConfig.from_dict(raw)
        sd = normalize_hf_names(read_state_dict(directory))
        ours, missing = hf_to_unimask(sd, config, prefix="encoder.")
        if missing:
            raise ValueError(f"checkpoint {directory} is missing {len(missing)} encoder weights: {missing}")
        ours.update({k: v for k, v in sd.items() if k.startswith(("decoder.", "lm."))})
        model = cls(config, raw.get("unimask", {}).get("num_decoder_layers"))
        model.load_state_dict(ours, strict=True)
        return model

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.encoder.embeddings.word.weight
        c = self.config
        return KVCache(len(self.decoder), batch, c.num_attention_heads, max_len, c.head_dim, p.dtype, p.device)

    def generate(self, *args, **kwargs):
        """Decode from a source; see :func:`unimask.models.generation.generate_mass`."""
        from .generation import generate_mass  # noqa: PLC0415

        return generate_mass(self, *args, **kwargs)
