"""Held-out quality at an equal token budget: saelab's SAEs against EleutherAI sparsify and
dictionary_learning.

python bench/quality.py --train CACHE --held-out CACHE [--tokens 540000] [--d-sae 4608] [--k 32]
                        [--batch 1024] [--seeds 0 1] [--saelab topk batchtopk] [--lr 3e-4 1e-3]
                        [--no-sparsify] [--set grad_clip=null warmup_tokens=0 ...]
                        [--sparsify-lr 4.7e-3] [--dictionary-learning topk batchtopk] [--dl-lr 1e-3]

CACHE: `saelab cache` of the default model (`--split train`), and of its held-out documents
(`--split eval`: every 10th article, none of them in the training cache). Every contender sees
the same batches in the same order: a permutation of the training cache per epoch, from the
seed, until `--tokens`; the seed also sets the initialisation. Contenders:
- saelab: `Trainer` with every default but the named architecture (k is jumprelu's target L0),
  the learning rate (each `--lr`; `default` means TrainConfig's) and the TrainConfig or
  SAEConfig fields given with `--set` (JSON values), warmup/decay as `saelab train` does;
- sparsify 1.3.3 (bench/.venv-sparsify, installed on first use as by vs_sparsify.py) with the
  defaults of its trainer:
  TopK, signum in schedule-free (lr 5e-3 / sqrt(d_sae / 2^14)), FVU loss, no AuxK, b_dec at the
  first batch's mean; evaluated with the schedule-free average (`optimizer.eval()`), as its
  trainer saves. A `--sparsify-lr` list adds sparsify at those learning rates (tuned runs).
- dictionary_learning 0.1.0 (`--dictionary-learning topk batchtopk`;
  bench/.venv-dictionary-learning,
  installed on first use) with the defaults of its TopKTrainer / BatchTopKTrainer: Adam (0.9,
  0.999) at 2e-4 / sqrt(d_sae / 2^14), gradient clipping at 1, AuxK after 10M tokens without
  firing, b_dec at the first batch's geometric median, raw (unnormalised) activations; its
  step-counted warmup and threshold start (1000 steps) are cut to a fifth of the run where the
  run is shorter (they must be below the step count). `--dl-lr` adds learning rates.
On the held-out activations x (raw units) and reconstructions x_hat, per run:
NMSE = mean over tokens of ||x - x_hat||^2 / ||x||^2 (the BatchTopK paper's, saelab's eval);
FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2;
FVU on ordinary tokens: the same over tokens whose norm is at most 10x the median norm (the
massive first-token norms left out); L0: mean active latents per token and its 5-95% range;
dead: the fraction of latents that never fire on the held-out tokens; train wall time; for
saelab also the L0 of the last training batch (last_batch_l0, in the JSON lines).
"""

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from vs_sparsify import ensure_venv  # sparsify's virtual environment, installed on first use

from saelab import SAE, SAEConfig, TrainConfig
from saelab.data.cache import ActivationCache
from saelab.train.loop import Trainer

DL_VENV = Path(__file__).parent / ".venv-dictionary-learning"
DL_REQUIREMENT = "dictionary-learning==0.1.0"

# What every peer's child script shares: its arguments (see run_child), its training batches
# (the same rows in the same order as saelab's), and how it hands back its held-out outputs.
CHILD_IO = r"""
import json, sys, time
import numpy as np, torch
train, order = np.load(sys.argv[1], mmap_mode="r"), np.load(sys.argv[2])
held, out = np.load(sys.argv[3]), sys.argv[4]
d_sae, k, batch, seed = (int(a) for a in sys.argv[5:9])
lr = sys.argv[9]
extra = sys.argv[10:]
steps = len(order) // batch


def batches():
    for step in range(steps):
        rows = np.sort(order[step * batch:(step + 1) * batch])
        yield step, torch.from_numpy(train[rows].astype(np.float32))


def save(x_hat, l0, fires, seconds, lr):
    np.save(out + ".x_hat.npy", x_hat)
    np.save(out + ".l0.npy", l0)
    np.save(out + ".fires.npy", fires)
    print(json.dumps({"seconds": seconds, "lr": lr}))
"""

