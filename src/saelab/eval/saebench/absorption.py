"""Feature absorption on first letters (Chanin et al. 2024, "A is for Absorption"), SAEBench's
absorption_first_letter eval step by step (sae_bench/evals/absorption/, files named below).

1. Words (vocab.py get_alpha_tokens): every token of the model's vocabulary whose text is ASCII
   letters after at most one leading space ("cat", " Cat", " a"); SAEBench takes them all,
   saelab a seeded sample of `max_words` (the forward passes of a CPU budget), split 80/20 into
   train and test words (probing.py create_dataset_probe_training). Both probes below then
   train in batches as much smaller than SAEBench's as the sample is (sampled_batch_size), so
   they take as many Adam steps as SAEBench's on the whole vocabulary.
2. Prompts (prompting.py create_icl_prompt, the separator also before the first example):
   "\n tartan has the first letter: T\n mirth has the first letter: M\n cat has the first
   letter:" with `icl_examples` (10) examples drawn from the same split, and the activation at
   the hook site on the word's token.
3. Ground truth (probing.py train_linear_probe_for_task): one-vs-rest probes of all 26 letters
   trained together (probes.train_multi_probe: BCE with pos_weight, Adam lr 1e-2 decaying to
   1e-5, weight decay 1e-4, 50 epochs); letters whose probe reaches test F1 > min_probe_f1
   (score > 0) are evaluated (k_sparse_probing.py build_metrics_df).
4. Main latents (k_sparse_probing.py train_k_sparse_probes, add_feature_splits_to_metrics_df):
   an L1-penalised multi-probe on the SAE codes of the train words (l1 0.01, weight decay
   1e-6); for k = 1..max_k_value the k latents of largest signed weight for the letter get a
   logistic regression (scikit-learn, balanced, max_iter 500); k grows while its test F1 rises
   by more than f1_jump_threshold (more than one main latent = a feature split).
5. Absorption (feature_absorption.py, feature_absorption_calculator.py): the test words of the
   letter that its probe detects (probe true positives) are prompted again with examples
   freshly drawn from the whole word list; with p the unit probe direction, P = x . p and c_i
   the projection onto p of latent i's contribution to the reconstruction:
   absorption fraction: 0 if the main latents account for P (sum_main c_i >= P) or if the
     absorbers do not (the largest `max_absorbing_latents` c_i > 0 of the other latents with
     cos(W_dec,i, p) >= 0.1 sum to less than 0.4 P); 1 if the main latents contribute nothing
     (sum <= 0); else a / (a + sum_main c_i), a = min(absorbers' sum, P - sum_main c_i).
   full absorption: every main latent is zero, P >= 0, and the latent with the largest c_i has
     cos >= 0.025 and c_i >= 0.4 P.
   Per letter: mean absorption fraction and full-absorption rate over its probe true positives;
   reported: their means and standard deviations over the letters evaluated, which must be at
   least min_letters (SAEBench asks for 20; small models pass fewer, so saelab's default is 5).
   One deliberate difference: SAEBench's c_i is f_i cos(W_dec,i, p), the code in the SAE's own
   units; saelab's is f_i (W_dec,i . p) mapped back through the SAE's input scaling, the units
   of P (the same for SAEs on raw inputs with unit decoder rows).
"""

from __future__ import annotations

import math
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
from .output import eval_output, interval_text, intervals
from .probes import as_numpy, f1, train_multi_probe

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
    icl_examples: int = 10
    prompt_template: str = "{word} has the first letter:"
    max_k_value: int = 10
    k_sparse_probe_l1_decay: float = 0.01
    k_sparse_probe_batch_size: int = 4096
    k_sparse_probe_num_epochs: int = 50
    f1_jump_threshold: float = 0.03
    min_probe_f1: float = option(
        0.6,
        "absorption: a letter is evaluated when its ground-truth probe's test F1 exceeds this "
        "(SAEBench: 0.6)",
        flag="absorption-min-probe-f1",
        high=1,
    )
    min_letters: int = option(
        5,
        "absorption: the fewest letters an evaluation may rest on (SAEBench asks for 20)",
        flag="absorption-min-letters",
        low=1,
    )
    full_absorption_probe_cos_sim_threshold: float = 0.025
    absorption_fraction_probe_cos_sim_threshold: float = 0.1
    probe_projection_proportion_threshold: float = 0.4
    absorption_fraction_max_absorbing_latents: int = 3
    llm_batch_size: int = 32


class AbsorptionError(SaelabError, ValueError):
    """The model gives too little to measure absorption with (too few words or letters)."""


