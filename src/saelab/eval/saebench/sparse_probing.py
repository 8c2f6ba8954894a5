"""Sparse probing (SAEBench's sparse_probing eval): how well k SAE latents classify a labelled
property of text, against probes on the model's activations.

Each example is one text, truncated to `context_length` tokens (BOS first). Its features are
the mean over its tokens (BOS and padding left out) of the model's activation at the hook
site, and the mean of the SAE's codes of those activations. Each task is binary (one class
against the rest, as many of each in the sample), split into train and test. On each task:
  llm_test_accuracy      logistic regression on all d_model channels
  llm_top_k_...          on the k channels with the largest class-mean difference (train)
  sae_test_accuracy      on all d_sae latents
  sae_top_k_...          on the k latents with the largest class-mean difference
for k in k_values; the metrics are their means over the tasks.

Data (`dataset`):
  builtin:wiki-topics  topic identification: the held-out articles of the builtin Wikipedia
                       sample cut into contexts, each labelled by its article; one task per
                       article among the `n_builtin_tasks` with the most contexts
  a .jsonl/.csv/.parquet file with `text_column` and `label_column`; one task per label with
                       at least `min_examples` examples (a single task when there are two labels)
  a datasets name      its train split, the same columns (needs network)
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...data.hooks import DEFAULT_SITE, harvest
from ...data.network import require_hub
from ...data.packing import right_padded
from ...data.text import documents
from ...errors import SaelabError
from ...options import option
from .output import eval_output, interval_text, intervals
from .probes import as_numpy, fit_probe, top_mean_difference

BUILTIN = "builtin:wiki-topics"
SUFFIXES = (".jsonl", ".csv", ".parquet")


EVAL_TYPE_ID = "sparse_probing"


@dataclass
class SparseProbingConfig:
    """The settings of the sparse-probing eval (SAEBench's where it has them)."""

    model_name: str = ""
    layer: int = 0
    site: str = DEFAULT_SITE
    dataset_names: list[str] = option(
        help="sparse_probing data: builtin:wiki-topics (held-out articles, labelled by article), "
        "a .jsonl/.csv/.parquet file with text and label columns, or a datasets name; a comma "
        f"list (default: {BUILTIN})",
        flag="probe-dataset",
        default_factory=lambda: [BUILTIN],
    )
    text_column: str = option("text", "sparse_probing text column", flag="probe-text-column")
    label_column: str = option("label", "sparse_probing label column", flag="probe-label-column")
    random_seed: int = 42
    k_values: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20])
    context_length: int = 128
    probe_train_set_size: int = 4000
    probe_test_set_size: int = 1000
    min_examples: int = 20
    n_builtin_tasks: int = 5
    llm_batch_size: int = 16


class ProbingDataError(SaelabError, ValueError):
    """Labelled text that cannot be read or gives no task."""


def builtin_topics(tokenizer, bos_id, context_length: int) -> tuple[list[list[int]], list[str]]:
    """(token ids of each context, its article) for the held-out builtin Wikipedia articles."""
    contexts, labels = [], []
    for number, article in enumerate(documents("builtin:wiki", "eval")):
        ids = tokenizer(article, add_special_tokens=False)["input_ids"]
        title = article.split("\n", 1)[0][:40] or f"article {number}"
        step = context_length - 1
        for start in range(0, len(ids) - step + 1, step):
            contexts.append([bos_id, *ids[start : start + step]])
            labels.append(f"{number}: {title}")
    return contexts, labels


