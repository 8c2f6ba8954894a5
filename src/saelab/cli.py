"""The `saelab` command line: parses arguments and calls the API. Its flags are generated from
the config dataclasses (flags.py), where data comes from is sources.py, what the evaluations
are is eval/registry.py, and the run directory is rundir.py."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from . import plan, rundir
from .attribution import attribute, attribution_page
from .config import (
    DEFAULT_DATASET,
    DEFAULT_LAYER,
    DEFAULT_MODEL,
    DataConfig,
    SAEConfig,
    TrainConfig,
)
from .contexts import eval_context, evaluation_data, sweep_context
from .data.cache import (
    ActivationCache,
    build_cache,
    build_caches,
    existing_manifest,
)
from .data.hooks import DEFAULT_SITE, blocks_of, parse_hookpoints
from .data.models import load_model, load_tokenizer
from .data.side_by_side import SideBySide
from .errors import SaelabError, UsageError
from .eval.full import summary_lines
from .eval.neuronpedia import write_neuronpedia
from .eval.registry import (
    EVALUATIONS,
    EvalContext,
    evaluate_with,
    evaluations,
    read_results,
    sweep_columns,
)
from .eval.report import ReportConfig, write_report
from .eval.saebench.llm import ChatConfig, chat_model
from .eval.saebench.output import flat_metrics
from .flags import (
    COUNT,
    add_eval_arguments,
    add_grid_arguments,
    add_options,
    add_sae_arguments,
    check_device,
    config_from,
    eval_configs,
    sweep_evals,
    sweep_options,
    sweep_points,
    train_grid,
)
from .io import releases
from .io.atomic import atomic_write
from .io.circuit_tracer import export_transcoder_set
from .io.external import EXPORTS, export
from .sae.model import SAE
from .sources import (
    dictionary_recovery,
    harvest_spec,
    harvests,
    points_plan,
    resolve,
    sae_source,
)
from .steering import generations, inspection_page, prompt_ids, top_latents
from .sweep import check_out, knob_label, run_sweep
from .train.distributed import (
    barrier,
    init_from_env,
    is_distributed,
    mesh,
    owns,
    rank,
    shutdown,
)
from .train.interrupt import Interrupted
from .train.loop import train_many
from .train.wandb_log import require_wandb
from .version import __version__

# which DataConfig fields each command takes as flags
HARVEST = (
    "model",
    "layer",
    "site",
    "dataset",
    "text_column",
    "ctx_len",
    "include_special",
    "storage_dtype",
    "model_dtype",
    "device",
)
FOR_CACHE = (*HARVEST, "hookpoints", "split", "tokens", "progress")
FOR_EVAL = ("activations", *HARVEST, "eval_tokens", "cache_dir", "progress")
# train and sweep leave out --split and take --tokens from TrainConfig (DataConfig reads it too)
FOR_TRAINING = ("split", "tokens")


TRAINING_DATA = (
    f"one of: --activations; --synthetic; or a model to harvest from (default: {DEFAULT_MODEL} "
    f"block {DEFAULT_LAYER} {DEFAULT_SITE} on {DEFAULT_DATASET}, cached under --cache-dir)"
)
HELD_OUT_DATA = (
    "--activations, or held-out text of a model (default: the model, hook and dataset the "
    "SAE's config records), cached under --cache-dir"
)


def _add_data_group(p, description: str, only=None, skip=(), required=()) -> None:
    group = p.add_argument_group("data", description)
    add_options(group, DataConfig, only=only, skip=skip, required=required)


# -- saelab cache ----------------------------------------------------------------------------
def _add_cache_parser(commands) -> None:
    p = commands.add_parser(
        "cache",
        help="harvest activations of a language model into an activation cache",
        description="Harvest activations at one hook site into sharded files plus a manifest. "
        "Rerunning resumes an interrupted cache; a larger --tokens extends it.",
    )
    _add_data_group(p, "the model, hook and text to harvest", only=FOR_CACHE, required=("tokens",))
    p.add_argument(
        "--shard-tokens", type=COUNT, default=65536, help="activations per shard (default: 65536)"
    )
    p.add_argument("--out", metavar="DIR", required=True, help="cache directory")
    p.set_defaults(func=cmd_cache)


def cmd_cache(args) -> None:
    request = config_from(DataConfig, args)
    if request.hookpoints:
        _cache_hookpoints(args, request)
        return
    spec = harvest_spec(request)
    with rundir.locked(args.out):
        existing_manifest(Path(args.out), spec)  # refuse what cannot be extended, before loading
        lm = load_model(spec.model, dtype=request.model_dtype, device=request.device)
        cache = build_cache(
            lm,
            args.out,
            spec,
            request.tokens,
            shard_tokens=args.shard_tokens,
            progress=request.progress,
        )
    print(
        f"{cache.n_tokens} activations [{cache.d_in}] of {spec.model} layer {spec.layer} "
        f"{spec.site} in {len(cache.shards)} shards: {args.out}"
    )


def _cache_hookpoints(args, request: DataConfig) -> None:
    """`saelab cache --hookpoints`: one cache per hook point, OUT/<layers.L.SITE>, from one
    forward pass per batch, their rows aligned."""
    if request.layer is not None or request.site is not None:
        raise UsageError("--hookpoints names the layers and sites: leave out --layer and --site")
    spec = harvest_spec(replace(request, layer=0))
    with rundir.locked(args.out):
        lm = load_model(spec.model, dtype=request.model_dtype, device=request.device)
        points = parse_hookpoints(request.hookpoints, len(blocks_of(lm.model)))
        caches = build_caches(
            lm,
            {point: Path(args.out) / point.name for point in points},
            spec,
            request.tokens,
            shard_tokens=args.shard_tokens,
            progress=request.progress,
        )
    first = next(iter(caches.values()))
    print(
        f"{first.n_tokens} activations of {spec.model} at {len(caches)} hook points, aligned "
        f"row by row, in {len(first.shards)} shards each: {args.out}/{{" + ",".join(caches) + "}"
    )


# -- saelab train ----------------------------------------------------------------------------
def _add_train_parser(commands) -> None:
    p = commands.add_parser(
        "train",
        help="train an SAE on activations and evaluate it on a held-out slice",
        description="Train an SAE, evaluate it on held-out activations and save it into --out. "
        "With no arguments: the default job (SmolLM2-135M block 15 resid_post on Wikipedia, "
        "batchtopk k=32 x8).",
    )
    _add_data_group(p, TRAINING_DATA, skip=FOR_TRAINING)
    add_sae_arguments(p)
    add_options(p.add_argument_group("training"), TrainConfig)
    run = p.add_argument_group("run")
    run.add_argument(
        "--out",
        metavar="RUN",
        default=None,
        help="run directory (default: runs/<date>-<time>-<arch>)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> None:
    request = config_from(DataConfig, args)
    if is_distributed() and (harvests(request) or args.out is None):
        raise UsageError(
            "under torchrun, train from --activations (build it first with saelab cache) "
            "or --synthetic, and name the run with --out"
        )
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{'+'.join(args.arch)}"
    out = Path(args.out) if args.out else Path("runs") / stamp
    train_cfg = config_from(TrainConfig, args, out_dir=str(out))
    grid = train_grid(args)
    if args.skip and not request.transcodes:
        raise UsageError("--skip adds a transcoder's skip path: it needs --target-site")
    args.out = str(out)
    plan = points_plan(request)  # several hook points: checked (and the model loaded) first
    # one folder per SAE: OUT, OUT/<arch-k...> for a grid, OUT/<layers.L.SITE>/... for several
    # hook points (all trained from one pass over the data)
    runs = {}
    for name in [None] if plan is None else plan.names:
        base = out if name is None else out / name
        runs[name] = [base] if len(grid) == 1 else [base / _run_name(grid, *g) for g in grid]
    with rundir.locked(out) if rank() == 0 else nullcontext():
        every_run = [run for each in runs.values() for run in each]
        rundir.prepare(out, every_run, train_cfg.resume, args.overwrite)
        _train(args, resolve(request, train_cfg.seed, plan), train_cfg, grid, runs)


def _run_name(grid, arch, knob, value, others) -> str:
    """The folder of one SAE of a grid: its architecture, and its knob's value where it needs
    one to be told apart."""
    several = sum(a == arch for a, *_ in grid) > 1
    named = knob and (knob == "k" or several)
    return f"{arch}-{knob_label(knob).format(value)}" if named else arch


def _train(args, data, train_cfg, grid, runs) -> None:
    train_cfg = replace(train_cfg, total_tokens=train_cfg.total_tokens or data.tokens)
    saes, train_cfgs, columns, jobs = [], [], [], []
    spread = train_cfg.distribute_hookpoints
    if spread and data.jobs[0].name is None:
        raise UsageError("--distribute-hookpoints spreads several hook points: pass --hookpoints")
    index = -1
    for job in data.jobs:
        if job.name is not None and rank() == 0:
            print(f"hook point {job.name}:")
        for (arch, knob, value, others), run in zip(grid, runs[job.name]):
            index += 1
            if spread and not owns(index):
                continue
            sae_cfg = SAEConfig(
                arch=arch,
                d_in=job.d_in,
                d_sae=args.expansion * job.d_in,
                input_scaling=args.input_scaling,  # None: the default for its kind
                d_out=job.d_out,
                skip=args.skip,
                metadata=job.provenance,
                **others,
                **({knob: value} if knob else {}),
            )
            # under torchrun with --latent-parallel, only this rank's latents are made
            shard = mesh(train_cfg.latent_parallel).shard(sae_cfg.d_sae)
            sae = SAE(sae_cfg, seed=train_cfg.seed, shard=shard)
            saes.append(sae.to(args.device))
            train_cfgs.append(replace(train_cfg, out_dir=str(run)))
            columns.append(job.columns)
            jobs.append(job)
            if rank() == 0 or spread:
                print(
                    f"training {arch}{f' {knob}={value}' if knob else ''} d_in={sae.cfg.d_in} "
                    f"d_sae={sae.cfg.d_sae} -> {run}"
                )
    heldout = data.heldout if train_cfg.eval_every_tokens else None
    barrier()  # rank 0 has prepared the run folders
    if not saes:  # more ranks than hook points
        return
    results = train_many(saes, data.train, train_cfgs, heldout=heldout, columns=columns)
    if rank() != 0 and not spread:  # each rank evaluates the SAEs it trained
        return
    for result, cfg, job in zip(results, train_cfgs, jobs):
        extra = {"train_tokens": result.tokens, **rundir.training_dead(result.history)}
        if data.dictionary is not None:
            extra["dictionary_recovery"] = dictionary_recovery(result.sae, data.dictionary)
        context = EvalContext(
            data=job.heldout, out_dir=cfg.out_dir, batch_size=cfg.batch_size, extra=extra
        )
        _print_summary(Path(cfg.out_dir), evaluate_with(EVALUATIONS["core"], result.sae, context))
        if isinstance(job.heldout, ActivationCache):  # it keeps token ids: the browser shows text
            print(f"  browse its latents:         saelab report {cfg.out_dir}")


def _print_summary(out: Path, results: dict) -> None:
    print(f"\nheld-out evaluation ({results['n_tokens']} tokens):")
    print("\n".join(summary_lines(results)))
    print(f"\nwritten to {out}/:")
    print(f"  {rundir.CFG}, {rundir.WEIGHTS}   the SAE (load with saelab.SAE.load('{out}'))")
    print(
        f"  {rundir.EVAL}                    held-out metrics, AFA analysis, L0 histogram, "
        "latent densities"
    )
    print("  " + ", ".join(results["plots"].values()) + "   plots")
    print(f"  {rundir.HISTORY}                training history, one JSON record per log step")


# -- saelab eval -----------------------------------------------------------------------------
def _add_eval_parser(commands) -> None:
    p = commands.add_parser(
        "eval",
        help="evaluate an SAE (saelab, SAELens, sparsify, dictionary_learning; a directory or "
        "hf://): metrics, AFA analysis, plots, SAEBench's evals",
        description="Evaluate an SAE directory (saelab, SAELens, EleutherAI sparsify or "
        "dictionary_learning format; or hf://ORG/NAME[/SAE_ID] from the Hugging Face Hub): "
        "reconstruction metrics, the AFA analysis (eps_LBO, ZF plot), decoder "
        "quasi-orthogonality, L0 distribution; --model and --dataset add downstream CE/KL with "
        "the SAE spliced in. Writes eval.json and PNGs. --evals adds SAEBench's "
        "interpretability evaluations (absorption, sparse_probing, autointerp), offline, each "
        "written to eval_results/<name>.json in SAEBench's schema.",
    )
    p.add_argument(
        "run",
        metavar="RUN",
        help="the SAE directory, or hf://ORG/NAME[/SAE_ID] on the Hugging Face Hub (outputs then "
        "go under runs/hub/ unless --out)",
    )
    _add_data_group(p, HELD_OUT_DATA, only=FOR_EVAL)
    p.add_argument("--out", metavar="DIR", help="where to write eval.json and plots (default: RUN)")
    add_eval_arguments(p)
    add_options(p.add_argument_group("chat model"), ChatConfig)
    p.set_defaults(func=cmd_eval)


def _chat(args, wanted, device: str):
    """The chat model the evaluations need (loaded before any harvesting), or None."""
    chat_cfg = config_from(ChatConfig, args)
    needed = any(e.needs_chat for e in wanted)
    chat_cfg.check(needed)
    if not needed:
        return None
    return chat_model(
        chat_cfg.llm_url, chat_cfg.llm, chat_cfg.llm_model, chat_cfg.llm_key_env, device
    )


def cmd_eval(args) -> None:
    wanted = evaluations(args.evals)
    configs = eval_configs(args, [*wanted, EVALUATIONS["core"]])
    request = config_from(DataConfig, args)
    sae, files, default_out = sae_source(args.run)
    out_dir = Path(args.out or default_out)
    rundir.check_output_folder(out_dir, files)  # before any model or data is loaded
    chat = _chat(args, wanted, request.device)
    request = request.with_recorded_hook(sae.cfg.metadata)
    context = eval_context(request, wanted, configs["core"], args.model is not None, chat)
    context.out_dir = out_dir
    context.extra = rundir.training_dead(rundir.read_history(files))
    print(f"{sae.cfg.arch} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae}:")
    written: dict[str, list[str]] = {}
    for evaluation in wanted:
        document = evaluate_with(evaluation, sae, context, configs[evaluation.name])
        print("\n".join(evaluation.summary(document)))
        for file in map(Path, evaluation.files(document)):
            written.setdefault(str(context.out_dir / file.parent), []).append(file.name)
    for folder, names in written.items():
        print(f"written to {folder}/: " + ", ".join(names))


# -- saelab report ---------------------------------------------------------------------------
def _add_report_parser(commands) -> None:
    p = commands.add_parser(
        "report",
        help="write an HTML feature browser for an SAE: metrics, plots, latents with their "
        "contexts",
        description="Write one self-contained HTML page (opens offline): the SAE's metrics and "
        "plots and, for latents chosen across density bands (an equal share from each decade "
        "of firing density; or --latents), its density, a histogram of its activations, its "
        "top-activating held-out contexts and contexts sampled from lower activation quantiles "
        "with each token shaded by its activation, the logit lens of its decoder direction, "
        "and its autointerp explanation when eval_results/autointerp.json has one. Needs an "
        "activation cache (it keeps the token ids); by default the held-out cache of the model "
        "the SAE was trained on.",
    )
    p.add_argument(
        "run",
        metavar="RUN",
        help="the SAE directory (saelab, SAELens, sparsify or dictionary_learning), or "
        "hf://ORG/NAME[/SAE_ID] (the page then goes under runs/hub/ unless --out)",
    )
    _add_data_group(p, HELD_OUT_DATA, only=FOR_EVAL)
    add_options(p.add_argument_group("page"), ReportConfig)
    p.add_argument("--out", metavar="FILE.html", help=f"the page (default: RUN/{rundir.REPORT})")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> None:
    page = config_from(ReportConfig, args)
    request = config_from(DataConfig, args)
    sae, files, default_out = sae_source(args.run)
    page.check(sae.cfg.d_sae)
    data = evaluation_data(request.with_recorded_hook(sae.cfg.metadata))
    # a transcoder's latents are read from its input: contexts come from the input's cache
    inputs = next(iter(data.caches.values())) if isinstance(data, SideBySide) else data
    if not isinstance(inputs, ActivationCache):
        raise UsageError(
            "the feature browser needs token ids: pass an activation cache directory "
            f"(saelab cache ...), not {request.activations}"
        )
    run, out = files, Path(args.out or default_out / rundir.REPORT)
    results = rundir.read_eval(run)
    if results is None:  # evaluate first, so the page has metrics and plots
        context = EvalContext(data=data, out_dir=out.parent)
        results = evaluate_with(EVALUATIONS["core"], sae, context)
        run = out.parent
    plots = [run / name for name in results.get("plots", {}).values() if (run / name).is_file()]
    lm = None
    if page.logit_lens or page.steer:
        lm = load_model(inputs.spec.model, dtype=request.model_dtype, device=request.device)
    for key in ("layer", "site"):  # where --steer splices it: where its activations come from
        sae.cfg.metadata.setdefault(key, getattr(inputs.spec, key))
    outputs = read_results(files)
    autointerp = outputs.get("autointerp")
    explanations = None
    if autointerp:
        explainer = autointerp["eval_config"].get("explainer")
        explanations = {
            d["latent"]: {**d, "explainer": explainer} for d in autointerp["eval_result_details"]
        }
    tokenizer = lm.tokenizer if lm is not None else load_tokenizer(inputs.spec.model)
    shown = write_report(
        sae,
        inputs,
        out,
        tokenizer,
        results,
        plots,
        latents=page.latents,
        top_n=page.top,
        n_contexts=page.contexts,
        n_samples=page.samples,
        lm=lm,
        explanations=explanations,
        interp=flat_metrics(outputs),
        steer=page.steer,
        lens=page.logit_lens,
    )
    print(f"feature browser with {len(shown)} latents on {inputs.n_tokens} held-out tokens: {out}")
    if page.neuronpedia:
        source = f"{inputs.spec.layer}-saelab-{sae.cfg.arch}-{inputs.spec.site}"
        write_neuronpedia(shown, tokenizer, page.neuronpedia, inputs.spec.model, source)
        print(f"Neuronpedia feature dashboards of the same latents: {page.neuronpedia}")


# -- saelab push -----------------------------------------------------------------------------
def _add_push_parser(commands) -> None:
    p = commands.add_parser(
        "push",
        help="upload an SAE with its evaluation and a model card to the Hugging Face Hub",
        description="Upload an SAE directory (any layout saelab reads) to a Hub repo as one "
        "commit: the SAE in saelab's format, eval.json, eval_results/, the plots and a model "
        "card (README.md with library_name: saelab, the model and hook, the training settings "
        "and held-out metrics). Needs network and a token with write access (HF_TOKEN, or "
        "huggingface-cli login). Load it back with SAE.from_pretrained or hf://REPO[/SAE_ID] "
        "wherever saelab takes an SAE.",
    )
    p.add_argument(
        "run", metavar="RUN", help="the SAE directory (or hf://ORG/NAME[/SAE_ID], to copy one)"
    )
    p.add_argument("repo", metavar="REPO", help="the Hub repo, ORG/NAME (created if missing)")
    p.add_argument(
        "--sae-id",
        metavar="ID",
        help="a folder in the repo for this SAE (e.g. blocks.15.hook_resid_post), so one repo "
        "holds many",
    )
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.set_defaults(func=cmd_push)


def cmd_push(args) -> None:
    if args.repo.count("/") != 1 or args.repo.startswith(("/", ".")):
        raise UsageError(f"REPO must be a Hub repo id ORG/NAME, got {args.repo!r}")
    sae, files, _ = sae_source(args.run)
    url = sae.push_to_hub(args.repo, sae_id=args.sae_id, private=args.private, run=files)
    where = args.repo + (f"/{args.sae_id}" if args.sae_id else "")
    print(f"pushed {sae.cfg.arch} d_sae={sae.cfg.d_sae} to {where}: {url}")


# -- saelab steer / inspect -------------------------------------------------------------------
def _model_of(sae, given: str | None):
    """The model an SAE belongs to: --model, else the one its metadata records."""
    name = given or sae.cfg.metadata.get("model")
    if not name:
        raise UsageError("this SAE does not record its model: pass --model")
    return load_model(name)


def _add_steer_parser(commands) -> None:
    p = commands.add_parser(
        "steer",
        help="generate with a latent set, scaled or added, beside the clean generation",
        description="Generate from a prompt with the SAE spliced into its model and one "
        "intervention on its codes (--value sets the latent, --scale multiplies it, --add adds "
        "a multiple of its decoder direction), beside the clean model's generation, greedy and "
        "sampled (the same seed for both), through the model's own generate. The SAE goes in "
        "with its error term, so without the intervention the model is the clean one.",
    )
    p.add_argument("run", metavar="RUN", help="the SAE (any layout saelab reads)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--latent", type=int, required=True, help="the latent to intervene on")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--value", type=float, help="set the latent to this activation")
    how.add_argument("--scale", type=float, help="multiply the latent by this factor")
    how.add_argument("--add", type=float, help="add this much of the latent (its direction)")
    p.add_argument(
        "--positions",
        choices=("all", "prompt", "new"),
        default="all",
        help="where: every position, the prompt's, or the generated ones (default: all)",
    )
    p.add_argument("--max-new-tokens", type=COUNT, default=40)
    p.add_argument("--seed", type=int, default=0, help="for the sampled generations")
    p.add_argument("--model", help="the model (default: the one the SAE records)")
    p.set_defaults(func=cmd_steer)


def cmd_steer(args) -> None:
    sae, _, _ = sae_source(args.run)
    lm = _model_of(sae, args.model)
    ids = prompt_ids(lm, args.prompt, room=args.max_new_tokens)
    n = ids.shape[1]
    positions = {
        "all": None,
        "prompt": range(n),
        "new": range(n, n + args.max_new_tokens),
    }[args.positions]
    op, value = next(
        (op, v) for op in ("value", "scale", "add") if (v := getattr(args, op)) is not None
    )
    do = {"value": "set", "scale": "scale", "add": "add"}[op]

    def edit(run):
        getattr(run, do)(args.latent, value, positions=positions)

    texts = generations(lm, sae, ids, edit, args.max_new_tokens, args.seed)
    print(f"latent {args.latent}: {do} {value:g} at {args.positions} positions")
    for mode, pair in texts.items():
        print(f"\n{mode}:")
        print(f"  clean:   {args.prompt}{pair['clean']!r}")
        print(f"  steered: {args.prompt}{pair['steered']!r}")


def _add_inspect_parser(commands) -> None:
    p = commands.add_parser(
        "inspect",
        help="the most active latents at every token of a text",
        description="Run a text through the model with the SAE spliced in (error term kept, "
        "so the model is unchanged) and show, per token, its most active latents: in the "
        "terminal and as a small HTML page whose latents link to the run's feature browser.",
    )
    p.add_argument("run", metavar="RUN", help="the SAE (any layout saelab reads)")
    p.add_argument("text")
    p.add_argument("--top", type=COUNT, default=5, help="latents per token (default: 5)")
    p.add_argument("--model", help="the model (default: the one the SAE records)")
    p.add_argument("--out", metavar="FILE.html", help="the page (default: RUN/inspect.html)")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> None:
    sae, files, default_out = sae_source(args.run)
    lm = _model_of(sae, args.model)
    rows = top_latents(lm, sae, prompt_ids(lm, args.text), args.top)
    for row in rows:
        latents = ", ".join(f"{i} ({v:.2f})" for i, v in row["latents"])
        print(f"{row['position']:>4} {row['token']!r:>14}  {latents}")
    out = Path(args.out or default_out / "inspect.html")
    report = files / rundir.REPORT
    link = str(report.resolve()) if report.is_file() else None
    inspection_page(rows, f"{sae.cfg.arch} d_sae={sae.cfg.d_sae}: {args.text[:60]}", link, out)
    print(
        f"\nwritten to {out}" + ("" if link else " (saelab report RUN adds latent pages to link)")
    )


def _add_attribute_parser(commands) -> None:
    p = commands.add_parser(
        "attribute",
        help="which latents carry a prediction: activation x gradient, checked by ablation",
        description="Score every active latent at every position of a prompt by activation x "
        "gradient of the next token's log-probability (or its logit difference to --contrast), "
        "the SAE spliced in with its error term (Marks et al. 2024); the --top latents are also "
        "zeroed for real, the measured change beside the linear estimate. Prints a table; "
        "--out DIR writes attribution.json and attribution.html (latents linked to the run's "
        "feature browser).",
    )
    p.add_argument("run", metavar="RUN", help="the SAE (any layout saelab reads)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--target", required=True, help="the next token, e.g. ' Paris' (one token)")
    p.add_argument("--contrast", help="score the logit difference to this token instead")
    p.add_argument("--top", type=COUNT, default=10, help="latents checked by ablation")
    p.add_argument("--model", help="the model (default: the one the SAE records)")
    p.add_argument("--out", metavar="DIR", help="write attribution.json and attribution.html")
    p.set_defaults(func=cmd_attribute)


def cmd_attribute(args) -> None:
    sae, files, _ = sae_source(args.run)
    lm = _model_of(sae, args.model)
    start = time.perf_counter()
    document = attribute(lm, sae, args.prompt, args.target, args.contrast, args.top)
    seconds = time.perf_counter() - start
    print(
        f"{document['metric']} of {args.target!r}: clean {document['clean_metric']:.4f}; every "
        f"latent zeroed {document['total_effect']:+.4f} (measured), "
        f"{document['latent_attribution_sum']:+.4f} (attributions); error term "
        f"{document['error_attribution']:+.4f}; {seconds:.1f} s"
    )
    print(f"{'pos':>4} {'token':>12} {'latent':>7} {'act':>8} {'attribution':>12} {'zeroed':>10}")
    for row in document["latents"][: max(args.top, 10)]:
        zeroed = "" if row["ablation_effect"] is None else f"{row['ablation_effect']:+.4f}"
        print(
            f"{row['position']:>4} {row['token']!r:>12} {row['latent']:>7} "
            f"{row['activation']:>8.3f} {row['attribution']:>+12.4f} {zeroed:>10}"
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "attribution.json"
        atomic_write(path, lambda p: p.write_text(json.dumps(document, indent=1) + "\n"))
        report = files / rundir.REPORT
        attribution_page(
            document, str(report.resolve()) if report.is_file() else None, out / "attribution.html"
        )
        print(f"written to {path} and {out / 'attribution.html'}")


# -- saelab export --------------------------------------------------------------------------
EXPORT_FORMATS = (*EXPORTS, "circuit_tracer")


def _add_export_parser(commands) -> None:
    p = commands.add_parser(
        "export",
        help="write SAEs in another library's layout (SAELens, sparsify, dictionary_learning, "
        "circuit-tracer)",
        description="Write an SAE (any layout saelab reads) as an SAELens, sparsify or "
        "dictionary_learning directory, loadable by that library's own loader; or a set of "
        "transcoders, one per layer from 0 (several RUNs, or a folder of runs such as a sweep), "
        "as a circuit-tracer transcoder set (config.yaml + layer_{i}.safetensors).",
    )
    p.add_argument("runs", metavar="RUN", nargs="+", help="the SAE(s), or folders of runs")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="the layout")
    p.add_argument("--out", metavar="DIR", required=True, help="the folder to write")
    p.add_argument(
        "--model-name",
        metavar="HUB_ID",
        help="circuit_tracer: the Hub id of the model it loads (default: the one the "
        "transcoders record)",
    )
    p.set_defaults(func=cmd_export)


def _runs_in(arg: str) -> list[str]:
    """A RUN argument, or the runs inside a folder that is not itself an SAE (a sweep)."""
    folder = Path(arg)
    if folder.is_dir() and not (folder / rundir.CFG).is_file():
        runs = sorted(str(run) for run in folder.iterdir() if (run / rundir.CFG).is_file())
        if not runs:
            raise UsageError(f"{arg} is neither an SAE nor a folder of SAEs")
        return runs
    return [arg]


def cmd_export(args) -> None:
    runs = [run for arg in args.runs for run in _runs_in(arg)]
    if args.format != "circuit_tracer":
        if len(runs) != 1:
            raise UsageError(f"--format {args.format} writes one SAE; got {len(runs)}")
        if args.model_name:
            raise UsageError("--model-name applies to --format circuit_tracer")
        sae, _, _ = sae_source(runs[0])
        export(sae, args.out, args.format)
        print(f"wrote {sae.cfg.arch} d_sae={sae.cfg.d_sae} as {args.format} to {args.out}")
        return
    saes = [sae_source(run)[0] for run in runs]
    out = export_transcoder_set(saes, args.out, args.model_name)
    print(
        f"wrote {len(saes)} transcoders (layers 0-{len(saes) - 1}) as a circuit-tracer "
        f"transcoder set to {out}"
    )


# -- saelab plan ----------------------------------------------------------------------------
def _add_plan_parser(commands) -> None:
    p = commands.add_parser(
        "plan",
        help="memory per rank of a training run, for DDP and each latent-parallel split",
        description="Before a launch: the memory one rank holds while it trains (parameters, "
        "gradients, Adam's moments, DDP's buckets, the batch, the codes, the selection's "
        "buffers), for plain data parallelism and each --latent-parallel split of the GPUs, "
        "and which fits. A floor: allocator caches and the CUDA context come on top "
        "(bench/RESULTS.md compares it with measured peaks).",
    )
    p.add_argument("--d-in", type=int, required=True, help="activation width")
    p.add_argument("--d-sae", type=int, required=True, help="latents in the dictionary")
    p.add_argument("--batch-size", type=int, default=4096, help="global batch (default: 4096)")
    p.add_argument("--gpus", type=int, default=1, help="ranks (default: 1)")
    p.add_argument("--k", type=int, default=64, help="latents per token (default: 64)")
    p.add_argument("--gpu-memory", metavar="SIZE", help="memory per GPU, e.g. 80GB")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> None:
    memory = plan.parse_size(args.gpu_memory) if args.gpu_memory else None
    print(
        f"d_in {args.d_in}, d_sae {args.d_sae}, global batch {args.batch_size}, k {args.k}, "
        f"{args.gpus} GPU(s); GB per rank (float32):"
    )
    print(plan.table(args.d_in, args.d_sae, args.batch_size, args.gpus, args.k, memory))


# -- saelab releases -------------------------------------------------------------------------
def _add_releases_parser(commands) -> None:
    p = commands.add_parser(
        "releases",
        help="list the public SAE releases saelab loads by name",
        description="The public SAE releases saelab knows by name (Gemma Scope 1 and 2, Llama "
        "Scope, EleutherAI's sparsify): their Hub repo, model, hook site and an example SAE id. "
        "Load one with SAE.from_pretrained(RELEASE, sae_id=ID), or pass RELEASE/ID wherever the "
        "command line takes an SAE (saelab eval gemma-scope-2b-pt-res-canonical/layer_12/"
        "width_16k/canonical).",
    )
    p.add_argument("filter", nargs="?", default="", help="only releases whose name holds this")
    p.set_defaults(func=cmd_releases)


def cmd_releases(args) -> None:
    header, *rows = releases.table()
    rows = [row for row in rows if args.filter in row.split()[0]]
    if not rows:
        raise UsageError(f"no release name holds {args.filter!r}; `saelab releases` lists all")
    print("\n".join([header, *rows]))


# -- saelab sweep ----------------------------------------------------------------------------
def _add_sweep_parser(commands) -> None:
    p = commands.add_parser(
        "sweep",
        help="train and evaluate a grid of SAEs on the same activations: one table, Pareto plots",
        description="Train every SAE of a grid (architecture x k or sparsity coefficient x "
        "expansion x input scaling x seed) on the same batches, evaluate each fully (with "
        "downstream CE/KL when the activations come from a model), and write results.csv, "
        "results.json and Pareto plots (NMSE, CE degradation, explained variance and MSE "
        "against L0) into --out. Rerunning the same command resumes an interrupted sweep. Same "
        "data flags as saelab train.",
    )
    _add_data_group(
        p,
        TRAINING_DATA,
        skip=(*FOR_TRAINING, "hookpoints", "stream", "shuffle_buffer"),
    )
    add_grid_arguments(p)
    # a sweep runs in one process: no split over ranks
    one_process = ("latent_parallel", "distribute_hookpoints")
    add_options(
        p.add_argument_group("training"), TrainConfig, skip=("seed", "resume", *one_process)
    )
    p.add_argument(
        "--out", metavar="DIR", default="runs/sweep", help="sweep directory (default: runs/sweep)"
    )
    add_eval_arguments(p)
    add_options(p.add_argument_group("chat model"), ChatConfig)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> None:
    if is_distributed():
        raise UsageError("run sweeps in one process (use torchrun with saelab train)")
    points = sweep_points(args)
    per_point = sweep_evals(args, points)
    wanted = evaluations([*args.evals, *(name for names in per_point.values() for name in names)])
    configs = eval_configs(args, [*wanted, EVALUATIONS["core"]])
    request = config_from(DataConfig, args)
    if points_plan(request) is not None:
        raise UsageError(
            f"{request.activations} holds several hook points: a sweep trains at one, pass its "
            "folder (--activations DIR/layers.L.SITE)"
        )
    chat = _chat(args, wanted, request.device)
    with rundir.locked(args.out):
        check_out(args.out)
        _sweep(args, request, points, per_point, wanted, configs, chat)


def _sweep(args, request, points, per_point, wanted, configs, chat) -> None:
    data = resolve(request)
    train_cfg = config_from(TrainConfig, args, skip=("seed",), out_dir=args.out)
    train_cfg = replace(train_cfg, total_tokens=train_cfg.total_tokens or data.tokens)
    context = sweep_context(
        request, data.heldout, wanted, configs["core"], train_cfg.batch_size, chat
    )
    rows = run_sweep(
        points,
        data.train,
        data.heldout,
        args.out,
        train_cfg,
        sae_options={**sweep_options(args, points), "metadata": data.provenance},
        context=context,
        device=request.device,
        evals=per_point,
        configs=configs,
        d_out=data.d_out,
    )
    print("\n" + "\n".join(sweep_table(rows)))
    print(f"\nwritten to {args.out}/: results.csv, results.json, pareto_*.png, one folder per SAE")


def sweep_table(rows: list[dict]) -> list[str]:
    """The sweep's summary lines: a column for each headline metric of the evaluations that some
    run has ("-" where a run lacks it, e.g. an evaluation asked for on other points only)."""
    columns = [c for c in sweep_columns() if any(c in row for row in rows)]
    widths = [max(20, len(c) + 2) for c in columns]
    lines = [f"{'SAE':<44}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
    for row in rows:
        cells = (
            f"{row[c]:>{w}.4f}" if c in row else f"{'-':>{w}}" for c, w in zip(columns, widths)
        )
        lines.append(f"{row['name']:<44}" + "".join(cells))
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saelab",
        description="Train and evaluate sparse autoencoders (relu, topk, batchtopk, jumprelu, "
        "topafa, ...: see saelab train --help) on language-model activations.",
    )
    parser.add_argument("--version", action="version", version=f"saelab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_cache_parser,
        _add_train_parser,
        _add_eval_parser,
        _add_sweep_parser,
        _add_report_parser,
        _add_push_parser,
        _add_export_parser,
        _add_steer_parser,
        _add_inspect_parser,
        _add_attribute_parser,
        _add_plan_parser,
        _add_releases_parser,
    ):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return
    init_from_env()
    try:
        check_device(args)
        if getattr(args, "wandb", None):
            require_wandb()  # before any harvesting or training
        out = getattr(args, "out", None) if rank() == 0 else None
        with rundir.removed_if_failed(
            out, lambda: getattr(args, "out", None) if rank() == 0 else None
        ):
            args.func(args)
    except (Interrupted, KeyboardInterrupt) as err:
        print(f"saelab: error: {err or 'interrupted'}", file=sys.stderr)
        raise SystemExit(130) from None
    except (SaelabError, ValueError, OSError) as err:
        print(f"saelab: error: {_describe(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        shutdown()


def _describe(err: Exception) -> str:
    """One line for an error: OSErrors name the path and what went wrong."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or err}: {err.filename}"
    return str(err)