PROBE_EPOCHS, PROBE_LR, PROBE_WEIGHT_DECAY = 50, 1e-2, 1e-4  # probing.py:331-341
PROBE_BATCH = 4096  # probing.py train_linear_probe_for_task's batch size
K_SPARSE_WEIGHT_DECAY = 1e-6  # k_sparse_probing.py train_sparse_multi_probe


def train_words(n_words: int, cfg) -> int:
    """How many of n_words go to the training split (the rest are test words)."""
    return int(n_words * (1 - cfg.test_fraction))


def sampled_batch_size(saebench_batch: int, n_train: int, vocabulary: int, cfg) -> int:
    """The probe batch that gives n_train sampled training words as many Adam steps per epoch
    as SAEBench's batch gives the training split of the whole vocabulary (`vocabulary` words),
    so a probe on a sample trains as long as SAEBench's: on SmolLM2 (47,078 words) 10 steps per
    epoch, where 4000 words in batches of 4096 would take 1 and leave the probes undertrained."""
    whole = train_words(vocabulary, cfg)
    if n_train >= whole:  # SAEBench's own run
        return saebench_batch
    return math.ceil(n_train / math.ceil(whole / saebench_batch))


def alpha_tokens(tokenizer) -> list[tuple[int, str]]:
    """(token id, text) of every vocabulary token whose text is ASCII letters after at most one
    leading space, in id order (SAEBench's get_alpha_tokens)."""
    words = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        letters = text[1:] if text.startswith(" ") else text
        if letters and letters.isascii() and letters.isalpha():
            words.append((token_id, text))
    return words


def prompt_text(word: str, examples: list[str], template: str) -> str:
    """SAEBench's create_icl_prompt(...).base with the separator before the first example too:
    each example's prompt and its answer (a space and its first letter, upper case), one per
    line, then the word's prompt."""
    shots = "".join(f"\n{template.format(word=w)} {w.strip()[0].upper()}" for w in examples)
    return f"{shots}\n{template.format(word=word)}"


def prompt_ids(
    tokenizer, bos_id: int | None, word: tuple[int, str], examples: list[str], template: str
) -> tuple[list[int], int]:
    """(token ids, position of the word's token) of prompt_text; the word is its own token."""
    text = prompt_text(word[1], examples, template)
    start = text.rindex("\n") + 1
    tail = template.split("{word}")[1]
    head = ([bos_id] if bos_id is not None else []) + tokenizer(
        text[:start], add_special_tokens=False
    )["input_ids"]
    return head + [word[0]] + tokenizer(tail, add_special_tokens=False)["input_ids"], len(head)


def icl_prompts(tokenizer, bos_id, words, pool: list[str], cfg, rng) -> list:
    """One prompt per word with cfg.icl_examples examples drawn from `pool`, never the word."""
    prompts = []
    for word in words:
        drawn = [pool[i] for i in rng.choice(len(pool), cfg.icl_examples + 1, replace=False)]
        examples = [e for e in drawn if e != word[1]][: cfg.icl_examples]
        prompts.append(prompt_ids(tokenizer, bos_id, word, examples, cfg.prompt_template))
    return prompts


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


