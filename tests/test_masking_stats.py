"""Statistical acceptance tests of the masking recipes.

Each expected value comes from the recipe's own formula (BERT's count, the 80/10/10 split,
UNILM's n-gram mix, SpanBERT's truncated geometric pmf, MASS's 50% span and 20/20/60 start
distribution, UNILM's mode mix, T5's noise/span counts), never from unimask's output.
Seeds are fixed; tolerances are 5 binomial standard deviations.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from unimask.collators import MASSCollator, MLMCollator, NSPPairBuilder, T5SpanCollator, UnifiedLMCollator
from unimask.corpus import demo_corpus_path, read_documents

V, PAD, UNK, CLS, SEP, MASK = 30522, 0, 100, 101, 102, 103
IDS = dict(vocab_size=V, pad_id=PAD, unk_id=UNK, cls_id=CLS, sep_id=SEP, mask_id=MASK)
SPECIALS = {PAD, UNK, CLS, SEP, MASK}
Z = 5.0


def within_binomial(k: float, n: int, p: float, what: str) -> None:
    sd = math.sqrt(max(n * p * (1 - p), 1e-12))
    assert abs(k - n * p) <= Z * sd + 1e-9, f"{what}: got {k} of {n}, expected {n * p:.1f} +- {Z * sd:.1f}"


@pytest.fixture(scope="module")
def encoded(minilm_dir):
    """Real BERT encodings of the bundled English corpus: (ids with [CLS]/[SEP], word ids)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(128)
    sents = [s for d in read_documents(demo_corpus_path("en")) for s in d][:4000]
    encs = tok.encode_batch(sents)
    ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
    words = [np.asarray([-1 if w is None else w for w in e.word_ids], dtype=np.int64) for e in encs]
    return ids, words


def masked_rows(out):
    labels = out["labels"].numpy()
    return labels != -100


def test_bert_count_is_exact_and_specials_and_padding_are_never_masked(encoded):
    ids, _ = encoded
    for max_pred in (None, 20):
        c = MLMCollator(**IDS, max_predictions=max_pred, seed=1)
        out = c(ids[:2000])
        m = masked_rows(out)
        inp, lab = out["input_ids"].numpy(), out["labels"].numpy()
        for r, seq in enumerate(ids[:2000]):
            n = len(seq)
            expect = max(1, round(n * 0.15))  # Python 3 round, as BERT's int(round(...))
            if max_pred is not None:
                expect = min(max_pred, expect)
            assert m[r].sum() == expect, (r, n)
            assert out["seq_len"][r] == n
            special = np.isin(seq, list(SPECIALS))
            assert not m[r, :n][special].any()
            assert (inp[r, :n][special] == seq[special]).all()
            assert (inp[r, n:] == PAD).all() and not m[r, n:].any()
            assert (lab[r, :n][m[r, :n]] == seq[m[r, :n]]).all()


def test_bernoulli_masked_fraction(encoded):
    ids, _ = encoded
    c = MLMCollator(**IDS, exact_count=False, mlm_probability=0.2, seed=3)
    out = c(ids[:3000])
    cand = sum(int((~np.isin(s, list(SPECIALS))).sum()) for s in ids[:3000])
    within_binomial(masked_rows(out).sum(), cand, 0.2, "Bernoulli masked tokens")


@pytest.mark.parametrize("mask_ratio,random_ratio", [(0.8, 0.1), (0.5, 0.3)])
def test_replacement_split(encoded, mask_ratio, random_ratio):
    ids, _ = encoded
    c = MLMCollator(**IDS, mlm_probability=0.5, mask_ratio=mask_ratio, random_ratio=random_ratio, seed=5)
    out = c(ids[:2500])
    m = masked_rows(out)
    inp, lab = out["input_ids"].numpy()[m], out["labels"].numpy()[m]
    n = int(m.sum())
    assert n > 20000
    n_free = V - len(SPECIALS)
    keep = 1 - mask_ratio - random_ratio
    within_binomial((inp == MASK).sum(), n, mask_ratio, "[MASK] share")
    # an unchanged token: kept, or a random draw that hit the original (1 / non-special ids)
    within_binomial((inp == lab).sum(), n, keep + random_ratio / n_free, "unchanged share")
    within_binomial(((inp != MASK) & (inp != lab)).sum(), n, random_ratio * (1 - 1 / n_free), "random share")
    assert not np.isin(inp[inp != MASK], list(SPECIALS)).any()


