"""Text sources, each an iterator of documents (strings):

- builtin:wiki        gensim's shortened English Wikipedia dump, as prose (data/wikitext.py:
                      no captions, tables, footnotes or reference sections)
- local files         .txt (documents separated by blank lines; text without blank lines is cut
                      into chunks of about CHUNK_CHARS characters), .jsonl and .parquet (one
                      per row, column `text_column`), or a folder of them (searched
                      recursively, sorted)
- a datasets name     streamed from the Hugging Face hub (needs network)

Every source is split the same fixed way: every 10th document is held out (split="eval"). A
source with fewer than MIN_DOCUMENTS documents is first cut into MIN_DOCUMENTS pieces of about
equal length, so that about a tenth of its text is held out all the same.
"""

from __future__ import annotations

import bz2
import itertools
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from ..errors import SaelabError
from ..io.jsonfile import json_kind
from .network import require_hub
from .packaged import package_file
from .wikitext import REVISION as WIKI_REVISION
from .wikitext import clean_wikitext

WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_REQUIREMENT = "gensim==4.4.0"
HELDOUT_EVERY = 10
MIN_DOCUMENTS = 2 * HELDOUT_EVERY
CHUNK_CHARS = 4000
MIN_PIECE_CHARS = 200
SPLITS = ("train", "eval")
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


class TextError(SaelabError, ValueError):
    """A text source that cannot be read or yields no text."""


def wiki_path() -> Path:
    return package_file("gensim", WIKI_FILE, WIKI_REQUIREMENT, "builtin:wiki", TextError)


def wiki_articles() -> Iterator[str]:
    """The prose of the dump's articles (see wikitext.clean_wikitext), redirects skipped."""
    for _, element in ET.iterparse(bz2.open(wiki_path())):
        if not element.tag.endswith("}page"):
            continue
        text = next((e.text for e in element.iter() if e.tag.endswith("}text")), None) or ""
        element.clear()
        if not text.lstrip().lower().startswith("#redirect"):
            yield clean_wikitext(text)


def text_revision(source: str) -> int | None:
    """The version of saelab's cleaning of a builtin source (None for a user's text), so that a
    cache harvested from an older cleaning is not mixed with a newer one."""
    return WIKI_REVISION if source == "builtin:wiki" else None


def chunks(text: str, size: int) -> list[str]:
    """text cut into pieces of about `size` characters, at whitespace where there is some."""
    pieces, start = [], 0
    while start < len(text):
        end = start + size
        if end < len(text):
            space = text.rfind(" ", start + size // 2, end)
            end = space if space > 0 else end
        pieces.append(text[start:end].strip())
        start = end
    return [p for p in pieces if p]


def text_documents(text: str) -> list[str]:
    """Plain text as documents: paragraphs separated by blank lines, each longer one (or text
    with no blank lines at all) cut into chunks of about CHUNK_CHARS characters."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return [
        piece
        for p in paragraphs
        for piece in (chunks(p, CHUNK_CHARS) if len(p) > CHUNK_CHARS else [p])
    ]


def read_text_file(path: Path) -> str:
    """A file's text: refused if it is binary (NUL bytes) or not UTF-8 (with the byte offset)."""
    data = path.read_bytes()
    if b"\0" in data[:65536]:
        raise TextError(f"{path} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TextError(
            f"{path} is not UTF-8 text (byte {err.start}: {data[err.start : err.start + 4]!r}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None


def _rows(path: Path, text_column: str) -> Iterator[tuple[str, object]]:
    """('file:line' or 'file row n', the text column's value) of each row of a .jsonl or
    .parquet file; a row that is not an object or lacks the column is a TextError."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_column not in table.column_names:
            raise TextError(
                f"{path} has no column {text_column!r} (columns: {', '.join(table.column_names)}); "
                "choose one with --text-column"
            )
        for n, value in enumerate(table.column(text_column).to_pylist()):
            yield f"{path} row {n}", value
        return
    for n, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TextError(
                f"{path}:{n} is not valid JSON ({err.msg}, column {err.colno})"
            ) from None
        if not isinstance(row, dict):
            raise TextError(
                f"{path}:{n} is a JSON {json_kind(row)}, not an object with a {text_column!r} field"
            )
        if text_column not in row:
            raise TextError(
                f"{path}:{n} has no {text_column!r} field (fields: {', '.join(row)}); "
                "choose one with --text-column"
            )
        yield f"{path}:{n}", row[text_column]


def _file_documents(path: Path, text_column: str) -> Iterator[str]:
    if path.suffix == ".txt":
        yield from text_documents(read_text_file(path))
        return
    if path.suffix not in TEXT_SUFFIXES:
        raise TextError(f"{path}: unsupported text file type (use {', '.join(TEXT_SUFFIXES)})")
    skipped = 0
    for where, value in _rows(path, text_column):
        if value is None or (isinstance(value, str) and not value.strip()):
            skipped += 1
        elif isinstance(value, str):
            yield value
        else:
            raise TextError(
                f"{where}: {text_column!r} must be a string, got a JSON {json_kind(value)}"
            )
    if skipped:
        print(
            f"saelab: {path}: skipped {skipped} rows with null or empty {text_column!r}",
            file=sys.stderr,
        )


def _hub_documents(name: str, text_column: str) -> Iterator[str]:
    require_hub(f"dataset {name!r}")
    import datasets

    stream = datasets.load_dataset(name, split="train", streaming=True)
    for row in stream:
        if text_column not in row:
            raise TextError(
                f"dataset {name!r} has no {text_column!r} column (columns: {', '.join(row)})"
            )
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
        files = (
            sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
            if path.is_dir()
            else [path]
        )
        if not files:
            raise TextError(f"{path} holds no {', '.join(TEXT_SUFFIXES)} files")
        docs = (doc for f in files for doc in _file_documents(f, text_column))
    elif source.startswith((".", "/", "~")) or Path(source).suffix in TEXT_SUFFIXES:
        raise TextError(f"no text file or folder at {source}")
    else:
        docs = _hub_documents(source, text_column)
    docs = _enough_documents(d for d in docs if d.strip())
    if docs is None:
        raise TextError(f"{source} contains no text")
    held_out = split == "eval"
    docs = (d for i, d in enumerate(docs) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == held_out)
    first = next(docs, None)
    if first is None:
        raise TextError(
            f"{source} holds too little text to hold out any for evaluation (saelab holds out "
            f"every {HELDOUT_EVERY}th document, after cutting a source of fewer than "
            f"{MIN_DOCUMENTS} documents into {MIN_DOCUMENTS} pieces): pass more text, or evaluate "
            "on activations you have (--activations)"
            if held_out
            else f"{source} holds no training text once every {HELDOUT_EVERY}th document is "
            "held out"
        )
    yield first
    yield from docs


def _enough_documents(docs: Iterator[str]) -> Iterator[str] | None:
    """docs as they are when there are at least MIN_DOCUMENTS, else their text cut into about
    MIN_DOCUMENTS equal pieces (of at least MIN_PIECE_CHARS); None if there is no text at all."""
    head = list(itertools.islice(docs, MIN_DOCUMENTS))
    if not head:
        return None
    if len(head) == MIN_DOCUMENTS:
        return itertools.chain(head, docs)
    size = max(MIN_PIECE_CHARS, sum(len(d) for d in head) // MIN_DOCUMENTS)
    return iter([piece for d in head for piece in chunks(d, size)])