def main_latents(
    l1_weight: torch.Tensor, train_codes, train_y, test_codes, test_y, cfg: AbsorptionConfig
) -> list[int]:
    """The main latents of one letter (module docstring, step 4): l1_weight [d_sae] is the
    letter's row of the L1 multi-probe on the codes."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(train_y)) < 2:
        return []
    ranked = l1_weight.topk(cfg.max_k_value).indices.tolist()
    best, chosen = -100.0, []
    for k in range(1, cfg.max_k_value + 1):
        latents = ranked[:k]
        probe = LogisticRegression(max_iter=500, class_weight="balanced")
        probe.fit(train_codes[:, latents], train_y)
        score = f1(probe.decision_function(test_codes[:, latents]) > 0, test_y)
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
    vocabulary = alpha_tokens(lm.tokenizer)
    if len(vocabulary) < 100:
        raise AbsorptionError(
            f"the tokenizer of {lm.name} has {len(vocabulary)} alphabetic tokens: too few to "
            "probe first letters"
        )
    words = [
        vocabulary[i]
        for i in rng.choice(len(vocabulary), min(cfg.max_words, len(vocabulary)), replace=False)
    ]
    n_train = train_words(len(words), cfg)
    probe_batch = sampled_batch_size(PROBE_BATCH, n_train, len(vocabulary), cfg)
    k_sparse_batch = sampled_batch_size(
        cfg.k_sparse_probe_batch_size, n_train, len(vocabulary), cfg
    )
    splits = {"train": words[:n_train], "test": words[n_train:]}
    x, letters, texts = {}, {}, {}
    for name, split in splits.items():
        texts[name] = [w for _, w in split]
        prompts = icl_prompts(lm.tokenizer, lm.bos_token_id, split, texts[name], cfg, rng)
        x[name] = word_activations(lm, prompts, cfg.layer, cfg.site, cfg.llm_batch_size, progress)
        letters[name] = np.array([LETTERS.index(w.strip()[0].lower()) for w in texts[name]])
    probe_w, probe_b = train_multi_probe(
        x["train"],
        torch.from_numpy(letters["train"]),
        len(LETTERS),
        PROBE_WEIGHT_DECAY,
        epochs=PROBE_EPOCHS,
        lr=PROBE_LR,
        batch_size=probe_batch,
        seed=cfg.random_seed,
    )
    codes = {name: sae.encode(x[name]) for name in x}
    l1_w, _ = train_multi_probe(
        codes["train"],
        torch.from_numpy(letters["train"]),
        len(LETTERS),
        K_SPARSE_WEIGHT_DECAY,
        l1=cfg.k_sparse_probe_l1_decay,
        epochs=cfg.k_sparse_probe_num_epochs,
        batch_size=k_sparse_batch,
        seed=cfg.random_seed,
    )
    test_scores = (x["test"] @ probe_w.T + probe_b).numpy()
    train_codes, test_codes = as_numpy(codes["train"]), as_numpy(codes["test"])
    everyone = texts["train"] + texts["test"]
    W_dec = sae.W_dec.detach().float()
    details, absorbed_words = [], {}
    for index in tqdm(range(len(LETTERS)), desc="absorption letters", disable=not progress):
        y_train, y_test = letters["train"] == index, letters["test"] == index
        if y_test.sum() < 1 or f1(test_scores[:, index] > 0, y_test) <= cfg.min_probe_f1:
            continue
        main = main_latents(l1_w[index], train_codes, y_train, test_codes, y_test, cfg)
        positives = np.flatnonzero((test_scores[:, index] > 0) & y_test)
        tp_words = [splits["test"][i] for i in positives]
        again = icl_prompts(lm.tokenizer, lm.bos_token_id, tp_words, everyone, cfg, rng)
        x_tp = word_activations(lm, again, cfg.layer, cfg.site, cfg.llm_batch_size, False)
        codes_tp = sae.encode(x_tp)
        direction = probe_w[index] / probe_w[index].norm()
        cos = W_dec @ direction / W_dec.norm(dim=1).clamp_min(1e-12)
        fraction, full = word_absorption(
            codes_tp,
            latent_projections(sae, x_tp, codes_tp, direction),
            x_tp @ direction,
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
        absorbed_words[letter] = [w for (_, w), a in zip(tp_words, fraction.tolist()) if a > 0]
    if len(details) < cfg.min_letters:
        raise AbsorptionError(
            f"only {len(details)} letters have a first-letter probe with test F1 > "
            f"{cfg.min_probe_f1} at {cfg.site} of layer {cfg.layer} of {lm.name} (at least "
            f"{cfg.min_letters} needed): the model does not represent first letters linearly "
            "there (SAEBench recommends models of 2B parameters or more); try another layer, or "
            "lower --absorption-min-probe-f1 / --absorption-min-letters"
        )
    used = {  # the offline substitute: a sample of the vocabulary, and the batches it trains in
        "vocabulary_words": len(vocabulary),
        "sampled_words": len(words),
        "probe_batch_size_used": probe_batch,
        "k_sparse_probe_batch_size_used": k_sparse_batch,
    }
    return eval_output(
        EVAL_TYPE_ID,
        sae,
        asdict(cfg) | used,
        {"mean": _mean_metrics(details)},
        [{k: v for k, v in d.items() if k != "main_latents"} for d in details],
        {
            "main_latents": {d["first_letter"]: d["main_latents"] for d in details},
            "absorbed_words": absorbed_words,
            "intervals": intervals(details, INTERVAL_KEYS, "letters", cfg.random_seed),
        },
    )


INTERVAL_KEYS = {
    "mean_absorption_fraction_score": "mean_absorption_fraction",
    "mean_full_absorption_score": "full_absorption_rate",
    "mean_num_split_features": "num_split_features",
}


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
    shown = [
        f"{label} {m[metric]:.3f}{interval_text(document, metric)}"
        for label, metric in (
            ("mean absorption fraction", "mean_absorption_fraction_score"),
            ("full absorption", "mean_full_absorption_score"),
            ("split latents", "mean_num_split_features"),
        )
    ]
    return [
        f"  absorption ({len(document['eval_result_details'])} letters; 95% intervals over "
        f"letters): {', '.join(shown)}"
    ]