def test_random_replacements_are_uniform_over_non_special_ids():
    vocab, specials = 40, [0, 1, 2, 3, 4, 10, 20, 30]
    free = [t for t in range(vocab) if t not in specials]
    c = MLMCollator(vocab_size=vocab, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4, special_ids=specials,
                    mlm_probability=1.0, mask_ratio=0.0, random_ratio=1.0, seed=7)
    rng = np.random.default_rng(0)
    batch = [np.concatenate([[2], rng.choice(free, 60), [3]]) for _ in range(500)]
    out = c(batch)
    m = masked_rows(out)
    repl = out["input_ids"].numpy()[m]
    assert m.sum() == 500 * 60  # p = 1: every candidate, never [CLS]/[SEP]
    assert not np.isin(repl, specials).any()
    counts = np.bincount(repl, minlength=vocab)[free]
    for k in counts:
        within_binomial(k, len(repl), 1 / len(free), "random id frequency")


def test_whole_word_masking_keeps_words_together(encoded):
    ids, words = encoded
    items = [{"input_ids": i, "word_ids": w} for i, w in zip(ids[:1500], words[:1500])]
    c = MLMCollator(**IDS, whole_word=True, seed=11)
    out = c(items)
    m = masked_rows(out)
    total, budget_total = 0, 0
    for r, (seq, w) in enumerate(zip(ids[:1500], words[:1500])):
        n = len(seq)
        budget = max(1, round(n * 0.15))
        k = int(m[r].sum())
        assert k <= budget
        total += k
        budget_total += budget
        for word in np.unique(w[w >= 0]):
            pos = np.nonzero(w == word)[0]
            assert m[r, pos].all() or not m[r, pos].any(), f"row {r} word {word} partially masked"
    assert total >= 0.97 * budget_total  # BERT skips words that overflow the budget, rarely


def test_ngram_lengths_follow_unilm_mix():
    c = UnifiedLMCollator(**IDS, ngram_probability=0.2, max_ngram=3)
    drawn, kept = c._sampled_span_lengths(200, 600, seed=1)
    n = len(drawn)
    assert n > 10000
    within_binomial((drawn == 1).sum(), n, 0.8, "unigrams")
    within_binomial((drawn == 2).sum(), n, 0.1, "bigrams")
    within_binomial((drawn == 3).sum(), n, 0.1, "trigrams")
    assert kept.max() <= 3 and kept.min() >= 1


def test_geometric_span_lengths_follow_truncated_pmf():
    c = MLMCollator(**IDS, span="geometric", span_p=0.2, max_span_length=10)
    drawn, kept = c._sampled_span_lengths(300, 400, seed=2)
    n = len(drawn)
    assert n > 5000
    pmf = np.array([0.2 * 0.8 ** (l - 1) for l in range(1, 11)])
    pmf /= pmf.sum()
    for length in range(1, 11):
        within_binomial((drawn == length).sum(), n, pmf[length - 1], f"span length {length}")
    assert drawn.max() <= 10 and kept.max() <= 10
    # SpanBERT reports a mean span length of 3.8 for this distribution
    assert abs((pmf * np.arange(1, 11)).sum() - 3.8) < 0.1


def test_geometric_budget_is_ceil_exactly_and_spans_are_whole_words_but_the_last_cut(encoded):
    """SpanBERT's reference (PairWithSpanMaskingScheme.mask) masks until exactly
    ceil(0.15 n) tokens, cutting the span that reaches the budget, mid-word if need be: every
    row meets its budget and at most one word per row is partly masked."""
    ids, words = encoded
    items = [{"input_ids": i, "word_ids": w} for i, w in zip(ids[:800], words[:800])]
    c = MLMCollator(**IDS, span="geometric", seed=4)
    m = masked_rows(c(items))
    cut_rows = 0
    for r, (seq, w) in enumerate(zip(ids[:800], words[:800])):
        candidates = int((w >= 0).sum())
        assert m[r].sum() == min(math.ceil(len(seq) * 0.15), candidates)
        partial = 0
        for word in np.unique(w[w >= 0]):
            pos = np.nonzero(w == word)[0]
            partial += not (m[r, pos].all() or not m[r, pos].any())
        assert partial <= 1
        cut_rows += partial
    assert cut_rows > 0  # multi-token words do get cut at the budget
    # single-token words: the budget is met exactly
    plain = [np.concatenate([[CLS], np.arange(1000, 1000 + n), [SEP]]) for n in range(5, 120)]
    m = masked_rows(c(plain))
    for r, seq in enumerate(plain):
        assert m[r].sum() == math.ceil(len(seq) * 0.15)


