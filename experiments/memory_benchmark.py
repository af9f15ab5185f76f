"""Chunk-parallel vs recurrent memory layers: forward + backward time.

For each memory and sequence length T, times one jitted forward + backward pass (gradient of
sum(o²) with respect to the inputs and the initial weights) of the chunk-parallel form against the
token-by-token recurrence, at d = 64 per head, 4 heads, batch 1, float32:

(a) the matrix gated delta rule (GDN Eq. 10): ``matrix_memory.gated_delta_rule`` (WY chunk form,
    chunk 32 and 64, default ``remat=True``) vs ``gated_delta_rule_recurrent``;
(b) Titans' MLP memory (2 layers, hidden 64, SiLU, Titans Eqs. 13–18): ``titans_memory`` with
    chunk 16 and 64 (on CPU the XLA chunk step of ``nestlearn.kernels.mlp_memory``, which covers
    this configuration) and the generic ``nestlearn.memory.scan`` at chunk 64, vs the generic scan
    at chunk 1 (token by token; measured on the 2-core CPU it was a little faster than the op's
    chunk step at chunk 1, so it is the stricter reference). All with ``remat=True``;
(c) the self-modifying memory (Hope Eqs. 83–93): ``self_modifying_memory`` with chunk sizes
    16/64 and 32/64 (k, v, η, α memories / output memory; 32 is the generator chunk of the
    ``hope`` model) vs ``self_modifying_memory_recurrent``.

A recurrent run at T = 4096 whose estimate (4 × its T = 1024 time) exceeds 60 s is skipped and
marked in the table. After one compile-and-run of each, the forms of a memory at one T are timed
in interleaved rounds (one timed call of each form per round, after an untimed one for calls
under 1 s; ``--repeats`` rounds, fewer once 30 s have been spent), so that a burst of load on the
shared machine hits all of them; the table gives the best round of each form as wall time and
as process CPU time (``time.process_time``), and the JSON also the median. Speedups are given for
both.

    python experiments/memory_benchmark.py [--quick] [--memories=gated,titans]
        [--out docs/results/memory_benchmark.json]

The process first calls ``nestlearn.tune_host_allocator()`` (``NESTLEARN_TUNE_MALLOC=0`` for
glibc's defaults; recorded in the JSON meta). ``--quick`` runs T ∈ {256, 1024} with one repeat.
Prints a markdown table and writes the JSON.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from nestlearn import tune_host_allocator
from nestlearn.memory import architectures, objectives, rules
from nestlearn.memory.scan import scan
from nestlearn.memory.titans import titans_memory

D, HEADS, BATCH = 64, 4, 1
SKIP_SECONDS = 60.0
ROUND_SECONDS = 30.0
WARM_SECONDS = 1.0


def _inputs(t, key):
    ks = jax.random.split(key, 7)
    shape = (BATCH, t, HEADS, D)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    gate = lambda k, bias: jax.nn.sigmoid(jax.random.normal(k, shape[:3]) + bias)
    return {
        "q": unit(jax.random.normal(ks[0], shape)),
        "k": unit(jax.random.normal(ks[1], shape)),
        "v": jax.random.normal(ks[2], shape),
        "x": jax.random.normal(ks[3], shape),
        "a": gate(ks[4], 3.0),  # near 1: retention / small forget gate
        "b": gate(ks[5], -1.0),  # step sizes
        "c": gate(ks[6], 0.0),  # momentum decay
    }


def gated_delta(chunk):
    from nestlearn.memory import matrix_memory

    def layer(params, x):
        del params
        if chunk:
            o, _ = matrix_memory.gated_delta_rule(
                x["q"], x["k"], x["v"], x["a"], x["b"], chunk_size=chunk
            )
        else:
            o, _ = matrix_memory.gated_delta_rule_recurrent(x["q"], x["k"], x["v"], x["a"], x["b"])
        return o

    return layer, {}


def titans(chunk, generic=False):
    """``titans_memory`` (on CPU: the MLP op's XLA chunk step), or with ``generic`` the generic
    ``scan`` with ``rules.titans()`` (one pullback per coefficient row), both ``remat=True``."""
    arch = architectures.mlp(2, D)
    params = arch.init(jax.random.key(0), heads=HEADS, d_in=D, d_out=D)

    def layer(params, x):
        if generic:
            inputs = {"q": x["q"], "k": x["k"], "v": x["v"], "step_size": 0.1 * x["b"]}
            inputs.update(retention=1 - x["a"], momentum_decay=x["c"])
            o, _ = scan(
                arch, objectives.l2(), rules.titans(), params, inputs, chunk_size=chunk, remat=True
            )
            return o
        o, _ = titans_memory(
            x["q"], x["k"], x["v"], 0.1 * x["b"], 1 - x["a"], x["c"],
            arch=arch, params=params, chunk_size=chunk,
        )  # fmt: skip
        return o

    return layer, params


def self_modifying(chunks):
    """``chunks`` = (generator chunk, output-memory chunk), or None for the recurrence."""
    from nestlearn.memory import self_modifying as sm

    chunk_size, memory_chunk_size = chunks or (1, 1)  # the recurrence ignores them
    config = sm.SelfModifyingConfig(chunk_size=chunk_size, memory_chunk_size=memory_chunk_size)
    params = sm.self_modifying_init(jax.random.key(0), heads=HEADS, dim=D, config=config)
    fn = sm.self_modifying_memory if chunks else sm.self_modifying_memory_recurrent

    def layer(params, x):
        o, _ = fn(x["x"], x["q"], params=params, config=config)
        return o

    return layer, params


def _available(module):
    try:
        __import__(f"nestlearn.memory.{module}")
    except ImportError:
        return False
    return True


def cases():
    """(memory, form, builder) triples; forms named 'recurrent' are the references."""
    out = []
    if _available("matrix_memory"):
        out += [
            ("gated delta (matrix)", "chunk 32 (WY)", lambda: gated_delta(32)),
            ("gated delta (matrix)", "chunk 64 (WY)", lambda: gated_delta(64)),
            ("gated delta (matrix)", "recurrent", lambda: gated_delta(None)),
        ]
    out += [
        ("Titans MLP memory", "chunk 16", lambda: titans(16)),
        ("Titans MLP memory", "chunk 64", lambda: titans(64)),
        ("Titans MLP memory", "chunk 64, generic scan", lambda: titans(64, generic=True)),
        ("Titans MLP memory", "recurrent", lambda: titans(1, generic=True)),
    ]
    if _available("self_modifying"):
        out += [
            ("self-modifying memory", "chunk 16/64", lambda: self_modifying((16, 64))),
            ("self-modifying memory", "chunk 32/64", lambda: self_modifying((32, 64))),
            ("self-modifying memory", "recurrent", lambda: self_modifying(None)),
        ]
    return out


def compile_fwd_bwd(layer, params, x):
    """The jitted forward + backward pass (gradient of sum(o²)) and its compile-and-run seconds."""
    loss = lambda params, x: jnp.sum(layer(params, x) ** 2)
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    start = time.perf_counter()
    jax.block_until_ready(step(params, x))
    return step, time.perf_counter() - start


def time_interleaved(steps, repeats, budget=ROUND_SECONDS):
    """Times ``steps`` (name -> (step, params, x)) in interleaved rounds, one call each per round.

    Interleaving puts every form of a comparison under the same machine conditions: on the shared
    2-core machine a burst of load lasts longer than the repeats of one form. Each timed call of a
    form shorter than ``WARM_SECONDS`` follows an untimed call of the same form, so that it does not
    pay for the caches the other forms evicted. Rounds stop after ``repeats`` or once ``budget``
    seconds have been spent (at least one round).

    Returns:
      name -> (best wall, best CPU, median wall) seconds.
    """
    if not steps:
        return {}
    walls = {name: [] for name in steps}
    cpus = {name: [] for name in steps}
    spent = 0.0
    while min(map(len, walls.values())) < repeats:
        for name, (step, params, x) in steps.items():
            if not walls[name] or walls[name][-1] < WARM_SECONDS:
                jax.block_until_ready(step(params, x))  # untimed: the form's data back in cache
            start, cpu_start = time.perf_counter(), time.process_time()
            jax.block_until_ready(step(params, x))
            walls[name].append(time.perf_counter() - start)
            cpus[name].append(time.process_time() - cpu_start)
            spent += walls[name][-1]
        if spent > budget:
            break
    return {n: (min(walls[n]), min(cpus[n]), statistics.median(walls[n])) for n in steps}


def main():
    allocator = tune_host_allocator()  # first, before any XLA buffer
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T in {256, 1024}, one repeat")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="docs/results/memory_benchmark.json")
    parser.add_argument(
        "--memories",
        default="",
        help="comma-separated substrings of the memory names to run (default: all), e.g. titans",
    )
    args = parser.parse_args()
    wanted = [m.strip().lower() for m in args.memories.split(",") if m.strip()]
    lengths = (256, 1024) if args.quick else (256, 1024, 4096)
    repeats = 1 if args.quick else args.repeats

    rows = []
    seconds = {}  # (memory, form, T) -> best wall seconds
    cpu_seconds = {}  # (memory, form, T) -> best CPU seconds
    by_memory = {}
    for memory, form, build in cases():
        if not wanted or any(w in memory.lower() for w in wanted):
            by_memory.setdefault(memory, []).append((form, build))
    for memory, forms in by_memory.items():
        layers = {form: build() for form, build in forms}
        for t in lengths:
            x = _inputs(t, jax.random.key(t))
            steps, skipped, first = {}, {}, {}
            for form, (layer, params) in layers.items():
                previous = seconds.get((memory, form, t // 4))
                if form == "recurrent" and previous is not None and 4 * previous > SKIP_SECONDS:
                    skipped[form] = f"estimated {4 * previous:.0f} s > {SKIP_SECONDS:.0f} s"
                    continue
                step, first[form] = compile_fwd_bwd(layer, params, x)
                steps[form] = (step, params, x)
            timed = time_interleaved(steps, repeats)
            load = os.getloadavg()[0]  # machine load right after the timing
            for form in layers:
                row = {"memory": memory, "form": form, "T": t, "seconds": None}
                row["skipped"] = skipped.get(form)
                if form in timed:
                    wall, cpu, median = timed[form]
                    row.update(seconds=wall, cpu_seconds=cpu, median_seconds=median)
                    row.update(compile_and_run=first[form], load_1min=load)
                    seconds[(memory, form, t)] = wall
                    cpu_seconds[(memory, form, t)] = cpu
                rows.append(row)
                print(
                    f"{memory:24s} {form:22s} T={t:5d} {row['seconds'] or row['skipped']} "
                    f"load {row.get('load_1min', '—')}",
                    flush=True,
                )

    for row in rows:
        key = (row["memory"], "recurrent", row["T"])
        if row["form"] != "recurrent" and key in seconds and row["seconds"]:
            row["speedup_vs_recurrent"] = seconds[key] / row["seconds"]
            row["cpu_speedup_vs_recurrent"] = cpu_seconds[key] / row["cpu_seconds"]

    fmt = lambda x, unit: f"{x:.1f}{unit}" if x else "—"
    print("\n| memory | form | T | wall (ms) | CPU (ms) | speedup, wall | speedup, CPU | load |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["seconds"]:
            times = f"{1e3 * row['seconds']:.1f} | {1e3 * row['cpu_seconds']:.1f}"
        else:
            times = f"skipped ({row['skipped']}) | —"
        speedups = " | ".join(
            fmt(row.get(k), "×") for k in ("speedup_vs_recurrent", "cpu_speedup_vs_recurrent")
        )
        load = f"{row['load_1min']:.1f}" if "load_1min" in row else "—"
        print(f"| {row['memory']} | {row['form']} | {row['T']} | {times} | {speedups} | {load} |")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "d": D,
        "heads": HEADS,
        "batch": BATCH,
        "dtype": "float32",
        "quick": args.quick,
        "repeats": repeats,
        "device": str(jax.devices()[0]),
        "machine": platform.processor() or platform.machine(),
        "command": "python experiments/memory_benchmark.py"
        + (" --quick" if args.quick else "")
        + (f" --memories={args.memories}" if args.memories else ""),
        "load_1min_at_end": os.getloadavg()[0],
        "host_allocator": allocator,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
