"""Command-line flags: argparse types that range-check values; one flag per architecture
setting, generated from the settings dataclasses in sae/ (the field's help and default are the
flag's), so names and defaults have one source; the groups of flags that several commands
share; and what the flags ask for (the SAEs of saelab train, the grid of saelab sweep)."""

from __future__ import annotations

import argparse
import math
from dataclasses import fields

import torch

from .config import INPUT_SCALINGS, TrainConfig
from .data.cache import STORAGE_DTYPES
from .data.hooks import SITES
from .data.models import DTYPES
from .errors import UsageError
from .eval.saebench.sparse_probing import check_dataset
from .eval.saebench.suite import EVALS
from .sae.architecture import setting_names
from .sae.registry import ARCHITECTURES, architecture
from .sources import DEFAULT, MIN_EVAL_TOKENS
from .sweep import (
    DEFAULT_ARCH,
    DEFAULT_EXPANSION,
    Point,
    grid_evals,
    read_grid_file,
    setting_default,
    union,
)


def integer(low: int):
    """argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(
                f"must be {'positive' if low == 1 else f'>= {low}'}, got {value}"
            )
        return value

    parse.__name__ = "int"
    return parse


def real(low: float = 0.0, strict: bool = False):
    """argparse type: a finite float >= low (> low when strict)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if strict else '>='} {low:g}, got {text}"
            )
        return value

    parse.__name__ = "float"
    return parse


COUNT, INDEX, COEFFICIENT, RATE = integer(1), integer(0), real(0.0), real(0.0, strict=True)


def list_of(kind, choices=None):
    """argparse type: a comma-separated list of `kind`, each in `choices` if given."""

    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise argparse.ArgumentTypeError(
                f"not a comma list of {kind.__name__}: {text!r} ({err})"
            ) from None
        bad = [v for v in values if choices is not None and v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"invalid choice {bad or text!r} (choose from {', '.join(choices or [])})"
            )
        return values

    return parse


def _settings_fields() -> dict:
    """Every architecture setting once: name -> (field, names of the architectures taking it)."""
    found: dict = {}
    for arch in ARCHITECTURES.values():
        for f in fields(arch.settings):
            found.setdefault(f.name, (f, []))[1].append(arch.name)
    return found


def knobs() -> set[str]:
    return {knob for arch in ARCHITECTURES.values() for knob in arch.knobs}


def add_settings_flags(group) -> None:
    """--k, --l1-coefficient, --aux-k, ... for every architecture setting. A knob (a setting an
    architecture's sparsity is swept by) takes a comma list; its default (setting_default) is
    shown in the help, but every default is None here, so what was given can be told from what
    was not."""
    for name, (f, archs) in _settings_fields().items():
        default = setting_default(f)
        listed = "list" in str(f.type)  # a list-valued setting takes a comma list of counts
        element = (
            COUNT if name == "k" or listed else (INDEX if "int" in str(f.type) else COEFFICIENT)
        )
        kind = list_of(element) if name in knobs() or listed else element
        shown = (
            f" (default: {default:g})"
            if isinstance(default, float)
            else (f" (default: {default})" if default is not None else "")
        )
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{', '.join(archs)}: {f.metadata['help']}{shown}",
        )


def given_settings(args) -> dict:
    """The settings flags that were given, by setting name."""
    return {
        name: getattr(args, name)
        for name in _settings_fields()
        if getattr(args, name, None) is not None
    }


def check_settings_apply(given: dict, archs: list[str]) -> None:
    """A settings flag that none of the chosen architectures takes is an error."""
    taken = {name for arch in archs for name in setting_names(architecture(arch).settings)}
    unused = sorted(set(given) - taken)
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise UsageError(f"{flags} do(es) not apply to --arch {','.join(archs)}")


def grid_of(arch: str, given: dict) -> tuple[str | None, list, dict]:
    """(knob, its values, the other settings) of the SAEs of `arch` the flags ask for: the knob
    is the first of the architecture's knobs that was given, else the first with a default."""
    spec = architecture(arch)
    takes = set(setting_names(spec.settings))
    defaults = {f.name: setting_default(f) for f in fields(spec.settings)}
    knob = next((name for name in spec.knobs if name in given), None)
    knob = knob or next((name for name in spec.knobs if defaults[name] is not None), None)
    values = given.get(knob, [defaults[knob]]) if knob else [None]
    others = {
        name: value for name, value in given.items() if name in takes and name not in spec.knobs
    }
    return knob, values, others


