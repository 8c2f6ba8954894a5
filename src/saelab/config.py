"""Configuration dataclasses, validated on construction, round-tripping through JSON dicts:
SAEConfig (what an SAE is: sae/config.py), TrainConfig (how to train it) and DataConfig (where
its activations come from). Every field made with option() is also a command-line flag
(flags.py), so a new training or data option is one field here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .data.cache import STORAGE_DTYPES
from .data.hooks import DEFAULT_SITE, SITES
from .data.models import DTYPES
from .data.text import SPLITS
from .errors import ConfigError
from .options import check_options, option
from .sae.config import (
    DEFAULT_INPUT_SCALING,
    INPUT_SCALINGS,
    TRANSCODER_INPUT_SCALING,
    SAEConfig,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "DEFAULT_INPUT_SCALING",
    "TRANSCODER_INPUT_SCALING",
    "INPUT_SCALINGS",
    "SAEConfig",
    "TrainConfig",
]

# the embedded default job: what `saelab train` harvests with no arguments, and the SAE it
# trains (with k = sae.topk.DEFAULT_K)
DEFAULT_ARCH, DEFAULT_EXPANSION = "batchtopk", 8
DEFAULT_MODEL, DEFAULT_LAYER, DEFAULT_DATASET = "builtin:smollm2-135m", 15, "builtin:wiki"
DEFAULT_TOKENS, DEFAULT_EVAL_TOKENS = 250_000, 16_384
IMPLAUSIBLE_LR = 1.0  # an Adam learning rate this large is a typo (TrainConfig.force_lr)
MIN_EVAL_TOKENS = 64  # fewer held-out tokens give no meaningful variance, density or L0 histogram


def _from_dict(cls, d: dict):
    """Build `cls` from a dict, naming unknown keys instead of ignoring them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**d)


