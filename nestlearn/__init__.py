"""nestlearn: Nested Learning in JAX/Flax (Behrouz et al., arXiv 2512.24695).

A model is a hierarchy of associative memories, each with its own update rule, frequency and
context. The top level re-exports the level vocabulary and `tune_host_allocator` (call it at the
start of a CPU training script: glibc otherwise returns XLA's freed buffers to the kernel and every
step page-faults them in again); everything else lives in subpackages named after what they hold:

* `nestlearn.optim` — deep optimizers as optax transforms (momentum memory, delta momentum,
  DMGD, Newton–Schulz momentum, M3, DGD) and the level scheduler.
* `nestlearn.memory` — associative memories as pure functions (linear attention, DeltaNet,
  Gated DeltaNet, Titans, Hope's self-modifying memory; recurrent and chunk-parallel scans).
* `nestlearn.models` — Flax NNX language models (Transformer++, Titans, Hope, Hope-Attention, …).
* `nestlearn.data`, `nestlearn.train`, `nestlearn.eval` — corpora, the training pipeline, reports.
* `nestlearn.kernels` — Pallas kernels for the memory updates (GPU/TPU; interpret mode on CPU).

Importing nestlearn appends one XLA:CPU flag to `XLA_FLAGS` (YNNPACK kept to matrix products:
Hope's train step up to 1.5× faster, Titans LMM's up to 11% slower at small shapes;
`nestlearn/core/xla_options.py`, opt out with `NESTLEARN_XLA_CPU_OPTIONS=0`).
"""

from nestlearn.core import Level, tune_host_allocator
from nestlearn.core.xla_options import apply_cpu_flags
from nestlearn.optim.scheduler import level_stats, make_train_step, nested

apply_cpu_flags()  # before JAX starts its backends (nestlearn/core/xla_options.py)

__version__ = "0.1.0"

__all__ = ["Level", "level_stats", "make_train_step", "nested", "tune_host_allocator"]