def _word_rows(count, seed):
    """Rows of 20..120 tokens in words of 1-4 tokens (word_ids as a tokenizer gives them)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        n = rng.randrange(20, 120)
        w, word = [], 0
        while len(w) < n:
            w += [word] * rng.choice([1, 1, 1, 2, 2, 3, 4])
            word += 1
        rows.append({"input_ids": [CLS] + [rng.randrange(1000, 30000) for _ in range(n)] + [SEP],
                     "word_ids": [None] + w[:n] + [None]})
    return rows


def test_geometric_every_row_reaches_its_budget_for_any_thread_count():
    """The audit's statistic: with multi-token words 44% of rows fell short of ceil(0.15 n)
    (14.7% masked instead of ~15.7%); SpanBERT's loop runs until the budget is met."""
    rows = _word_rows(3000, seed=3)
    c1 = MLMCollator(**IDS, span="geometric", seed=7, num_threads=1)
    c2 = MLMCollator(**IDS, span="geometric", seed=7, num_threads=2)
    big = rows * 2  # enough tokens (> 2**18) for the rows to be split over threads
    o1, o2 = c1(big, indices=range(len(big))), c2(big, indices=range(len(big)))
    assert all(np.array_equal(o1[k].numpy(), o2[k].numpy()) for k in o1)
    got = masked_rows(o1).sum(1)
    n = o1["seq_len"].numpy()
    assert got.tolist() == [math.ceil(x * 0.15) for x in n.tolist()]


def test_mass_span_is_half_and_start_distribution():
    c = MASSCollator(**IDS, seed=9)
    n, trials = 20, 12000
    batch = [np.arange(1000, 1000 + n)] * trials
    out = c(batch, indices=np.arange(trials))
    k = round(n * 0.5)
    assert (out["decoder_len"] == k).all()
    starts = out["decoder_positions"][:, 0].numpy()
    last = n - k
    within_binomial((starts == 0).sum(), trials, 0.2, "span at the beginning")
    within_binomial((starts == last).sum(), trials, 0.2, "span at the end")
    for s in range(1, last):
        within_binomial((starts == s).sum(), trials, 0.6 / (last - 1), f"span start {s}")
    # lengths: k = max(1, round(0.5 n)) for every n
    lens = list(range(1, 40))
    out = c([np.arange(1000, 1000 + m) for m in lens])
    assert out["decoder_len"].tolist() == [max(1, round(m * 0.5)) for m in lens]
    # encoder: 80/10/10 on the span only
    out = c(batch[:4000], indices=np.arange(4000))
    enc = out["input_ids"].numpy()
    pos = out["decoder_positions"].numpy()
    span_tokens = np.take_along_axis(enc, pos, 1).ravel()
    within_binomial((span_tokens == MASK).sum(), span_tokens.size, 0.8, "MASS [MASK] share")
    outside = np.ones_like(enc, dtype=bool)
    np.put_along_axis(outside, pos, False, 1)
    assert (enc[outside] == np.tile(np.arange(1000, 1000 + n), (4000, 1))[outside]).all()


def test_unilm_mode_frequencies():
    c = UnifiedLMCollator(**IDS, seed=13)
    rng = np.random.default_rng(1)
    n = 6000
    pairs = [(rng.integers(1000, 2000, 8), rng.integers(1000, 2000, 9)) for _ in range(n)]
    modes = c(pairs)["attn_mode"].numpy()
    for mode, w in enumerate([1 / 3, 1 / 6, 1 / 6, 1 / 3]):
        within_binomial((modes == mode).sum(), n, w, f"mode {mode}")
    singles = [rng.integers(1000, 2000, 8) for _ in range(n)]
    modes = c(singles)["attn_mode"].numpy()
    for mode, w in enumerate([0.5, 0.25, 0.25, 0.0]):
        within_binomial((modes == mode).sum(), n, w, f"single-segment mode {mode}")
    c = UnifiedLMCollator(**IDS, mode_weights={"seq2seq": 1.0, "bidirectional": 1.0})
    modes = c(pairs)["attn_mode"].numpy()
    within_binomial((modes == 3).sum(), n, 0.5, "custom weights")
    assert set(modes.tolist()) <= {0, 3}


