"""Fine-tuning data paths: tagging batches and SQuAD windows, unimask vs transformers, same run.

* Tagging: 64 batches of 32 sentences (the English corpus lines split on whitespace, one tag per
  word) to padded ``input_ids`` / ``attention_mask`` / ``token_type_ids`` and labels on first
  pieces: :func:`unimask.finetune.tagging.encode_tagged` vs transformers' NER recipe
  (``BertTokenizerFast(words, is_split_into_words=True, truncation=True, padding=True)`` and the
  ``tokenize_and_align_labels`` loop over ``word_ids()`` of the token-classification tutorial).
* QA: 8 batches of 32 questions on 300-word corpus contexts to 384-token windows (stride 128)
  with start / end targets: :func:`unimask.finetune.qa.encode_qa` vs ``run_qa.py``'s
  ``prepare_train_features`` (``truncation="only_second"``, ``return_overflowing_tokens``,
  ``return_offsets_mapping``, padding to the longest window, its per-window target loop).

Both sides use the MiniLM vocabulary, default threads. Work unit: bytes of text.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..benchmarking import BenchCase
from .tokenizer import _model_dir, load_lines

__all__ = ["cases"]


def _reference_tokenizer():
    try:
        import transformers  # noqa: PLC0415
    except ModuleNotFoundError:
        return None
    return transformers.BertTokenizerFast.from_pretrained(str(_model_dir()))


def _setup_tagging(corpus: list[Path]):
    from ..finetune.tagging import TaggedSentence, encode_tagged, tag_label_map  # noqa: PLC0415
    from ..tokenizer import WordPieceTokenizer  # noqa: PLC0415

    lines = [ln for ln in load_lines(corpus[0]) if ln.split()][: 64 * 32]
    rng = random.Random(0)
    tags = ["O", "O", "O", "B-X", "I-X", "B-Y"]
    sents = [TaggedSentence(ln.split(), [rng.choice(tags) for _ in ln.split()]) for ln in lines]
    batches = [sents[i: i + 32] for i in range(0, len(sents), 32)]
    nbytes = float(sum(len(w.encode("utf-8")) for s in sents for w in s.words))
    tok = WordPieceTokenizer.from_pretrained(_model_dir())
    labels = tag_label_map(sents)

    def run_ours():
        return [encode_tagged(tok, b, 128, labels) for b in batches]

    ref = _reference_tokenizer()
    if ref is None:
        return run_ours, None, nbytes, "B"
    ids = {t: i for i, t in enumerate(labels.labels)}
    ref_batches = [([list(s.words) for s in b], [[ids[t] for t in s.tags] for s in b]) for b in batches]

    def run_ref():
        out = []
        for words, tag_ids in ref_batches:
            enc = ref(words, is_split_into_words=True, truncation=True, max_length=128, padding=True,
                      return_tensors="np")
            all_labels = []
            for i, label in enumerate(tag_ids):
                previous, label_ids = None, []
                for w in enc.word_ids(batch_index=i):
                    label_ids.append(-100 if w is None or w == previous else label[w])
                    previous = w
                all_labels.append(label_ids)
            out.append((enc, np.array(all_labels)))
        return out

    return run_ours, run_ref, nbytes, "B"


def _setup_qa(corpus: list[Path]):
    from ..corpus import read_documents  # noqa: PLC0415
    from ..finetune.qa import QAExample, encode_qa  # noqa: PLC0415
    from ..tokenizer import WordPieceTokenizer  # noqa: PLC0415

    rng = random.Random(0)
    exs = []
    docs = [" ".join(d).split(" ") for d in read_documents(corpus[0])]
    for words in docs:
        if len(words) < 60:
            continue
        ctx = " ".join(words[:300])
        words = ctx.split(" ")
        i = rng.randrange(0, len(words) - 3)
        phrase = " ".join(words[i: i + 3])
        if phrase.strip() and phrase == phrase.strip() and ctx.count(phrase) == 1:
            exs.append(QAExample(f"Where does it say {phrase.lower()}?", ctx, ((phrase, ctx.index(phrase)),)))
        if len(exs) == 8 * 32:
            break
    batches = [exs[i: i + 32] for i in range(0, len(exs), 32)]
    nbytes = float(sum(len(e.question.encode("utf-8")) + len(e.context.encode("utf-8")) for e in exs))
    tok = WordPieceTokenizer.from_pretrained(_model_dir())

    def run_ours():
        return [encode_qa(tok, b, 384, 128) for b in batches]

    ref = _reference_tokenizer()
    if ref is None:
        return run_ours, None, nbytes, "B"

    def prepare_train_features(batch):  # run_qa.py, in substance
        enc = ref([e.question for e in batch], [e.context for e in batch], truncation="only_second",
                  max_length=384, stride=128, return_overflowing_tokens=True, return_offsets_mapping=True,
                  padding=True)
        starts, ends = [], []
        for r, offsets in enumerate(enc["offset_mapping"]):
            ids = enc["input_ids"][r]
            seq = enc.sequence_ids(r)
            text, s_char = batch[enc["overflow_to_sample_mapping"][r]].answers[0]
            e_char = s_char + len(text)
            ts = 0
            while seq[ts] != 1:
                ts += 1
            te = len(ids) - 1
            while seq[te] != 1:
                te -= 1
            if not (offsets[ts][0] <= s_char and offsets[te][1] >= e_char):
                starts.append(0)
                ends.append(0)
            else:
                while ts < len(offsets) and offsets[ts][0] <= s_char:
                    ts += 1
                starts.append(ts - 1)
                while offsets[te][1] >= e_char:
                    te -= 1
                ends.append(te + 1)
        return enc, starts, ends

    def run_ref():
        return [prepare_train_features(b) for b in batches]

    return run_ours, run_ref, nbytes, "B"


def cases() -> list[BenchCase]:
    """Tagging batches and SQuAD windows with targets (unimask vs transformers' recipes)."""
    return [
        BenchCase(
            "tagging batches of 32 word lists + labels (vs transformers NER recipe)",
            _setup_tagging,
            group="finetune data",
            note="bytes of words per second; padded ids + first-piece labels; reference: BertTokenizerFast "
                 "is_split_into_words + tokenize_and_align_labels",
        ),
        BenchCase(
            "SQuAD windows 384/128 + targets, batches of 32 (vs run_qa.py prepare_train_features)",
            _setup_qa,
            group="finetune data",
            note="bytes of questions + contexts per second; reference: BertTokenizerFast overflowing windows "
                 "+ run_qa's target loop",
        ),
    ]
