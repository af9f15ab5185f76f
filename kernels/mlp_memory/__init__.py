"""Titans deep (2-layer MLP) memory: reference, chunked XLA, Triton and Mosaic TPU kernels."""

from nestlearn.kernels.mlp_memory.api import mlp_memory
from nestlearn.kernels.mlp_memory.config import BlockSizes
from nestlearn.kernels.mlp_memory.reference import (
    MLPMemoryState,
    mlp_memory_chunked,
    mlp_memory_recurrent,
)

__all__ = [
    "BlockSizes",
    "MLPMemoryState",
    "mlp_memory",
    "mlp_memory_chunked",
    "mlp_memory_recurrent",
]
