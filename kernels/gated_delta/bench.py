"""Benchmark of the gated delta op: forward and forward+backward time per implementation.

Run on a GPU (the planned measurement: T ∈ {2048, 8192}, d = 128, 8 heads, bf16):

    python -m nestlearn.kernels.gated_delta.bench --t 2048 8192 --d 128 --heads 8 \\
        --dtype bfloat16 --implementations xla pallas_triton

On CPU the Pallas backends only run interpreted (``--interpret``, tiny shapes; timings then
measure the interpreter, not the kernel).
"""

import argparse
import time

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
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


def _time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / repeats


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

    fwd = _time(jax.jit(forward), args, mom, repeats=repeats)
    bwd = _time(jax.jit(jax.grad(loss)), args, mom, repeats=repeats)
    return fwd, bwd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--momentum", action="store_true")
    parser.add_argument("--interpret", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--implementations", nargs="+", default=["xla", "pallas_triton"])
    a = parser.parse_args(argv)
    print(
        f"device: {jax.devices()[0].device_kind}; d={a.d} heads={a.heads} batch={a.batch} "
        f"chunk={a.chunk} dtype={a.dtype} momentum={a.momentum} interpret={a.interpret}"
    )
    for t in a.t:
        for impl in a.implementations:
            fwd, bwd = bench(
                implementation=impl,
                b=a.batch,
                t=t,
                h=a.heads,
                d=a.d,
                dtype=jnp.dtype(a.dtype),
                chunk_size=a.chunk,
                momentum=a.momentum,
                interpret=a.interpret,
                repeats=a.repeats,
            )
            print(f"T={t:6d} {impl:14s} fwd {fwd * 1e3:9.2f} ms   fwd+bwd {bwd * 1e3:9.2f} ms")


if __name__ == "__main__":
    main()
