"""Trainer: optimizer groups, schedule, exact resume, checksummed checkpoints, evaluation, plot."""

from __future__ import annotations

import pytest
import torch

from unimask.models import EncoderConfig, MassSeq2Seq, UnifiedLM
from unimask.pretrain import CorpusBatches, SpecialIds, CorpusCollator, examples_of
from unimask.training import (
    CheckpointError,
    Trainer,
    TrainingConfig,
    configure_optimizers,
    fsdp_blocks,
    fsdp_shard,
    linear_schedule,
    load_checkpoint_file,
    save_checkpoint_file,
)

SP = SpecialIds(pad=0, cls=101, sep=102, mask=103, vocab_size=1200)


def tiny_model(seed=0, dropout=0.1):
    torch.manual_seed(seed)
    cfg = EncoderConfig(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, type_vocab_size=6,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return UnifiedLM(cfg)


def synthetic_documents(n_docs=40, seed=0):
    """Documents of 'sentences' from a tiny Markov-ish generator (token ids 1000..1199)."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n_docs):
        sents = []
        for _ in range(4):
            n = int(torch.randint(5, 12, (1,), generator=g))
            start = int(torch.randint(1000, 1150, (1,), generator=g))
            sents.append([start + (k * 7) % 50 for k in range(n)])
        docs.append(sents)
    return docs


def source(docs, batch_size=8, seed=0, rank=0, world=1):
    collate = CorpusCollator(docs, "unilm", 24, SP)
    return CorpusBatches(examples_of(docs), collate, batch_size, seed, rank, world)


def test_configure_optimizers_excludes_bias_and_layernorm():
    model = tiny_model()
    opt = configure_optimizers(model, lr=1e-3, weight_decay=0.01)
    decay, plain = opt.param_groups
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    for p in plain["params"]:
        assert names[id(p)].endswith("bias") or ".ln" in names[id(p)] or "ln" in names[id(p)].split(".")[-2]
    for p in decay["params"]:
        assert p.dim() == 2, names[id(p)]
    n_all = len(list(model.parameters()))
    assert len(decay["params"]) + len(plain["params"]) == n_all
    assert any(p is model.encoder.embeddings.word.weight for p in decay["params"])


def test_linear_schedule_warmup_then_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = linear_schedule(opt, warmup_steps=4, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    expect = [0, 0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]
    assert lrs == pytest.approx(expect)


def test_batch_source_is_exact_and_resumable():
    docs = synthetic_documents()
    src = source(docs)
    it = src.batches(0)
    first = [next(it) for _ in range(7)]
    again = list(zip(range(3), src.batches(4)))
    for k, b in again:
        for key in first[4 + k]:
            assert torch.equal(first[4 + k][key], b[key])
    # epochs re-permute and re-mask (dynamic masking)
    e0, idx0 = src.indices(0)
    e1, idx1 = src.indices(src.per_epoch)
    assert (e0, e1) == (0, 1) and idx0 != idx1


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_gives_identical_parameters(tmp_path, grad_accum):
    """2N steps in one run == N steps, checkpoint, fresh process objects, resume, N steps."""
    docs = synthetic_documents()
    N = 3

    def cfg(out):
        return TrainingConfig(max_steps=2 * N, lr=3e-3, warmup_steps=2, grad_accum=grad_accum, eval_every=0,
                              output_dir=str(out), progress=False, precision="fp32")

    a = Trainer(tiny_model(), source(docs), cfg(tmp_path / "a"), device="cpu", log=lambda s: None)
    a.train()

    b = Trainer(tiny_model(), source(docs), cfg(tmp_path / "b"), device="cpu", log=lambda s: None)
    b.train(until=N)
    b.save_checkpoint()
    torch.manual_seed(12345)  # scramble the global RNG: resume must restore it
    c = Trainer(tiny_model(seed=99), source(docs), cfg(tmp_path / "b"), device="cpu", log=lambda s: None)
    c.load_checkpoint(tmp_path / "b")
    assert c.state.step == N and c.state.data_position == N * grad_accum
    c.train()
    pa, pc = a.model.state_dict(), c.model.state_dict()
    for k in pa:
        assert torch.equal(pa[k], pc[k]), k
    assert [h["loss"] for h in a.state.history] == [h["loss"] for h in c.state.history]
    assert (tmp_path / "a" / "loss_curve.png").stat().st_size > 1000


def test_checkpoint_checksum_detects_corruption(tmp_path):
    path = save_checkpoint_file({"x": torch.arange(100)}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint_file(path)["x"], torch.arange(100))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint_file(path)
    (tmp_path / "c.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="checksum file missing"):
        load_checkpoint_file(path)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("content", [b"", b"  \n", b"not-a-digest  c.pt\n", b"\xff\xfe\x00garbage", b"abc123  c.pt\n"])
def test_damaged_checksum_file_is_a_checkpoint_error(tmp_path, content):
    """An empty or garbled .sha256 raised IndexError / UnicodeDecodeError (or compared
    garbage); now CheckpointError naming the file. An intact one still loads."""
    path = save_checkpoint_file({"x": torch.arange(3)}, tmp_path / "c.pt")
    good = (tmp_path / "c.pt.sha256").read_bytes()
    (tmp_path / "c.pt.sha256").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"checksum file .*c\.pt\.sha256 is damaged"):
        load_checkpoint_file(path)
    (tmp_path / "c.pt.sha256").write_bytes(good)
    assert torch.equal(load_checkpoint_file(path)["x"], torch.arange(3))


def test_trainer_evaluates_and_loss_falls(tmp_path):
    docs = synthetic_documents(60)
    held = synthetic_documents(8, seed=1)
    collate = CorpusCollator(held, "unilm", 24, SP)
    ex = examples_of(held)
    eval_batches = [collate(ex[i:i + 8], list(range(i, i + 8))) for i in range(0, 32, 8)]
    cfg = TrainingConfig(max_steps=30, lr=5e-3, warmup_steps=3, eval_every=10, output_dir=str(tmp_path),
                         progress=True, checkpoint_every=10, keep_checkpoints=2)
    t = Trainer(tiny_model(dropout=0.0), source(docs), cfg, eval_data=eval_batches, device="cpu", log=lambda s: None)
    before = t.evaluate()
    final = t.train()
    assert [e["step"] for e in t.state.evals] == [10, 20, 30]
    assert final["eval_loss"] < before["eval_loss"] - 0.5
    assert 0.0 <= final["eval_accuracy"] <= 1.0
    assert final["eval_perplexity"] == pytest.approx(torch.tensor(final["eval_loss"]).exp().item(), rel=1e-6)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-0000020.pt", "step-0000030.pt"]
    assert (tmp_path / "latest").read_text().strip() == "step-0000030.pt"
    assert (tmp_path / "loss_curve.png").is_file() and (tmp_path / "metrics.json").is_file()


def test_checkpoint_retention_keeps_this_runs_checkpoints_in_a_used_directory(tmp_path):
    """A directory holding a longer earlier run's checkpoints (steps 1, 8, 20): pruning by name
    deleted this run's new checkpoints right after writing them and left ``latest`` naming a
    deleted file. Now: retention orders by step and touches only steps <= the current one."""
    docs = synthetic_documents()
    for step in (1, 8, 20):
        save_checkpoint_file({"earlier": step}, tmp_path / f"step-{step:07d}.pt")
    cfg = TrainingConfig(max_steps=4, lr=1e-3, warmup_steps=0, eval_every=0, output_dir=str(tmp_path),
                         progress=False, precision="fp32", checkpoint_every=2, keep_checkpoints=1)
    t = Trainer(tiny_model(), source(docs), cfg, device="cpu", log=lambda s: None)
    t.train(until=2)
    t.save_checkpoint()
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-0000002.pt", "step-0000008.pt",
                                                                 "step-0000020.pt"]
    t.train()
    names = sorted(p.name for p in tmp_path.glob("step-*.pt"))
    assert names == ["step-0000004.pt", "step-0000008.pt", "step-0000020.pt"]
    assert sorted(p.name for p in tmp_path.glob("step-*.pt.sha256")) == [n + ".sha256" for n in names]
    assert (tmp_path / "latest").read_text().strip() == "step-0000004.pt"
    c = Trainer(tiny_model(), source(docs), cfg, device="cpu", log=lambda s: None)
    c.load_checkpoint(tmp_path)  # latest names a file that exists
    assert c.state.step == 4
    for n, v in t.model.state_dict().items():
        assert torch.equal(c.model.state_dict()[n], v), n


def test_fp16_needs_cuda_and_bf16_autocasts_on_the_cpu():
    with pytest.raises(ValueError, match="precision 'fp16' needs a CUDA device"):
        Trainer(tiny_model(), lambda s: iter(()), TrainingConfig(precision="fp16"), device="cpu")
    with pytest.raises(ValueError, match="precision 'bf16' autocasts on CUDA or the CPU, got meta"):
        Trainer(tiny_model(), lambda s: iter(()), TrainingConfig(precision="bf16"), device="meta")
    assert Trainer(tiny_model(), lambda s: iter(()), TrainingConfig(precision="bf16"), device="cpu").precision == "bf16"
    with pytest.raises(ValueError, match="grad_accum"):
        TrainingConfig(grad_accum=0)


def test_history_records_the_global_grad_norm_before_clipping():
    """Oracle: the same two micro-batches, each MLM loss weighted by its share of the two
    batches' masked tokens (NSP likewise by labelled samples), backward by hand, then
    sqrt(sum of squared gradients) over every parameter."""
    docs = synthetic_documents()
    cfg = TrainingConfig(max_steps=1, lr=1e-3, warmup_steps=0, grad_accum=2, grad_clip=1e-3, eval_every=0,
                         progress=False, precision="fp32")
    t = Trainer(tiny_model(dropout=0.0), source(docs), cfg, device="cpu", log=lambda s: None)
    t.train()
    ref = tiny_model(dropout=0.0)
    it = source(docs).batches(0)
    micro = [next(it) for _ in range(2)]
    n_mlm = [int((b["labels"] != -100).sum()) for b in micro]
    n_nsp = [int((b["next_sentence_label"] != -100).sum()) for b in micro]
    for b, m, k in zip(micro, n_mlm, n_nsp):
        out = ref(**b)
        (out.mlm_loss * (m / sum(n_mlm)) + out.nsp_loss * (k / sum(n_nsp) if sum(n_nsp) else 0.0)).backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ref.parameters() if p.grad is not None))
    assert t.state.history[0]["grad_norm"] == pytest.approx(float(norm), rel=1e-5)
    assert t.state.history[0]["grad_norm"] > 1e-3  # so the clip acted


def test_fsdp_units_are_the_encoder_blocks_and_sharding_needs_torch_distributed():
    model = tiny_model()
    assert fsdp_blocks(model) == list(model.encoder.layers)
    cfg = EncoderConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    mass = MassSeq2Seq(cfg, num_decoder_layers=1)
    assert fsdp_blocks(mass) == list(mass.encoder.layers)  # decoder layers stay in the root unit
    with pytest.raises(ValueError, match="torch.distributed"):
        fsdp_shard(model, "cpu")
    # without torch.distributed, distributed="fsdp" trains the plain model
    t = Trainer(model, lambda s: iter(()), TrainingConfig(distributed="fsdp", precision="fp32"), device="cpu")
    assert not t.sharded and t.wrapped is model


def test_bf16_on_the_cpu_autocasts_the_products_and_trains_like_fp32():
    """``precision="bf16"`` on the CPU: the encoder's linear layers compute in bf16 in training
    steps and in evaluation (forward hooks see bf16 outputs; fp32 without it), the parameters
    stay fp32, and the per-step losses follow the fp32 run's within bf16's precision."""
    docs = synthetic_documents()
    runs = {}
    for precision in ("fp32", "bf16"):
        model = tiny_model(dropout=0.0)
        seen = set()
        hook = model.encoder.layers[0].fc1.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
        cfg = TrainingConfig(max_steps=4, lr=3e-3, warmup_steps=1, eval_every=0, progress=False, precision=precision)
        t = Trainer(model, source(docs), cfg, device="cpu", eval_data=[source(docs).batch(0)], log=lambda s: None)
        t.train()
        train_seen = set(seen)
        seen.clear()
        metrics = t.evaluate()
        hook.remove()
        runs[precision] = ([h["loss"] for h in t.state.history], metrics["eval_loss"])
        want = torch.bfloat16 if precision == "bf16" else torch.float32
        assert train_seen == {want} and seen == {want}, (precision, train_seen, seen)
        assert all(p.dtype == torch.float32 for p in model.parameters())
    (fp32, fp32_eval), (bf16, bf16_eval) = runs["fp32"], runs["bf16"]
    assert bf16 != fp32  # the products really ran in bf16
    assert bf16 == pytest.approx(fp32, rel=3e-2) and bf16_eval == pytest.approx(fp32_eval, rel=3e-2)
