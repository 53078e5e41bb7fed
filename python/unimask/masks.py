"""The unified LM attention masks, described by three integers per sample.

UNILM (Dong et al. 2019, arXiv 1905.03197, section 2.3) trains one Transformer under four
self-attention masks. unimask never materialises an L x L mask on the fast path: a sample's
mask is a function of ``(attn_mode, src_len, seq_len)``. This module is the single source of
truth for that function; the Triton kernel implements the same predicate tile by tile and the
tests check both against :func:`allowed`.

For a valid query ``i < seq_len`` and key ``j < seq_len``:

==================  =====  ================================================
mode                value  query i may attend to key j when
==================  =====  ================================================
bidirectional       0      always
left_to_right       1      ``j <= i``
right_to_left       2      ``j >= i``
seq2seq             3      ``j < src_len`` if ``i < src_len``, else ``j <= i``
==================  =====  ================================================

Queries ``i >= seq_len`` (padding) attend to nothing; their attention output is zero.
"""

from __future__ import annotations

from typing import Any

import torch

BIDIRECTIONAL = 0
LEFT_TO_RIGHT = 1
RIGHT_TO_LEFT = 2
SEQ2SEQ = 3

#: Mode names in the order of their integer codes.
MODE_NAMES = ("bidirectional", "left_to_right", "right_to_left", "seq2seq")

__all__ = [
    "BIDIRECTIONAL",
    "LEFT_TO_RIGHT",
    "RIGHT_TO_LEFT",
    "SEQ2SEQ",
    "MODE_NAMES",
    "allowed",
    "dense_mask",
    "check_mask_args",
    "check_right_padding",
    "to_host",
    "check_batch_len",
    "check_per_sample",
    "check_per_document",
    "check_indices",
]


def allowed(mode: int, src_len: int, seq_len: int, i: int, j: int) -> bool:
    """Whether query ``i`` may attend to key ``j`` for one sample (plain-Python definition)."""
    if i >= seq_len or j >= seq_len:
        return False
    if mode == BIDIRECTIONAL:
        return True
    if mode == LEFT_TO_RIGHT:
        return j <= i
    if mode == RIGHT_TO_LEFT:
        return j >= i
    if mode == SEQ2SEQ:
        return j < src_len if i < src_len else j <= i
    raise ValueError(f"attn_mode must be 0..3 ({', '.join(MODE_NAMES)}), got {mode}")


def to_host(*tensors: Any) -> list[Any]:
    """CPU copies of ``tensors`` with at most one device-to-host transfer per device.

    Every transfer from an accelerator waits for the work queued on it, so the per-forward
    validation of small integer vectors reads them all at once: integer and bool tensors that
    are not on the CPU are flattened, cast to int64, concatenated, copied to the host in one
    ``.cpu()`` and split back, each with its own shape and dtype. CPU tensors, tensors of other
    dtypes (their validation raises on the dtype without reading values) and non-tensors
    (``None``, lists) are returned as they are.
    """
    out = list(tensors)
    groups: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        if (isinstance(t, torch.Tensor) and t.device.type != "cpu"
                and not (t.dtype.is_floating_point or t.dtype.is_complex)):
            groups.setdefault(t.device, []).append(i)
    for idx in groups.values():
        flat = torch.cat([tensors[i].reshape(-1).to(torch.int64) for i in idx]).cpu()
        for i, part in zip(idx, flat.split([tensors[i].numel() for i in idx])):
            out[i] = part.view(tensors[i].shape).to(tensors[i].dtype)
    return out


