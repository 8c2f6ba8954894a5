"""Matryoshka BatchTopK against independent computations, and what it is for."""

import numpy as np
import pytest
import torch
from conftest import estimate_threshold, randomize

from saelab import SAE, SAEConfig, TrainConfig, train
from saelab.config import ConfigError
from saelab.io.external import export


def _sae(widths=(8, 24, 48), **kw):
    return randomize(
        SAE(
            SAEConfig(
                arch="matryoshka",
                d_in=16,
                d_sae=48,
                k=3,
                matryoshka_widths=list(widths),
                input_scaling="none",
                **kw,
            ),
            seed=0,
        )
    )


@pytest.mark.parametrize("sparse", [True, False])
def test_loss_is_the_mean_of_the_prefix_reconstructions(sparse):
    """Batch top-k codes by a full sort, then
    (1/G) sum_g ||x - (f[:, :m_g] W_dec[:m_g] + b_dec)||^2."""
    sae = _sae().train()
    x = torch.randn(20, 16)
    out = sae.loss(x, sparse=sparse)
    W_enc, b_enc = sae.W_enc.detach().double().numpy(), sae.b_enc.detach().double().numpy()
    W_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    xs = x.double().numpy()
    a = np.maximum((xs - b_dec) @ W_enc + b_enc, 0)
    cut = np.sort(a.ravel())[-20 * 3]
    f = np.where(a >= cut, a, 0)
    errors = [((xs - (f[:, :m] @ W_dec[:m] + b_dec)) ** 2).sum(1).mean() for m in (8, 24, 48)]
    assert out.terms["mse"].item() == pytest.approx(np.mean(errors), rel=1e-5)
    assert out.l0.item() == pytest.approx(3.0)


def test_widths_are_checked_and_default_to_the_reference_prefixes():
    # bartbussmann/matryoshka_sae main.py:60: group sizes d/16, d/16, d/8, d/4, d/2
    widths = SAEConfig(arch="matryoshka", d_in=16, d_sae=64, k=4).matryoshka_widths
    assert widths == [4, 8, 16, 32, 64]
    for widths, message in (
        ([8, 8, 48], "increase"),
        ([8, 24], "to d_sae=48"),
        ([0, 48], "increase"),
        ([8.5, 48], "list of integers"),
    ):
        with pytest.raises(ConfigError, match=message):
            SAEConfig(arch="matryoshka", d_in=16, d_sae=48, k=3, matryoshka_widths=widths)
    with pytest.raises(ConfigError, match="l1_coefficient do.* not apply to arch 'matryoshka'"):
        SAEConfig(arch="matryoshka", d_in=16, d_sae=48, k=3, l1_coefficient=1.0)


def _zipf_activations(n=2**14, d=32, features=128, seed=123):
    """Sums of random unit features whose frequencies fall off as a power law (like an LM's)."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(features, d, generator=gen)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    active = torch.rand(n, features, generator=gen) < 0.5 / (torch.arange(features) + 1) ** 0.8
    x = (active * torch.rand(n, features, generator=gen).add(0.5)) @ dictionary
    return x[x.norm(dim=1) > 0]


def _prefix_nmse(sae, x, m):
    """NMSE of the reconstruction from the first m latents only (inference codes)."""
    with torch.no_grad():
        f = sae.eval().encode(x)
        f[:, m:] = 0
        x_hat = sae.decode(f, sae.input_stats(x))
    return ((x - x_hat).square().sum(1) / x.square().sum(1)).mean().item()


def test_its_first_latents_reconstruct_much_better_than_a_plain_batchtopk_sae():
    x = _zipf_activations()
    results = {}
    for arch, extra in (("matryoshka", {"matryoshka_widths": [8, 32, 128]}), ("batchtopk", {})):
        sae = SAE(
            SAEConfig(arch=arch, d_in=32, d_sae=128, k=4, input_scaling="none", **extra), seed=0
        )
        train(sae, x, TrainConfig(batch_size=512, total_tokens=2**16, lr=3e-3, progress=False))
        results[arch] = [_prefix_nmse(sae, x, m) for m in (8, 32, 128)]
    matryoshka, plain = results["matryoshka"], results["batchtopk"]
    assert (
        matryoshka[0] < plain[0] - 0.1 and matryoshka[1] < plain[1] - 0.1
    )  # measured: 0.72 vs 0.88, 0.55 vs 0.77
    assert matryoshka[2] < plain[2] + 0.05  # at a small cost, if any, in full reconstruction


def test_save_load_and_saelens_export_keep_the_codes(tmp_path):
    sae = estimate_threshold(_sae(), torch.randn(64, 16))
    x = torch.randn(30, 16)
    sae.save(tmp_path / "m")
    loaded = SAE.load(tmp_path / "m")
    assert loaded.cfg == sae.cfg
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)
    export(sae, tmp_path / "lens", "saelens")  # inference is a jumprelu with one threshold
    torch.testing.assert_close(
        SAE.load_any(tmp_path / "lens").encode(x), sae.encode(x), rtol=1e-5, atol=1e-6
    )
