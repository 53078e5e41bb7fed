"""``unimask pretrain``: its corpus collator follows the batch contract; the CLI trains and resumes."""

from __future__ import annotations

import argparse
import random

import pytest
import torch

from unimask.masks import dense_mask
from unimask.pretrain import (
    CorpusBatches,
    SpecialIds,
    CorpusCollator,
    add_parser,
    examples_of,
    main,
)

SP = SpecialIds(pad=0, cls=101, sep=102, mask=103, vocab_size=2000)


def docs(n=30):
    rng = random.Random(0)
    return [[[rng.randrange(1000, 2000) for _ in range(rng.randrange(4, 15))] for _ in range(3)] for _ in range(n)]


def test_unilm_corpus_batch_contract():
    d = docs()
    collate = CorpusCollator(d, "unilm", 32, SP)
    ex = examples_of(d)
    b = collate(ex[:60], list(range(60)))
    B, L = b["input_ids"].shape
    assert b["attn_mode"].dtype == torch.int8 and b["src_len"].dtype == torch.int32 and b["seq_len"].dtype == torch.int32
    assert set(b["attn_mode"].tolist()) == {0, 1, 2, 3}
    dense_mask(b["attn_mode"], b["src_len"], b["seq_len"], L)  # validates the integers
    for i in range(B):
        n, mode, src = int(b["seq_len"][i]), int(b["attn_mode"][i]), int(b["src_len"][i])
        ids, lab, tt = b["input_ids"][i], b["labels"][i], b["token_type_ids"][i]
        assert int(b["attention_mask"][i].sum()) == n and ids[0] == SP.cls
        # the final [SEP] is kept, or (seq2seq only: the model learns to stop) masked with label [SEP]
        assert ids[n - 1] == SP.sep or (mode == 3 and lab[n - 1] == SP.sep)
        assert (lab[n:] == -100).all() and (lab != -100).any()
        assert (lab[0] == -100)
        expected_types = {0: {0, 1}, 1: {2}, 2: {3}, 3: {4, 5}}[mode]
        assert set(tt[:n].tolist()) <= expected_types
        if mode == 3:
            assert 0 < src < n and (lab[:src] == -100).all() and tt[src - 1] == 4 and tt[src] == 5
        # UNILM pairs are true continuations: no NSP targets (NSP belongs to the mlm objective)
        assert b["next_sentence_label"][i] == -100


def test_mlm_corpus_pairs_carry_nsp_labels_from_true_and_random_continuations():
    d = docs()
    ex = examples_of(d)
    b = CorpusCollator(d, "mlm", 48, SP)(ex, list(range(len(ex))))
    nsp = b["next_sentence_label"]
    assert set(nsp.tolist()) == {0, 1}
    for i, (di, si) in enumerate(ex):
        n = int(b["seq_len"][i])
        row = b["input_ids"][i, :n].tolist()
        labels = b["labels"][i, :n].tolist()
        orig = [lab if lab != -100 else tok for tok, lab in zip(row, labels)]  # undo the masking
        sep = orig.index(SP.sep)
        a, second = orig[1:sep], orig[sep + 1:n - 1]
        assert a == d[di][si][: len(a)]
        is_next = si + 1 < len(d[di]) and second == d[di][si + 1][: len(second)]
        if nsp[i] == 0:
            assert is_next  # label 0 = B follows A (BERT/HF convention)
        else:
            assert any(second == s[: len(second)] for j, doc in enumerate(d) if j != di for s in doc)


def test_mass_corpus_batch_contract():
    d = docs()
    b = CorpusCollator(d, "mass", 32, SP)(examples_of(d)[:10], list(range(10)))
    for i in range(10):
        k = int(b["decoder_len"][i])
        pos = b["decoder_positions"][i, :k]
        target = b["decoder_labels"][i, :k]
        assert torch.equal(pos, torch.arange(int(pos[0]), int(pos[0]) + k))
        assert b["decoder_input_ids"][i, 0] == SP.mask
        assert torch.equal(b["decoder_input_ids"][i, 1:k], target[:-1])