@dataclass
class TrainConfig:
    """How to train: optimizer, schedule, dead-latent window, logging and checkpoints.

    lr None scales the learning rate with the dictionary size (train/schedule.default_lr).
    total_tokens None means one pass over a finite data set. checkpoint_every_tokens None
    disables checkpoints (they need out_dir). eval_every_tokens needs held-out data passed to
    train_many. bf16: the encoder matmul (and for relu/jumprelu the decoder matmul) in
    bfloat16; the sparse path selects on bfloat16 pre-activations and keeps everything else in
    float32.
    """

    batch_size: int = option(4096, "tokens per batch", low=1)
    lr: float | None = option(
        None,
        "Adam learning rate (default: 2e-3 * sqrt(4608 / d_sae): 2e-3 at d_sae 4608, "
        "1e-3 at 18432)",
        strict=True,
    )
    force_lr: bool = option(
        False,
        f"accept a learning rate of {IMPLAUSIBLE_LR:g} or more (refused otherwise as a "
        "likely typo, e.g. 2e3 for 2e-3)",
    )
    betas: tuple[float, float] = option((0.9, 0.99), "Adam's betas, two numbers in [0, 1)", high=1)
    total_tokens: int | None = option(
        None,
        f"training tokens (default: {DEFAULT_TOKENS}, harvested, when harvesting; else one "
        "pass over the training data)",
        flag="tokens",
        low=1,
    )
    warmup_tokens: int = option(100_000, "tokens of linear learning-rate warmup", low=0)
    decay_fraction: float = option(
        0.2,
        "the last fraction of training, over which the learning rate decays linearly to 0",
        high=1 + 1e-12,
    )
    grad_clip: float | None = option(1.0, "clip the gradient's norm to this", strict=True)
    decoder_renorm: str = option(
        "after_step",
        "when decoder rows are made unit-norm: after_step (then Adam steps a gradient without "
        "its parallel part) or before_step (the BatchTopK and top-AFA reference code: clip, "
        "normalise rows and project the gradient, then step)",
        choices=("after_step", "before_step"),
    )
    dead_tokens: int = option(
        100_000, "a latent is dead after this many training tokens without firing", low=1
    )
    seed: int = option(0, "seed for initialisation and data order", low=0)
    latent_parallel: int = option(
        1,
        "under torchrun: split each dictionary's latents over this many ranks (the rest are "
        "data parallel): weights, gradients and Adam state per rank fall as 1/N, the selection "
        "stays exact over the whole dictionary (saelab plan predicts the memory)",
        low=1,
        metavar="N",
    )
    distribute_hookpoints: bool = option(
        False,
        "under torchrun with several hook points: SAE i (of the hook points, in order) is made "
        "and trained on rank i mod ranks alone, on whole global batches of its columns; no "
        "rank holds another's SAEs and none exchanges gradients",
    )
    out_dir: str | None = None
    checkpoint_every_tokens: int | None = option(
        None,
        "write a checkpoint every this many tokens",
        flag="checkpoint-every",
        cli_default=1_000_000,
        low=1,
        metavar="TOKENS",
    )
    eval_every_tokens: int | None = option(
        None,
        "every this many training tokens (and after the last step) record the held-out NMSE "
        "and L0 (inference semantics) in the history (heldout_nmse, heldout_l0)",
        flag="eval-every",
        low=1,
        metavar="TOKENS",
    )
    resume: bool = option(False, "continue the interrupted run in --out from its checkpoint")
    log_every: int = option(10, "steps between history records", low=1)
    progress: bool = option(True, "progress bars")
    sparse: bool = option(
        True,
        "train topk/batchtopk/topafa through the sparse path (sae/sparse.py) while the batch "
        "L0 at the last history record is at most d_sae/16 (denser codes step faster through "
        "the dense path); off: the dense reference path always (same results to float "
        "tolerance)",
    )
    wandb_project: str | None = option(
        None,
        "also log training to this Weights & Biases project (the bare flag: saelab; needs "
        "pip install wandb)",
        flag="wandb",
        const="saelab",
        metavar="PROJECT",
    )
    bf16: bool = option(
        False,
        "bfloat16 autocast for the encoder matmul (faster on GPUs and CPUs with native bf16)",
    )
    compile: bool = option(False, "torch.compile the loss (see bench/RESULTS.md)")

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if len(self.betas) != 2:
            raise ConfigError(f"betas must be two numbers, got {self.betas!r}")
        check_options(self)
        if self.lr is not None and self.lr >= IMPLAUSIBLE_LR and not self.force_lr:
            raise ConfigError(
                f"lr={self.lr:g} is implausibly large for Adam on an SAE (usual: 1e-4 to 1e-2; "
                "a typo such as 2e3 for 2e-3?): pass --force-lr (TrainConfig.force_lr) to train "
                "with it"
            )
        if self.checkpoint_every_tokens is not None and self.out_dir is None:
            raise ConfigError("checkpoints need out_dir")
        if self.resume and self.out_dir is None:
            raise ConfigError("resume needs out_dir (where the checkpoint is)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _from_dict(cls, d)


@dataclass
class DataConfig:
    """Where activations come from, as a value the command line and the Python API both build
    (sources.resolve turns it into data): a .npy array or activation cache (`activations`),
    generated data with a known dictionary (`synthetic`), or a model's activations at one hook
    point harvested over text and cached under `cache_dir` (`stream`: through a shuffle buffer,
    without a cache). Unset model/layer/dataset are the embedded default job's (DEFAULT_*) when
    training, and what the SAE records when evaluating; an unset site is DEFAULT_SITE.
    """

    activations: str | None = option(
        None,
        "activations [tokens, d_in]: a .npy file or an activation cache directory",
        metavar="FILE.npy|DIR",
    )
    synthetic: bool = option(
        False, "generated activations from a known random dictionary (reports dictionary recovery)"
    )
    model: str | None = option(None, "hub id, local directory, .gguf file or builtin:smollm2-135m")
    layer: int | None = option(None, "block index, from 0")
    site: str | None = option(None, f"hook site (default: {DEFAULT_SITE})", choices=SITES)
    target_site: str | None = option(
        None,
        "train transcoders: predict this hook site (of --target-layer) from --site, read from "
        "a cache of both (saelab cache --hookpoints) or, with --hookpoints, from each point's "
        "own block",
        choices=SITES,
    )
    target_layer: int | None = option(None, "the transcoder's target block (default: --layer)")
    hookpoints: str | None = option(
        None,
        "several hook points from one forward pass, comma-separated layers.L.SITE with L a "
        "layer, A-B or * (e.g. layers.*.mlp_out,layers.4-6.mlp_in); instead of --layer/--site; "
        "training: one SAE (or transcoder) per point, from a cache of them or with --no-cache",
        metavar="POINTS",
    )
    dataset: str | None = option(
        None, "builtin:wiki, a .txt/.jsonl/.parquet file or folder, or a datasets name"
    )
    text_column: str = option("text", "column/field holding the text")
    ctx_len: int = option(128, "tokens per packed context, BOS first", low=2)
    include_special: bool = option(
        False, "keep BOS/EOS/pad positions in the activations (default: left out)"
    )
    split: str = option(
        "train", "train, or eval: the held-out documents (every 10th)", choices=SPLITS
    )
    tokens: int = option(DEFAULT_TOKENS, "activations to harvest", low=1)
    eval_tokens: int | None = option(
        None,
        "held-out tokens for evaluation: from held-out documents when harvesting (default: "
        f"{DEFAULT_EVAL_TOKENS}), else from the end of the data (default: 10%, at most 65536)",
        low=MIN_EVAL_TOKENS,
    )
    cache_dir: str = option("cache", "where harvested activations are cached")
    stream: bool = option(
        False,
        "harvest while training, through a shuffle buffer, without writing a cache",
        flag="no-cache",
    )
    shuffle_buffer: int = option(65536, "tokens mixed by the shuffle buffer with --no-cache", low=1)
    storage_dtype: str = option(
        "float16", "dtype of cached activations", choices=tuple(STORAGE_DTYPES)
    )
    model_dtype: str = option("float32", "model dtype", choices=tuple(DTYPES))
    device: str = option("cpu", "cpu or cuda, for the model and for training")
    progress: bool = option(True, "progress bars")

    def __post_init__(self):
        check_options(self)

    @property
    def hook_site(self) -> str:
        """The hook site: `site`, DEFAULT_SITE where unset."""
        return self.site or DEFAULT_SITE

    @property
    def transcodes(self) -> bool:
        """Whether the request trains transcoders (a target hook point is named)."""
        return self.target_site is not None or self.target_layer is not None

    @property
    def heldout_tokens(self) -> int:
        """Held-out tokens to harvest: `eval_tokens`, DEFAULT_EVAL_TOKENS where unset."""
        return self.eval_tokens or DEFAULT_EVAL_TOKENS

    @property
    def hook_given(self) -> dict:
        """The model, layer, site and dataset that were set, by name."""
        return {
            key: getattr(self, key)
            for key in ("model", "layer", "site", "dataset")
            if getattr(self, key) is not None
        }

    def with_default_hook(self) -> DataConfig:
        """This request with the embedded default job's model, layer and dataset where unset."""
        return dataclasses.replace(
            self,
            model=self.model or DEFAULT_MODEL,
            layer=DEFAULT_LAYER if self.layer is None else self.layer,
            dataset=self.dataset or DEFAULT_DATASET,
        )

    def with_recorded_hook(self, metadata: dict) -> DataConfig:
        """This request with the model, layer, site and dataset an SAE's config records where
        unset."""
        keys = ("model", "layer", "site", "dataset", "target_layer", "target_site")
        recorded = {k: metadata[k] for k in keys if k in metadata}
        clash = [
            f"--{key} {getattr(self, key)} (the SAE records {recorded[key]})"
            for key in ("layer", "site")
            if key in recorded and getattr(self, key) not in (None, recorded[key])
        ]
        if clash:
            raise ConfigError(
                f"{', '.join(clash)}: the SAE was trained on another hook point; omit the flag "
                "to evaluate it where it was trained"
            )
        return dataclasses.replace(
            self, **{k: v for k, v in recorded.items() if getattr(self, k) is None}
        )
