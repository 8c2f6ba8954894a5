"""Downstream CE/KL on tiny models, with cases whose answer is known exactly."""

import pytest
import torch
import torch.nn.functional as F
from conftest import make_sae
from tiny_models import tiny_model

from saelab import downstream
from saelab.data.hooks import SiteError, splice


def identity_sae(d):
    """ReLU SAE with W_enc = [I, -I], W_dec = [I; -I], zero biases:
    x_hat = relu(x) - relu(-x) = x."""
    sae = make_sae("relu", d_in=d, d_sae=2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def dead_sae(d):
    """Codes are all zero (b_enc very negative) and b_dec = 0: x_hat = 0."""
    sae = make_sae("relu", d_in=d, d_sae=2 * d)
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)
    return sae


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("site", ["resid_post", "resid_pre", "mlp_out"])
def test_exact_reconstruction_equals_clean_and_zero_codes_equal_zero_ablation(family, site):
    model = tiny_model(family)
    ids = torch.randint(1, 128, (5, 12))
    perfect = downstream(identity_sae(32), model, ids, layer=1, site=site, batch_size=2)
    assert perfect["ce_sae"] == pytest.approx(perfect["ce_clean"], abs=1e-5)
    assert perfect["kl"] == pytest.approx(0, abs=1e-6)
    assert perfect["ce_loss_recovered"] == pytest.approx(1, abs=1e-4)
    zero = downstream(dead_sae(32), model, ids, layer=1, site=site)
    assert zero["ce_sae"] == pytest.approx(zero["ce_zero"], abs=1e-5)
    assert zero["ce_loss_recovered"] == pytest.approx(0, abs=1e-4)
    assert zero["ce_degradation"] == pytest.approx(zero["ce_zero"] - zero["ce_clean"])
    assert zero["n_predictions"] == 5 * 10


def test_ce_values_against_a_hand_computation():
    model = tiny_model("llama")
    ids = torch.randint(1, 128, (3, 9))
    got = downstream(dead_sae(32), model, ids, layer=0, site="resid_post")
    with torch.no_grad():
        clean = model(ids).logits[:, 1:-1]
        ce_clean = F.cross_entropy(clean.reshape(-1, 128), ids[:, 2:].reshape(-1))
        acts = model(ids, output_hidden_states=True).hidden_states[1][:, 1:]
        mean = acts.reshape(-1, 32).mean(0)

        def ablate(value):
            def fn(a):
                out = value(a).clone()
                out[:, 0] = a[:, 0]
                return out

            return fn

        with splice(model, 0, "resid_post", ablate(lambda a: mean.expand_as(a))):
            ce_mean = F.cross_entropy(
                model(ids).logits[:, 1:-1].reshape(-1, 128), ids[:, 2:].reshape(-1)
            )
        with splice(model, 0, "resid_post", ablate(torch.zeros_like)):
            zero_logits = model(ids).logits[:, 1:-1]
        ce_zero = F.cross_entropy(zero_logits.reshape(-1, 128), ids[:, 2:].reshape(-1))
        kl = (
            F.kl_div(
                zero_logits.log_softmax(-1), clean.log_softmax(-1), log_target=True, reduction="sum"
            )
            / 21
        )
    assert got["ce_clean"] == pytest.approx(ce_clean.item(), rel=1e-5)
    assert got["ce_mean"] == pytest.approx(ce_mean.item(), rel=1e-5)
    assert got["ce_zero"] == pytest.approx(ce_zero.item(), rel=1e-5)
    assert got["kl"] == pytest.approx(kl.item(), rel=1e-4)


def test_bos_position_is_never_replaced():
    model = tiny_model("llama")
    sae = dead_sae(32)
    ids = torch.randint(1, 128, (1, 6))
    bos_after = []
    with splice(model, 1, "resid_post", lambda a: bos_after.append(a[:, 0].clone()) or a):
        downstream(sae, model, ids, layer=0, site="resid_post")
    clean_bos = model(ids, output_hidden_states=True).hidden_states[2][:, 0]
    assert len(bos_after) >= 4  # clean, sae, zero and mean passes
    for value in bos_after:  # the next block sees the unreplaced BOS in every variant
        torch.testing.assert_close(value, clean_bos)


def test_bad_inputs_are_named():
    model = tiny_model("llama")
    ids = torch.randint(1, 128, (2, 8))
    with pytest.raises(ValueError, match="d_in=16, but resid_post of this model has width 32"):
        downstream(identity_sae(16), model, ids, layer=0)
    with pytest.raises(SiteError, match="layer 7 out of range"):
        downstream(identity_sae(32), model, ids, layer=7)
    with pytest.raises(ValueError, match="causal LM"):
        downstream(identity_sae(32), tiny_model("bert").bert, ids, layer=0)
