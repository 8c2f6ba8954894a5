"""Where a command's activations come from: `resolve` turns a DataConfig (a value, built by the
command line or by hand) into the training and held-out sources, reading the request and never
changing it. Also what a run records about its data and the SAE a RUN argument names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .config import MIN_EVAL_TOKENS, DataConfig
from .data.activations import StreamSource, open_source
from .data.cache import (
    STORAGE_DTYPES,
    ActivationCache,
    CacheSpec,
    check_spec,
    hookpoint_caches,
    read_manifest,
)
from .data.harvesting import harvested_points
from .data.hooks import SITES, HookPoint, parse_hookpoints
from .data.models import load_model
from .data.pipeline import prepare_activations
from .data.side_by_side import SideBySide
from .data.streaming import heldout_activations, shuffle_buffer, streamed_source
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
class Job:
    """The SAEs of one hook point of a run: its folder in the run (None: the run itself), its
    columns in the training rows (None: the whole row), its widths, what its SAEs record and
    its held-out data."""

    name: str | None
    columns: torch.Tensor | None
    d_in: int
    d_out: int | None
    provenance: dict
    heldout: object


@dataclass
class Data:
    """Resolved training data: the training and held-out sources, the ground-truth dictionary
    of generated data (else None), the training tokens to use when none are asked for (the
    tokens harvested or generated; None: one pass), what an SAE's config records of it, and a
    transcoder's output width (its sources hold x and y side by side). jobs: the hook points
    whose SAEs train on it (one, the whole row, unless several were asked for)."""

    train: object
    heldout: object
    dictionary: torch.Tensor | None
    tokens: int | None
    provenance: dict
    d_out: int | None = None
    jobs: list[Job] = field(default_factory=list)

    def __post_init__(self):
        if not self.jobs:
            d_in = self.train.d_in - (self.d_out or 0)
            self.jobs = [Job(None, None, d_in, self.d_out, self.provenance, self.heldout)]


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
    if request.hookpoints and (request.layer is not None or request.site is not None):
        raise UsageError("--hookpoints names the layers and sites: leave out --layer and --site")
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


def resolve(request: DataConfig, seed: int = 0, plan: PointsPlan | None = None) -> Data:
    """The training data of a request (seed: the shuffle buffer's when streaming; plan: its
    points_plan, when already made). Harvesting fills the embedded default job's model, layer
    and dataset where unset."""
    check_request(request)
    plan = plan or points_plan(request)
    if plan is not None:
        return points_data(request, seed, plan)
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
    inputs, targets = pair.caches.values()
    target = HookPoint(**{k: targets.manifest["spec"][k] for k in ("layer", "site")})
    recorded = {"activations": request.activations, **inputs.manifest["spec"]}
    recorded.update(target_layer=target.layer, target_site=target.site)
    return Data(train, heldout, None, None, recorded, d_out=targets.d_in)


def target_of(request: DataConfig, source: HookPoint, several: bool = False) -> HookPoint:
    """A transcoder's target hook point: --target-site of --target-layer (default: the
    input's block), after the input in the forward pass."""
    if several and request.target_layer is not None:
        raise UsageError(
            "--target-layer names one block: with several hook points each transcoder writes to "
            "its own block's --target-site"
        )
    if request.target_site is None:
        raise UsageError("a transcoder needs --target-site (and --site, the input)")
    target = HookPoint(
        source.layer if request.target_layer is None else request.target_layer,
        request.target_site,
    )
    if (target.layer, SITES.index(target.site)) <= (source.layer, SITES.index(source.site)):
        raise UsageError(
            f"the target hook point {target.name} must come after the input {source.name} in "
            "the forward pass"
        )
    return target


def paired_source(request: DataConfig) -> SideBySide:
    """The input and target hook points' caches in --activations (a cache of several hook
    points, saelab cache --hookpoints), side by side."""
    if not request.activations or not hookpoint_caches(request.activations):
        raise UsageError(
            "a transcoder reads a cache of both its hook points: build it with saelab cache "
            "--hookpoints layers.L.SITE,layers.L.TARGET and pass it as --activations, or "
            "stream them with --hookpoints layers.L.SITE --no-cache"
        )
    if request.layer is None:
        raise UsageError("a transcoder needs --layer and --target-site (and --site, the input)")
    source = HookPoint(request.layer, request.hook_site)
    return cached_points(request.activations, [source, target_of(request, source)])


def cached_points(root: str, points: list[HookPoint]) -> SideBySide:
    """The caches of `points` in `root` (saelab cache --hookpoints), side by side."""
    held = hookpoint_caches(root)
    missing = [p.name for p in points if p.name not in held]
    if missing:
        raise UsageError(
            f"{root} holds no cache of {', '.join(missing)} (it holds {', '.join(held)})"
        )
    return SideBySide({p.name: ActivationCache(Path(root) / p.name) for p in points})


def several_points(request: DataConfig) -> bool:
    """Whether --activations is a cache of several hook points to train an SAE at each (not a
    transcoder, which reads two of them)."""
    return bool(
        request.activations and not request.transcodes and hookpoint_caches(request.activations)
    )


@dataclass
class PointsPlan:
    """The hook points a run of several trains at: (input, target or None) per job, and the
    model they are streamed from (None: a cache)."""

    pairs: list[tuple[HookPoint, HookPoint | None]]
    lm: object = None

    @property
    def names(self) -> list[str]:
        return [point.name for point, _ in self.pairs]


