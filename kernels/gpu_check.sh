#!/usr/bin/env bash
# The GPU checks in one command, from the repository root of a machine with an NVIDIA GPU:
#   1. the compiled Triton kernels' contract suites (tests/kernels, class TestTritonGpu) and the
#      wired models with kernel_impl="pallas" against XLA (tests/models/test_kernel_impl.py);
#   2. `python -m nestlearn.kernels.bench_all` (kernel vs XLA, fwd and fwd+bwd, bf16).
# Logs and the benchmark JSON go to $OUT (default /tmp/gpu_check). It needs jax with CUDA, flax,
# optax, chex, ml_collections and pytest importable by $PYTHON; wheels in ./.whl are installed
# first when present (a machine without internet). The package need not be installed: the script
# puts the checkout on PYTHONPATH with `nestlearn/kernels` linked to `kernels/`.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
source kernels/gpu_env.sh
export JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest PYTHONUNBUFFERED=1
"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/env.txt"
import jax, flax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__)
print(jax.devices())
PY
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider --durations=10 \
  tests/kernels/test_gated_delta.py::TestTritonGpu tests/kernels/test_mlp_memory.py::TestTritonGpu \
  "tests/models/test_kernel_impl.py::test_compiled_kernel_model_equals_xla_model_on_gpu" \
  2>&1 | tee "$OUT/pytest.txt" || status=1
unset JAX_DEFAULT_MATMUL_PRECISION  # the benchmark times the default (bf16) path
"$PYTHON" -m nestlearn.kernels.bench_all --out "$OUT/kernels.json" "$@" 2>&1 | tee "$OUT/bench.txt" \
  || status=1
exit $status
