"""The per-forward validation of the mask integers costs at most one device synchronisation.

Every read of a device tensor on the host (``bool(t)``, ``int(t)``, ``.item()``, ``.tolist()``,
``torch.equal``, ``.nonzero()``, ``.cpu()``) and every blocking host-to-device copy
(``.to(device)`` without ``non_blocking``: PyTorch then synchronises the stream) waits for all
the work queued on the device. The validation used to make one per check: 3 in
``check_mask_args``, 1-2 more for an ``attention_mask``, blocking copies of CPU integers and
one more (whether any NSP label is scored) in the pretraining forward.

No accelerator here, so the tests simulate one. :class:`FakeDevice` is a ``TorchFunctionMode``
under which ``torch.device("meta")`` plays the accelerator: a tensor "on" it is an
:class:`OnDevice` (CPU storage, ``.device`` reports ``meta``), made by ``.to(meta)`` of a CPU
tensor (a blocking copy is counted unless ``non_blocking=True``) or by a factory with
``device=meta``; ops on such tensors give such tensors; the reads above of one are counted
(and give plain CPU results), and an op mixing one with a CPU tensor of more than one element
raises, as on a real device. The counts are exact for the code under test and the old code
made more (the numbers are in each test); values and messages are checked against hand-written
expectations.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

import unimask.finetune.trainer as ft
from unimask.masks import check_mask_args, to_host
from unimask.models import EncoderConfig, UnifiedLM
from unimask.models.encoder import resolve_mask_args, resolve_packed_args
from unimask.training import Trainer, TrainingConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEV = torch.device("meta")  # the simulated accelerator


class OnDevice(torch.Tensor):
    """A tensor on the simulated device (its values live on the CPU, for the checks)."""


def _plain(x):
    return tree_map(lambda t: t.as_subclass(torch.Tensor) if isinstance(t, OnDevice) else t, x)


_T = torch.Tensor
_READS = {_T.__bool__, _T.__int__, _T.__index__, _T.__float__, _T.item, _T.tolist, _T.numpy, _T.cpu,
          _T.nonzero, torch.nonzero, torch.equal, _T.equal, _T.__repr__, _T.__format__}


def _is_dev(d) -> bool:
    return d is not None and torch.device(d).type == DEV.type


class FakeDevice(TorchFunctionMode):
    """Counts ``reads`` (device -> host) and ``blocking`` (host -> device copies that wait)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.blocking = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        flat = tree_flatten((args, kwargs))[0]
        on = any(isinstance(a, OnDevice) for a in flat)
        if func == _T.device.__get__:
            return DEV if isinstance(args[0], OnDevice) else func(*args)
        if on and (func in _READS or (func is _T.__getitem__ and _bool_index(args[1]))):
            self.reads += 1
            return func(*_plain(args), **_plain(kwargs))
        if func is _T.to:
            rest = [a for a in args[1:] if not isinstance(a, (torch.device, str))]
            target = kwargs.pop("device", None)
            target = next((a for a in args[1:] if isinstance(a, (torch.device, str))), target)
            if _is_dev(target):
                if isinstance(args[0], OnDevice):
                    return func(args[0], *rest, **kwargs)
                if not kwargs.get("non_blocking", False):
                    self.blocking += 1
                return func(args[0], *rest, **kwargs).clone().as_subclass(OnDevice)
            if target is not None and torch.device(target).type == "cpu" and isinstance(args[0], OnDevice):
                self.reads += 1
                return func(_plain(args[0]), *rest, **kwargs).clone()
            if target is not None:
                kwargs["device"] = target
            return func(args[0], *rest, **kwargs)
        if _is_dev(kwargs.get("device")):  # a factory: torch.zeros(..., device=DEV)
            kwargs["device"] = "cpu"
            return func(*args, **kwargs).as_subclass(OnDevice)
        if on and any(isinstance(a, torch.Tensor) and not isinstance(a, OnDevice) and a.numel() > 1
                      for a in flat):
            raise RuntimeError(f"{func.__name__}: a device tensor mixed with a CPU tensor")
        return func(*args, **kwargs)


