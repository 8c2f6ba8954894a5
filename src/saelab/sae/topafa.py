"""Top-AFA SAE (Lee et al. 2025): k chosen per sample by matching the code norm to the input.

a = relu(pre); target t = ||x - b_dec||; scores s_i = (a_i ||W_dec,i||)^2 sorted descending with
cumulative sums c_j; k* = argmin_j |sqrt(c_j) - t| + 1; keep those k* latents.
Loss term: d_in * lam_afa * (||f||_2 - t)^2, averaged over tokens, with the same target t as
the selection (held fixed: no gradient through b_dec). saelab's reconstruction term is summed
over d_in; the authors' (SewoongLee/top-afa-sae) is a mean over elements, and their lam_afa
(1/128 .. 1/16) is in those units. The factor d_in keeps the ratio AFA term / reconstruction
term equal to the reference's for the same lam_afa.

The reference's loss targets ||x|| instead of t (the two agree while b_dec = 0, where the
reference starts; saelab starts b_dec at the geometric median). f @ W_dec reconstructs
x - b_dec, so ||x - b_dec|| is what the quasi-orthogonality bound says ||f|| is close to; the
runs behind this choice are in bench/RESULTS.md ("top-AFA's target").
"""

from dataclasses import dataclass

import torch

from ..checks import check_number
from .architecture import Architecture, setting
from .auxk import AuxKSettings
from .sparse import masked_entries

PREFIX = 512


@dataclass(kw_only=True)
class TopAFASettings(AuxKSettings):
    afa_coefficient: float = setting(
        1 / 32,
        "AFA loss weight in the top-AFA paper's units (error as a "
        "mean over elements; the paper used 1/128-1/16)",
        label="afa-{:g}",
    )

    def check(self, d_sae: int) -> None:
        super().check(d_sae)
        check_number("afa_coefficient", self.afa_coefficient)


def afa_target(sae, x: torch.Tensor) -> torch.Tensor:
    """t = ||x - b_dec|| [n]: the norm the selection sizes the code to and the AFA loss pulls
    ||f|| towards (one function, so the two cannot drift apart again); no gradient."""
    return (x - sae.b_dec).norm(dim=-1).detach()


def chosen_k(sae, a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k* per sample [n] and the latents by descending score [n, >= max k*].

    The gap |sqrt(c_j) - t| falls until sqrt(c_j) crosses t and rises after, so a prefix of
    the PREFIX best scores suffices for a row whose prefix crosses t or ends in zeros; only if
    some row needs more are all h scores sorted (the reference method's O(h log h))."""
    target = afa_target(sae, x)[:, None]
    scores = (a * sae.W_dec.norm(dim=1)).square()
    if PREFIX < scores.shape[-1]:
        top, order = scores.topk(PREFIX, dim=-1, sorted=True)
        cumulative = top.cumsum(-1).sqrt()
        if ((cumulative[:, -1:] >= target) | (top[:, -1:] == 0)).all():
            return (cumulative - target).abs().argmin(-1) + 1, order
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    return (sorted_scores.cumsum(-1).sqrt() - target).abs().argmin(-1) + 1, order


@torch.no_grad()
def selection(sae, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Boolean mask [n, h] of each row's k* highest-scoring latents."""
    k_star, order = chosen_k(sae, a, x)
    ranks = torch.arange(order.shape[-1], device=a.device)
    return torch.zeros_like(a, dtype=torch.bool).scatter(-1, order, ranks < k_star[:, None])


class TopAFA(Architecture):
    name = "topafa"
    settings = TopAFASettings
    knobs = ("afa_coefficient",)
    uses_auxk = True

    def activate(self, sae, pre, x):
        a = torch.relu(pre)
        return a * selection(sae, a.detach(), x)

    def select(self, sae, pre, x):
        """(rows, cols, values) of the kept latents with a positive value, for the sparse path
        (pre: RowTiles [n, h])."""

        def pick(tile, rows):
            a = torch.relu(tile)
            return masked_entries(a, selection(sae, a, x[rows]) & (a > 0))

        return pre.per_row(pick)

    def penalty(self, sae, f, pre, x):
        """f: dense codes or a SparseCode."""
        afa = (f.row_norms() if hasattr(f, "row_norms") else f.norm(dim=-1)) - afa_target(sae, x)
        return {"afa": sae.cfg.d_in * sae.cfg.afa_coefficient * afa.square().mean()}
