"""Why BatchTopK can fall behind TopK on raw activations: held-out NMSE split by token norm,
and BatchTopK evaluated with its learned threshold vs with per-token top-k at inference.

python bench/outliers.py runs/reproduction [--activations CACHE_DIR] [--factor 10]

For every topk/batchtopk SAE of a sweep directory, on the held-out activations (by default the
eval cache named by the SAEs' metadata under cache/): NMSE over all tokens, over the outlier
tokens (norm > factor x the median norm) and over the rest, FVU, and the fraction of the total
squared error that the outliers carry; for batchtopk also the same with two other inference
rules instead of the learned global threshold: per-token top-k (k = the trained k), and batch
top-k over held-out batches of 4096 tokens (the training rule); and the L0 on each group.
NMSE is the mean over the group's tokens of ||x - x_hat||^2 / ||x||^2 (as in eval.json); fvu_all
is sum ||x - x_hat||^2 / sum ||x - mean||^2 over all tokens, which the outliers dominate.
"""

import argparse
import json
from pathlib import Path

import torch

from saelab import SAE
from saelab.data.cache import ActivationCache, CacheSpec
from saelab.data.pipeline import cache_dir


def held_out(sae: SAE, override: str | None) -> torch.Tensor:
    if override:
        cache = ActivationCache(override)
    else:
        meta = sae.cfg.metadata
        spec = CacheSpec(
            **{
                key: meta[key]
                for key in ("model", "layer", "site", "dataset", "ctx_len", "include_special")
            },
            split="eval",
        )
        cache = ActivationCache(cache_dir("cache", spec))
    return torch.cat([cache.load_shard(i)["activations"].float() for i in range(len(cache.shards))])


@torch.no_grad()
def reconstruct(sae: SAE, x: torch.Tensor, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, L0 per token) with the SAE's own inference ("own"), per-token top-k of its
    pre-activations ("top-k"), or batch top-k over batches of 4096 tokens ("batch top-k")."""
    if rule == "own":
        codes = sae.encode(x)
        return sae(x), (codes > 0).sum(-1)
    if rule == "batch top-k":
        sae.train()  # batch semantics; encoding never moves the threshold
        parts = [(sae(b), (sae.encode(b) > 0).sum(-1)) for b in x.split(4096)]
        sae.eval()
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    stats = sae.input_stats(x)
    pre = sae.pre_activation(sae._scale(x, stats))
    values, index = pre.topk(sae.cfg.k, dim=-1)
    codes = torch.zeros_like(pre).scatter_(-1, index, values.relu())
    return sae.decode(codes, stats), (codes > 0).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--activations")
    parser.add_argument("--factor", type=float, default=10.0)
    args = parser.parse_args()
    rows, x = [], None
    for run in sorted(p.parent for p in args.sweep.glob("*/cfg.json")):
        sae = SAE.load(run).eval()
        if sae.cfg.arch not in ("topk", "batchtopk"):
            continue
        if x is None:
            x = held_out(sae, args.activations)
            norms = x.norm(dim=-1)
            outlier = norms > args.factor * norms.median()
            print(
                f"{len(x)} held-out tokens; {int(outlier.sum())} outliers (norm > {args.factor:g} "
                "x median "
                f"{norms.median():.0f}; their median norm {norms[outlier].median():.0f})\n"
            )
        for rule in ["own", "top-k", "batch top-k"] if sae.cfg.arch == "batchtopk" else ["own"]:
            x_hat, l0 = reconstruct(sae, x, rule)
            err = (x - x_hat).square().sum(-1)
            ratio = err / x.square().sum(-1)
            group = {"all": torch.ones_like(outlier), "outliers": outlier, "rest": ~outlier}
            row = {"run": run.name + ("" if rule == "own" else f" ({rule} inference)")}
            for name, mask in group.items():
                row[f"nmse_{name}"] = ratio[mask].mean().item()
            for name in ("outliers", "rest"):
                row[f"l0_{name}"] = l0[group[name]].float().mean().item()
            row["fvu_all"] = (err.sum() / (x - x.mean(0)).square().sum()).item()
            row["error_share_outliers"] = (err[outlier].sum() / err.sum()).item()
            rows.append(row)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print(
            "| " + " | ".join(row["run"] if c == "run" else f"{row[c]:.4g}" for c in columns) + " |"
        )
    (args.sweep / "outliers.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
