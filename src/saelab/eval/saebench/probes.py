"""Linear probes for the interpretability evaluations: logistic regression (scikit-learn) on
features, and the features with the largest class-mean difference.

fit_probe is SAEBench's train_sklearn_probe (sae_bench/evals/sparse_probing/probe_training.py):
LogisticRegression(penalty="l2", C=1.0, max_iter=1000) on the raw float32 inputs. Rescaling
the inputs would rescale the L2 penalty with them (by s^2), so it is not done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class Probe:
    """A binary linear probe: score = x @ weight + bias, positive class where score > 0."""

    weight: np.ndarray  # [d], in input units
    bias: float

    def score(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight + self.bias

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(((self.score(x) > 0) == y.astype(bool)).mean())


def as_numpy(x) -> np.ndarray:
    return (
        x.detach().float().cpu().numpy()
        if isinstance(x, torch.Tensor)
        else np.asarray(x, dtype=np.float32)
    )


def fit_probe(x, y, max_iter: int = 1000) -> Probe:
    """Logistic regression (L2, C=1, lbfgs) of y in {0, 1} [n] on x [n, d], as SAEBench fits
    it (callers balance the classes, as SAEBench's prepare_probe_data does)."""
    from sklearn.linear_model import LogisticRegression

    x, y = as_numpy(x), np.asarray(y).astype(np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError("a probe needs examples of both classes")
    # L2 is the default penalty (scikit-learn 1.8 deprecates naming it, as SAEBench's penalty="l2")
    model = LogisticRegression(C=1.0, max_iter=max_iter)
    model.fit(x, y)
    return Probe(weight=model.coef_[0], bias=float(model.intercept_[0]))


def top_mean_difference(x, y, k: int) -> np.ndarray:
    """Indices of the k features [d] with the largest |mean over y=1 - mean over y=0|, largest
    first (ties by index)."""
    x, y = as_numpy(x), np.asarray(y).astype(bool)
    difference = np.abs(x[y].mean(0) - x[~y].mean(0))
    return np.argsort(-difference, kind="stable")[:k]


def f1(predicted: np.ndarray, actual: np.ndarray) -> float:
    """F1 of boolean predictions against boolean labels (0 when nothing is predicted or true)."""
    predicted, actual = predicted.astype(bool), actual.astype(bool)
    tp = float((predicted & actual).sum())
    return 0.0 if tp == 0 else 2 * tp / (predicted.sum() + actual.sum())


def train_multi_probe(
    x: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    weight_decay: float,
    l1: float = 0.0,
    epochs: int = 50,
    lr: float = 1e-2,
    end_lr: float = 1e-5,
    batch_size: int = 4096,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [C, d], bias [C]) of C one-vs-rest logistic regressions of labels [n] (class
    indices) on x [n, d], trained together as SAEBench's absorption eval trains its probes
    (evals/absorption/probing.py, train_multi_probe and _run_probe_training): a torch Linear,
    BCE with logits and pos_weight = negatives / positives of each class, Adam(lr,
    weight_decay) whose rate decays exponentially to end_lr over the epochs, shuffled batches;
    l1 adds l1 * mean_c ||w_c||_1 (their k-sparse probe, k_sparse_probing.py). Seeded; the
    global random state is left as it was."""
    with torch.random.fork_rng(), torch.inference_mode(False), torch.enable_grad():
        x = x.float().clone()  # usable by autograd when made under inference mode
        y = torch.nn.functional.one_hot(labels.long().clone(), n_classes).float()
        positives = y.sum(0)
        pos_weight = (len(y) - positives) / positives.clamp_min(1)  # a class without examples
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        torch.manual_seed(seed)
        probe = torch.nn.Linear(x.shape[1], n_classes)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
        optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
        gamma = math.exp(math.log(end_lr / lr) / epochs)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
        for _ in range(epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = loss_fn(probe(xb), yb)
                if l1:
                    loss = loss + l1 * probe.weight.abs().sum(-1).mean()
                loss.backward()
                optimizer.step()
            scheduler.step()
    return probe.weight.detach(), probe.bias.detach()
