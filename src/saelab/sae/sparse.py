"""The sparse training path of the top-k family: codes as (rows, cols, values), never dense.

Selection happens on pre = x_in @ W_enc + b_enc computed without autograd; the selected
entries go through `SelectedPre`, whose backward touches only them:
  grad_b_enc[j]   = sum of grad over selected (i, j)
  grad_W_enc[:, j] = sum over selected (i, j) of grad_ij x_in[i]     (a sparse [h, n] @ [n, d])
  grad_x_in[i]    = sum over selected (i, j) of grad_ij W_enc[:, j]  (an embedding bag)
and decoding is an embedding bag over W_dec rows, whose backward is sparse too. Cost per
token: the dense encoder product (2 d h FLOPs, which exact top-k cannot avoid) plus O(k d).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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

    def to_dense(self, h: int) -> torch.Tensor:
        dense = self.values.new_zeros(self.n, h)
        return dense.index_put((self.rows, self.cols), self.values)


class SelectedPre(torch.autograd.Function):
    """pre[rows, cols] for pre = x_in @ W_enc + b_enc, with a backward over the selection only."""

    @staticmethod
    def forward(ctx, pre, rows, cols, x_in, W_enc, b_enc):
        ctx.save_for_backward(rows, cols, x_in, W_enc)
        ctx.shape = pre.shape
        return pre[rows, cols]

    @staticmethod
    def backward(ctx, grad):
        rows, cols, x_in, W_enc = ctx.saved_tensors
        n, h = ctx.shape
        grad_b_enc = grad.new_zeros(h).index_add_(0, cols, grad)
        selection = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (h, n), check_invariants=False)
        grad_W_enc = torch.sparse.mm(selection, x_in.detach()).T
        grad_x_in = None
        if ctx.needs_input_grad[3]:
            counts = torch.bincount(rows, minlength=n)
            grad_x_in = F.embedding_bag(cols, W_enc.detach().T.contiguous(), torch.cumsum(counts, 0) - counts,
                                        per_sample_weights=grad, mode="sum")
        return None, None, None, grad_x_in, grad_W_enc, grad_b_enc


def select(pre: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, x_in, W_enc, b_enc) -> SparseCode:
    """The code relu(pre[rows, cols]), differentiable into x_in, W_enc and b_enc."""
    values = torch.relu(SelectedPre.apply(pre, rows, cols, x_in, W_enc, b_enc))
    return SparseCode(rows, cols, values, pre.shape[0])


def decode(code: SparseCode, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j f_ij W_dec[j] for each row i: [n, d_in] (no bias)."""
    return F.embedding_bag(code.cols, W_dec, code.offsets, per_sample_weights=code.values, mode="sum")

