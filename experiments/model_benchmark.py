"""Training throughput of every registered model: the train step a user runs, float32.

Purpose: check that each model trains at a usable speed on the CPU and compare the models' compute
cost. The step timed is the library's (`nestlearn.train.step.build_train_step` over the levels of
`nestlearn.train.config.base_config(model)`: AdamW, gradient clipping, the non-finite guard, the
level statistics, metrics fetched every step) plus the memory instruments' forward pass once per
`train.log_every` steps, as `train_and_evaluate` runs it (`benchmark`). For each model and shape it
reports steady-state training tokens/s (median over `--steps` timed steps after compilation, with
the instruments' share), parameters, FLOPs per token (`nestlearn.core.count_flops` on the step's
jaxpr, every scan iteration counted, the instruments' share added; XLA's cost analysis of the train
step, which counts a loop body once and so undercounts the chunk-scanned memories, is kept as
`xla_flops_per_token`), the achieved FLOP rate as a fraction of the machine's measured float32
matmul rate, memory (XLA's buffer sizes for the compiled step and the process's peak RSS), the
process CPU time per step (steadier than wall time on a shared machine; CPU time / wall time is the
parallelism the 2 cores reached) and the 1-minute load average when the model was timed. Each model
and shape runs in a fresh Python process, as a user training that one model would: measured in one
process after the nine other models, Transformer++ ran 22% slower (18,464 vs 23,699 tokens/s, idle
machine), and the peak RSS would be the largest so far rather than the model's own.

Every process first calls `nestlearn.tune_host_allocator()` (glibc keeps XLA's freed buffers
instead of returning them to the kernel; ~20 ms of page faults per Transformer++ step otherwise,
`nestlearn/core/host_memory.py`); `NESTLEARN_TUNE_MALLOC=0` measures glibc's defaults. The JSON
records the settings under "host_allocator".

Shapes: (a) small: d 128, 2 layers, 4 heads, vocab 256, T 256, batch 4;
        (b) medium: d 256, 4 layers, 4 heads, vocab 256, T 512, batch 4;
        `--long`: d 128, 2 layers, 4 heads, batch 1, T 1,024 / 4,096 / 16,384 (`LONG_SHAPES`),
        for Transformer++ (full causal attention) and the recurrent memories (`LONG_MODELS`).
Every row also gives its tokens/s and achieved FLOP rate as a ratio to the reference model
(`--reference`, Transformer++) at the same shape in the same run; the long sweep reports, per
model, the shortest length at which it trains at least as fast as the reference (the crossover).
A measurement that fails (e.g. out of memory at 16K) is recorded with its error, not fatal.

`--compare_options` times each model's train step compiled without and with the XLA:CPU flag that
`import nestlearn` sets (`nestlearn/core/xla_options.py`), the two in one process in interleaved
rounds (`compare_options`), and writes xla_options_benchmark(_long).json instead.

Command:
  .venv/bin/python experiments/model_benchmark.py [--models=transformer_pp,hope] [--quick]
  .venv/bin/python experiments/model_benchmark.py --long
  .venv/bin/python experiments/model_benchmark.py --compare_options [--long] [--models=...]
Writes docs/results/model_benchmark.json (`--long`: model_benchmark_long.json) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from nestlearn import models, tune_host_allocator
from nestlearn.core import count_flops, xla_options
from nestlearn.train import build_levels
from nestlearn.train.config import base_config
from nestlearn.train.instruments import build_instrument_step
from nestlearn.train.step import TrainState, build_train_step, split_model

SHAPES = {
    "small": dict(d_model=128, num_layers=2, num_heads=4, vocab_size=256, seq_len=256, batch=4),
    "medium": dict(d_model=256, num_layers=4, num_heads=4, vocab_size=256, seq_len=512, batch=4),
}
LONG_SHAPES = {
    f"long_{t // 1024}k": dict(
        d_model=128, num_layers=2, num_heads=4, vocab_size=256, seq_len=t, batch=1
    )
    for t in (1024, 4096, 16384)
}
LONG_MODELS = ("transformer_pp", "hope", "titans_lmm", "gated_deltanet")


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Measured float32 matmul rate of this machine (GFLOP/s, median of `repeats`)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


class Built(NamedTuple):
    config: Any
    params: Any
    train_step: Any
    instrument_step: Any
    state: TrainState
    rest: Any
    inputs: jax.Array
    targets: jax.Array


def build(name: str, shape: dict) -> Built:
    """The library's train step of `base_config(name)` at `shape` (see `benchmark`), its
    instrument step (None when the config turns the instruments off) and the step's arguments."""
    config = base_config(name)
    for key in ("d_model", "num_layers", "num_heads", "vocab_size"):
        config.model[key] = shape[key]
    config.model.head_dim = 0
    config.model.max_len = shape["seq_len"]
    model = models.build(config.model, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    levels = build_levels(config)
    train_step = build_train_step(
        levels, params=params, grad_clip=config.optim.grad_clip, graphdef=graphdef
    )
    instrument_step = build_instrument_step(graphdef) if config.train.instruments else None
    tokens = jax.random.randint(
        jax.random.key(1), (shape["batch"], shape["seq_len"] + 1), 0, shape["vocab_size"]
    )
    state = TrainState.create(params, levels, seed=0)
    return Built(
        config, params, train_step, instrument_step, state, rest, tokens[:, :-1], tokens[:, 1:]
    )


def benchmark(name: str, shape: dict, steps: int) -> dict:
    """Times the library's train step of model `name` at `shape`, instruments on.

    The step is the one `nestlearn.train.train_and_evaluate` runs for `base_config(name)` at this
    shape: `build_train_step` over the config's levels (AdamW backbone, plus one level per CMS
    level at its period), with the non-finite guard, gradient clipping and the level statistics,
    its metrics fetched to the host every step; and, as the train loop does every
    `train.log_every` steps, one call of the memory instruments' forward pass
    (`build_instrument_step`). The per-step time is the median train step plus the median
    instrument call divided by `train.log_every` (`instrument_ms` records the latter alone).
    """
    config, params, train_step, instrument_step, state, rest, inputs, targets = build(name, shape)

    counted = count_flops(train_step, state, rest, inputs, targets)
    log_every = config.train.log_every
    start = time.perf_counter()
    compiled = train_step.lower(state, rest, inputs, targets).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    flops, matmul_flops = counted.flops, counted.matmul_flops
    mem = compiled.memory_analysis()
    xla_mb = float("nan")
    if mem is not None:
        total = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        )
        xla_mb = total / 2**20
    for _ in range(2):  # warm-up
        state, metrics = compiled(state, rest, inputs, targets)
        jax.device_get(metrics)
    times, cpu_times = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        state, metrics = compiled(state, rest, inputs, targets)
        jax.device_get(metrics)  # the train loop fetches the metrics every step
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    instrument_s = instrument_cpu_s = 0.0
    if instrument_step is not None and jax.device_get(instrument_step(state.params, rest, inputs)):
        calls = []
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            jax.device_get(instrument_step(state.params, rest, inputs))
            calls.append((time.perf_counter() - t0, time.process_time() - c0))
        instrument_s = statistics.median(w for w, _ in calls)
        instrument_cpu_s = statistics.median(c for _, c in calls)
        extra = count_flops(instrument_step, state.params, rest, inputs)
        flops += extra.flops / log_every
        matmul_flops += extra.matmul_flops / log_every
    step_s = statistics.median(times) + instrument_s / log_every
    cpu_s = statistics.median(cpu_times) + instrument_cpu_s / log_every
    n_tokens = shape["batch"] * shape["seq_len"]
    return {
        "model": name,
        "params": models.count_params(params),
        "tokens_per_s": n_tokens / step_s,
        "step_ms": 1e3 * step_s,
        "cpu_ms": 1e3 * cpu_s,
        "instrument_ms": 1e3 * instrument_s,
        "log_every": log_every,
        "load_avg_1min": os.getloadavg()[0],
        "flops_per_token": flops / n_tokens,
        "matmul_flops_per_token": matmul_flops / n_tokens,
        "xla_flops_per_token": xla_flops / n_tokens,
        "while_loops_counted_once": counted.while_loops,
        "achieved_gflops": flops / step_s / 1e9,
        "xla_memory_mb": xla_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "compile_s": compile_s,
        "final_loss": float(metrics["loss"]),
    }


