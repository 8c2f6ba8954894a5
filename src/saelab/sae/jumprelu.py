"""JumpReLU SAE (Rajamanoharan et al. 2024): f = pre * H(pre - theta), theta = exp(log_theta).

Straight-through estimators with the rectangle kernel K(u) = 1[|u| < 1/2] and bandwidth eps:
  d f / d theta  = -(theta / eps) K((pre - theta) / eps) * grad_f      (d f / d pre = H)
  d L0 / d theta = -(1 / eps)     K((pre - theta) / eps) * grad_L0     (d L0 / d pre = 0)
Loss: ||x - x_hat||^2 + d_in * lam * L0. lam is in the units of the BatchTopK paper's code
(reconstruction error as a mean over elements, lam 0.004 .. 0.0008 for GPT-2); saelab sums the
error over d_in, so the penalty carries the factor d_in to mean the same trade-off.
With a fixed l0_coefficient this is the paper's method. With a target L0 (cfg.k, saelab's
controller, a variant), lam is a multiplier of the constraint L0 <= k, updated by projected dual
ascent after each training step (after_step): lam = max(0, lam + rate / d_in * (L0 / k - 1)), so
the L0 term is never a reward. A JumpReLU at lam = 0 drifts below a target of 32 by itself on
the default model (bench/RESULTS.md, issue 25), which lam >= 0 cannot undo, so after each step
every log-threshold also moves by threshold_rate * (L0 / k - 1): a global shift of the
thresholds, an integral controller on the L0 itself, as BatchTopK's global threshold is.

Units: pre-activations are in the SAE's scaled units, where a token has norm ~sqrt(d_in) (the
per_token and expected_norm scalings), as in SAELens; its defaults there are bandwidth 0.05 and
initial threshold 0.01. The JumpReLU paper's 0.001 was for inputs of unit norm
(bench/RESULTS.md, issue 13).
"""

import math
from dataclasses import dataclass

import torch

from ..checks import check_number
from ..errors import ConfigError
from .architecture import SAELENS_TENSORS, Architecture, Settings, pick, setting
from .topk import DEFAULT_K, check_k

INITIAL_TARGET_LAMBDA = 0.0


@dataclass(kw_only=True)
class JumpReLUSettings(Settings):
    k: int | None = setting(
        None,
        "the target L0 (a Lagrange multiplier adapts the penalty)",
        label="k{}",
        cli_default=DEFAULT_K,
    )
    l0_coefficient: float | None = setting(
        None,
        "a fixed L0 penalty weight instead of the --k target, in the BatchTopK paper's units "
        "(error as a mean over elements; the paper used 0.004-0.0008 for GPT-2)",
        label="l0c-{:g}",
    )
    jumprelu_bandwidth: float = setting(
        0.05,
        "bandwidth eps of the straight-through estimators, in the "
        "scaled units (token norm ~sqrt(d_in))",
        label="bw{:g}",
    )
    jumprelu_init_threshold: float = setting(
        0.001, "initial threshold (a floor under the data-driven initialisation with a target L0)"
    )
    jumprelu_target_rate: float = setting(
        0.05,
        "with a target L0: the multiplier's step, "
        "lam = max(0, lam + rate / d_in * (L0 / k - 1)) after each training step",
    )
    jumprelu_threshold_rate: float = setting(
        0.03,
        "with a target L0: every log-threshold moves by "
        "rate * (L0 / k - 1) after each training step (0: off)",
    )

    def check(self, d_sae: int) -> None:
        if (self.k is None) == (self.l0_coefficient is None):
            raise ConfigError(
                "jumprelu needs exactly one of k (a target L0) or l0_coefficient (a fixed L0 "
                "penalty)"
            )
        if self.k is not None:
            check_k(self.k, d_sae)
        else:
            check_number("l0_coefficient", self.l0_coefficient)
        check_number("jumprelu_bandwidth", self.jumprelu_bandwidth, strict=True)
        check_number("jumprelu_init_threshold", self.jumprelu_init_threshold, strict=True)
        check_number("jumprelu_target_rate", self.jumprelu_target_rate)
        check_number("jumprelu_threshold_rate", self.jumprelu_threshold_rate)


def _window_sum(pre, threshold, eps, grad):
    """sum over tokens of K((pre - theta) / eps) * grad per latent, without the 1 / eps: the
    gradient summed over the entries inside the rectangle window |pre - theta| < eps / 2 [h]."""
    h = threshold.shape[-1]
    window = (pre - threshold).abs_() < eps / 2
    return (grad * window).reshape(-1, h).sum(0)


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
        return grad_pre, -(threshold / ctx.eps) * _window_sum(pre, threshold, ctx.eps, grad), None


class Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, eps):
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        return (
            None,
            -_window_sum(pre, threshold, ctx.eps, grad) / ctx.eps,
            None,
        )  # d step / d pre = 0


class JumpReLUArchitecture(Architecture):
    name = "jumprelu"
    settings = JumpReLUSettings
    knobs = ("l0_coefficient", "k")
    saelens_names = ("jumprelu",)
    dictionary_learning_class, dictionary_learning_trainer = (
        "JumpReluAutoEncoder",
        "JumpReluTrainer",
    )
    optional_in_file = ("l0_lambda",)
    latent_parallel = True

    def add_state(self, sae):
        cfg = sae.cfg
        sae.log_threshold = torch.nn.Parameter(
            torch.full((sae.n_latents,), math.log(cfg.jumprelu_init_threshold))
        )
        lam = INITIAL_TARGET_LAMBDA if cfg.l0_coefficient is None else cfg.l0_coefficient
        sae.register_buffer("l0_lambda", torch.tensor(float(lam)))

    def latent_dims(self, sae):
        return {**super().latent_dims(sae), "log_threshold": 0}

    def to_file(self, tensors):
        """The thresholds themselves, as SAELens stores them."""
        tensors = dict(tensors)
        tensors["threshold"] = tensors.pop("log_threshold").exp()
        return tensors

    def from_file(self, tensors):
        """A threshold at or below 0 (dictionary_learning's trainer writes them; SAELens reads
        them) gates nothing beyond the ReLU: SAELens's relu(pre) * (pre > threshold) is then
        relu(pre) = pre * (pre > 0), so it loads as 0 exactly (log-threshold -inf)."""
        tensors = dict(tensors)
        tensors["log_threshold"] = tensors.pop("threshold").clamp_min(0).log()
        return tensors

    def activate(self, sae, pre, x):
        return JumpReLU.apply(pre, sae.log_threshold.exp(), sae.cfg.jumprelu_bandwidth)

    def penalty(self, sae, f, pre, x):
        l0 = Step.apply(pre, sae.log_threshold.exp(), sae.cfg.jumprelu_bandwidth).sum(-1).mean()
        return {"l0": sae.cfg.d_in * sae.l0_lambda * l0}

    @torch.no_grad()
    def after_step(self, sae, out):
        """With a target L0 k, on the batch L0 over all ranks and error e = L0 / k - 1: projected
        dual ascent lam = max(0, lam + target_rate / d_in * e), and log theta += threshold_rate *
        e for every latent.
        Outside the loss, so the loss is a pure function."""
        cfg = sae.cfg
        if cfg.k is not None:
            error = sae.collectives.reduce(out.l0.detach().clone(), "mean") / cfg.k - 1
            sae.l0_lambda.add_(cfg.jumprelu_target_rate / cfg.d_in * error).clamp_(min=0)
            sae.log_threshold.add_(cfg.jumprelu_threshold_rate * error)

    def record(self, sae):
        return {"l0_lambda": sae.l0_lambda.item()}

    def evaluation(self, sae, results):
        """The L0 multiplier the SAE ended with (the fixed penalty weight without a target)."""
        return {"l0_lambda": sae.l0_lambda.item()}

    @torch.no_grad()
    def initialize(self, sae, x_scaled):
        """With a target L0 k, each latent's threshold at its (1 - k/d_sae) quantile of the
        first batch's pre-activations, so training starts near L0 = k."""
        cfg = sae.cfg
        if cfg.k is None:
            return
        pre = sae.pre_activation(x_scaled)
        rank = max(1, min(len(x_scaled), round(len(x_scaled) * (1 - cfg.k / cfg.d_sae))))
        quantile = pre.kthvalue(rank, dim=0).values
        sae.log_threshold.copy_(quantile.clamp_min(cfg.jumprelu_init_threshold).log())

    def to_saelens(self, sae, tensors):
        return {"architecture": "jumprelu"}, pick(tensors, *SAELENS_TENSORS, "threshold")

    def from_saelens(self, cfg, tensors):
        return {"l0_coefficient": 0.0}, pick(tensors, *SAELENS_TENSORS, "threshold")

    def to_dictionary_learning(self, cfg, tensors):
        """JumpReluAutoEncoder: saelab's names, but its encoder does not subtract b_dec, so
        b_enc' = b_enc - b_dec @ W_enc (exact)."""
        out = pick(tensors, *SAELENS_TENSORS, "threshold")
        out["b_enc"] = tensors["b_enc"] - tensors["b_dec"] @ tensors["W_enc"]
        return {}, out

    def from_dictionary_learning(self, trainer, tensors):
        out = pick(tensors, *SAELENS_TENSORS, "threshold")
        out["b_enc"] = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]
        return {"l0_coefficient": 0.0}, out
