"""The evaluations by name, as `saelab eval --evals` and `saelab sweep --evals` run them.

  core            reconstruction, AFA analysis, downstream CE/KL (full.py; eval.json + plots)
  absorption      first-letter feature absorption (saebench/absorption.py; runs the model)
  sparse_probing  k-sparse probes on labelled text (saebench/sparse_probing.py; runs the model)
  autointerp      explanations and detection scores from a chat model (saebench/autointerp.py;
                  needs a held-out activation cache and a chat model)

Each evaluation is one file holding its config dataclass (fields made with option() become
flags of eval and sweep), `run(sae, context, cfg) -> document` and `summary(document) -> lines`,
plus one entry here: what it needs, its SAEBench eval_type_id (its document is then written
to RUN/eval_results/<name>.json in SAEBench's schema) and the sweep-table columns it adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from ..checks import by_name
from ..data.cache import ActivationCache
from ..data.hooks import DEFAULT_SITE
from ..errors import ConfigError
from . import full, steering
from .saebench import absorption, autointerp, sparse_probing
from .saebench.output import read_outputs, result_path, write_output


@dataclass
class EvalContext:
    """What evaluations draw on: held-out activations `data` (an ActivationCache keeps the
    text), the model `lm` and its hook (layer, site), held-out contexts `input_ids`
    [n, ctx_len] for downstream CE/KL, the tokenizer, a chat model, where files go (`out_dir`)
    and fields added to eval.json (`extra`). `ablations` caches the SAE-independent
    zero/mean-ablation losses across the SAEs of a sweep, by the (layer, site) ablated."""

    data: object = None
    lm: object = None
    layer: int | None = None
    site: str = DEFAULT_SITE
    input_ids: object = None
    tokenizer: object = None
    chat: object = None
    out_dir: str | Path | None = None
    batch_size: int = 4096
    progress: bool = True
    extra: dict = field(default_factory=dict)
    ablations: dict = field(default_factory=dict)


def _with_hook(cfg, context: EvalContext):
    return replace(cfg, model_name=context.lm.name, layer=context.layer, site=context.site)


def _with_chat(cfg, context: EvalContext):
    return replace(cfg, explainer=context.chat.name, scorer=context.chat.name)


@dataclass(frozen=True)
class Evaluation:
    """An evaluation: `run(sae, context, cfg)` returns its document; `configure(cfg, context)`
    completes the config from the context (the hook evaluated, the chat model), so a result
    file can be compared with what a new run would compute; `check(cfg)` validates the config
    before any model loads. needs_*: held-out activations, a model at the SAE's hook, a
    held-out activation cache (text), a chat model. eval_type_id: SAEBench's (None: core,
    which writes eval.json). columns: its metrics in a sweep's summary table."""

    name: str
    config: type
    run: Callable
    summary: Callable
    eval_type_id: str | None = None
    needs_data: bool = False
    needs_model: bool = False
    needs_cache: bool = False
    needs_chat: bool = False
    columns: tuple[str, ...] = ()
    configure: Callable = lambda cfg, context: cfg
    check: Callable = lambda cfg: None

    def lacks(self, context: EvalContext) -> list[str]:
        """What this evaluation needs that `context` does not hold."""
        wants = (
            (self.needs_data, context.data is not None, "held-out activations"),
            (self.needs_model, context.lm, "a model (lm, layer, site)"),
            (self.needs_cache, isinstance(context.data, ActivationCache), "an activation cache"),
            (self.needs_chat, context.chat, "a chat model"),
        )
        return [what for needed, held, what in wants if needed and not held]

    def files(self, document: dict) -> list[str]:
        """The files its run wrote, relative to the output folder."""
        if self.eval_type_id is None:
            return [full.EVAL_NAME, *document["plots"].values()]
        return [str(result_path("", self.name))]


def register(*evaluations: Evaluation) -> dict[str, Evaluation]:
    """The evaluations by name; a name given twice is an error."""
    return by_name(evaluations, "evaluations")


EVALUATIONS = register(
    Evaluation(
        "core",
        full.CoreConfig,
        full.run,
        full.summary_lines,
        needs_data=True,
        columns=("l0", "nmse", "explained_variance", "ce_degradation", "eps_lbo_median"),
    ),
    Evaluation(
        "absorption",
        absorption.AbsorptionConfig,
        absorption.run,
        absorption.summary,
        absorption.EVAL_TYPE_ID,
        needs_model=True,
        configure=_with_hook,
        columns=("mean_absorption_fraction_score",),
    ),
    Evaluation(
        "sparse_probing",
        sparse_probing.SparseProbingConfig,
        sparse_probing.run,
        sparse_probing.summary,
        sparse_probing.EVAL_TYPE_ID,
        needs_model=True,
        configure=_with_hook,
        check=sparse_probing.check,
        columns=("sae_top_1_test_accuracy",),
    ),
    Evaluation(
        "autointerp",
        autointerp.AutoInterpConfig,
        autointerp.run,
        autointerp.summary,
        autointerp.EVAL_TYPE_ID,
        needs_data=True,
        needs_cache=True,
        needs_chat=True,
        configure=_with_chat,
        columns=("autointerp_score",),
    ),
    Evaluation(
        "steering",
        steering.SteeringConfig,
        steering.run,
        steering.summary,
        steering.EVAL_TYPE_ID,
        needs_model=True,
        configure=_with_hook,
    ),
)


def evaluations(names) -> list[Evaluation]:
    """The evaluations of `names`, each once, in the order given."""
    names = list(names)
    unknown = [name for name in names if name not in EVALUATIONS]
    if unknown:
        raise ConfigError(
            f"unknown evaluation {unknown[0]!r}; choose from {', '.join(EVALUATIONS)}"
        )
    return [EVALUATIONS[name] for name in dict.fromkeys(names)]


def check_context(evaluations: list[Evaluation], context: EvalContext) -> None:
    """Every evaluation finds what it needs in `context` (ConfigError naming what lacks)."""
    for evaluation in evaluations:
        lacking = evaluation.lacks(context)
        if lacking:
            raise ConfigError(f"the {evaluation.name} evaluation needs {' and '.join(lacking)}")


def evaluate_with(evaluation: Evaluation, sae, context: EvalContext, cfg=None) -> dict:
    """Run one evaluation of `sae` (cfg: its config, default settings if None) and write its
    files into context.out_dir; returns its document."""
    cfg = evaluation.configure(cfg if cfg is not None else evaluation.config(), context)
    document = evaluation.run(sae, context, cfg)
    if evaluation.eval_type_id is not None:
        write_output(context.out_dir, evaluation.name, document)
    return document


def up_to_date(evaluation: Evaluation, document: dict | None, context: EvalContext, cfg) -> bool:
    """Whether a result document exists and was computed with the config a run would use (its
    fields marked `derived`, what a run records in its config, aside)."""
    if document is None:
        return False
    cfg = evaluation.configure(cfg, context)
    recorded = document.get("eval_config", {})
    return all(
        recorded.get(f.name) == getattr(cfg, f.name)
        for f in fields(cfg)
        if not f.metadata.get("derived")
    )


def read_results(out_dir: str | Path) -> dict[str, dict]:
    """{name: document} of the SAEBench-schema result files in out_dir/eval_results."""
    names = [name for name, e in EVALUATIONS.items() if e.eval_type_id is not None]
    return read_outputs(out_dir, names)


def sweep_columns() -> list[str]:
    """The headline metrics of every evaluation, in registry order."""
    return [column for e in EVALUATIONS.values() for column in e.columns]
