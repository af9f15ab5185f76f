"""Every kernel lowers for the accelerators it targets, checked on this CPU machine.

`jax.jit(f).trace(...).lower(lowering_platforms=...)` runs the Pallas → Triton IR and Pallas →
Mosaic lowerings on the CPU (docs/kernels.md §5), so a kernel that uses an operation, shape or
block spec the accelerator backend rejects at lowering fails here. (Mosaic's layout passes and
Triton's PTX compilation run only on the device.)
"""

import functools

import jax
import jax.numpy as jnp
import pytest
from nestlearn.kernels.gated_delta import BlockSizes as GatedDeltaBlocks
from nestlearn.kernels.gated_delta import chunk as gd_chunk
from nestlearn.kernels.gated_delta import pallas_tpu as gd_tpu
from nestlearn.kernels.gated_delta import pallas_triton as gd_triton
from nestlearn.kernels.mlp_memory import BlockSizes as MLPBlocks
from nestlearn.kernels.mlp_memory import chunk as mlp_chunk
from nestlearn.kernels.mlp_memory import pallas_tpu as mlp_tpu
from nestlearn.kernels.mlp_memory import pallas_triton as mlp_triton

B, T, H, C = 1, 32, 2, 16


def gated_delta_case(momentum: bool, d_k: int, d_v: int):
    x = jnp.zeros((B, T, H, d_k))
    gate = jnp.full((B, T, H), 0.5)
    terms = gd_chunk.chunk_terms(
        x,
        x,
        jnp.zeros((B, T, H, d_v)),
        gate,
        gate,
        gate if momentum else None,
        chunk_size=C,
        d_k=d_k,
        d_v=d_v,
        dtype=jnp.float32,
    )
    s0 = jnp.zeros((B * H, d_v, d_k))
    return terms, (s0, s0 if momentum else None)


def mlp_case(d: int, hidden: int):
    x = jnp.zeros((B, T, H, d))
    gate = jnp.full((B, T, H), 0.5)
    terms = mlp_chunk.chunk_terms(
        x, x, x, gate, gate, gate, chunk_size=C, d_in=d, d_out=d, dtype=jnp.float32
    )
    w = mlp_chunk.Weights(jnp.zeros((B * H, d, hidden)), jnp.zeros((B * H, hidden, d)))
    return terms, (w, w)


def lower(forward, terms, state, platform):
    # save_starts=True lowers the kernel variant with every output the VJP needs.
    f = functools.partial(forward, save_starts=True)
    jax.jit(f).trace(terms, state).lower(lowering_platforms=(platform,))


def lower_backward(backward, terms, state, platform):
    """Lowers the backward kernel on cotangents and chunk-start states shaped as the VJP's."""
    n = terms.k.shape[1]
    starts = jax.tree.map(lambda x: jnp.zeros((x.shape[0], n, *x.shape[1:]), x.dtype), state)
    d_o = jnp.zeros(terms.v.shape)  # [bh, n, c, d_v]
    jax.jit(backward).trace(terms, starts, d_o, state).lower(lowering_platforms=(platform,))


@pytest.mark.parametrize("momentum", [False, True])
def test_gated_delta_triton_lowers_for_cuda(momentum):
    forward = functools.partial(
        gd_triton.forward, block_sizes=GatedDeltaBlocks(block_v=32), interpret=False
    )
    lower(forward, *gated_delta_case(momentum, 64, 64), "cuda")


@pytest.mark.parametrize("momentum", [False, True])
def test_gated_delta_triton_backward_lowers_for_cuda(momentum):
    backward = functools.partial(
        gd_triton.backward, block_sizes=GatedDeltaBlocks(block_v=32), interpret=False
    )
    lower_backward(backward, *gated_delta_case(momentum, 64, 64), "cuda")


@pytest.mark.parametrize("momentum", [False, True])
def test_gated_delta_tpu_lowers_for_tpu(momentum):
    forward = functools.partial(gd_tpu.forward, block_sizes=GatedDeltaBlocks(), interpret=False)
    lower(forward, *gated_delta_case(momentum, 128, 128), "tpu")


@pytest.mark.parametrize("momentum", [False, True])
def test_gated_delta_tpu_backward_lowers_for_tpu(momentum):
    backward = functools.partial(gd_tpu.backward, block_sizes=GatedDeltaBlocks(), interpret=False)
    lower_backward(backward, *gated_delta_case(momentum, 128, 128), "tpu")


@pytest.mark.parametrize("residual", [False, True])
def test_mlp_memory_triton_lowers_for_cuda(residual):
    forward = functools.partial(
        mlp_triton.forward, residual=residual, block_sizes=MLPBlocks(), interpret=False
    )
    lower(forward, *mlp_case(32, 64), "cuda")


def test_mlp_memory_triton_backward_lowers_for_cuda():
    backward = functools.partial(
        mlp_triton.backward, residual=True, block_sizes=MLPBlocks(), interpret=False
    )
    lower_backward(backward, *mlp_case(32, 64), "cuda")


def test_mlp_memory_tpu_lowers_for_tpu():
    forward = functools.partial(
        mlp_tpu.forward, residual=True, block_sizes=MLPBlocks(), interpret=False
    )
    lower(forward, *mlp_case(128, 128), "tpu")


def test_mlp_memory_tpu_backward_lowers_for_tpu():
    backward = functools.partial(
        mlp_tpu.backward, residual=True, block_sizes=MLPBlocks(), interpret=False
    )
    lower_backward(backward, *mlp_case(128, 128), "tpu")