def compare_options(name: str, shape: dict, rounds: int) -> dict:
    """Tokens/s of the train step compiled without and with nestlearn's XLA:CPU flag.

    Runs in a process started with `NESTLEARN_XLA_CPU_OPTIONS=0` (`run_isolated`), so the step
    lowered once compiles with XLA's defaults ("without") and, as a second executable, with
    `xla_options.CPU_COMPILE_OPTIONS` ("with", the flag's setting for one compilation). Both are
    timed in `rounds` interleaved rounds (one step of each per round, metrics fetched), so a
    burst of load hits both; the medians are reported. The instruments are left out.
    """
    if os.environ.get(xla_options.ENV) != "0":
        raise RuntimeError(f"compare_options needs {xla_options.ENV}=0 (run_isolated sets it)")
    built = build(name, shape)
    batch = (built.rest, built.inputs, built.targets)
    lowered = built.train_step.lower(built.state, *batch)
    copy = jax.tree.map(jnp.copy, built.state)  # each executable donates its own state
    runs = {
        "without": [lowered.compile(), built.state],
        "with": [lowered.compile(xla_options.CPU_COMPILE_OPTIONS), copy],
    }
    times = {label: [] for label in runs}
    for i in range(rounds + 2):  # two warm-up rounds
        for label, run in runs.items():
            start = time.perf_counter()
            run[1], metrics = run[0](run[1], *batch)
            jax.device_get(metrics)
            if i >= 2:
                times[label].append(time.perf_counter() - start)
    n_tokens = shape["batch"] * shape["seq_len"]
    row = {"model": name, "rounds": rounds, "load_avg_1min": os.getloadavg()[0]}
    for label, t in times.items():
        row[f"{label}_tokens_per_s"] = n_tokens / statistics.median(t)
    row["speedup"] = row["with_tokens_per_s"] / row["without_tokens_per_s"]
    return row


