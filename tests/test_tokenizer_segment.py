"""Chinese dictionary segmentation (ChineseSegmenter, chinese_dict=) vs jieba ``cut(HMM=False)``.

The oracle is jieba itself, loaded with the same dictionary file."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

jieba = pytest.importorskip("jieba", reason="jieba is the oracle of the segmenter tests")
jieba.setLogLevel(logging.WARNING)

from unimask.tokenizer import ChineseSegmenter, WordPieceTokenizer  # noqa: E402

JIEBA_DICT = Path(os.path.dirname(jieba.__file__)) / "dict.txt"
FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer"

MIXED = [
    "我来到北京清华大学",
    "他来到了网易杭研大厦",
    "小明硕士毕业于中国科学院计算所，后在日本京都大学深造",
    "iPhone6 和 AT&T 的 c# 程序员 B超 3.5% e-mail T恤",
    "工信处女干事每月经过下属科室都要亲口交代24口交换机等技术性器件的安装工作",
    "中文\r\n换行\t制表 空格\u3000全角　空格",
    "",
    "  ",
    "😀表情符号😀和[MASK]特殊记号[SEP]",
    "結合繁體字與简体字",
]


@pytest.fixture(scope="module")
def jieba_tok():
    return jieba.Tokenizer(dictionary=str(JIEBA_DICT))


@pytest.fixture(scope="module")
def seg():
    return ChineseSegmenter(JIEBA_DICT)


def _zh_lines(corpus_paths) -> list[str]:
    text = corpus_paths[1].read_text(encoding="utf-8") + (FIXTURES / "fortunes_excerpt.txt").read_text(encoding="utf-8")
    return [ln for ln in text.split("\n") if ln.strip()]


def test_cut_matches_jieba_on_real_text(seg, jieba_tok, corpus_paths):
    lines = _zh_lines(corpus_paths) + MIXED
    for line in lines:
        assert seg.cut(line) == list(jieba_tok.cut(line, HMM=False)), line


def test_cut_matches_jieba_with_a_custom_dictionary(tmp_path):
    d = tmp_path / "dict.txt"
    d.write_text("我 100 r\n来到 50 v\n北京 80 ns\n清华 30\n清华大学 40 nt\n大学 60\n北京大学 5\n来 7\n", encoding="utf-8")
    jt = jieba.Tokenizer(dictionary=str(d))
    seg = ChineseSegmenter(d)
    for t in ["我来到北京清华大学", "北京大学来了", "清华北京", "abc 我 x9 来到", "未登录词"]:
        assert seg.cut(t) == list(jt.cut(t, HMM=False)), t


def test_segmented_word_ids(seg, jieba_tok, minilm_dir, corpus_paths):
    """Tokens of one jieba word share a word id; everything else is HF's pre-tokenization."""
    plain = WordPieceTokenizer.from_pretrained(minilm_dir)
    wwm = WordPieceTokenizer.from_pretrained(minilm_dir, chinese_dict=JIEBA_DICT)
    lines = _zh_lines(corpus_paths)[:400] + MIXED
    b0, b1 = plain.encode_batch(lines), wwm.encode_batch(lines)
    for col in ("ids_flat", "type_ids_flat", "offsets_flat", "row_splits"):
        assert np.array_equal(getattr(b0, col), getattr(b1, col))
    for i, text in enumerate(lines):
        # Oracle: jieba word index of every character, then HF words merged when two
        # neighbouring single-CJK-character words fall in the same jieba word.
        word_of = {}
        pos = 0
        for k, w in enumerate(jieba_tok.cut(text, HMM=False)):
            for j in range(len(w)):
                word_of[pos + j] = k
            pos += len(w)
        e0 = b0[i]
        expect, new, prev_old, prev_char = [], -1, None, None
        for (s, t), w in zip(e0.offsets.tolist(), e0.word_ids.tolist()):
            if w < 0:
                expect.append(-1)
                continue
            cjk = t == s + 1 and ("\u4e00" <= text[s] <= "\u9fff" or "\u3400" <= text[s] <= "\u4dbf" or "\uf900" <= text[s] <= "\ufaff")
            if w != prev_old:
                glue = cjk and prev_char is not None and prev_char == s - 1 and word_of[s] == word_of[s - 1]
                if not glue:
                    new += 1
            prev_old, prev_char = w, (s if cjk else None)
            expect.append(new)
        assert b1[i].word_ids.tolist() == expect, text


def test_segmenter_errors_and_pickle(tmp_path, minilm_dir):
    bad = tmp_path / "bad.txt"
    bad.write_text("好 10\n坏行\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        ChineseSegmenter(bad)
    with pytest.raises(OSError, match="missing.txt"):
        ChineseSegmenter(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="line 2"):
        WordPieceTokenizer.from_pretrained(minilm_dir, chinese_dict=bad)
    good = tmp_path / "good.txt"
    good.write_text("北京 10\n大学 10\n", encoding="utf-8")
    t = WordPieceTokenizer.from_pretrained(minilm_dir, chinese_dict=good)
    t2 = pickle.loads(pickle.dumps(t))
    e1, e2 = t.encode("北京大学"), t2.encode("北京大学")
    assert e1.word_ids.tolist() == e2.word_ids.tolist() == [-1, 0, 0, 1, 1, -1]
    with pytest.raises(TypeError, match="text must be str"):
        ChineseSegmenter(good).cut(b"x")
