#!/usr/bin/env bash
# The GPU check (issue 29): one script, under 8 minutes on one GPU, for a lent CUDA machine.
#   1. the GPU-marked tests (tests/test_gpu.py): every architecture's sparse path against its
#      dense path on CUDA, GPU training steps against CPU steps, bf16 autocast keeping float32
#      weights and thresholds;
#   2. bench/gpu_step.py: step time and peak memory of topk and batchtopk at d_sae 16384, 65536
#      and 131072 (d_in 2304, batch 4096 and 16384, fp32 and bf16) against sparsify's Triton
#      step in the same run, one JSON line per measurement; then the same at the default
#      model's width on real activations when a cache is carried in bench/gpu_cache.
# Uses the machine's python3 (PyTorch with CUDA) and saelab from this tree. sparsify travels as
# wheels: run `bash bench/gpu_check.sh --wheels` here first (with network), then carry `.whl`.
# Results go to $OUT (or /tmp/gpu_check): gpu_tests.log, gpu_step.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--wheels" ]; then
    mkdir -p .git/info && (grep -qs "^/.whl/" .git/info/exclude || echo "/.whl/" >> .git/info/exclude)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl eai-sparsify==1.3.3 datasets dill multiprocess schedulefree \
        simple-parsing docstring-parser natsort
    exit
fi
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
date -u +%Y-%m-%dT%H:%M:%SZ
timeout 200 python3 -m pytest -q -o addopts="" -m gpu -p no:cacheprovider tests/test_gpu.py \
    2>&1 | tee "$OUT/gpu_tests.log"
timeout 260 python3 bench/gpu_step.py --steps 10 2>&1 | tee "$OUT/gpu_step.jsonl"
if [ -d bench/gpu_cache ]; then
    timeout 60 python3 bench/gpu_step.py --activations bench/gpu_cache --d-sae 4608 18432 \
        --steps 10 2>&1 | tee -a "$OUT/gpu_step.jsonl"
fi