def run_isolated(name: str, shape_name: str, steps: int, compare: bool = False) -> dict:
    """`benchmark` of one model and shape in a fresh Python process (module docstring); a
    failed process gives a row with its `error` (the last line of its stderr)."""
    command = [sys.executable, __file__, "--one", name, shape_name, "--steps", str(steps)]
    env = None
    if compare:  # XLA's defaults in the process (compare_options)
        command.append("--compare_options")
        flags = os.environ.get("XLA_FLAGS", "")
        for flag in xla_options.CPU_FLAGS:
            flags = flags.replace(flag, "")
        env = {**os.environ, xla_options.ENV: "0", "XLA_FLAGS": flags.strip()}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        return {"model": name, "error": lines[-1][-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_ratios(results: list[dict], reference: str) -> None:
    """`vs_reference` (tokens/s) and `flops_vs_reference` (achieved FLOP rate): each row over
    the reference model's row at the same shape, measured in the same run."""
    ref = {r["shape"]: r for r in results if r["model"] == reference and "error" not in r}
    for r in results:
        base = ref.get(r["shape"])
        if base is not None and "error" not in r:
            r["vs_reference"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["flops_vs_reference"] = r["achieved_gflops"] / base["achieved_gflops"]


def crossover(results: list[dict], reference: str, shapes: dict) -> dict[str, int | None]:
    """model -> the shortest sequence length at which it is at least as fast as `reference`."""
    out = {}
    for name in sorted({r["model"] for r in results} - {reference}):
        rows = sorted(
            (r for r in results if r["model"] == name and "vs_reference" in r),
            key=lambda r: shapes[r["shape"]]["seq_len"],
        )
        fast = [shapes[r["shape"]]["seq_len"] for r in rows if r["vs_reference"] >= 1.0]
        out[name] = fast[0] if fast else None
    return out


def report_options(names: list[str], shapes: list[str], rounds: int, out: str, allocator) -> None:
    """`compare_options` for every model and shape (each in a fresh process): table and JSON."""
    print(f"cores: {os.cpu_count()}; load avg: {os.getloadavg()[0]:.1f}; {rounds} rounds")
    print("| shape | model | tokens/s without | tokens/s with | with / without | load |")
    print("|---|---|---|---|---|---|")
    rows = []
    for shape_name in shapes:
        for name in names:
            row = run_isolated(name, shape_name, rounds, compare=True)
            row["shape"] = shape_name
            rows.append(row)
            if "error" in row:
                print(f"| {shape_name} | {name} | failed: {row['error']} | | | |", flush=True)
                continue
            print(
                f"| {shape_name} | {name} | {row['without_tokens_per_s']:,.0f} | "
                f"{row['with_tokens_per_s']:,.0f} | {row['speedup']:.2f} | "
                f"{row['load_avg_1min']:.1f} |",
                flush=True,
            )
    meta = {"flags": xla_options.CPU_FLAGS, "machine": platform.platform()}
    meta.update(cpu_count=os.cpu_count(), jax=jax.__version__, host_allocator=allocator)
    with open(out, "w") as f:
        json.dump({**meta, "results": rows}, f, indent=2)
    print(f"\nwrote {out}")


def main() -> None:
    allocator = tune_host_allocator()  # first: the parent and each --one child
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default=",".join(models.available()),
        help="comma-separated model names (default: all registered)",
    )
    parser.add_argument("--quick", action="store_true", help="small shape only, 5 timed steps")
    parser.add_argument(
        "--long", action="store_true", help="batch 1 at T 1K/4K/16K for LONG_MODELS"
    )
    parser.add_argument("--reference", default="transformer_pp", help="model of the ratios")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and shape")
    parser.add_argument("--out", default="docs/results/model_benchmark.json")
    parser.add_argument(
        "--compare_options",
        action="store_true",
        help="time each step without and with nestlearn's XLA:CPU flag (compare_options)",
    )
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    all_shapes = {**SHAPES, **LONG_SHAPES}
    if args.one:  # the child process of one measurement: print its row as JSON
        name, shape_name = args.one
        measure = compare_options if args.compare_options else benchmark
        print(json.dumps(measure(name, all_shapes[shape_name], args.steps)))
        return
    names = [n for n in args.models.split(",") if n]
    if args.long and args.models == parser.get_default("models"):
        names = list(LONG_MODELS)
    unknown = sorted(set(names) - set(models.available()))
    if unknown:
        parser.error(f"--models: unknown {unknown}; available: {models.available()}")
    shapes = ["small"] if args.quick else list(LONG_SHAPES if args.long else SHAPES)
    steps = 5 if args.quick else args.steps
    if args.long and args.out == parser.get_default("out"):
        args.out = "docs/results/model_benchmark_long.json"
    if args.compare_options:
        if args.out.startswith("docs/results/model_benchmark"):
            args.out = args.out.replace("model_benchmark", "xla_options_benchmark")
        return report_options(names, shapes, steps, args.out, allocator)
    rate = matmul_gflops()
    print(
        f"float32 matmul (1024^3): {rate:.1f} GFLOP/s; cores: {os.cpu_count()}; "
        f"load avg: {os.getloadavg()[0]:.1f}"
    )
    results = []
    for shape_name in shapes:
        for name in names:
            row = run_isolated(name, shape_name, steps)
            row["shape"] = shape_name
            results.append(row)
            if "error" in row:
                print(f"  {shape_name} {name}: failed: {row['error']}", flush=True)
                continue
            row["matmul_fraction"] = row["achieved_gflops"] / rate
            print(
                f"  {shape_name} {name}: {row['tokens_per_s']:.0f} tokens/s "
                f"(CPU {row['cpu_ms']:.1f} ms/step, load {row['load_avg_1min']:.1f})",
                flush=True,
            )
    add_ratios(results, args.reference)
    header = (
        "| shape | model | params | tokens/s | × ref | step ms | CPU ms | GFLOP/token "
        "| GFLOP/s (of matmul) | × ref FLOP/s | XLA MiB | peak RSS MiB | load |"
    )
    print(f"\nref = {args.reference} at the same shape, this run\n" + header + "\n|" + "---|" * 13)
    for r in results:
        if "error" in r:
            print(f"| {r['shape']} | {r['model']} | failed: {r['error']} |" + " |" * 10)
            continue
        ratio = lambda key, r=r: f"{r[key]:.2f}" if key in r else "—"
        print(
            f"| {r['shape']} | {r['model']} | {r['params']:,} | {r['tokens_per_s']:,.0f} | "
            f"{ratio('vs_reference')} | {r['step_ms']:.1f} | {r['cpu_ms']:.1f} | "
            f"{r['flops_per_token'] / 1e9:.4f} | "
            f"{r['achieved_gflops']:.1f} ({100 * r['matmul_fraction']:.0f}%) | "
            f"{ratio('flops_vs_reference')} | "
            f"{r['xla_memory_mb']:.1f} | {r['peak_rss_mb']:.0f} | {r['load_avg_1min']:.1f} |"
        )
    lengths = crossover(results, args.reference, all_shapes) if args.long else {}
    for name, t in lengths.items():
        print(f"crossover {name}: " + (f"T = {t}" if t else "not within the measured lengths"))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "matmul_gflops": rate,
                "shapes": {s: all_shapes[s] for s in shapes},
                "reference": args.reference,
                "crossover": lengths,
                "machine": platform.platform(),
                "cpu_count": os.cpu_count(),
                "load_avg_1min": os.getloadavg()[0],
                "jax": jax.__version__,
                "host_allocator": allocator,
                "results": results,
            },
            f,
            indent=2,
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
