"""Learning rate: its default for a dictionary size, and its schedule (linear warmup, constant,
linear decay to 0 over the last part)."""

LR_AT_4608 = 2e-3  # the default at d_sae 4608 (bench/RESULTS.md, "Issue 13")


def default_lr(d_sae: int) -> float:
    """Adam's learning rate when none is given: LR_AT_4608 * sqrt(4608 / d_sae). The 1/sqrt(d_sae)
    scaling is the one EleutherAI sparsify applies to its defaults; the constant is the best of
    3e-4, 1e-3 and 2e-3 at d_sae 4608 on the default model (bench/quality.py)."""
    return LR_AT_4608 * (4608 / d_sae) ** 0.5


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay_fraction: float) -> float:
    """Multiplier of the base lr at `step` (0-based) of `total_steps`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = int(total_steps * decay_fraction)
    decay_start = total_steps - decay_steps
    if decay_steps and step >= decay_start:
        return (total_steps - step) / decay_steps
    return 1.0
