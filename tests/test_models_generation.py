"""Generation: cached == uncached == a naive per-sample arg-max loop; beam 1 == greedy; EOS."""

from __future__ import annotations

import pytest
import torch

from unimask.models import CausalLM, EncoderConfig, MassSeq2Seq, UnifiedLM

V, MASK = 60, 3


def cfg(**kw):
    return EncoderConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=48, type_vocab_size=6,
                         hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **kw)


def prompts():
    rows = [[5, 9, 11, 7, 20], [8, 30], [41, 42, 43]]
    L = max(map(len, rows))
    ids = torch.tensor([r + [0] * (L - len(r)) for r in rows])
    return rows, ids, torch.tensor([len(r) for r in rows])


def naive_causal(model, row, n, eos=None):
    ids = list(row)
    out = []
    for _ in range(n):
        tok = int(model.logits(torch.tensor([ids]))[0, -1].argmax())
        out.append(tok)
        ids.append(tok)
        if tok == eos:
            break
    return out


def naive_unilm(model, src, n, eos=None):
    gen = []
    for _ in range(n):
        ids = torch.tensor([src + gen + [MASK]])
        tt = torch.tensor([[4] * len(src) + [5] * (len(gen) + 1)])
        h = model.encoder(ids, tt, attn_mode=torch.tensor([3]), src_len=torch.tensor([len(src)])).last_hidden_state
        tok = int(model.lm_logits(h[0, -1]).argmax())
        gen.append(tok)
        if tok == eos:
            break
    return gen


def naive_mass(model, src, n, eos=None):
    mem = model.encode(torch.tensor([src]))
    dec = [MASK]
    out = []
    for _ in range(n):
        h = model.decode(mem, torch.tensor([dec]), torch.arange(len(dec))[None])
        tok = int(model.lm_logits(h[0, -1]).argmax())
        out.append(tok)
        dec.append(tok)
        if tok == eos:
            break
    return out


def padded(rows, pad=0):
    T = max(map(len, rows))
    return torch.tensor([r + [pad] * (T - len(r)) for r in rows])


@pytest.fixture(params=["causal", "unilm", "mass"])
def setup(request):
    torch.manual_seed(0)
    kind = request.param
    if kind == "causal":
        model = CausalLM(cfg()).double()
        return kind, model, naive_causal, lambda **kw: model.generate(prompts()[1], seq_len=prompts()[2], **kw)
    if kind == "unilm":
        model = UnifiedLM(cfg()).double()
        return kind, model, naive_unilm, lambda **kw: model.generate(prompts()[1], src_len=prompts()[2], mask_id=MASK, **kw)
    model = MassSeq2Seq(cfg(), num_decoder_layers=2).double()
    return kind, model, naive_mass, lambda **kw: model.generate(prompts()[1], seq_len=prompts()[2], decoder_start_id=MASK, **kw)


@torch.no_grad()
def test_greedy_cache_equals_no_cache_equals_naive(setup):
    kind, model, naive, gen = setup
    model.eval()
    rows = prompts()[0]
    expect = padded([naive(model, r, 8) for r in rows])
    assert torch.equal(gen(max_new_tokens=8, use_cache=False), expect)
    assert torch.equal(gen(max_new_tokens=8, use_cache=True), expect)
    assert model.training is False


@torch.no_grad()
def test_eos_stops_and_pads(setup):
    kind, model, naive, gen = setup
    model.eval()
    rows = prompts()[0]
    free = gen(max_new_tokens=8)
    eos = int(free[0, 2])
    expect = padded([naive(model, r, 8, eos) for r in rows], pad=1)
    got = gen(max_new_tokens=8, eos_id=eos, pad_id=1)
    assert torch.equal(got, expect)
    k = free[0].tolist().index(eos)  # first time row 0 emits it
    assert got[0, k] == eos and (got[0, k + 1:] == 1).all() and torch.equal(got[0, :k], free[0, :k])


@torch.no_grad()
def test_beam_one_is_greedy_and_cached_beam_equals_uncached(setup):
    kind, model, naive, gen = setup
    model.train()  # generate must switch dropout off and restore the mode
    greedy = gen(max_new_tokens=6)
    assert model.training
    assert torch.equal(gen(max_new_tokens=6, num_beams=1), greedy)
    b3 = gen(max_new_tokens=6, num_beams=3, use_cache=True)
    assert torch.equal(b3, gen(max_new_tokens=6, num_beams=3, use_cache=False))
    assert b3.shape == (3, 6)


@torch.no_grad()
def test_beam_search_finds_best_sequence_on_brute_force():
    """Oracle: exhaustive search over all 2-token continuations (tiny vocabulary)."""
    torch.manual_seed(1)
    model = CausalLM(EncoderConfig(vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=16, type_vocab_size=2)).double().eval()
    prompt = [4, 5, 6]
    pairs = torch.cartesian_prod(torch.arange(12), torch.arange(12))  # [144, 2]
    seqs = torch.cat([torch.tensor(prompt).expand(144, 3), pairs], dim=1)
    lp = torch.log_softmax(model.logits(seqs), -1)
    scores = lp[torch.arange(144), 2, pairs[:, 0]] + lp[torch.arange(144), 3, pairs[:, 1]]
    best = pairs[int(scores.argmax())].tolist()
    got = model.generate(torch.tensor([prompt]), max_new_tokens=2, num_beams=12)
    assert got[0].tolist() == best


