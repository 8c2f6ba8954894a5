"""The activation cache: a directory of safetensors shards and a `manifest.json`.

Each shard holds `activations` [n, d_in] (float16, bfloat16 or float32), and for each row its
`context` (global index of the packed context) and `position`, plus `tokens` [n_ctx, ctx_len]:
the token ids of the contexts it covers, starting at context `first_context`.

The manifest also records the revision of saelab's cleaning of a builtin text source
(text.text_revision); a cache of an older cleaning is refused rather than extended.

Writing is resumable: a shard is written atomically, then the manifest (shards with their
sha256, token count, contexts consumed) is rewritten atomically. A run interrupted anywhere
restarts from the manifest's context count: nothing is duplicated or lost. Asking for more
tokens than the cache holds extends it.

Reading yields shuffled batches without loading every shard: each epoch permutes the shards,
loads them WINDOW at a time and permutes the rows of each window.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import rundir
from ..errors import DataError
from ..io.atomic import atomic_write
from ..io.jsonfile import check_fields, read_json_object
from . import harvesting
from .batches import rebatch
from .hooks import HookPoint
from .text import text_revision

MANIFEST = rundir.CACHE_MANIFEST
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
WINDOW = 4


class CacheError(DataError):
    """A cache that is missing, corrupt, or not the one requested."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds; two caches with equal specs are interchangeable."""

    model: str
    layer: int
    site: str
    dataset: str
    split: str = "train"
    text_column: str = "text"
    ctx_len: int = 128
    dtype: str = "float16"
    include_special: bool = False

    def __post_init__(self):
        if self.dtype not in STORAGE_DTYPES:
            raise CacheError(
                f"unknown storage dtype {self.dtype!r}; choose one of {', '.join(STORAGE_DTYPES)}"
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hookpoint_caches(directory: str | Path) -> list[str]:
    """The hook points (layers.L.SITE) whose caches `directory` holds as folders, as
    `saelab cache --hookpoints` writes them; [] for anything else."""
    if (Path(directory) / MANIFEST).exists():
        return []
    return sorted(
        p.parent.name
        for p in Path(directory).glob(f"layers.*/{MANIFEST}")
        if re.fullmatch(r"layers\.\d+\.\w+", p.parent.name)
    )


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a cache directory, every field checked for type and range."""
    path = Path(directory) / MANIFEST
    inner = hookpoint_caches(directory)
    if not path.is_file() and inner:
        raise CacheError(
            f"{directory} holds the caches of {len(inner)} hook points (saelab cache "
            f"--hookpoints): pass one of its folders, {', '.join(inner)}"
        )
    if not path.is_file():
        raise CacheError(
            f"{directory} is not an activation cache (no {MANIFEST}; it is "
            f"{rundir.describe(Path(directory))})"
        )
    manifest = read_json_object(path, CacheError)
    check_fields(
        manifest,
        str(path),
        CacheError,
        optional=("n_tokens",),
        spec=dict,
        d_in=int,
        shards=list,
        n_tokens=int,
    )
    kinds = {f.name: {"str": str, "int": int, "bool": bool}[f.type] for f in fields(CacheSpec)}
    unknown = sorted(set(manifest["spec"]) - set(kinds))
    if unknown:
        raise CacheError(f"{path}: unknown spec field(s) {', '.join(unknown)}")
    defaults = [f.name for f in fields(CacheSpec) if f.default is not MISSING]
    check_fields(manifest["spec"], f"{path} spec", CacheError, optional=defaults, **kinds)
    if manifest["d_in"] < 1:
        raise CacheError(f"{path}: d_in must be positive, got {manifest['d_in']}")
    for i, shard in enumerate(manifest["shards"]):
        where = f"{path} shard entry {i}"
        if not isinstance(shard, dict):
            raise CacheError(f"{where} must be a JSON object (file, n_tokens, sha256)")
        check_fields(shard, where, CacheError, file=str, n_tokens=int, sha256=str)
        if Path(shard["file"]).name != shard["file"] or shard["file"] in ("", ".", ".."):
            raise CacheError(
                f"{where}: file must be a file name in the cache, got {shard['file']!r}"
            )
        if shard["n_tokens"] < 1:
            raise CacheError(f"{where}: n_tokens must be positive, got {shard['n_tokens']}")
    total = sum(shard["n_tokens"] for shard in manifest["shards"])
    if manifest.get("n_tokens", total) != total:
        raise CacheError(
            f"{path}: n_tokens is {manifest['n_tokens']}, but its shards hold {total} (damaged?)"
        )
    return manifest


def check_spec(manifest: dict, requested: CacheSpec | dict, directory) -> None:
    """Raise a CacheError listing every field where the cache differs from the request (a
    whole CacheSpec, or a dict of just the fields the user named)."""
    fields = asdict(requested) if isinstance(requested, CacheSpec) else requested
    diffs = [
        f"{k}: cache has {manifest['spec'].get(k)!r}, requested {v!r}"
        for k, v in fields.items()
        if manifest["spec"].get(k) != v
    ]
    if diffs:
        raise CacheError(
            f"the cache in {directory} does not match the request: " + "; ".join(diffs)
        )


def _write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write(
        directory / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1) + "\n")
    )


def existing_manifest(directory: Path, spec: CacheSpec) -> dict | None:
    """The manifest of the cache in `directory` that a harvest of `spec` extends, or None for a
    new cache; a cache of another spec or text cleaning, or a directory holding anything else
    (a run, an SAE, other files), is refused."""
    directory = Path(directory)
    if not (directory / MANIFEST).exists():
        held = sorted(directory.iterdir()) if directory.is_dir() else []
        others = [entry for entry in held if entry.name != rundir.LOCK]
        if others:
            raise CacheError(
                f"{directory} is not an activation cache and holds "
                f"{', '.join(f'{e.name} ({rundir.describe(e)})' for e in others)}: harvest into "
                "a new or empty directory"
            )
        return None
    manifest = read_manifest(directory)
    check_spec(manifest, spec, directory)
    if manifest.get("text_revision") != text_revision(spec.dataset):
        raise CacheError(
            f"the cache in {directory} was harvested from an older cleaning of {spec.dataset} "
            f"(revision {manifest.get('text_revision')}, now {text_revision(spec.dataset)}): "
            "remove it, or harvest into another directory"
        )
    return manifest


def build_cache(
    lm,
    directory: str | Path,
    spec: CacheSpec,
    tokens: int,
    shard_tokens: int = 65536,
    batch_contexts: int = 16,
    progress: bool = True,
) -> ActivationCache:
    """Harvest at least `tokens` activations of `lm` (a LanguageModel) into `directory`."""
    point = HookPoint(spec.layer, spec.site)
    caches = build_caches(
        lm, {point: Path(directory)}, spec, tokens, shard_tokens, batch_contexts, progress
    )
    return caches[point.name]


def build_caches(
    lm,
    directories: dict[HookPoint, Path],
    spec: CacheSpec,
    tokens: int,
    shard_tokens: int = 65536,
    batch_contexts: int = 16,
    progress: bool = True,
) -> dict[str, ActivationCache]:
    """Harvest at least `tokens` activations at each hook point (spec with its layer and site)
    into its directory, all from one forward pass per batch: the caches' shards hold the same
    tokens row by row. A cache ahead of the others (a run interrupted between their manifests)
    is cut back to their last shard."""
    if tokens <= 0:
        raise CacheError(f"tokens must be positive, got {tokens}")
    specs = {point: replace(spec, layer=point.layer, site=point.site) for point in directories}
    manifests = {
        point: existing_manifest(directories[point], specs[point])
        or _new_manifest(directories[point], specs[point], lm.d_model)
        for point in directories
    }
    _align(directories, manifests)
    manifest = next(iter(manifests.values()))  # the shared counts: every manifest agrees
    if manifest["n_tokens"] >= tokens or manifest.get("text_exhausted", False):
        return _open(directories)
    points = list(directories)
    batches = harvesting.harvested_points(
        lm, spec, points, batch_contexts, skip_contexts=manifest["contexts_done"]
    )
    what = f"{spec.site} L{spec.layer}" if len(points) == 1 else f"{len(points)} hook points"
    bar = tqdm(
        total=tokens,
        initial=manifest["n_tokens"],
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"harvest {what}",
    )
    pending, pending_tokens = _pending(points), 0
    first_context = manifest["contexts_done"]
    for ids, keep, acts in batches:
        offset = sum(len(t) for t in pending["tokens"])
        for point in points:
            pending[point.name].append(acts[point.name].to(STORAGE_DTYPES[spec.dtype]))
        pending["ctx"].append(
            (torch.arange(len(ids))[:, None] + offset + first_context).expand_as(ids)[keep]
        )
        pending["pos"].append(torch.arange(ids.shape[1]).expand_as(ids)[keep])
        pending["tokens"].append(ids)
        pending_tokens += int(keep.sum())
        bar.update(int(keep.sum()))
        if pending_tokens >= shard_tokens or manifest["n_tokens"] + pending_tokens >= tokens:
            first_context = _flush(directories, manifests, pending, first_context)
            pending, pending_tokens = _pending(points), 0
            if manifest["n_tokens"] >= tokens:
                break
    else:
        if pending_tokens:
            _flush(directories, manifests, pending, first_context)
        for point, each in manifests.items():  # all of the text is in: larger requests reuse
            each["text_exhausted"] = True
            _write_manifest(directories[point], each)
        bar.write(
            f"text source {spec.dataset} ({spec.split}) ran out after {manifest['n_tokens']} tokens"
        )
    bar.close()
    if manifest["n_tokens"] == 0:
        raise CacheError(f"{spec.dataset} gave no tokens to harvest")
    return _open(directories)


def _open(directories: dict[HookPoint, Path]) -> dict[str, ActivationCache]:
    return {point.name: ActivationCache(directory) for point, directory in directories.items()}


def _pending(points: list[HookPoint]) -> dict[str, list]:
    """What a shard collects: contexts, positions and token ids, and each point's activations."""
    return {key: [] for key in ("ctx", "pos", "tokens", *(point.name for point in points))}


def _new_manifest(directory: Path, spec: CacheSpec, d_in: int) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "format": "saelab-activation-cache",
        "spec": asdict(spec),
        "d_in": d_in,
        "n_tokens": 0,
        "contexts_done": 0,
        "shards": [],
        "text_revision": text_revision(spec.dataset),
    }


