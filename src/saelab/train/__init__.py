"""Training: initialisation from data, schedules, checkpoints and the loop."""