def points_plan(request: DataConfig) -> PointsPlan | None:
    """The hook points of a request for several (--hookpoints, or a cache of several as
    --activations), checked before any harvesting; None for one hook point."""
    if not (request.hookpoints or several_points(request)):
        return None
    check_request(request)
    lm = None
    if request.activations:
        held = hookpoint_caches(request.activations)
        if not held:
            raise UsageError(
                f"{request.activations} is not a cache of several hook points (saelab cache "
                "--hookpoints): --hookpoints trains from one, or streams with --no-cache"
            )
        n_layers = 1 + max(int(name.split(".")[1]) for name in held)
    else:
        if not request.stream:
            raise UsageError(
                "several hook points train from a cache of all of them (saelab cache "
                "--hookpoints ... --out DIR, then --activations DIR) or streamed from the model "
                "(--no-cache)"
            )
        request = request.with_default_hook()
        lm = load_model(request.model, dtype=request.model_dtype, device=request.device)
        n_layers = lm.n_layers
    inputs = parse_hookpoints(request.hookpoints or ",".join(held), n_layers)
    pairs = [
        (p, target_of(request, p, several=True) if request.transcodes else None) for p in inputs
    ]
    if request.activations:
        points = [q for pair in pairs for q in pair if q is not None]
        cached_points(request.activations, list(dict.fromkeys(points)))  # each one is there
    return PointsPlan(pairs, lm)


def points_data(request: DataConfig, seed: int, plan: PointsPlan) -> Data:
    """SAEs (or transcoders) at several hook points trained from one pass: every point's
    activations side by side in each row, one Job per input point with its columns (a
    transcoder's: its input's, then its target's). From a cache of several hook points
    (--activations; every point it holds unless --hookpoints), or streamed from the model
    (--no-cache)."""
    pairs = plan.pairs
    points = list(dict.fromkeys(q for pair in pairs for q in pair if q is not None))
    if request.activations:
        side = cached_points(request.activations, points)
        n_heldout = request.eval_tokens or min(65536, side.n_tokens // 10)
        if n_heldout < MIN_EVAL_TOKENS:
            raise UsageError(f"{side.name}: too few tokens to hold out {MIN_EVAL_TOKENS}")
        train, heldout = side.split(n_heldout)
        columns, tokens = side.columns, None
    else:
        request, lm = request.with_default_hook(), plan.lm
        spec = harvest_spec(replace(request, layer=points[0].layer, site=points[0].site))
        heldout, columns = streamed_heldout(lm, spec, points, request.heldout_tokens)
        train = streamed_points(lm, spec, points, heldout.shape[1], request, seed)
        tokens = request.tokens
    jobs = []
    for point, target in pairs:
        names = [point.name] + ([target.name] if target else [])
        cols = torch.cat([columns[name] for name in names])
        if request.activations:
            spec = side.caches[point.name].manifest["spec"]
            read = request.activations if target else str(Path(request.activations) / point.name)
            recorded = {"activations": read, **spec}
            held = (
                SideBySide({n: heldout.caches[n] for n in names})
                if target
                else heldout.caches[point.name]
            )
        else:
            recorded = dict(provenance(request), layer=point.layer, site=point.site)
            held = heldout[:, cols]
        if target:
            recorded.update(target_layer=target.layer, target_site=target.site)
        d_out = len(columns[target.name]) if target else None
        jobs.append(Job(point.name, cols, len(columns[point.name]), d_out, recorded, held))
    return Data(train, heldout, None, tokens, jobs[0].provenance, jobs=jobs)


def _side_by_side_rows(lm, spec, points: list[HookPoint]):
    for _, _, acts in harvested_points(lm, spec, points):
        yield torch.cat([acts[p.name] for p in points], dim=1)


def streamed_heldout(
    lm, spec, points: list[HookPoint], tokens: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The first `tokens` held-out tokens at every point side by side [n, sum of widths], in
    memory, and each point's columns."""
    parts: dict[str, list[torch.Tensor]] = {p.name: [] for p in points}
    count = 0
    for _, _, acts in harvested_points(lm, replace(spec, split="eval"), points):
        for name, part in parts.items():
            part.append(acts[name])
        count += len(acts[points[0].name])
        if count >= tokens:
            break
    if not count:
        raise UsageError(f"{spec.dataset} gave no held-out tokens to evaluate on")
    blocks = [torch.cat(part)[:tokens] for part in parts.values()]
    columns, start = {}, 0
    for name, block in zip(parts, blocks):
        columns[name] = torch.arange(start, start + block.shape[1])
        start += block.shape[1]
    return torch.cat(blocks, dim=1), columns


def streamed_points(lm, spec, points: list[HookPoint], width: int, request, seed: int):
    """Every point's activations side by side (rows of `width`), harvested while training,
    through a shuffle buffer of request.shuffle_buffer tokens kept in the storage dtype."""
    dtype = STORAGE_DTYPES[request.storage_dtype]
    rows = (r.to(dtype) for r in _side_by_side_rows(lm, spec, points))
    return StreamSource(
        shuffle_buffer(rows, request.shuffle_buffer, seed),
        name=f"{spec.model} at {len(points)} hook points (streamed)",
        d_in=width,
    )


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