def _bool_index(index) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_flatten(index)[0])


def dev(t) -> OnDevice:
    """``t`` (CPU) as a tensor already on the simulated device."""
    return torch.as_tensor(t).clone().as_subclass(OnDevice)


def on_dev(t) -> bool:
    return isinstance(t, OnDevice)


def values(t: torch.Tensor) -> list:
    return t.as_subclass(torch.Tensor).tolist()


# -- the mechanism -----------------------------------------------------------------------------


def test_to_host_reads_every_device_tensor_in_one_transfer():
    a = dev(torch.tensor([3, -1, 7], dtype=torch.int8))
    b = dev(torch.tensor([[1, 2], [300, 4]], dtype=torch.int32))
    c = dev(torch.tensor([True, False]))
    d = dev(torch.tensor([], dtype=torch.int64))
    cpu = torch.tensor([5, 6])
    f = dev(torch.tensor([1.5]))
    with FakeDevice() as fake:
        out = to_host(a, None, b, cpu, c, [1, 2], d, f)
        assert fake.reads == 1 and fake.blocking == 0
        ha, hn, hb, hcpu, hc, hl, hd, hf = out
        for h, dtype, want in ((ha, torch.int8, [3, -1, 7]), (hb, torch.int32, [[1, 2], [300, 4]]),
                               (hc, torch.bool, [True, False]), (hd, torch.int64, [])):
            assert not on_dev(h) and h.device.type == "cpu" and h.dtype == dtype and h.tolist() == want
        assert hn is None and hcpu is cpu and hl == [1, 2] and hf is f  # as they were
        assert to_host(cpu, None) == [cpu, None] and fake.reads == 1  # nothing on the device: no transfer


# -- padded batches: resolve_mask_args / check_mask_args ----------------------------------------

