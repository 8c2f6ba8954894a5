"""Class 3 of the hostile pass: text sources. Every row is checked (a wrong type is an error
naming the file and line; null or empty text is skipped and counted), text that is not UTF-8
is an error naming the file and byte offset, and a file that is not text is refused."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_world import CACHE, check_case, with_args

from saelab import cli


def lines(name, rows):
    """A .jsonl file of `rows` (each JSON-encoded) after 30 good rows."""
    good = [json.dumps({"text": f"w{i} w{i + 1} w{i + 2} " * 5}) for i in range(30)]
    return lambda w: (w / name).write_text("\n".join(good + [json.dumps(r) for r in rows]) + "\n")


def raw(name, content: bytes):
    return lambda w: (w / name).write_bytes(content)


def parquet(name, column, values):
    return lambda w: pq.write_table(pa.table({column: values}), w / name)


def folder_with_a_bad_file(w):
    (w / "texts").mkdir(exist_ok=True)
    lines("texts/good.jsonl", [])(w)
    lines("texts/bad.jsonl", [[1]])(w)


def text_source(name):
    return with_args(CACHE, dataset="{w}/" + name)


LATIN1 = ('{"text": "caf\xe9 au lait"}\n' * 40).encode("latin-1")
CASES = [
    ("rows that are lists", lines("t-a.jsonl", [[1, 2]]), text_source("t-a.jsonl"), "t-a.jsonl:31 is a JSON array, not an object"),
    ("rows that are strings", lines("t-b.jsonl", ["some text"]), text_source("t-b.jsonl"), "t-b.jsonl:31 is a JSON string"),
    ("rows that are null", lines("t-c.jsonl", [None]), text_source("t-c.jsonl"), "t-c.jsonl:31 is a JSON null"),
    ("text a number", lines("t-d.jsonl", [{"text": 3}]), text_source("t-d.jsonl"), "t-d.jsonl:31: 'text' must be a string, got a JSON number"),
    ("text a list", lines("t-e.jsonl", [{"text": ["a"]}]), text_source("t-e.jsonl"), "t-e.jsonl:31: 'text' must be a string, got a JSON array"),
    ("text an object", lines("t-f.jsonl", [{"text": {"a": 1}}]), text_source("t-f.jsonl"), "got a JSON object"),
    ("text missing", lines("t-g.jsonl", [{"body": "x"}]), text_source("t-g.jsonl"), "t-g.jsonl:31 has no 'text' field \\(fields: body\\)"),
    ("Latin-1 jsonl", raw("t-h.jsonl", LATIN1), text_source("t-h.jsonl"), "t-h.jsonl is not UTF-8 text \\(byte 13"),
    ("Latin-1 txt", raw("t-i.txt", "caf\xe9\n\n".encode("latin-1") * 50), text_source("t-i.txt"), "t-i.txt is not UTF-8 text \\(byte 3"),
    ("malformed line", raw("t-j.jsonl", b'{"text": "a b c"}\n{"text": "a\n'), text_source("t-j.jsonl"), "t-j.jsonl:2 is not valid JSON"),
    ("binary named .txt", raw("t-k.txt", bytes(range(256)) * 40), text_source("t-k.txt"), "t-k.txt is a binary file, not text"),
    ("binary named .jsonl", raw("t-l.jsonl", b"\x00\x01\x02" * 100), text_source("t-l.jsonl"), "t-l.jsonl is a binary file"),
    ("every text null", raw("t-m.jsonl", b'{"text": null}\n' * 40), text_source("t-m.jsonl"), "contains no text"),
    ("parquet text numbers", parquet("t-n.parquet", "text", [1, 2, 3]), text_source("t-n.parquet"), "t-n.parquet row 0: 'text' must be a string"),
    ("parquet without the column", parquet("t-o.parquet", "body", ["a b"]), text_source("t-o.parquet"), "t-o.parquet has no column 'text'"),
    ("one bad file in a folder", folder_with_a_bad_file, text_source("texts"), "bad.jsonl:31 is a JSON array"),
    ("unsupported file type", raw("t-p.csv", b"text\nhello\n"), text_source("t-p.csv"), "unsupported text file type"),
    ("folder without text files", lambda w: (w / "empty-texts").mkdir(exist_ok=True), text_source("empty-texts"), "holds no .txt, .jsonl, .parquet files"),
]  # fmt: skip


@pytest.mark.parametrize("name, setup, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_text_is_named_with_its_file_and_line(world, capsys, name, setup, argv, pattern):
    check_case(world, capsys, setup, argv, pattern)


def test_null_and_empty_rows_are_skipped_and_counted(world, capsys, tmp_path):
    lines("t-null.jsonl", [{"text": None}, {"text": "  "}, {"text": None}])(world)
    argv = [
        a.format(w=world)
        for a in with_args(CACHE, dataset="{w}/t-null.jsonl", out=str(tmp_path / "c"))
    ]
    cli.main(argv)
    assert "skipped 3 rows with null or empty 'text'" in capsys.readouterr().err


def test_every_class_has_eight_cases():
    assert len(CASES) >= 8
