"""The training loop: Adam with warmup and a linear decay tail, unit-norm decoder, dead-latent
tracking in tokens, JSON-lines history, atomic checkpoints and bit-exact resume.

`train_many` trains several SAEs on the same batches in one pass over the data (one harvest,
one read of the cache); `train` is the single-SAE case. Under torchrun, batch_size is the
global batch and each data rank reads and trains on its share of it (see distributed.py and
the sources' `part` argument); with latent_parallel L, each dictionary is split over L ranks
(sae/shard.py, latent_parallel.py).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import rundir
from ..checks import check_type
from ..config import TrainConfig
from ..data.activations import (
    StreamSource,
    check_batch,
    check_d_in,
    check_zero_rows,
    open_source,
)
from ..errors import ConfigError, SaelabError
from ..sae.model import SAE, LossOutput
from ..sae.shard import take_shard
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from .distributed import Mesh, all_gather_cat, all_reduce, alone, is_distributed, mesh, rank
from .heldout import heldout_metrics
from .init import initialize_from_data, mean_squares
from .interrupt import Interrupted, stop_on_interrupt
from .latent_parallel import (
    clip_grad_norm,
    load_sharded,
    remove_shard_files,
    save_sharded,
    whole_sae,
)
from .schedule import default_lr, lr_factor
from .wandb_log import start_run

HISTORY_NAME = rundir.HISTORY
# TrainConfig fields that do not change the trained SAE; every other field must agree between a
# checkpoint and the run that resumes it (and between a finished sweep point and the sweep)
NON_RESULT_KEYS = (
    "out_dir",
    "force_lr",
    "checkpoint_every_tokens",
    "eval_every_tokens",
    "resume",
    "log_every",
    "progress",
    "wandb_project",
    "compile",
)
# SAEConfig fields that training itself sets
ESTIMATED_KEYS = ("input_scale", "output_scale")
# TrainConfig fields that SAEs trained together on one stream of batches must share
SHARED_KEYS = (
    "batch_size",
    "total_tokens",
    "seed",
    "resume",
    "checkpoint_every_tokens",
    "eval_every_tokens",
    "latent_parallel",
    "distribute_hookpoints",
)
# Above this batch L0 / d_sae the dense path's step is faster than the sparse path's
# (bench/RESULTS.md, "sparse or dense by L0": crossover near 6-7% at d_sae 4608 and 18432)
SPARSE_MAX_DENSITY = 1 / 16


def adam(params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, fused (one pass over each parameter per step) where this torch supports it on the
    parameters' device, else torch's default; the same update to float rounding, faster
    (bench/RESULTS.md: 5.7 ms against 40 ms per step at d_sae 18432)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, betas=betas)


class TrainingDiverged(SaelabError, RuntimeError):
    """The loss or the parameters became NaN or infinite."""


def first_difference(saved: dict, now: dict, ignore=()) -> str | None:
    """'field (was X, now Y)' for the first field of `now` whose value differs in `saved`."""
    for key, value in now.items():
        if key not in ignore and saved.get(key) != value:
            return f"{key} (was {saved.get(key)!r}, now {value!r})"
    return None


def data_identity(source) -> dict:
    """What a checkpoint records of its training data: a resume must read the same source."""
    return {"name": source.name, "d_in": source.d_in, "n_tokens": source.n_tokens}


@dataclass
class TrainResult:
    sae: SAE
    history: list[dict] = field(default_factory=list)
    tokens: int = 0
    steps: int = 0


class _LossForward(torch.nn.Module):
    """sae.loss as a forward(), so DistributedDataParallel can wrap it."""

    def __init__(self, sae: SAE, sparse: bool):
        super().__init__()
        self.sae, self.sparse = sae, sparse

    def forward(self, batch, dead):
        """batch [n, d_in] (a transcoder's [n, d_in + d_out]: x and its target side by side)."""
        x, target = self.sae.split(batch)
        target = target if self.sae.cfg.is_transcoder else None
        return self.sae.loss(x, dead, sparse=self.sparse, target=target)


def with_recipe(sae: SAE, cfg: TrainConfig) -> TrainConfig:
    """cfg with the architecture's training recipe (Architecture.training_recipe) in the fields
    where cfg holds TrainConfig's default."""
    defaults = TrainConfig()
    recipe = sae.arch.training_recipe(sae, cfg)
    return replace(
        cfg,
        **{
            key: value
            for key, value in recipe.items()
            if getattr(cfg, key) == getattr(defaults, key)
        },
    )


class Trainer:
    """One SAE's optimizer, schedule, dead-latent counters, history and files. Under torchrun
    the loss goes through DDP over the data ranks and only rank 0 writes files (and, with the
    dictionary split over ranks, the ranks of data index 0 their shards' checkpoints).
    `requested` is the TrainConfig as given (written to files, compared on resume); `cfg` is
    what the training runs with, the architecture's recipe filled in (with_recipe)."""

    def __init__(
        self,
        sae: SAE,
        cfg: TrainConfig,
        total_steps: int,
        data: dict | None = None,
        heldout=None,
        grid: Mesh = Mesh(),
    ):
        self.sae, self.requested, self.total_steps, self.data, self.heldout = (
            sae,
            cfg,
            total_steps,
            data,
            heldout,
        )
        self.cfg = cfg = with_recipe(sae, cfg)
        self.mesh = grid
        if grid.latent_ranks > 1:
            take_shard(sae, grid.shard(sae.cfg.d_sae))
            if not cfg.sparse and sae.arch.select is not None:
                raise ConfigError(
                    f"a {sae.arch.name} dictionary split over ranks trains through the sparse "
                    "path: drop sparse=False (--no-sparse)"
                )
        sae.collectives = grid.collectives()
        self.loss_fn = self.loss_forward = _LossForward(sae, cfg.sparse)
        if cfg.compile:
            self.loss_fn = torch.compile(self.loss_fn)
        if grid.data_ranks > 1:
            self.loss_fn = torch.nn.parallel.DistributedDataParallel(
                self.loss_fn, broadcast_buffers=False, process_group=grid.data_group
            )
        self.warmup_steps = min(cfg.warmup_tokens // cfg.batch_size, total_steps // 2)
        self.lr = cfg.lr if cfg.lr is not None else default_lr(sae.cfg.d_sae)
        self.optimizer = adam(sae.parameters(), self.lr, cfg.betas)
        self.device = sae.W_dec.device
        self.since_fired = torch.zeros(sae.n_latents, dtype=torch.long, device=self.device)
        self.history: list[dict] = []
        self.step = 0
        self.first_bad = self.bad_values = None  # see _watch
        self.squared_norms = None  # E||x||^2 (and E||y||^2) for expected_norm, from train_many
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        # rank 0 writes; with hook points spread over ranks, each rank its own SAEs'
        self.writes = self.out_dir is not None and (rank() == 0 or cfg.distribute_hookpoints)
        if self.writes:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            self._restore()
        self.wandb = None
        if cfg.wandb_project and rank() == 0:
            self.wandb = start_run(
                cfg.wandb_project,
                self.out_dir.name if self.out_dir else None,
                {"sae": sae.cfg.to_dict(), "train": cfg.to_dict()},
                cfg.out_dir,
            )

    def open_files(self) -> None:
        """Called once the data has been checked, just before the first step: a fresh run
        removes an earlier SAE's files from its folder, and the history file then holds exactly
        the records of the steps done so far."""
        if not self.writes:
            return
        if not self.cfg.resume:
            rundir.clear(self.out_dir)
        (self.out_dir / HISTORY_NAME).write_text(
            "".join(json.dumps(r) + "\n" for r in self.history)
        )

    def _restore(self) -> None:
        out, sae = Path(self.cfg.out_dir), self.sae
        state = load_checkpoint(
            out, None if sae.shard.whole else lambda index: load_sharded(out, index, sae)
        )
        for what, saved, now, ignore in (
            ("SAE", state["sae_cfg"], self.sae.cfg.to_dict(), ESTIMATED_KEYS),
            ("training", state["train_cfg"], self.requested.to_dict(), NON_RESULT_KEYS),
            ("data", state.get("data", self.data), self.data or {}, ()),
        ):
            changed = first_difference(saved, now, ignore)
            if changed:
                raise ConfigError(
                    f"cannot resume {self.cfg.out_dir} with different {what} settings: {changed}; "
                    "rerun with the checkpoint's settings, or pass --overwrite to start again"
                )
        path = Path(self.cfg.out_dir) / CHECKPOINT_NAME
        try:
            self.sae.load_state_dict(state["sae"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"cannot resume: {path} does not hold this SAE's state ({str(err).splitlines()[0]})"
            ) from None
        if state["since_fired"].shape != self.since_fired.shape:
            raise CheckpointError(f"cannot resume: {path}: since_fired has the wrong length")
        self.sae.cfg.input_scale = float(self.sae.input_scale)
        if self.sae.cfg.is_transcoder:
            self.sae.cfg.output_scale = float(self.sae.output_scale)
        self.step, self.since_fired = state["step"], state["since_fired"].to(self.device)
        self.history = [r for r in rundir.read_history(self.out_dir) if r["step"] <= self.step]
        if self.history:  # the path the interrupted run was on
            self._choose_path(self.history[-1]["l0"])

    def checkpoint(self) -> None:
        """Save the state atomically; never over the last good checkpoint with NaN/Inf weights."""
        self.check_finite()
        if not all(torch.isfinite(p).all() for p in self.sae.parameters()):
            self._diverged(self.step, "the parameters contain NaN or Inf")
        state = {
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "tokens": self.step * self.cfg.batch_size,
            "since_fired": self.since_fired,
            "sae_cfg": self.sae.cfg.to_dict(),
            "train_cfg": self.requested.to_dict(),
            "data": self.data,
        }
        if not self.sae.shard.whole:
            save_sharded(self.out_dir, state, self.sae, self.mesh)
        elif self.writes:
            save_checkpoint(self.cfg.out_dir, state)

    def _diverged(self, step: int, what: str) -> None:
        """Raise TrainingDiverged for `step` (counted from 1)."""
        kept = self.out_dir is not None and (self.out_dir / CHECKPOINT_NAME).is_file()
        raise TrainingDiverged(
            f"training diverged at step {step} ({(step - 1) * self.cfg.batch_size} tokens before "
            f"it): {what}. Likely cause: a learning rate too high for these activations (try a "
            "smaller --lr, a longer warmup, or --input-scaling per_token / expected_norm for "
            "activations of large norm)"
            + (
                f"; the last good checkpoint in {self.out_dir} is kept (--resume continues from it)"
                if kept
                else ""
            )
        )

    def train_step(self, x: torch.Tensor) -> dict | None:
        """One training step on batch x [n, d_in]: optimise, then keep the books; returns the
        history record when one is due."""
        if self.step == 0 and not self.sae.initialized:
            initialize_from_data(
                self.sae, all_gather_cat(x, self.mesh.data_group), self.squared_norms
            )
        lr = self._schedule_lr()
        dead = self.since_fired >= self.cfg.dead_tokens
        out = self._optimize(x, dead)
        self.step += 1
        self._count_firing(out.fired, len(x))
        return self._record(lr, out, dead)

    # -- optimisation --------------------------------------------------------------------------
    def _schedule_lr(self) -> float:
        """Set this step's learning rate: warmup, constant, linear decay (schedule.py)."""
        cfg = self.cfg
        lr = self.lr * lr_factor(self.step, self.total_steps, self.warmup_steps, cfg.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _optimize(self, x: torch.Tensor, dead: torch.Tensor) -> LossOutput:
        """loss -> backward -> remove each decoder row's gradient component parallel to the row
        -> clip -> Adam -> renormalise decoder rows -> the architecture's after_step (BatchTopK's
        threshold, JumpReLU's multiplier), which sees the step's codes. decoder_renorm
        "before_step": backward -> clip -> renormalise rows -> remove the parallel component ->
        Adam (the reference code's order)."""
        sae, cfg = self.sae, self.cfg
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out = self.loss_fn(x, dead)
        self._watch(out)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.decoder_renorm == "before_step":
            self._clip()
            sae.normalize_decoder()
            sae.remove_parallel_gradient()
            self.optimizer.step()
        else:
            sae.remove_parallel_gradient()
            self._clip()
            self.optimizer.step()
            sae.normalize_decoder()
        sae.arch.after_step(sae, out)
        return out

    def _watch(self, out: LossOutput) -> None:
        """Keep, on the device, the first step whose loss is not finite and its terms (no host
        synchronisation: `check_finite` reads them when a record or checkpoint is due)."""
        values = torch.stack([out.loss.detach(), *out.terms.values()]).float()
        if self.first_bad is None:
            self.first_bad, self.bad_values = torch.zeros_like(values[0]), values.clone()
            self.term_names = list(out.terms)
        first = ~torch.isfinite(values[0]) & (self.first_bad == 0)
        self.first_bad = torch.where(first, self.step + 1, self.first_bad)
        self.bad_values = torch.where(first, values, self.bad_values)

    def check_finite(self) -> None:
        """Raise TrainingDiverged for the first step whose loss was not finite, if any."""
        if self.first_bad is not None and self.first_bad.item():
            loss, *terms = self.bad_values.tolist()
            named = ", ".join(f"{n} {t:.4g}" for n, t in zip(self.term_names, terms))
            self._diverged(int(self.first_bad.item()), f"the loss is {loss} ({named})")

    def _clip(self) -> None:
        if self.cfg.grad_clip is None:
            return
        if self.sae.shard.whole:
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.cfg.grad_clip)
        else:
            clip_grad_norm(self.sae, self.cfg.grad_clip)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _count_firing(self, fired: torch.Tensor, n: int) -> None:
        """Tokens since each latent last fired, over all data ranks (fired: [n_latents] bool)."""
        self.since_fired += n * self.mesh.data_ranks
        self.since_fired.masked_fill_(all_reduce(fired.int(), "max", self.mesh.data_group) > 0, 0)

    def _record(self, lr: float, out: LossOutput, dead: torch.Tensor) -> dict | None:
        """The history record of this step when one is due (every log_every steps, the last
        step, a held-out evaluation), written to history.jsonl and wandb."""
        heldout_due = self._heldout_due()
        if self.step % self.cfg.log_every and self.step != self.total_steps and not heldout_due:
            return None
        self.check_finite()
        # the global batch's loss terms and L0 (means of the data ranks' means), the whole
        # dictionary's dead latents
        names = list(out.terms)
        values = torch.stack([*(out.terms[n].float() for n in names), out.l0.float()])
        values = all_reduce(values, "mean", self.mesh.data_group).tolist()
        terms = dict(zip(names, values))
        n_dead = self.sae.shard.sum(dead.sum())
        record = {
            "step": self.step,
            "tokens": self.step * self.cfg.batch_size,
            "lr": lr,
            "loss": sum(terms.values()),
            **terms,
            "l0": values[-1],
            "dead_fraction": n_dead.item() / self.sae.cfg.d_sae,
            "dead_window_tokens": self.cfg.dead_tokens,
            **self.sae.arch.record(self.sae),
        }
        self._choose_path(record["l0"])
        if heldout_due:
            record.update(heldout_metrics(self.sae, self.heldout, self.cfg.batch_size))
        self.history.append(record)
        if self.writes:
            with open(self.out_dir / HISTORY_NAME, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(record, step=self.step)
        return record

    def _choose_path(self, l0: float) -> None:
        """With sparse=True, the steps up to the next record take the dense path while the
        batch L0 of this record is above SPARSE_MAX_DENSITY * d_sae, where dense products are
        faster (top-AFA's authors' recipe starts near L0 d_sae / 2: 10x); both paths give the
        same values and gradients. A dictionary split over ranks stays on the sparse path."""
        if self.cfg.sparse and self.sae.shard.whole:
            self.loss_forward.sparse = l0 <= SPARSE_MAX_DENSITY * self.sae.cfg.d_sae

    def _heldout_due(self) -> bool:
        """Whether this step ends a block of eval_every_tokens (or is the last), given held-out
        data."""
        every, batch = self.cfg.eval_every_tokens, self.cfg.batch_size
        if self.heldout is None or not every:
            return False
        return (
            self.step == self.total_steps
            or self.step * batch // every > (self.step - 1) * batch // every
        )

    def finish(self) -> TrainResult:
        """Save the SAE (rank 0) and return it: split over ranks, the whole SAE on rank 0 (on
        its CPU) and each rank's shard elsewhere."""
        self.check_finite()
        self.sae.eval()
        sae = self.sae if self.sae.shard.whole else whole_sae(self.sae, self.mesh) or self.sae
        if self.writes:
            sae.save(self.out_dir)
            rundir.write_train_config(self.out_dir, self.requested)
            (self.out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
        if not self.sae.shard.whole and self.out_dir is not None and self.mesh.data_index == 0:
            remove_shard_files(self.out_dir, self.sae)
        if self.wandb is not None:
            self.wandb.finish()
        return TrainResult(
            sae=sae,
            history=self.history,
            tokens=self.step * self.cfg.batch_size,
            steps=self.step,
        )


def _total_steps(source, cfg: TrainConfig) -> int:
    if source.n_tokens is not None and source.n_tokens < cfg.batch_size:
        raise ConfigError(
            f"{source.name} has {source.n_tokens} training tokens, fewer than one batch of "
            f"{cfg.batch_size}: pass a smaller batch size (--batch-size) or more data"
        )
    total = cfg.total_tokens
    if total is None:
        if isinstance(source, StreamSource):
            raise ConfigError("streamed data has no known length: set TrainConfig.total_tokens")
        total = source.n_tokens
    if total < cfg.batch_size:
        raise ConfigError(
            f"total_tokens={total} is less than one batch of {cfg.batch_size}: "
            "train on more tokens (--tokens) or pass a smaller batch size (--batch-size)"
        )
    return total // cfg.batch_size


def train_many(
    saes: list[SAE], data, cfgs: list[TrainConfig], heldout=None, columns=None
) -> list[TrainResult]:
    """Train each SAE in place on the same batches of `data` (tensor [N, d_in], .npy path,
    activation-cache directory, or iterable of tensors), each with its own TrainConfig.
    `heldout` (any such data) is evaluated every cfg.eval_every_tokens (see TrainConfig).
    columns: per SAE, the columns of each row it reads (a LongTensor; None: the whole row), so
    SAEs of several hook points side by side (sources.py) train from one pass over the data.
    With distribute_hookpoints (under torchrun), `saes` are this rank's (distributed.owns) and
    train alone on the whole global batches."""
    check_type("saes", saes, (list, tuple), "a list of SAEs")
    check_type("cfgs", cfgs, (list, tuple), "a list of TrainConfigs (one per SAE)")
    for sae in saes:
        check_type("each SAE", sae, SAE, "a saelab.SAE")
    cfgs = [TrainConfig.from_dict(c) if isinstance(c, dict) else c for c in cfgs]
    for c in cfgs:
        check_type("each TrainConfig", c, TrainConfig, "a TrainConfig or a dict of its fields")
    if not saes or len(saes) != len(cfgs):
        raise ConfigError("train_many needs one TrainConfig per SAE")
    for key in SHARED_KEYS:
        if len({str(getattr(c, key)) for c in cfgs}) > 1:
            raise ConfigError(f"SAEs trained together must share {key}")
    outs = [c.out_dir for c in cfgs if c.out_dir]
    if len(set(outs)) != len(outs):
        raise ConfigError("SAEs trained together need distinct out_dir")
    source = open_source(data)
    columns = _check_columns(saes, source, columns)
    width = source.d_in or saes[0].batch_width
    cfg = cfgs[0]
    if cfg.distribute_hookpoints and cfg.latent_parallel > 1:
        raise ConfigError("distribute_hookpoints places whole SAEs: it takes latent_parallel 1")
    grid = alone() if cfg.distribute_hookpoints else mesh(cfg.latent_parallel)
    n_ranks, me = grid.data_ranks, grid.data_index
    if cfg.batch_size % n_ranks:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is not divisible by the {n_ranks} data-parallel ranks"
        )
    per_rank = cfg.batch_size // n_ranks
    total_steps = _total_steps(source, cfg)
    if cfg.eval_every_tokens and heldout is None:
        raise ConfigError("eval_every_tokens needs held-out data (train_many's heldout)")
    heldouts = [None] * len(saes)
    if heldout is not None:
        heldout = open_source(heldout)
        check_d_in(heldout, source.d_in or saes[0].batch_width, saes[0].takes)
        rows = _in_memory(heldout) if any(c is not None for c in columns) else heldout
        heldouts = [heldout if c is None else open_source(rows[:, c]) for c in columns]
    trainers = [
        Trainer(sae, c, total_steps, data_identity(source), held, grid)
        for sae, c, held in zip(saes, cfgs, heldouts)
    ]
    start = trainers[0].step
    if any(t.step != start for t in trainers):
        raise ConfigError("the checkpoints of SAEs trained together are at different steps")
    if start == 0 and any(
        s.cfg.input_scaling == "expected_norm" and not s.initialized for s in saes
    ):
        squares = mean_squares(source, part=grid.part, group=grid.data_group)
        for t, sae, cols in zip(trainers, saes, columns):
            if squares is not None:
                mine = squares if cols is None else squares[cols.cpu()]
                t.squared_norms = [part.sum().item() for part in sae.split(mine)]

    budget = total_steps * cfg.batch_size
    if rank() == 0 and source.n_tokens and budget > source.n_tokens:
        print(
            f"{budget} training tokens take {budget / source.n_tokens:.2f} epochs over the "
            f"{source.n_tokens} tokens of {source.name}"
        )
    batches = source.batches(per_rank, cfg.seed, skip_tokens=start * per_rank, part=(me, n_ranks))
    if start == 0:  # look at the first batch before any training
        first = next(batches, None)
        if first is not None:
            check_batch(first, width, f"{source.name}, batch 0")
            # on the global batch, so that every rank refuses or goes on together
            check_zero_rows(
                all_gather_cat(first, grid.data_group), f"{source.name}, batch 0", note=rank() == 0
            )
            batches = itertools.chain([first], batches)
    for t in trainers:
        t.open_files()
    name = "+".join(sorted({s.cfg.arch for s in saes}))
    bar = tqdm(
        total=total_steps * cfg.batch_size,
        initial=start * cfg.batch_size,
        unit="tok",
        unit_scale=True,
        disable=not cfg.progress or rank() != 0,
        desc=f"train {name}" + (f" x{len(saes)}" if len(saes) > 1 else ""),
    )
    for sae in saes:
        sae.train()
    with bar, stop_on_interrupt(enabled=not is_distributed()) as stop:
        for step in range(start, total_steps):
            if stop.requested:
                _stop(trainers, step)
            x = next(batches, None)
            if x is None:
                bar.write(f"data ran out after {step} steps ({step * cfg.batch_size} tokens)")
                break
            check_batch(x, width, f"{source.name}, batch {step}")
            x = to_device(x, trainers[0].device)
            records = [
                t.train_step(x if cols is None else x[:, cols])
                for t, cols in zip(trainers, columns)
            ]
            bar.update(cfg.batch_size)
            if records[0] is not None:
                bar.set_postfix(loss=f"{records[0]['loss']:.4g}", l0=f"{records[0]['l0']:.1f}")
            every, tokens = cfg.checkpoint_every_tokens, (step + 1) * cfg.batch_size
            if (
                every
                and tokens // every > (tokens - cfg.batch_size) // every
                and step + 1 < total_steps
            ):
                for t in trainers:
                    t.checkpoint()
    return [t.finish() for t in trainers]


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on the training device; from host memory to a GPU through pinned (page-locked)
    memory, so the copy is asynchronous."""
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def _check_columns(saes: list[SAE], source, columns) -> list[torch.Tensor | None]:
    """Each SAE's columns (None: the whole row, which must then be its width), on its device."""
    columns = [None] * len(saes) if columns is None else list(columns)
    if len(columns) != len(saes):
        raise ConfigError("train_many needs one columns entry per SAE (or none)")
    checked = []
    for sae, cols in zip(saes, columns):
        if cols is None:
            check_d_in(source, sae.batch_width, sae.takes)
            checked.append(None)
            continue
        cols = torch.as_tensor(cols, dtype=torch.long)
        if cols.ndim != 1 or len(cols) != sae.batch_width:
            raise ConfigError(
                f"an SAE that {sae.takes} reads {sae.batch_width} columns, got {tuple(cols.shape)}"
            )
        if source.d_in is not None and not (0 <= int(cols.min()) and int(cols.max()) < source.d_in):
            raise ConfigError(f"columns out of range for rows of width {source.d_in}")
        checked.append(cols.to(sae.W_dec.device))
    if all(c is None for c in checked) and len({sae.batch_width for sae in saes}) > 1:
        raise ConfigError(
            "SAEs trained together read the same batches: they need one width (or columns)"
        )
    return checked


def _in_memory(source) -> torch.Tensor:
    """Every row of a (held-out) source, [n, d]."""
    return torch.cat(list(source.chunks(65536)))


def _stop(trainers: list[Trainer], step: int) -> None:
    """Checkpoint every trainer after `step` whole steps and raise Interrupted."""
    for t in trainers:
        t.checkpoint()
    saved = [str(t.out_dir) for t in trainers if t.writes]
    tokens = step * trainers[0].cfg.batch_size
    raise Interrupted(
        f"interrupted after step {step} ({tokens} tokens): "
        + (
            f"checkpoint saved in {', '.join(saved)}; run the same command again to continue "
            "(saelab train: with --resume)"
            if saved
            else "nothing saved (no out_dir)"
        )
    )


def train(sae: SAE, data, cfg: TrainConfig | dict | None = None, heldout=None) -> TrainResult:
    """Train `sae` in place on `data` with `cfg` (a TrainConfig or a dict of its fields); see
    train_many."""
    return train_many([sae], data, [cfg or TrainConfig()], heldout)[0]