def add_model_arguments(group, defaults: bool) -> None:
    """--model/--layer/--site/--dataset and the harvesting options shared by cache and train."""
    group.add_argument(
        "--model",
        help="hub id, local directory, .gguf file or builtin:smollm2-135m"
        + (f" (default: {DEFAULT['model']})" if defaults else ""),
    )
    group.add_argument(
        "--layer",
        type=INDEX,
        help="block index, from 0" + (f" (default: {DEFAULT['layer']})" if defaults else ""),
    )
    group.add_argument("--site", choices=SITES, help="hook site (default: resid_post)")
    group.add_argument(
        "--dataset",
        help="builtin:wiki, a .txt/.jsonl/.parquet file or folder, or a datasets name"
        + (f" (default: {DEFAULT['dataset']})" if defaults else ""),
    )
    group.add_argument(
        "--text-column", default="text", help="column/field holding the text (default: text)"
    )
    group.add_argument(
        "--ctx-len",
        type=integer(2),
        default=128,
        help="tokens per packed context, BOS first (default: 128)",
    )
    group.add_argument(
        "--include-special",
        action="store_true",
        help="keep BOS/EOS/pad positions in the activations (default: left out)",
    )
    group.add_argument(
        "--storage-dtype",
        choices=STORAGE_DTYPES,
        default="float16",
        help="dtype of cached activations (default: float16)",
    )
    group.add_argument(
        "--model-dtype", choices=DTYPES, default="float32", help="model dtype (default: float32)"
    )
    group.add_argument(
        "--device", default="cpu", help="cpu or cuda, for the model and for training (default: cpu)"
    )


def add_interp_arguments(p) -> None:
    """--evals and the settings of the interpretability evaluations (eval and sweep)."""
    group = p.add_argument_group(
        "interpretability evaluations",
        "written to RUN/eval_results/<name>.json in SAEBench's schema; absorption and sparse_probing run the "
        "model the SAE was trained on, autointerp a chat model (--llm or --llm-url)",
    )
    group.add_argument(
        "--evals",
        type=list_of(str, EVALS),
        default=["core"],
        help=f"comma list of {', '.join(EVALS)} (default: core: reconstruction, AFA, CE/KL)",
    )
    group.add_argument(
        "--absorption-words",
        type=integer(100),
        default=4000,
        help="single-token words of the vocabulary to probe for first letters (default: 4000)",
    )
    group.add_argument(
        "--probe-dataset",
        default="builtin:wiki-topics",
        help="sparse_probing data: builtin:wiki-topics (held-out articles, labelled by article), a "
        ".jsonl/.csv/.parquet file with text and label columns, or a datasets name "
        "(default: builtin:wiki-topics)",
    )
    group.add_argument(
        "--probe-text-column", default="text", help="sparse_probing text column (default: text)"
    )
    group.add_argument(
        "--probe-label-column", default="label", help="sparse_probing label column (default: label)"
    )
    group.add_argument(
        "--llm",
        metavar="MODEL",
        help="autointerp: a local causal LM as explainer and scorer (hub id, directory, .gguf or "
        "builtin:smollm2-135m: a plumbing check, too small to judge)",
    )
    group.add_argument(
        "--llm-url",
        metavar="URL",
        help="autointerp: an OpenAI-compatible chat endpoint, e.g. http://localhost:8000/v1 "
        "(vLLM, llama.cpp server, ollama)",
    )
    group.add_argument(
        "--llm-model", default="default", help="the model name sent to --llm-url (default: default)"
    )
    group.add_argument(
        "--llm-key-env", metavar="VAR", help="environment variable holding the endpoint's API key"
    )
    group.add_argument(
        "--autointerp-latents",
        type=COUNT,
        default=20,
        help="latents to explain and score, drawn among the alive ones (default: 20)",
    )


def interp_settings(args) -> dict:
    """Each evaluation's settings from the flags: {eval name: {config field: value}}."""
    return {
        "absorption": {"max_words": args.absorption_words},
        "sparse_probing": {
            "dataset_names": [args.probe_dataset],
            "text_column": args.probe_text_column,
            "label_column": args.probe_label_column,
        },
        "autointerp": {"n_latents": args.autointerp_latents},
    }


