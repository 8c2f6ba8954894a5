"""Feature absorption on first letters (Chanin et al. 2024, "A is for Absorption"; the metrics of
SAEBench's absorption_first_letter eval).

1. Words: the single tokens of the model's own vocabulary that are a space and ASCII letters
   (" cat"), a seeded sample of them, split into train and test.
2. Prompts: `icl_examples` in-context examples, then the word:
   " tartan has the first letter: T\n mirth has the first letter: M\n cat has the first letter:"
   and the model's activation at the hook site on the word's token.
3. Ground truth: per letter a logistic-regression probe on the activations (one vs rest);
   letters whose probe reaches test F1 > min_probe_f1 are evaluated.
4. Main latents of a letter: the SAE latents with the largest class-mean difference (on the
   training words), k = 1, 2, ...: a k-sparse probe is fit on the first k, and k grows while its
   test F1 rises by more than f1_jump_threshold (more than one main latent = a feature split).
   (SAEBench ranks latents by the weights of an L1-penalised probe on all latents; the class
   mean difference is the ranking of its sparse-probing eval.)
5. For each test word of the letter that the probe detects (a probe true positive), with p the
   unit probe direction, P = x . p its probe projection, and c_i the projection onto p of
   latent i's contribution to the reconstruction, in input units (f_i W_dec,i . p, mapped back
   through the SAE's input scaling):
   absorption fraction: 0 if the main latents account for P (sum_main c_i >= P) or if the
     absorbers do not (the largest `max_absorbing_latents` c_i > 0 of the other latents with
     cos(W_dec,i, p) >= 0.1 sum to less than 0.4 P); 1 if the main latents contribute nothing
     (sum <= 0); else a / (a + sum_main c_i), a = min(absorbers' sum, P - sum_main c_i).
   full absorption: every main latent is zero, P >= 0, and the latent with the largest c_i has
     cos >= 0.025 and c_i >= 0.4 P.
   Per letter: mean absorption fraction and full-absorption rate over its probe true positives;
   reported: their means and standard deviations over the letters evaluated, which must be at
   least min_letters (SAEBench asks for 20; small models pass fewer, so saelab's default is 5).
"""

from __future__ import annotations

import statistics
import string
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...data.hooks import DEFAULT_SITE, harvest
from ...data.packing import right_padded
from ...errors import SaelabError
from ...options import option
from .output import eval_output
from .probes import as_numpy, f1, fit_probe, top_mean_difference

LETTERS = string.ascii_lowercase


EVAL_TYPE_ID = "absorption_first_letter"


@dataclass
class AbsorptionConfig:
    """The settings of the absorption eval (SAEBench's defaults where it has them)."""

    model_name: str = ""
    layer: int = 0
    site: str = DEFAULT_SITE
    random_seed: int = 42
    max_words: int = option(
        4000,
        "absorption: single-token words of the vocabulary to probe for first letters",
        flag="absorption-words",
        low=100,
    )
    test_fraction: float = 0.2
    icl_examples: int = 4
    prompt_template: str = "{word} has the first letter:"
    max_k_value: int = 10
    f1_jump_threshold: float = 0.03
    min_probe_f1: float = 0.6
    min_letters: int = 5
    full_absorption_probe_cos_sim_threshold: float = 0.025
    absorption_fraction_probe_cos_sim_threshold: float = 0.1
    probe_projection_proportion_threshold: float = 0.4
    absorption_fraction_max_absorbing_latents: int = 3
    llm_batch_size: int = 32


class AbsorptionError(SaelabError, ValueError):
    """The model gives too little to measure absorption with (too few words or letters)."""


def single_token_words(tokenizer) -> list[tuple[int, str]]:
    """(token id, text) of every vocabulary token that is a space and two or more ASCII
    letters, in id order."""
    words = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if len(text) > 2 and text[0] == " " and text[1:].isascii() and text[1:].isalpha():
            words.append((token_id, text))
    return words


def prompt_ids(
    tokenizer, bos_id: int | None, word: tuple[int, str], examples: list[str], template: str
) -> tuple[list[int], int]:
    """(token ids, position of the word's token) of one ICL prompt; the word is its own token."""
    prefix, suffix = template.split("{word}")
    shots = "".join(template.format(word=w) + f" {w.strip()[0].upper()}\n" for w in examples)
    head = ([bos_id] if bos_id is not None else []) + tokenizer(
        shots + prefix, add_special_tokens=False
    )["input_ids"]
    tail = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    return head + [word[0]] + tail, len(head)


