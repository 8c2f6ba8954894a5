"""The `saelab` command line: parses arguments and calls the Python API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import __version__
from .config import ARCHS, INPUT_SCALINGS, SAEConfig, TrainConfig
from .data.activations import open_source
from .data.synthetic import synthetic_activations
from .eval.metrics import evaluate
from .io.format import WEIGHTS_NAME
from .sae.model import SAE
from .train.checkpoint import CHECKPOINT_NAME
from .train.loop import HISTORY_NAME, train

DEMO = {"n_tokens": 2**17, "d_in": 64, "n_features": 512, "max_active": 64, "train_tokens": 2_000_000}


def _add_train_parser(commands) -> None:
    p = commands.add_parser(
        "train",
        help="train an SAE on activations and evaluate it on a held-out slice",
        description="Train an SAE, evaluate it on held-out activations and save it into --out. "
        "With no --activations, trains on a generated data set with a known dictionary.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--activations", metavar="FILE.npy",
                      help="activations [tokens, d_in] as a .npy file (default: a generated data set)")
    data.add_argument("--eval-tokens", type=int, default=None,
                      help="tokens held out from the end of the data for evaluation (default: 10%%, at most 65536)")
    sae = p.add_argument_group("SAE")
    sae.add_argument("--arch", choices=ARCHS, default="batchtopk", help="architecture (default: batchtopk)")
    sae.add_argument("--k", type=int, default=32,
                     help="latents per token: exact for topk, mean for batchtopk, the target L0 for jumprelu "
                     "without --l0-coefficient; ignored by relu and topafa (default: 32)")
    sae.add_argument("--expansion", type=int, default=8, help="d_sae = expansion * d_in (default: 8)")
    sae.add_argument("--input-scaling", choices=INPUT_SCALINGS, default="expected_norm",
                     help="expected_norm: scale inputs so E||x||^2 = d_in (folded into the saved weights); "
                     "per_token: standardise each token; none (default: expected_norm)")
    sae.add_argument("--l1-coefficient", type=float, default=5.0, help="relu: L1 penalty weight (default: 5)")
    sae.add_argument("--l0-coefficient", type=float, default=None,
                     help="jumprelu: a fixed L0 penalty weight instead of the --k target")
    sae.add_argument("--afa-coefficient", type=float, default=1 / 32, help="topafa: AFA loss weight (default: 1/32)")
    sae.add_argument("--aux-k", type=int, default=512, help="AuxK: dead latents used per token (default: 512)")
    sae.add_argument("--aux-coefficient", type=float, default=1 / 32, help="AuxK loss weight (default: 1/32)")
    opt = p.add_argument_group("training")
    opt.add_argument("--tokens", type=int, default=None,
                     help="training tokens (default: one pass over the training slice)")
    opt.add_argument("--batch-size", type=int, default=4096, help="tokens per batch (default: 4096)")
    opt.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default: 3e-4)")
    opt.add_argument("--dead-tokens", type=int, default=100_000,
                     help="a latent is dead after this many tokens without firing (default: 100000)")
    opt.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default: 0)")
    run = p.add_argument_group("run")
    run.add_argument("--out", metavar="RUN", default=None,
                     help="run directory (default: runs/<date>-<time>-<arch>-k<k>)")
    run.add_argument("--checkpoint-every", type=int, default=1_000_000, metavar="TOKENS",
                     help="write a checkpoint every this many tokens (default: 1000000)")
    run.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _run_dir(args) -> Path:
    if args.out is None:
        return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.arch}-k{args.k}"
    out = Path(args.out)
    if not args.resume and not args.overwrite:
        if (out / CHECKPOINT_NAME).exists():
            sys.exit(f"saelab: {out} holds an interrupted run; pass --resume to continue it or --overwrite")
        if (out / WEIGHTS_NAME).exists():
            sys.exit(f"saelab: {out} already holds a trained SAE; pass --overwrite or choose another --out")
    return out


def _load_data(args):
    """(training source, held-out source, ground-truth dictionary or None)."""
    if args.activations:
        source, dictionary = open_source(args.activations), None
    else:
        print(f"no --activations given: generating {DEMO['n_tokens']} activations (d_in={DEMO['d_in']}) "
              f"from a known random dictionary of {DEMO['n_features']} features")
        x, dictionary = synthetic_activations(DEMO["n_tokens"], DEMO["d_in"], DEMO["n_features"],
                                              DEMO["max_active"], seed=1234)
        if args.tokens is None:
            args.tokens = DEMO["train_tokens"]
        source = open_source(x, name="generated")
    heldout = args.eval_tokens if args.eval_tokens is not None else min(65536, source.n_tokens // 10)
    train_source, eval_source = source.split(heldout)
    return train_source, eval_source, dictionary


def dictionary_recovery(sae: SAE, dictionary: torch.Tensor) -> float:
    """Mean over true features of the max cosine similarity with any decoder row."""
    rows = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    return (dictionary @ rows.T).max(dim=1).values.mean().item()


def cmd_train(args) -> None:
    out = _run_dir(args)
    train_source, eval_source, dictionary = _load_data(args)
    cfg = SAEConfig(
        arch=args.arch, d_in=train_source.d_in, d_sae=args.expansion * train_source.d_in,
        k=None if args.arch in ("relu", "topafa") or args.l0_coefficient is not None else args.k,
        l1_coefficient=args.l1_coefficient, l0_coefficient=args.l0_coefficient,
        afa_coefficient=args.afa_coefficient, aux_k=args.aux_k, aux_coefficient=args.aux_coefficient,
        input_scaling=args.input_scaling,
        metadata={"activations": args.activations or "generated"},
    )
    train_cfg = TrainConfig(
        batch_size=args.batch_size, lr=args.lr, total_tokens=args.tokens, dead_tokens=args.dead_tokens,
        seed=args.seed, out_dir=str(out), checkpoint_every_tokens=args.checkpoint_every,
        resume=args.resume, progress=not args.no_progress,
    )
    sae = SAE(cfg, seed=args.seed)
    print(f"training {cfg.arch} d_in={cfg.d_in} d_sae={cfg.d_sae} on {train_source.n_tokens} tokens "
          f"-> {out}")
    result = train(sae, train_source, train_cfg)
    metrics = {"train_tokens": result.tokens, **evaluate(result.sae, eval_source, batch_size=args.batch_size)}
    if dictionary is not None:
        metrics["dictionary_recovery"] = dictionary_recovery(result.sae, dictionary)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "train_config.json").write_text(json.dumps(train_cfg.to_dict(), indent=2) + "\n")
    _print_summary(out, metrics)


def _print_summary(out: Path, metrics: dict) -> None:
    print(f"\nheld-out evaluation ({metrics['n_tokens']} tokens):")
    for key in ("nmse", "explained_variance", "l0", "dead_fraction", "dictionary_recovery"):
        if key in metrics:
            print(f"  {key:<20} {metrics[key]:.4f}")
    print(f"\nwritten to {out}/:")
    print(f"  cfg.json, {WEIGHTS_NAME}   the SAE (load with saelab.SAE.load('{out}'))")
    print(f"  metrics.json                 held-out metrics")
    print(f"  {HISTORY_NAME}                training history, one JSON record per log step")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saelab",
        description="Train and evaluate sparse autoencoders (relu, topk, batchtopk, jumprelu, topafa) "
        "on language-model activations.",
    )
    parser.add_argument("--version", action="version", version=f"saelab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"saelab: error: {err}")
