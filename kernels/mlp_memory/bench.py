"""Benchmark of the MLP-memory op: kernels vs the XLA reference, forward and forward+backward.

    python -m nestlearn.kernels.mlp_memory.bench [--hidden 256] [--out mlp_memory.json]
    python -m nestlearn.kernels.mlp_memory.bench --quick          # CPU smoke run (interpreter)

Defaults: T ∈ {2048, 8192}, d_in = d_out = 128, hidden 256, 8 heads, batch 1, chunk 64, bf16,
residual memory (Hope Eqs. 89/91), implementations ``xla`` and the platform's Pallas backend; the
table reports achieved TFLOP/s and GB/s against the device's measured ceilings
(:mod:`nestlearn.kernels.benchmarking`).

Work per call (:func:`cost`), counted for the chunked algorithm as implemented
(:func:`nestlearn.kernels.mlp_memory.chunk.chunk_step`): per sequence·head (b·h) and chunk
(N = ⌈T/c⌉) of c tokens with widths d_in, d_out and hidden width n — the read-out σ(Q W₂ᵀ) W₁ᵀ,
the prediction at the keys, the back-propagated residual R W₁ and the two coefficient-weighted
gradient sums (weights and momentum), each Rᵀ diag(·) A and (R W₁ ⊙ σ')ᵀ diag(·) K:

    FLOPs_fwd     = c n (8 d_in + 10 d_out)
    FLOPs_fwd+bwd = 3 FLOPs_fwd

(matmul FLOPs only; the Pallas paths' recomputation in the backward is not counted). Bytes are
the float32 operands the kernel reads and writes, per sequence·head, with
terms = N(c(2 d_in + d_out + 2) + 3) elements (q, k, v, two per-token and three per-chunk
coefficients) and state size P = 2n(d_in + d_out) (weights and momentum):

    bytes_fwd     = 4 (terms + N c d_out + 2P)
    bytes_fwd+bwd = bytes_fwd + 4 (2 terms + 2NP + N c d_out + 2P)
"""

import functools

import jax
import jax.numpy as jnp
from nestlearn.kernels import benchmarking
from nestlearn.kernels.benchmarking import Cost
from nestlearn.kernels.mlp_memory.api import mlp_memory
from nestlearn.kernels.mlp_memory.config import BlockSizes


def cost(*, b, t, h, d_in, d_out, hidden, chunk_size) -> tuple[Cost, Cost]:
    """(forward, forward+backward) :class:`Cost` of one call (module docstring)."""
    c, n = chunk_size, hidden
    chunks, bh = -(-t // c), b * h
    terms = chunks * (c * (2 * d_in + d_out + 2) + 3)
    state = 2 * n * (d_in + d_out)
    out = chunks * c * d_out
    fwd_flops = bh * chunks * c * n * (8 * d_in + 10 * d_out)
    fwd_bytes = 4 * bh * (terms + out + 2 * state)
    bwd_bytes = 4 * bh * (2 * terms + 2 * chunks * state + out + 2 * state)
    return Cost(fwd_flops, fwd_bytes), Cost(3 * fwd_flops, fwd_bytes + bwd_bytes)


def _inputs(key, b, t, h, d, hidden, dtype):
    ks = jax.random.split(key, 8)
    normal = lambda k, shape, scale: (scale * jax.random.normal(k, shape)).astype(dtype)
    args = dict(
        q=normal(ks[0], (b, t, h, d), 1.0),
        k=normal(ks[1], (b, t, h, d), d**-0.5),
        v=normal(ks[2], (b, t, h, d), 1.0),
        theta=jax.random.uniform(ks[3], (b, t, h), dtype, 0.01, 0.1),
        alpha=jax.random.uniform(ks[4], (b, t, h), dtype, 0.0, 0.1),
        eta=jax.random.uniform(ks[5], (b, t, h), dtype, 0.0, 0.9),
    )
    params = {
        "w1": normal(ks[6], (h, d, hidden), hidden**-0.5).astype(jnp.float32),
        "w2": normal(ks[7], (h, hidden, d), d**-0.5).astype(jnp.float32),
    }
    return args, params


def _make(*, implementation, interpret, b, t, h, d, hidden, dtype, chunk_size, block_sizes):
    args, params = _inputs(jax.random.key(0), b, t, h, d, hidden, dtype)

    def forward(args, params):
        return mlp_memory(
            **args,
            params=params,
            chunk_size=chunk_size,
            residual=True,
            implementation=implementation,
            interpret=interpret,
            block_sizes=block_sizes,
        )

    def loss(args, params):
        o, _ = forward(args, params)
        return jnp.sum(o.astype(jnp.float32))

    fwd, train = cost(b=b, t=t, h=h, d_in=d, d_out=d, hidden=hidden, chunk_size=chunk_size)
    return dict(forward=forward, loss=loss, args=(args, params), cost_fwd=fwd, cost_train=train)


def cases(a):
    """The benchmark cases of parsed flags ``a`` (see :func:`benchmarking.run`)."""
    shape = dict(b=a.batch, h=a.heads, d=a.d, hidden=a.hidden, dtype=a.dtype, chunk_size=a.chunk)
    for t in a.t:
        for impl in a.implementations:
            interpret = a.interpret and impl != "xla"
            for backward in [None] if impl == "xla" else a.backward:
                make = functools.partial(
                    _make,
                    implementation=impl,
                    interpret=interpret,
                    t=t,
                    block_sizes=None if backward is None else BlockSizes(backward=backward),
                    **{**shape, "dtype": jnp.dtype(a.dtype)},
                )
                yield dict(
                    op="mlp_memory",
                    variant=f"residual, hidden {a.hidden}",
                    tiling="" if backward is None else f"backward {backward}",
                    t=t,
                    implementation=impl,
                    interpret=interpret,
                    shape=shape,
                    make=make,
                )


def main(argv=None):
    p = benchmarking.parser(__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    a = benchmarking.finish_args(p.parse_args(argv), argv)
    benchmarking.report(benchmarking.run(cases(a), a), a.out)


if __name__ == "__main__":
    main()
