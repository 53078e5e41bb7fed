"""Data-parallel training under ``torchrun`` (2 processes, gloo, CPU).

Oracle: one process with gradient accumulation over the same two micro-batches. DDP averages
the two ranks' gradients; accumulation with ``loss / 2`` sums the two halves — the same update,
so the parameters must agree to float-reduction tolerance, and the per-step losses too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from unimask.pretrain import CorpusBatches, SpecialIds, CorpusCollator, examples_of, _init_distributed
    from unimask.training import Trainer, TrainingConfig
    from unimask.models import EncoderConfig, UnifiedLM

    out_dir, steps, grad_accum, bs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rank, world, device = _init_distributed("cpu")
    g = torch.Generator().manual_seed(0)
    docs = [[[1000 + int(t) for t in torch.randint(0, 200, (int(torch.randint(5, 14, (1,), generator=g)),), generator=g)]
             for _ in range(3)] for _ in range(40)]
    sp = SpecialIds(pad=0, cls=101, sep=102, mask=103, vocab_size=1200)

    class Recording(CorpusBatches):
        seen = []
        def batch(self, i):
            self.seen.append(self.indices(i)[1])
            return super().batch(i)

    src = Recording(examples_of(docs), CorpusCollator(docs, "unilm", 24, sp), bs, seed=7, rank=rank, world_size=world)
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, type_vocab_size=6,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = UnifiedLM(cfg)
    tc = TrainingConfig(max_steps=steps, lr=1e-2, warmup_steps=1, grad_accum=grad_accum, eval_every=0,
                        progress=False, precision="fp32")
    trainer = Trainer(model, src, tc, device="cpu", log=lambda s: None)
    assert (world > 1) == (trainer.wrapped is not model), "DDP wrapping expected under torchrun"
    trainer.train()
    with open(os.path.join(out_dir, f"seen-{world}-{rank}.json"), "w") as f:
        json.dump(src.seen, f)
    if rank == 0:
        torch.save({"params": model.state_dict(), "losses": [h["loss"] for h in trainer.state.history]},
                   os.path.join(out_dir, f"result-{world}.pt"))
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
        # skip interpreter finalization: a gloo worker thread still releasing the last
        # collective's tensors would abort the process (see unimask.pretrain.command)
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)
    """
)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.mark.slow
def test_torchrun_two_process_gloo_matches_single_process(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    steps, bs = 10, 4
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path), str(steps), "1", str(bs)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the oracle: one process, two micro-batches of bs accumulated per step
    r1 = subprocess.run([sys.executable, str(script), str(tmp_path), str(steps), "2", str(bs)],
                        env=_env(), capture_output=True, text=True, timeout=280)
    assert r1.returncode == 0, r1.stderr[-3000:]

    seen0 = json.loads((tmp_path / "seen-2-0.json").read_text())
    seen1 = json.loads((tmp_path / "seen-2-1.json").read_text())
    single = json.loads((tmp_path / "seen-1-0.json").read_text())
    assert len(seen0) == len(seen1) == steps
    for s in range(steps):
        assert not set(seen0[s]) & set(seen1[s]), "ranks must see disjoint examples"
        assert seen0[s] + seen1[s] == single[2 * s] + single[2 * s + 1], "global batch = single-process batch"

    ddp = torch.load(tmp_path / "result-2.pt")
    ref = torch.load(tmp_path / "result-1.pt")
    assert ddp["losses"] == pytest.approx(ref["losses"], rel=1e-5, abs=1e-6)
    assert sum(ddp["losses"][-3:]) < sum(ddp["losses"][:3]) - 0.3, ddp["losses"]  # it trains
    for k, v in ref["params"].items():
        assert torch.allclose(ddp["params"][k], v, atol=2e-5, rtol=1e-4), k


# ---------------------------------------------------------------------------------------------
# FSDP (FSDP2 ``fully_shard``) with 2 gloo ranks on the CPU
#
# Oracle: one plain process (no torch.distributed) with twice the accumulation over the same
# micro-batches. FSDP reduce-scatters the gradient *average* over ranks, as DDP all-reduces it,
# so the update is the one the single process computes; only the float summation order
# differs (per rank: accumulate 2 micro-steps, then (g0 + g1) / 2; single: 4 micro-steps of
# loss / 4 in sequence), ~1e-7 relative per gradient in fp32. Measured here (8 steps, lr 1e-2,
# one thread per process; UNILM / MASS): losses 3e-8 / 5e-8 relative, global grad norms
# 1.4e-7 / 2e-7 relative, parameters 1.2e-7 absolute (|p| ~ 0.02-1). The tolerances below
# (1e-6 relative, 1e-6 absolute) leave 5-8x headroom for other CPUs' summation orders and
# still catch any real difference: a wrong
# average, a skipped or repeated micro-batch, or a clip that used one shard's norm all move
# these numbers by 1e-3 or more. Resume is compared with torch.equal: it replays the same
# arithmetic.

FSDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from unimask.pretrain import CorpusBatches, SpecialIds, CorpusCollator, examples_of, _init_distributed
    from unimask.training import Trainer, TrainingConfig
    from unimask.models import EncoderConfig, MassSeq2Seq, UnifiedLM

    out_dir, mode, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rank, world, device = _init_distributed("cpu")
    g = torch.Generator().manual_seed(0)
    docs = [[[1000 + int(t) for t in torch.randint(0, 200, (int(torch.randint(5, 14, (1,), generator=g)),), generator=g)]
             for _ in range(3)] for _ in range(48)]
    held = docs[40:]
    docs = docs[:40]
    sp = SpecialIds(pad=0, cls=101, sep=102, mask=103, vocab_size=1200)
    held_ex = examples_of(held)
    BS = 4
    accum = 4 // world  # global batch: 4 micro-batches of BS examples per optimizer step

    def make(dropout, seed=0, objective="unilm", **kw):
        src = CorpusBatches(examples_of(docs), CorpusCollator(docs, objective, 24, sp), BS, seed=7,
                            rank=rank, world_size=world)
        collate_held = CorpusCollator(held, objective, 24, sp)
        eval_batches = [collate_held(held_ex[i:i + 6], list(range(i, i + 6))) for i in range(0, 12, 6)]
        torch.manual_seed(seed)
        cfg = EncoderConfig(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=32, type_vocab_size=6,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        model = UnifiedLM(cfg) if objective == "unilm" else MassSeq2Seq(cfg, num_decoder_layers=2)
        tc = TrainingConfig(max_steps=steps, lr=1e-2, warmup_steps=1, grad_accum=accum, grad_clip=0.5,
                            progress=False, precision="fp32", distributed="fsdp", **kw)
        trainer = Trainer(model, src, tc, eval_data=eval_batches, device="cpu", log=lambda s: None)
        if world > 1:  # really sharded: DTensor parameters, each rank holding about half of every one
            from torch.distributed.tensor import DTensor
            ps = list(model.parameters())
            assert ps and all(isinstance(p, DTensor) for p in ps), "FSDP2 DTensor parameters expected"
            local = sum(p.to_local().numel() for p in ps)
            total = sum(p.numel() for p in ps)
            assert local <= total // 2 + 64, (local, total)
            assert trainer.sharded
        return model, trainer

    def save(name, trainer, **extra):
        full = trainer._model_state()  # collective under FSDP; full tensors on rank 0 only
        if rank == 0:
            torch.save({"params": full, "history": trainer.state.history, "evals": trainer.state.evals, **extra},
                       os.path.join(out_dir, name))

    if mode == "train":
        # A0: no dropout, compared with the single-process oracle; rank 1 initialises another
        # model (seed 1000): FSDP must start every rank from rank 0's, as DDP does
        model, trainer = make(0.0, seed=1000 * rank, eval_every=steps)
        before = trainer.evaluate()
        trainer.train()
        save(f"a0-{world}.pt", trainer, before=before)
        # M0: MASS (encoder-decoder; decoder layers and tied output projection in the root unit)
        _, tm = make(0.0, seed=1000 * rank, objective="mass", eval_every=steps)
        tm.train()
        save(f"m0-{world}.pt", tm)
        if world > 1:
            # A1: dropout on, uninterrupted 2N steps, evaluations at N and 2N (each right before
            # a checkpoint: the optimizer state must still map to the parameters), checkpoint
            _, t1 = make(0.1, output_dir=os.path.join(out_dir, "a1"), eval_every=steps // 2)
            t1.train()
            save("a1.pt", t1)
            # C: the same run stopped after N steps and checkpointed (resumed by mode "resume")
            _, tc_ = make(0.1, output_dir=os.path.join(out_dir, "c"), eval_every=steps // 2)
            tc_.train(until=steps // 2)
            tc_.save_checkpoint()
    elif mode == "resume":
        torch.manual_seed(12345 + rank)  # scramble every rank's RNG: resume must restore each
        _, t2 = make(0.1, seed=99, output_dir=os.path.join(out_dir, "c"), eval_every=steps // 2)
        t2.load_checkpoint(os.path.join(out_dir, "c"))
        assert t2.state.step == steps // 2 and t2.state.data_position == (steps // 2) * accum
        t2.train()
        save("c.pt", t2)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
        # skip interpreter finalization: a gloo worker thread still releasing the last
        # collective's tensors would abort the process (see unimask.pretrain.command)
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)
    """
)


def _torchrun(script, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(script), *map(str, args)]


@pytest.mark.slow
def test_fsdp_two_process_gloo_matches_single_process_and_resumes_exactly(tmp_path):
    from unimask.models import EncoderConfig, UnifiedLM
    from unimask.training import load_checkpoint_file

    script = tmp_path / "train_fsdp.py"
    script.write_text(FSDP_SCRIPT)
    steps = 8
    r = subprocess.run(_torchrun(script, tmp_path, "train", steps), env=_env(), capture_output=True, text=True,
                       timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run(_torchrun(script, tmp_path, "resume", steps), env=_env(), capture_output=True, text=True,
                       timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r1 = subprocess.run([sys.executable, str(script), str(tmp_path), "train", str(steps)], env=_env(),
                        capture_output=True, text=True, timeout=280)
    assert r1.returncode == 0, r1.stderr[-3000:]

    # 1. FSDP with 2 ranks == one process over the same global batches: losses, global grad
    # norms (so clipping used the norm over both shards), held-out metrics, parameters; for
    # UNILM and for MASS
    fsdp, ref = torch.load(tmp_path / "m0-2.pt"), torch.load(tmp_path / "m0-1.pt")
    assert [h["loss"] for h in fsdp["history"]] == pytest.approx([h["loss"] for h in ref["history"]], rel=1e-6)
    assert fsdp["evals"][-1]["eval_loss"] == pytest.approx(ref["evals"][-1]["eval_loss"], rel=1e-6)
    assert fsdp["params"].keys() == ref["params"].keys() and any(k.startswith("decoder.") for k in ref["params"])
    for k, v in ref["params"].items():
        assert torch.allclose(fsdp["params"][k], v, atol=1e-6, rtol=1e-6), k
    fsdp, ref = torch.load(tmp_path / "a0-2.pt"), torch.load(tmp_path / "a0-1.pt")
    losses = [h["loss"] for h in fsdp["history"]]
    assert losses == pytest.approx([h["loss"] for h in ref["history"]], rel=1e-6)
    norms = [h["grad_norm"] for h in fsdp["history"]]
    assert norms == pytest.approx([h["grad_norm"] for h in ref["history"]], rel=1e-6)
    assert sum(n > 0.5 for n in norms) >= 2, norms  # the clip (0.5) was active
    assert sum(losses[-3:]) < sum(losses[:3]) - 0.3, losses  # it trains
    assert fsdp["evals"][-1]["eval_loss"] == pytest.approx(ref["evals"][-1]["eval_loss"], rel=1e-6)
    assert fsdp["evals"][-1]["eval_loss"] < fsdp["before"]["eval_loss"] - 0.3
    assert fsdp["params"].keys() == ref["params"].keys()
    for k, v in ref["params"].items():
        assert torch.allclose(fsdp["params"][k], v, atol=1e-6, rtol=1e-6), k

    # 2. N steps + checkpoint + new processes + resume + N steps == 2N steps, exactly (dropout
    # on: every rank's RNG stream is restored)
    a1, c = torch.load(tmp_path / "a1.pt"), torch.load(tmp_path / "c.pt")
    assert [h["loss"] for h in c["history"]] == [h["loss"] for h in a1["history"]]
    assert [e["step"] for e in c["evals"]] == [4, 8] and c["evals"] == a1["evals"]
    for k, v in a1["params"].items():
        assert torch.equal(c["params"][k], v), k

    # 3. the checkpoint holds a full (unsharded) state dict that a plain model loads strictly
    ckpt = load_checkpoint_file(tmp_path / "a1" / "step-0000008.pt")
    cfg = EncoderConfig(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, type_vocab_size=6)
    plain = UnifiedLM(cfg)
    plain.load_state_dict(ckpt["model"], strict=True)
    for k, v in plain.state_dict().items():
        assert type(v) is torch.Tensor and torch.equal(v, a1["params"][k]), k
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2


@pytest.mark.slow
def test_pretrain_cli_fsdp_two_ranks_resumes_and_saves_a_full_model(tmp_path):
    """``torchrun -m unimask.pretrain --distributed fsdp``: MASS (decoder and tied output in
    the root unit) trains, checkpoints, resumes, and rank 0 saves the gathered model."""
    pytest.importorskip("tokenizers")
    from unimask.models import MassSeq2Seq
    from unimask.training import load_checkpoint_file

    out = tmp_path / "run"
    common = ["--objective", "mass", "--max-documents", "200", "--batch-size", "4", "--max-length", "32",
              "--hidden", "32", "--layers", "1", "--heads", "2", "--eval-every", "3", "--eval-batches", "1",
              "--output", str(out), "--device", "cpu", "--no-progress", "--lr", "3e-3", "--warmup", "1",
              "--threads", "1", "--distributed", "fsdp"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "unimask.pretrain"]
    r = subprocess.run([*launch, "--steps", "3", *common], env=_env(), capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 process(es)" in r.stdout
    r = subprocess.run([*launch, "--steps", "5", "--resume", *common], env=_env(), capture_output=True, text=True,
                       timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from step 3" in r.stdout and "step 5:" in r.stdout

    final = load_checkpoint_file(out / "step-0000005.pt")
    half = load_checkpoint_file(out / "step-0000003.pt")
    assert final["world_size"] == 2 and [h["step"] for h in final["history"]] == [1, 2, 3, 4, 5]
    model = MassSeq2Seq.from_pretrained(out / "model")  # plain single-process model, strict load
    sd = model.state_dict()
    assert sd.keys() == final["model"].keys()
    for k, v in sd.items():
        assert torch.equal(v, final["model"][k]), k
    moved = [k for k in sd if not torch.equal(half["model"][k], final["model"][k])]
    assert any(k.startswith("encoder.layers.") for k in moved) and any(k.startswith("decoder.") for k in moved)
