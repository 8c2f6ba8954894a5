"""How the house extends: flags generated from the config dataclasses, the data request as a
value, the evaluation and architecture registries, the order of a training step, and imports
that point down."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_sae

import saelab
from saelab import DataConfig, TrainConfig, cli, evaluate, train
from saelab.errors import ConfigError, UsageError
from saelab.eval import registry
from saelab.eval.registry import EVALUATIONS, EvalContext, Evaluation
from saelab.flags import add_options, config_from
from saelab.options import option, options
from saelab.sae.registry import register
from saelab.sae.topk import TopK
from saelab.sources import check_request, harvest_spec, resolve
from saelab.train.heldout import heldout_metrics


@dataclasses.dataclass
class Toy:
    count: int = option(3, "a count", low=1)
    rate: float = option(0.5, "a rate", strict=True)
    on: bool = option(True, "something on")
    off: bool = option(False, "something off")
    names: list[str] = option(help="names", default_factory=lambda: ["a"], choices=("a", "b"))
    mode: str = option("x", "a mode", choices=("x", "y"))
    project: str | None = option(None, "a project", flag="proj", const="p")
    every: int | None = option(None, "every", flag="every-n", cli_default=7)
    hidden: int = 0


def _parse(cls, argv, **kw):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_options(parser, cls, **kw)
    return parser, parser.parse_args(argv)


def test_every_option_field_is_a_flag_and_parses_back_into_its_config():
    parser, args = _parse(Toy, [])
    assert config_from(Toy, args) == Toy(every=7)  # the command line's default where it has one
    flags = {o for action in parser._actions for o in action.option_strings}
    assert {
        "--count",
        "--rate",
        "--no-on",
        "--off",
        "--names",
        "--mode",
        "--proj",
        "--every-n",
    } <= flags
    assert not any("hidden" in flag for flag in flags)  # a plain field has no flag
    argv = ["--count", "5", "--rate", "2", "--no-on", "--off", "--names", "b,a", "--mode", "y",
            "--proj", "--every-n", "9"]  # fmt: skip
    _, args = _parse(Toy, argv)
    assert config_from(Toy, args) == Toy(5, 2.0, False, True, ["b", "a"], "y", "p", 9)
    for bad in (["--count", "0"], ["--rate", "0"], ["--names", "c"], ["--mode", "z"]):
        with pytest.raises((argparse.ArgumentError, SystemExit)):
            _parse(Toy, bad)


def test_option_ranges_are_checked_in_python_too():
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="decay_fraction"):
        TrainConfig(decay_fraction=2.0)
    with pytest.raises(ConfigError, match="unknown site"):
        DataConfig(site="nowhere")
    with pytest.raises(ConfigError, match="eval_tokens must be an integer >= 64"):
        DataConfig(eval_tokens=10)


def _value_for(f):
    """A value of an option field other than its default, by its annotation."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if "bool" in str(f.type):
        return not default
    if f.metadata["const"] is not None:
        return "my-project"
    if "tuple" in str(f.type):
        return (0.8, 0.9)
    if "float" in str(f.type):
        return 0.125
    if "int" in str(f.type):
        return 4096 * 3 if default is None else default * 2 + 1
    return f.metadata["choices"][-1] if f.metadata["choices"] else "something"


def _flag_argv(f, value) -> list[str]:
    if isinstance(value, bool):
        return [("--no-" if not value else "--") + (f.metadata["flag"] or f.name).replace("_", "-")]
    flag = "--" + (f.metadata["flag"] or f.name.replace("_", "-"))
    return [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]


@pytest.mark.parametrize("field", options(TrainConfig), ids=lambda f: f.name)
def test_every_training_option_reaches_train_from_the_command_line(field):
    """A TrainConfig field made with option() is a flag of saelab train and arrives in the
    TrainConfig built from it, with no change outside config.py."""
    value = _value_for(field)
    args = cli.build_parser().parse_args(["train", *_flag_argv(field, value)])
    built = config_from(TrainConfig, args, out_dir="runs/x")
    assert getattr(built, field.name) == value


CACHE_ONLY = ("split", "hookpoints")  # flags of saelab cache, not of train


@pytest.mark.parametrize(
    "field", [f for f in options(DataConfig) if f.name not in CACHE_ONLY], ids=lambda f: f.name
)
def test_every_data_option_reaches_the_data_request(field):
    value = _value_for(field)
    args = cli.build_parser().parse_args(["train", *_flag_argv(field, value)])
    assert getattr(config_from(DataConfig, args), field.name) == value


