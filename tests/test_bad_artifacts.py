"""Damaged files saelab reads, each refused with one error naming the file and the field:
class 1 (saelab's own artifacts: cfg.json and weights, cache manifests, eval.json, history),
class 2 (other libraries' SAE directories missing a field or a tensor) and class 6 (Ctrl-C
during training, and checkpoints that are not what saelab writes)."""

import json
import re
import shutil
import signal

import pytest
import torch
from bad_world import REPORT, TRAIN, check_case, copy_cache, copy_run, edit_json, with_args
from conftest import cli_error
from safetensors.torch import load_file, save_file

from saelab import SAE, cli
from saelab.eval.registry import read_results
from saelab.io.external import export
from saelab.io.jsonfile import JSONFileError
from saelab.train import loop


def cfg_edit(name, edit):
    """A copy of the world's run whose cfg.json is edit(cfg)."""
    return lambda w: edit_json(copy_run(w, name) / "cfg.json", edit)


def weights_edit(name, edit):
    """A copy of the world's run whose sae.safetensors holds edit(tensors)."""

    def setup(w):
        file = copy_run(w, name) / "sae.safetensors"
        save_file(edit(load_file(str(file))), str(file))

    return setup


def manifest_edit(name, edit):
    return lambda w: edit_json(copy_cache(w, name) / "manifest.json", edit)


def shard0(manifest, **changes):
    manifest["shards"][0].update(changes)
    return manifest


def spec(manifest, **changes):
    manifest["spec"].update(changes)
    return manifest


def file_in_run(name, file, content: bytes):
    def setup(w):
        (copy_run(w, name) / file).write_bytes(content)

    return setup


def eval_on(name):
    return ["eval", "{w}/" + name, "--activations", "{acts}", "--no-progress"]


def report_on(name):
    return [REPORT[0], "{w}/" + name, *REPORT[2:]]


