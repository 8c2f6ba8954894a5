"""Wiki markup to the prose a reader sees, for the builtin Wikipedia sample.

mwparserfromhell's strip_code alone keeps what is not prose: image captions as residue
("thumb|200px|A caption"), table cells glued together ("Cedric GibbonsEddie Imazu"), the text of
<ref> footnotes glued into sentences, category and interlanguage links. Before stripping, this
drops images, galleries, tables, footnotes, categories and interlanguage links, and whole
back-matter sections (References, See also, External links, ...); list items stay one per line.
What the parser does not always recognise (tables whose rows come from templates, footnotes
next to them, captions spanning lines) is cut from the raw text first.
"""

from __future__ import annotations

import re

REVISION = 2  # bump when the cleaning changes: caches of builtin:wiki record it (data/cache.py)
DROPPED_TAGS = {
    "ref",
    "references",
    "table",
    "gallery",
    "imagemap",
    "timeline",
    "math",
    "score",
    "syntaxhighlight",
    "source",
    "noinclude",
}
BREAK_TAGS = {"br", "p"}
CATEGORY_LINK = re.compile(r"^\s*:?\s*category\s*:", re.IGNORECASE)
INTERLANGUAGE_LINK = re.compile(r"^\s*[a-z]{2,3}(-[a-z]+)*\s*:", re.IGNORECASE)
BACK_MATTER = {
    "references",
    "notes",
    "footnotes",
    "see also",
    "external links",
    "further reading",
    "bibliography",
    "sources",
    "citations",
    "works cited",
    "notes and references",
    "references and notes",
}
HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.MULTILINE)
FOOTNOTE = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.IGNORECASE | re.DOTALL)
FILE_LINK = re.compile(r"\[\[\s*:?\s*(file|image|media)\s*:", re.IGNORECASE)


def without_back_matter(text: str) -> str:
    """text without its back-matter sections: each such heading and everything up to the next
    heading of the same or a higher level (fewer '=')."""
    pieces, skip_level, last = [], None, 0
    for heading in HEADING.finditer(text):
        level, title = len(heading.group(1)), heading.group(2).strip().lower()
        if skip_level is not None and level <= skip_level:
            skip_level, last = None, heading.start()
        if skip_level is None and title in BACK_MATTER:
            pieces.append(text[last : heading.start()])
            skip_level = level
    if skip_level is None:
        pieces.append(text[last:])
    return "".join(pieces)


def without_tables(text: str) -> str:
    """text without its {| ... |} tables, nested ones included, matched line by line (the
    parser does not recognise every table, e.g. those whose rows come from templates)."""
    kept, depth = [], 0
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith("{|"):
            depth += 1
        if depth == 0:
            kept.append(line)
        elif stripped.startswith("|}"):
            depth -= 1
    return "\n".join(kept)


def without_file_links(text: str) -> str:
    """text without [[File:...]] / [[Image:...]] links, captions (and links inside them, and
    line breaks, which the parser does not accept inside a link) included."""
    pieces, last = [], 0
    for match in FILE_LINK.finditer(text):
        if match.start() < last:
            continue  # inside a link already removed
        depth, i = 0, match.start()
        while i < len(text) - 1:
            pair = text[i : i + 2]
            depth += (pair == "[[") - (pair == "]]")
            i += 2 if pair in ("[[", "]]") else 1
            if depth == 0:
                break
        pieces.append(text[last : match.start()])
        last = i
    pieces.append(text[last:])
    return "".join(pieces)


def _remove(code, node) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with an enclosing node
        pass


def clean_wikitext(text: str) -> str:
    """The prose of one article's wikitext: paragraphs separated by blank lines, list items and
    headings on lines of their own."""
    import mwparserfromhell

    code = mwparserfromhell.parse(
        without_file_links(without_tables(FOOTNOTE.sub("", without_back_matter(text))))
    )
    for tag in code.filter_tags(recursive=True):
        name = str(tag.tag).strip().lower()
        if name in DROPPED_TAGS:
            _remove(code, tag)
        elif name in BREAK_TAGS:
            try:
                code.replace(tag, "\n")
            except ValueError:
                pass
    for link in code.filter_wikilinks(recursive=True):
        title = str(link.title)
        if CATEGORY_LINK.match(title) or (link.text is None and INTERLANGUAGE_LINK.match(title)):
            _remove(code, link)
    lines = [line.strip() for line in code.strip_code().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
