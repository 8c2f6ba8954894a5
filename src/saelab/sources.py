"""Where a command's activations come from, and what a run records about them: a .npy file or
activation cache (--activations), generated data with a known dictionary (--synthetic), or a
model harvested over text (the embedded default: SmolLM2-135M block 15 on Wikipedia), cached
under --cache-dir; the held-out data to evaluate on; the model and contexts for downstream
CE/KL. Commands pass their parsed arguments; flags that contradict each other are an error.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data.activations import open_source
from .data.cache import ActivationCache, CacheSpec, check_spec, read_manifest
from .data.models import load_model, load_tokenizer
from .data.pipeline import ensure_caches, prepare_activations
from .data.streaming import heldout_activations, heldout_contexts, streamed_source
from .data.synthetic import synthetic_activations
from .errors import UsageError
from .eval.saebench.suite import NEED_MODEL, Interp
from .io import hub
from .io.external import load_any
from .sae.model import SAE
from .sweep import Downstream

DEMO = {
    "n_tokens": 2**17,
    "d_in": 64,
    "n_features": 512,
    "max_active": 64,
    "train_tokens": 2_000_000,
}
DEFAULT = {
    "model": "builtin:smollm2-135m",
    "layer": 15,
    "site": "resid_post",
    "dataset": "builtin:wiki",
    "tokens": 250_000,
    "eval_tokens": 16_384,
}
MIN_EVAL_TOKENS = 64  # fewer held-out tokens give no meaningful variance, density or L0 histogram


def cache_spec(args, split: str = "train") -> CacheSpec:
    args.site = args.site or "resid_post"
    missing = [
        flag
        for flag, value in (
            ("--model", args.model),
            ("--layer", args.layer),
            ("--dataset", args.dataset),
        )
        if value is None
    ]
    if missing:
        raise UsageError(f"{', '.join(missing)} required")
    return CacheSpec(
        model=args.model,
        layer=args.layer,
        site=args.site,
        dataset=args.dataset,
        split=split,
        text_column=args.text_column,
        ctx_len=args.ctx_len,
        dtype=args.storage_dtype,
        include_special=args.include_special,
    )


def check_data_flags(args) -> None:
    """One source of training data, and no flag that the chosen source would ignore."""
    model_flags = [
        f"--{key}"
        for key in ("model", "layer", "site", "dataset")
        if getattr(args, key) is not None
    ]
    if args.activations and args.synthetic:
        raise UsageError("--activations and --synthetic name two data sources: choose one")
    if args.synthetic and model_flags:
        raise UsageError(
            f"--synthetic generates its data: {', '.join(model_flags)} would be ignored"
        )
    if args.activations and model_flags and not Path(args.activations).is_dir():
        raise UsageError(
            f"{args.activations} is an array that records no model: {', '.join(model_flags)} would be "
            "ignored (they check a cache directory's manifest, or choose a model to harvest from)"
        )
    if (args.activations or args.synthetic) and getattr(args, "no_cache", False):
        raise UsageError(
            "--no-cache applies to harvesting from a model, not to --activations or --synthetic"
        )


def training_data(args):
    """(training source, held-out source, ground-truth dictionary or None)."""
    check_data_flags(args)
    if args.activations:
        source, dictionary = open_source(args.activations), None
        if isinstance(source, ActivationCache):
            _check_request(source, args)
    elif not args.synthetic:
        for key in ("model", "layer", "dataset"):
            setattr(args, key, DEFAULT[key] if getattr(args, key) is None else getattr(args, key))
        spec = cache_spec(args)
        args.tokens = args.tokens or DEFAULT["tokens"]
        eval_tokens = args.eval_tokens or DEFAULT["eval_tokens"]
        if args.no_cache:
            lm = load_model(spec.model, dtype=args.model_dtype, device=args.device)
            return (
                streamed_source(lm, spec, args.shuffle_buffer, args.seed),
                heldout_activations(lm, spec, eval_tokens),
                None,
            )
        train_cache, eval_cache = prepare_activations(
            spec,
            args.tokens,
            eval_tokens,
            root=args.cache_dir,
            device=args.device,
            model_dtype=args.model_dtype,
            progress=not args.no_progress,
        )
        return train_cache, eval_cache, None
    else:
        print(
            f"no --activations given: generating {DEMO['n_tokens']} activations (d_in={DEMO['d_in']}) "
            f"from a known random dictionary of {DEMO['n_features']} features"
        )
        x, dictionary = synthetic_activations(
            DEMO["n_tokens"], DEMO["d_in"], DEMO["n_features"], DEMO["max_active"], seed=1234
        )
        if args.tokens is None:
            args.tokens = DEMO["train_tokens"]
        source = open_source(x, name="generated")
    heldout = (
        args.eval_tokens if args.eval_tokens is not None else min(65536, source.n_tokens // 10)
    )
    if heldout < MIN_EVAL_TOKENS:
        raise UsageError(
            f"{source.name} has {source.n_tokens} tokens: too few to hold out {MIN_EVAL_TOKENS} for "
            "evaluation and train on the rest"
        )
    train_source, eval_source = source.split(heldout)
    return train_source, eval_source, dictionary


def _check_request(cache: ActivationCache, args) -> None:
    """A cache passed with --activations must agree with any --model/--layer/--site/--dataset given."""
    given = {
        key: getattr(args, key)
        for key in ("model", "layer", "site", "dataset")
        if getattr(args, key) is not None
    }
    check_spec(cache.manifest, given, cache.directory)


def provenance(args) -> dict:
    """What an SAE's config records about its training data (its metadata)."""
    if args.synthetic:
        return {"activations": "generated"}
    if args.activations:
        path = Path(args.activations)
        return {"activations": str(path), **(read_manifest(path)["spec"] if path.is_dir() else {})}
    return {
        "model": args.model,
        "layer": args.layer,
        "site": args.site,
        "dataset": args.dataset,
        "ctx_len": args.ctx_len,
        "include_special": args.include_special,
    }


