"""The training loop: Adam with warmup and a linear decay tail, unit-norm decoder, dead-latent
tracking in tokens, JSON-lines history, atomic checkpoints and bit-exact resume."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import ConfigError, TrainConfig
from ..data.activations import StreamSource, check_batch, open_source
from ..sae.model import SAE
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .init import initialize_from_data
from .schedule import lr_factor

HISTORY_NAME = "history.jsonl"
# TrainConfig fields that must agree between a checkpoint and the run that resumes it
RESUME_KEYS = ("batch_size", "lr", "betas", "total_tokens", "warmup_tokens", "decay_fraction", "seed", "dead_tokens")


@dataclass
class TrainResult:
    sae: SAE
    history: list[dict] = field(default_factory=list)
    tokens: int = 0
    steps: int = 0


def _total_tokens(source, cfg: TrainConfig) -> int:
    if cfg.total_tokens is not None:
        return cfg.total_tokens
    if isinstance(source, StreamSource):
        raise ConfigError("streamed data has no known length: set TrainConfig.total_tokens")
    return source.n_tokens


def _log_record(step, tokens, lr, out, dead, sae) -> dict:
    record = {"step": step, "tokens": tokens, "lr": lr, "loss": sum(out.terms.values()).item()}
    record.update({name: value.item() for name, value in out.terms.items()})
    record["l0"] = (out.codes > 0).sum(-1).float().mean().item()
    record["dead_fraction"] = dead.float().mean().item()
    if sae.cfg.arch == "batchtopk":
        record["threshold"] = sae.threshold.item()
    if sae.cfg.arch == "jumprelu":
        record["l0_lambda"] = sae.l0_lambda.item()
    return record


def _read_history(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] <= up_to_step]


def _restore(sae: SAE, optimizer, cfg: TrainConfig) -> tuple[dict, list[dict]]:
    state = load_checkpoint(cfg.out_dir)
    if state["sae_cfg"]["arch"] != sae.cfg.arch or state["sae_cfg"]["d_sae"] != sae.cfg.d_sae:
        raise ConfigError(f"checkpoint in {cfg.out_dir} is for a different SAE ({state['sae_cfg']})")
    changed = [k for k in RESUME_KEYS if state["train_cfg"][k] != cfg.to_dict()[k]]
    if changed:
        raise ConfigError(f"cannot resume {cfg.out_dir} with different settings: {', '.join(changed)}")
    sae.load_state_dict(state["sae"])
    sae.cfg.input_scale = float(sae.input_scale)
    optimizer.load_state_dict(state["optimizer"])
    history = _read_history(Path(cfg.out_dir) / HISTORY_NAME, state["step"])
    return state, history


def _checkpoint(sae, optimizer, cfg, step, tokens, since_fired) -> None:
    state = {
        "sae": sae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "tokens": tokens,
        "since_fired": since_fired,
        "sae_cfg": sae.cfg.to_dict(),
        "train_cfg": cfg.to_dict(),
    }
    save_checkpoint(cfg.out_dir, state)


def train(sae: SAE, data, cfg: TrainConfig | None = None) -> TrainResult:
    """Train `sae` in place on `data` (tensor [N, d_in], .npy path, or iterable of tensors).

    Each step: loss on one batch, backward, remove the decoder-gradient component parallel to
    each row, clip, Adam step with the scheduled lr, renormalise decoder rows.
    """
    cfg = cfg or TrainConfig()
    source = open_source(data)
    if source.d_in is not None and source.d_in != sae.cfg.d_in:
        raise ValueError(f"activations have d_in={source.d_in}, but the SAE has d_in={sae.cfg.d_in}")
    total_tokens = _total_tokens(source, cfg)
    total_steps = max(1, total_tokens // cfg.batch_size)
    warmup_steps = min(cfg.warmup_tokens // cfg.batch_size, total_steps // 2)
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)

    step, history = 0, []
    since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    if cfg.resume:
        state, history = _restore(sae, optimizer, cfg)
        step, since_fired = state["step"], state["since_fired"]
    if out_dir:  # the history file always holds exactly the records of the steps done so far
        (out_dir / HISTORY_NAME).write_text("".join(json.dumps(r) + "\n" for r in history))

    batches = source.batches(cfg.batch_size, cfg.seed, skip_tokens=step * cfg.batch_size)
    bar = tqdm(total=total_steps * cfg.batch_size, initial=step * cfg.batch_size, unit="tok",
               unit_scale=True, disable=not cfg.progress, desc=f"train {sae.cfg.arch}")
    history_file = open(out_dir / HISTORY_NAME, "a") if out_dir else None
    sae.train()
    try:
        for step in range(step, total_steps):
            x = next(batches, None)
            if x is None:
                bar.write(f"data ran out after {step} steps ({step * cfg.batch_size} tokens)")
                break
            check_batch(x, sae.cfg.d_in, f"{source.name}, batch {step}")
            if step == 0:
                initialize_from_data(sae, x)
            lr = cfg.lr * lr_factor(step, total_steps, warmup_steps, cfg.decay_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            dead = since_fired >= cfg.dead_tokens
            out = sae.loss(x, dead)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            sae.remove_parallel_gradient()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
            optimizer.step()
            sae.normalize_decoder()

            fired = (out.codes > 0).any(0)
            since_fired += len(x)
            since_fired[fired] = 0
            tokens = (step + 1) * cfg.batch_size
            bar.update(len(x))
            if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
                record = _log_record(step + 1, tokens, lr, out, dead, sae)
                history.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4g}", l0=f"{record['l0']:.1f}")
                if history_file:
                    history_file.write(json.dumps(record) + "\n")
                    history_file.flush()
            every = cfg.checkpoint_every_tokens
            if every and tokens // every > (tokens - len(x)) // every and step + 1 < total_steps:
                _checkpoint(sae, optimizer, cfg, step + 1, tokens, since_fired)
        else:
            step = total_steps
    finally:
        bar.close()
        if history_file:
            history_file.close()
    sae.eval()
    if out_dir:
        sae.save(out_dir)
        (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return TrainResult(sae=sae, history=history, tokens=step * cfg.batch_size, steps=step)
