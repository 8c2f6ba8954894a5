"""The sparse training path of the top-k family: codes as (rows, cols, values), never dense.

The pre-activation pre = (x - b_dec) @ W_enc + b_enc [n, h] is computed without autograd one
row tile at a time (`RowTiles`, `encoder_tiles`): each tile's candidates are kept and the tile
is dropped, so the whole [n, h] never exists (288 MiB at n 4096, h 18432; a tile is 64 MiB).
The selected entries go through `SelectedPre`, whose backward touches only them (g: the
gradient of each selected entry):
  grad_b_enc[j]    = sum of g over selected (i, j)
  grad_W_enc[:, j] = sum over selected (i, j) of g_ij (x_i - b_dec)     ([d, n] @ sparse [n, h])
  grad_b_dec       = -W_enc @ grad_b_enc                                 (one matrix-vector product)
  grad_x[i]        = sum over selected (i, j) of g_ij W_enc[:, j]        (an embedding bag; only
                     when the input itself requires a gradient, which training inputs do not)
and decoding is an embedding bag over W_dec rows, whose backward is sparse too. Cost per
token: the dense encoder product (2 d h FLOPs, which exact top-k cannot avoid) plus O(k d).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

TILE_ENTRIES = 2**24  # pre-activation entries per row tile: 64 MiB in float32 (bench/RESULTS.md)


class RowTiles:
    """A matrix [n, h] that exists one row tile at a time: compute(index, out) returns its rows
    `index` (a slice or an index tensor), written into `out` when given. Iterating yields
    (rows, tile) with rows a slice and tile [<= tile_rows, h]; every tile is written into the
    first one's memory, so a tile is valid until the next is made, and one tile's memory is all
    the iteration holds. `rows(index)` recomputes any rows. The first full pass also keeps, for
    every row, the `watch_k` largest entries among the columns `watch` (AuxK's dead latents):
    `watched` = (values, cols), each [n, watch_k]."""

    def __init__(
        self,
        n: int,
        h: int,
        compute: Callable,
        tile_rows: int | None = None,
        watch: torch.Tensor | None = None,
        watch_k: int = 0,
    ):
        self.shape = (n, h)
        self.compute = compute
        self.tile_rows = tile_rows or max(1, TILE_ENTRIES // h)
        self.watch, self.watch_k = watch, watch_k
        self.watched = None

    @classmethod
    def of(cls, matrix: torch.Tensor, tile_rows: int | None = None, **watch) -> RowTiles:
        """Tiles of a matrix that exists already (tests, benchmarks): views, never written."""
        return cls(*matrix.shape, lambda index, out=None: matrix[index], tile_rows, **watch)

    def __iter__(self):
        n = self.shape[0]
        watching = self.watch_k > 0 and self.watched is None
        found, memory = [], None
        for start in range(0, n, self.tile_rows):
            rows = slice(start, min(start + self.tile_rows, n))
            tile = self.compute(rows, None if memory is None else memory[: rows.stop - start])
            memory = tile if memory is None else memory
            if watching:
                top = tile[:, self.watch].topk(self.watch_k, dim=1, sorted=False)
                found.append((top.values, self.watch[top.indices]))
            yield rows, tile
        if watching:
            self.watched = tuple(torch.cat(part) for part in zip(*found))

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.compute(index, None)

    def per_row(self, pick: Callable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, cols, values), row-major, of the entries that pick(tile, rows) chooses in each
        tile: a rule that decides each row on its own (top-k, top-AFA, a threshold). pick
        returns (rows within the tile, cols, values), row-major."""
        parts = []
        for rows, tile in self:
            local, cols, values = pick(tile, rows)
            parts.append((local + rows.start, cols, values))
        return tuple(torch.cat(part) for part in zip(*parts))


def masked_entries(
    tile: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, values), row-major, of the entries of tile [t, h] where mask [t, h] is True."""
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols, tile[rows, cols]


def encoder_tiles(
    sae, x: torch.Tensor, watch: torch.Tensor | None = None, watch_k: int = 0
) -> RowTiles:
    """The pre-activations of the scaled input x [n, d] as RowTiles, without autograd, in
    float32 (under a bfloat16 autocast only the matrix product is bfloat16); x - b_dec, or x
    itself for a transcoder (sae.input_shift)."""
    x_in = (x - sae.input_shift).detach()
    W_enc, b_enc = sae.W_enc.detach(), sae.encoder_bias.detach()

    def compute(index, out=None):
        with torch.no_grad():
            return torch.addmm(b_enc, x_in[index], W_enc, out=out).float()

    return RowTiles(len(x), W_enc.shape[1], compute, watch=watch, watch_k=watch_k)


@dataclass
class SparseCode:
    """Active entries of a code [n, h], row-major: rows, cols [m] (int64), values [m]."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    n: int

    @property
    def offsets(self) -> torch.Tensor:
        """Start of each row's entries in rows/cols/values [n]."""
        counts = torch.bincount(self.rows, minlength=self.n)
        return torch.cumsum(counts, 0) - counts

    def row_norms(self) -> torch.Tensor:
        """||f_i||_2 for each row [n]."""
        return self.values.new_zeros(self.n).index_add(0, self.rows, self.values.square()).sqrt()


class SelectedPre(torch.autograd.Function):
    """The entries pre[rows, cols] (given: `values`) of pre = (x - b_dec) @ W_enc + b_enc [n, h],
    with a backward over the selection only."""

    @staticmethod
    def forward(ctx, values, rows, cols, x, b_dec, W_enc, b_enc, shape):
        ctx.save_for_backward(rows, cols, (x - b_dec).detach(), W_enc)
        ctx.shape = shape
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        rows, cols, x_in, W_enc = ctx.saved_tensors
        n, h = ctx.shape
        grad_b_enc = grad.new_zeros(h).index_add_(0, cols, grad)
        counts = torch.bincount(rows, minlength=n)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            selection = torch.sparse_csr_tensor(
                torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
                cols,
                grad,
                (n, h),
                check_invariants=False,
            )
            grad_W_enc = (
                x_in.T @ selection
            )  # [d, h] in W_enc's layout: no copy into the parameter's
        grad_x = grad_b_dec = None
        if ctx.needs_input_grad[3]:
            grad_x = F.embedding_bag(
                cols,
                W_enc.detach().T.contiguous(),
                torch.cumsum(counts, 0) - counts,
                per_sample_weights=grad,
                mode="sum",
            )
        if ctx.needs_input_grad[4]:
            grad_b_dec = -(W_enc.detach() @ grad_b_enc)
        return None, None, None, grad_x, grad_b_dec, grad_W_enc, grad_b_enc, None


def select(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, x, b_dec, W_enc, b_enc
) -> SparseCode:
    """The code relu(pre[rows, cols]) of pre = (x - b_dec) @ W_enc + b_enc [n, h], from the
    selected entries' values (computed without autograd), differentiable into b_dec, W_enc,
    b_enc (and x, if it requires a gradient)."""
    shape = (len(x), W_enc.shape[1])
    values = torch.relu(SelectedPre.apply(values, rows, cols, x, b_dec, W_enc, b_enc, shape))
    return SparseCode(rows, cols, values, len(x))


def decode(code: SparseCode, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j f_ij W_dec[j] for each row i: [n, d_in] (no bias)."""
    return F.embedding_bag(
        code.cols, W_dec, code.offsets, per_sample_weights=code.values, mode="sum"
    )