@pytest.mark.parametrize(
    "field", [f for f in options(DataConfig) if f.name in CACHE_ONLY], ids=lambda f: f.name
)
def test_the_cache_only_data_options_reach_the_data_request(field):
    value = _value_for(field)
    argv = ["cache", "--tokens", "100", "--out", "c", *_flag_argv(field, value)]
    assert (
        getattr(config_from(DataConfig, cli.build_parser().parse_args(argv)), field.name) == value
    )


def test_a_flag_shared_by_two_configs_is_declared_once_and_read_by_both():
    args = cli.build_parser().parse_args(["train", "--no-progress", "--tokens", "5000"])
    data = config_from(DataConfig, args)
    training = config_from(TrainConfig, args, out_dir="runs/x")
    assert data.progress is False and training.progress is False
    assert data.tokens == 5000 and training.total_tokens == 5000
    train_parser = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    declared = [o for action in train_parser._actions for o in action.option_strings]
    assert declared.count("--no-progress") == 1 and declared.count("--tokens") == 1


def test_the_data_request_is_a_value_resolved_without_changing_it(tmp_path):
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(2000, 8)).astype("f4"))
    request = DataConfig(activations=str(tmp_path / "acts.npy"), eval_tokens=200)
    before = dataclasses.replace(request)
    data = resolve(request)
    assert request == before
    assert (data.train.n_tokens, data.heldout.n_tokens, data.tokens) == (1800, 200, None)
    assert data.provenance == {"activations": str(tmp_path / "acts.npy")}
    spec = harvest_spec(DataConfig().with_default_hook())
    assert (spec.model, spec.layer, spec.site, spec.dataset) == (
        "builtin:smollm2-135m", 15, "resid_post", "builtin:wiki"
    )  # fmt: skip
    with pytest.raises(UsageError, match="two data sources"):
        check_request(DataConfig(activations="a.npy", synthetic=True))
    recorded = DataConfig(dataset="d").with_recorded_hook(
        {"model": "m", "layer": 9, "site": "mlp_out"}
    )
    assert (recorded.model, recorded.layer, recorded.site, recorded.dataset) == (
        "m",
        9,
        "mlp_out",
        "d",
    )
    with pytest.raises(ConfigError, match="--layer 3 \\(the SAE records 9\\)"):
        DataConfig(layer=3).with_recorded_hook({"layer": 9})


@dataclasses.dataclass
class ToyEvalConfig:
    level: int = option(2, "toy: a level", flag="toy-level", low=1)


def _toy_run(sae, context, cfg):
    x = next(iter(context.data.chunks(256)))
    score = float((sae.encode(x) != 0).float().mean()) * cfg.level
    return {"eval_type_id": "toy_eval", "eval_config": dataclasses.asdict(cfg),
            "eval_result_metrics": {"toy": {"toy_score": score}}}  # fmt: skip


TOY = Evaluation(
    "toy",
    ToyEvalConfig,
    _toy_run,
    lambda doc: [f"  toy: {doc['eval_result_metrics']['toy']['toy_score']:.3f}"],
    eval_type_id="toy_eval",
    needs_data=True,
    columns=("toy_score",),
)


def test_an_evaluation_is_one_registry_entry_from_flags_to_files(tmp_path, monkeypatch, capsys):
    """A new evaluation registered once gets its flag, runs from saelab eval, writes its
    SAEBench-schema file, prints its summary and adds its column to a sweep's table."""
    monkeypatch.setitem(EVALUATIONS, "toy", TOY)
    acts = np.random.default_rng(0).normal(size=(3000, 8)).astype("f4")
    np.save(tmp_path / "acts.npy", acts)
    sae = make_sae("topk", k=2, d_in=8, d_sae=16).eval()
    sae.save(tmp_path / "run")
    cli.main(["eval", str(tmp_path / "run"), "--activations", str(tmp_path / "acts.npy"),
              "--evals", "toy", "--toy-level", "3"])  # fmt: skip
    document = json.loads((tmp_path / "run" / "eval_results" / "toy.json").read_text())
    assert document["eval_config"] == {"level": 3}
    want = float((sae.encode(torch.from_numpy(acts[:256])) != 0).float().mean()) * 3
    assert document["eval_result_metrics"]["toy"]["toy_score"] == pytest.approx(want)
    assert f"toy: {want:.3f}" in capsys.readouterr().out
    assert registry.read_results(tmp_path / "run")["toy"] == document
    assert "toy_score" in cli.sweep_table([{"name": "a", "toy_score": 0.5}])[0]