B, L = 3, 6
MODE, SRC, SEQ = [0, 3, 1], [0, 2, 0], [6, 4, 5]
AM = [[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]


def _given(kind: str, on_device: bool, collator_dtypes: bool = True) -> dict:
    """Keyword arguments of resolve_mask_args; the collators' dtypes (int8 modes, int32 lengths)."""
    wrap = dev if on_device else (lambda t: t)
    m8, i32 = (torch.int8, torch.int32) if collator_dtypes else (torch.int64, torch.int64)
    kw = {"attention_mask": None, "attn_mode": wrap(torch.tensor(MODE, dtype=m8)),
          "src_len": wrap(torch.tensor(SRC, dtype=i32)), "seq_len": None}
    if kind in ("seq_len", "both"):
        kw["seq_len"] = wrap(torch.tensor(SEQ, dtype=i32))
    if kind in ("attention_mask", "both"):
        kw["attention_mask"] = wrap(torch.tensor(AM))
    if kind == "defaults":
        kw["attn_mode"] = kw["src_len"] = None
    return kw


# device -> host reads the old code made: seq_len 3 (check_mask_args), attention_mask 4 (the
# right-padding check, then check_mask_args), both 5 (+ torch.equal(seq_len, n)); with CPU
# integers no read but a blocking copy of each (3), and 1-3 reads of the copies
@pytest.mark.parametrize("kind", ["seq_len", "attention_mask", "both", "defaults"])
@pytest.mark.parametrize("on_device", [False, True], ids=["cpu_ints", "device_ints"])
def test_resolve_mask_args_reads_at_most_once(kind, on_device):
    kw = _given(kind, on_device)
    with FakeDevice() as fake:
        mode, src, seq = resolve_mask_args((B, L), device=DEV, **kw)
        assert (fake.reads, fake.blocking) == ((1 if on_device and kind != "defaults" else 0), 0)
    want_mode, want_src = ([0] * B, [0] * B) if kind == "defaults" else (MODE, SRC)
    want_seq = [L] * B if kind == "defaults" else SEQ
    for t, want in ((mode, want_mode), (src, want_src), (seq, want_seq)):
        assert on_dev(t) and t.dtype == torch.int64 and values(t) == want


@pytest.mark.parametrize("on_device", [False, True], ids=["cpu_ints", "device_ints"])
def test_check_mask_args_reads_at_most_once(on_device):
    kw = _given("seq_len", on_device)
    with FakeDevice() as fake:
        mode, src, seq = check_mask_args(kw["attn_mode"], kw["src_len"], kw["seq_len"], L, batch=B)
        assert (fake.reads, fake.blocking) == (int(on_device), 0)  # old: 3 reads on the device
    for t, want in ((mode, MODE), (src, SRC), (seq, SEQ)):  # on attn_mode's device, as before
        assert on_dev(t) == on_device and t.dtype == torch.int64 and values(t) == want
    with FakeDevice() as fake:  # mixed: the device ones read once, results on attn_mode's device
        mode, src, seq = check_mask_args(dev(MODE), torch.tensor(SRC), dev(SEQ), L)
        assert (fake.reads, fake.blocking) == (1, 0)
        assert all(on_dev(t) for t in (mode, src, seq)) and values(src) == SRC
        mode, src, seq = check_mask_args(torch.tensor(MODE), dev(SRC), torch.tensor(SEQ), L)
        assert (fake.reads, fake.blocking) == (2, 0)
        assert not any(on_dev(t) for t in (mode, src, seq)) and src.tolist() == SRC


def _replace(kw: dict, **changes) -> dict:
    return {**kw, **{k: torch.tensor(v) for k, v in changes.items()}}


# invalid inputs and their messages (the old code's, written out by hand)
BAD = [
    ("seq_len", {"attn_mode": [0, 4, 1]}, ValueError,
     "attn_mode[1] = 4 is not a mode (0..3: bidirectional, left_to_right, right_to_left, seq2seq)"),
    ("seq_len", {"attn_mode": [0, 1, -2]}, ValueError, "attn_mode[2] = -2 is not a mode"),
    ("seq_len", {"seq_len": [6, 7, 5]}, ValueError, "seq_len[1] = 7 is outside [0, 6]"),
    ("seq_len", {"seq_len": [6, 4, -1]}, ValueError, "seq_len[2] = -1 is outside [0, 6]"),
    ("seq_len", {"src_len": [0, 5, 0]}, ValueError, "src_len[1] = 5 is outside [0, seq_len[1] = 4]"),
    ("seq_len", {"src_len": [-1, 2, 0]}, ValueError, "src_len[0] = -1 is outside [0, seq_len[0] = 6]"),
    ("seq_len", {"seq_len": [6.0, 4.0, 5.0]}, TypeError, "seq_len must hold integers, got dtype torch.float32"),
    ("seq_len", {"attn_mode": [True, False, True]}, TypeError, "attn_mode must hold integers, got dtype torch.bool"),
    ("seq_len", {"src_len": [[0, 2, 0]]}, ValueError, "src_len must be 1-D [batch], got shape (1, 3)"),
    ("seq_len", {"seq_len": [6, 4]}, ValueError,
     "seq_len has 2 entries but the batch has B = 3 samples (one entry each; nothing is broadcast)"),
    ("attention_mask", {"attention_mask": [[1] * 6, [1, 0, 1, 1, 0, 0], [1] * 5 + [0]]}, ValueError,
     "attention_mask[1] is not a right-padding mask (it has holes or left padding): [1, 0, 1, 1, 0, 0]; "
     "unimask expects tokens first, padding last"),
    ("attention_mask", {"attention_mask": [[1] * 6, [1] * 4 + [0] * 2, [0] + [1] * 5]}, ValueError,
     "attention_mask[2] is not a right-padding mask (it has holes or left padding): [0, 1, 1, 1, 1, 1]"),
    ("attention_mask", {"src_len": [0, 5, 0]}, ValueError, "src_len[1] = 5 is outside [0, seq_len[1] = 4]"),
    ("both", {"seq_len": [6, 4, 4]}, ValueError, "seq_len [6, 4, 4] disagrees with attention_mask.sum(1) [6, 4, 5]"),
    ("both", {"seq_len": [6, 4]}, ValueError, "seq_len has 2 entries but the batch has B = 3 samples"),
    ("both", {"attention_mask": [[1] * 6, [0, 1, 1, 1, 1, 0], [1] * 5 + [0]], "seq_len": [6, 9, 5]}, ValueError,
     "attention_mask[1] is not a right-padding mask"),  # the mask is checked first, as before
]


@pytest.mark.parametrize("on_device", [False, True], ids=["cpu_ints", "device_ints"])
@pytest.mark.parametrize("kind,changes,error,message", BAD)
def test_invalid_input_keeps_its_message(kind, changes, error, message, on_device):
    kw = _replace(_given(kind, False), **changes)
    if on_device:
        kw = {k: dev(v) if v is not None else v for k, v in kw.items()}
    with FakeDevice(), pytest.raises(error) as e:
        resolve_mask_args((B, L), device=DEV, **kw)
    assert str(e.value).startswith(message)


def test_right_padding_flag_against_every_row_of_six():
    """The per-row flag (no token after a padding position), against the definition: the row
    is ``k`` ones then zeros. Every 0/1 row of length 6, alone and with a CPU and device mask."""
    for bits in range(2 ** L):
        row = [(bits >> j) & 1 for j in range(L)]
        k = sum(row)
        right = row == [1] * k + [0] * (L - k)
        for wrap in (torch.tensor, dev):
            with FakeDevice() as fake:
                if right:
                    _, _, seq = resolve_mask_args((1, L), wrap([row]), None, None, None, DEV)
                    assert values(seq) == [k]
                else:
                    with pytest.raises(ValueError, match=r"attention_mask\[0\] is not a right-padding mask"):
                        resolve_mask_args((1, L), wrap([row]), None, None, None, DEV)
                assert fake.reads <= (1 if right else 2)  # an error may read the row to show it


# -- packed rows: resolve_packed_args -----------------------------------------------------------

# two rows of 5: documents [0, 3) [3, 5) | [5, 9) [9, 10) (the last one a row's padding)
CU, P_MODE, P_SRC = [0, 3, 5, 9, 10], [3, 0, 1, 0], [2, 0, 0, 0]
POSITIONS = [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]


# the old code: 1 read of cu_seqlens, then check_mask_args on the device (a blocking copy of the
# lengths and 3 reads), then blocking copies of cu_seqlens and the positions (7 in all); with
# CPU integers 4 blocking copies (cu_seqlens, attn_mode, src_len, positions)
@pytest.mark.parametrize("on_device", [False, True], ids=["cpu_ints", "device_ints"])
@pytest.mark.parametrize("defaults", [False, True], ids=["modes", "default_modes"])
def test_resolve_packed_args_reads_at_most_once(on_device, defaults):
    wrap = dev if on_device else torch.as_tensor
    mode, src = (None, None) if defaults else (wrap(torch.tensor(P_MODE, dtype=torch.int8)), wrap(P_SRC))
    with FakeDevice() as fake:
        packed, mode, src, positions = resolve_packed_args((2, 5), wrap(torch.tensor(CU, dtype=torch.int32)),
                                                           mode, src, 8, DEV)
        assert (fake.reads, fake.blocking) == (int(on_device), 0)
    assert packed.max_seqlen == 4
    for t, want in ((packed.cu_seqlens, CU), (mode, [0] * 4 if defaults else P_MODE),
                    (src, [0] * 4 if defaults else P_SRC), (positions, POSITIONS)):
        assert on_dev(t) and t.dtype == torch.int64 and values(t) == want


PACKED_BAD = [
    ({"cu": [0, 3, 5, 9, 11]}, ValueError,
     "cu_seqlens must start at 0 and end at B * L = 10 (every token of the [2, 5] batch in one document), got 0 .. 11"),
    ({"cu": [0, 5, 3, 9, 10]}, ValueError, "cu_seqlens must be non-decreasing: cu_seqlens[2] < cu_seqlens[1]"),
    ({"cu": [0.0, 10.0]}, TypeError, "cu_seqlens must be a 1-D integer tensor [N + 1], got torch.float32 (2,)"),
    ({"cu": [0, 10]}, ValueError, "a document of 10 tokens exceeds max_position_embeddings 8"),
    ({"mode": [3, 0, 5, 0]}, ValueError, "attn_mode[2] = 5 is not a mode"),
    ({"src": [2, 3, 0, 0]}, ValueError, "src_len[1] = 3 is outside [0, seq_len[1] = 2]"),
    ({"src": [2, 0, 0]}, ValueError, "attn_mode, src_len, seq_len must have the same length, got 4, 3, 4"),
]


@pytest.mark.parametrize("on_device", [False, True], ids=["cpu_ints", "device_ints"])
@pytest.mark.parametrize("changes,error,message", PACKED_BAD)
def test_invalid_packed_input_keeps_its_message(changes, error, message, on_device):
    wrap = dev if on_device else torch.as_tensor
    args = {"cu": CU, "mode": P_MODE, "src": P_SRC, **changes}
    with FakeDevice(), pytest.raises(error) as e:
        resolve_packed_args((2, 5), wrap(torch.tensor(args["cu"])), wrap(torch.tensor(args["mode"])),
                            wrap(torch.tensor(args["src"])), 8, DEV)
    assert str(e.value).startswith(message)


# -- the pretraining forward and the trainers ---------------------------------------------------


def _tiny() -> UnifiedLM:
    torch.manual_seed(0)
    return UnifiedLM(EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=16, type_vocab_size=6,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def _reads_in(monkeypatch, filename: str) -> list[int]:
    """Counts (in a one-element list) the tensor -> Python conversions made from ``filename``."""
    import sys  # noqa: PLC0415

    n = [0]
    for name in ("__bool__", "item", "__int__", "tolist"):
        method = getattr(torch.Tensor, name)

        def counted(t, *a, _m=method, **k):
            if sys._getframe(1).f_code.co_filename.endswith(filename):
                n[0] += 1
            return _m(t, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return n


@pytest.mark.parametrize("labelled", [[1, 0, -100], [-100, -100, -100]], ids=["labelled", "none_labelled"])
def test_nsp_loss_reads_nothing_and_is_the_mean_over_labelled_samples(monkeypatch, labelled):
    model = _tiny()
    ids = torch.randint(5, 50, (B, L), generator=torch.Generator().manual_seed(1))
    labels = torch.full((B, L), -100)
    labels[:, 2] = ids[:, 2]
    batch = {"input_ids": ids, "attention_mask": torch.tensor(AM), "labels": labels,
             "next_sentence_label": torch.tensor(labelled), "attn_mode": torch.tensor([0, 0, 1]),
             "src_len": torch.tensor(SRC), "seq_len": torch.tensor(SEQ)}
    reads = _reads_in(monkeypatch, "pretraining.py")
    out = model(**batch)
    assert reads[0] == 0  # the old forward: bool((nsp_label != -100).any())
    scored = [i for i, y in enumerate(labelled) if y != -100]  # UnifiedLM: bidirectional samples only
    if scored:
        want = F.cross_entropy(out.nsp_logits.float()[scored], torch.tensor(labelled)[scored])
        assert torch.equal(out.nsp_loss, want)
    else:  # zero, and still on the graph (DDP needs every parameter's gradient)
        assert out.nsp_loss.item() == 0.0 and out.nsp_loss.requires_grad
        out.nsp_loss.backward()
        assert model.nsp.weight.grad is not None and not model.nsp.weight.grad.any()


def test_trainer_leaves_the_mask_integers_on_the_host():
    model = _tiny()
    t = Trainer(model, lambda start: iter(()), TrainingConfig(max_steps=1, progress=False, precision="fp32"),
                device="cpu", log=lambda s: None)
    t.device = DEV
    batch = {"input_ids": torch.ones(B, L, dtype=torch.int64), "labels": torch.full((B, L), -100),
             "next_sentence_label": torch.tensor([1, 0, -100]), "attention_mask": torch.tensor(AM),
             "attn_mode": torch.tensor(MODE, dtype=torch.int8), "src_len": torch.tensor(SRC),
             "seq_len": torch.tensor(SEQ), "num_tokens": torch.tensor([6, 4, 5])}
    with FakeDevice() as fake:
        moved = t._to_device(batch)
        assert fake.blocking == 0
        host = {"attention_mask", "attn_mode", "src_len", "seq_len", "num_tokens", "labels", "input_ids"}
        assert {k for k, v in moved.items() if not on_dev(v)} == host
        assert all(moved[k] is batch[k] for k in host)
        # what the model then does with them: validated without a read, copied without waiting
        mode, src, seq = resolve_mask_args((B, L), moved["attention_mask"], moved["attn_mode"], moved["src_len"],
                                           moved["seq_len"], DEV)
        assert (fake.reads, fake.blocking) == (0, 0) and all(on_dev(x) for x in (mode, src, seq))
        t.dist = object()  # DDP (no device_ids) passes its inputs as they are: the same fields stay
        assert {k for k, v in t._to_device(batch).items() if not on_dev(v)} == host
        t.config.distributed = "fsdp"  # FSDP2 would copy CPU inputs with a blocking copy: all moved here
        assert all(on_dev(v) for v in t._to_device(batch).values())
        t.dist, t.config.distributed, t.model = None, "ddp", torch.nn.Linear(1, 1)  # declares no host fields
        assert all(on_dev(v) for v in t._to_device(batch).values())
        assert fake.blocking == 0


def test_labelled_positions_are_selected_without_a_device_read():
    """The MLM head's positions (a data-dependent count): found on the host from CPU labels, so
    no read of the device, no blocking copy; with device labels the boolean selection reads
    them. Same rows and labels either way, against a hand loop."""
    from unimask.models.heads import gather_labelled  # noqa: PLC0415

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g)
    labels = torch.full((3, 5), -100)
    labels[0, 1], labels[1, 4], labels[2, 0], labels[2, 3] = 7, 9, 11, 13
    rows = [(b, t) for b in range(3) for t in range(5) if labels[b, t] != -100]  # row-major
    with FakeDevice() as fake:
        h, y = gather_labelled(dev(hidden), labels)
        assert (fake.reads, fake.blocking) == (0, 0)
        assert on_dev(h) and on_dev(y)
        h_old, y_old = gather_labelled(dev(hidden), dev(labels))  # labels on the device: the two
        assert fake.reads == 2  # boolean selections (rows, labels) each read the mask
    assert values(y) == values(y_old) == [13 if r == (2, 3) else int(labels[r]) for r in rows]
    assert values(h) == values(h_old) == [hidden[b, t].tolist() for b, t in rows]


def test_host_positions_give_the_boolean_selections_gradient():
    from unimask.models.heads import _gather_at_host_positions  # noqa: PLC0415

    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, 8, generator=g)
    labels = torch.where(torch.rand(4, 6, generator=g) < 0.3, torch.randint(0, 50, (4, 6), generator=g), -100)
    proj = torch.randn(int((labels != -100).sum()), 8, generator=g)
    grads = []
    for select in (lambda h: (h[labels != -100], labels[labels != -100]), lambda h: _gather_at_host_positions(h, labels)):
        h = base.clone().requires_grad_()
        rows, y = select(h)
        (rows * proj).sum().backward()
        grads.append((rows.detach(), y, h.grad))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("given", ["default", "cpu_ints", "device_ints"])
def test_mass_decoder_lengths_need_at_most_one_read(given):
    """MASS's decoder lengths: the default made on the host and CPU ones checked there (no
    read, no blocking copy: the old decode made the default on the device and read it, and
    copied CPU ones with a blocking copy); device ones are read once."""
    from unimask.models.mass import _check_decoder_len, _decoder_lengths  # noqa: PLC0415

    arg = {"default": None, "cpu_ints": torch.tensor([3, 0, 5]), "device_ints": dev([3, 0, 5])}[given]
    with FakeDevice() as fake:
        got = _decoder_lengths(arg, 3, 5, DEV)
        assert (fake.reads, fake.blocking) == (int(given == "device_ints"), 0)
        assert on_dev(got) and got.dtype == torch.int64
        assert values(got) == ([5, 5, 5] if given == "default" else [3, 0, 5])
        wrap = dev if given == "device_ints" else torch.as_tensor
        with pytest.raises(ValueError, match=r"decoder_len\[1\] = 6 is outside \[0, 5\] \(decoder_input_ids has 5 columns\)"):
            _check_decoder_len(wrap([3, 6, -1]), 3, 5)
        with pytest.raises(ValueError, match=r"decoder_len has 2 entries but decoder_input_ids has B = 3 rows"):
            _check_decoder_len(wrap([3, 1]), 3, 5)
        with pytest.raises(TypeError, match="decoder_len must hold integers, got dtype torch.float32"):
            _check_decoder_len(wrap([3.0, 1.0, 2.0]), 3, 5)


def test_trainer_leaves_mass_fields_on_the_host():
    from unimask.models import MassSeq2Seq  # noqa: PLC0415

    torch.manual_seed(0)
    model = MassSeq2Seq(EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=16))
    t = Trainer(model, lambda start: iter(()), TrainingConfig(max_steps=1, progress=False, precision="fp32"),
                device="cpu", log=lambda s: None)
    t.device = DEV
    batch = {"input_ids": torch.ones(2, 6, dtype=torch.int64), "attention_mask": torch.ones(2, 6, dtype=torch.int64),
             "decoder_input_ids": torch.ones(2, 3, dtype=torch.int64), "decoder_positions": torch.zeros(2, 3, dtype=torch.int64),
             "decoder_labels": torch.full((2, 3), -100), "decoder_len": torch.tensor([3, 2])}
    with FakeDevice() as fake:
        moved = t._to_device(batch)
        assert fake.blocking == 0
    host = {"attention_mask", "decoder_len", "decoder_labels", "input_ids", "decoder_input_ids", "decoder_positions"}
    assert {k for k, v in moved.items() if not on_dev(v)} == host


