"""Where Hope's self-modifying layer spends its time on this machine.

Times forward and forward + backward (gradient of Σ sin(o) w.r.t. the parameters and inputs) of
``nestlearn.memory.self_modifying_memory`` with the ``hope`` model's write rule
(``nestlearn.models.hope.HOPE_WRITES``) at the small benchmark shape of one layer (d 128 as 4
heads of 32, T 256, batch 4, output-memory chunk 64), against variants that each change one part:

* ``static k, v``: k and v from linear maps, not self-modifying memories (2 of the 4 generator
  memories gone);
* ``chunk_normalized``: the chunk-normalised step instead of the token-normalised one (no
  triangular solve for W₁);
* ``generator chunk 16 / 64``: the generators' chunk (32 in the model);
* ``writes off``: no in-context write at all (reads only).

Forms are timed in interleaved rounds (one call of each per round, best of ``--repeats``), so a
burst of load hits all of them. Then, with ``--trace``, a ``jax.profiler`` trace of the default's
forward + backward lists the XLA ops that take the most time, each with the JAX operation it
comes from.

    python experiments/hope_layer_profile.py [--repeats 20] [--trace] [--out FILE.json]
        [--batch 4] [--seq_len 256]

Prints a markdown table (ms and the ratio to the default) and writes the JSON (with the machine
load) when ``--out`` is given.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import tempfile
import time

import jax
import jax.numpy as jnp

from nestlearn import tune_host_allocator
from nestlearn.memory import self_modifying as sm
from nestlearn.models.hope import HOPE_WRITES

SHAPE = dict(b=4, t=256, h=4, d=32)
VARIANTS = {
    "hope write rule": {},
    "static k, v": {"adaptive_k": False, "adaptive_v": False},
    "chunk_normalized": {"dgd_step": "chunk_normalized"},
    "generator chunk 16": {"chunk_size": 16},
    "generator chunk 64": {"chunk_size": 64},
    "writes off": {"writes": False},
}


def build(options: dict):
    """Jitted forward and forward+backward of one layer with ``options`` over HOPE_WRITES."""
    config = sm.SelfModifyingConfig(memory_chunk_size=64, **{**HOPE_WRITES, **options})
    b, t, h, d = SHAPE.values()
    params = sm.self_modifying_init(jax.random.key(0), heads=h, dim=d, config=config)
    kx, kq = jax.random.split(jax.random.key(1))
    x = d**-0.5 * jax.random.normal(kx, (b, t, h, d))
    q = jax.random.normal(kq, (b, t, h, d))
    forward = lambda p, x, q: sm.self_modifying_memory(x, q, params=p, config=config)[0]
    loss = lambda p, x, q: jnp.sum(jnp.sin(forward(p, x, q)))
    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1, 2))), (params, x, q)


def time_rounds(fns: dict, repeats: int) -> dict:
    """name -> best seconds over ``repeats`` interleaved rounds (after one compiling call each)."""
    for fn, args in fns.values():
        jax.block_until_ready(fn(*args))
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, (fn, args) in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def top_ops(fn, args, count: int = 15) -> list[dict]:
    """The XLA ops of ``fn`` that take the most time in a profiler trace of 5 calls."""
    hlo = fn.lower(*args).compile().as_text()
    source = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
        if m:
            source.setdefault(m.group(1), m.group(2))
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(5):
                jax.block_until_ready(fn(*args))
        path = sorted(glob.glob(f"{tmp}/**/perfetto_trace.json.gz", recursive=True))[-1]
        events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and "dur" in e and name in source:
            total[name] += e["dur"]
            calls[name] += 1
    return [
        {"op": n, "ms_per_call": us / 5 / 1e3, "count": calls[n] // 5, "from": source[n]}
        for n, us in total.most_common(count)
    ]


def main():
    tune_host_allocator()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--trace", action="store_true", help="list the costliest XLA ops")
    parser.add_argument("--out", default=None)
    parser.add_argument("--batch", type=int, default=SHAPE["b"])
    parser.add_argument("--seq_len", type=int, default=SHAPE["t"])
    args = parser.parse_args()
    SHAPE.update(b=args.batch, t=args.seq_len)
    built = {name: build(options) for name, options in VARIANTS.items()}
    fwd = time_rounds({n: (f, a) for n, (f, _, a) in built.items()}, args.repeats)
    train = time_rounds({n: (g, a) for n, (_, g, a) in built.items()}, args.repeats)
    load = os.getloadavg()[0]
    ref_f, ref_t = fwd["hope write rule"], train["hope write rule"]
    rows = [{"variant": n, "fwd_ms": 1e3 * fwd[n], "fwd_bwd_ms": 1e3 * train[n]} for n in VARIANTS]
    print(f"one layer, {SHAPE}, best of {args.repeats} interleaved rounds, load {load:.1f}\n")
    print("| variant | fwd ms | × default | fwd+bwd ms | × default |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['fwd_ms']:.1f} | {r['fwd_ms'] / 1e3 / ref_f:.2f} | "
            f"{r['fwd_bwd_ms']:.1f} | {r['fwd_bwd_ms'] / 1e3 / ref_t:.2f} |"
        )
    ops = []
    if args.trace:
        _, grad, call_args = built["hope write rule"]
        ops = top_ops(grad, call_args)
        print("\n| XLA op | ms per call | count | from |\n|---|---|---|---|")
        for o in ops:
            print(f"| {o['op']} | {o['ms_per_call']:.2f} | {o['count']} | `{o['from'][-80:]}` |")
    if args.out:
        meta = {"shape": SHAPE, "repeats": args.repeats, "load_1min": load}
        meta["devices"] = [d.device_kind for d in jax.devices()]
        doc = {"meta": meta, "rows": rows, "top_ops": ops}
        pathlib.Path(args.out).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
