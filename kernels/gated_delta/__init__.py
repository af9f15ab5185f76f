"""Gated delta rule with momentum: reference, chunked XLA, Triton and Mosaic TPU kernels."""

from nestlearn.kernels.gated_delta.api import gated_delta
from nestlearn.kernels.gated_delta.config import BlockSizes
from nestlearn.kernels.gated_delta.reference import (
    GatedDeltaState,
    gated_delta_chunked,
    gated_delta_recurrent,
)

__all__ = [
    "BlockSizes",
    "GatedDeltaState",
    "gated_delta",
    "gated_delta_chunked",
    "gated_delta_recurrent",
]
