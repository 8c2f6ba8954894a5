"""Where a command's activations come from: `resolve` turns a DataConfig (a value, built by the
command line or by hand) into the training and held-out sources, reading the request and never
changing it. Also what a run records about its data and the SAE a RUN argument names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import MIN_EVAL_TOKENS, DataConfig
from .data.activations import open_source
from .data.cache import (
    ActivationCache,
    CacheSpec,
    check_spec,
    hookpoint_caches,
    read_manifest,
)
from .data.hooks import SITES, HookPoint
from .data.models import load_model
from .data.paired import PairedSource
from .data.pipeline import prepare_activations
from .data.streaming import heldout_activations, streamed_source
from .data.synthetic import synthetic_activations
from .errors import UsageError
from .io import hub, releases
from .sae.model import SAE

DEMO = {
    "n_tokens": 2**17,
    "d_in": 64,
    "n_features": 512,
    "max_active": 64,
    "train_tokens": 2_000_000,
}


@dataclass
class Data:
    """Resolved training data: the training and held-out sources, the ground-truth dictionary
    of generated data (else None), the training tokens to use when none are asked for (the
    tokens harvested or generated; None: one pass), what an SAE's config records of it, and a
    transcoder's output width (its sources hold x and y side by side)."""

    train: object
    heldout: object
    dictionary: torch.Tensor | None
    tokens: int | None
    provenance: dict
    d_out: int | None = None

    @property
    def d_in(self) -> int:
        return self.train.d_in - (self.d_out or 0)


def harvests(request: DataConfig) -> bool:
    """Whether the request harvests a model (neither an array, a cache nor generated data)."""
    return not (request.activations or request.synthetic)


def harvest_spec(request: DataConfig, split: str | None = None) -> CacheSpec:
    """The CacheSpec of the model, hook and text the request names (split: the request's)."""
    missing = [
        flag
        for flag, value in (
            ("--model", request.model),
            ("--layer", request.layer),
            ("--dataset", request.dataset),
        )
        if value is None
    ]
    if missing:
        raise UsageError(f"{', '.join(missing)} required")
    return CacheSpec(
        model=request.model,
        layer=request.layer,
        site=request.hook_site,
        dataset=request.dataset,
        split=split or request.split,
        text_column=request.text_column,
        ctx_len=request.ctx_len,
        dtype=request.storage_dtype,
        include_special=request.include_special,
    )


def check_request(request: DataConfig) -> None:
    """One source of training data, and no setting that the chosen source would ignore."""
    if request.hookpoints:
        raise UsageError(
            "training takes one hook point: harvest several with `saelab cache --hookpoints`, "
            "then train on one of the cache's folders (--activations DIR/layers.L.SITE)"
        )
    model_flags = [f"--{key}" for key in request.hook_given]
    if request.activations and request.synthetic:
        raise UsageError("--activations and --synthetic name two data sources: choose one")
    if request.synthetic and model_flags:
        raise UsageError(
            f"--synthetic generates its data: {', '.join(model_flags)} would be ignored"
        )
    if request.activations and model_flags and not Path(request.activations).is_dir():
        raise UsageError(
            f"{request.activations} is an array that records no model: {', '.join(model_flags)} "
            "would be ignored (they check a cache directory's manifest, or choose a model to "
            "harvest from)"
        )
    if not harvests(request) and request.stream:
        raise UsageError(
            "--no-cache applies to harvesting from a model, not to --activations or --synthetic"
        )


