"""Evaluation: reconstruction metrics (downstream and AFA analysis build on these)."""
