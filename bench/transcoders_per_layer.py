"""Per-layer fidelity of a transcoder for every MLP (issue 28): held-out FVU of each MLP's output
and CE with each MLP replaced by its transcoder, as one figure.

python bench/transcoders_per_layer.py RUN [--contexts 32] [--figure PATH] [--json PATH]

RUN: `saelab train --hookpoints "layers.*.mlp_in" --target-site mlp_out [--skip] --no-cache ...`
(README), one transcoder per block in RUN/layers.L.mlp_in. The FVU, NMSE and L0 come from each
run's eval.json (its held-out tokens); the CE comes from splicing each transcoder into the model
alone on --contexts held-out contexts of the text it was trained on (BOS left alone): CE
degradation over the clean model, and CE recovered against zero-ablating that MLP's output.
"""

import argparse
import json
from pathlib import Path

from saelab import SAE
from saelab.data.cache import CacheSpec
from saelab.data.models import load_model
from saelab.data.streaming import heldout_contexts
from saelab.eval.downstream import downstream
from saelab.eval.plots import plt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--contexts", type=int, default=32)
    parser.add_argument(
        "--figure", type=Path, default=Path("docs/figures/transcoders_per_layer.png")
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = sorted(
        (p for p in args.run.iterdir() if (p / "cfg.json").is_file()),
        key=lambda p: SAE.load(p).cfg.metadata["layer"],
    )
    meta = SAE.load(runs[0]).cfg.metadata
    lm = load_model(meta["model"])
    spec = CacheSpec(
        model=meta["model"],
        layer=meta["layer"],
        site=meta["site"],
        dataset=meta["dataset"],
        split="eval",
        ctx_len=meta["ctx_len"],
        include_special=meta["include_special"],
    )
    ids = heldout_contexts(lm, spec, args.contexts)
    rows = []
    for run in runs:
        sae = SAE.load(run)
        held = json.loads((run / "eval.json").read_text())
        spliced = downstream(sae, lm, ids, layer=sae.cfg.metadata["layer"], site=meta["site"])
        rows.append(
            {
                "layer": sae.cfg.metadata["layer"],
                "fvu": held["fvu"],
                "nmse": held["nmse"],
                "l0": held["l0"],
                "held_out_tokens": held["n_tokens"],
                **{k: spliced[k] for k in ("ce_clean", "ce_sae", "ce_zero", "ce_degradation",
                                           "ce_loss_recovered", "kl")},
            }
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    cfg = SAE.load(runs[0]).cfg
    kind = "skip transcoders" if cfg.skip else "transcoders"
    layers = [r["layer"] for r in rows]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8, 8.5), sharex=True)
    top.plot(layers, [r["fvu"] for r in rows], "o-", color="tab:blue")
    top.set_ylabel("held-out FVU of the\nMLP's output")
    top.set_title(
        f"{cfg.arch} {kind}, one per MLP of {meta['model']}: d_sae {cfg.d_sae}, "
        f"L0 {min(r['l0'] for r in rows):.0f}-{max(r['l0'] for r in rows):.0f}, "
        f"{rows[0]['held_out_tokens']} held-out tokens",
        fontsize=9,
    )
    middle.plot(layers, [r["ce_degradation"] for r in rows], "o-", color="tab:red")
    middle.set_ylabel("CE degradation (nats)\nthat MLP replaced")
    bottom.plot(layers, [r["ce_loss_recovered"] for r in rows], "o-", color="tab:green")
    bottom.axhline(1, color="black", lw=0.8)
    bottom.set_ylabel("CE recovered vs\nzero-ablated MLP")
    bottom.set_xlabel(f"block ({len(ids)} held-out contexts for CE)")
    for ax in (top, middle, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
