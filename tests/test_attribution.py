"""saelab attribute (attribution.py) on a tiny saved model: attributions equal a finite
difference, the latents' and the error's attributions sum to the linear estimate of removing
the SAE's contribution, the measured effects are what zeroing gives, and the outputs."""

import json

import pytest
import torch
from conftest import cli_error, randomize
from tiny_models import saved_model

from saelab import SAE, SAEConfig, cli, spliced
from saelab.attribution import attribute, metric_of
from saelab.data.hooks import splice
from saelab.data.models import load_model
from saelab.steering import prompt_ids

PROMPT, TARGET, CONTRAST = "w1 w2 w3 w4", " w5", " w6"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("attribute")
    model = saved_model(root / "model")
    cfg = SAEConfig(arch="relu", d_in=32, d_sae=48, input_scaling="none",
                    metadata={"model": str(model), "layer": 1, "site": "resid_post"})  # fmt: skip
    sae = randomize(SAE(cfg, seed=0), seed=0).eval()
    sae.save(root / "run")
    lm = load_model(str(model))
    return root, lm, SAE.load(root / "run")


def measured(lm, sae, ids, target, edit):
    with torch.no_grad(), spliced(lm, sae, error_term=True) as run:
        edit(run)
        return float(metric_of(lm.model(ids).logits, target, None))


def test_attributions_equal_a_finite_difference(setup):
    _, lm, sae = setup
    doc = attribute(lm, sae, PROMPT, TARGET, top=3)
    ids, target = (
        prompt_ids(lm, PROMPT),
        lm.tokenizer(TARGET, add_special_tokens=False).input_ids[0],
    )
    h = 1e-2
    for row in doc["latents"][:5]:
        at = {"positions": [row["position"]]}
        up = measured(lm, sae, ids, target, lambda run: run.add(row["latent"], h, **at))
        down = measured(lm, sae, ids, target, lambda run: run.add(row["latent"], -h, **at))
        slope = (up - down) / (2 * h)
        assert row["attribution"] == pytest.approx(-row["activation"] * slope, rel=2e-2, abs=1e-5)
    with torch.no_grad():  # with the error term the clean metric is the model's own
        own = float(metric_of(lm.model(ids).logits, target, None))
    assert doc["clean_metric"] == pytest.approx(own, abs=1e-5)


def test_latents_and_error_sum_to_removing_the_saes_contribution(setup):
    """sum of attributions + error attribution = -(a - decode(0)) . dm/da over the positions
    the SAE replaces (all but BOS): a = decode(f) + e with a linear decoder."""
    _, lm, sae = setup
    doc = attribute(lm, sae, PROMPT, TARGET, contrast=CONTRAST, top=1)
    ids = prompt_ids(lm, PROMPT)
    seen = {}

    def leaf(a):
        seen["a"] = a.detach().requires_grad_(True)
        return seen["a"]

    target, contrast = (
        lm.tokenizer(t, add_special_tokens=False).input_ids[0] for t in (TARGET, CONTRAST)
    )
    with splice(lm.model, 1, "resid_post", leaf):
        value = metric_of(lm.model(ids).logits, target, contrast)
    (grad,) = torch.autograd.grad(value, [seen["a"]])
    removed = seen["a"] - sae.decode(torch.zeros(sae.cfg.d_sae))
    linear = float(-(removed[:, 1:] * grad[:, 1:]).sum().detach())
    assert doc["latent_attribution_sum"] + doc["error_attribution"] == pytest.approx(
        linear, rel=1e-3, abs=1e-6
    )
    assert doc["metric"] == "logit difference"


def test_measured_effects_are_what_zeroing_gives(setup):
    _, lm, sae = setup
    doc = attribute(lm, sae, PROMPT, TARGET, top=2)
    ids, target = (
        prompt_ids(lm, PROMPT),
        lm.tokenizer(TARGET, add_special_tokens=False).input_ids[0],
    )
    clean = doc["clean_metric"]
    every = measured(lm, sae, ids, target, lambda run: run.ablate(list(range(48))))
    assert doc["total_effect"] == pytest.approx(every - clean)
    row = doc["latents"][0]
    one = measured(
        lm, sae, ids, target, lambda run: run.ablate([row["latent"]], positions=[row["position"]])
    )
    assert row["ablation_effect"] == pytest.approx(one - clean)
    assert doc["latents"][2]["ablation_effect"] is None  # beyond --top: the estimate only
    sizes = [abs(r["attribution"]) for r in doc["latents"]]
    assert sizes == sorted(sizes, reverse=True) and all(r["activation"] > 0 for r in doc["latents"])


def test_saelab_attribute_writes_its_json_and_page(setup, capsys):
    root, _, _ = setup
    cli.main(["attribute", str(root / "run"), "--prompt", PROMPT, "--target", TARGET,
              "--top", "3", "--out", str(root / "attr")])  # fmt: skip
    assert "log probability of ' w5'" in capsys.readouterr().out
    doc = json.loads((root / "attr" / "attribution.json").read_text())
    assert {"target", "metric", "total_effect", "error_attribution", "latents"} <= set(doc)
    assert set(doc["latents"][0]) == {
        "position", "token", "latent", "activation", "attribution", "ablation_effect"
    }  # fmt: skip
    assert "<table>" in (root / "attr" / "attribution.html").read_text()
    error = cli_error(capsys, ["attribute", str(root / "run"), "--prompt", PROMPT,
                               "--target", " w5 w6"])  # fmt: skip
    assert "must be exactly one" in error
