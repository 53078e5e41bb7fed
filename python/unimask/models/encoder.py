"""The BERT-architecture Transformer encoder, with attention routed through ``unified_attention``.

One file, readable top to bottom (nanoGPT style): embeddings, self-attention, block, encoder.
The architecture is BERT's (Devlin et al. 2019; google-research/bert ``modeling.py``): token +
absolute position + segment embeddings, LayerNorm, then post-LN blocks with exact-erf GELU. A
pre-LN variant (``EncoderConfig.pre_layer_norm``) adds a final LayerNorm.

Attention masks are never built here: every block passes the three per-sample integers
``(attn_mode, src_len, seq_len)`` of :mod:`unimask.masks` to
:func:`unimask.attention.unified_attention`, which runs the Triton kernel on CUDA and the
PyTorch reference elsewhere. UNILM's four self-attention masks (arXiv 1905.03197 sec. 2.3) and
plain padding are therefore the same code path.

Padding contract: sequences are right-padded. An HF-style ``attention_mask`` (1 = token,
0 = padding) is accepted and turned into ``seq_len``; a mask with holes or left padding cannot
be expressed by ``seq_len`` and raises ``ValueError``. Outputs at padded positions are not
meaningful (their attention output is zero) and must be ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..attention import check_cu_seqlens, unified_attention, unified_attention_varlen
from ..masks import (
    _on,
    _placed,
    check_indices,
    check_mask_args,
    check_right_padding,
    to_host,
)
from .config import EncoderConfig

__all__ = [
    "EncoderOutput",
    "KVCache",
    "PackedRows",
    "resolve_packed_args",
    "Embeddings",
    "SelfAttention",
    "EncoderLayer",
    "TransformerEncoder",
    "resolve_mask_args",
    "activation",
]


def activation(name: str):
    """The activation of HF ``ACT2FN[name]``: ``gelu`` is the exact erf GELU."""
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unsupported hidden_act {name!r}")


@dataclass
class EncoderOutput:
    """Output of :class:`TransformerEncoder` (field names as in HF ``BaseModelOutputWithPooling``)."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    pooler_output: torch.Tensor | None = None


class KVCache:
    """Per-layer key/value buffers ``[B, H, T, D]`` indexed by absolute position.

    Decoding writes the keys/values of new tokens at their positions and lets a query at
    position ``p`` see the cached keys ``j <= p``; a slot may be overwritten later (UNILM
    decoding first writes a [MASK] there, then the real token). ``reorder`` follows beams.
    """

    def __init__(self, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len

    def reorder(self, index: torch.Tensor) -> None:
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]


