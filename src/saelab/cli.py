"""The `saelab` command line: parses arguments and calls the API. What the flags mean lives in
flags.py (types, generated settings flags, shared groups), where data comes from in sources.py,
and the run directory in rundir.py."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__, rundir
from .config import SAEConfig, TrainConfig
from .data.cache import ActivationCache, build_cache
from .data.models import load_model, load_tokenizer
from .data.streaming import heldout_contexts
from .data.text import SPLITS
from .errors import SaelabError, UsageError
from .eval.full import full_evaluation, summary_lines
from .eval.neuronpedia import write_neuronpedia
from .eval.report import read_results, write_report
from .eval.saebench.llm import chat_model
from .eval.saebench.output import RESULTS_DIR, flat_metrics, read_outputs
from .eval.saebench.suite import NEED_MODEL, Interp, check_evals, run_interp
from .eval.saebench.suite import summary_lines as interp_summary
from .flags import (
    COUNT,
    INDEX,
    add_data_arguments,
    add_grid_arguments,
    add_interp_arguments,
    add_model_arguments,
    add_sae_arguments,
    add_training_arguments,
    check_device,
    check_interp_flags,
    integer,
    interp_settings,
    list_of,
    sweep_evals,
    sweep_options,
    sweep_points,
    train_grid,
)
from .sae.model import SAE
from .sources import (
    DEFAULT,
    MIN_EVAL_TOKENS,
    cache_spec,
    dictionary_recovery,
    downstream_data,
    evaluation_data,
    provenance,
    recorded_hook,
    sae_source,
    sweep_interp,
    training_data,
)
from .sweep import knob_label, run_sweep
from .train.distributed import init_from_env, is_distributed, rank, shutdown
from .train.loop import train_many
from .train.wandb_log import require_wandb


def _add_cache_parser(commands) -> None:
    p = commands.add_parser(
        "cache",
        help="harvest activations of a language model into an activation cache",
        description="Harvest activations at one hook site into sharded files plus a manifest. "
        "Rerunning resumes an interrupted cache; a larger --tokens extends it.",
    )
    add_model_arguments(p, defaults=False)
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="train",
        help="train, or eval: the held-out documents (every 10th) (default: train)",
    )
    p.add_argument("--tokens", type=COUNT, required=True, help="activations to harvest")
    p.add_argument(
        "--shard-tokens", type=COUNT, default=65536, help="activations per shard (default: 65536)"
    )
    p.add_argument("--out", metavar="DIR", required=True, help="cache directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cache)


def cmd_cache(args) -> None:
    spec = cache_spec(args, args.split)
    lm = load_model(spec.model, dtype=args.model_dtype, device=args.device)
    cache = build_cache(
        lm,
        args.out,
        spec,
        args.tokens,
        shard_tokens=args.shard_tokens,
        progress=not args.no_progress,
    )
    print(
        f"{cache.n_tokens} activations [{cache.d_in}] of {spec.model} layer {spec.layer} {spec.site} "
        f"in {len(cache.shards)} shards: {args.out}"
    )


def _add_train_parser(commands) -> None:
    p = commands.add_parser(
        "train",
        help="train an SAE on activations and evaluate it on a held-out slice",
        description="Train an SAE, evaluate it on held-out activations and save it into --out. "
        "With no arguments: the default job (SmolLM2-135M block 15 resid_post on Wikipedia, batchtopk k=32 x8).",
    )
    add_data_arguments(p, streaming=True)
    add_sae_arguments(p)
    add_training_arguments(p, seeds=False)
    run = p.add_argument_group("run")
    run.add_argument(
        "--out",
        metavar="RUN",
        default=None,
        help="run directory (default: runs/<date>-<time>-<arch>)",
    )
    run.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> None:
    if is_distributed() and (not (args.activations or args.synthetic) or args.out is None):
        raise UsageError(
            "under torchrun, train from --activations (build it first with saelab cache) "
            "or --synthetic, and name the run with --out"
        )
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{'+'.join(args.arch)}"
    )
    args.out = str(rundir.prepare(out, args.resume, args.overwrite))
    train_source, eval_source, dictionary = training_data(args)
    grid = train_grid(args)
    saes, train_cfgs = [], []
    for arch, knob, value, others in grid:
        sae = SAE(
            SAEConfig(
                arch=arch,
                d_in=train_source.d_in,
                d_sae=args.expansion * train_source.d_in,
                input_scaling=args.input_scaling,
                metadata=provenance(args),
                **others,
                **({knob: value} if knob else {}),
            ),
            seed=args.seed,
        )
        several = sum(a == arch for a, *_ in grid) > 1
        name = (
            f"{arch}-{knob_label(knob).format(value)}"
            if knob and (knob == "k" or several)
            else arch
        )
        run = out if len(grid) == 1 else out / name
        saes.append(sae.to(args.device))
        train_cfgs.append(
            TrainConfig(
                batch_size=args.batch_size,
                lr=args.lr,
                total_tokens=args.tokens,
                dead_tokens=args.dead_tokens,
                seed=args.seed,
                out_dir=str(run),
                checkpoint_every_tokens=args.checkpoint_every,
                resume=args.resume,
                eval_every_tokens=args.eval_every,
                progress=not args.no_progress,
                wandb_project=args.wandb,
                bf16=args.bf16,
                compile=args.compile,
            )
        )
        if rank() == 0:
            print(
                f"training {arch}{f' {knob}={value}' if knob else ''} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} "
                f"-> {run}"
            )
    results = train_many(
        saes, train_source, train_cfgs, heldout=eval_source if args.eval_every else None
    )
    if rank() != 0:
        return
    for result, train_cfg in zip(results, train_cfgs):
        run = Path(train_cfg.out_dir)
        extra = {"train_tokens": result.tokens}
        if dictionary is not None:
            extra["dictionary_recovery"] = dictionary_recovery(result.sae, dictionary)
        _print_summary(
            run,
            full_evaluation(result.sae, eval_source, run, batch_size=args.batch_size, extra=extra),
        )
        if isinstance(
            eval_source, ActivationCache
        ):  # it keeps token ids: the browser can show text
            print(f"  browse its latents:         saelab report {run}")


def _print_summary(out: Path, results: dict) -> None:
    print(f"\nheld-out evaluation ({results['n_tokens']} tokens):")
    print("\n".join(summary_lines(results)))
    if "dictionary_recovery" in results:
        print(f"  {'dictionary_recovery':<30} {results['dictionary_recovery']:.4f}")
    print(f"\nwritten to {out}/:")
    print(f"  {rundir.CFG}, {rundir.WEIGHTS}   the SAE (load with saelab.SAE.load('{out}'))")
    print(
        f"  {rundir.EVAL}                    held-out metrics, AFA analysis, L0 histogram, latent densities"
    )
    print("  " + ", ".join(results["plots"].values()) + "   plots")
    print(f"  {rundir.HISTORY}                training history, one JSON record per log step")


def _add_eval_parser(commands) -> None:
    p = commands.add_parser(
        "eval",
        help="evaluate an SAE (saelab, SAELens, sparsify, dictionary_learning; a directory or hf://): metrics, "
        "AFA analysis, plots, SAEBench's evals",
        description="Evaluate an SAE directory (saelab, SAELens, EleutherAI sparsify or dictionary_learning format; "
        "or hf://ORG/NAME[/SAE_ID] from the Hugging Face Hub): reconstruction "
        "metrics, the AFA analysis (eps_LBO, ZF plot), decoder quasi-orthogonality, L0 distribution; "
        "--model and --dataset add downstream CE/KL with the SAE spliced in. Writes eval.json and PNGs. --evals adds "
        "SAEBench's interpretability evaluations (absorption, sparse_probing, autointerp), offline, each written to "
        "eval_results/<name>.json in SAEBench's schema.",
    )
    p.add_argument(
        "run",
        metavar="RUN",
        help="the SAE directory, or hf://ORG/NAME[/SAE_ID] on the Hugging Face Hub "
        "(outputs then go under runs/hub/ unless --out)",
    )
    p.add_argument(
        "--activations",
        metavar="FILE.npy|DIR",
        help="evaluation activations (default: harvest held-out text for the model/site the SAE was "
        "trained on, as recorded in its cfg.json)",
    )
    add_model_arguments(p, defaults=False)
    p.add_argument(
        "--eval-tokens",
        type=integer(MIN_EVAL_TOKENS),
        default=DEFAULT["eval_tokens"],
        help=f"held-out tokens to harvest (default: {DEFAULT['eval_tokens']})",
    )
    p.add_argument(
        "--downstream-contexts",
        type=INDEX,
        default=32,
        help="held-out contexts for the downstream CE/KL (default: 32)",
    )
    p.add_argument(
        "--cache-dir",
        default="cache",
        help="where harvested activations are cached (default: cache)",
    )
    p.add_argument("--out", metavar="DIR", help="where to write eval.json and plots (default: RUN)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_interp_arguments(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> None:
    evals = check_evals(args.evals)
    check_interp_flags(args)
    sae, _, default_out = sae_source(args.run)
    chat = (
        chat_model(args.llm_url, args.llm, args.llm_model, args.llm_key_env, args.device)
        if "autointerp" in evals
        else None
    )  # a missing local model fails before any harvesting
    explicit_model = args.model is not None
    recorded_hook(args, sae)
    data = evaluation_data(args, sae) if "core" in evals or "autointerp" in evals else None
    if "autointerp" in evals and not isinstance(data, ActivationCache):
        raise UsageError(
            "autointerp shows text: pass an activation cache directory with --activations (saelab cache "
            f"...), not {args.activations}"
        )
    model = input_ids = None
    if explicit_model and "core" in evals:
        if args.dataset is None or args.layer is None:
            raise UsageError("downstream metrics need --model, --layer and --dataset")
        spec = cache_spec(args, "eval")
        model = load_model(spec.model, dtype=args.model_dtype, device=args.device)
        input_ids = heldout_contexts(model, spec, args.downstream_contexts)
    if any(name in NEED_MODEL for name in evals) and model is None:
        if args.model is None or args.layer is None:
            raise UsageError(
                f"{', '.join(n for n in evals if n in NEED_MODEL)} run the model: this SAE does not "
                "record it, so pass --model and --layer"
            )
        model = load_model(args.model, dtype=args.model_dtype, device=args.device)
    out = Path(args.out or default_out)
    if "core" in evals:
        results = full_evaluation(
            sae,
            data,
            out,
            model=model if input_ids is not None else None,
            input_ids=input_ids,
            layer=args.layer,
            site=args.site or "resid_post",
        )
        print(
            f"{sae.cfg.arch} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} on {results['n_tokens']} tokens:"
        )
        print("\n".join(summary_lines(results)))
        print(f"written to {out}/: {rundir.EVAL}, " + ", ".join(results["plots"].values()))
    if evals == ["core"]:
        return
    tokenizer = model.tokenizer if model is not None else load_tokenizer(data.spec.model)
    interp = Interp(
        lm=model,
        layer=args.layer,
        site=args.site or "resid_post",
        cache=data,
        tokenizer=tokenizer,
        chat=chat,
        settings=interp_settings(args),
        progress=not args.no_progress,
    )
    documents = run_interp(sae, evals, out, interp)
    print("\n".join(interp_summary(documents)))
    print(f"written to {out}/{RESULTS_DIR}/: " + ", ".join(f"{name}.json" for name in documents))
    if "autointerp" in documents and args.llm == "builtin:smollm2-135m":
        print(
            "  note: a 135M explainer and scorer check the plumbing; they are not a judge of interpretability "
            "(use a capable model through --llm-url)"
        )


def _add_report_parser(commands) -> None:
    p = commands.add_parser(
        "report",
        help="write an HTML feature browser for an SAE: metrics, plots, latents with their contexts",
        description="Write one self-contained HTML page (opens offline): the SAE's metrics and plots and, for "
        "latents chosen across density bands (an equal share from each decade of firing density; or --latents), "
        "its density, a histogram of its activations, its top-activating held-out contexts and contexts sampled "
        "from lower activation quantiles with each token shaded by its activation, the logit lens of its decoder "
        "direction, and its autointerp explanation when eval_results/autointerp.json has one. Needs an activation "
        "cache (it keeps the token ids); by default the held-out cache of the model the SAE was trained on.",
    )
    p.add_argument(
        "run",
        metavar="RUN",
        help="the SAE directory (saelab, SAELens, sparsify or dictionary_learning), "
        "or hf://ORG/NAME[/SAE_ID] (the page then goes under runs/hub/ unless --out)",
    )
    p.add_argument(
        "--activations",
        metavar="DIR",
        help="an activation cache (default: held-out text of the SAE's model)",
    )
    add_model_arguments(p, defaults=False)
    p.add_argument(
        "--eval-tokens",
        type=integer(MIN_EVAL_TOKENS),
        default=DEFAULT["eval_tokens"],
        help=f"held-out tokens to harvest when no cache exists (default: {DEFAULT['eval_tokens']})",
    )
    p.add_argument(
        "--cache-dir",
        default="cache",
        help="where harvested activations are cached (default: cache)",
    )
    p.add_argument(
        "--latents",
        type=list_of(INDEX),
        help="latent indices to show (default: --top across density bands)",
    )
    p.add_argument("--top", type=COUNT, default=32, help="how many latents to show (default: 32)")
    p.add_argument(
        "--contexts", type=COUNT, default=8, help="top-activating contexts per latent (default: 8)"
    )
    p.add_argument(
        "--samples",
        type=INDEX,
        default=2,
        help="contexts sampled from each lower quantile of a latent's activations (default: 2)",
    )
    p.add_argument(
        "--no-logit-lens", action="store_true", help="do not load the model for the logit lens"
    )
    p.add_argument(
        "--neuronpedia",
        metavar="FILE.json",
        help="also write the latents as Neuronpedia feature dashboards (JSON)",
    )
    p.add_argument("--out", metavar="FILE.html", help=f"the page (default: RUN/{rundir.REPORT})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> None:
    if args.latents and len(set(args.latents)) != len(args.latents):
        twice = sorted({i for i in args.latents if args.latents.count(i) > 1})
        raise UsageError(f"--latents lists {', '.join(map(str, twice))} more than once")
    sae, files, default_out = sae_source(args.run)
    too_large = [i for i in args.latents or [] if i >= sae.cfg.d_sae]
    if too_large:
        raise UsageError(
            f"--latents {', '.join(map(str, too_large))}: this SAE has latents 0..{sae.cfg.d_sae - 1}"
        )
    data = evaluation_data(args, sae)
    if not isinstance(data, ActivationCache):
        raise UsageError(
            "the feature browser needs token ids: pass an activation cache directory "
            f"(saelab cache ...), not {args.activations}"
        )
    run, out = files, Path(args.out or default_out / rundir.REPORT)
    results = read_results(run)
    if results is None:  # evaluate first, so the page has metrics and plots
        results = full_evaluation(sae, data, out.parent)
        run = out.parent
    plots = [run / name for name in results.get("plots", {}).values() if (run / name).is_file()]
    lm = (
        None
        if args.no_logit_lens
        else load_model(data.spec.model, dtype=args.model_dtype, device=args.device)
    )
    outputs = read_outputs(files)
    autointerp = outputs.get("autointerp")
    explanations = (
        {
            d["latent"]: {**d, "explainer": autointerp["eval_config"].get("explainer")}
            for d in autointerp["eval_result_details"]
        }
        if autointerp
        else None
    )
    tokenizer = lm.tokenizer if lm is not None else load_tokenizer(data.spec.model)
    shown = write_report(
        sae,
        data,
        out,
        tokenizer,
        results,
        plots,
        latents=args.latents,
        top_n=args.top,
        n_contexts=args.contexts,
        n_samples=args.samples,
        lm=lm,
        explanations=explanations,
        interp=flat_metrics(outputs),
    )
    print(f"feature browser with {len(shown)} latents on {data.n_tokens} held-out tokens: {out}")
    if args.neuronpedia:
        source = f"{data.spec.layer}-saelab-{sae.cfg.arch}-{data.spec.site}"
        write_neuronpedia(shown, tokenizer, args.neuronpedia, data.spec.model, source)
        print(f"Neuronpedia feature dashboards of the same latents: {args.neuronpedia}")


def _add_push_parser(commands) -> None:
    p = commands.add_parser(
        "push",
        help="upload an SAE with its evaluation and a model card to the Hugging Face Hub",
        description="Upload an SAE directory (any layout saelab reads) to a Hub repo as one commit: the SAE in "
        "saelab's format, eval.json, eval_results/, the plots and a model card (README.md with library_name: "
        "saelab, the model and hook, the training settings and held-out metrics). Needs network and a token "
        "with write access (HF_TOKEN, or huggingface-cli login). Load it back with SAE.from_pretrained or "
        "hf://REPO[/SAE_ID] wherever saelab takes an SAE.",
    )
    p.add_argument(
        "run", metavar="RUN", help="the SAE directory (or hf://ORG/NAME[/SAE_ID], to copy one)"
    )
    p.add_argument("repo", metavar="REPO", help="the Hub repo, ORG/NAME (created if missing)")
    p.add_argument(
        "--sae-id",
        metavar="ID",
        help="a folder in the repo for this SAE (e.g. blocks.15.hook_resid_post), "
        "so one repo holds many",
    )
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.set_defaults(func=cmd_push)


def cmd_push(args) -> None:
    if args.repo.count("/") != 1 or args.repo.startswith(("/", ".")):
        raise UsageError(f"REPO must be a Hub repo id ORG/NAME, got {args.repo!r}")
    sae, files, _ = sae_source(args.run)
    url = sae.push_to_hub(args.repo, sae_id=args.sae_id, private=args.private, run=files)
    print(
        f"pushed {sae.cfg.arch} d_sae={sae.cfg.d_sae} to {args.repo}"
        + (f"/{args.sae_id}" if args.sae_id else "")
        + f": {url}"
    )


def _add_sweep_parser(commands) -> None:
    p = commands.add_parser(
        "sweep",
        help="train and evaluate a grid of SAEs on the same activations: one table, Pareto plots",
        description="Train every SAE of a grid (architecture x k or sparsity coefficient x expansion x input "
        "scaling x seed) on the same batches, evaluate each fully (with downstream CE/KL when the activations "
        "come from a model), and write results.csv, results.json and Pareto plots (NMSE, CE degradation, "
        "explained variance and MSE against L0) into --out. Rerunning the same command resumes an "
        "interrupted sweep. Same data flags as saelab train.",
    )
    add_data_arguments(p, streaming=False)
    add_grid_arguments(p)
    add_training_arguments(p, seeds=True)
    p.add_argument(
        "--downstream-contexts",
        type=INDEX,
        default=32,
        help="held-out contexts for CE/KL with each SAE spliced in; 0 skips it (default: 32)",
    )
    p.add_argument(
        "--out", metavar="DIR", default="runs/sweep", help="sweep directory (default: runs/sweep)"
    )
    add_interp_arguments(p)
    p.set_defaults(func=cmd_sweep, no_cache=False)


def cmd_sweep(args) -> None:
    if is_distributed():
        raise UsageError("run sweeps in one process (use torchrun with saelab train)")
    check_evals(args.evals)
    points = sweep_points(args)
    evals = sweep_evals(args, points)
    args.evals = list(
        dict.fromkeys(name for names in [args.evals, *evals.values()] for name in names)
    )
    check_interp_flags(args)
    chat = (
        chat_model(args.llm_url, args.llm, args.llm_model, args.llm_key_env, args.device)
        if "autointerp" in args.evals
        else None
    )  # a missing local model fails before any harvesting
    train_source, eval_source, _ = training_data(args)
    train_cfg = TrainConfig(
        batch_size=args.batch_size,
        lr=args.lr,
        total_tokens=args.tokens,
        dead_tokens=args.dead_tokens,
        checkpoint_every_tokens=args.checkpoint_every,
        eval_every_tokens=args.eval_every,
        out_dir=args.out,
        progress=not args.no_progress,
        wandb_project=args.wandb,
        bf16=args.bf16,
        compile=args.compile,
    )
    downstream = downstream_data(args)
    rows = run_sweep(
        points,
        train_source,
        eval_source,
        args.out,
        train_cfg,
        sae_options={**sweep_options(args, points), "metadata": provenance(args)},
        downstream=downstream,
        device=args.device,
        batch_size_eval=args.batch_size,
        interp=sweep_interp(args, downstream, eval_source, interp_settings(args), chat),
        evals=evals,
    )
    print("\n" + "\n".join(sweep_table(rows)))
    print(f"\nwritten to {args.out}/: results.csv, results.json, pareto_*.png, one folder per SAE")


def sweep_table(rows: list[dict]) -> list[str]:
    """The sweep's summary lines: a column for each headline metric some run has ("-" where a
    run lacks it, e.g. an evaluation asked for on other points only)."""
    columns = [
        c
        for c in (
            "l0",
            "nmse",
            "explained_variance",
            "ce_degradation",
            "eps_lbo_median",
            "mean_absorption_fraction_score",
            "sae_top_1_test_accuracy",
            "autointerp_score",
        )
        if any(c in row for row in rows)
    ]
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
        with rundir.removed_if_failed(
            getattr(args, "out", None) if rank() == 0 else None,
            lambda: getattr(args, "out", None) if rank() == 0 else None,
        ):
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
