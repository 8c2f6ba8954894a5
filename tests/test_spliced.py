"""The SAE inside the model (saelab.spliced): the error term gives the clean model back, the
reconstruction alone is the downstream evaluation's splice, edits of the codes are what they
say, generation with a KV cache equals generation without, and bad requests are refused."""

import pytest
import torch
from conftest import randomize
from tiny_models import tiny_model

from saelab import SAE, SAEConfig, spliced
from saelab.data.hooks import blocks_of, splice
from saelab.errors import SaelabError

LAYER, D = 1, 32


def sae_at(site="resid_post", arch="topk", seed=0, **extra):
    cfg = SAEConfig(arch=arch, d_in=D, d_sae=64, k=4, input_scaling="none",
                    metadata={"layer": LAYER, "site": site}, **extra)  # fmt: skip
    return randomize(SAE(cfg, seed=seed), seed=seed).eval()


def transcoder():
    cfg = SAEConfig(arch="topk", d_in=D, d_sae=64, k=4, input_scaling="none", d_out=D, skip=True,
                    metadata={"layer": LAYER, "site": "mlp_in", "target_layer": LAYER,
                              "target_site": "mlp_out"})  # fmt: skip
    sae = randomize(SAE(cfg, seed=3), seed=3).eval()
    with torch.no_grad():
        sae.W_skip.normal_(0, 0.1)
    return sae


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama").eval()


IDS = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    "make", [sae_at, transcoder, lambda: [sae_at(), sae_at("resid_pre", seed=1)]]
)
def test_with_the_error_term_the_model_is_unchanged(model, make):
    clean = logits(model)
    with spliced(model, make(), error_term=True) as run:
        torch.testing.assert_close(logits(model), clean, rtol=1e-4, atol=1e-4)
        codes = run.codes if isinstance(run.codes, list) else [run.codes]
        assert all(c.shape == (2, 9, 64) for c in codes)
    with spliced(model, make()):  # without it, the model changes
        assert not torch.allclose(logits(model), clean, atol=1e-3)
    torch.testing.assert_close(logits(model), clean)  # and the hooks are gone after


def test_the_reconstruction_alone_is_the_downstream_splice(model):
    sae = sae_at()

    def by_hand(a):  # the SAE's output, BOS left alone
        out = sae(a)
        return torch.cat([a[:, :1], out[:, 1:]], dim=1)

    with splice(model, LAYER, "resid_post", by_hand):
        want = logits(model)
    with spliced(model, sae) as run:
        torch.testing.assert_close(logits(model), want, rtol=1e-5, atol=1e-5)
        assert run.codes.shape == (2, 9, 64)


def test_edits_do_what_they_say(model):
    sae = sae_at()
    with spliced(model, sae) as run:
        base = logits(model)
        f = run.codes.clone()
        latent = int((f[0, 3] > 0).nonzero()[0])
        run.set(latent, float(f[0, 3, latent]), positions=[3])  # its own value: nothing changes
        torch.testing.assert_close(logits(model)[0], base[0])  # (in the row it was read from)
        run.clear()
        run.scale(latent, 0.0, positions=[3])
        scaled = logits(model)
        run.clear()
        run.ablate([latent], positions=[3])
        torch.testing.assert_close(logits(model), scaled)  # scaling by 0 is ablating
        assert not torch.allclose(scaled[:, 3:], base[:, 3:], atol=1e-5)
        torch.testing.assert_close(scaled[:, :3], base[:, :3])  # earlier positions untouched
        run.clear()
        run.add(latent, 2.0, positions=[5])
        added = logits(model)
        run.clear()
        run.set(latent, float(f[0, 5, latent]) + 2.0, positions=[5])
        torch.testing.assert_close(logits(model)[0], added[0])  # add = set to value + amount


def test_ablating_every_latent_with_the_error_term_leaves_error_plus_bias(model):
    sae = sae_at()
    seen = {}

    def grab(a):
        seen["a"] = a
        return a

    with splice(model, LAYER + 1, "resid_pre", grab):  # what the next block receives
        with spliced(model, sae, error_term=True) as run:
            run.ablate(range(64))
            logits(model)
    with torch.no_grad():
        with splice(model, LAYER, "resid_post", lambda a: seen.setdefault("clean", a)):
            logits(model)
        a = seen["clean"]
        want = a - sae(a) + sae.decode(torch.zeros(2, 9, 64))
    torch.testing.assert_close(seen["a"][:, 1:], want[:, 1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen["a"][:, 0], a[:, 0])  # BOS left alone


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_generation_with_an_edit_uses_the_kv_cache_and_equals_it_without(family):
    model = tiny_model(family)
    sae = sae_at()
    prompt = IDS[:1, :5]
    with spliced(model, sae) as run:
        run.add(7, 5.0)
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        assert run.codes.shape[1] == 1  # the last pass saw one new token: the cache was used
        uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
        assert run.codes.shape[1] == 10
    assert torch.equal(cached, uncached)
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert not torch.equal(cached, plain)


@pytest.mark.parametrize(
    "make, edit, pattern",
    [
        (sae_at, lambda run: run.set(64, 1.0), r"out of range: the SAE has d_sae=64"),
        (sae_at, lambda run: run.add(1, 1.0, positions=[-1]), "positions must be"),
        (sae_at, lambda run: run.scale(1, 2.0, sae=1), "splices 1 SAE"),
        (lambda: SAE(SAEConfig(arch="topk", d_in=D, d_sae=64, k=4)), None, "records no hook point"),
        (lambda: SAE(SAEConfig(arch="topk", d_in=16, d_sae=64, k=4,
                               metadata={"layer": 1, "site": "resid_post"})), None, "d_in 16"),
        (lambda: sae_at(site="resid_mid"), None, "cannot be spliced"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_by_name(model, make, edit, pattern):
    with pytest.raises((SaelabError, ValueError), match=pattern):
        with spliced(model, make()) as run:
            edit(run)
    assert len(blocks_of(model)[LAYER]._forward_hooks) == 0  # nothing left behind
