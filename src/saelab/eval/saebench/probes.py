"""Linear probes for the interpretability evaluations: logistic regression (scikit-learn) on
features, and the features with the largest class-mean difference.

fit_probe is SAEBench's train_sklearn_probe (sae_bench/evals/sparse_probing/probe_training.py):
LogisticRegression(penalty="l2", C=1.0, max_iter=1000) on the raw float32 inputs. Rescaling
the inputs would rescale the L2 penalty with them (by s^2), so it is not done.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
    model = LogisticRegression(penalty="l2", C=1.0, max_iter=max_iter)
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
