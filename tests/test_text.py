"""Text sources, packing and special-token handling on small local files."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import tiny_tokenizer

from saelab.data.network import OfflineError
from saelab.data.packing import batched, keep_mask, pack
from saelab.data.text import TextError, documents


def _docs(n):
    return [f"w{i} w{i + 1} w{i + 2}" for i in range(n)]


def test_txt_jsonl_parquet_and_folders(tmp_path):
    for i, doc in enumerate(_docs(3)):
        (tmp_path / f"{i}.txt").write_text(doc)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rows.jsonl").write_text(
        "\n".join(json.dumps({"body": d}) for d in _docs(4)) + "\n"
    )
    pq.write_table(pa.table({"body": _docs(2)}), tmp_path / "sub" / "rows.parquet")
    assert list(documents(str(tmp_path / "0.txt"))) == ["w0 w1 w2"]
    assert list(documents(str(tmp_path / "sub" / "rows.jsonl"), text_column="body")) == _docs(4)
    assert list(documents(str(tmp_path / "sub" / "rows.parquet"), text_column="body")) == _docs(2)
    with pytest.raises(TextError, match="no 'text' field .* --text-column"):
        list(documents(str(tmp_path)))
    (tmp_path / "sub" / "rows.jsonl").unlink()
    (tmp_path / "sub" / "rows.parquet").unlink()
    assert list(documents(str(tmp_path))) == _docs(3)


def test_every_tenth_document_is_held_out(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in _docs(25)))
    train, held = list(documents(str(path))), list(documents(str(path), split="eval"))
    assert held == [_docs(25)[9], _docs(25)[19]] and len(train) == 23 and not set(train) & set(held)


def test_empty_and_missing_sources(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(TextError, match="contains no text"):
        list(documents(str(tmp_path / "empty.txt")))
    with pytest.raises(TextError, match="no text file or folder"):
        list(documents(str(tmp_path / "nope.jsonl")))
    with pytest.raises(TextError, match="parquet"):
        pq.write_table(pa.table({"x": ["a"]}), tmp_path / "p.parquet")
        list(documents(str(tmp_path / "p.parquet")))
    with pytest.raises(TextError, match="unknown builtin"):
        list(documents("builtin:books"))


def test_hub_dataset_without_network_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="pass a local path"):
        list(documents("someone/some-dataset"))


def test_builtin_wiki_has_articles_without_markup():
    train = documents("builtin:wiki")
    first = next(train)
    assert len(first) > 1000 and "[[" not in first and "{{" not in first
    held = list(documents("builtin:wiki", split="eval"))
    assert 5 <= len(held) <= 15 and first not in held


def test_packing_starts_each_context_with_bos():
    tok = tiny_tokenizer()
    contexts = list(pack(_docs(5), tok, ctx_len=6, bos_id=0, eos_id=1))
    flat = [t for ctx in contexts for t in ctx[1:]]
    words = [f"w{i}" for d in range(5) for i in (d, d + 1, d + 2)]
    expected = []
    for d in range(5):
        expected += [tok.convert_tokens_to_ids(f"w{d + j}") for j in range(3)] + [1]
    assert all(len(c) == 6 and c[0] == 0 for c in contexts)
    assert (
        flat == expected[: len(flat)] and len(flat) == (len(expected) // 5) * 5 and len(words) == 15
    )
    ids = next(batched(contexts, 2))
    assert ids.shape == (2, 6)
    mask = keep_mask(ids, {0, 1, 2})
    assert not mask[:, 0].any() and mask.sum() == (~torch.isin(ids, torch.tensor([0, 1, 2]))).sum()


def test_plain_text_is_split_into_documents(tmp_path):
    """A .txt corpus of paragraphs (the most common corpus a user has) gives documents and a
    held-out split; text without blank lines is cut into chunks."""
    paragraphs = [
        f"Paragraph {i} says " + " ".join(f"w{(i * 7 + j) % 50}" for j in range(40))
        for i in range(300)
    ]
    (tmp_path / "corpus.txt").write_text("\n\n".join(paragraphs) + "\n")
    train, held = (
        list(documents(str(tmp_path / "corpus.txt"))),
        list(documents(str(tmp_path / "corpus.txt"), "eval")),
    )
    assert held == paragraphs[9::10] and len(train) == 270
    (tmp_path / "one_block.txt").write_text(" ".join(paragraphs))
    pieces = list(documents(str(tmp_path / "one_block.txt"))) + list(
        documents(str(tmp_path / "one_block.txt"), "eval")
    )
    assert len(pieces) > 20 and all(len(p) <= 4000 for p in pieces)
    assert sorted(" ".join(pieces).split()) == sorted(" ".join(paragraphs).split())  # nothing lost


def test_a_source_of_few_documents_still_holds_out_a_tenth(tmp_path):
    docs = [" ".join(f"d{d}w{j}" for j in range(400)) for d in range(3)]
    path = tmp_path / "few.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    train, held = list(documents(str(path))), list(documents(str(path), "eval"))
    held_words, all_words = sum(len(h.split()) for h in held), sum(len(d.split()) for d in docs)
    assert 0.05 < held_words / all_words < 0.2
    assert sorted(" ".join(train + held).split()) == sorted(" ".join(docs).split())
    (tmp_path / "tiny.txt").write_text("just a few words")
    assert list(documents(str(tmp_path / "tiny.txt"))) == ["just a few words"]
    with pytest.raises(TextError, match="too little text to hold out .* pass more text"):
        list(documents(str(tmp_path / "tiny.txt"), "eval"))


def test_train_and_report_on_a_plain_text_file(tmp_path, capsys):
    """The new user's path: saelab train --model M --dataset corpus.txt, then saelab report."""
    from tiny_models import saved_model

    from saelab import cli

    model_dir = saved_model(tmp_path / "model")
    paragraphs = [" ".join(f"w{(i * 7 + j) % 100}" for j in range(60)) for i in range(300)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(paragraphs))
    run = tmp_path / "run"
    cli.main(
        [
            "train",
            "--model",
            str(model_dir),
            "--layer",
            "1",
            "--dataset",
            str(tmp_path / "corpus.txt"),
            "--ctx-len",
            "16",
            "--tokens",
            "2048",
            "--eval-tokens",
            "256",
            "--batch-size",
            "256",
            "--arch",
            "topk",
            "--k",
            "4",
            "--expansion",
            "2",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(run),
            "--no-progress",
        ]
    )
    cli.main(
        ["report", str(run), "--cache-dir", str(tmp_path / "cache"), "--top", "3", "--no-progress"]
    )
    assert (run / "report.html").is_file()