def dictionary_recovery(sae, dictionary: torch.Tensor) -> float:
    """Mean over true features of the max cosine similarity with any decoder row."""
    rows = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    return (dictionary @ rows.T).max(dim=1).values.mean().item()


def sae_source(arg: str) -> tuple[SAE, Path, Path]:
    """(the SAE, the folder holding its files, the folder a command writes into by default) of a
    RUN argument: an SAE directory (the same folder twice), or hf://ORG/NAME[/SAE_ID] (from the
    Hub or its cache; outputs go under runs/hub/ORG--NAME[--SAE_ID], never into the cache)."""
    if not arg.startswith(hub.SCHEME):
        return load_any(arg), Path(arg), Path(arg)
    repo_id, sae_id = hub.parse_uri(arg)
    folder = hub.download(repo_id, sae_id)
    return (
        load_any(folder),
        folder,
        Path("runs")
        / "hub"
        / "--".join([repo_id, *([sae_id] if sae_id else [])]).replace("/", "--"),
    )


def recorded_hook(args, sae) -> None:
    """Fill --model, --layer, --site and --dataset not given from what the SAE's config records."""
    for key in ("model", "layer", "site", "dataset"):
        if getattr(args, key) is None and key in sae.cfg.metadata:
            setattr(args, key, sae.cfg.metadata[key])


def evaluation_data(args, sae):
    """--activations, or the held-out cache of the model/site/dataset recorded in the SAE's config
    (harvested into --cache-dir if missing)."""
    recorded_hook(args, sae)
    if args.activations:
        return open_source(args.activations)
    if args.model is None or args.layer is None or args.dataset is None:
        raise UsageError(
            "this SAE does not record the model it was trained on: pass --activations, "
            "or --model, --layer and --dataset"
        )
    (data,) = ensure_caches(
        [(cache_spec(args, "eval"), args.eval_tokens)],
        args.cache_dir,
        args.device,
        args.model_dtype,
        progress=not args.no_progress,
    )
    return data


def downstream_data(args) -> Downstream | None:
    """The model and held-out contexts for CE/KL, when the activations come from a model."""
    if args.downstream_contexts <= 0 or args.synthetic:
        return None
    if args.activations:
        path = Path(args.activations)
        if not path.is_dir():
            return None
        spec = CacheSpec(**{**read_manifest(path)["spec"], "split": "eval"})
    else:
        spec = cache_spec(args, "eval")
    print(f"loading {spec.model} for the downstream CE/KL ...")
    model = load_model(spec.model, dtype=args.model_dtype, device=args.device)
    return Downstream(
        model, heldout_contexts(model, spec, args.downstream_contexts), spec.layer, spec.site
    )


def sweep_interp(
    args, downstream: Downstream | None, eval_source, settings: dict, chat=None
) -> Interp | None:
    """What a sweep's --evals beyond core need: the model of the activations (the downstream
    one when loaded), its hook, the held-out cache and the chat model (loaded by the caller
    before any harvesting); `settings` as flags.interp_settings gives them."""
    if args.evals == ["core"]:
        return None
    if args.synthetic or (args.activations and not Path(args.activations).is_dir()):
        raise UsageError(
            f"--evals {','.join(args.evals)} need activations of a model (a cache or --model), not "
            f"{'generated data' if args.synthetic else args.activations}"
        )
    spec = (
        CacheSpec(**read_manifest(args.activations)["spec"])
        if args.activations
        else cache_spec(args)
    )
    lm = downstream.model if downstream is not None else None
    if lm is None and any(name in NEED_MODEL for name in args.evals):
        lm = load_model(spec.model, dtype=args.model_dtype, device=args.device)
    if "autointerp" in args.evals and not isinstance(eval_source, ActivationCache):
        raise UsageError(
            "autointerp needs held-out text: sweep over an activation cache or a model"
        )
    return Interp(
        lm=lm,
        layer=spec.layer,
        site=spec.site,
        cache=eval_source,
        tokenizer=lm.tokenizer if lm is not None else load_tokenizer(spec.model),
        chat=chat,
        settings=settings,
        progress=not args.no_progress,
    )
