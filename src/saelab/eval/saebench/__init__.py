"""SAEBench's interpretability evaluations, offline: feature absorption, sparse probing and
autointerp (with its chat models), each written in SAEBench's result schema (output.py);
eval/registry.py runs them by name for `saelab eval --evals` and `saelab sweep --evals`."""
