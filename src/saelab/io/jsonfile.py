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
        raise error(f"{path} holds a JSON {type(value).__name__}, not an object")
    missing = [key for key in required if key not in value]
    if missing:
        raise error(
            f"{path} has no {', '.join(repr(k) for k in missing)} (truncated or not written by "
            "saelab?)"
        )
    return value
