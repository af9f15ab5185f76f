"""Forward+backward time of the gated delta rule: chunk-parallel vs token-recurrent.

Times ``jax.grad`` of a scalar loss of ``gated_delta_rule`` (chunk-parallel WY/UT form) and of
``gated_delta_rule_recurrent`` (token ``lax.scan``) with respect to q, k, v, α and β, jitted, after
compilation, float32, b=1, h=4, d_k=d_v=64. Prints a markdown table and writes JSON to
``docs/results/memory_matrix.json``.

Expected: the chunk form is ≥ 10× faster than the recurrence at T = 1024 on the 2-core CPU machine.

Command: ``.venv/bin/python experiments/bench_matrix_memory.py`` (about a minute on CPU).
"""

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from nestlearn.memory.matrix_memory import gated_delta_rule, gated_delta_rule_recurrent


def _inputs(key, t, heads, dim):
    kq, kk, kv, ka, kb = jax.random.split(key, 5)
    shape = (1, t, heads, dim)
    k = jax.random.normal(kk, shape)
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    return (
        jax.random.normal(kq, shape) / np.sqrt(dim),
        k,
        jax.random.normal(kv, shape),
        jax.random.uniform(ka, shape[:3], minval=0.9, maxval=1.0),
        jax.random.uniform(kb, shape[:3]),
    )


def _grad_fn(fn):
    def loss(q, k, v, alpha, beta):
        o, s = fn(q, k, v, alpha, beta)
        return jnp.sum(o**2) + jnp.sum(s**2)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def _time(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.min(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="docs/results/memory_matrix.json")
    args = parser.parse_args()

    chunked = _grad_fn(
        lambda q, k, v, a, b: gated_delta_rule(q, k, v, a, b, chunk_size=args.chunk_size)
    )
    recurrent = _grad_fn(gated_delta_rule_recurrent)
    rows = []
    for t in args.lengths:
        inputs = _inputs(jax.random.key(t), t, args.heads, args.dim)
        t_chunk = _time(chunked, inputs, args.repeats)
        t_rec = _time(recurrent, inputs, args.repeats)
        rows.append(
            {
                "T": t,
                "chunk_ms": 1e3 * t_chunk,
                "recurrent_ms": 1e3 * t_rec,
                "speedup": t_rec / t_chunk,
            }
        )

    print(
        f"gated_delta_rule fwd+bwd, float32, b=1, h={args.heads}, d={args.dim}, "
        f"chunk={args.chunk_size}, device={jax.devices()[0].device_kind}, min of "
        f"{args.repeats}\n"
    )
    print("| T | chunk-parallel (ms) | recurrent (ms) | speedup |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['T']} | {r['chunk_ms']:.2f} | {r['recurrent_ms']:.2f} | {r['speedup']:.1f}× |")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "gated_delta_rule forward+backward",
        "dtype": "float32",
        "batch": 1,
        "heads": args.heads,
        "dim": args.dim,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "statistic": "min over repeats, ms",
        "device": jax.devices()[0].device_kind,
        "machine": platform.machine(),
        "jax": jax.__version__,
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
