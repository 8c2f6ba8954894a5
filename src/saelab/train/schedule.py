"""Learning-rate schedule: linear warmup, constant, linear decay to 0 over the last part."""


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay_fraction: float) -> float:
    """Multiplier of the base lr at `step` (0-based) of `total_steps`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = int(total_steps * decay_fraction)
    decay_start = total_steps - decay_steps
    if decay_steps and step >= decay_start:
        return (total_steps - step) / decay_steps
    return 1.0
