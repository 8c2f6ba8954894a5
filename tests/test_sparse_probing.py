"""Sparse probing: the selection and accuracies on separable synthetic data, the pooled features
against a brute-force mean, tasks from labels, bad data, and the command writing SAEBench's
fields."""

import json

import numpy as np
import pytest
import torch
from conftest import cli_error, make_sae
from tiny_models import saved_model, tiny_lm, tiny_tokenizer

from saelab import cli
from saelab.data.hooks import harvest
from saelab.eval.saebench.probes import f1, fit_probe, top_mean_difference
from saelab.eval.saebench.sparse_probing import (
    ProbingDataError,
    SparseProbingConfig,
    labelled_texts,
    pooled_features,
    sparse_probing,
    task_accuracies,
    tasks_of,
)

LLM_FIELDS = {"llm_test_accuracy"} | {f"llm_top_{k}_test_accuracy" for k in (1, 2, 5)}
SAE_FIELDS = {"sae_test_accuracy"} | {f"sae_top_{k}_test_accuracy" for k in (1, 2, 5)}


def _separable(n=400, d=30, seed=0):
    """Feature 7 alone decides the class (margin 2); the others are noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.random(n) < 0.5
    x[:, 7] = np.where(y, 1.0, -1.0) * (1 + rng.random(n))
    return x, y


def test_mean_difference_and_probes_on_separable_data():
    x, y = _separable()
    diff = np.abs(x[y].mean(0) - x[~y].mean(0))
    assert top_mean_difference(x, y, 3).tolist() == np.argsort(-diff)[:3].tolist()
    assert top_mean_difference(x, y, 1).tolist() == [7]
    out = task_accuracies(x[:300], y[:300], x[300:], y[300:], [1, 2, 5], "sae")
    assert out["sae_top_1_test_accuracy"] == 1.0 and out["sae_test_accuracy"] >= 0.95
    probe = fit_probe(x[:300], y[:300])
    assert probe.accuracy(x[300:], y[300:]) == pytest.approx(
        float(((x[300:] @ probe.weight + probe.bias > 0) == y[300:]).mean())
    )
    # a feature that is pure noise classifies at chance: half of a balanced test set, within noise
    noise = task_accuracies(x[:300, :5], y[:300], x[300:, :5], y[300:], [1], "llm")
    assert 0.3 < noise["llm_top_1_test_accuracy"] < 0.7
    assert (
        f1(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == 0.5
        and f1(np.zeros(3), np.ones(3)) == 0.0
    )


def test_tasks_are_labels_with_enough_examples_on_both_sides():
    labels = ["a"] * 30 + ["b"] * 25 + ["c"] * 5
    assert tasks_of(labels, 20) == ["a", "b"]
    assert tasks_of(["x"] * 30 + ["y"] * 30, 20) == ["x"]  # two labels: one task
    assert tasks_of(["x"] * 50 + ["y"] * 5, 20) == []  # too few on the other side


@torch.no_grad()
def test_pooled_features_are_means_over_ordinary_tokens():
    lm = tiny_lm("llama")
    sae = make_sae("topk", d_in=32, d_sae=64, k=4)
    contexts = [[0, 10, 11, 12, 13], [0, 20, 21], [0, 30, 1, 31, 32, 33]]  # 0 = BOS, 1 = EOS
    llm, codes = pooled_features(sae, lm, contexts, 1, "resid_post", batch_size=2, progress=False)
    for row, ids in enumerate(contexts):
        acts = harvest(lm, torch.tensor([ids]), 1, "resid_post")[0]
        keep = torch.tensor([t not in (0, 1, 2) for t in ids])
        assert llm[row] == pytest.approx(acts[keep].mean(0), abs=1e-5)
        assert codes[row] == pytest.approx(sae.encode(acts[keep]).mean(0), abs=1e-5)


def test_labelled_files_and_their_errors(tmp_path):
    rows = [{"text": f"w{i} w{i + 1}", "label": i % 2} for i in range(10)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    texts, labels = labelled_texts(str(tmp_path / "d.jsonl"), "text", "label")
    assert texts[3] == "w3 w4" and labels[:3] == ["0", "1", "0"]
    (tmp_path / "d.csv").write_text("body,topic\nw1 w2,x\nw3,y\n")
    assert labelled_texts(str(tmp_path / "d.csv"), "body", "topic") == (["w1 w2", "w3"], ["x", "y"])
    with pytest.raises(ProbingDataError, match="no column 'label'.*--probe-label-column"):
        labelled_texts(str(tmp_path / "d.csv"), "body", "label")
    with pytest.raises(ProbingDataError, match="no labelled text file"):
        labelled_texts(str(tmp_path / "missing.jsonl"), "text", "label")


def test_a_hub_dataset_without_network_fails_before_any_work(monkeypatch):
    from saelab.data.network import OfflineError
    from saelab.eval.saebench.sparse_probing import check_dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError):
        check_dataset("someone/labelled-data", "text", "label")
    check_dataset("builtin:wiki-topics", "text", "label")  # needs nothing


def _probe_file(path, n=80):
    """Two topics in the tiny vocabulary: words w0..w49 against w50..w99."""
    rng = np.random.default_rng(0)
    rows = [
        {
            "text": " ".join(
                f"w{int(v)}" for v in rng.integers(50 * (i % 2), 50 * (i % 2) + 50, 12)
            ),
            "label": "low" if i % 2 == 0 else "high",
        }
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_sparse_probing_document(tmp_path):
    lm = tiny_lm("llama")
    sae = make_sae("topk", d_in=32, d_sae=64, k=8)
    cfg = SparseProbingConfig(
        layer=1, dataset_names=[str(_probe_file(tmp_path / "p.jsonl"))], k_values=[1, 2, 5]
    )
    doc = sparse_probing(sae, lm, cfg, progress=False)
    assert doc["eval_type_id"] == "sparse_probing"
    assert set(doc["eval_result_metrics"]) == {"llm", "sae"}
    assert (
        set(doc["eval_result_metrics"]["llm"]) == LLM_FIELDS
        and set(doc["eval_result_metrics"]["sae"]) == SAE_FIELDS
    )
    (detail,) = doc["eval_result_details"]  # two labels: one task
    assert detail["llm_test_accuracy"] > 0.8  # the topics are separable in the model's activations
    assert detail["n_train"] + detail["n_test"] == 80
    spread = doc["eval_result_unstructured"]["intervals"]  # one task: intervals of one value
    assert spread["over"] == "tasks"
    assert spread["sae_test_accuracy"] == [detail["sae_test_accuracy"]] * 2
    with pytest.raises(ValueError, match="k_values"):
        sparse_probing(
            sae,
            lm,
            SparseProbingConfig(layer=1, dataset_names=cfg.dataset_names, k_values=[100]),
            progress=False,
        )


def test_eval_command_writes_saebench_files_and_refuses_bad_flags(tmp_path, capsys):
    model = saved_model(tmp_path / "model")
    run = tmp_path / "run"
    make_sae(
        "topk",
        d_in=32,
        d_sae=64,
        k=8,
        metadata={"model": str(model), "layer": 1, "site": "resid_post"},
    ).save(run)
    probe = _probe_file(tmp_path / "p.jsonl")
    cli.main(
        [
            "eval",
            str(run),
            "--evals",
            "sparse_probing",
            "--probe-dataset",
            str(probe),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert (
        "sparse_probing (1 tasks; 95% intervals over tasks): SAE top-1" in out
        and "eval_results/: sparse_probing.json" in out
    )
    doc = json.loads((run / "eval_results" / "sparse_probing.json").read_text())
    assert list(doc) == [
        "eval_type_id",
        "eval_config",
        "eval_id",
        "datetime_epoch_millis",
        "eval_result_metrics",
        "eval_result_details",
        "sae_bench_commit_hash",
        "sae_lens_id",
        "sae_lens_release_id",
        "sae_lens_version",
        "sae_cfg_dict",
        "eval_result_unstructured",
    ]
    assert doc["eval_config"]["layer"] == 1 and doc["sae_cfg_dict"]["d_sae"] == 64
    assert not (run / "eval.json").exists()  # core was not asked for
    assert "autointerp needs one chat model" in cli_error(
        capsys, ["eval", str(run), "--evals", "autointerp"]
    )
    assert "--llm is for --evals autointerp" in cli_error(capsys, ["eval", str(run), "--llm", "x"])
    assert "invalid choice" in cli_error(capsys, ["eval", str(run), "--evals", "core,probing"])
    bare = tmp_path / "bare"
    make_sae("topk", d_in=32, d_sae=64, k=8).save(bare)
    assert "pass --model and --layer" in cli_error(
        capsys, ["eval", str(bare), "--evals", "absorption"]
    )


def test_builtin_topics_are_contexts_labelled_by_held_out_article():
    from saelab.data.text import documents
    from saelab.eval.saebench.sparse_probing import builtin_topics

    tok = tiny_tokenizer()
    contexts, labels = builtin_topics(tok, 0, 64)
    articles = list(documents("builtin:wiki", "eval"))
    assert all(len(c) == 64 and c[0] == 0 for c in contexts)
    assert len(set(labels)) <= len(articles) and len(contexts) > 100
    first = tok(articles[0], add_special_tokens=False)["input_ids"]
    assert contexts[0][1:] == first[:63] and labels.count(labels[0]) == len(first) // 63
    assert len(tasks_of(labels, 20, 5)) == 5


def test_sweep_command_adds_the_evals_to_its_table(tmp_path, capsys):
    from saelab.data.cache import CacheSpec, build_cache

    model = saved_model(tmp_path / "model")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "\n".join(
            json.dumps({"text": " ".join(f"w{(i * 7 + j) % 100}" for j in range(30))})
            for i in range(100)
        )
    )
    spec = CacheSpec(
        model=str(model), layer=1, site="resid_post", dataset=str(docs), ctx_len=16, dtype="float32"
    )
    build_cache(tiny_lm("llama"), tmp_path / "cache", spec, 1200, shard_tokens=400, progress=False)
    out = tmp_path / "sweep"
    cli.main(
        [
            "sweep",
            "--activations",
            str(tmp_path / "cache"),
            "--arch",
            "topk",
            "--k",
            "2,4",
            "--expansion",
            "2",
            "--tokens",
            "512",
            "--batch-size",
            "128",
            "--downstream-contexts",
            "0",
            "--evals",
            "core,sparse_probing",
            "--probe-dataset",
            str(_probe_file(tmp_path / "p.jsonl")),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert "sae_top_1_test_accuracy" in printed
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 and all(
        "llm_top_5_test_accuracy" in row and "nmse" in row for row in rows
    )


@pytest.mark.filterwarnings("ignore:.*'penalty' was deprecated:FutureWarning")  # SAEBench's call
def test_probe_is_saebench_train_sklearn_probe_on_raw_inputs():
    """SAEBench's train_sklearn_probe (sparse_probing/probe_training.py): LogisticRegression(
    penalty="l2", C=1.0, max_iter=1000) on the raw float32 inputs. Dividing the inputs by a
    scale first (saelab before issue 25) multiplies the L2 penalty by its square."""
    from sklearn.linear_model import LogisticRegression

    x, y = _separable(n=300, d=12, seed=3)
    x = (x * 40 + 5).astype(np.float32)  # residual-stream-like norms
    theirs = LogisticRegression(penalty="l2", C=1.0, max_iter=1000).fit(x, y.astype(np.int64))
    probe = fit_probe(x, y)
    np.testing.assert_allclose(probe.weight, theirs.coef_[0], rtol=1e-6)
    assert probe.bias == pytest.approx(theirs.intercept_[0], rel=1e-6)
    scale = np.linalg.norm(x, axis=1).mean()
    rescaled = LogisticRegression(max_iter=1000).fit(x / scale, y.astype(np.int64))
    assert not np.allclose(rescaled.coef_[0] / scale, probe.weight, rtol=0.05)


def test_bootstrap_interval_agrees_with_scipy():
    """The percentile bootstrap interval of a mean against scipy.stats.bootstrap's (different
    resamples: equal within Monte Carlo error), and it narrows with more data."""
    from scipy.stats import bootstrap

    from saelab.eval.saebench.output import bootstrap_interval

    values = np.random.default_rng(3).normal(0.4, 0.2, size=26)
    ours = bootstrap_interval(values)
    theirs = bootstrap(
        (values,), np.mean, method="percentile", n_resamples=20_000, random_state=0
    ).confidence_interval
    assert ours == pytest.approx([theirs.low, theirs.high], abs=0.01)
    assert ours[0] < values.mean() < ours[1]
    wide = np.diff(bootstrap_interval(values[:6]))[0]
    assert wide > np.diff(ours)[0] and bootstrap_interval([0.5]) == [0.5, 0.5]


def test_flat_metrics_carry_the_intervals():
    from saelab.eval.saebench.output import flat_metrics

    document = {
        "eval_result_metrics": {"sae": {"sae_top_1_test_accuracy": 0.8}},
        "eval_result_unstructured": {
            "intervals": {"over": "tasks", "sae_top_1_test_accuracy": [0.7, 0.9]}
        },
    }
    assert flat_metrics({"sparse_probing": document}) == {
        "sae_top_1_test_accuracy": 0.8,
        "sae_top_1_test_accuracy_low": 0.7,
        "sae_top_1_test_accuracy_high": 0.9,
    }