SPARSIFY_CHILD = (
    CHILD_IO
    + r"""
from schedulefree import ScheduleFreeWrapper
from sparsify import SparseCoder, SparseCoderConfig
from sparsify.sign_sgd import SignSGD
torch.manual_seed(seed)
sae = SparseCoder(train.shape[1], SparseCoderConfig(num_latents=d_sae, k=k))
lr = float(lr) if lr != "default" else 5e-3 / (d_sae / 2**14) ** 0.5
opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
opt.train()
start = time.perf_counter()
for step, x in batches():
    if step == 0:
        sae.b_dec.data = x.mean(0)
    sae.set_decoder_norm_to_unit_norm()
    out_ = sae(x, dead_mask=None, total_variance=(x - x.mean(0)).pow(2).sum())
    out_.fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    opt.zero_grad()
seconds = time.perf_counter() - start
opt.eval()
sae.set_decoder_norm_to_unit_norm()
x = torch.from_numpy(held.astype(np.float32))
with torch.no_grad():
    enc = sae.encode(x)
    x_hat = sae.decode(enc.top_acts, enc.top_indices)
    active = enc.top_acts > 0
counts = np.bincount(enc.top_indices[active].numpy(), minlength=d_sae)
save(x_hat.numpy(), active.sum(1).numpy(), counts, seconds, lr)
"""
)

# dictionary_learning's trainers, driven as its trainSAE drives them (update(step, x) per batch;
# no activation normalisation, its default). Its package __init__ imports nnsight for its
# activation buffer, which this benchmark does not use: a stub module stands in for it.
DL_CHILD = (
    CHILD_IO
    + r"""
import types
sys.modules["nnsight"] = types.SimpleNamespace(LanguageModel=None)
from dictionary_learning.trainers import BatchTopKTrainer, TopKTrainer
scaled = min(1000, steps // 5)  # its step-counted defaults (1000) scaled down to short budgets
Trainer = {"topk": TopKTrainer, "batchtopk": BatchTopKTrainer}[extra[0]]
trainer = Trainer(steps=steps, activation_dim=train.shape[1], dict_size=d_sae, k=k, layer=15,
                  lm_name="smollm2",
                  warmup_steps=scaled, threshold_start_step=scaled, seed=seed, device="cpu",
                  **({} if lr == "default" else {"lr": float(lr)}))
start = time.perf_counter()
for step, x in batches():
    trainer.update(step, x)
seconds = time.perf_counter() - start
x = torch.from_numpy(held.astype(np.float32))
with torch.no_grad():
    f = trainer.ae.encode(x)
    x_hat = trainer.ae.decode(f)
save(x_hat.numpy(), (f > 0).sum(1).numpy(), (f > 0).sum(0).numpy(), seconds, trainer.lr)
"""
)


def ensure_dictionary_learning_venv() -> Path:
    """dictionary_learning in its own virtual environment, without its dependencies (nnsight,
    wandb, umap, ...: the trainers need only torch and einops)."""
    python = DL_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DL_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "torch==2.13.0", "einops", "numpy", "tqdm"],
            check=True,
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", DL_REQUIREMENT], check=True
        )
    return python


def load(cache: str) -> np.ndarray:
    """All activations of a cache, float16 [n, d_in], in cache order."""
    c = ActivationCache(cache)
    return np.concatenate([c.load_shard(i)["activations"].numpy() for i in range(len(c.shard_ids))])