@torch.inference_mode()
def word_activations(
    lm,
    prompts: list[tuple[list[int], int]],
    layer: int,
    site: str,
    batch_size: int,
    progress: bool = True,
) -> torch.Tensor:
    """The activation [n, d_model] at each prompt's word position (right-padded batches of
    prompts of similar length)."""
    out = []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][0]))
    for start in tqdm(
        range(0, len(prompts), batch_size),
        desc="absorption prompts",
        unit="batch",
        disable=not progress,
    ):
        batch = [prompts[i] for i in order[start : start + batch_size]]
        ids, mask = right_padded([tokens for tokens, _ in batch], lm.tokenizer.pad_token_id)
        acts = harvest(lm, ids, layer, site, attention_mask=mask).float().cpu()
        out.append(acts[torch.arange(len(batch)), torch.tensor([pos for _, pos in batch])])
    return torch.cat(out)[torch.argsort(torch.tensor(order))]


def latent_projections(
    sae, x: torch.Tensor, codes: torch.Tensor, direction: torch.Tensor
) -> torch.Tensor:
    """c [n, d_sae]: the projection onto `direction` (unit, input units) of each latent's
    contribution f_i W_dec,i to the reconstruction of x [n, d_in], mapped back to input units
    (per_token: times the token's std; expected_norm: divided by s)."""
    along = sae.W_dec.detach().float() @ direction
    if sae.cfg.input_scaling == "none":
        return codes * along
    mult = torch.as_tensor(sae.input_stats(x)[0], dtype=x.dtype).reshape(-1, 1)
    return codes * along / mult


