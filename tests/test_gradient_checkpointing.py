"""Activation (gradient) checkpointing: ``TransformerEncoder.gradient_checkpointing_enable``,
``MassSeq2Seq.gradient_checkpointing_enable``, ``unimask.models.set_gradient_checkpointing``
and ``unimask pretrain --gradient-checkpointing``.

Oracles: the same model and batch without checkpointing, under the same seed (loss and every
parameter's gradient must be bitwise equal, dropout on: the RNG state is restored for the
recomputation); forward hooks counting how often each layer runs (twice per training step
with checkpointing: forward and recomputation; once without, and once in inference); the bytes
autograd keeps for the backward outside the checkpointed layers (``saved_tensors_hooks``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from unimask.models import EncoderConfig, MassSeq2Seq, TransformerEncoder, UnifiedLM, set_gradient_checkpointing

VOCAB = 200


def cfg(layers: int = 3, dropout: float = 0.1, **kw) -> EncoderConfig:
    return EncoderConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, type_vocab_size=6,
                         hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **kw)


def unilm_batch(B: int = 4, L: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (B, L), generator=g)
    labels = torch.full((B, L), -100)
    labels[:, 3] = ids[:, 3]
    labels[:, 7] = ids[:, 7]
    return dict(input_ids=ids, token_type_ids=torch.randint(0, 6, (B, L), generator=g), labels=labels,
                attn_mode=torch.tensor([0, 1, 2, 3])[:B], src_len=torch.tensor([0, 0, 0, 6])[:B],
                seq_len=torch.tensor([16, 11, 13, 9])[:B])


def packed_batch() -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (2, 16), generator=g)
    labels = torch.full((2, 16), -100)
    labels[0, 2], labels[1, 9] = ids[0, 2], ids[1, 9]
    return dict(input_ids=ids, labels=labels, cu_seqlens=torch.tensor([0, 5, 12, 16, 26, 32]),
                attn_mode=torch.tensor([0, 3, 1, 2, 0]), src_len=torch.tensor([0, 3, 0, 0, 0]))


def mass_batch() -> dict:
    g = torch.Generator().manual_seed(2)
    B, L, Ld = 3, 14, 5
    dec = torch.randint(5, VOCAB, (B, Ld), generator=g)
    return dict(input_ids=torch.randint(5, VOCAB, (B, L), generator=g), seq_len=torch.tensor([14, 10, 12]),
                decoder_input_ids=dec, decoder_positions=torch.arange(3, 3 + Ld).expand(B, Ld).clone(),
                decoder_labels=torch.randint(5, VOCAB, (B, Ld), generator=g), decoder_len=torch.tensor([5, 3, 4]))


def step(model: nn.Module, batch: dict, seed: int = 7) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Loss, every gradient, and a draw from the RNG after the step (the state a run continues from)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(**batch).loss
    loss.backward()
    after = torch.rand(4)
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, after


def layer_calls(model: nn.Module) -> tuple[list[int], list]:
    layers = [m for m in model.modules() if type(m).__name__ in ("EncoderLayer", "DecoderLayer")]
    counts = [0] * len(layers)

    def hook(i):
        def f(*_):
            counts[i] += 1
        return f

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]
    return counts, handles


@pytest.mark.parametrize("make,batch", [
    (lambda: UnifiedLM(cfg()), unilm_batch),
    (lambda: UnifiedLM(cfg()), packed_batch),
    (lambda: MassSeq2Seq(cfg(), num_decoder_layers=2), mass_batch),
], ids=["unilm-padded", "unilm-packed", "mass"])
def test_checkpointed_step_is_bitwise_the_plain_step_with_dropout(make, batch):
    torch.manual_seed(0)
    model = make().train()
    b = batch()
    want_loss, want_grads, want_after = step(model, b)
    counts, handles = layer_calls(model)
    model.gradient_checkpointing_enable() if isinstance(model, MassSeq2Seq) else set_gradient_checkpointing(model)
    got_loss, got_grads, got_after = step(model, b)
    for h in handles:
        h.remove()
    assert counts and all(c == 2 for c in counts), f"each layer runs forward + recomputation: {counts}"
    assert torch.equal(got_loss, want_loss)
    assert got_grads.keys() == want_grads.keys()
    for n, g in want_grads.items():
        assert torch.equal(got_grads[n], g), n
    # the recomputation's draws are undone: the run continues from the same RNG state
    assert torch.equal(got_after, want_after)
    # and dropout is on (another seed gives another loss), so the equality above is not vacuous
    assert not torch.equal(step(model, b, seed=8)[0], want_loss)


def test_checkpointing_keeps_only_layer_inputs_for_the_backward():
    """Bytes autograd saves for the backward outside the checkpointed regions: with
    checkpointing the layers' activations are not among them (recomputed instead)."""
    torch.manual_seed(0)
    model = TransformerEncoder(cfg(layers=4, dropout=0.0)).train()
    ids = torch.randint(5, VOCAB, (4, 48))
    kw = dict(attn_mode=torch.tensor([0, 1, 2, 3]), src_len=torch.tensor([0, 0, 0, 9]), seq_len=torch.tensor([48, 40, 33, 48]))

    def saved_bytes() -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids, **kw).last_hidden_state.sum().backward()
        return total

    plain = saved_bytes()
    model.gradient_checkpointing_enable()
    ckpt = saved_bytes()
    # the plain forward keeps ~20 activation tensors per layer; with checkpointing only the
    # embeddings' own saves remain visible (the layers' saves go to the checkpoint's frames,
    # which keep the layer inputs only)
    per_layer = (plain - ckpt) / 4
    hidden_bytes = ids.numel() * 32 * 4
    assert per_layer > 8 * hidden_bytes, (plain, ckpt)
    assert ckpt < plain / 4, (plain, ckpt)


