"""Ground truth: a known dictionary, equal-norm samples with very unequal numbers of features."""

import torch

from saelab import SAE, SAEConfig, TrainConfig, evaluate, train
from saelab.cli import dictionary_recovery
from saelab.data.synthetic import synthetic_activations


def test_generator_has_equal_norms_and_unequal_sparsity():
    x, dictionary = synthetic_activations(
        2000, 64, 32, max_active=16, seed=0
    )  # 32 independent features
    torch.testing.assert_close(x.norm(dim=1), torch.full((2000,), 64**0.5))
    torch.testing.assert_close(dictionary.norm(dim=1), torch.ones(32))
    counts = torch.linalg.lstsq(dictionary.T, x.T).solution.T.abs().gt(1e-4).sum(1)
    assert counts.min() == 1 and counts.max() == 16


def test_batchtopk_recovers_dictionary_and_beats_topk():
    x, dictionary = synthetic_activations(100_000, 32, 64, max_active=16, seed=0)
    results = {}
    for arch in ("topk", "batchtopk"):
        sae = SAE(SAEConfig(arch=arch, d_in=32, d_sae=64, k=4), seed=0)
        cfg = TrainConfig(
            batch_size=512, lr=3e-3, total_tokens=500_000, warmup_tokens=10_000, progress=False
        )
        train(sae, x[:90_000], cfg)
        results[arch] = (evaluate(sae, x[90_000:]), dictionary_recovery(sae, dictionary))
    (topk, _), (batch, recovery) = results["topk"], results["batchtopk"]
    assert recovery > 0.9
    assert batch["nmse"] < topk["nmse"]
    assert abs(batch["l0"] - 4) < 0.5  # the inference threshold reproduces the trained sparsity
