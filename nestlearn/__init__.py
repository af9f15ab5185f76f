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
"""

from nestlearn.core import Level, tune_host_allocator
from nestlearn.optim.scheduler import level_stats, make_train_step, nested

__version__ = "0.1.0"

__all__ = ["Level", "level_stats", "make_train_step", "nested", "tune_host_allocator"]