def test_no_recomputation_without_autograd_or_with_a_cache():
    torch.manual_seed(0)
    model = UnifiedLM(cfg()).eval()
    b = unilm_batch()
    with torch.no_grad():
        want = model.encoder(b["input_ids"], attn_mode=b["attn_mode"], src_len=b["src_len"], seq_len=b["seq_len"]).last_hidden_state
    set_gradient_checkpointing(model)
    counts, handles = layer_calls(model)
    with torch.no_grad():
        got = model.encoder(b["input_ids"], attn_mode=b["attn_mode"], src_len=b["src_len"], seq_len=b["seq_len"]).last_hidden_state
    assert counts == [1] * len(counts) and torch.equal(got, want)
    # cached generation is untouched (no checkpoint around a layer that writes the cache)
    prompt = torch.randint(5, VOCAB, (2, 5))
    set_gradient_checkpointing(model, False)
    plain = model.generate(prompt, max_new_tokens=4)
    set_gradient_checkpointing(model, True)
    assert torch.equal(model.generate(prompt, max_new_tokens=4), plain)
    for h in handles:
        h.remove()


def test_set_gradient_checkpointing_switches_and_rejects_bad_input():
    model = MassSeq2Seq(cfg(), num_decoder_layers=1)
    assert set_gradient_checkpointing(model) == 2  # the MASS model (its decoder) and its encoder
    assert model.gradient_checkpointing and model.encoder.gradient_checkpointing
    assert set_gradient_checkpointing(model, False) == 2
    assert not model.gradient_checkpointing and not model.encoder.gradient_checkpointing
    with pytest.raises(TypeError, match="'yes'"):
        set_gradient_checkpointing(model, "yes")
    with pytest.raises(ValueError, match="Linear holds no unimask encoder"):
        set_gradient_checkpointing(nn.Linear(2, 2))
    # the switch is a runtime setting: not written to the checkpoint
    enc = TransformerEncoder(cfg())
    enc.gradient_checkpointing_enable()
    assert "gradient_checkpointing" not in enc.state_dict()


def test_fine_tuning_heads_checkpoint_through_their_encoder():
    from unimask.finetune import SequenceClassifier  # noqa: PLC0415

    torch.manual_seed(0)
    clf = SequenceClassifier(cfg(), num_labels=3).train()
    g = torch.Generator().manual_seed(3)
    batch = dict(input_ids=torch.randint(5, VOCAB, (3, 12), generator=g),
                 attention_mask=torch.tensor([[1] * 12, [1] * 9 + [0] * 3, [1] * 5 + [0] * 7]),
                 labels=torch.tensor([0, 2, 1]))
    want_loss, want_grads, _ = step(clf, batch)
    assert set_gradient_checkpointing(clf) == 1
    got_loss, got_grads, _ = step(clf, batch)
    assert torch.equal(got_loss, want_loss)
    assert all(torch.equal(got_grads[n], g) for n, g in want_grads.items())


