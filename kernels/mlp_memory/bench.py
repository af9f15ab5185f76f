"""Benchmark of the MLP-memory op: forward and forward+backward time per implementation.

    python -m nestlearn.kernels.mlp_memory.bench --t 2048 8192 --d 128 --hidden 256 --heads 8 \\
        --dtype bfloat16 --implementations xla pallas_triton

On CPU the Pallas backends only run interpreted (``--interpret``, tiny shapes).
"""

import argparse
import time

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from nestlearn.kernels.mlp_memory.api import mlp_memory


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


def _time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / repeats


def bench(*, implementation, b, t, h, d, hidden, dtype, chunk_size, interpret, repeats):
    """Seconds per call: (forward, forward + backward)."""
    args, params = _inputs(jax.random.key(0), b, t, h, d, hidden, dtype)
    if interpret and implementation == "pallas_tpu":
        interpret = pltpu.InterpretParams()

    def forward(args, params):
        return mlp_memory(
            **args,
            params=params,
            chunk_size=chunk_size,
            residual=True,
            implementation=implementation,
            interpret=interpret,
        )

    def loss(args, params):
        o, _ = forward(args, params)
        return jnp.sum(o.astype(jnp.float32))

    fwd = _time(jax.jit(forward), args, params, repeats=repeats)
    bwd = _time(jax.jit(jax.grad(loss, argnums=(0, 1))), args, params, repeats=repeats)
    return fwd, bwd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--interpret", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--implementations", nargs="+", default=["xla", "pallas_triton"])
    a = parser.parse_args(argv)
    print(
        f"device: {jax.devices()[0].device_kind}; d={a.d} hidden={a.hidden} heads={a.heads} "
        f"batch={a.batch} chunk={a.chunk} dtype={a.dtype} interpret={a.interpret}"
    )
    for t in a.t:
        for impl in a.implementations:
            fwd, bwd = bench(
                implementation=impl,
                b=a.batch,
                t=t,
                h=a.heads,
                d=a.d,
                hidden=a.hidden,
                dtype=jnp.dtype(a.dtype),
                chunk_size=a.chunk,
                interpret=a.interpret,
                repeats=a.repeats,
            )
            print(f"T={t:6d} {impl:14s} fwd {fwd * 1e3:9.2f} ms   fwd+bwd {bwd * 1e3:9.2f} ms")


if __name__ == "__main__":
    main()