CFG = "run-cfg-"
CLASS_1 = [
    # cfg.json
    ("format_version a string", cfg_edit(CFG + "a", lambda c: {**c, "format_version": "2"}), eval_on(CFG + "a"), "'format_version' must be an integer, got '2'"),
    ("format_version null", cfg_edit(CFG + "b", lambda c: {**c, "format_version": None}), eval_on(CFG + "b"), "'format_version' must be an integer, got null"),
    ("format_version from the future", cfg_edit(CFG + "c", lambda c: {**c, "format_version": 99}), eval_on(CFG + "c"), "format_version 99.*upgrade saelab"),
    ("format_version zero", cfg_edit(CFG + "d", lambda c: {**c, "format_version": 0}), eval_on(CFG + "d"), "format_version 0"),
    ("d_sae astronomically large", cfg_edit(CFG + "e", lambda c: {**c, "d_sae": 2**50}), eval_on(CFG + "e"), "W_enc has shape \\(16, 32\\), but the config"),
    ("d_in against the tensors", cfg_edit(CFG + "f", lambda c: {**c, "d_in": 8}), eval_on(CFG + "f"), "W_enc has shape \\(16, 32\\)"),
    ("d_sae a string", cfg_edit(CFG + "g", lambda c: {**c, "d_sae": "32"}), eval_on(CFG + "g"), "cfg.json: d_sae must be a positive integer"),
    ("k a fraction", cfg_edit(CFG + "h", lambda c: {**c, "k": 4.5}), eval_on(CFG + "h"), "cfg.json.*k"),
    ("k zero", cfg_edit(CFG + "i", lambda c: {**c, "k": 0}), eval_on(CFG + "i"), "cfg.json.*k"),
    ("arch unknown", cfg_edit(CFG + "j", lambda c: {**c, "arch": "topk2"}), eval_on(CFG + "j"), "unknown arch 'topk2'"),
    ("arch missing", cfg_edit(CFG + "k", lambda c: {k: v for k, v in c.items() if k != "arch"}), eval_on(CFG + "k"), "cfg.json: the config has no arch"),
    ("input_scaling unknown", cfg_edit(CFG + "l", lambda c: {**c, "input_scaling": "layer"}), eval_on(CFG + "l"), "unknown input_scaling 'layer'"),
    ("input_scale negative", cfg_edit(CFG + "m", lambda c: {**c, "input_scale": -1.0}), eval_on(CFG + "m"), "input_scale must be a finite number > 0"),
    ("unknown field", cfg_edit(CFG + "n", lambda c: {**c, "sparsity": 3}), eval_on(CFG + "n"), "unknown SAEConfig field\\(s\\): sparsity"),
    ("folded scale a string", cfg_edit(CFG + "o", lambda c: {**c, "input_scaling": "expected_norm", "metadata": {"folded_input_scale": "2"}}), eval_on(CFG + "o"), "folded_input_scale must be a positive number"),
    # sae.safetensors
    ("W_dec of another shape", weights_edit("run-w-a", lambda t: {**t, "W_dec": torch.zeros(32, 8)}), eval_on("run-w-a"), "W_dec has shape \\(32, 8\\)"),
    ("b_dec missing", weights_edit("run-w-b", lambda t: {k: v for k, v in t.items() if k != "b_dec"}), eval_on("run-w-b"), "missing \\['b_dec'\\]"),
    ("W_enc missing", weights_edit("run-w-c", lambda t: {k: v for k, v in t.items() if k != "W_enc"}), eval_on("run-w-c"), "has no tensor W_enc"),
    ("an unknown tensor", weights_edit("run-w-d", lambda t: {**t, "scaling_factor": torch.ones(1)}), eval_on("run-w-d"), "unexpected \\['scaling_factor'\\]"),
    ("NaN weights", weights_edit("run-w-e", lambda t: {**t, "b_enc": torch.full((32,), float("nan"))}), eval_on("run-w-e"), "b_enc contains NaN or Inf"),
    ("integer weights", weights_edit("run-w-f", lambda t: {**t, "b_dec": torch.zeros(16, dtype=torch.int32)}), eval_on("run-w-f"), "b_dec has dtype torch.int32"),
    ("a pickle as weights", file_in_run("run-w-g", "sae.safetensors", b"\x80\x04\x95" + b"\0" * 20), eval_on("run-w-g"), "pickle"),
    # cache manifests
    ("manifest d_in a string", manifest_edit("c-m-a", lambda m: {**m, "d_in": "32"}), with_args(TRAIN, activations="{w}/c-m-a"), "'d_in' must be an integer"),
    ("manifest d_in zero", manifest_edit("c-m-b", lambda m: {**m, "d_in": 0}), with_args(TRAIN, activations="{w}/c-m-b"), "d_in must be positive"),
    ("manifest shards an object", manifest_edit("c-m-c", lambda m: {**m, "shards": {}}), with_args(TRAIN, activations="{w}/c-m-c"), "'shards' must be a JSON array"),
    ("shard entry a string", manifest_edit("c-m-d", lambda m: {**m, "shards": ["shard-00000.safetensors"]}), with_args(TRAIN, activations="{w}/c-m-d"), "shard entry 0 must be a JSON object"),
    ("shard file outside the cache", manifest_edit("c-m-e", lambda m: shard0(m, file="../run/sae.safetensors")), with_args(TRAIN, activations="{w}/c-m-e"), "must be a file name in the cache"),
    ("shard n_tokens negative", manifest_edit("c-m-f", lambda m: shard0(m, n_tokens=-5)), with_args(TRAIN, activations="{w}/c-m-f"), "n_tokens must be positive"),
    ("shard n_tokens a string", manifest_edit("c-m-g", lambda m: shard0(m, n_tokens="326")), with_args(TRAIN, activations="{w}/c-m-g"), "'n_tokens' must be an integer"),
    ("shard sha256 a number", manifest_edit("c-m-h", lambda m: shard0(m, sha256=1)), with_args(TRAIN, activations="{w}/c-m-h"), "'sha256' must be a string"),
    ("manifest total off", manifest_edit("c-m-i", lambda m: {**m, "n_tokens": 10**9}), with_args(TRAIN, activations="{w}/c-m-i"), "its shards hold 651"),
    ("spec layer a string", manifest_edit("c-m-j", lambda m: spec(m, layer="1")), with_args(TRAIN, activations="{w}/c-m-j"), "spec: field 'layer' must be an integer"),
    ("spec unknown field", manifest_edit("c-m-k", lambda m: spec(m, stride=2)), with_args(TRAIN, activations="{w}/c-m-k"), "unknown spec field\\(s\\) stride"),
    ("spec include_special a string", manifest_edit("c-m-l", lambda m: spec(m, include_special="no")), with_args(TRAIN, activations="{w}/c-m-l"), "'include_special' must be true or false"),
    ("shard larger than its file", manifest_edit("c-m-m", lambda m: {**shard0(m, n_tokens=400), "n_tokens": 725}), with_args(TRAIN, activations="{w}/c-m-m"), "do not have the manifest's shape \\(400, 32\\)"),
    # eval.json, read by the report before anything else
    ("eval.json plots a list", file_in_run("run-e-a", "eval.json", b'{"plots": []}'), report_on("run-e-a"), "'plots' must be a JSON object"),
    ("eval.json plot outside the run", file_in_run("run-e-b", "eval.json", b'{"plots": {"zf": "../../x.png"}}'), report_on("run-e-b"), "file names in"),
    ("eval.json nmse a string", file_in_run("run-e-c", "eval.json", b'{"nmse": "0.1"}'), report_on("run-e-c"), "'nmse' must be a number or null"),
    ("eval.json n_tokens a fraction", file_in_run("run-e-d", "eval.json", b'{"n_tokens": 1.5}'), report_on("run-e-d"), "'n_tokens' must be an integer"),
    ("eval.json a list", file_in_run("run-e-e", "eval.json", b"[1]"), report_on("run-e-e"), "holds a JSON array, not an object"),
    ("eval.json cut off", file_in_run("run-e-f", "eval.json", b'{"nmse": 0.'), report_on("run-e-f"), "eval.json is not valid JSON"),
    # history.jsonl, read by eval for the training's dead fraction
    ("history damaged mid-file", file_in_run("run-h-a", "history.jsonl", b'{"step": 1\n{"step": 2}\n'), eval_on("run-h-a"), "history.jsonl:1 is not valid JSON"),
    ("history record a list", file_in_run("run-h-b", "history.jsonl", b"[1, 2]\n"), eval_on("run-h-b"), "history.jsonl:1 is not a history record"),
    ("history step a string", file_in_run("run-h-c", "history.jsonl", b'{"step": "1"}\n'), eval_on("run-h-c"), "history.jsonl:1 is not a history record"),
    ("history loss a string", file_in_run("run-h-d", "history.jsonl", b'{"step": 1, "loss": "x"}\n'), eval_on("run-h-d"), "history.jsonl:1 is not a history record"),
    ("history not text", file_in_run("run-h-e", "history.jsonl", b"\xff\xfe\x00garbage"), eval_on("run-h-e"), "history.jsonl is not text"),
]  # fmt: skip


