"""Reading the JSON files saelab writes (cfg.json, manifests, eval.json) defensively: a missing,
empty, truncated or non-object file is one clear error naming the file, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SaelabError


class JSONFileError(SaelabError, ValueError):
    """A JSON file that is missing, unreadable or not the object it should be."""


def read_json_object(
    path: str | Path, error: type[Exception] = JSONFileError, required: tuple[str, ...] = ()
) -> dict:
    """The JSON object in `path`; raises `error` if the file is missing, not JSON, not an
    object, or lacks one of the `required` keys."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise error(f"{path} holds a JSON {json_kind(value)}, not an object")
    missing = [key for key in required if key not in value]
    if missing:
        raise error(
            f"{path} has no {', '.join(repr(k) for k in missing)} (truncated or not written by "
            "saelab?)"
        )
    return value


KINDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    dict: "a JSON object",
    list: "a JSON array",
    None: "null",
}


def is_kind(value, kind) -> bool:
    """value is of `kind` (a type or a tuple of types) as check_fields reads it: float is any
    number, int excludes bools, None stands for null."""
    if isinstance(kind, tuple):
        return any(is_kind(value, k) for k in kind)
    if kind is None:
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_fields(
    values: dict, where: str, error: type[Exception] = JSONFileError, optional=(), **kinds
) -> None:
    """Each field named in `kinds` (name=type, or a tuple of types: int, float (any number),
    str, bool, dict, list, None for null) is present (unless listed in `optional`) and of its
    type; otherwise `error` names `where`, the field, and what it should be."""
    for name, kind in kinds.items():
        if name not in values:
            if name in optional:
                continue
            raise error(f"{where} has no field {name!r} ({_expected(kind)})")
        if not is_kind(values[name], kind):
            raise error(
                f"{where}: field {name!r} must be {_expected(kind)}, got {_short(values[name])}"
            )


def _expected(kind) -> str:
    return " or ".join(KINDS[k] for k in (kind if isinstance(kind, tuple) else (kind,)))


def _short(value) -> str:
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def json_kind(value) -> str:
    """The JSON name of a parsed value's type: object, array, string, number, boolean, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)
