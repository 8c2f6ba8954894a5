"""The `saelab` command line: parses arguments and calls the Python API."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import __version__
from .config import INPUT_SCALINGS, SAEConfig, TrainConfig
from .data.activations import open_source
from .data.cache import STORAGE_DTYPES, ActivationCache, CacheSpec, build_cache, check_spec, read_manifest
from .data.hooks import SITES
from .data.models import DTYPES, load_model, load_tokenizer
from .data.pipeline import ensure_caches, prepare_activations
from .data.streaming import heldout_activations, heldout_contexts, streamed_source
from .data.text import SPLITS
from .data.synthetic import synthetic_activations
from .errors import SaelabError
from .flags import (COUNT, INDEX, RATE, UsageError, add_settings_flags, check_settings_apply,
                    given_settings, grid_of, integer, knobs, list_of)
from .eval.full import full_evaluation, summary_lines
from .eval.report import read_results, write_report
from .io.external import load_any
from .io.format import WEIGHTS_NAME
from .sae.model import SAE
from .sae.registry import ARCHITECTURES
from .sweep import (DEFAULT_ARCH, DEFAULT_EXPANSION, DEFAULT_K, TRAIN_CONFIG_NAME, Downstream, Point, knob_label,
                    read_grid_file, run_sweep, union)
from .train.checkpoint import CHECKPOINT_NAME
from .train.distributed import init_from_env, is_distributed, rank, shutdown
from .train.loop import HISTORY_NAME, train_many
from .train.wandb_log import require_wandb

DEMO = {"n_tokens": 2**17, "d_in": 64, "n_features": 512, "max_active": 64, "train_tokens": 2_000_000}
DEFAULT = {"model": "builtin:smollm2-135m", "layer": 15, "site": "resid_post", "dataset": "builtin:wiki",
           "tokens": 250_000, "eval_tokens": 16_384}
MIN_EVAL_TOKENS = 64  # fewer held-out tokens give no meaningful variance, density or L0 histogram
# what saelab writes into a run directory (--overwrite removes exactly these)
RUN_FILES = (WEIGHTS_NAME, "cfg.json", "eval.json", "report.html", "zf_plot.png", "l0_histogram.png",
             "latent_density.png", HISTORY_NAME, CHECKPOINT_NAME, TRAIN_CONFIG_NAME)


def _add_model_arguments(group, defaults: bool) -> None:
    """--model/--layer/--site/--dataset and the harvesting options shared by cache and train."""
    group.add_argument("--model",
                       help="hub id, local directory, .gguf file or builtin:smollm2-135m"
                       + (f" (default: {DEFAULT['model']})" if defaults else ""))
    group.add_argument("--layer", type=INDEX, help="block index, from 0"
                       + (f" (default: {DEFAULT['layer']})" if defaults else ""))
    group.add_argument("--site", choices=SITES, help="hook site (default: resid_post)")
    group.add_argument("--dataset",
                       help="builtin:wiki, a .txt/.jsonl/.parquet file or folder, or a datasets name"
                       + (f" (default: {DEFAULT['dataset']})" if defaults else ""))
    group.add_argument("--text-column", default="text", help="column/field holding the text (default: text)")
    group.add_argument("--ctx-len", type=integer(2), default=128,
                       help="tokens per packed context, BOS first (default: 128)")
    group.add_argument("--include-special", action="store_true",
                       help="keep BOS/EOS/pad positions in the activations (default: left out)")
    group.add_argument("--storage-dtype", choices=STORAGE_DTYPES, default="float16",
                       help="dtype of cached activations (default: float16)")
    group.add_argument("--model-dtype", choices=DTYPES, default="float32", help="model dtype (default: float32)")
    group.add_argument("--device", default="cpu",
                       help="cpu or cuda, for the model and for training (default: cpu)")


def _spec(args, split: str = "train") -> CacheSpec:
    args.site = args.site or "resid_post"
    missing = [flag for flag, value in (("--model", args.model), ("--layer", args.layer),
                                        ("--dataset", args.dataset)) if value is None]
    if missing:
        raise UsageError(f"{', '.join(missing)} required")
    return CacheSpec(model=args.model, layer=args.layer, site=args.site, dataset=args.dataset, split=split,
                     text_column=args.text_column, ctx_len=args.ctx_len, dtype=args.storage_dtype,
                     include_special=args.include_special)


def _add_cache_parser(commands) -> None:
    p = commands.add_parser(
        "cache", help="harvest activations of a language model into an activation cache",
        description="Harvest activations at one hook site into sharded files plus a manifest. "
        "Rerunning resumes an interrupted cache; a larger --tokens extends it.",
    )
    _add_model_arguments(p, defaults=False)
    p.add_argument("--split", choices=SPLITS, default="train",
                   help="train, or eval: the held-out documents (every 10th) (default: train)")
    p.add_argument("--tokens", type=COUNT, required=True, help="activations to harvest")
    p.add_argument("--shard-tokens", type=COUNT, default=65536, help="activations per shard (default: 65536)")
    p.add_argument("--out", metavar="DIR", required=True, help="cache directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cache)


def cmd_cache(args) -> None:
    spec = _spec(args, args.split)
    lm = load_model(spec.model, dtype=args.model_dtype, device=args.device)
    cache = build_cache(lm, args.out, spec, args.tokens, shard_tokens=args.shard_tokens,
                        progress=not args.no_progress)
    print(f"{cache.n_tokens} activations [{cache.d_in}] of {spec.model} layer {spec.layer} {spec.site} "
          f"in {len(cache.shards)} shards: {args.out}")


def _add_data_arguments(p, streaming: bool) -> None:
    """Where training activations come from (train and sweep)."""
    data = p.add_argument_group(
        "data", f"one of: --activations; --synthetic; or a model to harvest from (default: {DEFAULT['model']} "
        f"block {DEFAULT['layer']} {DEFAULT['site']} on {DEFAULT['dataset']}, cached under --cache-dir)")
    data.add_argument("--activations", metavar="FILE.npy|DIR",
                      help="activations [tokens, d_in]: a .npy file or an activation cache directory")
    data.add_argument("--synthetic", action="store_true",
                      help="generated activations from a known random dictionary (reports dictionary recovery)")
    _add_model_arguments(data, defaults=True)
    data.add_argument("--cache-dir", default="cache", help="where harvested activations are cached (default: cache)")
    if streaming:
        data.add_argument("--no-cache", action="store_true",
                          help="harvest while training, through a shuffle buffer, without writing a cache")
        data.add_argument("--shuffle-buffer", type=COUNT, default=65536,
                          help="tokens mixed by the shuffle buffer with --no-cache (default: 65536)")
    data.add_argument("--eval-tokens", type=integer(MIN_EVAL_TOKENS), default=None,
                      help="held-out tokens for evaluation: from held-out documents when harvesting "
                      f"(default: {DEFAULT['eval_tokens']}), else from the end of the data (default: 10%%, at most 65536)")


def _add_training_arguments(p, seeds: bool) -> None:
    """Optimizer and data-amount flags shared by train and sweep (where --seed is a list)."""
    opt = p.add_argument_group("training")
    if seeds:
        opt.add_argument("--seed", type=list_of(INDEX), default=None,
                         help="seeds for initialisation and data order, a comma list (default: 0)")
    else:
        opt.add_argument("--seed", type=INDEX, default=0, help="seed for initialisation and data order (default: 0)")
    opt.add_argument("--tokens", type=COUNT, default=None,
                     help=f"training tokens (default: {DEFAULT['tokens']} when harvesting, "
                     "else one pass over the training data)")
    opt.add_argument("--batch-size", type=COUNT, default=4096, help="tokens per batch (default: 4096)")
    opt.add_argument("--lr", type=RATE, default=3e-4, help="Adam learning rate (default: 3e-4)")
    opt.add_argument("--dead-tokens", type=COUNT, default=100_000,
                     help="a latent is dead after this many tokens without firing (default: 100000)")
    opt.add_argument("--checkpoint-every", type=COUNT, default=1_000_000, metavar="TOKENS",
                     help="write a checkpoint every this many tokens (default: 1000000)")
    opt.add_argument("--no-progress", action="store_true", help="no progress bars")
    opt.add_argument("--bf16", action="store_true",
                     help="bfloat16 autocast for the encoder matmul (faster on GPUs and CPUs with native bf16)")
    opt.add_argument("--compile", action="store_true", help="torch.compile the loss (see bench/RESULTS.md)")
    opt.add_argument("--wandb", nargs="?", const="saelab", metavar="PROJECT",
                     help="also log training to Weights & Biases (project default: saelab; needs pip install wandb)")


def _add_train_parser(commands) -> None:
    p = commands.add_parser(
        "train",
        help="train an SAE on activations and evaluate it on a held-out slice",
        description="Train an SAE, evaluate it on held-out activations and save it into --out. "
        "With no arguments: the default job (SmolLM2-135M block 15 resid_post on Wikipedia, batchtopk k=32 x8).",
    )
    _add_data_arguments(p, streaming=True)
    sae = p.add_argument_group("SAE")
    sae.add_argument("--arch", type=list_of(str, list(ARCHITECTURES)), default=[DEFAULT_ARCH],
                     help=f"architecture, or a comma list to train several on the same batches: "
                     f"{', '.join(ARCHITECTURES)} (default: {DEFAULT_ARCH})")
    sae.add_argument("--expansion", type=COUNT, default=DEFAULT_EXPANSION,
                     help=f"d_sae = expansion * d_in (default: {DEFAULT_EXPANSION})")
    sae.add_argument("--input-scaling", choices=INPUT_SCALINGS, default="per_token",
                     help="per_token: standardise each token, undone on output (as the BatchTopK reference "
                     "code); expected_norm: scale inputs so E||x||^2 = d_in (folded into the saved "
                     "weights); none (default: per_token)")
    settings = p.add_argument_group("architecture settings", "each applies to the architectures it names; a "
                                    "comma list of a sparsity setting (k, coefficients) trains one SAE per value")
    add_settings_flags(settings, DEFAULT_K)
    _add_training_arguments(p, seeds=False)
    run = p.add_argument_group("run")
    run.add_argument("--out", metavar="RUN", default=None,
                     help="run directory (default: runs/<date>-<time>-<arch>-k<k>)")
    run.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.set_defaults(func=cmd_train)


def _grid(args) -> list[tuple[str, str | None, object, dict]]:
    """(arch, knob, value, other settings) for every SAE to train."""
    given = given_settings(args)
    check_settings_apply(given, args.arch)
    grid = []
    for arch in args.arch:
        knob, values, others = grid_of(arch, given, DEFAULT_K)
        grid += [(arch, knob, value, others) for value in values]
    return grid


def _run_dir(args) -> Path:
    """The run directory: new, or (--resume) an interrupted run, or (--overwrite) a run whose
    files are removed first."""
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: choose one")
    if args.out is None:
        return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{'+'.join(args.arch)}"
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a run directory")
    if args.resume:
        return out
    runs = [out, *(p for p in out.glob("*") if p.is_dir())] if out.is_dir() else []
    if args.overwrite:
        for run in runs:
            for name in RUN_FILES:
                (run / name).unlink(missing_ok=True)
    elif any((run / CHECKPOINT_NAME).is_file() for run in runs):
        raise UsageError(f"{out} holds an interrupted run; pass --resume to continue it or --overwrite")
    elif any((run / WEIGHTS_NAME).is_file() for run in runs):
        raise UsageError(f"{out} already holds a trained SAE; pass --overwrite or choose another --out")
    return out


def _check_data_flags(args) -> None:
    """One source of training data, and no flag that the chosen source would ignore."""
    model_flags = [f"--{key}" for key in ("model", "layer", "site", "dataset") if getattr(args, key) is not None]
    if args.activations and args.synthetic:
        raise UsageError("--activations and --synthetic name two data sources: choose one")
    if args.synthetic and model_flags:
        raise UsageError(f"--synthetic generates its data: {', '.join(model_flags)} would be ignored")
    if args.activations and model_flags and not Path(args.activations).is_dir():
        raise UsageError(f"{args.activations} is an array that records no model: {', '.join(model_flags)} would be "
                         "ignored (they check a cache directory's manifest, or choose a model to harvest from)")
    if (args.activations or args.synthetic) and getattr(args, "no_cache", False):
        raise UsageError("--no-cache applies to harvesting from a model, not to --activations or --synthetic")


def _load_data(args):
    """(training source, held-out source, ground-truth dictionary or None)."""
    _check_data_flags(args)
    if args.activations:
        source, dictionary = open_source(args.activations), None
        if isinstance(source, ActivationCache):
            _check_request(source, args)
    elif not args.synthetic:
        for key in ("model", "layer", "dataset"):
            setattr(args, key, DEFAULT[key] if getattr(args, key) is None else getattr(args, key))
        spec = _spec(args)
        args.tokens = args.tokens or DEFAULT["tokens"]
        eval_tokens = args.eval_tokens or DEFAULT["eval_tokens"]
        if args.no_cache:
            lm = load_model(spec.model, dtype=args.model_dtype, device=args.device)
            return (streamed_source(lm, spec, args.shuffle_buffer, args.seed),
                    heldout_activations(lm, spec, eval_tokens), None)
        train_cache, eval_cache = prepare_activations(spec, args.tokens, eval_tokens, root=args.cache_dir,
                                                      device=args.device, model_dtype=args.model_dtype,
                                                      progress=not args.no_progress)
        return train_cache, eval_cache, None
    else:
        print(f"no --activations given: generating {DEMO['n_tokens']} activations (d_in={DEMO['d_in']}) "
              f"from a known random dictionary of {DEMO['n_features']} features")
        x, dictionary = synthetic_activations(DEMO["n_tokens"], DEMO["d_in"], DEMO["n_features"],
                                              DEMO["max_active"], seed=1234)
        if args.tokens is None:
            args.tokens = DEMO["train_tokens"]
        source = open_source(x, name="generated")
    heldout = args.eval_tokens if args.eval_tokens is not None else min(65536, source.n_tokens // 10)
    if heldout < MIN_EVAL_TOKENS:
        raise UsageError(f"{source.name} has {source.n_tokens} tokens: too few to hold out {MIN_EVAL_TOKENS} for "
                         "evaluation and train on the rest")
    train_source, eval_source = source.split(heldout)
    return train_source, eval_source, dictionary


def _check_request(cache: ActivationCache, args) -> None:
    """A cache passed with --activations must agree with any --model/--layer/--site/--dataset given."""
    given = {key: getattr(args, key) for key in ("model", "layer", "site", "dataset") if getattr(args, key) is not None}
    check_spec(cache.manifest, given, cache.directory)


def _metadata(args) -> dict:
    if args.synthetic:
        return {"activations": "generated"}
    if args.activations:
        path = Path(args.activations)
        return {"activations": str(path), **(read_manifest(path)["spec"] if path.is_dir() else {})}
    return {"model": args.model, "layer": args.layer, "site": args.site, "dataset": args.dataset,
            "ctx_len": args.ctx_len, "include_special": args.include_special}


def dictionary_recovery(sae: SAE, dictionary: torch.Tensor) -> float:
    """Mean over true features of the max cosine similarity with any decoder row."""
    rows = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    return (dictionary @ rows.T).max(dim=1).values.mean().item()


def cmd_train(args) -> None:
    if is_distributed():
        if not (args.activations or args.synthetic) or args.out is None:
            raise UsageError("under torchrun, train from --activations (build it first with saelab cache) "
                             "or --synthetic, and name the run with --out")
    out = _run_dir(args)
    args.out = str(out)
    train_source, eval_source, dictionary = _load_data(args)
    grid = _grid(args)
    saes, train_cfgs = [], []
    for arch, knob, value, others in grid:
        cfg = SAEConfig(arch=arch, d_in=train_source.d_in, d_sae=args.expansion * train_source.d_in,
                        input_scaling=args.input_scaling, metadata=_metadata(args),
                        **others, **({knob: value} if knob else {}))
        several = sum(a == arch for a, *_ in grid) > 1
        label = f"{arch}-{knob_label(knob).format(value)}" if knob and (knob == "k" or several) else arch
        run = out if len(grid) == 1 else out / label
        saes.append(SAE(cfg, seed=args.seed).to(args.device))
        train_cfgs.append(TrainConfig(
            batch_size=args.batch_size, lr=args.lr, total_tokens=args.tokens, dead_tokens=args.dead_tokens,
            seed=args.seed, out_dir=str(run), checkpoint_every_tokens=args.checkpoint_every,
            resume=args.resume, progress=not args.no_progress, wandb_project=args.wandb, bf16=args.bf16,
            compile=args.compile,
        ))
        if rank() == 0:
            print(f"training {arch}{f' {knob}={value}' if knob else ''} d_in={cfg.d_in} d_sae={cfg.d_sae} -> {run}")
    results = train_many(saes, train_source, train_cfgs)
    if rank() != 0:
        return
    for result, train_cfg in zip(results, train_cfgs):
        run = Path(train_cfg.out_dir)
        (run / TRAIN_CONFIG_NAME).write_text(json.dumps(train_cfg.to_dict(), indent=2) + "\n")
        extra = {"train_tokens": result.tokens}
        if dictionary is not None:
            extra["dictionary_recovery"] = dictionary_recovery(result.sae, dictionary)
        evaluation = full_evaluation(result.sae, eval_source, run, batch_size=args.batch_size, extra=extra)
        _print_summary(run, evaluation)
        if isinstance(eval_source, ActivationCache):  # it keeps token ids: the browser can show text
            print(f"  browse its latents:         saelab report {run}")


def _print_summary(out: Path, results: dict) -> None:
    print(f"\nheld-out evaluation ({results['n_tokens']} tokens):")
    print("\n".join(summary_lines(results)))
    if "dictionary_recovery" in results:
        print(f"  {'dictionary_recovery':<30} {results['dictionary_recovery']:.4f}")
    print(f"\nwritten to {out}/:")
    print(f"  cfg.json, {WEIGHTS_NAME}   the SAE (load with saelab.SAE.load('{out}'))")
    print("  eval.json                    held-out metrics, AFA analysis, L0 histogram, latent densities")
    print("  " + ", ".join(results["plots"].values()) + "   plots")
    print(f"  {HISTORY_NAME}                training history, one JSON record per log step")


def _add_eval_parser(commands) -> None:
    p = commands.add_parser(
        "eval", help="evaluate an SAE (saelab, SAELens or sparsify directory): metrics, AFA analysis, plots",
        description="Evaluate an SAE directory (saelab, SAELens or EleutherAI sparsify format): reconstruction "
        "metrics, the AFA analysis (eps_LBO, ZF plot), decoder quasi-orthogonality, L0 distribution; "
        "--model and --dataset add downstream CE/KL with the SAE spliced in. Writes eval.json and PNGs.",
    )
    p.add_argument("run", metavar="RUN", help="the SAE directory")
    p.add_argument("--activations", metavar="FILE.npy|DIR",
                   help="evaluation activations (default: harvest held-out text for the model/site the SAE was "
                   "trained on, as recorded in its cfg.json)")
    _add_model_arguments(p, defaults=False)
    p.add_argument("--eval-tokens", type=integer(MIN_EVAL_TOKENS), default=DEFAULT["eval_tokens"],
                   help=f"held-out tokens to harvest (default: {DEFAULT['eval_tokens']})")
    p.add_argument("--downstream-contexts", type=INDEX, default=32,
                   help="held-out contexts for the downstream CE/KL (default: 32)")
    p.add_argument("--cache-dir", default="cache", help="where harvested activations are cached (default: cache)")
    p.add_argument("--out", metavar="DIR", help="where to write eval.json and plots (default: RUN)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def _eval_data(args, sae: SAE):
    """--activations, or the held-out cache of the model/site/dataset recorded in the SAE's config
    (harvested into --cache-dir if missing)."""
    for key in ("model", "layer", "site", "dataset"):
        if getattr(args, key) is None and key in sae.cfg.metadata:
            setattr(args, key, sae.cfg.metadata[key])
    if args.activations:
        return open_source(args.activations)
    if args.model is None or args.layer is None or args.dataset is None:
        raise UsageError("this SAE does not record the model it was trained on: pass --activations, "
                         "or --model, --layer and --dataset")
    (data,) = ensure_caches([(_spec(args, "eval"), args.eval_tokens)], args.cache_dir, args.device,
                            args.model_dtype, progress=not args.no_progress)
    return data


def cmd_eval(args) -> None:
    sae = load_any(args.run)
    explicit_model = args.model is not None
    data = _eval_data(args, sae)
    model = input_ids = None
    if explicit_model:
        if args.dataset is None or args.layer is None:
            raise UsageError("downstream metrics need --model, --layer and --dataset")
        spec = _spec(args, "eval")
        model = load_model(spec.model, dtype=args.model_dtype, device=args.device)
        input_ids = heldout_contexts(model, spec, args.downstream_contexts)
    out = Path(args.out or args.run)
    results = full_evaluation(sae, data, out, model=model, input_ids=input_ids, layer=args.layer,
                              site=args.site or "resid_post")
    print(f"{sae.cfg.arch} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} on {results['n_tokens']} tokens:")
    print("\n".join(summary_lines(results)))
    print(f"written to {out}/: eval.json, " + ", ".join(results["plots"].values()))


def _add_report_parser(commands) -> None:
    p = commands.add_parser(
        "report", help="write an HTML feature browser for an SAE: metrics, plots, top-activating contexts",
        description="Write one self-contained HTML page (opens offline): the SAE's metrics and plots and, for "
        "each of the most frequently firing latents (or --latents), its density, a histogram of its "
        "activations and its top-activating held-out contexts with each token shaded by its activation. "
        "Needs an activation cache (it keeps the token ids); by default the held-out cache of the model the "
        "SAE was trained on.",
    )
    p.add_argument("run", metavar="RUN", help="the SAE directory (saelab, SAELens or sparsify)")
    p.add_argument("--activations", metavar="DIR", help="an activation cache (default: held-out text of the SAE's model)")
    _add_model_arguments(p, defaults=False)
    p.add_argument("--eval-tokens", type=integer(MIN_EVAL_TOKENS), default=DEFAULT["eval_tokens"],
                   help=f"held-out tokens to harvest when no cache exists (default: {DEFAULT['eval_tokens']})")
    p.add_argument("--cache-dir", default="cache", help="where harvested activations are cached (default: cache)")
    p.add_argument("--latents", type=list_of(INDEX), help="latent indices to show (default: the --top most frequent)")
    p.add_argument("--top", type=COUNT, default=32, help="how many latents to show (default: 32)")
    p.add_argument("--contexts", type=COUNT, default=8, help="top-activating contexts per latent (default: 8)")
    p.add_argument("--out", metavar="FILE.html", help="the page (default: RUN/report.html)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> None:
    if args.latents and len(set(args.latents)) != len(args.latents):
        twice = sorted({i for i in args.latents if args.latents.count(i) > 1})
        raise UsageError(f"--latents lists {', '.join(map(str, twice))} more than once")
    sae = load_any(args.run)
    too_large = [i for i in args.latents or [] if i >= sae.cfg.d_sae]
    if too_large:
        raise UsageError(f"--latents {', '.join(map(str, too_large))}: this SAE has latents 0..{sae.cfg.d_sae - 1}")
    data = _eval_data(args, sae)
    if not isinstance(data, ActivationCache):
        raise UsageError("the feature browser needs token ids: pass an activation cache directory "
                         f"(saelab cache ...), not {args.activations}")
    run, out = Path(args.run), Path(args.out or Path(args.run) / "report.html")
    results = read_results(run)
    if results is None:  # evaluate first, so the page has metrics and plots
        results = full_evaluation(sae, data, out.parent)
        run = out.parent
    plots = [run / name for name in results.get("plots", {}).values() if (run / name).is_file()]
    tokenizer = load_tokenizer(data.spec.model)
    shown = write_report(sae, data, out, tokenizer, results, plots, latents=args.latents, top_n=args.top,
                         n_contexts=args.contexts)
    print(f"feature browser with {len(shown)} latents on {data.n_tokens} held-out tokens: {out}")


def _add_sweep_parser(commands) -> None:
    p = commands.add_parser(
        "sweep", help="train and evaluate a grid of SAEs on the same activations: one table, Pareto plots",
        description="Train every SAE of a grid (architecture x k or sparsity coefficient x expansion x input "
        "scaling x seed) on the same batches, evaluate each fully (with downstream CE/KL when the activations "
        "come from a model), and write results.csv, results.json and Pareto plots (NMSE, CE degradation, "
        "explained variance and MSE against L0) into --out. Rerunning the same command resumes an "
        "interrupted sweep. Same data flags as saelab train.",
    )
    _add_data_arguments(p, streaming=False)
    grid = p.add_argument_group("grid", "comma lists; their product is the grid (or give --config)")
    grid.add_argument("--config", metavar="SWEEP.toml",
                      help="a TOML file of axes, possibly several [[grid]] tables whose union is the sweep")
    grid.add_argument("--arch", "--archs", type=list_of(str, list(ARCHITECTURES)),
                      help=f"architectures (default: {DEFAULT_ARCH})")
    grid.add_argument("--expansion", type=list_of(COUNT), help=f"d_sae / d_in (default: {DEFAULT_EXPANSION})")
    grid.add_argument("--input-scaling", type=list_of(str, INPUT_SCALINGS), help="(default: per_token)")
    settings = p.add_argument_group("architecture settings", "a sparsity setting (k, coefficients) is an axis "
                                    "of the grid for the architectures it is the knob of; the others apply to "
                                    "every SAE that takes them")
    add_settings_flags(settings, DEFAULT_K)
    _add_training_arguments(p, seeds=True)
    p.add_argument("--downstream-contexts", type=INDEX, default=32,
                   help="held-out contexts for CE/KL with each SAE spliced in; 0 skips it (default: 32)")
    p.add_argument("--out", metavar="DIR", default="runs/sweep", help="sweep directory (default: runs/sweep)")
    p.set_defaults(func=cmd_sweep, no_cache=False)


GRID_AXES = ("arch", "expansion", "input_scaling", "seed")


def _sweep_points(args) -> list[Point]:
    """The grid from the flags (or --config): the architecture knobs given are axes too."""
    given = given_settings(args)
    axes = {key: getattr(args, key) for key in GRID_AXES if getattr(args, key) is not None}
    axes.update({key: value for key, value in given.items() if key in knobs()})
    if args.config:
        if axes:
            flags = ", ".join("--" + key.replace("_", "-") for key in axes)
            raise UsageError(f"give the grid either in {args.config} or by flags ({flags}), not both")
        return union(read_grid_file(args.config))
    return union([axes])


def _sweep_downstream(args) -> Downstream | None:
    """The model and held-out contexts for CE/KL, when the activations come from a model."""
    if args.downstream_contexts <= 0 or args.synthetic:
        return None
    if args.activations:
        path = Path(args.activations)
        if not path.is_dir():
            return None
        spec = CacheSpec(**{**read_manifest(path)["spec"], "split": "eval"})
    else:
        spec = _spec(args, "eval")
    print(f"loading {spec.model} for the downstream CE/KL ...")
    model = load_model(spec.model, dtype=args.model_dtype, device=args.device)
    return Downstream(model, heldout_contexts(model, spec, args.downstream_contexts), spec.layer, spec.site)


def _sweep_options(args, points: list[Point]) -> dict:
    """The settings given that are not knobs: each applies to the points whose arch takes it."""
    options = {key: value for key, value in given_settings(args).items() if key not in knobs()}
    check_settings_apply(options, sorted({p.arch for p in points}))
    return options


def cmd_sweep(args) -> None:
    if is_distributed():
        raise UsageError("run sweeps in one process (use torchrun with saelab train)")
    points = _sweep_points(args)
    train_source, eval_source, _ = _load_data(args)
    downstream = _sweep_downstream(args)
    train_cfg = TrainConfig(batch_size=args.batch_size, lr=args.lr, total_tokens=args.tokens,
                            dead_tokens=args.dead_tokens, checkpoint_every_tokens=args.checkpoint_every,
                            out_dir=args.out, progress=not args.no_progress, wandb_project=args.wandb,
                            bf16=args.bf16, compile=args.compile)
    rows = run_sweep(points, train_source, eval_source, args.out, train_cfg,
                     sae_options={**_sweep_options(args, points), "metadata": _metadata(args)},
                     downstream=downstream, device=args.device, batch_size_eval=args.batch_size)
    columns = [c for c in ("l0", "nmse", "explained_variance", "ce_degradation", "eps_lbo_median") if c in rows[0]]
    print("\n" + f"{'SAE':<44}" + "".join(f"{c:>20}" for c in columns))
    for row in rows:
        print(f"{row['name']:<44}" + "".join(f"{row[c]:>20.4f}" for c in columns))
    print(f"\nwritten to {args.out}/: results.csv, results.json, pareto_*.png, one folder per SAE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saelab",
        description="Train and evaluate sparse autoencoders (relu, topk, batchtopk, jumprelu, topafa) "
        "on language-model activations.",
    )
    parser.add_argument("--version", action="version", version=f"saelab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_cache_parser(commands)
    _add_train_parser(commands)
    _add_eval_parser(commands)
    _add_sweep_parser(commands)
    _add_report_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return
    init_from_env()
    try:
        _check_device(args)
        if getattr(args, "wandb", None):
            require_wandb()  # before any harvesting or training
        with _removed_if_failed(args):
            args.func(args)
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


def _check_device(args) -> None:
    device = getattr(args, "device", None)
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device (use cpu, cuda or cuda:N)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this torch build sees no CUDA GPU "
                         f"(torch {torch.__version__}); use --device cpu")
    if kind not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: saelab runs on cpu or cuda")


@contextmanager
def _removed_if_failed(args):
    """Run a command that writes into args.out (which it may set); if it fails and that
    directory did not exist before and holds nothing to keep (no checkpoint to resume, no
    trained SAE, no cache shard), remove it: a failed command leaves no half-made run or cache
    behind, and never removes a finished artifact."""
    given = getattr(args, "out", None)
    existed = given is not None and Path(given).exists()
    try:
        yield
    except BaseException:
        out = getattr(args, "out", None)
        path = Path(out) if out and not existed and rank() == 0 else None
        if path is not None and path.is_dir():
            keep = (CHECKPOINT_NAME, WEIGHTS_NAME, "shard-*.safetensors")
            if not any(any(path.rglob(pattern)) for pattern in keep):
                shutil.rmtree(path, ignore_errors=True)
        raise
