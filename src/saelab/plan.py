"""Memory per rank before a launch (`saelab plan`): what one rank holds while it trains a
dictionary of d_sae latents on d_in-wide activations, global batch B, on G ranks of which L
share one dictionary (latent parallelism; L = 1 is DDP) and D = G / L read different rows.

With h = d_sae / L latents and n = B / D rows per rank, in float32 (4 bytes):
  parameters   P = 2 d_in h + 2 h + d_in          W_enc, W_dec, b_enc, thresholds, b_dec
  gradients    P                                   one per parameter
  adam         2 P                                 Adam's two moments
  ddp_buckets  P when D > 1                        DDP's gradient buckets (a second copy)
  batch        4 n d_in                            x, x - b_dec (kept for backward), x_hat, error
  codes        3 n k (x 12 bytes: two int64 indices and a value, as SparseCode)
  selection    the encoder's row tile (sae/sparse.TILE_ENTRIES floats) and the candidates:
               n * min(h, 4k) per-row (value, index) pairs, BatchTopK's offers of all G ranks
               (G n k values) gathered on every rank
The sum is a floor: allocator caches and the framework's own buffers (a CUDA context, ~0.5 GB)
come on top. bench/latent_parallel.py checks it against measured peaks (bench/RESULTS.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError
from .sae.sparse import TILE_ENTRIES

FLOAT, INDEX = 4, 8
UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank of each part of a training step (see the module docstring)."""

    latent_parallel: int
    parameters: int
    gradients: int
    adam: int
    ddp_buckets: int
    batch: int
    codes: int
    selection: int

    @property
    def total(self) -> int:
        return (
            self.parameters
            + self.gradients
            + self.adam
            + self.ddp_buckets
            + self.batch
            + self.codes
            + self.selection
        )

    @property
    def parts(self) -> dict[str, int]:
        return {
            "parameters": self.parameters,
            "gradients": self.gradients,
            "adam": self.adam,
            "ddp_buckets": self.ddp_buckets,
            "batch": self.batch,
            "codes": self.codes,
            "selection": self.selection,
        }


def memory_plan(
    d_in: int, d_sae: int, batch_size: int, gpus: int, latent_parallel: int = 1, k: int = 64
) -> MemoryPlan:
    """Per-rank bytes for this split (latent_parallel ranks per dictionary)."""
    for name, value in (("d_in", d_in), ("d_sae", d_sae), ("batch_size", batch_size)):
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if gpus < 1 or gpus % latent_parallel:
        raise UsageError(f"latent_parallel={latent_parallel} does not divide --gpus {gpus}")
    data_ranks = gpus // latent_parallel
    if d_sae % latent_parallel or batch_size % data_ranks:
        raise UsageError(
            f"d_sae={d_sae} must divide by {latent_parallel} latent ranks and the batch "
            f"{batch_size} by {data_ranks} data ranks"
        )
    h, n = d_sae // latent_parallel, batch_size // data_ranks
    params = FLOAT * (2 * d_in * h + 2 * h + d_in)
    candidates = n * min(h, 4 * k) * (FLOAT + INDEX) + FLOAT * gpus * n * k
    return MemoryPlan(
        latent_parallel,
        parameters=params,
        gradients=params,
        adam=2 * params,
        ddp_buckets=params if data_ranks > 1 else 0,
        batch=4 * FLOAT * n * d_in,
        codes=3 * n * k * (2 * INDEX + FLOAT),
        selection=FLOAT * min(TILE_ENTRIES, n * h) + candidates,
    )


def splits(gpus: int, d_sae: int) -> list[int]:
    """The latent splits worth printing: 1 (DDP) and every divisor of gpus that divides d_sae."""
    return [s for s in range(1, gpus + 1) if gpus % s == 0 and d_sae % s == 0]


def parse_size(text: str) -> int:
    """'80GB', '80 GiB', '1.5TB', '512MB' (binary units) or a number of bytes -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise UsageError(f"--gpu-memory: cannot read {text!r} as a size (e.g. 80GB, 141GB)")
    number, prefix = float(match.group(1)), match.group(2).upper()
    return int(number * UNITS[prefix + "B" if prefix else ""])


def table(
    d_in: int,
    d_sae: int,
    batch_size: int,
    gpus: int,
    k: int = 64,
    gpu_memory: int | None = None,
) -> str:
    """The plan of every split, one row each, in GB per rank."""
    parts = list(memory_plan(d_in, d_sae, batch_size, gpus, 1, k).parts)
    header = ["split", *parts, "total", *(["fits"] if gpu_memory else [])]
    rows = [header]
    for split in splits(gpus, d_sae):
        plan = memory_plan(d_in, d_sae, batch_size, gpus, split, k)
        name = "DDP" if split == 1 else f"latent {split} x data {gpus // split}"
        row = [
            name,
            *(f"{v / 2**30:.2f}" for v in plan.parts.values()),
            f"{plan.total / 2**30:.2f}",
        ]
        if gpu_memory:
            row.append("yes" if plan.total <= gpu_memory else "no")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))
        )
        for r in rows
    )
