"""Tiling and backward pass of the gated delta kernels."""

import dataclasses

from nestlearn.kernels.chunk_scan import check_backward


def _is_power_of_two(x: int) -> bool:
    return x >= 1 and x & (x - 1) == 0


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling and backward pass of the gated delta kernels.

    The rows of the state S [d_v, d_k] evolve independently (every term of the recurrence is
    linear in the rows of S, Z, V and O), so the value axis is split across programs; the key axis
    and the chunk are whole in every program.

    Attributes:
      block_v: value columns per program; None means the backend's default: Triton 16 (the
        fastest on an H200, docs/kernels.md §6: one program per (sequence·head) leaves most of
        the GPU idle), TPU all of d_v (after the backend's padding). Triton needs a power of two
        ≥ 16; Mosaic TPU needs d_v itself or a multiple of 128.
      num_warps: Triton warps per program (power of two).
      num_stages: Triton software-pipelining stages (≥ 1).
      backward: "pallas" (default): a backward kernel walks the chunks in reverse from chunk-start
        states that the backward pass recomputes with the forward kernel (the forward saves only
        its inputs); "xla": the forward kernel saves the chunk-start states and an XLA reverse
        scan differentiates each chunk (:mod:`nestlearn.kernels.chunk_scan`).
    """

    block_v: int | None = None
    num_warps: int = 4
    num_stages: int = 1
    backward: str = "pallas"

    def __post_init__(self):
        block_v = self.block_v
        if block_v is not None and (
            not isinstance(block_v, int) or isinstance(block_v, bool) or block_v < 1
        ):
            raise ValueError(f"{block_v=} must be a positive int or None")
        num_warps = self.num_warps
        if (
            not isinstance(num_warps, int)
            or isinstance(num_warps, bool)
            or not _is_power_of_two(num_warps)
        ):
            raise ValueError(f"{num_warps=} must be a positive power of two")
        num_stages = self.num_stages
        if not isinstance(num_stages, int) or isinstance(num_stages, bool) or num_stages < 1:
            raise ValueError(f"{num_stages=} must be a positive int")
        check_backward(self.backward)

    def value_block(self, d_v: int, default: int | None = None) -> int:
        """The value block for a (padded) value width ``d_v``; ValueError if it does not tile.

        ``default`` (capped at d_v) replaces ``block_v=None``; without it None means all of d_v.
        """
        if self.block_v is not None:
            block_v = self.block_v
        else:
            block_v = d_v if default is None else min(default, d_v)
        if d_v % block_v:
            raise ValueError(f"{d_v=} must be a multiple of {block_v=}")
        return block_v