def _on(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device``; a copy from the CPU to an accelerator is queued without waiting
    (``non_blocking``: a blocking host-to-device copy waits for the device's queue). To CUDA
    the CPU tensor is first put in page-locked memory (PyTorch's caching host allocator, which
    keeps the block until the copy is done): from pageable memory CUDA "may synchronize with the
    stream" to stage the copy (CUDA runtime API, "API synchronization behavior"), from pinned
    memory it does not."""
    device = torch.device(device)
    if t.device.type != "cpu" or device.type == "cpu":
        return t.to(device)
    if device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _placed(given: Any, host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A validated argument as int64 on ``device``: ``given`` itself when it is a tensor there
    already, else its checked CPU copy ``host``, copied over without waiting (:func:`_on`)."""
    if isinstance(given, torch.Tensor) and given.device == device:
        return given.to(torch.int64)
    return _on(host, device)


def _check_integers(name: str, t: torch.Tensor) -> None:
    """``TypeError`` naming ``name`` unless ``t`` holds integers (not floating, complex or bool)."""
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")


def _mask_arg_tensors(attn_mode: Any, src_len: Any, seq_len: Any,
                      batch: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three arguments as int64 tensors, each on its own device, after the checks that read
    no values (type, dtype, shape, one entry per sample)."""
    tensors = []
    for name, t in (("attn_mode", attn_mode), ("src_len", src_len), ("seq_len", seq_len)):
        if not isinstance(t, torch.Tensor):
            try:
                t = torch.as_tensor(t)
            except Exception as e:  # noqa: BLE001 - re-raised with the argument's name
                raise TypeError(f"{name} must be a tensor of integers, got {type(t).__name__}") from e
        _check_integers(name, t)
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D [batch], got shape {tuple(t.shape)}")
        if batch is not None:
            check_batch_len(name, t, batch)
        tensors.append(t.to(torch.int64))
    mode, src, seq = tensors
    if not (mode.shape == src.shape == seq.shape):
        raise ValueError(
            f"attn_mode, src_len, seq_len must have the same length, got "
            f"{mode.shape[0]}, {src.shape[0]}, {seq.shape[0]}"
        )
    return mode, src, seq


def _check_mask_values(mode: torch.Tensor, src: torch.Tensor, seq: torch.Tensor, L: int) -> None:
    """The value checks of :func:`check_mask_args` on int64 CPU tensors (no device read)."""
    if mode.numel():
        bad = (mode < 0) | (mode > 3)
        if bad.any():
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"attn_mode[{b}] = {int(mode[b])} is not a mode (0..3: {', '.join(MODE_NAMES)})")
        bad = (seq < 0) | (seq > L)
        if bad.any():
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"seq_len[{b}] = {int(seq[b])} is outside [0, {L}]")
        bad = (src < 0) | (src > seq)
        if bad.any():
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"src_len[{b}] = {int(src[b])} is outside [0, seq_len[{b}] = {int(seq[b])}]")


def check_mask_args(
    attn_mode: torch.Tensor, src_len: torch.Tensor, seq_len: torch.Tensor, L: int,
    batch: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the per-sample integers and return them as int64 tensors on one device
    (``attn_mode``'s).

    ``batch``: the number of samples (``q.shape[0]``, ``input_ids.shape[0]``) each argument
    must have one entry for; nothing is broadcast (a length-1 argument for a larger batch is an
    error, not one mask for every row). ``None`` checks only that the three lengths agree.

    The values are checked on the host: CPU arguments need no device synchronisation; those on
    an accelerator are read back together, in one transfer (:func:`to_host`).

    Raises ``ValueError``/``TypeError`` naming the offending value: modes outside 0..3,
    ``seq_len`` outside ``[0, L]``, ``src_len`` outside ``[0, seq_len]``, shape mismatches.
    """
    mode, src, seq = _mask_arg_tensors(attn_mode, src_len, seq_len, batch)
    host = to_host(mode, src, seq)
    _check_mask_values(*host, L)
    dev = mode.device
    if dev.type == "cpu":  # the host copies are what the caller wants: no second transfer
        return host[0], host[1], host[2]
    return mode, _on(src, dev), _on(seq, dev)


def check_right_padding(attention_mask: torch.Tensor, right: torch.Tensor, n: torch.Tensor,
                        seq_len: Any = None, seq_host: Any = None) -> None:
    """Raise ``ValueError`` unless every row of the HF-style ``attention_mask`` ``[B, L]`` is a
    right-padding mask (``right``: the per-row flag, on the CPU) and, when ``seq_len`` is also
    given, unless it has one entry per row equal to ``n = attention_mask.sum(1)`` (CPU).
    ``seq_host``: ``seq_len`` already copied to the CPU (:func:`to_host`), if it was.
    ``attention_mask`` and ``seq_len`` themselves are read only to write a message.
    See :func:`unimask.models.resolve_mask_args`."""
    bad = ~right.to(torch.bool)
    if bad.any():
        b = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"attention_mask[{b}] is not a right-padding mask (it has holes or left padding): "
            f"{attention_mask[b].tolist()}; unimask expects tokens first, padding last"
        )
    if seq_len is not None:
        check_batch_len("seq_len", seq_len, n.shape[0])
        if not (isinstance(seq_host, torch.Tensor) and seq_host.device.type == "cpu"):
            seq_host = torch.as_tensor(seq_len).cpu()  # not an integer tensor: its dtype is reported later
        if not torch.equal(seq_host.to(torch.int64), n):
            raise ValueError(
                f"seq_len {torch.as_tensor(seq_len).tolist()} disagrees with attention_mask.sum(1) {n.tolist()}"
            )


def check_batch_len(name: str, t: torch.Tensor, batch: int,
                    what: str = "the batch has B = {} samples") -> None:
    """Raise ``ValueError`` unless the 1-D per-sample argument ``t`` (called ``name``) has
    exactly ``batch`` entries; ``what`` (formatted with ``batch``) names the count in the
    message. Reads only the shape (no host-device sync), so a caller that skips
    :func:`check_mask_args` can still afford it: a shorter argument would make the Triton kernel
    read past its end, a length-1 one would be broadcast silently elsewhere."""
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t)  # a list / array of lengths is fine
        except Exception:  # noqa: BLE001 - reported below with its type
            pass
    n = t.shape[0] if isinstance(t, torch.Tensor) and t.dim() == 1 else None
    if n != batch:
        got = f"{n} entries" if n is not None else (
            f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else f"type {type(t).__name__}")
        raise ValueError(f"{name} has {got} but {what.format(batch)} (one entry each; nothing is broadcast)")


def check_per_sample(attn_mode: Any, src_len: Any, seq_len: Any, batch: int) -> None:
    """:func:`check_batch_len` of the three per-sample mask arguments against ``batch`` (B)."""
    for name, t in (("attn_mode", attn_mode), ("src_len", src_len), ("seq_len", seq_len)):
        check_batch_len(name, t, batch)


def check_per_document(attn_mode: Any, src_len: Any, cu_seqlens: Any) -> None:
    """:func:`check_batch_len` of packed rows' per-document ``attn_mode`` / ``src_len`` against
    the ``N = len(cu_seqlens) - 1`` documents (shape reads only)."""
    for name, t in (("attn_mode", attn_mode), ("src_len", src_len)):
        check_batch_len(name, t, len(cu_seqlens) - 1, "cu_seqlens describes N = {} documents")


def _row_bounds(mode: torch.Tensor, src: torch.Tensor, seq: torch.Tensor, L: int,
                padded_rows: str = "empty") -> tuple[torch.Tensor, torch.Tensor]:
    """Each query row's visible keys as one interval ``[lo, hi)``: two int64 tensors ``[B, L]``.

    Every UNILM mask row is contiguous: bidirectional ``[0, seq)``, left_to_right ``[0, i+1)``,
    right_to_left ``[i, seq)``, seq2seq ``[0, src)`` for ``i < src`` else ``[0, i+1)``; all
    four are ``[lo, max(i + 1, reach))`` with ``lo = i`` for right_to_left (else 0) and the
    per-sample ``reach`` = ``seq`` (bidirectional, right_to_left), ``src`` (seq2seq) or 0
    (left_to_right). Padded query rows (``i >= seq``) get ``[0, 0)`` (``padded_rows="empty"``,
    the mask's definition) or ``[0, L)`` (``"all"``: a row SDPA can softmax over; the caller
    zeroes its output). ``mode``, ``src``, ``seq``: int64 ``[B]`` on one device, not checked
    here (a mode outside 0..3 reads as bidirectional)."""
    i = torch.arange(L, device=mode.device)
    mode, src, seq = mode[:, None], src[:, None], seq[:, None]
    reach = torch.where(mode == SEQ2SEQ, src, torch.where(mode == LEFT_TO_RIGHT, torch.zeros_like(seq), seq))
    hi = torch.maximum(i + 1, reach)
    lo = i * (mode == RIGHT_TO_LEFT)
    valid = i < seq
    if padded_rows == "empty":
        return lo, hi * valid
    return lo * valid, torch.where(valid, hi, L)


def check_indices(name: str, t: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """The embedding indices ``t`` (the argument ``name``, ``[B, L]``) as a tensor that
    ``nn.Embedding`` takes, after checking they are integers in ``[0, size)``.

    ``TypeError`` naming ``name`` and the dtype for bool, floating and complex tensors. Integer
    dtypes ``nn.Embedding`` rejects (the tokenizer's uint32 ids and uint8 segment ids, int8,
    int16, uint16, uint64) are converted to int64; int32 and int64 are kept. The range is checked
    only where it costs no device synchronisation: on a CPU tensor (a min/max over ``B * L``),
    with a ``ValueError`` naming the first offending entry (row-major), its ``[row, column]``
    and ``what`` (the config field that is the bound). A tensor on an accelerator is not read.
    """
    _check_integers(name, t)
    wide = t if t.dtype in (torch.int64, torch.int32) else t.to(torch.int64)
    if wide.device.type != "cpu" or wide.numel() == 0:
        return wide
    lo, hi = torch.aminmax(wide)
    if int(lo) < 0 or int(hi) >= size:
        r, c = ((wide < 0) | (wide >= size)).nonzero()[0].tolist()
        value = int(wide[r, c]) + (2 ** 64 if t.dtype == torch.uint64 and int(wide[r, c]) < 0 else 0)
        raise ValueError(f"{name}[{r}, {c}] = {value} is outside [0, {size}) ({what} = {size})")
    return wide


def dense_mask(
    attn_mode: torch.Tensor, src_len: torch.Tensor, seq_len: torch.Tensor, L: int,
    batch: int | None = None,
) -> torch.Tensor:
    """Boolean mask ``[B, L, L]``, ``True`` where query ``i`` (dim 1) may attend to key ``j`` (dim 2).

    The O(B*L^2) form of the three integers, used by the reference attention path and tests.
    ``batch``: the expected ``B`` (see :func:`check_mask_args`). Built from each row's key
    interval (``lo <= j < hi``, a few O(B*L) ops for the bounds, then two comparisons over
    ``B*L*L``).
    """
    mode, src, seq = check_mask_args(attn_mode, src_len, seq_len, L, batch=batch)
    lo, hi = _row_bounds(mode, src, seq, L)
    j = torch.arange(L, device=mode.device)
    return (j >= lo[..., None]) & (j < hi[..., None])
