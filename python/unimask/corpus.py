"""The bundled demo corpus, and the recipe that built it from Debian's packages.

Format of every unimask text corpus: UTF-8, one sentence per line, documents separated by a
blank line (the format of google-research/bert ``create_pretraining_data.py``).

The demo corpus is small (< 2 MB) real text in English and Chinese; its provenance and
licences are in ``unimask/data/PROVENANCE.md``. :func:`build_demo_corpus` regenerates it on a
Debian machine with ``fortunes``, ``fortunes-zh`` and ``python3-doc`` installed.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

__all__ = ["demo_corpus_path", "demo_corpus_paths", "read_documents", "build_demo_corpus"]

_LANGS = ("en", "zh")


def demo_corpus_path(lang: str = "en") -> Path:
    """Path of the bundled demo corpus for ``lang`` (``"en"`` or ``"zh"``)."""
    if lang not in _LANGS:
        raise ValueError(f"lang must be one of {_LANGS}, got {lang!r}")
    path = Path(str(resources.files("unimask") / "data" / f"demo_{lang}.txt"))
    if not path.is_file():
        raise FileNotFoundError(f"bundled demo corpus is missing: {path} (broken install?)")
    return path


def demo_corpus_paths() -> list[Path]:
    """Paths of all bundled demo corpora (English first)."""
    return [demo_corpus_path(lang) for lang in _LANGS]


def read_documents(path: str | Path) -> list[list[str]]:
    """Read a corpus file: a list of documents, each a list of sentences (non-empty lines)."""
    docs: list[list[str]] = []
    cur: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                cur.append(line)
            elif cur:
                docs.append(cur)
                cur = []
    if cur:
        docs.append(cur)
    return docs


# ---------------------------------------------------------------------------------------------
# Builder (needs Debian packages; not used at run time)

_FORTUNES = Path("/usr/share/games/fortunes")
_PYDOC = Path("/usr/share/doc/python3.11-doc/html/_sources")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SENT_EN = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_ROLE = re.compile(r":[a-z:]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")


def _sentences_en(paragraph: str) -> list[str]:
    text = " ".join(paragraph.split())
    return [s for s in _SENT_EN.split(text) if s]


def _rst_documents(path: Path) -> list[list[str]]:
    """Prose paragraphs of one reStructuredText file, one document per section."""
    docs: list[list[str]] = []
    cur: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    para: list[str] = []
    in_block = False

    def flush_para() -> None:
        if para:
            text = _ROLE.sub(r"\1", " ".join(para)).replace("``", "")
            text = text.replace("**", "").replace("::", ":")
            cur.extend(_sentences_en(text))
            para.clear()

    for idx, raw in enumerate(lines):
        line = raw.rstrip()
        nxt = lines[idx + 1] if idx + 1 < len(lines) else ""
        if in_block:
            if line and not line[0].isspace():
                in_block = False
            else:
                continue
        if re.fullmatch(r"[=\-~*^#\"]{3,}", line.strip()):
            continue
        if nxt and re.fullmatch(r"[=\-~*^#\"]{3,}", nxt.strip()) and line.strip():
            flush_para()  # a heading starts a new document
            if cur:
                docs.append(cur)
                cur = []
            continue
        if line.startswith(".. ") or line.startswith(">>>") or (line and line[0].isspace()):
            flush_para()
            in_block = line.startswith(".. ") or line.endswith("::")
            continue
        if not line:
            flush_para()
            continue
        para.append(line.strip())
        if line.endswith("::"):
            flush_para()
            in_block = True
    flush_para()
    if cur:
        docs.append(cur)
    return [d for d in docs if sum(len(s) for s in d) > 80]


def _fortune_documents(path: Path, zh: bool) -> list[list[str]]:
    docs = []
    text = _ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))
    for block in text.split("\n%\n"):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip() and ln.strip() != "%"]
        if not lines:
            continue
        if zh:
            docs.append(lines)
        else:
            sents = _sentences_en(" ".join(lines))
            if sents and sum(len(s) for s in sents) > 40:
                docs.append(sents)
    return docs


def _cjk_ratio(doc: list[str]) -> float:
    text = "".join(doc)
    return sum("\u4e00" <= c <= "\u9fff" for c in text) / max(1, len(text))


def _write(docs: list[list[str]], out: Path, budget: int) -> int:
    size = 0
    with open(out, "w", encoding="utf-8") as f:
        for doc in docs:
            chunk = "\n".join(doc) + "\n\n"
            n = len(chunk.encode("utf-8"))
            if size + n > budget:
                break
            f.write(chunk)
            size += n
    return size


def build_demo_corpus(out_dir: str | Path, en_budget: int = 1_200_000, zh_budget: int = 600_000) -> dict:
    """Rebuild ``demo_en.txt`` and ``demo_zh.txt`` from Debian's ``python3-doc``, ``fortunes``
    and ``fortunes-zh`` packages. Returns the byte size of each file."""
    out = Path(out_dir)
    en: list[list[str]] = []
    for sub in ("tutorial", "howto", "faq"):
        for p in sorted((_PYDOC / sub).glob("*.rst.txt")):
            en.extend(_rst_documents(p))
    for name in ("computers", "science", "literature", "linux", "wisdom", "work"):
        p = _FORTUNES / name
        if p.exists():
            en.extend(_fortune_documents(p, zh=False))
    zh: list[list[str]] = []
    for name in ("tang300", "song100", "chinese"):
        # keep entries that are mostly Chinese (the `chinese` file also quotes shell snippets)
        zh.extend(d for d in _fortune_documents(_FORTUNES / name, zh=True) if _cjk_ratio(d) > 0.5)
    return {"en": _write(en, out / "demo_en.txt", en_budget), "zh": _write(zh, out / "demo_zh.txt", zh_budget)}


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    import sys

    print(build_demo_corpus(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "data"))
