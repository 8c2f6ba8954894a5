"""What the evaluations of `saelab eval` and `saelab sweep` run on (an EvalContext): the held-out
activations, and the model, its hook and held-out contexts when the SAE's data came from a
model, built from a DataConfig."""

from __future__ import annotations

from pathlib import Path

from .config import DataConfig
from .data.activations import open_source
from .data.cache import ActivationCache, CacheSpec, check_spec, read_manifest
from .data.hooks import DEFAULT_SITE, HookPoint
from .data.models import load_model, load_tokenizer
from .data.pipeline import ensure_caches
from .data.streaming import heldout_contexts
from .errors import UsageError
from .eval.full import CoreConfig
from .eval.registry import EVALUATIONS, EvalContext
from .sources import harvest_spec, paired_source


def model_spec(request: DataConfig) -> CacheSpec | None:
    """The held-out CacheSpec of the model that a request's activations come from (a cache's
    manifest, or the model harvested); None for an array or generated data."""
    if request.synthetic:
        return None
    if request.activations:
        path = Path(request.activations)
        if not path.is_dir():
            return None
        if request.transcodes:  # a cache of several hook points: the input's
            path = path / HookPoint(request.layer, request.hook_site).name
        return CacheSpec(**{**read_manifest(path)["spec"], "split": "eval"})
    return harvest_spec(request.with_default_hook(), "eval")


def evaluation_data(request: DataConfig):
    """The request's activations, or the held-out cache of its model, hook and dataset
    (harvested into its cache_dir if missing)."""
    if request.transcodes:
        return paired_source(request)
    if request.activations:
        data = open_source(request.activations)
        if isinstance(data, ActivationCache):  # its hook point must be the one asked for
            hook = {k: v for k, v in request.hook_given.items() if k in ("layer", "site")}
            check_spec(data.manifest, hook, data.directory)
        return data
    if request.model is None or request.layer is None or request.dataset is None:
        raise UsageError(
            "this SAE does not record the model it was trained on: pass --activations, "
            "or --model, --layer and --dataset"
        )
    (data,) = ensure_caches(
        [(harvest_spec(request, "eval"), request.heldout_tokens)],
        request.cache_dir,
        request.device,
        request.model_dtype,
        progress=request.progress,
    )
    return data


def _needs_text(evaluations, data) -> None:
    showing = [e.name for e in evaluations if e.needs_cache]
    if showing and not isinstance(data, ActivationCache):
        raise UsageError(
            f"{', '.join(showing)} shows text: pass an activation cache directory with "
            f"--activations (saelab cache ...) or a model, not {getattr(data, 'name', data)}"
        )


def eval_context(
    request: DataConfig, evaluations, core: CoreConfig, model_given: bool, chat=None
) -> EvalContext:
    """What `saelab eval` runs the evaluations on. `request` carries the hook the SAE records
    where the flags give none; downstream CE/KL runs when the model was given (model_given)."""
    data = None
    if any(e.needs_data for e in evaluations):
        data = evaluation_data(request)
    _needs_text(evaluations, data)
    lm = input_ids = None
    if model_given and EVALUATIONS["core"] in evaluations and core.downstream_contexts > 0:
        if request.dataset is None or request.layer is None:
            raise UsageError("downstream metrics need --model, --layer and --dataset")
        lm = load_model(request.model, dtype=request.model_dtype, device=request.device)
        input_ids = heldout_contexts(lm, harvest_spec(request, "eval"), core.downstream_contexts)
    running = [e.name for e in evaluations if e.needs_model]
    if running and lm is None:
        if request.model is None or request.layer is None:
            raise UsageError(
                f"{', '.join(running)} run the model: this SAE does not record it, so pass "
                "--model and --layer"
            )
        lm = load_model(request.model, dtype=request.model_dtype, device=request.device)
    tokenizer = lm.tokenizer if lm is not None else None
    if tokenizer is None and any(e.needs_cache for e in evaluations):
        tokenizer = load_tokenizer(data.spec.model)
    return EvalContext(
        data=data,
        lm=lm,
        layer=request.layer,
        site=request.hook_site,
        input_ids=input_ids,
        tokenizer=tokenizer,
        chat=chat,
        progress=request.progress,
    )


def sweep_context(
    request: DataConfig, heldout, evaluations, core: CoreConfig, batch_size: int, chat=None
) -> EvalContext:
    """What `saelab sweep` evaluates every SAE with: its held-out data and, when the
    activations come from a model, that model and its held-out contexts for CE/KL."""
    spec = model_spec(request)
    beyond = [e.name for e in evaluations if e.needs_model or e.needs_cache]
    if beyond and spec is None:
        source = "generated data" if request.synthetic else request.activations
        raise UsageError(
            f"--evals {','.join(beyond)} need activations of a model (a cache or --model), "
            f"not {source}"
        )
    _needs_text(evaluations, heldout)
    lm = input_ids = None
    if spec is not None and core.downstream_contexts > 0:
        print(f"loading {spec.model} for the downstream CE/KL ...")
        lm = load_model(spec.model, dtype=request.model_dtype, device=request.device)
        input_ids = heldout_contexts(lm, spec, core.downstream_contexts)
    if lm is None and any(e.needs_model for e in evaluations):
        lm = load_model(spec.model, dtype=request.model_dtype, device=request.device)
    tokenizer = lm.tokenizer if lm is not None else None
    if tokenizer is None and beyond:
        tokenizer = load_tokenizer(spec.model)
    return EvalContext(
        data=heldout,
        lm=lm,
        layer=spec.layer if spec else None,
        site=spec.site if spec else DEFAULT_SITE,
        input_ids=input_ids,
        tokenizer=tokenizer,
        chat=chat,
        batch_size=batch_size,
        progress=request.progress,
    )