def word_absorption(
    codes: torch.Tensor,
    projections: torch.Tensor,
    probe_projection: torch.Tensor,
    cos: torch.Tensor,
    main: list[int],
    cfg: AbsorptionConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(absorption fraction [n], full absorption [n] bool) of n words (module docstring, step 5):
    codes and projections [n, d_sae], probe_projection P [n], cos(W_dec,i, p) [d_sae]."""
    main_t = torch.tensor(main, dtype=torch.long)
    main_sum = projections[:, main_t].sum(1)
    absorber = (cos >= cfg.absorption_fraction_probe_cos_sim_threshold)[None] & (projections > 0)
    absorber[:, main_t] = False
    candidates = torch.where(absorber, projections, torch.zeros(()))
    m = min(cfg.absorption_fraction_max_absorbing_latents, candidates.shape[1])
    absorbed = candidates.topk(m, dim=1).values.sum(1)
    a = torch.minimum(absorbed, probe_projection - main_sum)
    partial = (a / (a + main_sum)).clamp(0, 1)
    none = (main_sum >= probe_projection) | (
        absorbed / probe_projection < cfg.probe_projection_proportion_threshold
    )
    fraction = torch.where(
        none, torch.zeros(()), torch.where(main_sum <= 0, torch.ones(()), partial)
    )
    top = projections.argmax(1)
    top_value = projections.gather(1, top[:, None]).squeeze(1)
    full = (
        (codes[:, main_t].abs() < 1e-8).all(1)
        & (cos[top] >= cfg.full_absorption_probe_cos_sim_threshold)
        & (probe_projection >= 0)
        & (top_value / probe_projection >= cfg.probe_projection_proportion_threshold)
    )
    return fraction, full


def main_latents(train_codes, train_y, test_codes, test_y, cfg: AbsorptionConfig) -> list[int]:
    """The main latents of one letter (module docstring, step 4)."""
    ranked = top_mean_difference(train_codes, train_y, cfg.max_k_value).tolist()
    best, chosen = -1.0, ranked[:1]
    for k in range(1, len(ranked) + 1):
        latents = ranked[:k]
        if train_codes[:, latents].max() <= 0:
            score = 0.0
        else:
            probe = fit_probe(train_codes[:, latents], train_y)
            score = f1(probe.score(test_codes[:, latents]) > 0, test_y)
        if score <= best + cfg.f1_jump_threshold:
            break
        best, chosen = score, latents
    return chosen


@torch.inference_mode()
def absorption(sae, lm, cfg: AbsorptionConfig, progress: bool = True) -> dict:
    """The absorption eval of `sae` at cfg.layer / cfg.site of `lm`; a SAEBench document."""
    if lm.d_model != sae.cfg.d_in:
        raise ValueError(
            f"the SAE has d_in={sae.cfg.d_in}, but {cfg.site} of {lm.name} has width {lm.d_model}"
        )
    sae = sae.cpu().eval()
    rng = np.random.default_rng(cfg.random_seed)
    vocabulary = single_token_words(lm.tokenizer)
    if len(vocabulary) < 100:
        raise AbsorptionError(
            f"the tokenizer of {lm.name} has {len(vocabulary)} single-token words (a space and "
            "letters): too few to probe first letters"
        )
    words = [
        vocabulary[i]
        for i in sorted(
            rng.choice(len(vocabulary), min(cfg.max_words, len(vocabulary)), replace=False)
        )
    ]
    texts = [w for _, w in words]
    prompts = []
    for word in words:
        examples = [texts[i] for i in rng.choice(len(texts), cfg.icl_examples + 1, replace=False)]
        examples = [e for e in examples if e != word[1]][: cfg.icl_examples]
        prompts.append(
            prompt_ids(lm.tokenizer, lm.bos_token_id, word, examples, cfg.prompt_template)
        )
    x = word_activations(lm, prompts, cfg.layer, cfg.site, cfg.llm_batch_size, progress)
    codes = sae.encode(x)
    letters = np.array([LETTERS.index(w.strip()[0].lower()) for w in texts])
    test = np.zeros(len(words), dtype=bool)
    test[rng.choice(len(words), int(round(cfg.test_fraction * len(words))), replace=False)] = True
    x_np, codes_np = as_numpy(x), as_numpy(codes)
    W_dec = sae.W_dec.detach().float()
    details, absorbed_words = [], {}
    for index in tqdm(range(len(LETTERS)), desc="absorption letters", disable=not progress):
        y = letters == index
        if y[~test].sum() < 2 or y[test].sum() < 1:
            continue
        probe = fit_probe(x_np[~test], y[~test], seed=cfg.random_seed)
        test_scores = probe.score(x_np[test])
        if f1(test_scores > 0, y[test]) <= cfg.min_probe_f1:
            continue
        main = main_latents(codes_np[~test], y[~test], codes_np[test], y[test], cfg)
        positives = np.flatnonzero(test)[(test_scores > 0) & y[test]]
        direction = torch.tensor(probe.weight / np.linalg.norm(probe.weight), dtype=torch.float32)
        cos = W_dec @ direction / W_dec.norm(dim=1).clamp_min(1e-12)
        rows = torch.tensor(positives, dtype=torch.long)
        fraction, full = word_absorption(
            codes[rows],
            latent_projections(sae, x[rows], codes[rows], direction),
            x[rows] @ direction,
            cos,
            main,
            cfg,
        )
        letter = LETTERS[index]
        details.append(
            {
                "first_letter": letter,
                "mean_absorption_fraction": float(fraction.mean()),
                "full_absorption_rate": float(full.float().mean()),
                "num_full_absorption": int(full.sum()),
                "num_probe_true_positives": len(positives),
                "num_split_features": len(main),
                "main_latents": main,
            }
        )
        absorbed_words[letter] = [
            texts[r] for r, a in zip(positives.tolist(), fraction.tolist()) if a > 0
        ]
    if len(details) < cfg.min_letters:
        raise AbsorptionError(
            f"only {len(details)} letters have a first-letter probe with test F1 > "
            f"{cfg.min_probe_f1} at {cfg.site} of layer {cfg.layer} of {lm.name} (at least "
            f"{cfg.min_letters} needed): the model does not represent first letters linearly "
            "there; try another layer, or lower min_probe_f1"
        )
    return eval_output(
        EVAL_TYPE_ID,
        sae,
        asdict(cfg),
        {"mean": _mean_metrics(details)},
        [{k: v for k, v in d.items() if k != "main_latents"} for d in details],
        {
            "main_latents": {d["first_letter"]: d["main_latents"] for d in details},
            "absorbed_words": absorbed_words,
        },
    )


def _mean_metrics(details: list[dict]) -> dict:
    """SAEBench's mean_<metric> and std_dev_<metric> over the letters evaluated."""
    out = {}
    for metric, key in (
        ("absorption_fraction_score", "mean_absorption_fraction"),
        ("full_absorption_score", "full_absorption_rate"),
        ("num_split_features", "num_split_features"),
    ):
        values = [d[key] for d in details]
        out[f"mean_{metric}"] = statistics.mean(values)
        out[f"std_dev_{metric}"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def run(sae, context, cfg: AbsorptionConfig) -> dict:
    """The eval on the model of `context` (an EvalContext) at its hook."""
    return absorption(sae, context.lm, cfg, context.progress)


def summary(document: dict) -> list[str]:
    m = document["eval_result_metrics"]["mean"]
    return [
        f"  absorption: mean absorption fraction {m['mean_absorption_fraction_score']:.4f}, "
        f"full absorption {m['mean_full_absorption_score']:.4f}, split latents "
        f"{m['mean_num_split_features']:.2f} ({len(document['eval_result_details'])} letters)"
    ]
