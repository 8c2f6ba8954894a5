"""The sparse training path of the top-k family: codes as (rows, cols, values), never dense.

Selection happens on pre = (x - b_dec) @ W_enc + b_enc computed without autograd; the
selected entries go through `SelectedPre`, whose backward touches only them (g: the gradient
of each selected entry):
  grad_b_enc[j]    = sum of g over selected (i, j)
  grad_W_enc[:, j] = sum over selected (i, j) of g_ij (x_i - b_dec)     (a sparse [h, n] @ [n, d])
  grad_b_dec       = -W_enc @ grad_b_enc                                 (one matrix-vector product)
  grad_x[i]        = sum over selected (i, j) of g_ij W_enc[:, j]        (an embedding bag; only
                     when the input itself requires a gradient, which training inputs do not)
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
    """pre[rows, cols] for pre = (x - b_dec) @ W_enc + b_enc, with a backward over the selection only."""

    @staticmethod
    def forward(ctx, pre, rows, cols, x, b_dec, W_enc, b_enc):
        ctx.save_for_backward(rows, cols, (x - b_dec).detach(), W_enc)
        ctx.shape = pre.shape
        return pre[rows, cols]

    @staticmethod
    def backward(ctx, grad):
        rows, cols, x_in, W_enc = ctx.saved_tensors
        n, h = ctx.shape
        grad_b_enc = grad.new_zeros(h).index_add_(0, cols, grad)
        selection = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (h, n), check_invariants=False)
        grad_W_enc = torch.sparse.mm(selection, x_in).T
        grad_x = grad_b_dec = None
        if ctx.needs_input_grad[3]:
            counts = torch.bincount(rows, minlength=n)
            grad_x = F.embedding_bag(cols, W_enc.detach().T.contiguous(), torch.cumsum(counts, 0) - counts,
                                     per_sample_weights=grad, mode="sum")
        if ctx.needs_input_grad[4]:
            grad_b_dec = -(W_enc.detach() @ grad_b_enc)
        return None, None, None, grad_x, grad_b_dec, grad_W_enc, grad_b_enc


def select(pre: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, x, b_dec, W_enc, b_enc) -> SparseCode:
    """The code relu(pre[rows, cols]) of pre = (x - b_dec) @ W_enc + b_enc, differentiable into
    b_dec, W_enc, b_enc (and x, if it requires a gradient)."""
    values = torch.relu(SelectedPre.apply(pre, rows, cols, x, b_dec, W_enc, b_enc))
    return SparseCode(rows, cols, values, pre.shape[0])


def decode(code: SparseCode, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j f_ij W_dec[j] for each row i: [n, d_in] (no bias)."""
    return F.embedding_bag(code.cols, W_dec, code.offsets, per_sample_weights=code.values, mode="sum")