def resolve(request: DataConfig, seed: int = 0) -> Data:
    """The training data of a request (seed: the shuffle buffer's when streaming). Harvesting
    fills the embedded default job's model, layer and dataset where unset."""
    check_request(request)
    if request.transcodes:
        return transcoder_data(request)
    if harvests(request):
        request = request.with_default_hook()
        spec = harvest_spec(request)
        if request.stream:
            lm = load_model(spec.model, dtype=request.model_dtype, device=request.device)
            train = streamed_source(lm, spec, request.shuffle_buffer, seed)
            heldout = heldout_activations(lm, spec, request.heldout_tokens)
        else:
            train, heldout = prepare_activations(
                spec,
                request.tokens,
                request.heldout_tokens,
                root=request.cache_dir,
                device=request.device,
                model_dtype=request.model_dtype,
                progress=request.progress,
            )
        return Data(train, heldout, None, request.tokens, provenance(request))
    if request.activations:
        source, dictionary, tokens = open_source(request.activations), None, None
        if isinstance(source, ActivationCache):
            check_spec(source.manifest, request.hook_given, source.directory)
    else:
        print(
            f"no --activations given: generating {DEMO['n_tokens']} activations "
            f"(d_in={DEMO['d_in']}) from a known random dictionary of {DEMO['n_features']} "
            "features"
        )
        x, dictionary = synthetic_activations(
            DEMO["n_tokens"], DEMO["d_in"], DEMO["n_features"], DEMO["max_active"], seed=1234
        )
        source, tokens = open_source(x, name="generated"), DEMO["train_tokens"]
    heldout = request.eval_tokens
    if heldout is None:
        heldout = min(65536, source.n_tokens // 10)
    if heldout < MIN_EVAL_TOKENS:
        raise UsageError(
            f"{source.name} has {source.n_tokens} tokens: too few to hold out "
            f"{MIN_EVAL_TOKENS} for evaluation and train on the rest"
        )
    train, heldout = source.split(heldout)
    return Data(train, heldout, dictionary, tokens, provenance(request))


def transcoder_data(request: DataConfig) -> Data:
    """A transcoder's training data: its two hook points' caches side by side (paired_source),
    the last tokens held out."""
    pair = paired_source(request)
    n_heldout = request.eval_tokens or min(65536, pair.n_tokens // 10)
    if n_heldout < MIN_EVAL_TOKENS:
        raise UsageError(f"{pair.name}: too few tokens to hold out {MIN_EVAL_TOKENS}")
    train, heldout = pair.split(n_heldout)
    recorded = {"activations": request.activations, **pair.inputs.manifest["spec"]}
    recorded.update(target_layer=pair.target.layer, target_site=pair.target.site)
    return Data(train, heldout, None, None, recorded, d_out=pair.targets.d_in)


def paired_source(request: DataConfig) -> PairedSource:
    """The input and target hook points' caches in --activations (a cache of several hook
    points, saelab cache --hookpoints), side by side."""
    if not request.activations or not hookpoint_caches(request.activations):
        raise UsageError(
            "a transcoder reads a cache of both its hook points: build it with saelab cache "
            "--hookpoints layers.L.SITE,layers.L.TARGET and pass it as --activations"
        )
    if request.layer is None or request.target_site is None:
        raise UsageError("a transcoder needs --layer and --target-site (and --site, the input)")
    source = HookPoint(request.layer, request.hook_site)
    target = HookPoint(
        request.layer if request.target_layer is None else request.target_layer,
        request.target_site,
    )
    if (target.layer, SITES.index(target.site)) <= (source.layer, SITES.index(source.site)):
        raise UsageError(
            f"the target hook point {target.name} must come after the input {source.name} in "
            "the forward pass"
        )
    held = hookpoint_caches(request.activations)
    missing = [p.name for p in (source, target) if p.name not in held]
    if missing:
        raise UsageError(
            f"{request.activations} holds no cache of {', '.join(missing)} (it holds "
            f"{', '.join(held)})"
        )
    root = Path(request.activations)
    inputs, targets = ActivationCache(root / source.name), ActivationCache(root / target.name)
    return PairedSource(inputs, targets, target)


def provenance(request: DataConfig) -> dict:
    """What an SAE's config records about its training data (its metadata)."""
    if request.synthetic:
        return {"activations": "generated"}
    if request.activations:
        path = Path(request.activations)
        return {
            "activations": str(path),
            **(read_manifest(path)["spec"] if path.is_dir() else {}),
        }
    return {
        "model": request.model,
        "layer": request.layer,
        "site": request.hook_site,
        "dataset": request.dataset,
        "ctx_len": request.ctx_len,
        "include_special": request.include_special,
    }


def dictionary_recovery(sae, dictionary: torch.Tensor) -> float:
    """Mean over true features of the max cosine similarity with any decoder row."""
    rows = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    return (dictionary @ rows.T).max(dim=1).values.mean().item()


def sae_source(arg: str) -> tuple[SAE, Path, Path]:
    """(the SAE, the folder holding its files, the folder a command writes into by default) of a
    RUN argument: an SAE directory (the same folder twice; for an SAE file, the folder of its
    name without the suffix), a release RELEASE/SAE_ID (io/releases.py) or hf://ORG/NAME[/SAE_ID]
    (from the Hub or its cache; outputs go under runs/hub/RELEASE--SAE_ID or
    runs/hub/ORG--NAME[--SAE_ID], never into the cache)."""
    name, _, sae_id = arg.partition("/")
    if name in releases.RELEASES and not Path(arg).exists():
        sae = SAE.from_pretrained(name, sae_id or None)
        out = "--".join([name, sae_id]).replace("/", "--")
        return sae, Path(sae.cfg.metadata["source"]), Path("runs") / "hub" / out
    if not arg.startswith(hub.SCHEME):
        folder = Path(arg)
        if folder.is_file():  # an SAE in one file (OpenAI's .pt): outputs go into a folder beside
            folder = folder.with_suffix("")
        return SAE.load_any(arg), folder, folder
    repo_id, sae_id = hub.parse_uri(arg)
    folder = hub.download(repo_id, sae_id)
    out = "--".join([repo_id, *([sae_id] if sae_id else [])]).replace("/", "--")
    return SAE.load_any(folder), folder, Path("runs") / "hub" / out