def test_generation_rejects_bad_arguments():
    model = CausalLM(cfg()).eval()
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.tensor([[5, 6]]), max_new_tokens=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(torch.tensor([[5, 6]]), max_new_tokens=100)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(torch.tensor([[5, 6]]), seq_len=torch.tensor([0]))


def _models():
    torch.manual_seed(0)
    return {
        "causal": (CausalLM(cfg()).double().eval(), "seq_len", {}),
        "unilm": (UnifiedLM(cfg()).double().eval(), "src_len", {"mask_id": MASK}),
        "mass": (MassSeq2Seq(cfg(), num_decoder_layers=2).double().eval(), "seq_len", {"decoder_start_id": MASK}),
    }


@pytest.mark.parametrize("kind", ["causal", "unilm", "mass"])
@pytest.mark.parametrize("use_cache", [True, False])
@torch.no_grad()
def test_input_padded_wider_than_prompt_plus_new_tokens(kind, use_cache):
    """Right padding wider than prompt + max_new_tokens (15 columns for 5 + 3) crashed the
    GPT/UNILM buffer copy; it is valid input and gives the unpadded output."""
    model, name, kw = _models()[kind]
    _, ids, lens = prompts()
    wide = torch.cat([ids, torch.zeros(3, 10, dtype=torch.long)], 1)
    want = model.generate(ids, **{name: lens}, max_new_tokens=3, use_cache=use_cache, **kw)
    got = model.generate(wide, **{name: lens}, max_new_tokens=3, use_cache=use_cache, **kw)
    assert torch.equal(got, want)
    am = (torch.arange(wide.shape[1])[None] < lens[:, None]).long()
    assert torch.equal(model.generate(wide, attention_mask=am, max_new_tokens=3, use_cache=use_cache, **kw), want)


@pytest.mark.parametrize("kind", ["causal", "unilm", "mass"])
def test_lengths_and_attention_mask_are_validated(kind):
    """Lengths past the input width, a length per row missing, and a left-padded
    attention_mask were silently used (wrong output); now ValueErrors naming the value."""
    model, name, kw = _models()[kind]
    ids = torch.tensor([[5, 9, 11, 7, 20]])
    with pytest.raises(ValueError, match=rf"{name}\[0\] = 7 exceeds the length of input_ids \(L = 5\)"):
        model.generate(ids, **{name: torch.tensor([7])}, max_new_tokens=3, **kw)
    with pytest.raises(ValueError, match=rf"{name} has 2 entries but input_ids has B = 1 rows"):
        model.generate(ids, **{name: torch.tensor([5, 5])}, max_new_tokens=3, **kw)
    with pytest.raises(ValueError, match=rf"{name} has 1 entries but input_ids has B = 2 rows"):
        model.generate(ids.expand(2, 5), **{name: torch.tensor([5])}, max_new_tokens=3, **kw)
    with pytest.raises(TypeError, match=rf"{name} must hold integers"):
        model.generate(ids, **{name: torch.tensor([5.0])}, max_new_tokens=3, **kw)
    with pytest.raises(ValueError, match=r"attention_mask\[0\] is not a right-padding mask"):
        model.generate(torch.tensor([[0, 0, 5, 9, 11]]), attention_mask=torch.tensor([[0, 0, 1, 1, 1]]),
                       max_new_tokens=3, **kw)
    with pytest.raises(ValueError, match="disagrees with attention_mask"):
        model.generate(ids, **{name: torch.tensor([4])}, attention_mask=torch.ones(1, 5), max_new_tokens=3, **kw)


@pytest.mark.parametrize("use_cache", [True, False])
@torch.no_grad()
def test_unilm_position_limit_is_exact(use_cache):
    """UNILM's step for new token k puts its [MASK] at position prompt + k, so 5 + 43 new
    tokens use positions 0..47, exactly max_position_embeddings = 48 (was rejected: the
    bound counted one position too many); one more token is rejected. Oracle: the naive
    loop, which runs the encoder on src + generated + [MASK] (at most 48 tokens)."""
    model = _models()["unilm"][0]
    src = [5, 9, 11, 7, 20]
    got = model.generate(torch.tensor([src]), max_new_tokens=43, mask_id=MASK, use_cache=use_cache)
    assert got[0].tolist() == naive_unilm(model, src, 43)
    with pytest.raises(ValueError, match="prompt length 5 \\+ 44 new tokens exceeds max_position_embeddings 48"):
        model.generate(torch.tensor([src]), max_new_tokens=44, mask_id=MASK, use_cache=use_cache)


@torch.no_grad()
def test_causal_position_limit():
    """GPT: prompt + new tokens (the returned sequence) must fit in max_position_embeddings."""
    model = _models()["causal"][0]
    prompt = [5, 9, 11, 7, 20]
    got = model.generate(torch.tensor([prompt]), max_new_tokens=43)
    assert got[0].tolist() == naive_causal(model, prompt, 43)
    with pytest.raises(ValueError, match="prompt length 5 \\+ 44 new tokens exceeds"):
        model.generate(torch.tensor([prompt]), max_new_tokens=44)