RESULT = {"eval_config": {}, "eval_result_metrics": {"mean": {"score": 0.5}}}
SAEBENCH_OUTPUTS = [
    ("a list", [1], "holds a JSON array, not an object"),
    ("no metrics", {"eval_config": {}}, "has no field 'eval_result_metrics'"),
    ("metrics a list", {**RESULT, "eval_result_metrics": [0.5]}, "'eval_result_metrics' must be a JSON object"),
    ("metrics not grouped", {**RESULT, "eval_result_metrics": {"score": 0.5}}, "must hold objects of metrics"),
    ("details an object", {**RESULT, "eval_result_details": {}}, "'eval_result_details' must be a JSON array"),
    ("details of numbers", {**RESULT, "eval_result_details": [1]}, "a list of objects"),
    ("config a string", {**RESULT, "eval_config": "x"}, "'eval_config' must be a JSON object"),
    ("unstructured a list", {**RESULT, "eval_result_unstructured": []}, "must be a JSON object or null"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, document, pattern", SAEBENCH_OUTPUTS, ids=[c[0] for c in SAEBENCH_OUTPUTS]
)
def test_a_damaged_evaluation_result_is_named(tmp_path, name, document, pattern):
    (tmp_path / "eval_results").mkdir()
    (tmp_path / "eval_results" / "absorption.json").write_text(json.dumps(document))
    with pytest.raises(JSONFileError, match=pattern) as caught:
        read_results(tmp_path)
    assert "absorption.json" in str(caught.value)


def _other_library(fmt, name, edit_cfg=None, edit_tensors=None):
    """The world's SAE exported as `fmt` into {w}/name, its config and tensors then edited."""
    config_file = {"dictionary_learning": "config.json"}.get(fmt, "cfg.json")
    weights = {"saelens": "sae_weights.safetensors", "sparsify": "sae.safetensors"}.get(fmt)

    def setup(w):
        sae = SAE.load(w / "run")
        sae.cfg.input_scaling = "none"  # every format takes raw inputs
        shutil.rmtree(w / name, ignore_errors=True)
        export(sae, w / name, fmt)
        if edit_cfg:
            edit_json(w / name / config_file, edit_cfg)
        if edit_tensors:
            if weights:
                save_file(edit_tensors(load_file(str(w / name / weights))), str(w / name / weights))
            else:
                state = torch.load(w / name / "ae.pt", weights_only=True)
                torch.save(edit_tensors(state), w / name / "ae.pt")

    return setup


def drop(key):
    return lambda d: {k: v for k, v in d.items() if k != key}


def trainer_edit(edit):
    return lambda c: {**c, "trainer": edit(c["trainer"])}


CLASS_2 = [
    ("sparsify without encoder.weight", _other_library("sparsify", "sp-a", edit_tensors=drop("encoder.weight")), eval_on("sp-a"), "sae.safetensors has no tensor 'encoder.weight'; it should hold encoder.weight"),
    ("sparsify without encoder.bias", _other_library("sparsify", "sp-b", edit_tensors=drop("encoder.bias")), eval_on("sp-b"), "has no tensor 'encoder.bias'"),
    ("sparsify without W_dec", _other_library("sparsify", "sp-c", edit_tensors=drop("W_dec")), eval_on("sp-c"), "has no tensor 'W_dec'"),
    ("sparsify without k", _other_library("sparsify", "sp-d", edit_cfg=drop("k")), eval_on("sp-d"), "cfg.json has no field 'k'; it should hold k, d_in"),
    ("sparsify k null", _other_library("sparsify", "sp-e", edit_cfg=lambda c: {**c, "k": None}), eval_on("sp-e"), "field 'k' must be an integer, got None"),
    ("sparsify d_in a string", _other_library("sparsify", "sp-f", edit_cfg=lambda c: {**c, "d_in": "16"}), eval_on("sp-f"), "field 'd_in' must be an integer"),
    ("SAELens without d_sae", _other_library("saelens", "sl-a", edit_cfg=drop("d_sae")), eval_on("sl-a"), "cfg.json has no field 'd_sae'; it should hold d_in, d_sae"),
    ("SAELens without d_in", _other_library("saelens", "sl-b", edit_cfg=drop("d_in")), eval_on("sl-b"), "has no field 'd_in'"),
    ("SAELens d_sae null", _other_library("saelens", "sl-c", edit_cfg=lambda c: {**c, "d_sae": None}), eval_on("sl-c"), "field 'd_sae' must be an integer, got None"),
    ("SAELens without W_enc", _other_library("saelens", "sl-d", edit_tensors=drop("W_enc")), eval_on("sl-d"), "sae_weights.safetensors has no tensor\\(s\\) W_enc"),
    ("SAELens without b_dec", _other_library("saelens", "sl-e", edit_tensors=drop("b_dec")), eval_on("sl-e"), "has no tensor\\(s\\) b_dec"),
    ("SAELens topk without k", _other_library("saelens", "sl-f", edit_cfg=lambda c: {**drop("k")(drop("activation_fn_kwargs")(c)), "architecture": "topk"}), eval_on("sl-f"), "needs an integer k"),
    ("dictionary_learning without dict_class", _other_library("dictionary_learning", "dl-a", edit_cfg=trainer_edit(drop("dict_class"))), eval_on("dl-a"), "dict_class None is not supported"),
    ("dictionary_learning without encoder.weight", _other_library("dictionary_learning", "dl-b", edit_tensors=drop("encoder.weight")), eval_on("dl-b"), "ae.pt has no tensor 'encoder.weight'"),
    ("dictionary_learning without k", _other_library("dictionary_learning", "dl-c", edit_cfg=trainer_edit(drop("k")), edit_tensors=drop("k")), eval_on("dl-c"), "config.json has no field 'k'"),
    ("dictionary_learning trainer a list", _other_library("dictionary_learning", "dl-d", edit_cfg=lambda c: {"trainer": [1]}), eval_on("dl-d"), "'trainer' must be a JSON object"),
    ("dictionary_learning k a string", _other_library("dictionary_learning", "dl-e", edit_cfg=trainer_edit(lambda t: {**t, "k": "4"}), edit_tensors=drop("k")), eval_on("dl-e"), "k must be an integer, got '4'"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, setup, argv, pattern", CLASS_1 + CLASS_2, ids=[c[0] for c in CLASS_1 + CLASS_2]
)
def test_a_damaged_file_is_named_with_its_field(world, capsys, name, setup, argv, pattern):
    check_case(world, capsys, setup, argv, pattern)


# -- class 6: Ctrl-C and checkpoints -------------------------------------------------------
RESUMABLE = [*TRAIN[:-2], "--tokens", "2048", "--checkpoint-every", "512"]


@pytest.fixture(scope="module")
def interrupted(world, tmp_path_factory):
    """A run stopped by Ctrl-C after its third step (a real SIGINT to this process), with the
    error line and exit status the command line gave."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    real = loop.Trainer.train_step

    def step_then_interrupt(self, x):
        record = real(self, x)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)
        return record

    argv = [a.format(w=world, acts=world / "acts.npy") for a in with_args(RESUMABLE, out=str(out))]
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a job started in the background
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop.Trainer, "train_step", step_then_interrupt)
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
    assert signal.getsignal(signal.SIGINT) is before  # restored
    return out, argv, exc.value.code


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_exits_130(interrupted, capsys, tmp_path):
    out, argv, code = interrupted
    assert code == 130
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3  # whole steps only: the one in progress finished first
    shutil.copytree(out, tmp_path / "run")
    cli.main(with_args(argv, out=str(tmp_path / "run")) + ["--resume"])
    assert SAE.load(tmp_path / "run").cfg.arch == "batchtopk"
    history = [
        json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    ]
    assert history[-1]["tokens"] == 2048


def checkpoint_edit(name, edit):
    """A copy of an interrupted run whose checkpoint.pt holds edit(state) (or raw bytes)."""

    def setup(w, interrupted_run):
        run = w / name
        shutil.copytree(interrupted_run, run, dirs_exist_ok=True)
        state = torch.load(interrupted_run / "checkpoint.pt", weights_only=True)
        new = edit(state)
        if isinstance(new, bytes):
            (run / "checkpoint.pt").write_bytes(new)
        else:
            torch.save(new, run / "checkpoint.pt")
        return run

    return setup


def _sae_of_width(state, width):
    return {
        **state,
        "sae": {k: torch.zeros(width) if v.ndim == 1 else v for k, v in state["sae"].items()},
    }


CLASS_6 = [
    ("checkpoint an empty dict", checkpoint_edit("ck-a", lambda s: {}), "has no field 'sae'"),
    ("checkpoint a list", checkpoint_edit("ck-b", lambda s: [1, 2]), "holds a list, not a training checkpoint"),
    ("checkpoint step negative", checkpoint_edit("ck-c", lambda s: {**s, "step": -1}), "step must be >= 0"),
    ("checkpoint step a string", checkpoint_edit("ck-d", lambda s: {**s, "step": "3"}), "'step' must be an integer"),
    ("checkpoint garbage", checkpoint_edit("ck-e", lambda s: b"garbage"), "unreadable"),
    ("checkpoint without since_fired", checkpoint_edit("ck-f", lambda s: {k: v for k, v in s.items() if k != "since_fired"}), "since_fired must be a 1-d tensor"),
    ("checkpoint sae_cfg a string", checkpoint_edit("ck-g", lambda s: {**s, "sae_cfg": "topk"}), "'sae_cfg' must be a JSON object"),
    ("checkpoint of another size", checkpoint_edit("ck-h", lambda s: _sae_of_width(s, 7)), "does not hold this SAE's state"),
    ("checkpoint optimizer a list", checkpoint_edit("ck-i", lambda s: {**s, "optimizer": []}), "'optimizer' must be a JSON object"),
    ("checkpoint since_fired too short", checkpoint_edit("ck-j", lambda s: {**s, "since_fired": torch.zeros(3, dtype=torch.long)}), "since_fired has the wrong length"),
]  # fmt: skip


@pytest.mark.parametrize("name, setup, pattern", CLASS_6, ids=[c[0] for c in CLASS_6])
def test_a_damaged_checkpoint_is_refused_by_name(world, interrupted, capsys, name, setup, pattern):
    out, argv, _ = interrupted
    run = setup(world, out)
    before = (run / "checkpoint.pt").read_bytes()
    line = cli_error(capsys, with_args(argv, out=str(run)) + ["--resume"])
    assert "checkpoint.pt" in line and re.search(pattern, line), line
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing lost


def test_every_class_has_eight_cases():
    assert min(len(CLASS_1), len(CLASS_2), len(CLASS_6)) >= 8
