"""Text -> model -> cached activations, for a training split and a held-out split; the model
is loaded only when a cache still needs tokens, so a second run reuses the caches."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from .cache import MANIFEST, ActivationCache, CacheSpec, build_cache, read_manifest
from .models import load_model
from .text import text_revision


def cache_dir(root: str | Path, spec: CacheSpec) -> Path:
    """A readable, unique-enough folder name for a cache spec."""
    revision = text_revision(spec.dataset)
    dataset = spec.dataset + (f"-r{revision}" if revision else "")
    slug = re.sub(
        r"[^A-Za-z0-9_.-]+",
        "_",
        f"{spec.model}-L{spec.layer}-{spec.site}-{dataset}-ctx{spec.ctx_len}-{spec.dtype}",
    )
    return Path(root) / slug.strip("_") / spec.split


def _complete(directory: Path, spec: CacheSpec, tokens: int) -> bool:
    if not (directory / MANIFEST).exists():
        return False
    manifest = read_manifest(directory)
    enough = manifest["n_tokens"] >= tokens or manifest.get(
        "text_exhausted", False
    )  # all of the text is in
    return (
        manifest["spec"] == spec.__dict__
        and enough
        and manifest.get("text_revision") == text_revision(spec.dataset)
    )


def ensure_caches(
    wanted: list[tuple[CacheSpec, int]],
    root: str | Path = "cache",
    device: str = "cpu",
    model_dtype: str = "float32",
    progress: bool = True,
) -> list[ActivationCache]:
    """A cache with at least n tokens for each (spec, n), harvesting only what is missing; all
    specs must name the same model, which is loaded at most once."""
    caches, lm = [], None
    for spec, n in wanted:
        directory = cache_dir(root, spec)
        if _complete(directory, spec, n):
            print(f"reusing cached activations in {directory}")
            caches.append(ActivationCache(directory, expect=spec))
            continue
        if lm is None:
            print(f"loading {spec.model} ...")
            lm = load_model(spec.model, dtype=model_dtype, device=device)
        caches.append(build_cache(lm, directory, spec, n, progress=progress))
    return caches


def prepare_activations(
    spec: CacheSpec,
    tokens: int,
    eval_tokens: int,
    root: str | Path = "cache",
    device: str = "cpu",
    model_dtype: str = "float32",
    progress: bool = True,
) -> tuple[ActivationCache, ActivationCache]:
    """(training cache, held-out cache) of `spec`."""
    train_cache, eval_cache = ensure_caches(
        [(spec, tokens), (replace(spec, split="eval"), eval_tokens)],
        root,
        device,
        model_dtype,
        progress,
    )
    return train_cache, eval_cache
