"""Transcoders and skip transcoders at an equal token budget: saelab against EleutherAI sparsify
on the default model's block-15 MLP (issue 28), with bench/quality.py's protocol.

python bench/transcoders.py --train CACHE --held-out CACHE [--tokens 524288] [--d-sae 4608]
                            [--k 32] [--batch 1024] [--seeds 0 1] [--saelab topk batchtopk]
                            [--lr default 1e-3] [--sparsify-lr 2e-3] [--contexts 32] [--json F]

CACHE: a `saelab cache --hookpoints layers.15.mlp_in,layers.15.mlp_out` folder of the default
model's training text, and one of its held-out documents (`--split eval`). Every contender sees
the same batches (rows of x = the MLP's input and y = its output, side by side) in the same
order: a permutation of the training cache per epoch, from the seed, until --tokens; the seed
also sets the initialisation. Contenders, each as a transcoder and as a skip transcoder:
- saelab: `Trainer` with every default (expected_norm scaling of x and of y, Adam, AuxK) but
  the architecture and the learning rate (each --lr; `default`: TrainConfig's);
- sparsify 1.3.3 (bench/.venv-sparsify, installed on first use) as its trainer runs
  `--transcode` (`--skip_connection`): TopK, signum in schedule-free (lr 5e-3 / sqrt(d_sae /
  2^14), or each --sparsify-lr), FVU loss of y, no AuxK (auxk_alpha 0), the encoder bias at
  -mean(x) W_enc^T and b_dec at mean(y) on the first batch, no decoder normalisation; evaluated
  with the schedule-free average, saved with its own save_to_disk and read back by saelab
  (the read is exact: tests/test_library_files.py).
Per run, on the held-out rows (raw units): the target's FVU = sum ||y - y_hat||^2 / sum ||y -
mean(y)||^2, its NMSE, FVU on ordinary tokens (norm at most 10x the median), L0 and dead
latents (never firing on the held-out rows), train wall time; and spliced into the model on
--contexts held-out contexts: the MLP's output replaced by the prediction from its input (BOS
left alone), CE degradation over the clean model and CE recovered against the MLP zero-ablated.
"""

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from quality import CHILD_IO, load, metrics, stream_order
from vs_sparsify import ensure_venv

from saelab import SAE, SAEConfig, TrainConfig
from saelab.data.cache import ActivationCache
from saelab.data.models import load_model
from saelab.data.streaming import heldout_contexts
from saelab.eval.downstream import ablation_losses, downstream
from saelab.train.loop import Trainer

SPARSIFY_CHILD = (
    CHILD_IO
    + r"""
from schedulefree import ScheduleFreeWrapper
from sparsify import SparseCoder, SparseCoderConfig
from sparsify.sign_sgd import SignSGD
d = train.shape[1] // 2
torch.manual_seed(seed)
cfg = SparseCoderConfig(num_latents=d_sae, k=k, transcode=True, skip_connection=extra[0] == "skip")
sae = SparseCoder(d, cfg)
lr = float(lr) if lr != "default" else 5e-3 / (d_sae / 2**14) ** 0.5
opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
opt.train()
start = time.perf_counter()
for step, rows in batches():
    x, y = rows[:, :d], rows[:, d:]
    if step == 0:
        sae.encoder.bias.data = -x.mean(0) @ sae.encoder.weight.data.T
        sae.b_dec.data = y.mean(0)
    sae(x, y, dead_mask=None).fvu.backward()
    opt.step()
    opt.zero_grad()
seconds = time.perf_counter() - start
opt.eval()
x = torch.from_numpy(held[:, :d].astype(np.float32))
with torch.no_grad():
    enc = sae.encode(x)
    y_hat = sae.decode(enc.top_acts, enc.top_indices)
    if sae.W_skip is not None:
        y_hat += x @ sae.W_skip.mT
    active = enc.top_acts > 0
sae.save_to_disk(out + ".sae")
counts = np.bincount(enc.top_indices[active].numpy(), minlength=d_sae)
save(y_hat.numpy(), active.sum(1).numpy(), counts, seconds, lr)
"""
)


def hooks(layer: int) -> dict:
    """What a transcoder of block `layer`'s MLP records: its input and target hook points."""
    return {"layer": layer, "site": "mlp_in", "target_layer": layer, "target_site": "mlp_out"}


def side_by_side(cache: str, layer: int) -> np.ndarray:
    """x (mlp_in) and y (mlp_out) of block `layer`, float16 [n, 2 d_model], rows aligned."""
    return np.concatenate(
        [load(f"{cache}/layers.{layer}.{site}") for site in ("mlp_in", "mlp_out")], axis=1
    )


