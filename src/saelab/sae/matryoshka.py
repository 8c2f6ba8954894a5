"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen, Nanda 2025).

The BatchTopK activation over all latents (training: the n*k largest entries of relu(pre) over
the batch; inference: relu(pre) above the learned global threshold), trained so that nested
prefixes m_1 < ... < m_G = d_sae of the dictionary each reconstruct on their own:
  reconstruction = (1/G) sum_g ||x - (f[:, :m_g] W_dec[:m_g] + b_dec)||^2
Early latents must then carry general features and later ones specific ones (less feature
absorption). The paper writes a sum over the prefixes; its reference code
(bartbussmann/matryoshka_sae) averages them, and that average is what the AuxK weight is relative
to, so saelab averages too: aux_coefficient = 1/32 means the same trade-off as there (the
reference also counts b_dec alone as one more prefix; saelab does not). The default prefixes are
the reference's, d_sae/16, /8, /4, /2 and d_sae.
"""

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .architecture import SAELENS_TENSORS, pick, setting
from .batchtopk import (
    BatchTopK,
    BatchTopKSettings,
    dictionary_learning_threshold,
    threshold_from_dictionary_learning,
)
from .sparse import SparseCode, decode
from .topk import dictionary_learning_k, k_tensor


@dataclass(kw_only=True)
class MatryoshkaSettings(BatchTopKSettings):
    matryoshka_widths: list[int] | None = setting(
        None,
        "increasing prefix widths of the dictionary, the last equal to d_sae (default: d_sae/16, "
        "d_sae/8, d_sae/4, d_sae/2, d_sae, the reference code's)",
    )

    def check(self, d_sae: int) -> None:
        super().check(d_sae)
        if self.matryoshka_widths is None:
            self.matryoshka_widths = sorted({max(1, d_sae // 2**i) for i in (4, 3, 2, 1, 0)})
        widths = self.matryoshka_widths
        if (
            not isinstance(widths, list)
            or not widths
            or any(not isinstance(w, int) or isinstance(w, bool) for w in widths)
        ):
            raise ConfigError(f"matryoshka_widths must be a list of integers, got {widths!r}")
        if any(a >= b for a, b in zip(widths, widths[1:])) or widths[0] < 1 or widths[-1] != d_sae:
            raise ConfigError(
                f"matryoshka_widths must increase from >= 1 to d_sae={d_sae}, got {widths}"
            )


class Matryoshka(BatchTopK):
    name = "matryoshka"
    settings = MatryoshkaSettings
    dictionary_learning_class = "MatryoshkaBatchTopKSAE"
    dictionary_learning_trainer = "MatryoshkaBatchTopKTrainer"

    def reconstruction(self, sae, x, code, x_hat):
        """The mean over prefixes m of ||x - x_hat_m||^2 (per token, summed over its width; x:
        the target), where x_hat_m = x_hat without the latents from m on (code: dense [n, h] or
        a SparseCode; a shard's, whose column j is the dictionary's start + j), so b_dec and a
        skip path count in every prefix."""
        errors = []
        for m in sae.cfg.matryoshka_widths[:-1]:
            if isinstance(code, SparseCode):
                outside = code.cols + sae.shard.start >= m
                later = SparseCode(
                    code.rows[outside], code.cols[outside], code.values[outside], code.n
                )
                prefix = x_hat - sae.shard.sum(decode(later, sae.W_dec))
            else:
                prefix = x_hat - code[:, m:] @ sae.W_dec[m:]
            errors.append((x - prefix).square().sum(-1).mean())
        errors.append(
            (x - x_hat).square().sum(-1).mean()
        )  # the last prefix is the whole dictionary
        return torch.stack(errors).mean()

    def to_dictionary_learning(self, cfg, tensors):
        """MatryoshkaBatchTopKSAE: W_enc, b_enc, W_dec, b_dec as saelab's, k, the threshold and
        group_sizes (the widths of the nested groups; saelab's widths are their running sums)."""
        widths = list(cfg.matryoshka_widths)
        return {"k": cfg.k}, {
            **pick(tensors, *SAELENS_TENSORS),
            "k": k_tensor(cfg.k),
            "threshold": dictionary_learning_threshold(tensors["threshold"]),
            "group_sizes": torch.tensor([b - a for a, b in zip([0, *widths[:-1]], widths)]),
        }

    def from_dictionary_learning(self, trainer, tensors):
        settings = {
            "k": dictionary_learning_k(trainer, tensors),
            "matryoshka_widths": torch.cumsum(tensors["group_sizes"], 0).tolist(),
        }
        return settings, {
            **pick(tensors, *SAELENS_TENSORS),
            "threshold": threshold_from_dictionary_learning(tensors["threshold"]),
        }