def test_copies_to_cuda_go_through_pinned_memory(monkeypatch):
    """From pageable memory CUDA may synchronise the stream to stage a copy; ``_on`` pins the
    CPU tensor first and copies it with ``non_blocking=True`` (recorded here: no GPU to copy to)."""
    from unimask.masks import _on  # noqa: PLC0415

    calls = []
    real_to = torch.Tensor.to

    def pin(t):
        calls.append("pin")
        return t.clone()

    def to(t, *a, **k):
        if any(torch.device(x).type == "cuda" for x in a if isinstance(x, (str, torch.device))):
            calls.append(("to", k.get("non_blocking", False)))
            return t
        return real_to(t, *a, **k)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda t: False)
    monkeypatch.setattr(torch.Tensor, "to", to)
    _on(torch.arange(3), torch.device("cuda"))
    _on(torch.arange(3), "cuda:0")
    assert calls == ["pin", ("to", True)] * 2
    calls.clear()
    t = torch.arange(3)
    assert _on(t, torch.device("cpu")) is t and calls == []  # nothing to copy


def test_finetune_batches_are_copied_without_waiting():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.int64), "attention_mask": torch.ones(2, 3, dtype=torch.int64),
             "labels": torch.tensor([0, 1])}
    with FakeDevice() as fake:
        moved = ft._to(batch, DEV)
        assert fake.blocking == 0  # the old helper: one blocking copy (a stream sync) per field
    assert all(on_dev(v) and values(v) == batch[k].tolist() for k, v in moved.items())
    cpu = ft._to(batch, torch.device("cpu"))
    assert all(cpu[k] is batch[k] for k in batch)
