"""Code paths that CI (CPU only) would otherwise never run: what a CUDA machine takes by default
(autocast inference, models on another device than their inputs, the ``auto`` precision choice),
each forced on the CPU."""

from __future__ import annotations

import pytest
import torch

from unimask.masks import LEFT_TO_RIGHT
from unimask.models import CausalLM, EncoderConfig, MassSeq2Seq

V, MASK = 60, 3


def _cfg() -> EncoderConfig:
    return EncoderConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=48, type_vocab_size=6)


@torch.no_grad()
def test_kv_cache_decoding_under_bf16_autocast_matches_fp32():
    """Incremental decoding under autocast (how bf16/fp16 inference runs on a GPU): the new
    token's keys/values come out of the projection in bf16 while the cache holds fp32; the step
    must write them (``scatter_`` does not cast) and give the hidden state of a full fp32
    forward, to bf16 accuracy."""
    torch.manual_seed(0)
    model = CausalLM(_cfg()).eval()
    enc = model.encoder
    ids = torch.randint(4, V, (2, 7))
    B, L = ids.shape
    mode = torch.full((B,), LEFT_TO_RIGHT)
    full = enc(ids, attn_mode=mode).last_hidden_state  # fp32 oracle
    cache = enc.new_cache(B, L)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        enc(ids[:, :-1], attn_mode=mode, seq_len=torch.full((B,), L - 1), cache=cache)  # prefill
        step = enc(ids[:, -1:], cache=cache, cache_positions=torch.full((B, 1), L - 1)).last_hidden_state
    assert cache.k[0].dtype == torch.float32
    torch.testing.assert_close(step[:, 0].float(), full[:, -1], atol=1e-2, rtol=0)
    # and the tokens generated with the cache under autocast are well formed
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(ids, max_new_tokens=4, use_cache=True)
        beams = model.generate(ids, max_new_tokens=4, use_cache=True, num_beams=2)
    assert out.shape == beams.shape == (B, 4)


@torch.no_grad()
def test_mass_cached_decoder_step_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    model = MassSeq2Seq(_cfg(), num_decoder_layers=2).eval()
    src = torch.randint(4, V, (2, 6))
    dec = torch.randint(4, V, (2, 4))
    pos = torch.arange(4)[None].expand(2, 4)
    mem = model.encode(src)
    full = model.decode(mem, dec, pos)  # fp32, no cache
    cache = model.new_cache(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mem16 = model.encode(src)
        for t in range(4):
            h = model.decode(mem16, dec[:, t:t + 1], pos[:, t:t + 1], cache=cache, slots=torch.full((2, 1), t))
    torch.testing.assert_close(h[:, 0].float(), full[:, -1], atol=1e-2, rtol=0)


class _Recorder:
    """Stands in for a model's ``generate``: records where its tensor arguments live."""

    def __init__(self) -> None:
        self.devices: dict[str, torch.device] = {}

    def __call__(self, ids, **kw):
        self.devices = {"input_ids": ids.device, **{k: v.device for k, v in kw.items() if isinstance(v, torch.Tensor)}}
        return torch.tensor([[7, 2, 0]] * ids.shape[0])  # token 7, then [SEP] = 2


def test_seq2seq_finetuners_generate_on_the_models_device():
    """The fine-tuners build the source batch on the CPU; with the model on another device (a
    GPU; here ``meta``) it must reach ``model.generate`` on the model's device, or the first
    embedding lookup fails (CPU ids, CUDA table)."""
    from unimask.finetune import MassFinetuner, Seq2SeqFinetuner
    from unimask.models import UnifiedLM

    for ft in (MassFinetuner(MassSeq2Seq(_cfg()).to("meta"), cls_id=1, sep_id=2, start_id=MASK),
               Seq2SeqFinetuner(UnifiedLM(_cfg()).to("meta"), cls_id=1, sep_id=2, mask_id=MASK)):
        rec = _Recorder()
        ft.model.generate = rec
        assert ft.generate([[5, 6], [9]], max_new_tokens=3) == [[7], [7]]
        assert rec.devices and set(rec.devices.values()) == {torch.device("meta")}, (type(ft).__name__, rec.devices)


def _fake_gpu(monkeypatch, major: int) -> None:
    """Make ``torch.cuda`` describe one GPU of compute capability ``major``.x on which a bf16
    tensor can be created (true of every NVIDIA GPU torch supports: before sm_80 bf16 is emulated)."""
    import types

    props = types.SimpleNamespace(major=major, minor=0, name=f"fake sm_{major}0", total_memory=16 << 30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True, raising=False)
    monkeypatch.setattr(torch.version, "hip", None)


def test_auto_precision_is_fp16_with_loss_scaling_on_gpus_without_native_bf16(monkeypatch):
    """``precision="auto"``: bf16 on Ampere and later, fp16 + GradScaler before (V100 sm_70,
    T4 sm_75), where ``torch.cuda.is_bf16_supported()`` is True only through emulation."""
    from torch import nn

    from unimask.training import Trainer, TrainingConfig

    def auto(major: int) -> Trainer:
        _fake_gpu(monkeypatch, major)
        # a model without tensors: moving it to "cuda" touches no device
        return Trainer(nn.Module(), lambda start: iter(()), TrainingConfig(progress=False), device="cuda")

    for major in (7, 6):
        t = auto(major)
        assert (t.precision, type(t.scaler)) == ("fp16", torch.amp.GradScaler), major
    for major in (8, 9):
        t = auto(major)
        assert (t.precision, t.scaler) == ("bf16", None), major


def test_checkpoint_rng_state_is_this_gpus_generator_only(monkeypatch):
    """A checkpoint keeps the CUDA generator of the trainer's own GPU (not every visible GPU's:
    that creates a CUDA context on each of them in every rank) and restores it to that GPU;
    an older checkpoint's per-GPU list gives this GPU's entry, or nothing when it has none."""
    from unimask import training as T

    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("read every GPU's generator"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("wrote every GPU's generator"))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": calls.append(("get", device)) or torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": calls.append(("set", device, s.tolist())))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for dev in (torch.device("cuda", 1), torch.device("cuda")):  # explicit index, or the current device
        calls.clear()
        state = T._rng_state(dev)
        assert calls == [("get", dev)]
        T._set_rng_state(state, dev)
        assert calls[-1] == ("set", dev, [7])
        old = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
        T._set_rng_state({**state, "cuda": old}, dev)
        assert calls[-1] == ("set", dev, [2])  # GPU 1's entry
        n = len(calls)
        T._set_rng_state({**state, "cuda": old[:1]}, dev)  # saved with one GPU visible: none for GPU 1
        assert len(calls) == n
    calls.clear()
    cpu = T._rng_state(torch.device("cpu"))
    T._set_rng_state({**cpu, "cuda": torch.tensor([3], dtype=torch.uint8)}, torch.device("cpu"))
    assert "cuda" not in cpu and calls == []