def test_unilm_seq2seq_masks_target_only_with_its_budget():
    c = UnifiedLMCollator(**IDS, mode_weights=[0, 0, 0, 1], seed=2)
    rng = np.random.default_rng(2)
    pairs = [(rng.integers(1000, 2000, int(rng.integers(1, 30))), rng.integers(1000, 2000, int(rng.integers(1, 60)))) for _ in range(1500)]
    out = c(pairs)
    m = masked_rows(out)
    for r, (a, b) in enumerate(pairs):
        src = len(a) + 2
        assert out["src_len"][r] == src
        assert not m[r, :src].any()
        assert not m[r, src + len(b):].any()  # final [SEP] and padding
        assert m[r].sum() == max(1, round(len(b) * 0.15))


def test_t5_noise_and_span_counts():
    c = T5SpanCollator(vocab_size=V, eos_id=SEP, pad_id=PAD, seed=3)
    lens = [int(x) for x in np.random.default_rng(3).integers(2, 200, 600)]
    seqs = [np.arange(1000, 1000 + n) for n in lens]
    out = c(seqs)
    for r, n in enumerate(lens):
        noise = min(max(round(n * 0.15), 1), n - 1)
        spans = max(round(noise / 3.0), 1)
        inp = out["input_ids"][r, : out["seq_len"][r]].numpy()
        lab = out["labels"][r, : out["labels_len"][r]].numpy()
        sentinels = inp[inp >= V - 1 - 200]
        assert sentinels.tolist() == list(range(V - 1, V - 1 - spans, -1))
        assert lab[-1] == SEP and inp[-1] == SEP
        assert (lab[:-1] < V - 1 - 200).sum() == noise
        assert len(inp) == n - noise + spans + 1


