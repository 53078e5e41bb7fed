"""TransformerEncoder vs transformers.BertModel (oracle) on the real MiniLM checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from unimask.models import EncoderConfig, TransformerEncoder  # noqa: E402
from unimask.models.checkpoint import normalize_hf_names, read_state_dict  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "unimask trains BERT, GPT, MASS and UNILM objectives with one encoder.",
    "Short one.",
]


@pytest.fixture(scope="module")
def tok(minilm_dir):
    t = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    t.no_padding()  # the shipped tokenizer.json pads to 128; we pad ourselves
    return t


@pytest.fixture(scope="module")
def hf_model(minilm_dir):
    m = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager")
    return m.eval()


@pytest.fixture(scope="module")
def our_model(minilm_dir):
    return TransformerEncoder.from_pretrained(minilm_dir).eval()


def _batch(tok, texts, pair=False):
    encs = tok.encode_batch([(t, t[::-1]) for t in texts] if pair else texts)
    L = max(len(e.ids) for e in encs)
    ids = torch.zeros(len(texts), L, dtype=torch.long)
    tt = torch.zeros_like(ids)
    am = torch.zeros_like(ids)
    for b, e in enumerate(encs):
        n = len(e.ids)
        ids[b, :n] = torch.tensor(e.ids)
        tt[b, :n] = torch.tensor(e.type_ids)
        am[b, :n] = 1
    return ids, tt, am


def _compare(ours, hf, am):
    assert len(ours.hidden_states) == len(hf.hidden_states) == 7
    valid = am.bool()
    worst = 0.0
    for a, b in zip(ours.hidden_states, hf.hidden_states):
        worst = max(worst, (a[valid] - b[valid]).abs().max().item())
    assert worst <= 1e-5, worst
    assert torch.equal(ours.last_hidden_state, ours.hidden_states[-1])


@torch.no_grad()
@pytest.mark.parametrize("text", TEXTS)
def test_single_text_matches_hf_bert(tok, hf_model, our_model, text):
    ids, tt, am = _batch(tok, [text])
    hf = hf_model(input_ids=ids, token_type_ids=tt, attention_mask=am, output_hidden_states=True)
    ours = our_model(ids, token_type_ids=tt, output_hidden_states=True)
    _compare(ours, hf, am)
    assert (ours.pooler_output - hf.pooler_output).abs().max().item() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("pair", [False, True])
def test_padded_batch_matches_hf_bert(tok, hf_model, our_model, pair):
    ids, tt, am = _batch(tok, TEXTS, pair=pair)
    assert (am == 0).any(), "the batch must contain padding"
    hf = hf_model(input_ids=ids, token_type_ids=tt, attention_mask=am, output_hidden_states=True)
    ours = our_model(ids, token_type_ids=tt, attention_mask=am, output_hidden_states=True)
    _compare(ours, hf, am)
    # the collator's integers give the same result as the HF mask
    seq_len = am.sum(1).to(torch.int32)
    ours2 = our_model(ids, token_type_ids=tt, attn_mode=torch.zeros(3, dtype=torch.int8),
                      src_len=torch.zeros(3, dtype=torch.int32), seq_len=seq_len)
    assert torch.equal(ours2.last_hidden_state, ours.last_hidden_state)


def test_attention_mask_with_holes_is_rejected(our_model):
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="right-padding"):
        our_model(ids, attention_mask=torch.tensor([[1, 0, 1, 1]]))
    with pytest.raises(ValueError, match="disagrees"):
        our_model(ids, attention_mask=torch.tensor([[1, 1, 1, 0]]), seq_len=torch.tensor([4]))


@torch.no_grad()
def test_save_pretrained_round_trip(tmp_path, tok, our_model, minilm_dir):
    our_model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    # the saved tensors are exactly the original checkpoint's (same HF names, same values)
    orig = normalize_hf_names(read_state_dict(minilm_dir))
    saved = read_state_dict(tmp_path)
    assert set(saved) == set(orig)
    for k in orig:
        assert torch.equal(saved[k], orig[k]), k
    ids, tt, am = _batch(tok, TEXTS)
    ref = our_model(ids, token_type_ids=tt, attention_mask=am).last_hidden_state
    again = TransformerEncoder.from_pretrained(tmp_path).eval()
    assert torch.equal(again(ids, token_type_ids=tt, attention_mask=am).last_hidden_state, ref)
    hf = transformers.BertModel.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    out = hf(input_ids=ids, token_type_ids=tt, attention_mask=am).last_hidden_state
    valid = am.bool()
    assert (out[valid] - ref[valid]).abs().max().item() <= 1e-5


def test_legacy_names_bert_prefix_and_bin(tmp_path, minilm_dir, tok):
    """A TF-converted style checkpoint: bert. prefix, gamma/beta, pytorch_model.bin, cls.* heads."""
    sd = read_state_dict(minilm_dir)
    legacy = {}
    for k, v in sd.items():
        k2 = "bert." + k
        if "LayerNorm.weight" in k2:
            k2 = k2.replace("LayerNorm.weight", "LayerNorm.gamma")
        elif "LayerNorm.bias" in k2:
            k2 = k2.replace("LayerNorm.bias", "LayerNorm.beta")
        legacy[k2] = v
    legacy["cls.seq_relationship.weight"] = torch.zeros(2, 384)
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((minilm_dir / "config.json").read_text())
    a = TransformerEncoder.from_pretrained(tmp_path).eval()
    b = TransformerEncoder.from_pretrained(minilm_dir).eval()
    ids, tt, am = _batch(tok, TEXTS[:1])
    with torch.no_grad():
        assert torch.equal(a(ids).last_hidden_state, b(ids).last_hidden_state)


def test_missing_weights_are_listed(tmp_path, minilm_dir):
    sd = read_state_dict(minilm_dir)
    del sd["encoder.layer.2.output.dense.weight"]
    del sd["embeddings.LayerNorm.bias"]
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((minilm_dir / "config.json").read_text())
    with pytest.raises(ValueError, match=r"missing 2 encoder weights.*embeddings\.LayerNorm\.bias.*layer\.2\.output\.dense\.weight"):
        TransformerEncoder.from_pretrained(tmp_path)


def test_pre_ln_round_trip_and_config_validation(tmp_path):
    cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, pre_layer_norm=True)
    m = TransformerEncoder(cfg).eval()
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["unimask"]["pre_layer_norm"] is True
    m2 = TransformerEncoder.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.equal(m(ids).last_hidden_state, m2(ids).last_hidden_state)
    with pytest.raises(ValueError, match="divisible"):
        EncoderConfig(hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError, match="hidden_act"):
        EncoderConfig(hidden_act="swish")


def test_attention_deterministic_reaches_every_attention_call(tmp_path, monkeypatch):
    """EncoderConfig.attention_deterministic is passed as ``deterministic`` to every layer's
    attention (padded and packed rows) and survives save/load; non-bools are refused."""
    import unimask.models.encoder as E

    seen = []
    for name in ("unified_attention", "unified_attention_varlen"):
        real = getattr(E, name)

        def spy(*a, _real=real, **kw):
            seen.append(kw["deterministic"])
            return _real(*a, **kw)

        monkeypatch.setattr(E, name, spy)
    cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, attention_deterministic=False)
    m = TransformerEncoder(cfg).eval()
    with torch.no_grad():
        m(torch.randint(1, 50, (2, 7)))
        m(torch.randint(1, 50, (1, 8)), cu_seqlens=torch.tensor([0, 3, 8]), attn_mode=torch.tensor([0, 1]),
          src_len=torch.tensor([0, 0]))
    assert seen == [False] * 4
    m.save_pretrained(tmp_path)
    assert TransformerEncoder.from_pretrained(tmp_path).config.attention_deterministic is False
    assert EncoderConfig().attention_deterministic is True
    with pytest.raises(TypeError, match="attention_deterministic must be a bool, got 'no'"):
        EncoderConfig(attention_deterministic="no")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(attn_mode=torch.tensor([5])), r"attn_mode\[0\] = 5"),
        (dict(seq_len=torch.tensor([9])), r"seq_len\[0\] = 9"),
        (dict(attn_mode=torch.tensor([3]), src_len=torch.tensor([7]), seq_len=torch.tensor([4])), r"src_len\[0\] = 7"),
        (dict(attention_mask=torch.ones(2, 6)), r"attention_mask must have shape"),
    ],
)
def test_bad_mask_integers_raise_naming_the_value(kw, match):
    cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(ValueError, match=match):
        TransformerEncoder(cfg)(torch.ones(1, 6, dtype=torch.long), **kw)


def _tiny_encoder():
    cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    return TransformerEncoder(cfg).eval()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(attn_mode=torch.tensor([1])), r"attn_mode has 1 entries but the batch has B = 2"),
        (dict(src_len=torch.tensor([0, 0, 0])), r"src_len has 3 entries but the batch has B = 2"),
        (dict(seq_len=torch.tensor([4])), r"seq_len has 1 entries but the batch has B = 2"),
        (dict(seq_len=torch.tensor([6]), attention_mask=torch.ones(2, 6)), r"seq_len has 1 entries but the batch has B = 2"),
    ],
)
def test_mask_args_need_one_entry_per_sample(kw, match):
    """A length-1 attn_mode/seq_len for B = 2 was broadcast (row 1 silently got row 0's mask);
    TransformerEncoder.forward and resolve_mask_args now reject it naming the argument and B."""
    from unimask.models.encoder import resolve_mask_args

    ids = torch.ones(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        _tiny_encoder()(ids, **kw)
    full = dict(attention_mask=None, attn_mode=None, src_len=None, seq_len=None)
    with pytest.raises(ValueError, match=match):
        resolve_mask_args((2, 6), **{**full, **kw}, device=torch.device("cpu"))


def test_resolve_mask_args_validates_and_defaults():
    from unimask.models.encoder import resolve_mask_args

    mode, src, seq = resolve_mask_args((2, 4), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]), None, None, None,
                                       torch.device("cpu"))
    assert mode.tolist() == [0, 0] and src.tolist() == [0, 0] and seq.tolist() == [2, 4]
    with pytest.raises(ValueError, match=r"seq_len\[1\] = 5 is outside \[0, 4\]"):
        resolve_mask_args((2, 4), None, None, None, torch.tensor([4, 5]), torch.device("cpu"))


def test_empty_sequence_with_pooler_is_a_value_error():
    """L = 0: pooler_output needs token 0 of each row (was an IndexError)."""
    with pytest.raises(ValueError, match=r"input_ids has no tokens \(shape \(2, 0\)\)"):
        _tiny_encoder()(torch.ones(2, 0, dtype=torch.long))
