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
