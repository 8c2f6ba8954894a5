"""JumpReLU SAE (Rajamanoharan et al. 2024): f = pre * H(pre - theta), theta = exp(log_theta).

Straight-through estimators with the rectangle kernel K(u) = 1[|u| < 1/2] and bandwidth eps:
  d f / d theta  = -(theta / eps) K((pre - theta) / eps) * grad_f      (d f / d pre = H)
  d L0 / d theta = -(1 / eps)     K((pre - theta) / eps) * grad_L0     (d L0 / d pre = 0)
Loss: ||x - x_hat||^2 + d_in * lam * L0. lam is in the units of the BatchTopK paper's code
(reconstruction error as a mean over elements, lam 0.004 .. 0.0008 for GPT-2); saelab sums the
error over d_in, so the penalty carries the factor d_in to mean the same trade-off.
With a target L0 (cfg.k), lam is a Lagrange multiplier of the constraint L0 = k, updated by dual
ascent after each training step (update_multiplier). It may turn negative, which pushes
thresholds down when L0 is below the target.
"""

import torch

from ..train.distributed import all_reduce

TARGET_RATE = 0.05  # multiplier step in units of the summed error: lam moves by TARGET_RATE / d_in
INITIAL_TARGET_LAMBDA = 0.0


def _kernel(pre, threshold, eps):
    """K((pre - theta) / eps) / eps: the rectangle kernel scaled by the bandwidth."""
    return ((pre - threshold).abs() < eps / 2).to(pre.dtype) / eps


class JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, eps):
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold)
        grad_threshold = -(threshold * _kernel(pre, threshold, ctx.eps) * grad)
        return grad_pre, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


class Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, eps):
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(_kernel(pre, threshold, ctx.eps) * grad)
        return torch.zeros_like(pre), grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


def activate(sae, pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return JumpReLU.apply(pre, sae.log_threshold.exp(), sae.cfg.jumprelu_bandwidth)


def penalty(sae, f, pre, x) -> dict[str, torch.Tensor]:
    l0 = Step.apply(pre, sae.log_threshold.exp(), sae.cfg.jumprelu_bandwidth).sum(-1).mean()
    return {"l0": sae.cfg.d_in * sae.l0_lambda * l0}


@torch.no_grad()
def update_multiplier(sae, l0: torch.Tensor) -> None:
    """Dual ascent after a training step with target L0 k, on the batch L0 over all ranks:
    lam += rate / d_in * (L0 / k - 1). Outside the loss, so the loss is a pure function (torch.compile)."""
    if sae.cfg.k is not None:
        l0 = all_reduce(l0.detach().clone(), "mean")
        sae.l0_lambda.add_(TARGET_RATE / sae.cfg.d_in * (l0 / sae.cfg.k - 1))