def check_interp_flags(args) -> None:
    """autointerp needs exactly one chat model, the chat flags need autointerp, and
    sparse_probing's data must be there (before any model is loaded)."""
    if "sparse_probing" in args.evals:
        check_dataset(args.probe_dataset, args.probe_text_column, args.probe_label_column)
    chat = [flag for flag, value in (("--llm", args.llm), ("--llm-url", args.llm_url)) if value]
    if "autointerp" in args.evals and len(chat) != 1:
        raise UsageError(
            "--evals autointerp needs one chat model: --llm MODEL (a local causal LM) or --llm-url URL "
            "(an OpenAI-compatible endpoint)"
            if not chat
            else "--llm and --llm-url: choose one"
        )
    if "autointerp" not in args.evals and chat:
        raise UsageError(f"{chat[0]} is for --evals autointerp")


def add_data_arguments(p, streaming: bool) -> None:
    """Where training activations come from (train and sweep)."""
    data = p.add_argument_group(
        "data",
        f"one of: --activations; --synthetic; or a model to harvest from (default: {DEFAULT['model']} "
        f"block {DEFAULT['layer']} {DEFAULT['site']} on {DEFAULT['dataset']}, cached under --cache-dir)",
    )
    data.add_argument(
        "--activations",
        metavar="FILE.npy|DIR",
        help="activations [tokens, d_in]: a .npy file or an activation cache directory",
    )
    data.add_argument(
        "--synthetic",
        action="store_true",
        help="generated activations from a known random dictionary (reports dictionary recovery)",
    )
    add_model_arguments(data, defaults=True)
    data.add_argument(
        "--cache-dir",
        default="cache",
        help="where harvested activations are cached (default: cache)",
    )
    if streaming:
        data.add_argument(
            "--no-cache",
            action="store_true",
            help="harvest while training, through a shuffle buffer, without writing a cache",
        )
        data.add_argument(
            "--shuffle-buffer",
            type=COUNT,
            default=65536,
            help="tokens mixed by the shuffle buffer with --no-cache (default: 65536)",
        )
    data.add_argument(
        "--eval-tokens",
        type=integer(MIN_EVAL_TOKENS),
        default=None,
        help="held-out tokens for evaluation: from held-out documents when harvesting "
        f"(default: {DEFAULT['eval_tokens']}), else from the end of the data (default: 10%%, at most 65536)",
    )


def add_training_arguments(p, seeds: bool) -> None:
    """Optimizer and data-amount flags shared by train and sweep (where --seed is a list)."""
    opt = p.add_argument_group("training")
    if seeds:
        opt.add_argument(
            "--seed",
            type=list_of(INDEX),
            default=None,
            help="seeds for initialisation and data order, a comma list (default: 0)",
        )
    else:
        opt.add_argument(
            "--seed",
            type=INDEX,
            default=0,
            help="seed for initialisation and data order (default: 0)",
        )
    opt.add_argument(
        "--tokens",
        type=COUNT,
        default=None,
        help=f"training tokens (default: {DEFAULT['tokens']} when harvesting, "
        "else one pass over the training data)",
    )
    defaults = TrainConfig()
    opt.add_argument(
        "--batch-size",
        type=COUNT,
        default=defaults.batch_size,
        help=f"tokens per batch (default: {defaults.batch_size})",
    )
    opt.add_argument(
        "--lr",
        type=RATE,
        default=defaults.lr,
        help="Adam learning rate (default: 2e-3 * sqrt(4608 / d_sae): 2e-3 at d_sae 4608, 1e-3 at 18432; "
        "3e-4 was the default before 2026-11-29)",
    )
    opt.add_argument(
        "--dead-tokens",
        type=COUNT,
        default=defaults.dead_tokens,
        help=f"a latent is dead after this many tokens without firing (default: {defaults.dead_tokens})",
    )
    opt.add_argument(
        "--checkpoint-every",
        type=COUNT,
        default=1_000_000,
        metavar="TOKENS",
        help="write a checkpoint every this many tokens (default: 1000000)",
    )
    opt.add_argument(
        "--eval-every",
        type=COUNT,
        default=None,
        metavar="TOKENS",
        help="record the held-out NMSE and L0 in history.jsonl every this many tokens "
        "(heldout_nmse, heldout_l0; default: never)",
    )
    opt.add_argument("--no-progress", action="store_true", help="no progress bars")
    opt.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast for the encoder matmul (faster on GPUs and CPUs with native bf16)",
    )
    opt.add_argument(
        "--compile", action="store_true", help="torch.compile the loss (see bench/RESULTS.md)"
    )
    opt.add_argument(
        "--wandb",
        nargs="?",
        const="saelab",
        metavar="PROJECT",
        help="also log training to Weights & Biases (project default: saelab; needs pip install wandb)",
    )


