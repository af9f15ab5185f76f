#!/usr/bin/env bash
# The LM comparison at 10 × 2^20 training bytes per run on one NVIDIA GPU
# (experiments/configs/lm_comparison_gpu.py), from the repository root:
#   OUT=/path/to/records bash experiments/gpu_lm_comparison.sh [--variants=hope,titans_lmm]
# Each finished run writes $OUT/runs/<model>_s0.json (device, tokens/s, losses, the memory probe)
# and is skipped by the next invocation, so a sweep cut short by a time limit resumes; copy the
# records to docs/results/lm_comparison_gpu/runs/ and rerun with --report_only there. Needs jax
# with CUDA, flax, optax, orbax, chex, ml_collections and absl importable by $PYTHON; wheels in
# ./.whl are installed first when present (a machine without internet). The Shakespeare corpus is
# read from $NESTLEARN_CACHE (default ~/.cache/nestlearn): copy it along on an offline machine.
set -uo pipefail
OUT=${OUT:-/tmp/lm_comparison_gpu}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
source kernels/gpu_env.sh
export JAX_PLATFORMS=cuda PYTHONUNBUFFERED=1
"$PYTHON" -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee "$OUT/env.txt"
"$PYTHON" experiments/lm_compare.py --study=lm_comparison_gpu --out="$OUT" \
  --workdir=/tmp/lm_comparison_gpu_work --compilation_cache=/tmp/jax_cache "$@" 2>&1 \
  | tee -a "$OUT/log.txt"
