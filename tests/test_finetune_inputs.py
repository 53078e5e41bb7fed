"""Inputs of the classifier loop that used to be lost or half-checked: examples mixing pairs and
single texts (the batch's first row decided for all: a pair silently dropped, or an obscure
tokenizer error), and an empty training set (trained nothing and returned normally)."""

from __future__ import annotations

import pytest
import torch

from unimask.finetune import Example, FinetuneConfig, LabelMap, SequenceClassifier, finetune_classifier
from unimask.finetune.trainer import encode_examples, predict
from unimask.models import EncoderConfig
from unimask.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LM = LabelMap(["a", "b"])


def _model(tok: WordPieceTokenizer) -> SequenceClassifier:
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return SequenceClassifier(cfg, LM)


MIXED = [Example("first", None, "a", 1), Example("second text", "its pair text", "b", 2)]


def test_encode_examples_refuses_pairs_mixed_with_single_texts(minilm_dir):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    with pytest.raises(ValueError, match=r"examples\[1\] \(row 2\) has a text_pair but examples\[0\] has none"):
        encode_examples(tok, MIXED, 32, LM)
    with pytest.raises(ValueError, match=r"examples\[1\] \(row 1\) has no text_pair but examples\[0\] has one"):
        encode_examples(tok, MIXED[::-1], 32, LM)  # was: TypeError pairs[1] must be str
    # all pairs: each row is the tokenizer's own pair encoding
    pairs = [Example("one", "two", "a"), Example("three four", "five", "b")]
    b = encode_examples(tok, pairs, 32, LM)
    for i, e in enumerate(pairs):
        enc = tok.encode(e.text, e.text_pair, max_length=32)
        assert b["input_ids"][i, : len(enc)].tolist() == enc.ids.tolist()
        assert b["token_type_ids"][i, : len(enc)].tolist() == enc.type_ids.tolist()


def test_predict_and_training_check_every_example_up_front(minilm_dir):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    model = _model(tok)
    rows = [Example("a text"), Example("b text"), Example("c text", "a pair")]
    # batch_size 2: the mixed example sits in the second chunk, named by its index in the list
    with pytest.raises(ValueError, match=r"examples\[2\] has a text_pair but examples\[0\] has none"):
        predict(model, tok, rows, 32, batch_size=2)
    cfg = FinetuneConfig(epochs=1, batch_size=1, max_length=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"train\[1\] \(row 2\) has a text_pair but train\[0\] has none"):
        finetune_classifier(model, tok, MIXED, cfg)
    with pytest.raises(ValueError, match=r"eval_examples\[1\] \(row 2\) has a text_pair"):
        finetune_classifier(model, tok, MIXED[:1], cfg, eval_examples=MIXED)
    with pytest.raises(ValueError, match=r"extra_tasks\['t'\]\[1\] \(row 2\) has a text_pair"):
        finetune_classifier(model, tok, MIXED[:1], cfg, extra_tasks={"t": MIXED})
    # refused before any step: the weights are untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_empty_training_set_is_a_value_error(minilm_dir):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    with pytest.raises(ValueError, match="no training examples"):  # as the tagger, QA and seq2seq loops
        finetune_classifier(_model(tok), tok, [], FinetuneConfig(epochs=1))