def stream_order(n: int, tokens: int, seed: int) -> np.ndarray:
    """Row indices of the training stream: a fresh permutation of the n rows per epoch."""
    rng = np.random.default_rng(seed)
    epochs = -(-tokens // n)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[:tokens]


def metrics(x: np.ndarray, x_hat: np.ndarray, l0: np.ndarray, fires: np.ndarray) -> dict:
    """Held-out metrics in raw units (see the module docstring)."""
    x, x_hat = x.astype(np.float64), x_hat.astype(np.float64)
    error = ((x - x_hat) ** 2).sum(1)
    norms = np.linalg.norm(x, axis=1)
    ordinary = norms <= 10 * np.median(norms)

    def fvu(rows):
        return error[rows].sum() / ((x[rows] - x[rows].mean(0)) ** 2).sum()

    return {
        "nmse": (error / norms**2).mean(),
        "fvu": fvu(slice(None)),
        "fvu_ordinary": fvu(ordinary),
        "l0": float(l0.mean()),
        "l0_p5": float(np.percentile(l0, 5)),
        "l0_p95": float(np.percentile(l0, 95)),
        "dead": float((fires == 0).mean()),
    }


def schedule_free(name: str, sae, lr: float, warmup_steps: int):
    """A schedule-free optimizer (the `schedulefree` package) in place of the trainer's Adam; the
    trainer's own warmup and decay must be off (--set warmup_tokens=0 decay_fraction=0); the
    optimizer warms up itself over the steps of the default warmup."""
    import schedulefree

    if name == "schedulefree-adam":
        optimizer = schedulefree.AdamWScheduleFree(
            sae.parameters(), lr=lr, betas=(0.9, 0.999), warmup_steps=warmup_steps
        )
    else:  # schedulefree-signum: sparsify's default, SignSGD in ScheduleFreeWrapper (momentum 0.95)

        def signs(opt, *_):
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.sign_()

        sign = torch.optim.SGD(sae.parameters(), lr=lr)
        sign.register_step_pre_hook(signs)
        optimizer = schedulefree.ScheduleFreeWrapper(sign, momentum=0.95)
    optimizer.train()
    return optimizer


def run_saelab(
    arch: str, lr: str, train: np.ndarray, order: np.ndarray, held: np.ndarray, args, seed: int
) -> dict:
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(
        batch_size=args.batch,
        progress=False,
        seed=seed,
        **{f: v for f, v in args.set.items() if f in train_fields},
        **({} if lr == "default" else {"lr": float(lr)}),
    )
    steps = len(order) // args.batch
    sae = SAE(
        SAEConfig(
            arch=arch,
            d_in=train.shape[1],
            d_sae=args.d_sae,
            k=args.k,
            **{f: v for f, v in args.set.items() if f not in train_fields},
        ),
        seed=seed,
    )
    trainer = Trainer(sae, cfg, total_steps=steps)
    if args.optimizer != "adam":
        warmup = min(
            TrainConfig.warmup_tokens // args.batch, steps // 2
        )  # the default warmup, in its steps
        trainer.optimizer = schedule_free(args.optimizer, sae, trainer.lr, warmup)
    start = time.perf_counter()
    for step in range(steps):
        rows = np.sort(order[step * args.batch : (step + 1) * args.batch])
        trainer.train_step(torch.from_numpy(train[rows].astype(np.float32)))
    seconds = time.perf_counter() - start
    if args.optimizer != "adam":
        trainer.optimizer.eval()  # the averaged weights
        sae.normalize_decoder()
    sae.eval()
    x = torch.from_numpy(held.astype(np.float32))
    with torch.no_grad():
        x_hat = sae(x).numpy()
        active = sae.encode(x) > 0
    result = metrics(held, x_hat, active.sum(1).numpy(), active.sum(0).numpy())
    return {
        **result,
        "seconds": seconds,
        "lr": trainer.lr,
        "last_batch_l0": trainer.history[-1]["l0"],
    }


def run_child(python: Path, code: str, lr: str, files: dict, args, seed: int, *extra: str) -> dict:
    """A peer's training in its own virtual environment, evaluated here on its saved outputs."""
    out = str(files["dir"] / "peer")
    child = subprocess.run(
        [
            str(python),
            "-c",
            code,
            str(files["train"]),
            str(files["order"]),
            str(files["held"]),
            out,
            str(args.d_sae),
            str(args.k),
            str(args.batch),
            str(seed),
            lr,
            *extra,
        ],
        capture_output=True,
        text=True,
    )
    if child.returncode:
        raise SystemExit(f"{python} failed:\n{child.stderr[-2000:]}")
    info = json.loads(child.stdout.strip().splitlines()[-1])
    result = metrics(
        files["held_values"],
        np.load(out + ".x_hat.npy"),
        np.load(out + ".l0.npy"),
        np.load(out + ".fires.npy"),
    )
    return {**result, **info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train", required=True, metavar="CACHE", help="training activations (saelab cache)"
    )
    parser.add_argument(
        "--held-out", required=True, metavar="CACHE", help="held-out activations (--split eval)"
    )
    parser.add_argument("--tokens", type=int, default=540_000)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--saelab", nargs="*", default=["topk", "batchtopk"], help="saelab architectures"
    )
    parser.add_argument(
        "--lr",
        nargs="+",
        default=["default"],
        help="saelab learning rates ('default': TrainConfig's)",
    )
    parser.add_argument(
        "--sparsify-lr", nargs="*", default=[], help="also sparsify at these learning rates"
    )
    parser.add_argument("--no-sparsify", action="store_true", help="leave sparsify out")
    parser.add_argument(
        "--dictionary-learning",
        nargs="*",
        default=[],
        choices=["topk", "batchtopk"],
        help="also dictionary_learning's trainers for these architectures (at its default lr)",
    )
    parser.add_argument(
        "--dl-lr", nargs="*", default=[], help="also dictionary_learning at these learning rates"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=JSON",
        help="TrainConfig or SAEConfig fields for saelab's runs, e.g. grad_clip=null aux_k=256",
    )
    parser.add_argument(
        "--optimizer",
        default="adam",
        choices=["adam", "schedulefree-adam", "schedulefree-signum"],
        help="saelab's optimizer (schedule-free ones need the schedulefree package and "
        "--set warmup_tokens=0 decay_fraction=0 for the trainer's own schedule)",
    )
    parser.add_argument("--json", help="also write every run to this file")
    args = parser.parse_args()
    args.set = {
        field: json.loads(value) for field, value in (item.split("=", 1) for item in args.set)
    }
    train, held = load(args.train), load(args.held_out)
    print(
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"train {args.train} ({len(train)} tokens), held out {args.held_out} ({len(held)} "
        f"tokens); budget {args.tokens} tokens ({args.tokens / len(train):.1f} epochs), batch "
        f"{args.batch}, d_sae {args.d_sae}, k "
        f"{args.k}" + (f"; saelab with {args.set}" if args.set else "")
    )
    python = None if args.no_sparsify else ensure_venv()
    dl_python = ensure_dictionary_learning_venv() if args.dictionary_learning else None
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "dir": Path(tmp),
            "train": Path(tmp) / "train.npy",
            "order": Path(tmp) / "order.npy",
            "held": Path(tmp) / "held.npy",
            "held_values": held,
        }
        np.save(files["train"], train)
        np.save(files["held"], held)
        for seed in args.seeds:
            order = stream_order(len(train), args.tokens, seed)
            np.save(files["order"], order)
            for arch in args.saelab:
                for lr in args.lr:
                    runs.append(
                        {
                            "contender": f"saelab {arch}",
                            "seed": seed,
                            **run_saelab(arch, lr, train, order, held, args, seed),
                        }
                    )
                    print(json.dumps(runs[-1]), flush=True)
            if python is not None:
                for lr in ["default", *args.sparsify_lr]:
                    runs.append(
                        {
                            "contender": "sparsify topk",
                            "seed": seed,
                            **run_child(python, SPARSIFY_CHILD, lr, files, args, seed),
                        }
                    )
                    print(json.dumps(runs[-1]), flush=True)
            for arch in args.dictionary_learning:
                for lr in ["default", *args.dl_lr]:
                    runs.append(
                        {
                            "contender": f"dict_learning {arch}",
                            "seed": seed,
                            **run_child(dl_python, DL_CHILD, lr, files, args, seed, arch),
                        }
                    )
                    print(json.dumps(runs[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    print(
        f"\n{'contender':<24} {'lr':>8} {'NMSE':>7} {'FVU':>7} {'FVU ord.':>9} {'L0':>6} "
        f"{'L0 5-95%':>11} {'dead':>6} {'train s':>8}   (medians over seeds {args.seeds})"
    )
    groups = {}
    for run in runs:
        groups.setdefault((run["contender"], run["lr"]), []).append(run)
    for (name, lr), group in groups.items():
        med = {
            key: statistics.median(r[key] for r in group)
            for key in group[0]
            if key not in ("contender", "seed")
        }
        print(
            f"{name:<24} {lr:>8.2g} {med['nmse']:>7.4f} {med['fvu']:>7.4f} "
            f"{med['fvu_ordinary']:>9.4f} "
            f"{med['l0']:>6.1f} {med['l0_p5']:>5.0f}-{med['l0_p95']:<5.0f} {med['dead']:>6.3f} "
            f"{med['seconds']:>8.0f}"
        )


if __name__ == "__main__":
    main()