def _align(directories: dict[HookPoint, Path], manifests: dict[HookPoint, dict]) -> None:
    """Cut every manifest back to the shards all of them hold (they are written in lockstep,
    so only an interruption between two manifests leaves one ahead)."""
    shards = min(len(m["shards"]) for m in manifests.values())
    for point, manifest in manifests.items():
        if len(manifest["shards"]) == shards:
            continue
        kept = manifest["shards"][:shards]
        others = next(m for m in manifests.values() if len(m["shards"]) == shards)
        if [s["n_tokens"] for s in kept] != [s["n_tokens"] for s in others["shards"]]:
            raise CacheError(
                f"the caches of {', '.join(str(d) for d in directories.values())} hold "
                "different tokens: harvest them together into new directories"
            )
        for shard in manifest["shards"][shards:]:
            (directories[point] / shard["file"]).unlink(missing_ok=True)
        manifest.update(
            shards=kept,
            n_tokens=others["n_tokens"],
            contexts_done=others["contexts_done"],
            text_exhausted=others.get("text_exhausted", False),
        )
        _write_manifest(directories[point], manifest)
    counts = {(m["n_tokens"], m["contexts_done"]) for m in manifests.values()}
    if len(counts) > 1:
        raise CacheError(
            f"the caches of {', '.join(str(d) for d in directories.values())} hold different "
            "tokens: harvest them together into new directories"
        )


