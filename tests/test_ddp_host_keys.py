"""Under DDP the Trainer leaves the model's ``host_batch_keys`` on the CPU, as in one process.

DDP copies its inputs to the device only when it is given ``device_ids``
(``DistributedDataParallel._pre_forward``: ``if self.device_ids: ... _to_kwargs(...)``, a
blocking copy from the CPU); the Trainer used to give it ``[device.index]`` on CUDA and so moved
every field to the device itself, and the model then read its mask integers and MLM labels
back (a device synchronisation per micro-batch) and did not range-check the embedding ids.
Now DDP gets ``device_ids=None`` (the module is on one device already) and the host fields
stay on the CPU. FSDP2's root copies every tensor input to its CUDA device unconditionally
(``FSDPState._root_pre_forward``), so under ``distributed="fsdp"`` everything is still moved.

No GPU and no second process here: a world-size-1 gloo group in this process (FileStore),
the simulated accelerator of ``test_validation_syncs`` (device reads and blocking copies
counted) and a recorder in place of ``DistributedDataParallel`` for the CUDA arguments.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.distributed as dist
from test_validation_syncs import DEV, FakeDevice, dev, on_dev, values
from torch import nn
from unimask.models import EncoderConfig, UnifiedLM
from unimask.training import Trainer, TrainingConfig

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")]

B, L = 3, 6
AM = [[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
#: UnifiedLM.host_batch_keys present in :func:`_batch`
HOST = {"input_ids", "token_type_ids", "attention_mask", "labels", "attn_mode", "src_len", "seq_len"}


def _init_world_of_one(store: Path) -> None:
    """A gloo process group of one rank (this process), rendezvous through a file."""
    dist.init_process_group("gloo", store=dist.FileStore(str(store), 1), rank=0, world_size=1)


@pytest.fixture
def world_of_one(tmp_path: Path) -> Iterator[None]:
    """A world-size-1 gloo group for the test, destroyed afterwards."""
    assert not dist.is_initialized()
    _init_world_of_one(tmp_path / "store")
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _tiny() -> UnifiedLM:
    torch.manual_seed(0)
    return UnifiedLM(EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=16, type_vocab_size=6,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded UNILM batch (bidirectional, seq2seq, left-to-right rows) as a collator gives it."""
    g = torch.Generator().manual_seed(seed)
    am = torch.tensor(AM)
    ids = torch.randint(5, 50, (B, L), generator=g) * am
    labels = torch.where((torch.rand(B, L, generator=g) < 0.4) & (am > 0), ids, -100)
    labels[:, 1] = ids[:, 1]  # every row scores at least one token
    return {"input_ids": ids, "token_type_ids": torch.zeros(B, L, dtype=torch.int64), "attention_mask": am,
            "labels": labels, "next_sentence_label": torch.tensor([1, 0, -100]),
            "attn_mode": torch.tensor([0, 3, 1], dtype=torch.int8), "src_len": torch.tensor([0, 2, 0]),
            "seq_len": torch.tensor([6, 4, 5])}


def _trainer(model: nn.Module, **config) -> Trainer:
    cfg = TrainingConfig(**{"max_steps": 1, "progress": False, "precision": "fp32", "eval_every": 0, **config})
    return Trainer(model, lambda start: (_batch(i) for i in range(start, 10**6)), cfg, device="cpu",
                   log=lambda s: None)


