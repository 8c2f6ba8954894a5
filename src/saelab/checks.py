"""Range checks of configuration values, raising ConfigError with the value's name."""

from __future__ import annotations

import math

from .errors import ArgumentError, ConfigError


def check_integer(name: str, value, low: int = 1) -> None:
    """An int (not a bool) >= low."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(
            low, f"an integer >= {low}"
        )
        raise ConfigError(f"{name} must be {kind}, got {value!r}")


def check_number(
    name: str, value, low: float = 0.0, strict: bool = False, high: float = math.inf
) -> None:
    """A finite number in [low, high) (low excluded when strict); NaN and Inf are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low) or value >= high:
        bound = f"{'>' if strict else '>='} {low:g}" + (
            f" and < {high:g}" if high < math.inf else ""
        )
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    """One of `choices`."""
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def by_name(items, what: str) -> dict:
    """{item.name: item} of a registry's entries; a name given twice is an error naming it."""
    registry: dict = {}
    for item in items:
        if item.name in registry:
            raise ConfigError(f"two {what} are named {item.name!r}")
        registry[item.name] = item
    return registry


def check_type(name: str, value, kinds, expected: str) -> None:
    """value is an instance of `kinds` (ints are not bools); else an ArgumentError saying what
    `name` should be."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
        raise ArgumentError(f"{name} must be {expected}, got {type(value).__name__} {value!r:.60}")


def _tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)