def run_saelab(arch, skip, lr, train, order, held, args, seed) -> tuple[dict, SAE]:
    d = train.shape[1] // 2
    cfg = TrainConfig(
        batch_size=args.batch,
        progress=False,
        seed=seed,
        **({} if lr == "default" else {"lr": float(lr)}),
    )
    sae = SAE(
        SAEConfig(
            arch=arch,
            d_in=d,
            d_sae=args.d_sae,
            k=args.k,
            d_out=d,
            skip=skip,
            metadata=hooks(args.layer),
        ),
        seed=seed,
    )
    trainer = Trainer(sae, cfg, total_steps=len(order) // args.batch)
    start = time.perf_counter()
    for step in range(len(order) // args.batch):
        rows = np.sort(order[step * args.batch : (step + 1) * args.batch])
        trainer.train_step(torch.from_numpy(train[rows].astype(np.float32)))
    seconds = time.perf_counter() - start
    sae.eval()
    x = torch.from_numpy(held[:, :d].astype(np.float32))
    with torch.no_grad():
        y_hat = sae(x).numpy()
        active = sae.encode(x) > 0
    result = metrics(held[:, d:], y_hat, active.sum(1).numpy(), active.sum(0).numpy())
    return {**result, "seconds": seconds, "lr": trainer.lr}, sae


def run_sparsify(python, skip, lr, files, args, seed) -> tuple[dict, SAE]:
    out = str(files["dir"] / "peer")
    child = subprocess.run(
        [str(python), "-c", SPARSIFY_CHILD, str(files["train"]), str(files["order"]),
         str(files["held"]), out, str(args.d_sae), str(args.k), str(args.batch), str(seed), lr,
         "skip" if skip else "plain"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if child.returncode:
        raise SystemExit(f"{python} failed:\n{child.stderr[-2000:]}")
    info = json.loads(child.stdout.strip().splitlines()[-1])
    d = files["held_values"].shape[1] // 2
    result = metrics(
        files["held_values"][:, d:],
        np.load(out + ".x_hat.npy"),
        np.load(out + ".l0.npy"),
        np.load(out + ".fires.npy"),
    )
    sae = SAE.load_any(out + ".sae")
    sae.cfg.metadata.update(hooks(args.layer))
    return {**result, **info}, sae


def spliced(sae: SAE, lm, ids: torch.Tensor, ablations: dict, layer: int) -> dict:
    """CE degradation and CE recovered with the transcoder in place of the MLP."""
    out = downstream(sae, lm, ids, layer=layer, site="mlp_in", ablations=ablations)
    return {
        "ce_degradation": out["ce_degradation"],
        "ce_loss_recovered": out["ce_loss_recovered"],
        "kl": out["kl"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, metavar="CACHE")
    parser.add_argument("--held-out", required=True, metavar="CACHE")
    parser.add_argument("--layer", type=int, default=15, help="the block (default: 15)")
    parser.add_argument("--tokens", type=int, default=524_288)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--saelab", nargs="*", default=["topk", "batchtopk"])
    parser.add_argument("--lr", nargs="+", default=["default"])
    parser.add_argument("--sparsify-lr", nargs="*", default=[])
    parser.add_argument("--contexts", type=int, default=32, help="held-out contexts for CE")
    parser.add_argument("--json", help="also write every run to this file")
    args = parser.parse_args()
    train, held = side_by_side(args.train, args.layer), side_by_side(args.held_out, args.layer)
    spec = ActivationCache(f"{args.held_out}/layers.{args.layer}.mlp_in").spec
    lm = load_model(spec.model)
    ids = heldout_contexts(lm, spec, args.contexts)
    ablations = ablation_losses(lm.model, ids, args.layer, "mlp_out")
    print(
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"train {args.train} ({len(train)} tokens), held out {args.held_out} ({len(held)} "
        f"tokens, {len(ids)} contexts for CE); budget {args.tokens} tokens "
        f"({args.tokens / len(train):.1f} epochs), batch {args.batch}, d_sae {args.d_sae}, "
        f"k {args.k}"
    )
    python = ensure_venv()
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
            for skip in (False, True):
                kind = "skip transcoder" if skip else "transcoder"
                contenders = [
                    (f"saelab {arch} {kind}", lr, lambda a=arch, s=skip, r=lr: run_saelab(
                        a, s, r, train, order, held, args, seed))
                    for arch in args.saelab
                    for lr in args.lr
                ] + [
                    (f"sparsify topk {kind}", lr, lambda s=skip, r=lr: run_sparsify(
                        python, s, r, files, args, seed))
                    for lr in ["default", *args.sparsify_lr]
                ]  # fmt: skip
                for name, lr, run in contenders:
                    result, sae = run()
                    runs.append(
                        {
                            "contender": name,
                            "seed": seed,
                            "lr_asked": lr,
                            **result,
                            **spliced(sae, lm, ids, ablations, args.layer),
                        }
                    )
                    print(json.dumps(runs[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    print("\ncontender | lr | FVU (mean over seeds) | CE degradation | L0 | dead | seconds")
    for name in dict.fromkeys(r["contender"] for r in runs):
        for lr in dict.fromkeys(r["lr_asked"] for r in runs if r["contender"] == name):
            mine = [r for r in runs if r["contender"] == name and r["lr_asked"] == lr]
            mean = {key: float(np.mean([r[key] for r in mine])) for key in mine[0] if key
                    in ("fvu", "ce_degradation", "l0", "dead", "seconds")}  # fmt: skip
            print(
                f"{name} | {lr} | {mean['fvu']:.4f} | {mean['ce_degradation']:.4f} | "
                f"{mean['l0']:.1f} | {mean['dead']:.3f} | {mean['seconds']:.0f}"
            )


if __name__ == "__main__":
    main()
