"""saelab steer and saelab inspect (steering.py) on a tiny saved model: the clean generation is
the model's own, the steered one carries the intervention, inspect's latents are the SAE's
codes of the hook point's activations, and bad requests end in clear errors."""

import json

import pytest
import torch
from conftest import cli_error, randomize
from tiny_models import saved_model

from saelab import SAE, SAEConfig, cli, spliced
from saelab.data.hooks import harvest, splice
from saelab.data.models import load_model
from saelab.eval.logit_lens import logit_lens_ids
from saelab.eval.steering import SteeringConfig, steering
from saelab.steering import generations, prompt_ids, top_latents


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer")
    model = saved_model(root / "model")
    cfg = SAEConfig(arch="topk", d_in=32, d_sae=64, k=4, input_scaling="none",
                    metadata={"model": str(model), "layer": 1, "site": "resid_post"})  # fmt: skip
    sae = randomize(SAE(cfg, seed=0), seed=0).eval()
    sae.save(root / "run")
    return root, load_model(str(model)), SAE.load(root / "run")


def test_clean_generation_is_the_models_own_and_the_steered_one_differs(setup):
    _, lm, sae = setup
    ids = prompt_ids(lm, "w1 w2 w3", room=6)
    assert int(ids[0, 0]) == lm.bos_token_id
    texts = generations(lm, sae, ids, lambda run: run.add(5, 40.0), 6, seed=1)
    kw = {"attention_mask": torch.ones_like(ids), "pad_token_id": lm.tokenizer.eos_token_id}
    own = lm.model.generate(ids, max_new_tokens=6, do_sample=False, **kw)
    assert texts["greedy"]["clean"] == lm.tokenizer.decode(
        own[0, ids.shape[1] :], skip_special_tokens=True
    )
    torch.manual_seed(1)
    sampled = lm.model.generate(ids, max_new_tokens=6, do_sample=True, **kw)
    assert texts["sampled"]["clean"] == lm.tokenizer.decode(
        sampled[0, ids.shape[1] :], skip_special_tokens=True
    )
    with spliced(lm, sae, error_term=True) as run:
        run.add(5, 40.0)
        steered = lm.model.generate(ids, max_new_tokens=6, do_sample=False, **kw)
    assert texts["greedy"]["steered"] == lm.tokenizer.decode(
        steered[0, ids.shape[1] :], skip_special_tokens=True
    )
    assert texts["greedy"]["steered"] != texts["greedy"]["clean"]


def test_inspect_lists_the_codes_of_the_hook_points_activations(setup, capsys):
    root, lm, sae = setup
    ids = prompt_ids(lm, "w4 w5 w6 w7")
    rows = top_latents(lm, sae, ids, top=3)
    with torch.no_grad():
        codes = sae.encode(harvest(lm.model, ids, 1, "resid_post"))[0]
    for row in rows:
        want = [(i, v) for v, i in zip(*codes[row["position"]].topk(3)) if v > 0]
        assert [i for i, _ in row["latents"]] == [int(i) for i, _ in want]
    cli.main(["inspect", str(root / "run"), "w4 w5 w6 w7", "--top", "3"])
    out = capsys.readouterr().out
    assert "written to" in out and (root / "run" / "inspect.html").is_file()
    assert "<table>" in (root / "run" / "inspect.html").read_text()


def test_saelab_steer_prints_both_generations(setup, capsys):
    root, _, _ = setup
    cli.main(["steer", str(root / "run"), "--prompt", "w1 w2", "--latent", "5", "--add", "40",
              "--max-new-tokens", "4", "--positions", "new"])  # fmt: skip
    out = capsys.readouterr().out
    assert "latent 5: add 40 at new positions" in out
    assert out.count("clean:") == 2 and out.count("steered:") == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "w1", "--latent", "64", "--value", "1"], "latent(s) [64] out of range"),
        (["--prompt", " ", "--latent", "1", "--value", "1"], "the prompt is empty"),
        (["--prompt", "w1 " * 3000, "--latent", "1", "--value", "1"], "more than the model's"),
        (["--prompt", "w1", "--latent", "1"], "one of the arguments --value --scale --add"),
    ],
)
def test_bad_steering_requests_end_in_clear_errors(setup, capsys, extra, message):
    root, _, _ = setup
    assert message in cli_error(capsys, ["steer", str(root / "run"), *extra])


def test_the_steering_evaluation_against_an_independent_computation(setup):
    """promoted_logprob_change and kl of adding s x (the latent's peak) x its decoder row at the
    hook point (but BOS), computed here with a plain splice; fluency by the clean model."""
    _, lm, sae = setup
    ids = torch.cat(
        [prompt_ids(lm, "w1 w2 w3 w4 w5 w6 w7 w8 w9"), prompt_ids(lm, "w9 w8 w7 w6 w5 w4 w3 w2 w1")]
    )
    cfg = SteeringConfig(
        latents=[5, 9], strengths=[2.0], contexts=2, promoted=4, prompt_tokens=4, generated=3
    )
    doc = steering(sae, lm, ids, cfg)
    with torch.no_grad():
        acts = harvest(lm.model, ids, 1, "resid_post")
        peaks = sae.encode(acts)[:, 1:].amax((0, 1))
        clean = lm.model(ids).logits.log_softmax(-1)
        for row in doc["eval_result_details"]:
            latent = row["latent"]
            amount = 2.0 * float(peaks[latent])
            direction = amount * sae.W_dec[latent]

            def add(a):
                return torch.cat([a[:, :1], a[:, 1:] + direction], dim=1)

            with splice(lm.model, 1, "resid_post", add):
                steered = lm.model(ids).logits.log_softmax(-1)
            promoted = logit_lens_ids(sae, lm, [latent], 4)[0]
            change = (steered - clean)[:, 1:, promoted].mean()
            kl = (clean.exp() * (clean - steered)).sum(-1)[:, 1:].mean()
            assert row["added"] == pytest.approx(amount, rel=1e-5)
            assert row["promoted_logprob_change"] == pytest.approx(float(change), abs=1e-4)
            assert row["kl"] == pytest.approx(float(kl), abs=1e-5)
            assert row["fluency_ce"] > 0
    metrics = doc["eval_result_metrics"]["steering"]
    assert {"kl_s2", "promoted_logprob_change_s2", "fluency_ce_s2", "clean_fluency_ce"} <= set(
        metrics
    )


def test_saelab_eval_runs_the_steering_evaluation(setup, capsys):
    root, _, _ = setup
    cli.main(["eval", str(root / "run"), "--evals", "steering", "--steer-n", "2",
              "--steer-strengths", "1,3", "--out", str(root / "steer-eval")])  # fmt: skip
    doc = json.loads((root / "steer-eval" / "eval_results" / "steering.json").read_text())
    assert doc["eval_type_id"] == "saelab_steering" and len(doc["eval_result_details"]) == 4
    assert "kl_s3" in capsys.readouterr().out