def test_registries_refuse_a_name_given_twice():
    with pytest.raises(ConfigError, match="two architectures are named 'topk'"):
        register(TopK(), TopK())
    with pytest.raises(ConfigError, match="two evaluations are named 'toy'"):
        registry.register(TOY, TOY)


def test_an_evaluation_without_what_it_needs_is_refused_by_name():
    with pytest.raises(ConfigError, match="absorption evaluation needs a model"):
        registry.check_context([EVALUATIONS["absorption"]], EvalContext())
    with pytest.raises(
        ConfigError,
        match="autointerp evaluation needs held-out activations and an activation cache",
    ):
        registry.check_context([EVALUATIONS["autointerp"]], EvalContext(chat=object()))


def test_a_result_is_up_to_date_unless_a_setting_changed():
    """What a run records in its config (autointerp's latents and tokens) is not a setting."""
    from saelab.eval.saebench.autointerp import AutoInterpConfig

    class Chat:
        name = "chat-model"

    context, autointerp = EvalContext(chat=Chat()), EVALUATIONS["autointerp"]
    ran = dataclasses.asdict(
        AutoInterpConfig(explainer="chat-model", scorer="chat-model", n_tokens=900, latents=[3, 5])
    )
    assert registry.up_to_date(autointerp, {"eval_config": ran}, context, AutoInterpConfig())
    fewer = AutoInterpConfig(n_latents=5)
    assert not registry.up_to_date(autointerp, {"eval_config": ran}, context, fewer)
    assert not registry.up_to_date(autointerp, None, context, AutoInterpConfig())


def test_after_step_sees_the_stepped_and_renormalised_decoder(monkeypatch):
    x = torch.randn(512, 8)
    sae = make_sae("batchtopk", k=2, d_in=8, d_sae=16)
    initial = sae.W_dec.detach().clone()
    seen = []
    arch = type(sae.arch)
    original = arch.after_step

    def spy(self, sae, out):
        seen.append((sae.W_dec.detach().clone(), sae.W_dec.grad is not None))
        original(self, sae, out)

    monkeypatch.setattr(arch, "after_step", spy)
    train(sae, x, TrainConfig(batch_size=128, total_tokens=256, warmup_tokens=0, progress=False))
    first, has_grad = seen[0]
    assert has_grad and not torch.equal(first, initial) and not torch.equal(first, seen[1][0])
    torch.testing.assert_close(first.norm(dim=1), torch.ones(16))


def test_the_heldout_check_matches_the_full_evaluation():
    x = torch.randn(700, 8) * 3
    sae = make_sae("topk", k=3, d_in=8, d_sae=16).train()
    got = heldout_metrics(sae, x, batch_size=256)
    assert sae.training  # the mode is restored
    full = evaluate(sae, x)
    assert got == pytest.approx({"heldout_nmse": full["nmse"], "heldout_l0": full["l0"]})


def _module_imports():
    """({module: saelab modules it imports at its top}, [imports inside functions])."""
    root = Path(saelab.__file__).parent
    pairs, inner = {}, []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name.split(".") if parts[-1] == "__init__" else name.split(".")[:-1]
        tree = ast.parse(path.read_text())
        pairs[name] = [
            (".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip("."),
             alias.name)
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.level
            for alias in node.names
        ]  # fmt: skip
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner += [
                    f"{name}: {ast.unparse(n)}"
                    for n in ast.walk(function)
                    if isinstance(n, ast.ImportFrom) and n.level
                ]
    graph = {
        module: {f"{t}.{a}" if f"{t}.{a}" in pairs else t for t, a in found} - {module}
        for module, found in pairs.items()
    }
    return graph, inner


def test_imports_point_down_with_no_cycle_and_none_inside_functions():
    graph, inner = _module_imports()
    assert inner == []
    state: dict[str, int] = {}

    def visit(module, path):
        state[module] = 1
        for dep in graph[module]:
            assert state.get(dep) != 1, f"import cycle: {' -> '.join([*path, dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert "saelab" not in {
        dep for deps in graph.values() for dep in deps
    }  # no module needs the root


def test_every_error_saelab_defines_is_a_saelab_error():
    from saelab.errors import SaelabError
    from saelab.eval.saebench.absorption import AbsorptionError
    from saelab.eval.saebench.sparse_probing import ProbingDataError

    assert issubclass(AbsorptionError, SaelabError) and issubclass(ProbingDataError, SaelabError)
