"""The encoder's embedding inputs (``input_ids``, ``token_type_ids``, ``position_ids``,
``cache_positions``, MASS's ``decoder_input_ids`` / ``decoder_positions``) are validated once
per forward, before any layer runs.

Before, a bad index reached ``nn.Embedding``: an ``IndexError: index out of range in self`` on
the CPU (a device-side assert on CUDA, which kills the CUDA context), a size-mismatch
``RuntimeError`` for a wrongly shaped segment tensor, and a dtype ``RuntimeError`` for the
tokenizer's own uint32 ids. The expected messages below are written out by hand (argument,
first offending value in row-major order, its ``[row, column]``, the bound and its config
field); the outputs of converted dtypes are compared bitwise with int64 ids.

The checks that read values run on CPU tensors only; the simulated device of
``tests/test_validation_syncs.py`` shows that the Trainer path (ids left on the host through
``host_batch_keys``, checked there, then copied without waiting) costs no device read and no
blocking copy, and that ids already on the device are not read.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import unimask.models.encoder as encoder_module
from test_validation_syncs import DEV, FakeDevice, dev, on_dev, values
from unimask.models import EncoderConfig, MassSeq2Seq, TransformerEncoder, UnifiedLM
from unimask.tokenizer import WordPieceTokenizer
from unimask.training import Trainer, TrainingConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
           max_position_embeddings=16, type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def model() -> TransformerEncoder:
    torch.manual_seed(0)
    return TransformerEncoder(EncoderConfig(**CFG)).eval()


IDS = torch.tensor([[5, 17, 99, 0, 3, 42, 8, 1], [64, 2, 2, 31, 7, 0, 0, 0]])
TYPES = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0, 0]])


def _with(t: torch.Tensor, r: int, c: int, v) -> torch.Tensor:
    t = t.clone()
    t[r, c] = v
    return t


# (keyword arguments of the forward, exception, the message's beginning)
BAD = [
    ({"input_ids": torch.tensor([[1, 2, 400]])}, ValueError, "input_ids[0, 2] = 400 is outside [0, 100) (vocab_size = 100)"),
    ({"input_ids": torch.tensor([[1, 2, -1]])}, ValueError, "input_ids[0, 2] = -1 is outside [0, 100) (vocab_size = 100)"),
    ({"input_ids": _with(_with(IDS, 1, 6, 100), 1, 4, -3)}, ValueError,  # the first in row-major order
     "input_ids[1, 4] = -3 is outside [0, 100)"),
    ({"token_type_ids": torch.full((2, 8), 5)}, ValueError,
     "token_type_ids[0, 0] = 5 is outside [0, 2) (type_vocab_size = 2)"),
    ({"token_type_ids": _with(TYPES, 1, 2, 2)}, ValueError, "token_type_ids[1, 2] = 2 is outside [0, 2)"),
    ({"token_type_ids": torch.zeros(2, 7, dtype=torch.long)}, ValueError,
     "token_type_ids must have the shape of input_ids (2, 8), got (2, 7)"),
    ({"token_type_ids": torch.zeros(8, dtype=torch.long)}, ValueError,
     "token_type_ids must have the shape of input_ids (2, 8), got (8,)"),
    ({"token_type_ids": torch.zeros(2, 8)}, TypeError, "token_type_ids must hold integers, got dtype torch.float32"),
    ({"token_type_ids": torch.zeros(2, 8, dtype=torch.bool)}, TypeError,
     "token_type_ids must hold integers, got dtype torch.bool"),
    ({"token_type_ids": TYPES.tolist()}, TypeError, "token_type_ids must be a torch.Tensor of integers, got list"),
    ({"input_ids": IDS.double()}, TypeError, "input_ids must hold integers, got dtype torch.float64"),
    ({"input_ids": IDS.to(torch.complex64)}, TypeError, "input_ids must hold integers, got dtype torch.complex64"),
    ({"input_ids": IDS.numpy()}, TypeError, "input_ids must be a torch.Tensor of integers, got ndarray"),
    ({"input_ids": IDS[0]}, ValueError, "input_ids must be [batch, length], got shape (8,)"),
    ({"position_ids": torch.full((2, 8), 30)}, ValueError,
     "position_ids[0, 0] = 30 is outside [0, 16) (max_position_embeddings = 16)"),
    ({"position_ids": _with(torch.arange(8)[None], 0, 7, 16)}, ValueError,
     "position_ids[0, 7] = 16 is outside [0, 16) (max_position_embeddings = 16)"),
    ({"position_ids": torch.arange(7)[None]}, ValueError,
     "position_ids must have shape (2, 8) or (1, 8) (the shape of input_ids, or one row for every row), got (1, 7)"),
    ({"position_ids": torch.arange(8).expand(3, 8)}, ValueError, "position_ids must have shape (2, 8) or (1, 8)"),
    ({"position_ids": torch.arange(8.0)[None]}, TypeError, "position_ids must hold integers, got dtype torch.float32"),
    # unsigned ids are converted, after their values are checked: no wrap-around
    ({"input_ids": _with(IDS, 0, 1, 100).to(torch.uint32)}, ValueError, "input_ids[0, 1] = 100 is outside [0, 100)"),
    ({"input_ids": torch.tensor([[3, 2 ** 63 + 5]], dtype=torch.uint64)}, ValueError,
     f"input_ids[0, 1] = {2 ** 63 + 5} is outside [0, 100)"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD)
def test_bad_indices_raise_naming_the_value(model, kwargs, error, message):
    kw = {"input_ids": IDS, **kwargs}
    with pytest.raises(error) as e:
        model(**kw)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.uint16, torch.uint32, torch.int32])
def test_narrow_and_unsigned_dtypes_give_the_int64_output(model, dtype):
    want = model(IDS, TYPES).last_hidden_state
    got = model(IDS.to(dtype), TYPES.to(dtype), position_ids=torch.arange(8)[None].to(dtype)).last_hidden_state
    assert torch.equal(got, want)


def test_tokenizer_ids_are_accepted_as_they_come(model):
    """``WordPieceTokenizer.encode`` hands out uint32 ids and uint8 segment ids (numpy)."""
    tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"], num_threads=1)
    enc = tok.encode("hello worlds", "world")
    assert enc.ids.dtype == np.uint32 and enc.type_ids.dtype == np.uint8
    got = model(torch.from_numpy(enc.ids[None]), torch.from_numpy(enc.type_ids[None]))
    want = model(torch.tensor([enc.ids.tolist()]), torch.tensor([enc.type_ids.tolist()]))
    assert enc.ids.tolist() == [2, 5, 6, 7, 3, 6, 3] and enc.type_ids.tolist() == [0] * 5 + [1] * 2
    assert torch.equal(got.last_hidden_state, want.last_hidden_state)
    assert torch.equal(got.pooler_output, want.pooler_output)


# -- cached generation and packed rows ---------------------------------------------------------


def test_cache_positions_are_checked_against_the_cache(model):
    cache = model.new_cache(2, 10)
    mode = torch.ones(2, dtype=torch.long)  # left to right: the cached step attends to j <= its position
    model(IDS[:, :4], attn_mode=mode, cache=cache)  # prefill
    step = IDS[:, 4:5]
    with pytest.raises(ValueError) as e:
        model(step, cache=cache, cache_positions=torch.tensor([[4], [10]]))
    assert str(e.value) == "cache_positions[1, 0] = 10 is outside [0, 10) (the cache's max_len = 10)"
    with pytest.raises(ValueError, match=r"cache_positions\[0, 0\] = -1 is outside \[0, 10\)"):
        model(step, cache=cache, cache_positions=torch.tensor([[-1], [4]]))
    with pytest.raises(TypeError, match="cache_positions must hold integers, got dtype torch.float32"):
        model(step, cache=cache, cache_positions=torch.tensor([[4.0], [4.0]]))
    with pytest.raises(ValueError, match=r"cache_positions must have shape \(2, 1\) or \(1, 1\)"):
        model(step, cache=cache, cache_positions=torch.tensor([[4, 5], [4, 5]]))
    with pytest.raises(ValueError, match=r"cache_positions \(incremental decoding\) needs the cache they index"):
        model(step, cache_positions=torch.tensor([[4], [4]]))
    with pytest.raises(ValueError, match="position_ids and cache_positions both given"):
        model(step, cache=cache, cache_positions=torch.tensor([[4], [4]]), position_ids=torch.tensor([[4], [4]]))
    with pytest.raises(ValueError, match="the cache holds 2 sequences but input_ids has B = 1 rows"):
        model(step[:1], cache=cache, cache_positions=torch.tensor([[4]]))
    with pytest.raises(ValueError, match="input_ids has 11 columns but the cache holds max_len = 10 positions"):
        model(torch.ones(2, 11, dtype=torch.long), cache=model.new_cache(2, 10))
    # a valid step (uint32 ids, as the tokenizer gives) equals the uncached forward at that position
    got = model(step.to(torch.uint32), cache=cache, cache_positions=torch.tensor([[4], [4]])).last_hidden_state
    want = model(IDS[:, :5], attn_mode=mode).last_hidden_state[:, 4:5]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_packed_rows_check_given_positions(model):
    cu = torch.tensor([0, 5, 8, 16])
    with pytest.raises(ValueError, match=r"input_ids\[1, 2\] = 123 is outside \[0, 100\)"):
        model(_with(IDS, 1, 2, 123), cu_seqlens=cu)
    pos = torch.cat([torch.arange(5), torch.arange(3), torch.arange(8)]).view(2, 8)
    with pytest.raises(ValueError, match=r"position_ids\[1, 3\] = 20 is outside \[0, 16\)"):
        model(IDS, cu_seqlens=cu, position_ids=_with(pos, 1, 3, 20))
    # the default positions restart at each document: the same as passing them
    assert torch.equal(model(IDS, cu_seqlens=cu).last_hidden_state,
                       model(IDS.to(torch.uint32), cu_seqlens=cu, position_ids=pos).last_hidden_state)


def _checked_names(monkeypatch) -> list[str]:
    names: list[str] = []
    real = encoder_module.check_indices

    def counted(name, *args, **kwargs):
        names.append(name)
        return real(name, *args, **kwargs)
    monkeypatch.setattr(encoder_module, "check_indices", counted)
    return names


def test_each_index_tensor_is_validated_once_per_forward(model, monkeypatch):
    """Not per layer (2 layers here), not twice (the encoder's check, then the embeddings')."""
    names = _checked_names(monkeypatch)
    model(IDS, TYPES, position_ids=torch.arange(8)[None])
    assert names == ["input_ids", "token_type_ids", "position_ids"]
    names.clear()
    model(IDS, TYPES, cu_seqlens=torch.tensor([0, 5, 8, 16]))  # positions made (and bounded) by the packing
    assert names == ["input_ids", "token_type_ids"]
    names.clear()
    cache = model.new_cache(2, 10)
    model(IDS[:, :4], cache=cache)
    model(IDS[:, 4:5], cache=cache, cache_positions=torch.tensor([[4], [4]]))
    assert names == ["input_ids", "input_ids", "cache_positions"]
    names.clear()
    model.embeddings(IDS, TYPES)  # called on its own, the embeddings check their inputs
    assert names == ["input_ids", "token_type_ids"]


# -- MASS: the decoder's indices ----------------------------------------------------------------


def _mass() -> MassSeq2Seq:
    torch.manual_seed(0)
    return MassSeq2Seq(EncoderConfig(**{**CFG, "num_hidden_layers": 1})).eval()


def _mass_batch() -> dict:
    return {"input_ids": IDS, "attention_mask": torch.ones(2, 8, dtype=torch.long),
            "decoder_input_ids": torch.tensor([[4, 9, 11], [4, 2, 0]]),
            "decoder_positions": torch.tensor([[3, 4, 5], [1, 2, 3]]),
            "decoder_labels": torch.tensor([[9, 11, 12], [2, 6, -100]]), "decoder_len": torch.tensor([3, 2])}


@pytest.mark.parametrize("key,r,c,v,message", [
    ("decoder_positions", 1, 2, 16, "decoder_positions[1, 2] = 16 is outside [0, 16) (max_position_embeddings = 16)"),
    ("decoder_input_ids", 0, 1, 100, "decoder_input_ids[0, 1] = 100 is outside [0, 100) (vocab_size = 100)"),
    ("input_ids", 1, 7, -2, "input_ids[1, 7] = -2 is outside [0, 100)"),
])
def test_mass_indices_are_validated(monkeypatch, key, r, c, v, message):
    m = _mass()
    batch = _mass_batch()
    batch[key] = _with(batch[key], r, c, v)
    with pytest.raises(ValueError) as e:
        m(**batch)
    assert str(e.value).startswith(message)
    names = _checked_names(monkeypatch)
    good = _mass_batch()
    want = m(**good).loss
    got = m(**{**good, "input_ids": IDS.to(torch.uint32), "decoder_input_ids": good["decoder_input_ids"].to(torch.uint32)}).loss
    assert torch.equal(got, want)
    assert names == ["input_ids", "decoder_input_ids", "decoder_positions"] * 2  # once per forward each


# -- the Trainer path ---------------------------------------------------------------------------


def _tiny_unilm() -> UnifiedLM:
    torch.manual_seed(0)
    return UnifiedLM(EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=16, type_vocab_size=6,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def _unilm_batch(**changes) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (3, 6), generator=g)
    labels = torch.full((3, 6), -100)
    labels[:, 2] = ids[:, 2]
    batch = {"input_ids": ids, "token_type_ids": torch.zeros(3, 6, dtype=torch.long), "labels": labels,
             "attention_mask": torch.ones(3, 6, dtype=torch.long), "attn_mode": torch.tensor([0, 3, 1]),
             "src_len": torch.tensor([0, 2, 0]), "seq_len": torch.tensor([6, 6, 6]),
             "next_sentence_label": torch.tensor([1, 0, -100])}
    for key, (r, c, v) in changes.items():
        batch[key] = _with(batch[key], r, c, v)
    return batch


@pytest.mark.parametrize("key,r,c,v,message", [
    ("input_ids", 1, 3, 57, "input_ids[1, 3] = 57 is outside [0, 50) (vocab_size = 50)"),
    ("token_type_ids", 2, 0, 6, "token_type_ids[2, 0] = 6 is outside [0, 6) (type_vocab_size = 6)"),
])
def test_trainer_reports_a_bad_index_before_any_forward(key, r, c, v, message):
    model = _tiny_unilm()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ran = []
    model.encoder.embeddings.register_forward_pre_hook(lambda mod, args: ran.append("embeddings"))
    model.encoder.layers[0].register_forward_pre_hook(lambda mod, args: ran.append("layer"))
    batches = [_unilm_batch(**{key: (r, c, v)})]
    t = Trainer(model, lambda start: iter(batches), TrainingConfig(max_steps=1, progress=False, precision="fp32"),
                device="cpu", log=lambda s: None)
    with pytest.raises(ValueError) as e:
        t.train()
    assert str(e.value) == message
    assert ran == [] and t.state.step == 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def _on_simulated_device(model: nn.Module) -> None:
    """The embedding tables "on" the simulated device (where the model's inputs must go)."""
    emb = model.encoder.embeddings
    for table in (emb.word, emb.position, emb.token_type):
        table.weight = nn.Parameter(dev(table.weight.detach()))


def test_trainer_path_checks_the_ids_on_the_host_without_a_sync():
    """The Trainer leaves ``input_ids`` / ``token_type_ids`` on the CPU (``host_batch_keys``);
    the embeddings check them there and copy them over without waiting: no device read, no
    blocking copy (the old path copied them with the rest of the batch and never checked them)."""
    model = _tiny_unilm()
    t = Trainer(model, lambda start: iter(()), TrainingConfig(max_steps=1, progress=False, precision="fp32"),
                device="cpu", log=lambda s: None)
    t.device = DEV
    _on_simulated_device(model)
    emb = model.encoder.embeddings
    batch = _unilm_batch()
    batch["input_ids"] = batch["input_ids"].to(torch.uint32)  # as the tokenizer gives them
    with FakeDevice() as fake:
        moved = t._to_device(batch)
        assert moved["input_ids"] is batch["input_ids"] and moved["token_type_ids"] is batch["token_type_ids"]
        ids, types, pos = emb.check_inputs(moved["input_ids"], moved["token_type_ids"], None)
        assert (fake.reads, fake.blocking) == (0, 0)
        assert on_dev(ids) and on_dev(types) and pos is None and ids.dtype == types.dtype == torch.int64
        assert values(ids) == batch["input_ids"].tolist() and values(types) == batch["token_type_ids"].tolist()
        with pytest.raises(ValueError, match=r"input_ids\[0, 5\] = 50 is outside \[0, 50\)"):
            emb.check_inputs(_with(batch["input_ids"], 0, 5, 50), None, None)
        assert (fake.reads, fake.blocking) == (0, 0)


def test_ids_already_on_the_device_are_not_read():
    """DDP / FSDP (or a caller) put the ids on the device: only dtype and shape are checked (a
    range check would read them back, a synchronisation); a narrow dtype is converted there."""
    model = _tiny_unilm()
    _on_simulated_device(model)
    emb = model.encoder.embeddings
    with FakeDevice() as fake:
        ids, types, pos = emb.check_inputs(dev(torch.tensor([[3, 77]], dtype=torch.uint32)),
                                           dev(torch.tensor([[0, 1]])), dev(torch.tensor([[0, 1]], dtype=torch.int16)))
        assert (fake.reads, fake.blocking) == (0, 0)
        assert all(on_dev(x) for x in (ids, types, pos)) and ids.dtype == pos.dtype == torch.int64
        assert values(ids) == [[3, 77]]  # 77 >= vocab_size 50: not range-checked on the device (documented)
        with pytest.raises(TypeError, match="token_type_ids must hold integers, got dtype torch.float32"):
            emb.check_inputs(dev(torch.tensor([[3, 7]])), dev(torch.tensor([[0.0, 1.0]])), None)
        with pytest.raises(ValueError, match=r"token_type_ids must have the shape of input_ids \(1, 2\), got \(1, 3\)"):
            emb.check_inputs(dev(torch.tensor([[3, 7]])), dev(torch.tensor([[0, 1, 1]])), None)
        assert (fake.reads, fake.blocking) == (0, 0)