def _naive_bert_instances(all_documents, max_seq_length, short_seq_prob, rng):
    """Plain-Python port of BERT's create_instances_from_document (pairs and labels only)."""
    out = []
    for document_index, document in enumerate(all_documents):
        max_num_tokens = max_seq_length - 3
        target = max_num_tokens
        if rng.random() < short_seq_prob:
            target = rng.randint(2, max_num_tokens)
        chunk, length, i = [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                if chunk:
                    a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                    a = [t for s in chunk[:a_end] for t in s]
                    b = []
                    if len(chunk) == 1 or rng.random() < 0.5:
                        label = 1
                        for _ in range(10):
                            rd = rng.randint(0, len(all_documents) - 1)
                            if rd != document_index:
                                break
                        rdoc = all_documents[rd]
                        for j in range(rng.randint(0, len(rdoc) - 1), len(rdoc)):
                            b.extend(rdoc[j])
                            if len(b) >= target - len(a):
                                break
                        i -= len(chunk) - a_end
                    else:
                        label = 0
                        b = [t for s in chunk[a_end:] for t in s]
                    while len(a) + len(b) > max_num_tokens:
                        t = a if len(a) > len(b) else b
                        if rng.random() < 0.5:
                            del t[0]
                        else:
                            t.pop()
                    if a and b:
                        out.append((len(a), len(b), label))
                chunk, length = [], 0
            i += 1
    return out


def test_nsp_pairs_match_a_naive_port_of_bert_in_distribution(minilm_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    docs = [d for d in read_documents(demo_corpus_path("en")) if len(d) >= 2][:600]
    enc = [[e.ids[1:-1] for e in tok.encode_batch(d)] for d in docs]
    ours = []
    for epoch in range(4):
        pairs = NSPPairBuilder(max_seq_length=64, seed=5).build(enc, epoch=epoch)
        ours += [(len(p["segment_a"]), len(p["segment_b"]), p["next_sentence_label"]) for p in pairs]
        for p in pairs:
            assert len(p["segment_a"]) + len(p["segment_b"]) <= 61
    naive = []
    rng = random.Random(12345)
    for _ in range(4):
        naive += _naive_bert_instances(enc, 64, 0.1, rng)
    ours_a, naive_a = np.array(ours, dtype=float), np.array(naive, dtype=float)
    p_ours, p_naive = ours_a[:, 2].mean(), naive_a[:, 2].mean()
    sd = math.sqrt(p_naive * (1 - p_naive) * (1 / len(ours) + 1 / len(naive)))
    assert abs(p_ours - p_naive) < Z * sd, (p_ours, p_naive)
    assert abs(len(ours) - len(naive)) < 0.05 * len(naive)
    for col in (0, 1):
        mo, mn = ours_a[:, col].mean(), naive_a[:, col].mean()
        se = math.sqrt(ours_a[:, col].var() / len(ours) + naive_a[:, col].var() / len(naive))
        assert abs(mo - mn) < Z * se, (col, mo, mn)


def _runs(mask_row: np.ndarray) -> list[int]:
    """Lengths of the maximal runs of True."""
    runs, cur = [], 0
    for x in mask_row:
        if x:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    if cur:
        runs.append(cur)
    return runs


def _naive_ngram(n, budget, rng):
    """UNILM's selection in plain Python (seq2seq_loader.py, stopping at the budget)."""
    cand = list(range(n))
    rng.shuffle(cand)
    masked = set()
    for pos in cand:
        if len(masked) >= budget:
            break
        if pos in masked:
            continue
        size = rng.randint(2, 3) if rng.random() < 0.2 else 1
        for p in range(pos, pos + size):
            if p >= n or p in masked or len(masked) >= budget:
                break
            masked.add(p)
    return masked


def _naive_spanbert(n, budget, rng):
    """SpanBERT's selection in plain Python (one token per word)."""
    pmf = [0.2 * 0.8 ** (k - 1) for k in range(1, 11)]
    masked = set()
    while len(masked) < budget:
        length = rng.choices(range(1, 11), weights=pmf)[0]
        anchor = rng.randrange(n)
        if anchor in masked:
            continue
        for p in range(anchor, anchor + length):
            if p >= n or p in masked or len(masked) >= budget:
                break
            masked.add(p)
    return masked


@pytest.mark.parametrize("recipe", ["ngram", "geometric"])
def test_masked_run_lengths_match_a_naive_implementation(recipe):
    n, trials = 60, 3000
    seqs = [np.concatenate([[CLS], np.arange(1000, 1000 + n), [SEP]])] * trials
    if recipe == "ngram":
        c = UnifiedLMCollator(**IDS, mode_weights=[1, 0, 0, 0], seed=8)
        body = [s[1:-1] for s in seqs]  # UNILM adds [CLS]/[SEP] itself
        m = masked_rows(c(body, indices=np.arange(trials)))[:, 1 : n + 1]
        budget = max(1, round((n + 2) * 0.15))
        naive = _naive_ngram
    else:
        c = MLMCollator(**IDS, span="geometric", seed=8)
        m = masked_rows(c(seqs, indices=np.arange(trials)))[:, 1 : n + 1]
        budget = math.ceil((n + 2) * 0.15)
        naive = _naive_spanbert
    rng = random.Random(99)
    ours_runs = [r for row in m for r in _runs(row)]
    ours_count = np.array([len(_runs(row)) for row in m])
    naive_runs, naive_count = [], []
    for _ in range(trials):
        row = np.zeros(n, dtype=bool)
        row[list(naive(n, budget, rng))] = True
        naive_runs += _runs(row)
        naive_count.append(len(_runs(row)))
    naive_count = np.array(naive_count)
    assert m.sum(1).tolist() == [budget] * trials
    a, b = np.array(ours_runs), np.array(naive_runs)
    for lo, hi in [(1, 1), (2, 2), (3, 3), (4, 6), (7, 10**9)]:
        pa, pb = ((a >= lo) & (a <= hi)).mean(), ((b >= lo) & (b <= hi)).mean()
        p = (pa * len(a) + pb * len(b)) / (len(a) + len(b))
        sd = math.sqrt(max(p * (1 - p), 1e-12) * (1 / len(a) + 1 / len(b)))
        assert abs(pa - pb) <= Z * sd + 1e-9, (recipe, lo, hi, pa, pb)
    se = math.sqrt(ours_count.var() / trials + naive_count.var() / trials)
    assert abs(ours_count.mean() - naive_count.mean()) <= Z * se, (ours_count.mean(), naive_count.mean())