def _on_simulated_device(model: nn.Module) -> None:
    """Every parameter and buffer of ``model`` "on" the simulated accelerator."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(dev(p.detach()), requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = dev(b)


def test_ddp_keeps_the_host_keys_on_the_cpu_and_fsdp_moves_everything(world_of_one):
    ddp = _trainer(_tiny())
    assert isinstance(ddp.wrapped, nn.parallel.DistributedDataParallel) and not ddp.sharded
    fsdp = _trainer(_tiny(), distributed="fsdp")
    assert fsdp.sharded
    batch = _batch()
    assert HOST <= UnifiedLM.host_batch_keys and set(batch) - HOST == {"next_sentence_label"}
    for t in (ddp, fsdp):
        t.device = DEV
    with FakeDevice() as fake:
        moved = ddp._to_device(batch)
        assert {k for k, v in moved.items() if not on_dev(v)} == HOST
        assert all(moved[k] is batch[k] for k in HOST)
        assert on_dev(moved["next_sentence_label"]) and values(moved["next_sentence_label"]) == [1, 0, -100]
        everything = fsdp._to_device(batch)  # FSDP2's root would copy them with a blocking copy
        assert all(on_dev(v) for v in everything.values())
        assert all(values(everything[k]) == batch[k].tolist() for k in batch)
        assert fake.blocking == 0  # every copy queued without waiting


def test_a_ddp_forward_reads_nothing_from_the_device(world_of_one):
    """A UnifiedLM forward through the DDP-wrapped model on the simulated accelerator, fed by
    ``Trainer._to_device``: no device read, no blocking copy (before: the mask validation read the
    integers, the MLM head's boolean selections read the labels). The loss is the one of the same
    forward on the CPU without DDP."""
    model = _tiny()
    batch = _batch()
    want = model(**batch)
    t = _trainer(model)
    _on_simulated_device(model)
    t.device = DEV
    with FakeDevice() as fake:
        out = t.wrapped(**t._to_device(batch))
        assert (fake.reads, fake.blocking) == (0, 0)
        assert on_dev(out.loss) and on_dev(out.mlm_logits) and on_dev(out.mlm_labels)
    assert values(out.loss) == want.loss.item()
    assert values(out.mlm_labels) == want.mlm_labels.tolist()
    assert torch.equal(out.mlm_logits.as_subclass(torch.Tensor), want.mlm_logits)
    with FakeDevice(), pytest.raises(ValueError, match=r"input_ids\[1, 2\] = 50 is outside \[0, 50\)"):
        bad = dict(batch, input_ids=batch["input_ids"].clone())
        bad["input_ids"][1, 2] = 50  # range-checked on the host, as in one process
        t.wrapped(**t._to_device(bad))


class _RecordingDDP(nn.Module):
    """Stands in for ``DistributedDataParallel``: records its arguments."""

    calls: ClassVar[list[dict]] = []

    def __init__(self, module: nn.Module, **kwargs) -> None:
        super().__init__()
        self.module = module
        _RecordingDDP.calls.append(kwargs)


@pytest.mark.parametrize("device", ["cuda:1", "cuda", "cpu"])
def test_ddp_gets_no_device_ids_so_it_leaves_the_inputs_alone(monkeypatch, device):
    model = _tiny()
    t = _trainer(model, find_unused_parameters=False)
    t.dist, t.device = object(), torch.device(device)  # as under torchrun on that device (no GPU here)
    _RecordingDDP.calls = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", _RecordingDDP)
    wrapped = t._wrap(model)
    assert isinstance(wrapped, _RecordingDDP) and wrapped.module is model
    assert _RecordingDDP.calls == [{"device_ids": None, "find_unused_parameters": False}]


def test_ddp_step_equals_the_single_process_step(tmp_path):
    """Two optimizer steps of two micro-batches under DDP (world 1, gloo; host keys on the CPU)
    against the single-process Trainer on the same batches: the same parameters, grad norms and
    losses, bit for bit (the logged loss is summed on the device in float64 and all-reduced in
    float32 under torch.distributed: the single-process sum rounded to float32), and the same
    held-out evaluation (through the unwrapped model)."""
    assert not dist.is_initialized()
    single = _trainer(_tiny(), max_steps=2, grad_accum=2, lr=1e-2, warmup_steps=0)
    single.eval_data = [_batch(100), _batch(101)]
    single.train()
    _init_world_of_one(tmp_path / "store")
    try:
        ddp = _trainer(_tiny(), max_steps=2, grad_accum=2, lr=1e-2, warmup_steps=0)
        assert isinstance(ddp.wrapped, nn.parallel.DistributedDataParallel)
        ddp.eval_data = single.eval_data
        ddp.train()
        evaluated = ddp.evaluate()
    finally:
        dist.destroy_process_group()
    assert [h["step"] for h in ddp.state.history] == [1, 2]
    for a, b in zip(single.state.history, ddp.state.history):
        assert a["grad_norm"] == b["grad_norm"] and a["lr"] == b["lr"]
        assert b["loss"] == float(torch.tensor(a["loss"], dtype=torch.float32))
    for (name, p), q in zip(single.model.named_parameters(), ddp.model.parameters()):
        assert torch.equal(p, q), name
    assert evaluated == single.evaluate() and set(evaluated) == {"eval_loss", "eval_accuracy", "eval_perplexity"}


@pytest.mark.parametrize("world", [1, 3])
def test_window_weights_under_torch_distributed_read_nothing(world_of_one, world):
    """The step's loss weights ``world * n / N`` under torch.distributed are made on the device
    from the all-reduced totals, with no read back (before: a blocking copy of the counts and a
    ``.tolist()`` of the totals, two synchronisations per step before the first forward). Oracle:
    the Python float quotient, rounded to float32 as it is when it multiplies a float32 loss."""
    t = _trainer(_tiny())
    t.world = world  # the factor only; the group (one rank) all-reduces the totals unchanged
    counts = [{"mlm": 3, "nsp": 2}, {"mlm": 5, "nsp": 0}, {"mlm": 0, "nsp": 0}]
    totals = {k: sum(c[k] for c in counts) for k in ("mlm", "nsp")}
    t.device = DEV
    with FakeDevice() as fake:
        got = t._window_weights(counts)
        assert (fake.reads, fake.blocking) == (0, 0)
    for g, c in zip(got, counts):
        for k, n in totals.items():
            assert on_dev(g[k]) and g[k].dtype == torch.float32
            want = torch.tensor(world * c[k] / n if n else 0.0, dtype=torch.float32)
            assert torch.equal(g[k].as_subclass(torch.Tensor), want), (k, c, values(g[k]))
    # a float32 loss times the device weight is the loss times the Python float, bitwise
    from unimask.training import _weighted_loss  # noqa: PLC0415

    out = type("Out", (), {"mlm_loss": torch.tensor(2.3456789), "nsp_loss": torch.tensor(0.71), "mlm_labels": None})()
    host_w = {k: world * counts[0][k] / totals[k] for k in ("mlm", "nsp")}
    dev_w = {k: v.as_subclass(torch.Tensor) for k, v in got[0].items()}
    assert torch.equal(_weighted_loss(out, counts[0], dev_w, 1), _weighted_loss(out, counts[0], host_w, 1))
