"""The feature browser: latent statistics against brute force, the page, the command, and the
page rendered in a real headless browser (Debian's chromium)."""

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_error
from tiny_models import saved_model, tiny_lm, tiny_model, tiny_tokenizer

from saelab import SAE, SAEConfig, cli
from saelab.data.cache import CacheSpec, build_cache
from saelab.data.models import load_model
from saelab.eval.report import (
    BEFORE,
    QUANTILES,
    STEER_STRENGTHS,
    STEER_TOKENS,
    density_band,
    latent_examples,
    latents_across_densities,
    report_html,
    write_report,
)
from saelab.steering import greedy_steered, prompt_ids

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model saved to disk, an activation cache of it and a trained-looking random SAE."""
    root = tmp_path_factory.mktemp("report")
    model_dir = saved_model(root / "model")
    text = root / "docs.jsonl"
    text.write_text(
        "\n".join(
            json.dumps({"text": " ".join(f"w{(i * 7 + j * 3) % 100} <b>" for j in range(20))})
            for i in range(60)
        )
    )
    spec = CacheSpec(
        model=str(model_dir),
        layer=1,
        site="resid_post",
        dataset=str(text),
        split="eval",
        ctx_len=16,
        dtype="float32",
    )
    cache = build_cache(
        tiny_lm("llama"), root / "cache", spec, 600, shard_tokens=200, progress=False
    )
    sae = SAE(
        SAEConfig(
            arch="topk",
            d_in=32,
            d_sae=64,
            k=4,
            input_scaling="none",
            metadata={"model": str(model_dir)},
        ),
        seed=0,
    )
    return root, cache, sae


def _brute_force(sae, cache):
    shards = [cache.load_shard(i) for i in range(len(cache.shards))]
    acts = torch.cat([s["activations"] for s in shards])
    ctx = torch.cat([s["context"] for s in shards])
    pos = torch.cat([s["position"] for s in shards])
    tokens = {int(s["first_context"]) + j: row for s in shards for j, row in enumerate(s["tokens"])}
    with torch.no_grad():
        codes = sae.encode(acts)
    return codes, ctx, pos, tokens


def test_latents_contexts_and_shading_match_brute_force(setup):
    _, cache, sae = setup
    codes, ctx, pos, tokens = _brute_force(sae, cache)
    counts = (codes > 0).sum(0)
    frequent = sorted(range(64), key=lambda i: (-int(counts[i]), i))[:5]
    shown = latent_examples(sae, cache, latents=frequent, n_contexts=3)
    assert [lt.index for lt in shown] == frequent
    assert all(len(lt.samples) == len(QUANTILES) and lt.samples[0].contexts for lt in shown)
    for lt in shown:
        nonzero = codes[:, lt.index][codes[:, lt.index] > 0].numpy()
        for sample, (lo, hi) in zip(lt.samples, QUANTILES):
            assert sample.label.startswith(f"quantile {lo:.0%}-{hi:.0%}")
            assert (sample.low, sample.high) == pytest.approx(
                (np.quantile(nonzero, lo), np.quantile(nonzero, hi))
            )
            for context, peak in zip(
                sample.contexts, sample.peaks
            ):  # each lies in its quantile interval
                assert sample.low <= context[peak][1] < sample.high
        values = codes[:, lt.index]
        assert lt.density == pytest.approx(float((values > 0).float().mean()))
        assert lt.max_activation == pytest.approx(float(values.max()))
        assert sum(lt.histogram[0]) == int((values > 0).sum())
        best = int(values.argmax())
        first, peak = lt.contexts[0], lt.peaks[0]
        assert first[peak] == (
            int(tokens[int(ctx[best])][pos[best]]),
            pytest.approx(float(values[best])),
        )
        # every shown token carries the latent's activation at that (context, position), 0 for BOS
        c = int(ctx[best])
        for q, (token_id, value) in enumerate(first):
            position = int(pos[best]) - peak + q
            rows = ((ctx == c) & (pos == position)).nonzero().flatten()
            assert token_id == int(tokens[c][position])
            assert value == pytest.approx(float(values[rows[0]]) if len(rows) else 0.0)
        assert peak == min(BEFORE, int(pos[best]))
        expected, seen = [], set()  # the top activations, at most one per packed context
        for r in values.argsort(descending=True).tolist():
            if len(expected) == 3 or values[r] <= 0:
                break
            if int(ctx[r]) not in seen:
                seen.add(int(ctx[r]))
                expected.append(pytest.approx(float(values[r])))
        assert [c[p][1] for c, p in zip(lt.contexts, lt.peaks)] == expected


def test_latents_are_chosen_across_density_bands():
    counts = torch.zeros(100, dtype=torch.long)
    counts[:10] = 5000  # density 0.5
    counts[10:40] = 50  # 5e-3
    counts[40:42] = 3  # 3e-4
    counts[42:60] = 2  # too few firings to be drawn
    chosen = latents_across_densities(counts, 10_000, 9, seed=1)
    bands = [density_band(int(counts[i]) / 10_000) for i in chosen]
    assert (
        bands == ["1e-1..1"] * 4 + ["1e-3..1e-2"] * 3 + ["1e-4..1e-3"] * 2
    )  # the rarest band has only 2
    assert len(set(chosen)) == 9 and all(counts[i] > 0 for i in chosen)
    assert latents_across_densities(counts, 10_000, 9, seed=1) == chosen
    assert density_band(1.0) == "1e-1..1" and density_band(0.0) == "never fires"


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
@torch.no_grad()
def test_logit_lens_reads_a_direction_through_the_final_norm(family):
    from saelab.eval.logit_lens import final_norm, logit_lens

    model = tiny_model(family)
    lm = tiny_lm(family)
    lm.model = model
    sae = SAE(SAEConfig(arch="topk", d_in=32, d_sae=64, k=4, input_scaling="none"), seed=0)
    (lens,) = logit_lens(sae, lm, [5], k=3)
    d = sae.W_dec[5]
    norm = final_norm(model)
    if family == "gpt2":  # LayerNorm: centred, scaled by its weight; the bias does not depend on d
        centred = d - d.mean()
        normed = centred / (centred.square().mean() + norm.eps).sqrt() * norm.weight
    else:  # RMSNorm (Gemma's multiplies by 1 + weight)
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        gain = 1 + norm.weight if family == "gemma" else norm.weight
        normed = d / (d.square().mean() + eps).sqrt() * gain
    logits = model.get_output_embeddings().weight @ normed
    top = logits.topk(3)
    assert [v for _, v in lens["top"]] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert [t for t, _ in lens["top"]] == [lm.tokenizer.decode([int(i)]) for i in top.indices]
    assert [v for _, v in lens["bottom"]] == pytest.approx(
        (-logits).topk(3).values.neg().tolist(), abs=1e-4
    )


def test_page_escapes_text_and_bad_requests_are_named(setup):
    _, cache, sae = setup
    shown = latent_examples(sae, cache, latents=[3, 7], n_contexts=2)
    page = report_html(sae, shown, tiny_tokenizer(), {"nmse": 0.25})
    assert page.count("class='latent'") == 2 and "id='latent-7'" in page
    assert "&lt;unk&gt;" in page and "<unk>" not in page  # token text is escaped
    assert re.search(
        r"class='tok[^']*' style='background-color: rgba\(255, 110, 0, 0\.\d+\)'", page
    )
    with pytest.raises(ValueError, match=r"latent\(s\) \[64\] out of range"):
        latent_examples(sae, cache, latents=[64])
    wide = SAE(SAEConfig(arch="topk", d_in=16, d_sae=32, k=2), seed=0)
    with pytest.raises(ValueError, match="d_in=16, but the activations"):
        latent_examples(wide, cache)


def test_report_command(setup, tmp_path, capsys):
    root, cache, sae = setup
    run = tmp_path / "run"
    sae.save(run)
    chosen = latent_examples(sae, cache, top_n=4)[0].index
    (run / "eval_results").mkdir()
    (run / "eval_results" / "autointerp.json").write_text(
        json.dumps(
            {
                "eval_result_details": [
                    {"latent": chosen, "explanation": "the <word> w5", "score": 0.75, "f1": 0.5}
                ],
                "eval_config": {"explainer": "some-llm"},
                "eval_result_metrics": {"autointerp": {"autointerp_score": 0.75}},
            }
        )
    )
    cli.main(
        [
            "report",
            str(run),
            "--activations",
            str(cache.directory),
            "--top",
            "4",
            "--contexts",
            "2",
            "--neuronpedia",
            str(tmp_path / "np.json"),
        ]
    )
    assert "feature browser with 4 latents" in capsys.readouterr().out
    page = (run / "report.html").read_text()
    assert page.count("class='latent'") == 4 and "data:image/png;base64," in page and "nmse" in page
    assert (
        "autointerp (some-llm): <b>the &lt;word&gt; w5</b>" in page
        and "detection accuracy 0.75" in page
    )
    assert page.count("promotes (logit lens)") == 4
    assert re.search(
        r"Interpretability evaluations \(SAEBench\).*autointerp_score</td><td class='v'>0\.7500",
        page,
    )
    features = json.loads((tmp_path / "np.json").read_text())["features"]
    assert len(features) == 4 and features[0]["index"] == str(chosen)
    assert features[0]["explanations"][0]["description"] == "the <word> w5"
    for f in features:
        assert len(f["freq_hist_data_bar_values"]) == len(f["freq_hist_data_bar_heights"])
        assert {
            "modelId",
            "layer",
            "maxActApprox",
            "frac_nonzero",
            "pos_str",
            "pos_values",
            "neg_str",
            "neg_values",
            "freq_hist_data_bar_heights",
            "activations",
        } <= set(f)
        top = f["activations"][0]
        assert (
            top["maxValue"] == pytest.approx(f["maxActApprox"])
            and top["values"][top["maxValueTokenIndex"]] == top["maxValue"]
        )
    np.save(tmp_path / "acts.npy", np.zeros((10, 32), dtype=np.float32))
    error = cli_error(capsys, ["report", str(run), "--activations", str(tmp_path / "acts.npy")])
    assert re.search("needs token ids", error)


def test_report_steering_examples(setup, tmp_path, capsys):
    """--steer: each latent's prompt continued clean and at two strengths (greedy_steered, the
    SAE spliced in with its error term), with --no-logit-lens the lens left out."""
    root, cache, sae = setup
    run = tmp_path / "run"
    sae.save(run)
    cli.main(["report", str(run), "--activations", str(cache.directory), "--top", "2",
              "--contexts", "1", "--steer", "w1 w2", "--no-logit-lens"])  # fmt: skip
    page = (run / "report.html").read_text()
    assert page.count("class='steer'") == 2 and page.count("+6 x max") == 2
    assert "promotes (logit lens)" not in page
    shown = [int(i) for i in re.findall(r"id='latent-(\d+)'", page)]
    lm = load_model(str(root / "model"))
    ids = prompt_ids(lm, "w1 w2", room=STEER_TOKENS)
    top = latent_examples(sae, cache, latents=shown[:1])[0]
    mine = SAE.load(run)  # spliced where its cache's activations come from, as the command does
    mine.cfg.metadata.update(layer=1, site="resid_post")
    clean, steered = greedy_steered(
        lm, mine, ids, shown[0], [s * top.max_activation for s in STEER_STRENGTHS], STEER_TOKENS
    )
    assert html.escape(steered[1]) in page and html.escape(clean) in page


def test_page_renders_in_headless_chromium(setup, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("SAELAB_REQUIRE_BROWSER"):
            pytest.fail(
                "chromium is not installed (apt-get install chromium), but SAELAB_REQUIRE_BROWSER "
                "is set"
            )
        pytest.skip("chromium is not installed (apt-get install chromium)")
    _, cache, sae = setup
    page = tmp_path / "report.html"
    write_report(
        sae,
        cache,
        page,
        tiny_tokenizer(),
        {"nmse": 0.25},
        top_n=6,
        n_contexts=3,
        lm=tiny_lm("llama"),
        interp={"mean_absorption_fraction_score": 0.1},
    )
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1100,1400",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count('class="latent"') == 6
    assert (
        len(
            re.findall(
                r'class="tok[^"]*" style="background-color: rgba\(255, 110, 0, 0?\.\d+\)"', dom
            )
        )
        > 20
    )
    assert dom.count('class="context"') >= 6 and "<svg" in dom
    assert dom.count('class="logits"') == 12 and "mean_absorption_fraction_score" in dom
    shot = Path(os.environ.get("SAELAB_SCREENSHOT_DIR", tmp_path)) / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120
    )
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000
