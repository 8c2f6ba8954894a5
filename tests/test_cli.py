"""The command line, run in-process and as a subprocess."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import cli_error

from saelab import SAE, cli, sources
from saelab.data.cache import CacheSpec
from saelab.data.hooks import harvest_many
from saelab.data.models import load_model
from saelab.data.streaming import heldout_contexts
from saelab.eval.downstream import ablation_losses


@pytest.fixture
def acts(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(6000, 16)).astype(np.float32))
    return path


def test_train_command_leaves_a_loadable_run(acts, tmp_path, capsys):
    out = tmp_path / "run"
    cli.main(
        [
            "train",
            "--activations",
            str(acts),
            "--arch",
            "batchtopk",
            "--k",
            "4",
            "--expansion",
            "4",
            "--tokens",
            "8192",
            "--batch-size",
            "512",
            "--lr",
            "1e-3",
            "--seed",
            "1",
            "--out",
            str(out),
            "--eval-tokens",
            "1000",
        ]
    )
    printed = capsys.readouterr().out
    assert "explained_variance" in printed and str(out) in printed
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["n_tokens"] == 1000 and metrics["train_tokens"] == 8192
    # dead: silent for the last dead_tokens of training; silent: on the held-out tokens
    last = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert metrics["dead_fraction"] == last["dead_fraction"]
    assert metrics["dead_window_tokens"] == 100_000 and "silent_fraction" in metrics
    assert "(no firing in the last 100000 training tokens)" in printed
    assert "(no firing on the 1000 held-out tokens: dead or rare)" in printed
    assert len((out / "history.jsonl").read_text().splitlines()) == 16 // 10 + 1
    sae = SAE.load(out)
    assert (sae.cfg.arch, sae.cfg.d_sae, sae.cfg.k) == ("batchtopk", 64, 4)
    error = cli_error(capsys, ["train", "--activations", str(acts), "--out", str(out)])
    assert re.search("already holds a trained SAE", error)


def test_default_job_trains_on_generated_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sources,
        "DEMO",
        {"n_tokens": 5000, "d_in": 16, "n_features": 32, "max_active": 8, "train_tokens": 4096},
    )
    cli.main(
        [
            "train",
            "--synthetic",
            "--out",
            str(tmp_path / "demo"),
            "--batch-size",
            "256",
            "--k",
            "4",
            "--no-progress",
        ]
    )
    metrics = json.loads((tmp_path / "demo" / "eval.json").read_text())
    assert 0 < metrics["dictionary_recovery"] <= 1
    assert "generating" in capsys.readouterr().out


def test_train_records_the_heldout_curve_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(
        sources,
        "DEMO",
        {"n_tokens": 5000, "d_in": 16, "n_features": 32, "max_active": 8, "train_tokens": 4096},
    )
    cli.main(
        [
            "train",
            "--synthetic",
            "--out",
            str(tmp_path / "demo"),
            "--batch-size",
            "256",
            "--k",
            "4",
            "--eval-every",
            "1024",
            "--no-progress",
        ]
    )
    history = [
        json.loads(line) for line in (tmp_path / "demo" / "history.jsonl").read_text().splitlines()
    ]
    assert [r["tokens"] for r in history if "heldout_nmse" in r] == [1024, 2048, 3072, 4096]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--k", "100", "--expansion", "2"], "k=100 is larger than d_sae=32"),
        (["--k", "0"], "--k: .*must be positive, got 0"),
        (["--eval-tokens", "6000"], "cannot hold out 6000 of 6000"),
    ],
)
def test_bad_arguments_are_named(capsys, acts, tmp_path, args, message):
    error = cli_error(
        capsys, ["train", "--activations", str(acts), "--out", str(tmp_path / "r"), *args]
    )
    assert re.search(message, error)


def test_missing_activation_file(capsys, tmp_path):
    error = cli_error(
        capsys, ["train", "--activations", str(tmp_path / "nope.npy"), "--out", str(tmp_path / "r")]
    )
    assert re.search("no activation file or cache", error)


def test_help_explains_every_flag():
    result = subprocess.run(
        [sys.executable, "-m", "saelab", "train", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for flag in (
        "--activations",
        "--arch",
        "--k",
        "--expansion",
        "--tokens",
        "--batch-size",
        "--lr",
        "--seed",
        "--out",
        "--resume",
    ):
        assert flag in result.stdout
    top = subprocess.run([sys.executable, "-m", "saelab", "--help"], capture_output=True, text=True)
    assert "train" in top.stdout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_models import saved_model

    return saved_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def docs(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"text": " ".join(f"w{(i * 7 + j) % 100}" for j in range(40))})
            for i in range(300)
        )
    )
    return path


def test_cache_command_then_train_several_saes_on_it(model_dir, docs, tmp_path, capsys):
    cache = tmp_path / "cache"
    cli.main(
        [
            "cache",
            "--model",
            str(model_dir),
            "--layer",
            "1",
            "--dataset",
            str(docs),
            "--tokens",
            "1500",
            "--ctx-len",
            "16",
            "--shard-tokens",
            "300",
            "--out",
            str(cache),
            "--no-progress",
        ]
    )
    assert "activations [32]" in capsys.readouterr().out
    out = tmp_path / "runs"
    cli.main(
        [
            "train",
            "--activations",
            str(cache),
            "--arch",
            "topk,batchtopk,relu",
            "--k",
            "4,8",
            "--expansion",
            "2",
            "--tokens",
            "640",
            "--batch-size",
            "64",
            "--eval-tokens",
            "300",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    runs = sorted(p.name for p in out.iterdir())
    assert runs == ["batchtopk-k4", "batchtopk-k8", "relu", "topk-k4", "topk-k8"]
    for run in runs:
        assert json.loads((out / run / "eval.json").read_text())["train_tokens"] == 640
    assert SAE.load(out / "topk-k8").cfg.k == 8
    error = cli_error(
        capsys, ["train", "--activations", str(cache), "--layer", "2", "--out", str(tmp_path / "x")]
    )
    assert re.search("layer: cache has 1, requested 2", error)


def test_train_from_a_model_caches_then_reuses(model_dir, docs, tmp_path, capsys):
    args = [
        "train",
        "--model",
        str(model_dir),
        "--layer",
        "2",
        "--site",
        "mlp_out",
        "--dataset",
        str(docs),
        "--ctx-len",
        "16",
        "--tokens",
        "512",
        "--eval-tokens",
        "100",
        "--batch-size",
        "64",
        "--k",
        "4",
        "--expansion",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    cli.main([*args, "--out", str(tmp_path / "a")])
    assert "reusing" not in capsys.readouterr().out
    cli.main([*args, "--out", str(tmp_path / "b")])
    assert capsys.readouterr().out.count("reusing cached activations") == 2
    assert SAE.load(tmp_path / "b").cfg.metadata["site"] == "mlp_out"


def test_train_streaming_without_cache(model_dir, docs, tmp_path):
    cli.main(
        [
            "train",
            "--model",
            str(model_dir),
            "--layer",
            "0",
            "--dataset",
            str(docs),
            "--no-cache",
            "--ctx-len",
            "16",
            "--tokens",
            "512",
            "--eval-tokens",
            "100",
            "--batch-size",
            "64",
            "--k",
            "4",
            "--expansion",
            "2",
            "--shuffle-buffer",
            "256",
            "--out",
            str(tmp_path / "s"),
            "--no-progress",
        ]
    )
    metrics = json.loads((tmp_path / "s" / "eval.json").read_text())
    assert metrics["train_tokens"] == 512 and metrics["n_tokens"] == 100
    assert not (tmp_path / "cache").exists()


def _trained_run(acts, out):
    cli.main(
        [
            "train",
            "--activations",
            str(acts),
            "--arch",
            "batchtopk",
            "--k",
            "4",
            "--expansion",
            "2",
            "--tokens",
            "2048",
            "--batch-size",
            "256",
            "--eval-tokens",
            "500",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    return out


def test_train_leaves_evaluation_and_plots(acts, tmp_path):
    run = _trained_run(acts, tmp_path / "r")
    results = json.loads((run / "eval.json").read_text())
    for key in (
        "nmse",
        "eps_lbo_median",
        "decoder_max_abs_cos",
        "inference_l0_minus_k",
        "latent_density",
    ):
        assert key in results
    for name in ("zf_plot.png", "l0_histogram.png", "latent_density.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"


def test_eval_command_with_downstream_on_a_model(model_dir, docs, tmp_path, capsys):
    cache = tmp_path / "cache"
    cli.main(
        [
            "cache",
            "--model",
            str(model_dir),
            "--layer",
            "1",
            "--dataset",
            str(docs),
            "--tokens",
            "1500",
            "--ctx-len",
            "16",
            "--shard-tokens",
            "500",
            "--out",
            str(cache),
            "--no-progress",
        ]
    )
    run = tmp_path / "run"
    cli.main(
        [
            "train",
            "--activations",
            str(cache),
            "--k",
            "4",
            "--expansion",
            "2",
            "--tokens",
            "1024",
            "--batch-size",
            "128",
            "--eval-tokens",
            "200",
            "--out",
            str(run),
            "--no-progress",
        ]
    )
    capsys.readouterr()
    cli.main(
        [
            "eval",
            str(run),
            "--activations",
            str(cache),
            "--model",
            str(model_dir),
            "--layer",
            "1",
            "--dataset",
            str(docs),
            "--ctx-len",
            "16",
            "--downstream-contexts",
            "8",
            "--out",
            str(tmp_path / "e"),
        ]
    )
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "e" / "eval.json").read_text())
    for key in (
        "ce_clean",
        "ce_sae",
        "ce_zero",
        "ce_mean",
        "ce_degradation",
        "ce_loss_recovered",
        "kl",
    ):
        assert key in results and key in printed
    error = cli_error(
        capsys,
        [
            "eval",
            str(run),
            "--activations",
            str(cache),
            "--model",
            str(model_dir),
            "--layer",
            "9",
            "--dataset",
            str(docs),
            "--ctx-len",
            "16",
            "--out",
            str(tmp_path / "e2"),
        ],
    )
    assert re.search("--layer 9 \\(the SAE records 1\\)", error)


def test_eval_of_an_external_sae_and_bad_inputs(capsys, acts, tmp_path, model_dir, docs):
    from saelab.io.external import export

    sae = SAE.load(_trained_run(acts, tmp_path / "r"))
    export(sae, tmp_path / "lens", "saelens")
    cli.main(
        ["eval", str(tmp_path / "lens"), "--activations", str(acts), "--out", str(tmp_path / "e")]
    )
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["n_tokens"] == 6000
    assert re.search(
        "does not record the model", cli_error(capsys, ["eval", str(tmp_path / "lens")])
    )
    error = cli_error(
        capsys,
        [
            "eval",
            str(tmp_path / "r"),
            "--activations",
            str(acts),
            "--model",
            str(model_dir),
            "--layer",
            "0",
            "--dataset",
            str(docs),
            "--ctx-len",
            "16",
        ],
    )
    assert re.search("d_in=16, but resid_post of this model has width 32", error)
    bad = np.load(acts)
    bad[10, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    error = cli_error(
        capsys, ["eval", str(tmp_path / "r"), "--activations", str(tmp_path / "bad.npy")]
    )
    assert re.search("NaN", error)
    (tmp_path / "junk").mkdir()
    assert re.search(
        "no cfg.json",
        cli_error(capsys, ["eval", str(tmp_path / "junk"), "--activations", str(acts)]),
    )


def test_sweep_table_shows_a_metric_some_runs_lack_as_a_dash():
    """Per-grid evals give the first run an absorption score the second lacks (a KeyError once)."""
    from saelab.cli import sweep_table

    lines = sweep_table(
        [
            {"name": "a", "l0": 32.0, "nmse": 0.1, "mean_absorption_fraction_score": 0.2},
            {"name": "b", "l0": 16.0, "nmse": 0.2},
        ]
    )
    assert "mean_absorption_fraction_score" in lines[0] and "0.2000" in lines[1]
    assert lines[2].split()[1:] == ["16.0000", "0.2000", "-"]


def test_an_sae_on_the_mlp_input_trains_and_splices(model_dir, docs, tmp_path, capsys):
    common = ["--model", str(model_dir), "--layer", "1", "--dataset", str(docs), "--ctx-len", "16"]
    for site in ("mlp_in", "resid_mid"):
        cli.main(
            ["train", *common, "--site", site, "--no-cache", "--tokens", "512",
             "--eval-tokens", "100", "--batch-size", "64", "--k", "4", "--expansion", "2",
             "--out", str(tmp_path / site), "--no-progress"]
        )  # fmt: skip
        assert SAE.load(tmp_path / site).cfg.metadata["site"] == site
    evaluate = ["eval", "--model", str(model_dir), "--dataset", str(docs), "--ctx-len", "16",
                "--eval-tokens", "100", "--no-progress"]  # fmt: skip
    cli.main([*evaluate, str(tmp_path / "mlp_in"), "--out", str(tmp_path / "e")])
    assert "ce_loss_recovered" in json.loads((tmp_path / "e" / "eval.json").read_text())
    error = cli_error(
        capsys, [*evaluate, str(tmp_path / "resid_mid"), "--out", str(tmp_path / "f")]
    )
    assert "resid_mid of LlamaForCausalLM cannot be spliced" in error


def test_cache_several_hook_points_then_train_at_each(model_dir, docs, tmp_path, capsys):
    out = tmp_path / "cache"
    harvest = ["cache", "--model", str(model_dir), "--dataset", str(docs), "--ctx-len", "16",
               "--tokens", "600", "--shard-tokens", "200",
               "--out", str(out), "--no-progress"]  # fmt: skip
    cli.main([*harvest, "--hookpoints", "layers.*.mlp_out,layers.1.mlp_in"])
    assert "at 4 hook points, aligned row by row" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["layers.0.mlp_out", "layers.1.mlp_in", "layers.1.mlp_out", "layers.2.mlp_out"]
    train = ["train", "--k", "4", "--expansion", "2", "--tokens", "256", "--batch-size", "64",
             "--eval-tokens", "100", "--no-progress"]  # fmt: skip
    cli.main([*train, "--activations", str(out / "layers.1.mlp_in"), "--out", str(tmp_path / "r")])
    assert SAE.load(tmp_path / "r").cfg.metadata["site"] == "mlp_in"
    runs = tmp_path / "every"  # the grid at every hook point of the cache
    cli.main([*train, "--activations", str(out), "--arch", "topk,relu", "--out", str(runs)])
    for name in names:
        for run in ("topk-k4", "relu"):
            sae = SAE.load(runs / name / run)
            assert f"layers.{sae.cfg.metadata['layer']}.{sae.cfg.metadata['site']}" == name
    capsys.readouterr()
    error = cli_error(capsys, ["report", str(runs / "layers.1.mlp_in" / "topk-k4"),
                               "--activations", str(out)])  # fmt: skip
    assert "holds the caches of 4 hook points" in error and "layers.1.mlp_in" in error
    for extra, message in (
        (["--hookpoints", "layers.1.mlp_in", "--layer", "1"], "leave out --layer and --site"),
        (["--hookpoints", "layers.3.mlp_in"], "the model has layers 0..2"),
        (["--hookpoints", "blocks.1.mlp_in"], "is not layers.L.SITE"),
        (["--hookpoints", "layers.1.mlp_in,layers.0-1.mlp_in"], "named twice: layers.1.mlp_in"),
    ):
        error = cli_error(capsys, [*harvest[:-3], "--out", str(tmp_path / "bad"), *extra])
        assert message in error, (extra, error)


def test_several_hook_points_train_in_one_pass_as_each_would_alone(model_dir, docs, tmp_path):
    """The SAEs of a cache of several hook points train from one pass over it, each on its own
    columns of the same batches: equal to the SAE trained on its folder alone."""
    out = tmp_path / "cache"
    cli.main(["cache", "--model", str(model_dir), "--dataset", str(docs), "--ctx-len", "16",
              "--tokens", "700", "--shard-tokens", "250", "--out", str(out), "--no-progress",
              "--hookpoints", "layers.0-2.mlp_in"])  # fmt: skip
    train = ["train", "--k", "4", "--expansion", "2", "--tokens", "384", "--batch-size", "64",
             "--eval-tokens", "100", "--no-progress"]  # fmt: skip
    cli.main([*train, "--activations", str(out), "--hookpoints", "layers.1-2.mlp_in",
              "--out", str(tmp_path / "both")])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == [
        "layers.1.mlp_in",
        "layers.2.mlp_in",
    ]
    cli.main([*train, "--activations", str(out / "layers.2.mlp_in"), "--out", str(tmp_path / "a")])
    together, alone = SAE.load(tmp_path / "both" / "layers.2.mlp_in"), SAE.load(tmp_path / "a")
    assert together.cfg.metadata["layer"] == 2
    for name, tensor in alone.state_dict().items():
        torch.testing.assert_close(together.state_dict()[name], tensor, msg=name)


def test_transcoders_at_every_layer_stream_from_one_forward_pass(model_dir, docs, tmp_path, capsys):
    """--hookpoints with --target-site and --no-cache: one transcoder per block, harvested
    while training (each forward pass feeds all of them), each into its own folder."""
    calls = []
    original = harvest_many

    def counting(model, ids, points, *args):
        calls.append(len(points))
        return original(model, ids, points, *args)

    train = ["train", "--model", str(model_dir), "--dataset", str(docs), "--ctx-len", "16",
             "--k", "4", "--expansion", "2", "--tokens", "512", "--batch-size", "64",
             "--eval-tokens", "100", "--no-progress", "--hookpoints", "layers.*.mlp_in",
             "--target-site", "mlp_out", "--skip"]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("saelab.data.harvesting.harvest_many", counting)
        cli.main([*train, "--no-cache", "--shuffle-buffer", "256", "--out", str(tmp_path / "tc")])
    assert set(calls) == {6}  # 3 inputs and 3 targets from every forward pass
    for layer in range(3):
        sae = SAE.load(tmp_path / "tc" / f"layers.{layer}.mlp_in")
        meta = sae.cfg.metadata
        assert (sae.cfg.d_out, sae.cfg.skip) == (32, True)
        assert (meta["layer"], meta["site"], meta["target_layer"], meta["target_site"]) == (
            layer, "mlp_in", layer, "mlp_out"
        )  # fmt: skip
        result = json.loads((tmp_path / "tc" / f"layers.{layer}.mlp_in" / "eval.json").read_text())
        assert math.isfinite(result["fvu"]) and result["n_tokens"] == 100
    for extra, message in (
        ([], "or streamed from the model (--no-cache)"),
        (["--no-cache", "--target-layer", "2"], "--target-layer names one block"),
        (["--no-cache", "--layer", "1"], "leave out --layer and --site"),
    ):
        error = cli_error(capsys, [*train, *extra, "--out", str(tmp_path / "bad")])
        assert message in error, (extra, error)


def test_a_sweep_puts_saes_transcoders_and_skip_transcoders_of_a_block_on_one_figure(
    model_dir, docs, tmp_path, capsys
):
    """--kind on a transcoder's data: an SAE of the MLP's output (on its columns, spliced at
    the output), a transcoder and a skip transcoder, all evaluated on the same target and drawn
    as three lines."""
    out = tmp_path / "cache"
    cli.main(["cache", "--model", str(model_dir), "--dataset", str(docs), "--ctx-len", "16",
              "--tokens", "700", "--shard-tokens", "250", "--out", str(out), "--no-progress",
              "--hookpoints", "layers.1.mlp_in,layers.1.mlp_out"])  # fmt: skip
    sweep = ["sweep", "--activations", str(out), "--layer", "1", "--site", "mlp_in",
             "--target-site", "mlp_out", "--k", "4,8", "--expansion", "2", "--tokens", "384",
             "--batch-size", "64", "--eval-tokens", "100", "--no-progress",
             "--downstream-contexts", "4", "--model", str(model_dir), "--dataset", str(docs),
             "--ctx-len", "16"]  # fmt: skip
    cli.main([*sweep, "--kind", "sae,transcoder,skip_transcoder", "--out", str(tmp_path / "s")])
    rows = json.loads((tmp_path / "s" / "results.json").read_text())
    assert sorted({(row["kind"], row["k"]) for row in rows}) == [
        (kind, k) for kind in ("sae", "skip_transcoder", "transcoder") for k in (4, 8)
    ]
    for row in rows:
        sae = SAE.load(tmp_path / "s" / row["name"])
        meta, cfg = sae.cfg.metadata, sae.cfg
        assert cfg.input_scaling == "expected_norm" and math.isfinite(row["ce_degradation"])
        if row["kind"] == "sae":  # an autoencoder of the MLP's output, spliced there
            assert (cfg.d_out, meta["site"], meta["layer"]) == (None, "mlp_out", 1)
            assert "target_site" not in meta
        else:
            assert (cfg.d_out, cfg.skip) == (32, row["kind"] == "skip_transcoder")
    # the same ablation for all: the MLP's output, whichever reads it
    assert len({row["ce_zero"] for row in rows}) == 1
    assert (tmp_path / "s" / "pareto_nmse.png").is_file()
    error = cli_error(capsys, ["sweep", "--synthetic", "--kind", "sae", "--tokens", "1000",
                               "--out", str(tmp_path / "bad")])  # fmt: skip
    assert "needs a transcoder's data" in error
    error = cli_error(capsys, [*sweep, "--out", str(tmp_path / "bad2")])
    assert "every point names its kind" in error


def test_transcoders_train_from_a_cache_of_both_hook_points(model_dir, docs, tmp_path, capsys):
    out = tmp_path / "cache"
    cli.main(
        ["cache", "--model", str(model_dir), "--dataset", str(docs), "--ctx-len", "16",
         "--tokens", "900", "--shard-tokens", "300", "--out", str(out), "--no-progress",
         "--hookpoints", "layers.1.mlp_in,layers.1.mlp_out,layers.2.resid_post"]
    )  # fmt: skip
    base = ["train", "--activations", str(out), "--layer", "1", "--k", "4", "--expansion", "2",
            "--tokens", "512", "--batch-size", "64", "--eval-tokens", "150",
            "--no-progress"]  # fmt: skip
    train = [*base, "--site", "mlp_in", "--target-site", "mlp_out"]
    cli.main([*train, "--arch", "topk,batchtopk", "--skip", "--out", str(tmp_path / "tc")])
    for arch in ("topk", "batchtopk"):
        sae = SAE.load(tmp_path / "tc" / f"{arch}-k4")
        assert (sae.cfg.d_out, sae.cfg.skip, sae.cfg.input_scaling) == (32, True, "expected_norm")
        meta = sae.cfg.metadata
        assert (meta["layer"], meta["site"], meta["target_layer"], meta["target_site"]) == (
            1, "mlp_in", 1, "mlp_out"
        )  # fmt: skip
        result = json.loads((tmp_path / "tc" / f"{arch}-k4" / "eval.json").read_text())
        assert math.isfinite(result["fvu"]) and result["n_tokens"] >= 150
    for extra, message in (
        (["--site", "mlp_out", "--target-site", "mlp_in"], "must come after the input"),
        (["--site", "mlp_in", "--target-site", "mlp_out", "--target-layer", "0"],
         "layers.0.mlp_out must come after the input layers.1.mlp_in"),
        (["--site", "mlp_in", "--target-site", "resid_post"],
         "holds no cache of layers.1.resid_post"),
    ):  # fmt: skip
        error = cli_error(capsys, [*base, *extra, "--out", str(tmp_path / "bad")])
        assert message in error, (extra, error)
    error = cli_error(capsys, ["train", "--skip", "--synthetic", "--out", str(tmp_path / "c")])
    assert "--skip adds a transcoder's skip path: it needs --target-site" in error
    run = tmp_path / "tc" / "topk-k4"  # its model and hook points come from its metadata
    cli.main(["eval", str(run), "--activations", str(out), "--out", str(tmp_path / "e")])
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["n_tokens"] >= 900
    cli.main(["eval", str(run), "--activations", str(out), "--model", str(model_dir),
              "--dataset", str(docs), "--ctx-len", "16", "--out", str(tmp_path / "f")])  # fmt: skip
    spliced = json.loads((tmp_path / "f" / "eval.json").read_text())
    assert spliced["ce_zero"] != spliced["ce_clean"] and math.isfinite(spliced["ce_sae"])
    by_input = json.loads((tmp_path / "e" / "eval.json").read_text())  # no model: no CE
    assert "ce_zero" not in by_input
    lm = load_model(str(model_dir))
    spec = CacheSpec(model=str(model_dir), layer=1, site="mlp_in", dataset=str(docs),
                     split="eval", ctx_len=16)  # fmt: skip
    zeroed = ablation_losses(lm.model, heldout_contexts(lm, spec, 32), 1, "mlp_out")
    for key in ("ce_zero", "ce_mean"):  # (a SwiGLU's output at zero input is zero: ce_mean)
        assert spliced[key] == pytest.approx(zeroed[key], rel=0, abs=1e-9), key
    # the feature browser: contexts from the input's cache, the logit lens through W_dec
    cli.main(["report", str(run), "--activations", str(out), "--out", str(tmp_path / "r.html")])
    page = (tmp_path / "r.html").read_text()
    assert "topk skip transcoder" in page and "target_site: mlp_out" in page
    assert "logit lens" in page.lower()