def _flush(
    directories: dict[HookPoint, Path], manifests: dict[HookPoint, dict], pending: dict, first: int
) -> int:
    """Write one shard per hook point, then the manifests; returns the next shard's first
    context index."""
    tokens = torch.cat(pending["tokens"]).to(torch.int32)
    shared = {
        "context": torch.cat(pending["ctx"]).to(torch.int64),
        "position": torch.cat(pending["pos"]).to(torch.int32),
        "tokens": tokens,
        "first_context": torch.tensor(first, dtype=torch.int64),
    }
    entries = {}
    for point, directory in directories.items():
        acts = torch.cat(pending[point.name]).contiguous()
        name = f"shard-{len(manifests[point]['shards']):05d}.safetensors"
        atomic_write(directory / name, lambda p: save_file({"activations": acts, **shared}, str(p)))
        entries[point] = {
            "file": name,
            "n_tokens": len(acts),
            "n_contexts": len(tokens),
            "sha256": _sha256(directory / name),
        }
    for point, manifest in manifests.items():
        manifest["shards"].append(entries[point])
        manifest["n_tokens"] += entries[point]["n_tokens"]
        manifest["contexts_done"] = first + len(tokens)
        _write_manifest(directories[point], manifest)
    return first + len(tokens)


class ActivationCache:
    """Reads a cache directory: an activation source for `train` and `evaluate`."""

    def __init__(
        self,
        directory: str | Path,
        expect: CacheSpec | None = None,
        shards: list[int] | None = None,
    ):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if expect is not None:
            check_spec(self.manifest, expect, self.directory)
        self.name = str(self.directory)
        self.d_in = int(self.manifest["d_in"])
        all_shards = self.manifest["shards"]
        self.shard_ids = list(range(len(all_shards))) if shards is None else shards
        self.shards = [all_shards[i] for i in self.shard_ids]
        self.n_tokens = sum(s["n_tokens"] for s in self.shards)
        if not self.shards:
            raise CacheError(f"{self.directory} holds no shards (empty cache)")
        for shard in self.shards:
            if not (self.directory / shard["file"]).is_file():
                raise CacheError(f"{self.directory}: shard {shard['file']} is missing")

    @property
    def spec(self) -> CacheSpec:
        return CacheSpec(**self.manifest["spec"])

    def split(self, n_heldout: int) -> tuple[ActivationCache, ActivationCache]:
        """(training part, held-out part): the held-out part is the fewest trailing shards
        that hold at least n_heldout tokens."""
        count, m = 0, 0
        while count < n_heldout and m < len(self.shard_ids):
            m += 1
            count += self.shards[-m]["n_tokens"]
        if m == len(self.shard_ids) or n_heldout <= 0:
            raise CacheError(
                f"{self.directory}: cannot hold out {n_heldout} tokens and keep shards to train on"
            )
        return (
            ActivationCache(self.directory, shards=self.shard_ids[:-m]),
            ActivationCache(self.directory, shards=self.shard_ids[-m:]),
        )

    def load_shard(self, i: int) -> dict[str, torch.Tensor]:
        """Shard i, after checking its checksum and size against the manifest."""
        shard = self.shards[i]
        path = self.directory / shard["file"]
        if _sha256(path) != shard["sha256"]:
            raise CacheError(
                f"{path} does not match its checksum in the manifest (corrupt or truncated)"
            )
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CacheError(f"{path} is unreadable: {err}") from None
        acts = tensors.get("activations")
        if acts is None or tuple(acts.shape) != (shard["n_tokens"], self.d_in):
            raise CacheError(
                f"{path}: activations do not have the manifest's shape ({shard['n_tokens']}, "
                f"{self.d_in})"
            )
        return tensors

    def _activations(self, i: int) -> torch.Tensor:
        return self.load_shard(i)["activations"].float()

    def chunks(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Every activation once, in storage order."""
        return rebatch((self._activations(i) for i in range(len(self.shards))), batch_size)

    def _shuffled_pieces(self, seed: int, skip_tokens: int) -> Iterator[torch.Tensor]:
        epoch, to_skip = divmod(skip_tokens, self.n_tokens)
        while True:
            epoch_seed = seed * 1_000_003 + epoch
            order = torch.randperm(
                len(self.shards), generator=torch.Generator().manual_seed(epoch_seed)
            ).tolist()
            for w in range(0, len(order), WINDOW):
                window = order[w : w + WINDOW]
                size = sum(self.shards[i]["n_tokens"] for i in window)
                if to_skip >= size:
                    to_skip -= size
                    continue
                rows = torch.cat([self._activations(i) for i in window])
                gen = torch.Generator().manual_seed(epoch_seed * 1_000_033 + w + 1)
                rows = rows[torch.randperm(size, generator=gen)]
                yield rows[to_skip:]
                to_skip = 0
            epoch += 1

    def batches(
        self, batch_size: int, seed: int, skip_tokens: int = 0, part: tuple[int, int] = (0, 1)
    ) -> Iterator[torch.Tensor]:
        """Endless shuffled batches; the stream from position p is the same on every call.

        part=(r, n): data-parallel rank r of n reads only shards r, r + n, r + 2n, ... (the
        shuffled stream of that sub-cache), so no shard is read by two ranks; skip_tokens counts
        this rank's rows. The global batch is then the ranks' batches concatenated."""
        r, n = part
        if n > 1:
            if len(self.shard_ids) < n:
                raise CacheError(
                    f"{self.directory}: {len(self.shard_ids)} shards cannot be split over {n} "
                    "processes; rebuild the cache with a smaller --shard-tokens"
                )
            return ActivationCache(self.directory, shards=self.shard_ids[r::n]).batches(
                batch_size, seed, skip_tokens
            )
        return rebatch(self._shuffled_pieces(seed, skip_tokens), batch_size)
