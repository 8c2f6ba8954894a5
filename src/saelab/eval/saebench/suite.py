"""The interpretability evaluations by name, as `saelab eval --evals` and `saelab sweep --evals`
run them: each writes RUN/eval_results/<name>.json (SAEBench's schema, output.py).

  core            reconstruction, AFA analysis, downstream CE/KL (eval/full.py; eval.json)
  absorption      first-letter feature absorption (absorption.py; needs the model)
  sparse_probing  k-sparse probes on labelled text (sparse_probing.py; needs the model)
  autointerp      explanations and detection scores from a chat model (autointerp.py;
                  needs a held-out activation cache and --llm or --llm-url)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .absorption import AbsorptionConfig, absorption
from .autointerp import AutoInterpConfig, autointerp
from .output import write_output
from .sparse_probing import SparseProbingConfig, sparse_probing

EVALS = ("core", "absorption", "sparse_probing", "autointerp")
NEED_MODEL = ("absorption", "sparse_probing")


@dataclass
class Interp:
    """What the non-core evaluations need: the model and its hook, a held-out cache, a chat
    model, and each evaluation's settings (fields of its config dataclass)."""

    lm: object = None
    layer: int | None = None
    site: str = "resid_post"
    cache: object = None
    tokenizer: object = None
    chat: object = None
    settings: dict = field(default_factory=dict)  # {eval name: {field: value}}
    progress: bool = True


def check_evals(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in EVALS]
    if unknown:
        raise ValueError(f"unknown evaluation {unknown[0]!r}; choose from {', '.join(EVALS)}")
    return list(dict.fromkeys(names))


def run_interp(sae, names: list[str], out_dir: str | Path, interp: Interp) -> dict[str, dict]:
    """Run the non-core evaluations in `names` and write their files; {name: document}."""
    documents = {}
    for name in [n for n in names if n != "core"]:
        settings = interp.settings.get(name, {})
        if name in NEED_MODEL:
            hook = {"model_name": interp.lm.name, "layer": interp.layer, "site": interp.site}
            if name == "absorption":
                doc = absorption(
                    sae, interp.lm, AbsorptionConfig(**hook, **settings), interp.progress
                )
            else:
                doc = sparse_probing(
                    sae, interp.lm, SparseProbingConfig(**hook, **settings), interp.progress
                )
        else:
            doc = autointerp(
                sae,
                interp.cache,
                interp.tokenizer,
                interp.chat,
                cfg=AutoInterpConfig(**settings),
                progress=interp.progress,
            )
        write_output(out_dir, name, doc)
        documents[name] = doc
    return documents


def summary_lines(documents: dict[str, dict]) -> list[str]:
    """The headline numbers of each evaluation, one line each."""
    lines = []
    for name, doc in documents.items():
        metrics = doc["eval_result_metrics"]
        if name == "absorption":
            m = metrics["mean"]
            lines.append(
                f"  absorption: mean absorption fraction {m['mean_absorption_fraction_score']:.4f}, "
                f"full absorption {m['mean_full_absorption_score']:.4f}, split latents "
                f"{m['mean_num_split_features']:.2f} ({len(doc['eval_result_details'])} letters)"
            )
        elif name == "sparse_probing":
            llm, sae = metrics["llm"], metrics["sae"]
            ks = [key.split("_")[2] for key in sae if key.startswith("sae_top_")]
            tops = ", ".join(f"top-{k} {sae[f'sae_top_{k}_test_accuracy']:.3f}" for k in ks)
            lines.append(
                f"  sparse_probing ({len(doc['eval_result_details'])} tasks): SAE {tops}, all latents "
                f"{sae['sae_test_accuracy']:.3f}; model activations {llm['llm_test_accuracy']:.3f}, top-1 "
                f"channel {llm.get('llm_top_1_test_accuracy', float('nan')):.3f}"
            )
        elif name == "autointerp":
            m = metrics["autointerp"]
            lines.append(
                f"  autointerp ({len(doc['eval_result_details'])} latents, {doc['eval_config']['explainer']}): "
                f"detection accuracy {m['autointerp_score']:.3f} +- {m['autointerp_std_dev']:.3f}, "
                f"F1 {m['autointerp_f1']:.3f}"
            )
    return lines