def labelled_texts(source: str, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """(texts, labels as strings) of a labelled file or a datasets name."""
    path = Path(source)
    if _is_local(source):
        if not path.is_file():
            raise ProbingDataError(f"no labelled text file at {path}")
        if path.suffix == ".jsonl":
            rows = [
                json.loads(line)
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
            columns = set(rows[0]) if rows else set()
            table = {c: [r.get(c) for r in rows] for c in columns}
        elif path.suffix == ".csv":
            import pyarrow.csv as pc

            table = pc.read_csv(path).to_pydict()
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path).to_pydict()
        else:
            raise ProbingDataError(f"{path}: labelled text must be {', '.join(SUFFIXES)}")
    else:
        require_hub(f"dataset {source!r}")
        import datasets

        table = datasets.load_dataset(source, split="train")[:]
    missing = [c for c in (text_column, label_column) if c not in table]
    if missing:
        raise ProbingDataError(
            f"{source} has no column {missing[0]!r} (columns: {', '.join(map(str, table))}); "
            "choose them with --probe-text-column / --probe-label-column"
        )
    pairs = [
        (str(t), str(lab))
        for t, lab in zip(table[text_column], table[label_column])
        if t is not None and lab is not None and str(t).strip()
    ]
    if not pairs:
        raise ProbingDataError(f"{source} holds no labelled text")
    return [t for t, _ in pairs], [lab for _, lab in pairs]


def check_dataset(source: str, text_column: str, label_column: str) -> None:
    """Fail before any model runs: a labelled file that is missing or lacks its columns, or a
    datasets name without network."""
    if source == BUILTIN:
        return
    if _is_local(source):
        labelled_texts(source, text_column, label_column)
    else:
        require_hub(f"dataset {source!r}")


def _is_local(source: str) -> bool:
    """A labelled file (existing or named like one), as opposed to a datasets name."""
    return Path(source).suffix in SUFFIXES or Path(source).exists()


def tasks_of(labels: list[str], min_examples: int, max_tasks: int | None = None) -> list[str]:
    """The positive class of each one-vs-rest task: labels with at least min_examples examples
    (and as many others), most frequent first; one task when there are exactly two labels."""
    counts = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    ranked = sorted(
        (c for c in counts if min_examples <= counts[c] <= len(labels) - counts[c]),
        key=lambda c: (-counts[c], c),
    )
    if len(counts) == 2:
        ranked = ranked[:1]
    return ranked[:max_tasks] if max_tasks else ranked


@torch.inference_mode()
def pooled_features(
    sae,
    lm,
    contexts: list[list[int]],
    layer: int,
    site: str,
    batch_size: int,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean activation [n, d_model], mean SAE code [n, d_sae]) over each context's tokens,
    BOS and padding left out."""
    special = torch.tensor(
        sorted(lm.special_token_ids | ({lm.bos_token_id} - {None})), dtype=torch.long
    )
    llm, codes = [], []
    for start in tqdm(
        range(0, len(contexts), batch_size),
        desc="probing texts",
        unit="batch",
        disable=not progress,
    ):
        batch = contexts[start : start + batch_size]
        ids, mask = right_padded(batch, lm.tokenizer.pad_token_id)
        acts = harvest(lm, ids, layer, site, attention_mask=mask).float().cpu()
        keep = mask.bool() & ~torch.isin(ids, special)
        keep[keep.sum(1) == 0, 0] = True  # a context of special tokens only keeps its first
        rows = torch.arange(len(batch))[:, None].expand_as(ids)[keep]
        counts = keep.sum(1, keepdim=True).float()
        flat = acts[keep]
        llm.append(torch.zeros(len(batch), acts.shape[-1]).index_add_(0, rows, flat) / counts)
        codes.append(
            torch.zeros(len(batch), sae.cfg.d_sae).index_add_(0, rows, sae.encode(flat)) / counts
        )
    return torch.cat(llm), torch.cat(codes)


def task_accuracies(x_train, y_train, x_test, y_test, k_values: list[int], prefix: str) -> dict:
    """{prefix_test_accuracy, prefix_top_k_test_accuracy for k in k_values} of logistic
    regressions on all features and on the top k by class-mean difference."""
    x_train, x_test = as_numpy(x_train), as_numpy(x_test)
    out = {f"{prefix}_test_accuracy": fit_probe(x_train, y_train).accuracy(x_test, y_test)}
    for k in k_values:
        top = top_mean_difference(x_train, y_train, k)
        out[f"{prefix}_top_{k}_test_accuracy"] = fit_probe(x_train[:, top], y_train).accuracy(
            x_test[:, top], y_test
        )
    return out


def _split(y: np.ndarray, positive: str, rng, train_size: int, test_size: int):
    """Balanced train and test indices of one task: as many negatives as positives."""
    pos, neg = np.flatnonzero(y == positive), np.flatnonzero(y != positive)
    n = min(len(pos), len(neg), (train_size + test_size) // 2)
    pos, neg = rng.permutation(pos)[:n], rng.permutation(neg)[:n]
    n_test = max(1, int(round(n * test_size / (train_size + test_size))))
    return (
        np.concatenate([pos[n_test:], neg[n_test:]]),
        np.concatenate([pos[:n_test], neg[:n_test]]),
    )


def sparse_probing(sae, lm, cfg: SparseProbingConfig, progress: bool = True) -> dict:
    """The sparse-probing eval of `sae` at cfg.layer / cfg.site of `lm`; a SAEBench document."""
    if lm.d_model != sae.cfg.d_in:
        raise ValueError(
            f"the SAE has d_in={sae.cfg.d_in}, but {cfg.site} of {lm.name} has width {lm.d_model}"
        )
    if any(k < 1 or k > min(sae.cfg.d_sae, lm.d_model) for k in cfg.k_values):
        raise ValueError(f"k_values {cfg.k_values} must lie in 1..{min(sae.cfg.d_sae, lm.d_model)}")
    sae = sae.cpu().eval()
    details = []
    for dataset in cfg.dataset_names:
        if dataset == BUILTIN:
            contexts, labels = builtin_topics(lm.tokenizer, lm.bos_token_id, cfg.context_length)
            positives = tasks_of(labels, cfg.min_examples, cfg.n_builtin_tasks)
        else:
            texts, labels = labelled_texts(dataset, cfg.text_column, cfg.label_column)
            bos = [lm.bos_token_id] if lm.bos_token_id is not None else []
            contexts = [
                bos
                + lm.tokenizer(t, add_special_tokens=False)["input_ids"][
                    : cfg.context_length - len(bos)
                ]
                for t in texts
            ]
            positives = tasks_of(labels, cfg.min_examples)
        if not positives:
            raise ProbingDataError(
                f"{dataset}: no label has {cfg.min_examples} examples and as many of other labels"
            )
        rng = np.random.default_rng(cfg.random_seed)
        y = np.array(labels)
        splits = {
            p: _split(y, p, rng, cfg.probe_train_set_size, cfg.probe_test_set_size)
            for p in positives
        }
        used = sorted(
            set(itertools.chain.from_iterable(np.concatenate(s) for s in splits.values()))
        )
        llm, codes = pooled_features(
            sae, lm, [contexts[i] for i in used], cfg.layer, cfg.site, cfg.llm_batch_size, progress
        )
        row_of = {index: row for row, index in enumerate(used)}
        for positive, (train, test) in tqdm(
            splits.items(), desc="probing tasks", disable=not progress
        ):
            tr, te = [row_of[i] for i in train], [row_of[i] for i in test]
            y_train, y_test = y[train] == positive, y[test] == positive
            detail = {
                "dataset_name": f"{dataset}: {positive}"
                if dataset != BUILTIN
                else f"wiki-topic {positive}"
            }
            detail.update(task_accuracies(llm[tr], y_train, llm[te], y_test, cfg.k_values, "llm"))
            detail.update(
                task_accuracies(codes[tr], y_train, codes[te], y_test, cfg.k_values, "sae")
            )
            detail.update(n_train=len(train), n_test=len(test))
            details.append(detail)
    keys = [k for k in details[0] if k.endswith("accuracy")]
    means = {k: float(np.mean([d[k] for d in details])) for k in keys}
    metrics = {
        "llm": {k: v for k, v in means.items() if k.startswith("llm")},
        "sae": {k: v for k, v in means.items() if k.startswith("sae")},
    }
    spread = intervals(details, {k: k for k in keys}, "tasks", cfg.random_seed)
    return eval_output(EVAL_TYPE_ID, sae, asdict(cfg), metrics, details, {"intervals": spread})


def check(cfg: SparseProbingConfig) -> None:
    """Each dataset is there, before any model runs (check_dataset)."""
    for name in cfg.dataset_names:
        check_dataset(name, cfg.text_column, cfg.label_column)


def run(sae, context, cfg: SparseProbingConfig) -> dict:
    """The eval on the model of `context` (an EvalContext) at its hook."""
    return sparse_probing(sae, context.lm, cfg, context.progress)


def summary(document: dict) -> list[str]:
    llm, sae = (document["eval_result_metrics"][key] for key in ("llm", "sae"))
    ks = [key.split("_")[2] for key in sae if key.startswith("sae_top_")]

    def shown(values, key):
        return f"{values[key]:.3f}{interval_text(document, key)}"

    tops = ", ".join(f"top-{k} {shown(sae, f'sae_top_{k}_test_accuracy')}" for k in ks)
    top1 = shown(llm, "llm_top_1_test_accuracy") if "llm_top_1_test_accuracy" in llm else "nan"
    return [
        f"  sparse_probing ({len(document['eval_result_details'])} tasks; 95% intervals over "
        f"tasks): SAE {tops}, all latents {shown(sae, 'sae_test_accuracy')}; model "
        f"activations {shown(llm, 'llm_test_accuracy')}, top-1 channel {top1}"
    ]
