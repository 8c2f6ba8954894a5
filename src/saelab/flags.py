"""Command-line flags, generated from the config dataclasses.

Every option() field of a config (TrainConfig, DataConfig, each evaluation's config, the chat
model's) is a flag, with its help, default, type and range from the field (add_options), and
`config_from` turns the parsed flags back into the config: adding an option is one field. A
flag that two configs share (`--no-progress`, `--tokens`) is declared once and read by both.
Architecture settings are flags the same way, from the settings dataclasses in sae/, and the
SAEs and grids the flags ask for are worked out here.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields

import torch

from .config import (
    DEFAULT_ARCH,
    DEFAULT_EXPANSION,
    DEFAULT_INPUT_SCALING,
    INPUT_SCALINGS,
    TRANSCODER_INPUT_SCALING,
)
from .errors import UsageError
from .eval.registry import EVALUATIONS
from .options import dest, flag_name, kind, options
from .sae.architecture import setting_names
from .sae.registry import ARCHITECTURES, architecture
from .sweep import (
    KINDS,
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


COUNT, INDEX, COEFFICIENT = integer(1), integer(0), real(0.0)


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


# -- flags from config dataclasses -----------------------------------------------------------
def _default(f):
    """The command line's default of an option field."""
    if f.metadata["cli_default"] is not None:
        return f.metadata["cli_default"]
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flag_arguments(f, listed: bool, required: bool) -> tuple[str, dict]:
    """(the flag, add_argument's keywords) of an option field; listed: it takes a comma list;
    required: it must be given."""
    meta, (element, is_list) = f.metadata, kind(f)
    help = meta["help"]
    default = None if required else _default(f)
    if element == "bool" and f.default:
        help += " (on by default: this flag turns it off)"
    elif default is not None and not isinstance(default, bool) and "default:" not in help:
        help += f" (default: {_shown(default)})"
    keywords = {"dest": dest(f), "default": None, "help": help.replace("%", "%%")}
    if required:
        keywords["required"] = True
    if meta["metavar"]:
        keywords["metavar"] = meta["metavar"]
    if element == "bool":
        flag = ("no-" if f.default else "") + flag_name(f)
        return "--" + flag, {**keywords, "action": "store_const", "const": not f.default}
    if meta["const"] is not None:
        return "--" + flag_name(f), {**keywords, "nargs": "?", "const": meta["const"]}
    if element == "int":
        parse = integer(int(meta["low"]))
    elif element == "float":
        parse = real(meta["low"], meta["strict"])
    else:
        parse = str
    if is_list or listed:
        keywords["type"] = list_of(parse, meta["choices"])
    elif meta["choices"] is not None:
        keywords.update(type=parse, choices=meta["choices"])
    else:
        keywords["type"] = parse
    return "--" + flag_name(f), keywords


def add_options(group, cls, only=None, skip=(), listed=(), required=()) -> None:
    """A flag for each option field of config dataclass `cls` (only: just these fields; skip:
    not these; listed: these take a comma list; required: these must be given). A flag already
    declared by another config is left as it is: both read it."""
    for f in options(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        flag, keywords = _flag_arguments(f, f.name in listed, f.name in required)
        try:
            group.add_argument(flag, **keywords)
        except argparse.ArgumentError:
            pass  # shared with a config added before


def config_from(cls, args, skip=(), **fixed):
    """`cls` from the parsed flags of its option fields (a flag not given, or not declared by
    this command, leaves the command line's default) and the fields `fixed`; skip: fields left
    at the dataclass default."""
    values = {}
    for f in options(cls):
        if f.name in skip or f.name in fixed:
            continue
        value = getattr(args, dest(f), None)
        value = _default(f) if value is None else value
        if value is not None:
            values[f.name] = value
    return cls(**values, **fixed)


def eval_configs(args, evaluations) -> dict:
    """{name: config} of the evaluations from the flags, each checked before any work."""
    configs = {e.name: config_from(e.config, args) for e in evaluations}
    for e in evaluations:
        e.check(configs[e.name])
    return configs


def add_eval_arguments(p) -> None:
    """--evals and the settings of every evaluation (eval and sweep)."""
    group = p.add_argument_group(
        "evaluations",
        "core writes eval.json and plots; the others write RUN/eval_results/<name>.json in "
        "SAEBench's schema: absorption and sparse_probing run the model the SAE was trained "
        "on, autointerp a chat model (--llm or --llm-url)",
    )
    group.add_argument(
        "--evals",
        type=list_of(str, list(EVALUATIONS)),
        default=["core"],
        help=f"comma list of {', '.join(EVALUATIONS)} (default: core: reconstruction, AFA, CE/KL)",
    )
    for evaluation in EVALUATIONS.values():
        add_options(group, evaluation.config)


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


# -- architecture settings -------------------------------------------------------------------
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
        element, listed = kind(f)
        parse = COUNT if name == "k" or listed else (INDEX if element == "int" else COEFFICIENT)
        shown = f" (default: {_shown(default)})" if default is not None else ""
        choices = f.metadata.get("choices")
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=str if choices else list_of(parse) if name in knobs() or listed else parse,
            choices=choices,
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


# -- what SAEs the flags ask for -------------------------------------------------------------
GRID_AXES = ("arch", "expansion", "input_scaling", "seed", "kind")


def add_sae_arguments(p) -> None:
    """What SAEs saelab train makes: architecture(s), size, input scaling and their settings."""
    sae = p.add_argument_group("SAE")
    sae.add_argument(
        "--arch",
        type=list_of(str, list(ARCHITECTURES)),
        default=[DEFAULT_ARCH],
        help="architecture, or a comma list to train several on the same batches: "
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
        default=None,
        help="per_token: standardise each token, undone on output (as the BatchTopK reference "
        "code); expected_norm: scale inputs so E||x||^2 = d_in (folded into the saved "
        "weights; a transcoder scales its input and target each by its own s); none "
        f"(default: {DEFAULT_INPUT_SCALING}; transcoders: {TRANSCODER_INPUT_SCALING})",
    )
    sae.add_argument(
        "--skip",
        action="store_true",
        help="skip transcoders: add a linear path W_skip [d_in, d_out] from the input to the "
        "output (Paulo et al. 2025); with --target-site",
    )
    settings = p.add_argument_group(
        "architecture settings",
        "each applies to the architectures it names; a comma list of a sparsity setting (k, "
        "coefficients) trains one SAE per value",
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
        "--input-scaling",
        type=list_of(str, INPUT_SCALINGS),
        help=f"(default: {DEFAULT_INPUT_SCALING})",
    )
    grid.add_argument(
        "--seed",
        type=list_of(INDEX),
        help="seeds for initialisation and data order, a comma list (default: 0)",
    )
    grid.add_argument(
        "--kind",
        type=list_of(str, KINDS),
        help="with --target-site (and needed there): sae (of the target), transcoder, "
        "skip_transcoder, to compare them on one figure",
    )
    settings = p.add_argument_group(
        "architecture settings",
        "a sparsity setting (k, coefficients) is an axis of the grid for the architectures it "
        "is the knob of; the others apply to every SAE that takes them",
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
    if args.config:
        return grid_evals(read_grid_file(args.config), args.evals)
    return {p: list(args.evals) for p in points}


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