def test_corpus_batches_shard_disjointly_and_union_equals_single_process():
    d = docs(40)
    ex = examples_of(d)
    collate = CorpusCollator(d, "unilm", 32, SP)
    single = CorpusBatches(ex, collate, 8, seed=3)
    r0 = CorpusBatches(ex, collate, 4, seed=3, rank=0, world_size=2)
    r1 = CorpusBatches(ex, collate, 4, seed=3, rank=1, world_size=2)
    for i in (0, 5, single.per_epoch + 1):
        _, a = r0.indices(i)
        _, b = r1.indices(i)
        _, s = single.indices(i)
        assert not set(a) & set(b) and a + b == s
        # the same examples get the same masking in either setup
        s_batch, a_batch = single.batch(i), r0.batch(i)
        n = int(a_batch["seq_len"].max())
        assert torch.equal(s_batch["labels"][:4, :n], a_batch["labels"][:, :n])


def test_parser_registers_flags():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_parser(sub)
    args = p.parse_args(["pretrain", "--steps", "5", "--objective", "mass", "--resume", "--device", "cpu"])
    assert args.steps == 5 and args.objective == "mass" and args.resume and args.device == "cpu"
    assert callable(args.func)
    with pytest.raises(SystemExit):
        p.parse_args(["pretrain", "--objective", "t5"])


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["unilm", "mass"])
def test_cli_trains_resumes_and_saves(tmp_path, capsys, objective):
    pytest.importorskip("tokenizers")
    out = tmp_path / "run"
    common = ["--objective", objective, "--max-documents", "300", "--batch-size", "8", "--max-length", "32",
              "--hidden", "32", "--layers", "1", "--heads", "2", "--eval-every", "10", "--eval-batches", "2",
              "--checkpoint-every", "10", "--output", str(out), "--device", "cpu", "--no-progress", "--lr", "3e-3",
              "--warmup", "2"]
    assert main(["--steps", "10", *common]) == 0
    assert (out / "latest").read_text().strip() == "step-0000010.pt"
    assert main(["--steps", "20", "--resume", *common]) == 0
    text = capsys.readouterr().out
    assert "resumed from step 10" in text and "step 20:" in text
    assert (out / "loss_curve.png").is_file() and (out / "model" / "model.safetensors").is_file()
    assert main(["--corpus", str(tmp_path / "nope.txt"), *common]) == 2


