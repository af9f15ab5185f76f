"""Launch parameters and backward pass of the MLP-memory kernels."""

import dataclasses

from nestlearn.kernels.chunk_scan import check_backward


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Launch parameters and backward pass of the MLP-memory kernels.

    The chunk step couples every weight of the memory (the hidden error needs all of W₁), so each
    program owns one whole (sequence·head) memory; what remains to choose is the Triton launch.

    Attributes:
      num_warps: Triton warps per program (power of two).
      num_stages: Triton software-pipelining stages (≥ 1).
      backward: "pallas" (default) or "xla", as in the gated delta kernels' ``BlockSizes``.
    """

    num_warps: int = 4
    num_stages: int = 1
    backward: str = "pallas"

    def __post_init__(self):
        num_warps = self.num_warps
        if (
            not isinstance(num_warps, int)
            or isinstance(num_warps, bool)
            or num_warps < 1
            or num_warps & (num_warps - 1)
        ):
            raise ValueError(f"{num_warps=} must be a positive power of two")
        num_stages = self.num_stages
        if not isinstance(num_stages, int) or isinstance(num_stages, bool) or num_stages < 1:
            raise ValueError(f"{num_stages=} must be a positive int")
        check_backward(self.backward)
