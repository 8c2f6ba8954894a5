"""Command-line flags made from the configuration: argparse types that range-check values, and
one flag per architecture setting, generated from the settings dataclasses in sae/ (the field's
help and default are the flag's), so names and defaults have one source."""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields

from .errors import SaelabError
from .sae.registry import ARCHITECTURES, architecture


class UsageError(SaelabError):
    """Flags that contradict each other or are missing."""


def integer(low: int):
    """argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {'positive' if low == 1 else f'>= {low}'}, got {value}")
        return value
    parse.__name__ = "int"
    return parse


def real(low: float = 0.0, strict: bool = False):
    """argparse type: a finite float >= low (> low when strict)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {low:g}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


COUNT, INDEX, COEFFICIENT, RATE = integer(1), integer(0), real(0.0), real(0.0, strict=True)


def list_of(kind, choices=None):
    """argparse type: a comma-separated list of `kind`, each in `choices` if given."""
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise argparse.ArgumentTypeError(f"not a comma list of {kind.__name__}: {text!r} ({err})") from None
        bad = [v for v in values if choices is not None and v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"invalid choice {bad or text!r} (choose from {', '.join(choices or [])})")
        return values
    return parse


def _settings_fields() -> dict:
    """Every architecture setting once: name -> (field, names of the architectures taking it)."""
    found: dict = {}
    for arch in ARCHITECTURES.values():
        for f in fields(arch.settings):
            found.setdefault(f.name, (f, []))[1].append(arch.name)
    return found


def knobs() -> set[str]:
    return {knob for arch in ARCHITECTURES.values() for knob in arch.knobs}


def add_settings_flags(group, k_default: int) -> None:
    """--k, --l1-coefficient, --aux-k, ... for every architecture setting. A knob (a setting an
    architecture's sparsity is swept by) takes a comma list; its default is the setting's (k:
    k_default). Every default is None here, so what was given can be told from what was not."""
    for name, (f, archs) in _settings_fields().items():
        default = k_default if name == "k" else (None if f.default is MISSING else f.default)
        listed = "list" in str(f.type)  # a list-valued setting (matryoshka_widths) takes a comma list of counts
        element = COUNT if name == "k" or listed else (INDEX if "int" in str(f.type) else COEFFICIENT)
        kind = list_of(element) if name in knobs() or listed else element
        shown = f" (default: {default:g})" if isinstance(default, float) else (
            f" (default: {default})" if default is not None else "")
        group.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                           help=f"{', '.join(archs)}: {f.metadata['help']}{shown}")


def given_settings(args) -> dict:
    """The settings flags that were given, by setting name."""
    return {name: getattr(args, name) for name in _settings_fields() if getattr(args, name, None) is not None}


def check_settings_apply(given: dict, archs: list[str]) -> None:
    """A settings flag that none of the chosen architectures takes is an error."""
    taken = {f.name for arch in archs for f in fields(architecture(arch).settings)}
    unused = sorted(set(given) - taken)
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise UsageError(f"{flags} do(es) not apply to --arch {','.join(archs)}")


def grid_of(arch: str, given: dict, k_default: int) -> tuple[str | None, list, dict]:
    """(knob, its values, the other settings) of the SAEs of `arch` the flags ask for: the knob
    is the first of the architecture's knobs that was given, else the first with a default."""
    spec = architecture(arch)
    takes = {f.name for f in fields(spec.settings)}
    defaults = {f.name: (k_default if f.name == "k" else f.default) for f in fields(spec.settings)}
    knob = next((name for name in spec.knobs if name in given), None)
    knob = knob or next((name for name in spec.knobs if defaults.get(name) not in (None, MISSING)), None)
    values = given.get(knob, [defaults[knob]]) if knob else [None]
    others = {name: value for name, value in given.items() if name in takes and name not in spec.knobs}
    return knob, values, others
