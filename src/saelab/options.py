"""Dataclass fields that are also command-line options.

    batch_size: int = option(4096, "tokens per batch")

keeps the field's help and how its flag looks in the field's metadata; flags.py turns every
such field of a config dataclass into a flag (`--batch-size`), and the parsed flags back into
the dataclass, so a new option is one field. A field made with plain `field()` or a bare
default has no flag.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, field, fields

from .checks import check_choice, check_integer, check_number
from .errors import ConfigError


def option(
    default=MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    cli_default=None,
    low: float = 0,
    strict: bool = False,
    high: float = math.inf,
    choices=None,
    metavar: str | None = None,
    const=None,
    label: str | None = None,
    default_factory=MISSING,
):
    """A field with a command-line flag.

    flag: the flag's name without dashes (default: the field's name with - for _); fields of
    different configs with the same flag share it. cli_default: the command line's default
    where it differs from the dataclass's. low/strict/high: a number (or each number of a
    list) lies in [low, high), low excluded when strict; check_options enforces it. choices:
    the values a string (or each element of a list) may take.
    const: for an optional string, the value of the bare flag (`--wandb` = "saelab").
    label: the format of the value in a sweep point's name (architecture knobs: "k{}").
    """
    metadata = {
        "help": help,
        "flag": flag,
        "cli_default": cli_default,
        "low": low,
        "strict": strict,
        "high": high,
        "choices": choices,
        "metavar": metavar,
        "const": const,
        "label": label,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def options(cls) -> list:
    """The fields of dataclass `cls` that are options (made with option())."""
    return [f for f in fields(cls) if "help" in f.metadata]


def flag_name(f) -> str:
    """The flag of an option field, without dashes: `batch-size`."""
    return f.metadata.get("flag") or f.name.replace("_", "-")


def dest(f) -> str:
    """The argparse destination of an option field (shared by fields with the same flag)."""
    return flag_name(f).replace("-", "_")


def kind(f) -> tuple[str, bool]:
    """(the element type's name, whether the field is a list or tuple) of an option field, from
    its annotation: "int | None" -> ("int", False), "list[int]" -> ("int", True)."""
    text = str(f.type).replace(" | None", "").strip()
    for container in ("list[", "tuple["):
        if text.startswith(container):
            return text[len(container) : -1].split(",")[0].strip(), True
    return text, False


def check_options(config) -> None:
    """Each option of a config dataclass that is not None against its annotation and range
    (ConfigError naming the field)."""
    for f in options(type(config)):
        value, meta = getattr(config, f.name), f.metadata
        if value is None:
            continue
        element, listed = kind(f)
        for item in value if listed else [value]:
            if element == "int":
                check_integer(f.name, item, low=int(meta["low"]))
                if item >= meta["high"]:
                    raise ConfigError(f"{f.name} must be < {meta['high']:g}, got {item!r}")
            elif element == "float":
                check_number(f.name, item, meta["low"], meta["strict"], meta["high"])
            elif element == "bool" and not isinstance(item, bool):
                raise ConfigError(f"{f.name} must be true or false, got {item!r}")
            elif element == "str":
                if not isinstance(item, str):
                    raise ConfigError(f"{f.name} must be a string, got {item!r}")
                if meta["choices"] is not None:
                    check_choice(f.name, item, meta["choices"])
