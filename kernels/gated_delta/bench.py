"""Benchmark of the gated delta op: forward and forward+backward time per implementation.

Run on a GPU (the planned measurement: T ∈ {2048, 8192}, d = 128, 8 heads, bf16):

    python -m nestlearn.kernels.gated_delta.bench --t 2048 8192 --d 128 --heads 8 \\
        --dtype bfloat16 --implementations xla pallas_triton

On CPU the Pallas backends only run interpreted (``--interpret``, tiny shapes; timings then
measure the interpreter, not the kernel).
"""

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from nestlearn.kernels import benchmarking
from nestlearn.kernels.gated_delta.api import gated_delta


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


def bench(*, implementation, b, t, h, d, dtype, chunk_size, momentum, interpret, repeats):
    """Seconds per call: (forward, forward + backward)."""
    args, mom = _inputs(jax.random.key(0), b, t, h, d, dtype, momentum)
    if interpret and implementation == "pallas_tpu":
        interpret = pltpu.InterpretParams()

    def forward(args, mom):
        return gated_delta(
            **args,
            momentum=mom,
            chunk_size=chunk_size,
            implementation=implementation,
            interpret=interpret,
        )

    def loss(args, mom):
        o, _ = forward(args, mom)
        return jnp.sum(o.astype(jnp.float32))

    fwd = benchmarking.seconds_per_call(jax.jit(forward), args, mom, repeats=repeats)
    bwd = benchmarking.seconds_per_call(jax.jit(jax.grad(loss)), args, mom, repeats=repeats)
    return fwd, bwd


def main(argv=None):
    p = benchmarking.parser(__doc__.splitlines()[0])
    p.add_argument("--momentum", action="store_true")
    a = p.parse_args(argv)
    benchmarking.report(
        a,
        bench,
        b=a.batch,
        h=a.heads,
        d=a.d,
        dtype=jnp.dtype(a.dtype),
        chunk_size=a.chunk,
        interpret=a.interpret,
        repeats=a.repeats,
        momentum=a.momentum,
    )


if __name__ == "__main__":
    main()