def check_device(args) -> None:
    device = getattr(args, "device", None)
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device (use cpu, cuda or cuda:N)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {device}: this torch build sees no CUDA GPU "
            f"(torch {torch.__version__}); use --device cpu"
        )
    if kind not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: saelab runs on cpu or cuda")


GRID_AXES = ("arch", "expansion", "input_scaling", "seed")


def add_sae_arguments(p) -> None:
    """What SAEs saelab train makes: architecture(s), size, input scaling and their settings."""
    sae = p.add_argument_group("SAE")
    sae.add_argument(
        "--arch",
        type=list_of(str, list(ARCHITECTURES)),
        default=[DEFAULT_ARCH],
        help=f"architecture, or a comma list to train several on the same batches: "
        f"{', '.join(ARCHITECTURES)} (default: {DEFAULT_ARCH})",
    )
    sae.add_argument(
        "--expansion",
        type=COUNT,
        default=DEFAULT_EXPANSION,
        help=f"d_sae = expansion * d_in (default: {DEFAULT_EXPANSION})",
    )
    sae.add_argument(
        "--input-scaling",
        choices=INPUT_SCALINGS,
        default="per_token",
        help="per_token: standardise each token, undone on output (as the BatchTopK reference "
        "code); expected_norm: scale inputs so E||x||^2 = d_in (folded into the saved "
        "weights); none (default: per_token)",
    )
    settings = p.add_argument_group(
        "architecture settings",
        "each applies to the architectures it names; a "
        "comma list of a sparsity setting (k, coefficients) trains one SAE per value",
    )
    add_settings_flags(settings)


def add_grid_arguments(p) -> None:
    """The axes of saelab sweep: comma lists, or a TOML file."""
    grid = p.add_argument_group("grid", "comma lists; their product is the grid (or give --config)")
    grid.add_argument(
        "--config",
        metavar="SWEEP.toml",
        help="a TOML file of axes, possibly several [[grid]] tables whose union is the sweep",
    )
    grid.add_argument(
        "--arch",
        "--archs",
        type=list_of(str, list(ARCHITECTURES)),
        help=f"architectures (default: {DEFAULT_ARCH})",
    )
    grid.add_argument(
        "--expansion", type=list_of(COUNT), help=f"d_sae / d_in (default: {DEFAULT_EXPANSION})"
    )
    grid.add_argument(
        "--input-scaling", type=list_of(str, INPUT_SCALINGS), help="(default: per_token)"
    )
    settings = p.add_argument_group(
        "architecture settings",
        "a sparsity setting (k, coefficients) is an axis "
        "of the grid for the architectures it is the knob of; the others apply to "
        "every SAE that takes them",
    )
    add_settings_flags(settings)


def sweep_points(args) -> list[Point]:
    """The grid from the flags (or --config): the architecture knobs given are axes too."""
    given = given_settings(args)
    axes = {key: getattr(args, key) for key in GRID_AXES if getattr(args, key) is not None}
    axes.update({key: value for key, value in given.items() if key in knobs()})
    if args.config:
        if axes:
            flags = ", ".join("--" + key.replace("_", "-") for key in axes)
            raise UsageError(
                f"give the grid either in {args.config} or by flags ({flags}), not both"
            )
        return union(read_grid_file(args.config))
    return union([axes])


def sweep_evals(args, points: list[Point]) -> dict[Point, list[str]]:
    """The evaluations of every point: --evals, plus those the --config grids name."""
    return (
        grid_evals(read_grid_file(args.config), args.evals)
        if args.config
        else {p: list(args.evals) for p in points}
    )


def sweep_options(args, points: list[Point]) -> dict:
    """The settings given that are not knobs: each applies to the points whose arch takes it."""
    options = {key: value for key, value in given_settings(args).items() if key not in knobs()}
    check_settings_apply(options, sorted({p.arch for p in points}))
    return options


def train_grid(args) -> list[tuple[str, str | None, object, dict]]:
    """(arch, knob, value, other settings) for every SAE to train."""
    given = given_settings(args)
    check_settings_apply(given, args.arch)
    grid = []
    for arch in args.arch:
        knob, values, others = grid_of(arch, given)
        grid += [(arch, knob, value, others) for value in values]
    return grid