@pytest.mark.slow
def test_pretrain_cli_flag_gives_the_same_losses(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    from unimask.pretrain import main  # noqa: PLC0415

    common = ["--objective", "unilm", "--max-documents", "200", "--batch-size", "8", "--max-length", "32",
              "--hidden", "32", "--layers", "2", "--heads", "2", "--eval-every", "5", "--eval-batches", "2",
              "--checkpoint-every", "100", "--device", "cpu", "--no-progress", "--steps", "6", "--warmup", "2"]
    assert main([*common, "--output", str(tmp_path / "plain")]) == 0
    plain = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert main([*common, "--output", str(tmp_path / "ckpt"), "--gradient-checkpointing"]) == 0
    ckpt = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert plain and ckpt == plain


def _kernel_worker(out: str) -> None:
    """Child with TRITON_INTERPRET=1: the Triton kernel path (its dropout seed drawn from the
    generator inside the checkpointed layer) recomputes the same masks."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.manual_seed(0)
    model = UnifiedLM(cfg(layers=2, attention_backend="triton")).train()
    b = unilm_batch()
    want_loss, want_grads, want_after = step(model, b)
    set_gradient_checkpointing(model)
    got_loss, got_grads, got_after = step(model, b)
    other = step(model, b, seed=8)[0]
    torch.save({"loss": bool(torch.equal(got_loss, want_loss)), "after": bool(torch.equal(got_after, want_after)),
                "grads": all(torch.equal(got_grads[n], g) for n, g in want_grads.items()),
                "names": got_grads.keys() == want_grads.keys(), "dropout_on": not torch.equal(other, want_loss)}, out)


@pytest.mark.slow
def test_checkpointing_on_the_triton_kernel_path(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "res.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_gradient_checkpointing as t; t._kernel_worker({str(out)!r})")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"interpreter child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    res = torch.load(out, weights_only=False)
    assert res == {"loss": True, "after": True, "grads": True, "names": True, "dropout_on": True}, res


@pytest.mark.slow
def test_fsdp_two_ranks_with_checkpointing_trains_bitwise_the_same(tmp_path):
    """``torchrun ... unimask.pretrain --distributed fsdp --gradient-checkpointing`` (FSDP2
    gathers each layer's parameters again for the recomputation): the saved model after 3 steps
    equals the run without checkpointing, bitwise."""
    pytest.importorskip("tokenizers")
    from unimask.training import load_checkpoint_file  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "unimask.pretrain",
              "--objective", "mass", "--max-documents", "200", "--batch-size", "4", "--max-length", "32", "--hidden", "32",
              "--layers", "2", "--heads", "2", "--eval-every", "3", "--eval-batches", "1", "--device", "cpu", "--no-progress",
              "--lr", "3e-3", "--warmup", "1", "--threads", "1", "--distributed", "fsdp", "--steps", "3"]
    states = []
    for name, extra in (("plain", []), ("ckpt", ["--gradient-checkpointing"])):
        r = subprocess.run([*launch, "--output", str(tmp_path / name), *extra], env=env, capture_output=True, text=True,
                           timeout=280)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        states.append(load_checkpoint_file(tmp_path / name / "step-0000003.pt"))
    plain, ckpt = states
    assert [h["loss"] for h in ckpt["history"]] == [h["loss"] for h in plain["history"]]
    assert ckpt["model"].keys() == plain["model"].keys()
    for k, v in plain["model"].items():
        assert torch.equal(ckpt["model"][k], v), k


def _fortunes(n: int):
    import json  # noqa: PLC0415

    from unimask.finetune import Example  # noqa: PLC0415

    rows = [json.loads(x) for x in (Path(__file__).parent / "fixtures" / "finetune" / "fortunes_train.jsonl")
            .read_text().splitlines()[:n]]
    return [Example(r["text"], None, r["label"], i + 1) for i, r in enumerate(rows)]


def test_finetune_config_checkpointing_trains_the_same_classifier(minilm_dir):
    """``FinetuneConfig(gradient_checkpointing=True)``: the same losses and weights as without,
    through ULMFiT LM fine-tuning, the SiATL auxiliary LM and the task steps (dropout on)."""
    from unimask.finetune import FinetuneConfig, LabelMap, finetune_classifier  # noqa: PLC0415
    from unimask.tokenizer import WordPieceTokenizer  # noqa: PLC0415

    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    data = _fortunes(12)
    runs = []
    for flag in (False, True):
        torch.manual_seed(5)
        model = tiny_classifier(tok.vocab_size, LabelMap.from_examples(data))
        cfg = FinetuneConfig(epochs=1, batch_size=4, max_length=24, seed=3, aux_lm_weight="siatl",
                             lm_finetune_steps=2, gradient_checkpointing=flag)
        out = finetune_classifier(model, tok, data, cfg)
        runs.append(([h["loss"] for h in out["history"]], out["lm_losses"], model.state_dict(),
                     model.encoder.gradient_checkpointing))
    (want, want_lm, want_sd, was), (got, got_lm, got_sd, now) = runs
    assert not was and now
    assert got == want and got_lm == want_lm
    assert all(torch.equal(got_sd[k], v) for k, v in want_sd.items())
    with pytest.raises(ValueError, match="gradient_checkpointing must be True or False, got 'yes'"):
        FinetuneConfig(gradient_checkpointing="yes")


def tiny_classifier(vocab_size: int, label_map):
    from unimask.finetune import SequenceClassifier  # noqa: PLC0415

    return SequenceClassifier(EncoderConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64,
                                            max_position_embeddings=64), label_map)


@pytest.mark.slow
def test_finetune_cli_flag(minilm_dir, tmp_path):
    import json  # noqa: PLC0415

    from unimask.cli import main  # noqa: PLC0415

    rows = (Path(__file__).parent / "fixtures" / "finetune" / "fortunes_train.jsonl").read_text().splitlines()[:16]
    data = tmp_path / "tiny.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    metrics = []
    for name, extra in (("plain", []), ("ckpt", ["--gradient-checkpointing"])):
        argv = ["finetune", "--model", str(minilm_dir), "--train", str(data), "--eval", str(data), "--epochs", "1",
                "--output", str(tmp_path / name), "--max-length", "32", "--batch-size", "8", "--quiet", *extra]
        assert main(argv) == 0
        metrics.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    plain, ckpt = metrics
    assert ckpt["config"]["gradient_checkpointing"] is True and plain["config"]["gradient_checkpointing"] is False
    assert [h["loss"] for h in ckpt["history"]] == [h["loss"] for h in plain["history"]]


def test_finetune_tagger_and_qa_loops_switch_it_on(minilm_dir):
    """The tagging loop and the loss-only loop (QA, seq2seq) apply the config too, with the
    same losses as without it."""
    from unimask.finetune import FinetuneConfig, QuestionAnswering, TokenClassifier  # noqa: PLC0415
    from unimask.finetune.tagging import TaggedSentence, finetune_tagger, tag_label_map  # noqa: PLC0415
    from unimask.finetune.trainer import _train_task_loss_only  # noqa: PLC0415
    from unimask.tokenizer import WordPieceTokenizer  # noqa: PLC0415

    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    sents = [TaggedSentence(["the", "cat", "sat", str(i)], ["O", "B-X", "O", "B-N"]) for i in range(8)]
    lm = tag_label_map(sents)
    enc = EncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    runs = []
    for flag in (False, True):
        torch.manual_seed(1)
        model = TokenClassifier(enc, lm)
        out = finetune_tagger(model, tok, sents, FinetuneConfig(epochs=1, batch_size=4, max_length=16,
                                                                gradient_checkpointing=flag))
        runs.append(([h["loss"] for h in out["history"]], model.encoder.gradient_checkpointing))
    assert runs[0][0] == runs[1][0] and runs == [(runs[0][0], False), (runs[0][0], True)]
    qa = QuestionAnswering(enc)
    g = torch.Generator().manual_seed(0)
    batch = dict(input_ids=torch.randint(1000, 2000, (2, 12), generator=g), attention_mask=torch.ones(2, 12, dtype=torch.long),
                 token_type_ids=torch.zeros(2, 12, dtype=torch.long), start_positions=torch.tensor([3, 4]),
                 end_positions=torch.tensor([5, 6]))
    _train_task_loss_only(qa, FinetuneConfig(epochs=1, batch_size=2, gradient_checkpointing=True), 2,
                          lambda idx: (batch, 2), lambda b: qa(**b).loss)
    assert qa.encoder.gradient_checkpointing



def test_checkpointing_under_torch_compile():
    """``torch.compile`` of a checkpointed model (Dynamo traces the non-reentrant checkpoint as
    a higher-order op): every gradient bitwise the eager, unchecked model's (AOTAutograd's eager
    backend, no dropout)."""
    torch.manual_seed(0)
    model = UnifiedLM(cfg(layers=2, dropout=0.0)).train()
    b = unilm_batch()
    _, want, _ = step(model, b)
    set_gradient_checkpointing(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    model.zero_grad(set_to_none=True)
    compiled(**b).loss.backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(want) <= set(got)
    assert all(torch.equal(got[n], w) for n, w in want.items())
    assert all(not got[n].any() for n in set(got) - set(want))  # an unused pooler: zeros under compile
