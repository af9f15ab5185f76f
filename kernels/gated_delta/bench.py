"""Benchmark of the gated delta op: kernels vs the XLA reference, forward and forward+backward.

    python -m nestlearn.kernels.gated_delta.bench [--momentum] [--out gated_delta.json]
    python -m nestlearn.kernels.gated_delta.bench --quick        # CPU smoke run (interpreter)

Defaults (the benchmark shape): T ∈ {2048, 8192}, d_k = d_v = 128, 8 heads, batch 1, chunk 64,
bf16, implementations ``xla`` and the platform's Pallas backend. Prints a table with achieved
TFLOP/s and GB/s against the device's measured matmul and copy ceilings
(:mod:`nestlearn.kernels.benchmarking`); ``python -m nestlearn.kernels.bench_all`` runs this with
and without momentum together with the MLP-memory op.

Work per call (:func:`cost`), counted for the chunked algorithm as implemented
in the kernels (:func:`nestlearn.kernels.gated_delta.chunk.chunk_step` with the product-form
triangular solve :func:`nestlearn.kernels.triangular.unit_lower_solve`; the XLA path's blocked
substitution is counted the same): per sequence·head (b·h of them) and per chunk (N = ⌈T/c⌉ of
them) of c tokens, with key/value widths d_k, d_v, μ = 1 with momentum (0 without), and in the
solve p = ⌈log₂ min(8, c)⌉ factors of the 8 × 8 diagonal blocks and l = ⌈log₂(c/8)⌉ doublings:

    FLOPs_fwd     = 4c²d_k + 4c²d_v + 4c³(p − 1 + l) + 6(1 + μ) c d_k d_v
    FLOPs_fwd+bwd = 3 FLOPs_fwd

(matmul FLOPs only; a product's backward is two products of the same size; the Pallas paths'
recomputation of each chunk in the backward, and the Pallas backward's recomputation of the
chunk-start states by a second forward kernel, are work they do but not work counted). Bytes are the
float32 operands the kernel reads and writes (inputs are cast to float32 before the kernel),
per sequence·head, with terms = N(c(2d_k + d_v) + 2c² + 3c + 1 + μ(3c + 2)) elements (q, k, v, the
c × c decay matrices Φ and Π, the per-token coefficients) and state size P = (1 + μ) d_v d_k:

    bytes_fwd     = 4 (terms + N c d_v + 2P)                      (o; initial and final state)
    bytes_fwd+bwd = bytes_fwd + 4 (2 terms + 2NP + N c d_v + 2P)  (chunk-start states written and
                                                                   read, terms re-read, their
                                                                   gradients written, dO, dS;
                                                                   the Pallas backward's second
                                                                   forward is not counted)
"""

import functools

import jax
import jax.numpy as jnp
from nestlearn.kernels import benchmarking, triangular
from nestlearn.kernels.benchmarking import Cost
from nestlearn.kernels.gated_delta.api import gated_delta
from nestlearn.kernels.gated_delta.config import BlockSizes