WIKITEXT = """Intro text.<ref>Peter K, 1910.</ref> More [[Plato|text]].
[[File:X.jpg|thumb|200px|A caption with a [[link]]
over two lines]]
* item one
* item [[two|2]]

{| class="wikitable"
|-
| Cedric Gibbons || Eddie Imazu
|}
<gallery>
File:a.jpg|cap
</gallery>
Line<br>break

== History ==
Body.{{citation needed}}

== See also ==
* thing
=== Sub of see also ===
gone
== Later ==
Kept.
== References ==
{{reflist}}
[[Category:Foo]]
[[de:Anarchismus]]
"""


def test_wikitext_keeps_the_prose_only():
    from saelab.data.wikitext import clean_wikitext

    assert clean_wikitext(WIKITEXT) == (
        "Intro text. More text.\n\nitem one\nitem 2\n\nLine\nbreak\n\nHistory\n"
        "Body.\n\nLater\nKept."
    )


def test_builtin_wiki_has_no_markup_residue():
    import re

    from saelab.data.text import wiki_articles

    text = "\n".join(wiki_articles())
    assert len(text) > 2_000_000
    assert not re.search(r"thumb\||\d+px\||Category:|bgcolor|<ref|\{\{", text)
    assert "\n\nReferences\n" not in text and "GibbonsEddie" not in text


def test_a_cache_of_an_older_cleaning_is_refused(tmp_path, monkeypatch):
    from saelab.data import cache, text

    monkeypatch.setattr(text, "WIKI_REVISION", 1)
    assert text.text_revision("builtin:wiki") == 1 and text.text_revision("a.txt") is None
    manifest = {
        "format": "saelab-activation-cache",
        "spec": {
            "model": "m",
            "layer": 0,
            "site": "resid_post",
            "dataset": "builtin:wiki",
            "split": "train",
            "text_column": "text",
            "ctx_len": 128,
            "dtype": "float16",
            "include_special": False,
        },
        "d_in": 8,
        "n_tokens": 0,
        "shards": [],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    spec = cache.CacheSpec(model="m", layer=0, site="resid_post", dataset="builtin:wiki")
    with pytest.raises(cache.CacheError, match="older cleaning of builtin:wiki"):
        cache.build_cache(None, tmp_path, spec, 10)