def resolve_mask_args(
    input_shape: tuple[int, int],
    attention_mask: torch.Tensor | None,
    attn_mode: torch.Tensor | None,
    src_len: torch.Tensor | None,
    seq_len: torch.Tensor | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn HF-style and collator-style mask inputs into ``(attn_mode, src_len, seq_len)``.

    ``seq_len`` defaults to ``attention_mask.sum(1)`` (which must then be a right-padding mask)
    or to the full length; ``attn_mode`` defaults to bidirectional; ``src_len`` to 0. The result
    is validated by :func:`unimask.masks.check_mask_args` (one entry per sample, no broadcast;
    ``seq_len <= L``; ...) and returned as int64 tensors on ``device``; bad input raises
    ``ValueError``/``TypeError`` naming the value.

    The values are checked on the host, so CPU inputs (as the collators make them) cost no
    device synchronisation: they are validated there and then copied to ``device`` without
    waiting (``non_blocking``). Inputs already on an accelerator are read back together, the
    attention mask's per-row sums and right-padding flags with them, in one transfer
    (:func:`unimask.masks.to_host`).
    """
    B, L = input_shape
    n = right = None
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (B, L):
            raise ValueError(
                f"attention_mask must have shape {(B, L)} like input_ids, got {tuple(attention_mask.shape)}"
            )
        am = attention_mask != 0  # where the mask is: a CPU mask is checked on the CPU
        n = am.sum(dim=1)
        right = ~(am[:, 1:] & ~am[:, :-1]).any(dim=1)  # no token after a padding position
    # defaults are made on the host: nothing there to read back
    if attn_mode is None:
        attn_mode = torch.zeros(B, dtype=torch.int64)
    if src_len is None:
        src_len = torch.zeros(B, dtype=torch.int64)
    if seq_len is None and n is None:
        seq_len = torch.full((B,), L, dtype=torch.int64)
    h_n, h_right, h_mode, h_src, h_seq = to_host(n, right, attn_mode, src_len, seq_len)
    if attention_mask is not None:
        check_right_padding(attention_mask, h_right, h_n, seq_len, h_seq)
        if seq_len is None:
            seq_len, h_seq = n, h_n
    # checked on the CPU copies (same dtypes and shapes, hence the same errors); each result is
    # the argument itself where it is on `device` already, else its checked copy sent there
    mode, src, seq = check_mask_args(h_mode, h_src, h_seq, L, batch=B)
    return _placed(attn_mode, mode, device), _placed(src_len, src, device), _placed(seq_len, seq, device)


@dataclass(frozen=True)
class PackedRows:
    """Documents packed into the rows of a ``[B, L]`` batch: document ``d`` is the flattened
    tokens ``[cu_seqlens[d], cu_seqlens[d+1])`` of the ``B * L`` (int64 on the batch's device),
    ``max_seqlen`` the longest document. See :meth:`TransformerEncoder.forward`."""

    cu_seqlens: torch.Tensor
    max_seqlen: int


def resolve_packed_args(
    input_shape: tuple[int, int],
    cu_seqlens: torch.Tensor,
    attn_mode: torch.Tensor | None,
    src_len: torch.Tensor | None,
    max_positions: int,
    device: torch.device,
) -> tuple[PackedRows, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate packed-row inputs once per forward, on the host.

    Returns ``(PackedRows, attn_mode, src_len, position_ids)``: per-document integers on
    ``device`` (``attn_mode`` defaults to bidirectional, ``src_len`` to 0) and ``[B, L]``
    positions restarting at 0 at each document's first token. CPU inputs need no device
    synchronisation (checked there, then copied to ``device`` with ``non_blocking``); inputs
    already on an accelerator are read back in one transfer (:func:`unimask.masks.to_host`).
    """
    B, L = input_shape
    h_cu, h_mode, h_src = to_host(cu_seqlens, attn_mode, src_len)
    host, lens = check_cu_seqlens(h_cu, B * L, "B * L", f" (every token of the [{B}, {L}] batch in one document)",
                                  min_entries=2)
    max_seqlen = int(lens.max())
    if max_seqlen > max_positions:
        raise ValueError(f"a document of {max_seqlen} tokens exceeds max_position_embeddings {max_positions}")
    N = lens.numel()
    if attn_mode is None:
        attn_mode = h_mode = torch.zeros(N, dtype=torch.int64)
    if src_len is None:
        src_len = h_src = torch.zeros(N, dtype=torch.int64)
    mode, src, _ = check_mask_args(h_mode, h_src, lens, max_seqlen)
    starts = torch.repeat_interleave(host[:-1], lens, output_size=B * L)
    positions = (torch.arange(B * L) - starts).view(B, L)
    packed = PackedRows(_placed(cu_seqlens, host, device), max_seqlen)
    return packed, _placed(attn_mode, mode, device), _placed(src_len, src, device), _on(positions, device)


def run_layer(layer: nn.Module, checkpointed: bool, *args) -> torch.Tensor:
    """``layer(*args)``, or with ``checkpointed`` (activation checkpointing) through PyTorch's
    non-reentrant ``torch.utils.checkpoint.checkpoint``: the layer keeps only its inputs for
    the backward and runs its forward again there, trading one more forward per layer for the
    activation memory of all but one layer (Chen et al. 2016, arXiv 1604.06174). The RNG state
    is saved and restored around the recomputation, so dropout (``nn.Dropout``, SDPA's, and
    the Triton kernel's seed, drawn from the device generator) draws the same masks again and
    the gradients equal those of the plain call. Off when autograd is not recording
    (inference, ``torch.no_grad``), where there is nothing to save."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Switch activation checkpointing (:func:`run_layer`) on or off in every unimask encoder
    and MASS decoder inside ``model`` (a pretraining model, a fine-tuning head, a multi-task
    model, ...). Returns how many modules were switched.

    Raises:
        TypeError: ``enabled`` is not a bool.
        ValueError: ``model`` holds no module with the switch.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    found = [m for m in model.modules() if callable(getattr(m, "gradient_checkpointing_enable", None))
             and isinstance(getattr(m, "gradient_checkpointing", None), bool)]
    if not found:
        raise ValueError(f"{type(model).__name__} holds no unimask encoder: nothing to checkpoint")
    for m in found:
        m.gradient_checkpointing_enable() if enabled else m.gradient_checkpointing_disable()
    return len(found)


class Embeddings(nn.Module):
    """Token + absolute position + segment embeddings, then LayerNorm and dropout (BERT).

    The index tensors are validated by :meth:`check_inputs` (once per forward: the encoder
    calls it before its layers, and :meth:`forward` unless told they are ``checked``).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def check_inputs(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        names: tuple[str, str, str] = ("input_ids", "token_type_ids", "position_ids"),
        max_position: tuple[int, str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Validate the three index tensors and place them on the embeddings' device.

        ``input_ids`` ``[B, L]``; ``token_type_ids`` the same shape; ``position_ids`` ``[B, L]``
        or ``[1, L]`` (``ValueError`` naming both shapes otherwise). Integers only (``TypeError``
        naming the argument and the dtype); dtypes ``nn.Embedding`` rejects (e.g. the
        tokenizer's uint32 ids and uint8 segment ids) are converted to int64
        (:func:`unimask.masks.check_indices`). Ranges ``0 <= input_ids < vocab_size``,
        ``0 <= token_type_ids < type_vocab_size``, ``0 <= position_ids <
        max_position_embeddings`` (or ``max_position``: ``(bound, name of the bound)``) are
        checked on CPU tensors, with a ``ValueError`` naming the first offending value and its
        ``[row, column]``, and those tensors are then copied to the device without waiting
        (pinned, ``non_blocking``: no device synchronisation). Tensors already on an
        accelerator are not range-checked (that would read them back, a synchronisation): an
        out-of-range index there is a device-side assert. ``names``: the arguments' names in
        the messages (MASS's decoder passes its own).
        """
        ids_name, types_name, pos_name = names
        for name, t in zip(names, (input_ids, token_type_ids, position_ids)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor of integers, got {type(t).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"{ids_name} must be [batch, length], got shape {tuple(input_ids.shape)}")
        shape = tuple(input_ids.shape)
        if token_type_ids is not None and tuple(token_type_ids.shape) != shape:
            raise ValueError(
                f"{types_name} must have the shape of {ids_name} {shape}, got {tuple(token_type_ids.shape)}"
            )
        if position_ids is not None and (position_ids.dim() != 2 or position_ids.shape[1] != shape[1]
                                         or position_ids.shape[0] not in (shape[0], 1)):
            raise ValueError(
                f"{pos_name} must have shape {shape} or {(1, shape[1])} (the shape of {ids_name}, or one row "
                f"for every row), got {tuple(position_ids.shape)}"
            )
        bound, bound_name = max_position or (self.position.num_embeddings, "max_position_embeddings")
        device = self.word.weight.device
        out = []
        for name, t, size, what in ((ids_name, input_ids, self.word.num_embeddings, "vocab_size"),
                                    (types_name, token_type_ids, self.token_type.num_embeddings, "type_vocab_size"),
                                    (pos_name, position_ids, bound, bound_name)):
            if t is not None:
                t = check_indices(name, t, size, what)
                if t.device.type == "cpu":  # checked on the host: sent over without waiting
                    t = _on(t, device)
            out.append(t)
        return out[0], out[1], out[2]

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, *, checked: bool = False) -> torch.Tensor:
        """Embeddings ``[B, L, H]``; ``checked``: the indices already went through
        :meth:`check_inputs` (the encoder's forward), so they are not validated again."""
        if not checked:
            input_ids, token_type_ids, position_ids = self.check_inputs(input_ids, token_type_ids, position_ids)
        B, L = input_ids.shape
        if position_ids is None:
            if L > self.position.num_embeddings:
                raise ValueError(
                    f"sequence length {L} exceeds max_position_embeddings {self.position.num_embeddings}"
                )
            position_ids = torch.arange(L, device=input_ids.device)[None, :]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word(input_ids) + self.position(position_ids) + self.token_type(token_type_ids)
        return self.drop(self.ln(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection; the mask is three integers/sample."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.n_head = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.backend = config.attention_backend
        self.deterministic = config.attention_deterministic

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mode: torch.Tensor, src_len: torch.Tensor,
                seq_len: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                positions: torch.Tensor | None = None, packed: PackedRows | None = None) -> torch.Tensor:
        B, L, C = x.shape
        if packed is not None:  # documents packed in rows: [B * L, H, D] views, no copies
            q, k, v = (t.reshape(B * L, self.n_head, self.head_dim) for t in self.qkv(x).split(C, dim=2))
            y = unified_attention_varlen(
                q, k, v, packed.cu_seqlens, attn_mode, src_len, packed.max_seqlen,
                dropout_p=self.dropout_p if self.training else 0.0, backend=self.backend, check=False,
                deterministic=self.deterministic,
            )
            return self.proj(y.reshape(B, L, C))
        q, k, v = (self._heads(t) for t in self.qkv(x).split(C, dim=2))
        if positions is None:
            if cache is not None:  # prefill: remember this prefix's keys/values
                cache[0][:, :, :L] = k
                cache[1][:, :, :L] = v
            # the mask integers were validated once per forward (TransformerEncoder.forward /
            # MassSeq2Seq.decode): no per-layer validation, hence no per-layer CUDA sync
            y = unified_attention(
                q, k, v, attn_mode, src_len, seq_len,
                dropout_p=self.dropout_p if self.training else 0.0, backend=self.backend, check=False,
                deterministic=self.deterministic,
            )
        else:  # incremental decoding: write new k/v at their positions, attend to j <= position
            assert cache is not None
            kc, vc = cache
            idx = positions[:, None, :, None].expand(B, self.n_head, L, self.head_dim)
            # under autocast k/v come out of the projection in bf16/fp16 while the cache keeps the
            # parameters' dtype; scatter_ (unlike the prefill's slice assignment) does not cast
            kc.scatter_(2, idx, k.to(kc.dtype))
            vc.scatter_(2, idx, v.to(vc.dtype))
            T = kc.shape[2]
            visible = torch.arange(T, device=x.device)[None, None, :] <= positions[:, :, None]
            scores = (q @ kc.transpose(-1, -2)) / math.sqrt(self.head_dim)
            scores = scores.masked_fill(~visible[:, None], float("-inf"))
            y = torch.softmax(scores, dim=-1) @ vc
        return self.proj(y.transpose(1, 2).reshape(B, L, C))


class EncoderLayer(nn.Module):
    """One Transformer block: attention and GELU MLP, post-LN (BERT) or pre-LN."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.hidden_dropout_prob)
        self.act = activation(config.hidden_act)
        self.pre_ln = config.pre_layer_norm

    def forward(self, x: torch.Tensor, attn_mode: torch.Tensor, src_len: torch.Tensor,
                seq_len: torch.Tensor, cache=None, positions=None, packed: PackedRows | None = None) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.drop(self.attn(self.ln1(x), attn_mode, src_len, seq_len, cache, positions, packed))
            return x + self.drop(self.fc2(self.act(self.fc1(self.ln2(x)))))
        x = self.ln1(x + self.drop(self.attn(x, attn_mode, src_len, seq_len, cache, positions, packed)))
        return self.ln2(x + self.drop(self.fc2(self.act(self.fc1(x)))))


class TransformerEncoder(nn.Module):
    """BERT-compatible encoder: ``model(input_ids, ...) -> EncoderOutput``.

    Loads and saves HF ``BertModel`` checkpoints (:meth:`from_pretrained`,
    :meth:`save_pretrained`); the name mapping lives in :mod:`unimask.models.checkpoint`.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.final_ln = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
                         if config.pre_layer_norm else None)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if config.add_pooler else None
        #: activation checkpointing of every layer (:meth:`gradient_checkpointing_enable`)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer's activations in the backward instead of keeping them
        (:func:`run_layer`; HF's method name). Training memory for activations falls from
        every layer's to about one layer's plus each layer's input, at the cost of one more
        forward per step; outputs and gradients are unchanged. Not used in incremental decoding
        (``cache``) or without autograd. A runtime switch, not saved with the checkpoint."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keep every layer's activations again (the default)."""
        self.gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        """BERT init: N(0, initializer_range) weights, zero biases, LayerNorm (1, 0)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        attn_mode: torch.Tensor | None = None,
        src_len: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        *,
        seq_len: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cache_positions: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Encode a right-padded batch, or documents packed into rows (``cu_seqlens``).

        Args:
            input_ids: int ``[B, L]``, each in ``[0, vocab_size)``.
            token_type_ids: int ``[B, L]`` segment ids (UNILM uses them to mark the LM mode),
                each in ``[0, type_vocab_size)``.
            attention_mask: HF-style ``[B, L]`` right-padding mask; gives ``seq_len``.
            attn_mode, src_len, seq_len: int ``[B]`` per-sample mask of :mod:`unimask.masks`.
            output_hidden_states: also return the embeddings output and every layer's output.
            position_ids: ``[B, L]`` or ``[1, L]`` absolute positions (default ``0..L-1``).
            cache, cache_positions: incremental decoding (see :class:`KVCache`); with
                ``cache`` and no ``cache_positions`` the call is a prefill that fills the cache.
            cu_seqlens: packed rows (:class:`unimask.packing.PackingCollator`): int ``[N + 1]``
                over the ``B * L`` flattened tokens, document ``d`` = tokens
                ``[cu_seqlens[d], cu_seqlens[d+1])``; every token belongs to one document
                (a row's padding is a document of its own). ``attn_mode``/``src_len`` are then
                per document ``[N]``; no token attends across documents (the Triton kernel's
                varlen path, or the reference document by document); ``position_ids`` default
                to positions restarting at each document. Replaces ``attention_mask`` /
                ``seq_len``; not with ``cache``.

        The index tensors (``input_ids``, ``token_type_ids``, ``position_ids`` or
        ``cache_positions``, which must then be below the cache's ``max_len``) are validated
        once per forward by :meth:`Embeddings.check_inputs`: shapes, integer dtypes (narrow and
        unsigned ones, e.g. the tokenizer's uint32 ids, converted), and on CPU tensors the
        ranges, after which they are copied to the model's device without waiting. Indices
        already on an accelerator are not range-checked (no device synchronisation is spent on
        them): an out-of-range one is a device-side assert there.
        """
        position_name, position_bound = "position_ids", None
        if cache_positions is not None:
            if cache is None:
                raise ValueError("cache_positions (incremental decoding) needs the cache they index (cache=)")
            if position_ids is not None:
                raise ValueError("position_ids and cache_positions both given: with a cache, cache_positions are "
                                 "the positions")
            position_ids, position_name = cache_positions, "cache_positions"
            position_bound = (min(cache.max_len, self.config.max_position_embeddings),
                              "the cache's max_len" if cache.max_len < self.config.max_position_embeddings
                              else "max_position_embeddings")
        # the indices, validated once per forward (on the host for CPU tensors, then sent to the
        # model's device without waiting); the layers and the mask integers use their device
        input_ids, token_type_ids, position_ids = self.embeddings.check_inputs(
            input_ids, token_type_ids, position_ids, names=("input_ids", "token_type_ids", position_name),
            max_position=position_bound,
        )
        if cache_positions is not None:
            cache_positions = position_ids
        if cache is not None:
            B, L = input_ids.shape
            if cache.k and cache.k[0].shape[0] != B:
                raise ValueError(f"the cache holds {cache.k[0].shape[0]} sequences but input_ids has B = {B} rows")
            if cache_positions is None and L > cache.max_len:
                raise ValueError(f"input_ids has {L} columns but the cache holds max_len = {cache.max_len} positions")
        packed = None
        if cu_seqlens is not None:
            if attention_mask is not None or seq_len is not None or cache is not None or cache_positions is not None:
                raise ValueError("cu_seqlens (packed rows) replaces attention_mask / seq_len and does not take a cache")
            packed, attn_mode, src_len, doc_positions = resolve_packed_args(
                tuple(input_ids.shape), cu_seqlens, attn_mode, src_len,
                self.config.max_position_embeddings, input_ids.device,
            )
            if position_ids is None:
                position_ids = doc_positions
        elif cache_positions is not None:
            position_ids = cache_positions
        else:
            attn_mode, src_len, seq_len = resolve_mask_args(  # validated here, once per forward
                tuple(input_ids.shape), attention_mask, attn_mode, src_len, seq_len, input_ids.device
            )
        x = self.embeddings(input_ids, token_type_ids, position_ids, checked=True)
        hidden = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            layer_cache = (cache.k[i], cache.v[i]) if cache is not None else None
            x = run_layer(layer, self.gradient_checkpointing and cache is None,
                          x, attn_mode, src_len, seq_len, layer_cache, cache_positions, packed)
            if hidden is not None:
                hidden.append(x)
        if self.final_ln is not None:
            x = self.final_ln(x)
            if hidden is not None:
                hidden[-1] = x
        if self.pooler is not None and x.shape[1] == 0:
            raise ValueError(
                f"input_ids has no tokens (shape {tuple(input_ids.shape)}): pooler_output needs token 0 ([CLS]) "
                f"of every row"
            )
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return EncoderOutput(x, tuple(hidden) if hidden is not None else None, pooled)

    def pooled_at(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The pooler (``tanh(dense(h))``, as ``pooler_output`` applies it to token 0 of each
        row) on the tokens at flattened ``positions`` of ``hidden`` ``[B, L, H]``: in packed
        rows, each document's ``[CLS]`` (``doc_starts``). Returns ``[len(positions), H]``."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        return torch.tanh(self.pooler(flat[_on(positions, flat.device)]))

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """Empty :class:`KVCache` for ``batch`` sequences of up to ``max_len`` positions."""
        if max_len > self.config.max_position_embeddings:
            raise ValueError(
                f"max_len {max_len} exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        p = self.embeddings.word.weight
        c = self.config
        return KVCache(c.num_hidden_layers, batch, c.num_attention_heads, max_len, c.head_dim,
                       p.dtype, p.device)

    # -- checkpoints ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | Path, config: EncoderConfig | None = None) -> TransformerEncoder:
        """Load an HF BERT checkpoint directory (``config.json`` + ``model.safetensors`` or
        ``pytorch_model.bin``). Accepts ``bert.``-prefixed names and legacy ``gamma``/``beta``;
        ignores ``position_ids`` and heads (``cls.*``); raises ``ValueError`` listing any
        missing encoder weight."""
        from .checkpoint import load_encoder  # noqa: PLC0415

        return load_encoder(cls, directory, config)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` + ``model.safetensors`` in HF ``BertModel`` format."""
        from .checkpoint import save_encoder  # noqa: PLC0415

        save_encoder(self, directory)
