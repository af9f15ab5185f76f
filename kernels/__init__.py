"""Pallas kernels for the associative-memory updates, installed as `nestlearn.kernels`.

Each op has a plain-JAX reference (the CPU default), Pallas backends for Triton (GPU) and Mosaic
(TPU), and an ``implementation=`` switch (:mod:`nestlearn.kernels.dispatch`):

* :func:`gated_delta` — gated delta rule (Gated DeltaNet) with an optional Titans momentum.
* :func:`mlp_memory` — Titans deep memory (2-layer MLP) with chunk-start gradients.
* :func:`nestlearn.kernels.per_sequence.scan` — any chunk step whose whole state one program
  holds, its output any pytree (Hope's self-modifying memory runs its generators and its output
  memory on it).

The models' ``kernel_impl`` switch (``auto | xla | pallas``) is resolved by
:mod:`nestlearn.kernels.kernel_impl`; ``python -m nestlearn.kernels.bench_all`` benchmarks every
op on the current device (docs/kernels.md).
"""

from nestlearn.kernels.dispatch import IMPLEMENTATIONS, Unavailable
from nestlearn.kernels.gated_delta import GatedDeltaState, gated_delta
from nestlearn.kernels.mlp_memory import MLPMemoryState, mlp_memory

__all__ = [
    "IMPLEMENTATIONS",
    "GatedDeltaState",
    "MLPMemoryState",
    "Unavailable",
    "gated_delta",
    "mlp_memory",
]