def cost(*, b, t, h, d_k, d_v, chunk_size, momentum) -> tuple[Cost, Cost]:
    """(forward, forward+backward) :class:`Cost` of one call (module docstring)."""
    c, mu = chunk_size, int(bool(momentum))
    p, levels = triangular.products(min(triangular.BLOCK, c)), triangular.doublings(c)
    chunks, bh = -(-t // c), b * h
    solve = 4 * c**3 * (p - 1 + levels) + 2 * c**2 * d_v
    flops = 4 * c**2 * d_k + 2 * c**2 * d_v + solve + 6 * (1 + mu) * c * d_k * d_v
    terms = chunks * (c * (2 * d_k + d_v) + 2 * c**2 + 3 * c + 1 + mu * (3 * c + 2))
    state = (1 + mu) * d_v * d_k
    out = chunks * c * d_v
    fwd_bytes = 4 * bh * (terms + out + 2 * state)
    bwd_bytes = 4 * bh * (2 * terms + 2 * chunks * state + out + 2 * state)
    fwd_flops = bh * chunks * flops
    return Cost(fwd_flops, fwd_bytes), Cost(3 * fwd_flops, fwd_bytes + bwd_bytes)


def _inputs(key, b, t, h, d, dtype, momentum):
    ks = jax.random.split(key, 6)
    k = jax.random.normal(ks[1], (b, t, h, d), jnp.float32)
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    args = dict(
        q=jax.random.normal(ks[0], (b, t, h, d), jnp.float32).astype(dtype),
        k=k.astype(dtype),
        v=jax.random.normal(ks[2], (b, t, h, d), jnp.float32).astype(dtype),
        alpha=jax.random.uniform(ks[3], (b, t, h), dtype, 0.9, 1.0),
        beta=jax.random.uniform(ks[4], (b, t, h), dtype, 0.1, 1.0),
    )
    mom = jax.random.uniform(ks[5], (b, t, h), dtype, 0.0, 0.9) if momentum else None
    return args, mom


def _make(*, implementation, interpret, b, t, h, d, dtype, chunk_size, momentum, block_sizes):
    args, mom = _inputs(jax.random.key(0), b, t, h, d, dtype, momentum)

    def forward(args, mom):
        return gated_delta(
            **args,
            momentum=mom,
            chunk_size=chunk_size,
            implementation=implementation,
            interpret=interpret,
            block_sizes=block_sizes,
        )

    def loss(args, mom):
        o, _ = forward(args, mom)
        return jnp.sum(o.astype(jnp.float32))

    fwd, train = cost(b=b, t=t, h=h, d_k=d, d_v=d, chunk_size=chunk_size, momentum=momentum)
    return dict(forward=forward, loss=loss, args=(args, mom), cost_fwd=fwd, cost_train=train)


def _tilings(a):
    """(label, BlockSizes) of the flags ``--block_v`` × ``--num_warps`` × ``--backward``."""
    swept = a.block_v is not None or a.num_warps is not None
    for block_v in a.block_v or [0]:
        for warps in a.num_warps or [BlockSizes.num_warps]:
            for backward in a.backward:
                label = f"block_v {block_v or 'all'}, {warps} warps, " if swept else ""
                blocks = BlockSizes(block_v or None, warps, backward=backward)
                yield f"{label}backward {backward}", blocks


def cases(a, *, momentum: bool):
    """The benchmark cases of parsed flags ``a`` (see :func:`benchmarking.run`)."""
    shape = dict(b=a.batch, h=a.heads, d=a.d, dtype=a.dtype, chunk_size=a.chunk)
    for t in a.t:
        for impl in a.implementations:
            interpret = a.interpret and impl != "xla"
            for label, block_sizes in _tilings(a) if impl != "xla" else [("", None)]:
                make = functools.partial(
                    _make,
                    implementation=impl,
                    interpret=interpret,
                    t=t,
                    momentum=momentum,
                    block_sizes=block_sizes,
                    **{**shape, "dtype": jnp.dtype(a.dtype)},
                )
                yield dict(
                    op="gated_delta",
                    variant="momentum" if momentum else "plain",
                    tiling=label,
                    t=t,
                    implementation=impl,
                    interpret=interpret,
                    shape=shape,
                    make=make,
                )


def add_tiling_flags(p):
    """``--block_v`` / ``--num_warps`` sweeps of the Pallas backends (0: the whole of d_v)."""
    p.add_argument("--block_v", type=int, nargs="+", default=None, help="value blocks to sweep")
    p.add_argument("--num_warps", type=int, nargs="+", default=None, help="warps to sweep")


def main(argv=None):
    p = benchmarking.parser(__doc__.splitlines()[0])
    p.add_argument("--momentum", action="store_true", help="Titans momentum (linear memory)")
    add_tiling_flags(p)
    a = benchmarking.finish_args(p.parse_args(argv), argv)
    benchmarking.report(benchmarking.run(cases(a, momentum=a.momentum), a), a.out)


if __name__ == "__main__":
    main()
