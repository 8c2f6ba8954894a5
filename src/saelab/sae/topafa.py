"""Top-AFA SAE (Lee et al. 2025): k chosen per sample by matching the code norm to the input.

a = relu(pre); target t = ||x - b_dec||; scores s_i = (a_i ||W_dec,i||)^2 sorted descending with
cumulative sums c_j (the last set to 1e8, as the authors' code does: k* < d_sae);
k* = argmin_j |sqrt(c_j) - t| + 1; keep those k* latents. Two recipes (`topafa_recipe`):

"authors": the authors' code as they ran it (SewoongLee/top-afa-sae@1c7a683, training/):
  - sae.py:16-29: b_dec = 0, W_enc = kaiming_uniform_ of an empty [d_in, d_sae] (bound
    sqrt(6 / d_sae)), W_dec = W_enc^T with unit rows; b_enc exists but TopAFASAE never adds it
    (sae.py:211), so here it stays 0 and untrained;
  - sae.py:36-43: input_unit_norm, saelab's `per_token` scaling;
  - sae.py:211-231: the selection above, on x - b_dec, no b_enc;
  - sae.py:244-248: loss = mean over elements of (x_hat - x)^2
    + afa_coeff * mean_t (||f_t|| - ||x_t||)^2 + aux, the AFA target ||x|| (not ||x - b_dec||);
  - sae.py:266-284: AuxK as Gao et al. (top_k_aux 512) but its residual x - x_hat is not
    detached, weighted aux_penalty 1/32 on a mean over elements;
  - config.py:8-35: Adam lr 3e-4 constant (no warmup, no decay), betas (0.9, 0.99),
    max_grad_norm 1e5, n_batches_to_dead 5;
  - training.py:24-27: backward, clip, project W_dec's gradient and renormalise W_dec, then
    the Adam step (rows are unit before the step, not after it).
  One difference is left: the authors count a latent's idle batches before the AuxK term of
  the same batch, so their dead set includes this batch; saelab's dead set is the 5 batches
  before it.
"saelab" (a variant): b_dec at the geometric median and a trained b_enc as saelab's other SAEs,
  W_enc = W_dec^T, saelab's learning rate and schedule, and the AFA target t = ||x - b_dec||,
  the target of the selection (f @ W_dec reconstructs x - b_dec). Its loss in saelab's units:
  ||x - x_hat||^2 summed over d_in + d_in * afa_coeff * mean_t (||f_t|| - t_t)^2 (the factor
  d_in keeps the AFA/reconstruction ratio of the authors' units).

In both, afa_coefficient is in the paper's units (error as a mean over elements: 1/128..1/16).
||f|| is the code's norm without b_dec; the ZF plot's ||f~|| adds b_dec (eval/afa.py).
"""

from dataclasses import dataclass

import torch

from ..checks import check_choice, check_number
from .architecture import Architecture, setting
from .auxk import AuxKSettings
from .sparse import masked_entries

PREFIX = 512
RECIPES = ("saelab", "authors")
AUTHORS_LR = 3e-4  # training/config.py:11
AUTHORS_MAX_GRAD_NORM = 1e5  # training/config.py:16
AUTHORS_BATCHES_TO_DEAD = 5  # training/config.py:33
LAST_CUMULATIVE = 1e8  # training/sae.py:221


@dataclass(kw_only=True)
class TopAFASettings(AuxKSettings):
    afa_coefficient: float = setting(
        1 / 32,
        "AFA loss weight in the top-AFA paper's units (error as a "
        "mean over elements; the paper used 1/128-1/16)",
        label="afa-{:g}",
    )
    topafa_recipe: str = setting(
        "saelab",
        "saelab: saelab's variant (b_dec at the geometric median, b_enc, target ||x - b_dec||, "
        "saelab's optimizer); authors: the authors' code (b_dec = 0, no b_enc, target ||x||, "
        "Adam 3e-4 constant); see sae/topafa.py",
        choices=RECIPES,
    )

    def check(self, d_sae: int) -> None:
        super().check(d_sae)
        check_number("afa_coefficient", self.afa_coefficient)
        check_choice("topafa_recipe", self.topafa_recipe, RECIPES)


def authors(sae) -> bool:
    return sae.cfg.topafa_recipe == "authors"


def selection_target(sae, x: torch.Tensor) -> torch.Tensor:
    """t = ||x - b_dec|| [n]: the norm the selection sizes the code to; no gradient."""
    return (x - sae.b_dec).norm(dim=-1).detach()


def loss_target(sae, x: torch.Tensor) -> torch.Tensor:
    """The norm the AFA loss pulls ||f|| towards [n]: ||x|| in the authors' recipe, the
    selection's target in saelab's variant."""
    return x.norm(dim=-1) if authors(sae) else selection_target(sae, x)


def chosen_k(sae, a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k* per sample [n] and the latents by descending score [n, >= max k*].

    The gap |sqrt(c_j) - t| falls until sqrt(c_j) crosses t and rises after, so a prefix of
    the PREFIX best scores suffices for a row whose prefix crosses t or ends in zeros; only if
    some row needs more are all h scores sorted (the reference method's O(h log h))."""
    target = selection_target(sae, x)[:, None]
    scores = (a * sae.W_dec.norm(dim=1)).square()
    if PREFIX < scores.shape[-1]:
        top, order = scores.topk(PREFIX, dim=-1, sorted=True)
        cumulative = top.cumsum(-1).sqrt()
        if ((cumulative[:, -1:] >= target) | (top[:, -1:] == 0)).all():
            return (cumulative - target).abs().argmin(-1) + 1, order
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    cumulative = sorted_scores.cumsum(-1)
    cumulative[:, -1] = LAST_CUMULATIVE
    return (cumulative.sqrt() - target).abs().argmin(-1) + 1, order


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
        afa = (f.row_norms() if hasattr(f, "row_norms") else f.norm(dim=-1)) - loss_target(sae, x)
        return {"afa": sae.cfg.d_in * sae.cfg.afa_coefficient * afa.square().mean()}

    # -- the authors' recipe (see the module docstring for their files and lines) -------------
    def initial_weights(self, cfg, generator, latents=slice(None)):
        if cfg.topafa_recipe != "authors":
            return super().initial_weights(cfg, generator, latents)
        W_enc = torch.nn.init.kaiming_uniform_(
            torch.empty(cfg.d_in, cfg.d_sae), generator=generator
        )[:, latents].contiguous()
        W_dec = W_enc.T.clone()
        return W_enc, W_dec / W_dec.norm(dim=-1, keepdim=True)

    def add_state(self, sae):
        if authors(sae):
            sae.b_enc.requires_grad_(False)

    @torch.no_grad()
    def initialize(self, sae, x_scaled):
        if authors(sae):
            sae.b_dec.zero_()

    def loss_unit(self, sae):
        return 1 / sae.cfg.d_in if authors(sae) else 1.0

    def detach_aux_residual(self, sae):
        return not authors(sae)

    def training_recipe(self, sae, train_cfg):
        if not authors(sae):
            return {}
        return {
            "lr": AUTHORS_LR,
            "warmup_tokens": 0,
            "decay_fraction": 0.0,
            "grad_clip": AUTHORS_MAX_GRAD_NORM,
            "dead_tokens": AUTHORS_BATCHES_TO_DEAD * train_cfg.batch_size,
            "decoder_renorm": "before_step",
        }