@pytest.mark.parametrize("existing", [["step-0000020.pt", "step-0000020.pt.sha256"], ["latest"]])
def test_cli_without_resume_refuses_an_output_with_checkpoints(tmp_path, capsys, existing):
    """A fresh run into an --output holding an earlier run's checkpoints would mix the two runs'
    files (and retention deleted the new ones); it is refused before anything is read or written."""
    out = tmp_path / "run"
    out.mkdir()
    for name in existing:
        (out / name).write_text("earlier run\n")
    argv = ["--steps", "2", "--batch-size", "4", "--hidden", "16", "--layers", "1", "--heads", "2",
            "--max-length", "16", "--max-documents", "20", "--device", "cpu", "--no-progress", "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"unimask pretrain: --output {out} already holds" in err and "--resume" in err, err
    assert existing[0] in err
    assert sorted(p.name for p in out.iterdir()) == sorted(existing)  # untouched
    assert all((out / n).read_text() == "earlier run\n" for n in existing)


def test_packed_mlm_corpus_batches_hold_whole_sentences():
    d = docs()
    ex = examples_of(d)
    b = CorpusCollator(d, "mlm", 32, SP, pack=True)(ex[:40], list(range(40)))
    assert "next_sentence_label" not in b and "seq_len" not in b
    R, L = b["input_ids"].shape
    assert R < 40 and L <= 32
    original = torch.where(b["labels"] != -100, b["labels"], b["input_ids"]).reshape(-1).tolist()
    cu = b["cu_seqlens"].tolist()
    sentences = [original[x:y] for x, y in zip(cu, cu[1:]) if y > x and original[x] == SP.cls]
    assert sorted(sentences) == sorted([SP.cls, *d[di][si], SP.sep] for di, si in ex[:40])
    assert int(b["num_tokens"].sum()) == sum(len(s) for s in sentences)
    with pytest.raises(ValueError, match="packing needs one of the objectives \\('mlm', 'unilm'\\).*got 'causal'"):
        CorpusCollator(d, "causal", 32, SP, pack=True)


def test_packed_unilm_corpus_batches_are_the_unpacked_samples():
    """UNILM pairs packed: each sample's tokens and mode as the unpacked collator gives them."""
    d = docs()
    ex = examples_of(d)[:40]
    seeds = list(range(40))
    alone = CorpusCollator(d, "unilm", 32, SP)(ex, seeds)
    b = CorpusCollator(d, "unilm", 32, SP, pack=True)(ex, seeds)
    assert b["input_ids"].shape[0] < 40 and b["input_ids"].shape[1] <= 32
    flat = b["input_ids"].reshape(-1)
    seg = torch.searchsorted(b["cu_seqlens"][1:], b["doc_starts"], right=True)
    for i in range(40):
        n, s0 = int(alone["seq_len"][i]), int(b["doc_starts"][i])
        assert torch.equal(flat[s0:s0 + n], alone["input_ids"][i, :n])
        assert int(b["attn_mode"][seg[i]]) == int(alone["attn_mode"][i]) and int(b["src_len"][seg[i]]) == int(alone["src_len"][i])
    assert int(b["num_tokens"].sum()) == int(alone["seq_len"].sum())


@pytest.mark.slow
def test_cli_pretrains_packed_mlm(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    out = tmp_path / "packed"
    common = ["--objective", "mlm", "--pack", "--max-documents", "300", "--batch-size", "16", "--max-length", "64",
              "--hidden", "32", "--layers", "1", "--heads", "2", "--eval-every", "15", "--eval-batches", "2",
              "--checkpoint-every", "30", "--output", str(out), "--device", "cpu", "--no-progress", "--lr", "3e-3",
              "--warmup", "2", "--steps", "30"]
    assert main(common) == 0
    text = capsys.readouterr().out
    assert "objective mlm (packed rows)" in text and "step 30:" in text
    losses = [float(line.split("eval loss ")[1].split()[0]) for line in text.splitlines() if "eval loss " in line]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses  # held-out MLM loss goes down
    assert (out / "model" / "model.safetensors").is_file()
    assert main(["--objective", "causal", "--pack", "--output", str(out), "--device", "cpu", "--no-progress"]) == 2
    assert "--pack needs --objective mlm or unilm (got causal)" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_pretrains_packed_unilm(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    out = tmp_path / "packed_unilm"
    assert main(["--objective", "unilm", "--pack", "--max-documents", "300", "--batch-size", "16", "--max-length", "64",
                 "--hidden", "32", "--layers", "1", "--heads", "2", "--eval-every", "15", "--eval-batches", "2",
                 "--checkpoint-every", "30", "--output", str(out), "--device", "cpu", "--no-progress", "--lr", "3e-3",
                 "--warmup", "2", "--steps", "30"]) == 0
    text = capsys.readouterr().out
    assert "objective unilm (packed rows)" in text and "step 30:" in text
    losses = [float(line.split("eval loss ")[1].split()[0]) for line in text.splitlines() if "eval loss " in line]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses  # held-out loss goes down


def test_cli_pretrains_in_bf16_on_the_cpu(tmp_path, capsys):
    """``--precision bf16 --device cpu``: CPU autocast (no longer a usage error); fp16 still is."""
    pytest.importorskip("tokenizers")
    common = ["--objective", "unilm", "--max-documents", "100", "--batch-size", "8", "--max-length", "32",
              "--hidden", "32", "--layers", "1", "--heads", "2", "--eval-every", "2", "--eval-batches", "1",
              "--device", "cpu", "--no-progress", "--steps", "2", "--warmup", "1"]
    assert main([*common, "--precision", "bf16", "--output", str(tmp_path / "bf16")]) == 0
    assert "step 2:" in capsys.readouterr().out
    assert main([*common, "--precision", "fp16", "--output", str(tmp_path / "fp16")]) == 2
    assert "--precision fp16 needs a CUDA device" in capsys.readouterr().err
