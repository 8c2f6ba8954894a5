"""Automated interpretability with detection scoring (SAEBench's autointerp eval; Bills et al.
2023, Paulo et al. 2024), with any chat model (llm.py).

For each sampled latent (alive: at least dead_latent_threshold activations in the data), on
held-out text of an activation cache, with examples being windows of `buffer` tokens either
side of an activating token, at most one per packed context:
As SAEBench's gather_data (sae_bench/evals/autointerp/main.py):
0. Examples: the n_top_ex_for_generation + n_top_ex_for_scoring top-activating windows, split
   between explaining and scoring by a random permutation; n_iw_sampled_ex_for_generation +
   n_iw_sampled_ex_for_scoring windows drawn with probability proportional to the squared
   activation among the activations below the weakest top example, split the same way; and
   n_random_ex_for_scoring windows at random tokens, labelled negative whatever the latent does
   there (SAEBench gives them zero activations).
1. Explain: the explainer reads the explaining examples, the tokens above act_threshold_frac *
   max activation marked <<like this>>, and writes a one-sentence explanation.
2. Score: the scorer reads the explanation and the unmarked, shuffled scoring examples, and
   lists the examples it predicts the latent fires on. A top or sampled example is positive
   when some token in it is above the threshold; a random one is negative. Score of the
   latent: the fraction of examples predicted right (accuracy); F1 beside it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ...options import option
from ..examples import latent_codes, sampled_rows, top_rows, weighted_rows, window
from .output import eval_output, interval_text, intervals
from .probes import f1

EXPLAIN_SYSTEM = (
    "We are studying a feature of a neural network that fires on particular words, substrings or "
    "concepts in text. You see text excerpts on which it fires, the strongest first, with the "
    "words it fires on marked <<like this>>. Say in one short sentence (at most 20 words, no "
    "list) what the feature fires on: a general pattern, not one example. Answer with the "
    "explanation only."
)
SCORE_SYSTEM = (
    "We are studying a feature of a neural network that fires on particular words, substrings or "
    "concepts in text. You get an explanation of the feature and numbered text excerpts. Answer "
    "with the numbers of the excerpts on which you predict the feature fires somewhere, "
    "comma-separated (for example: 2, 5), or None. Answer with nothing else."
)


EVAL_TYPE_ID = "autointerp"


@dataclass
class AutoInterpConfig:
    """The settings of the autointerp eval (SAEBench's defaults, but fewer latents)."""

    explainer: str = ""
    scorer: str = ""
    n_latents: int = option(
        20,
        "autointerp: latents to explain and score, drawn among the alive ones",
        flag="autointerp-latents",
        low=1,
    )
    override_latents: list[int] | None = None
    dead_latent_threshold: int = 15
    random_seed: int = 42
    buffer: int = 10
    act_threshold_frac: float = 0.01
    n_top_ex_for_generation: int = 10
    n_iw_sampled_ex_for_generation: int = 5
    n_top_ex_for_scoring: int = 2
    n_random_ex_for_scoring: int = 10
    n_iw_sampled_ex_for_scoring: int = 2
    max_explanation_chars: int = 200
    # what the run recorded (held-out tokens read, latents drawn), not settings
    n_tokens: int = field(default=0, metadata={"derived": True})
    latents: list[int] = field(default_factory=list, metadata={"derived": True})


def excerpt(tokenizer, tokens: list[tuple[int, float]], threshold: float | None) -> str:
    """The text of a window; with a threshold, tokens above it are marked <<...>> (adjacent ones
    together)."""
    out, open_ = [], False
    for token_id, value in tokens:
        text = tokenizer.decode([token_id]).replace("\n", " ")
        marked = threshold is not None and value > threshold
        if marked and not open_:
            lead = len(text) - len(text.lstrip())
            text, open_ = text[:lead] + "<<" + text[lead:], True
        elif not marked and open_:
            out.append(">>")
            open_ = False
        out.append(text)
    return ("".join(out) + (">>" if open_ else "")).strip()


def parse_prediction(reply: str, n: int) -> set[int]:
    """The example numbers (1..n) a scorer's reply lists; 'None' or no numbers: the empty set."""
    return {int(m) for m in re.findall(r"\d+", reply) if 1 <= int(m) <= n}


def explanation_of(reply: str, limit: int) -> str:
    """The first non-empty line of an explainer's reply, without quotes, a list number or a
    leading 'This feature fires on', at most `limit` characters."""
    line = next((s.strip() for s in reply.splitlines() if s.strip()), "")
    line = re.sub(
        r"^(\d+[.)]\s*)?(explanation:\s*)?((this|the) (feature|neuron|latent) (activates|fires) "
        r"on\s*)?",
        "",
        line,
        flags=re.IGNORECASE,
    ).strip(" \"'")
    return line[:limit] or "(no explanation)"


def score_latent(
    chat_explain, chat_score, tokenizer, examples: dict, threshold: float, rng, limit: int
) -> dict:
    """Explain one latent from examples["generation"] and score the explanation on
    examples["scoring"] (each a list of (tokens, is_positive)); returns its record."""
    shown = "\n".join(
        f"{i}. {excerpt(tokenizer, t, threshold)}"
        for i, (t, _) in enumerate(examples["generation"], 1)
    )
    explanation = explanation_of(
        chat_explain(
            [
                {"role": "system", "content": EXPLAIN_SYSTEM},
                {"role": "user", "content": f"Excerpts:\n{shown}"},
            ]
        ),
        limit,
    )
    scoring = [examples["scoring"][i] for i in rng.permutation(len(examples["scoring"]))]
    listed = "\n".join(f"{i}. {excerpt(tokenizer, t, None)}" for i, (t, _) in enumerate(scoring, 1))
    reply = chat_score(
        [
            {"role": "system", "content": SCORE_SYSTEM},
            {
                "role": "user",
                "content": f"Explanation: the feature fires on {explanation}\n\n"
                f"Excerpts:\n{listed}",
            },
        ]
    )
    predicted = parse_prediction(reply, len(scoring))
    truth = np.array([positive for _, positive in scoring])
    guess = np.array([i + 1 in predicted for i in range(len(scoring))])
    return {
        "explanation": explanation,
        "score": float((guess == truth).mean()),
        "f1": f1(guess, truth),
        "n_scored": len(scoring),
        "n_positive": int(truth.sum()),
        "scorer_reply": reply.strip()[:200],
    }


def latent_examples_for_scoring(
    data, row_of: dict, values: torch.Tensor, cfg: AutoInterpConfig, rng
) -> tuple[dict, float]:
    """({"generation": [...], "scoring": [...]} of (window tokens, is_positive), threshold) of
    one latent with codes `values` [N] (row_of: LatentCodes.row_of())."""
    threshold = cfg.act_threshold_frac * float(values.max())
    used = set()
    top = top_rows(
        values, data.context, cfg.n_top_ex_for_generation + cfg.n_top_ex_for_scoring, used
    )
    n_iw = cfg.n_iw_sampled_ex_for_generation + cfg.n_iw_sampled_ex_for_scoring
    weakest_top = float(values[top].min()) if top else float("inf")
    sampled = weighted_rows(values, data.context, n_iw, rng, used, below=weakest_top)
    random = sampled_rows(data.context, cfg.n_random_ex_for_scoring, rng, used)
    top, sampled = list(rng.permutation(top)), list(rng.permutation(sampled))

    def example(row, negative=False):
        tokens, _ = window(data, values, row_of, int(row), cfg.buffer, cfg.buffer)
        return tokens, not negative and any(v > threshold for _, v in tokens)

    n_top, n_sampled = cfg.n_top_ex_for_generation, cfg.n_iw_sampled_ex_for_generation
    return (
        {
            "generation": [example(r) for r in top[:n_top] + sampled[:n_sampled]],
            "scoring": [example(r) for r in top[n_top:] + sampled[n_sampled:]]
            + [example(r, negative=True) for r in random],
        },
        threshold,
    )


def autointerp(
    sae,
    cache,
    tokenizer,
    explainer,
    scorer=None,
    cfg: AutoInterpConfig | None = None,
    progress: bool = True,
) -> dict:
    """The autointerp eval of `sae` on an activation cache (held-out text) with chat models
    `explainer` and `scorer` (default: the explainer); a SAEBench document."""
    cfg = cfg or AutoInterpConfig()
    scorer = scorer or explainer
    sae = sae.cpu().eval()
    rng = np.random.default_rng(cfg.random_seed)
    if cfg.override_latents:
        bad = [i for i in cfg.override_latents if not 0 <= i < sae.cfg.d_sae]
        if bad:
            raise ValueError(f"latent(s) {bad} out of range: this SAE has d_sae={sae.cfg.d_sae}")
        latents = list(cfg.override_latents)
    else:
        counts = latent_codes(sae, cache, None).counts
        alive = torch.nonzero(counts >= cfg.dead_latent_threshold).flatten().numpy()
        if len(alive) == 0:
            raise ValueError(
                f"no latent fires {cfg.dead_latent_threshold} times on the {cache.n_tokens} "
                "held-out tokens: nothing to explain (more --eval-tokens?)"
            )
        latents = sorted(rng.choice(alive, min(cfg.n_latents, len(alive)), replace=False).tolist())
    data = latent_codes(sae, cache, latents)
    cfg.explainer, cfg.scorer = explainer.name, scorer.name
    cfg.n_tokens, cfg.latents = data.n_tokens, latents
    details, row_of = [], data.row_of()
    for j, latent in enumerate(
        tqdm(latents, desc="autointerp", unit="latent", disable=not progress)
    ):
        values = data.codes[:, j]
        if values.max() <= 0:
            details.append(
                {
                    "latent": latent,
                    "explanation": "(never fires on these tokens)",
                    "score": None,
                    "f1": None,
                    "n_scored": 0,
                    "n_positive": 0,
                    "scorer_reply": "",
                }
            )
            continue
        examples, threshold = latent_examples_for_scoring(data, row_of, values, cfg, rng)
        details.append(
            {
                "latent": latent,
                **score_latent(
                    explainer,
                    scorer,
                    tokenizer,
                    examples,
                    threshold,
                    rng,
                    cfg.max_explanation_chars,
                ),
            }
        )
    scores = np.array([d["score"] for d in details if d["n_scored"]])
    f1s = np.array([d["f1"] for d in details if d["n_scored"]])
    if len(scores) == 0:
        raise ValueError("none of the chosen latents fires on the held-out tokens")
    metrics = {
        "autointerp": {
            "autointerp_score": float(scores.mean()),
            "autointerp_std_dev": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "autointerp_f1": float(f1s.mean()),
        }
    }
    keys = {"autointerp_score": "score", "autointerp_f1": "f1"}
    spread = intervals(details, keys, "latents", cfg.random_seed)
    return eval_output(EVAL_TYPE_ID, sae, asdict(cfg), metrics, details, {"intervals": spread})


def run(sae, context, cfg: AutoInterpConfig) -> dict:
    """The eval on the held-out cache of `context` (an EvalContext), its chat model explaining
    and scoring."""
    return autointerp(
        sae, context.data, context.tokenizer, context.chat, cfg=cfg, progress=context.progress
    )


def summary(document: dict) -> list[str]:
    m, explainer = (
        document["eval_result_metrics"]["autointerp"],
        document["eval_config"]["explainer"],
    )
    lines = [
        f"  autointerp ({len(document['eval_result_details'])} latents, {explainer}; 95% "
        f"intervals over latents): detection accuracy {m['autointerp_score']:.3f}"
        f"{interval_text(document, 'autointerp_score')} (sd {m['autointerp_std_dev']:.3f}), F1 "
        f"{m['autointerp_f1']:.3f}{interval_text(document, 'autointerp_f1')}"
    ]
    if explainer == "builtin:smollm2-135m":
        lines.append(
            "  note: a 135M explainer and scorer check the plumbing; they are not a judge of "
            "interpretability (use a capable model through --llm-url)"
        )
    return lines
