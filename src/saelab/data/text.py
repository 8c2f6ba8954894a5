"""Text sources, each an iterator of documents (strings):

- builtin:wiki        gensim's shortened English Wikipedia dump, markup stripped with
                      mwparserfromhell
- local files         .txt (one document per file), .jsonl and .parquet (one per row, column
                      `text_column`), or a folder of them (searched recursively, sorted)
- a datasets name     streamed from the Hugging Face hub (needs network)

Every source is split the same fixed way: every 10th document is held out (split="eval").
"""

from __future__ import annotations

import bz2
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from ..errors import SaelabError
from .network import require_hub
from .packaged import package_file

WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_REQUIREMENT = "gensim==4.4.0"
HELDOUT_EVERY = 10
SPLITS = ("train", "eval")
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


class TextError(SaelabError, ValueError):
    """A text source that cannot be read or yields no text."""


def wiki_path() -> Path:
    return package_file("gensim", WIKI_FILE, WIKI_REQUIREMENT, "builtin:wiki", TextError)


def wiki_articles() -> Iterator[str]:
    """Plain text of the dump's articles, redirects skipped."""
    import mwparserfromhell

    for _, element in ET.iterparse(bz2.open(wiki_path())):
        if not element.tag.endswith("}page"):
            continue
        text = next((e.text for e in element.iter() if e.tag.endswith("}text")), None) or ""
        element.clear()
        if not text.lstrip().lower().startswith("#redirect"):
            yield mwparserfromhell.parse(text).strip_code().strip()


def _file_documents(path: Path, text_column: str) -> Iterator[str]:
    if path.suffix == ".txt":
        yield path.read_text(encoding="utf-8", errors="replace")
    elif path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if text_column not in row:
                raise TextError(f"{path}:{n} has no {text_column!r} field (fields: {', '.join(row)}); "
                                "choose one with --text-column")
            yield str(row[text_column])
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_column not in table.column_names:
            raise TextError(f"{path} has no column {text_column!r} (columns: {', '.join(table.column_names)}); "
                            "choose one with --text-column")
        yield from (str(t) for t in table.column(text_column).to_pylist() if t is not None)
    else:
        raise TextError(f"{path}: unsupported text file type (use {', '.join(TEXT_SUFFIXES)})")


def _hub_documents(name: str, text_column: str) -> Iterator[str]:
    require_hub(f"dataset {name!r}")
    import datasets

    stream = datasets.load_dataset(name, split="train", streaming=True)
    for row in stream:
        if text_column not in row:
            raise TextError(f"dataset {name!r} has no {text_column!r} column (columns: {', '.join(row)})")
        yield row[text_column]


def documents(source: str, split: str = "train", text_column: str = "text") -> Iterator[str]:
    """Documents of a text source; fails with a TextError before yielding if it has none."""
    if split not in SPLITS:
        raise TextError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if source == "builtin:wiki":
        docs = wiki_articles()
    elif source.startswith("builtin:"):
        raise TextError(f"unknown builtin text source {source!r}; builtins: builtin:wiki")
    elif Path(source).exists():
        path = Path(source)
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise TextError(f"{path} holds no {', '.join(TEXT_SUFFIXES)} files")
        docs = (doc for f in files for doc in _file_documents(f, text_column))
    elif source.startswith((".", "/", "~")) or Path(source).suffix in TEXT_SUFFIXES:
        raise TextError(f"no text file or folder at {source}")
    else:
        docs = _hub_documents(source, text_column)
    held_out = split == "eval"
    docs = (d for i, d in enumerate(d for d in docs if d.strip()) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == held_out)
    first = next(docs, None)
    if first is None:
        raise TextError(f"{source} ({split}) contains no text")
    yield first
    yield from docs
