"""Shared pieces of the op benchmarks: flags, device ceilings, timing, the table and the JSON.

Each op's ``bench.py`` supplies a ``cost`` function (FLOPs and bytes counted analytically for its
chunked algorithm; the formulas are in its docstring) and a ``cases`` function; this module times
forward and forward+backward per implementation and reports achieved TFLOP/s and GB/s against the
ceilings measured on the same device at the start of the run:

* matmul ceiling: a square bf16 matmul, 2n³ FLOPs per call (n = 8192; 256 with ``--quick``);
* copy ceiling: ``x + 1`` over a float32 array, 2·size bytes per call (read + write; 1 GiB,
  16 MiB with ``--quick``).

Timings are the median of ``--repeats`` calls after one compiling call. ``--quick`` is a CPU smoke
mode (tiny shapes, float32, the Triton kernel in the Pallas interpreter), meant only to keep the
scripts from rotting; its numbers measure the interpreter, not a kernel.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from nestlearn.kernels.chunk_scan import BACKWARDS
from nestlearn.kernels.kernel_impl import PALLAS_BACKENDS

QUICK = dict(t=[64], d=16, heads=2, batch=1, chunk=16, dtype="float32", repeats=1, hidden=32)


class Cost(NamedTuple):
    """Work of one call, counted analytically."""

    flops: float  # matmul FLOPs (2 per multiply-add)
    bytes: float  # bytes read and written by the kernel's operands


class Ceilings(NamedTuple):
    """What the device reaches on a plain matmul and a plain copy."""

    matmul_tflops: float  # bf16 square matmul, TFLOP/s
    copy_gbs: float  # float32 elementwise copy, GB/s (read + write)
    matmul_n: int  # the matmul size n (n × n × n)
    copy_bytes: int  # the copied array's size in bytes


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every op benchmark takes; an op adds its own on the returned parser."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--t", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--d", type=int, default=128, help="key and value width per head")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--implementations",
        nargs="+",
        default=None,
        help="default: xla and the platform's Pallas backend (CPU --quick: the Triton interpreter)",
    )
    p.add_argument(
        "--backward",
        nargs="+",
        default=list(BACKWARDS),
        choices=BACKWARDS,
        help="the Pallas backends' backward passes to time (a row each; BlockSizes.backward)",
    )
    p.add_argument("--quick", action="store_true", help="CPU smoke mode (tiny shapes)")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p


def finish_args(a: argparse.Namespace, argv: Iterable[str] | None) -> argparse.Namespace:
    """Applies ``--quick`` (tiny defaults for every flag not given) and the default backends."""
    if a.quick:
        argv = sys.argv[1:] if argv is None else argv
        given = {arg.lstrip("-").split("=")[0] for arg in argv if arg.startswith("--")}
        for key, value in QUICK.items():
            if key not in given and hasattr(a, key):
                setattr(a, key, value)
    if a.implementations is None:
        pallas = PALLAS_BACKENDS.get(jax.default_backend())
        if pallas is None and a.quick:
            pallas = "pallas_triton"
        a.implementations = ["xla"] + ([pallas] if pallas else [])
    a.interpret = jax.default_backend() not in PALLAS_BACKENDS
    return a


def seconds_per_call(fn: Callable, *args, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` over ``repeats`` calls after one compiling call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_ceilings(quick: bool, repeats: int = 5) -> Ceilings:
    """Matmul and copy ceilings of the default device (module docstring)."""
    n = 256 if quick else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    matmul = seconds_per_call(jax.jit(jnp.dot), a, a, repeats=repeats)
    size = (2**22) if quick else (2**28)  # float32 elements: 16 MiB or 1 GiB
    x = jnp.zeros((size,), jnp.float32)
    copy = seconds_per_call(jax.jit(lambda x: x + 1.0), x, repeats=repeats)
    return Ceilings(2 * n**3 / matmul / 1e12, 2 * 4 * size / copy / 1e9, n, 4 * size)


def device_info() -> dict[str, Any]:
    """The device the run measures, its host and the host's load (1/5/15-minute averages)."""
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
        "host": platform.platform(),
        "host_cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


def device_slug() -> str:
    """A file-name form of the device kind, e.g. ``nvidia-h100-80gb-hbm3``."""
    kind = jax.devices()[0].device_kind.lower()
    return "".join(c if c.isalnum() else "-" for c in kind).strip("-") or "device"


def time_case(
    *,
    forward: Callable,
    loss: Callable,
    args: tuple,
    cost_fwd: Cost,
    cost_train: Cost,
    repeats: int,
    ceilings: Ceilings,
) -> dict[str, Any]:
    """Times one case: forward, and forward+backward (``jax.grad`` of ``loss`` w.r.t. args).

    Returns the row's measured fields; an exception becomes ``{"error": ...}`` so that one
    failing backend does not stop an unattended device run.
    """
    row: dict[str, Any] = {}
    passes = (("fwd", forward, cost_fwd), ("fwd_bwd", jax.grad(loss), cost_train))
    for name, fn, cost in passes:
        try:
            seconds = seconds_per_call(jax.jit(fn), *args, repeats=repeats)
        except Exception as e:  # reported in the table and the JSON
            row["error"] = f"{name}: {type(e).__name__}: {e}"
            row["traceback"] = traceback.format_exc(limit=5)
            return row
        tflops = cost.flops / seconds / 1e12
        gbs = cost.bytes / seconds / 1e9
        row[name] = {
            "ms": seconds * 1e3,
            "flops": cost.flops,
            "bytes": cost.bytes,
            "tflops": tflops,
            "gbs": gbs,
            "pct_matmul_ceiling": 100 * tflops / ceilings.matmul_tflops,
            "pct_copy_ceiling": 100 * gbs / ceilings.copy_gbs,
        }
    return row


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Adds ``speedup_vs_xla`` (XLA time / this time) per pass to every row with an XLA twin."""
    key = lambda r: (r["op"], r["variant"], r["t"])
    xla = {key(r): r for r in rows if r["implementation"] == "xla" and "error" not in r}
    for r in rows:
        ref = xla.get(key(r))
        if ref is None or "error" in r:
            continue
        for name in ("fwd", "fwd_bwd"):
            r[name]["speedup_vs_xla"] = ref[name]["ms"] / r[name]["ms"]


def format_table(rows: list[dict[str, Any]], ceilings: Ceilings) -> str:
    """The rows as a Markdown table (ms, TFLOP/s, GB/s, speed-up vs XLA, per pass)."""
    lines = [
        f"ceilings: bf16 matmul {ceilings.matmul_tflops:.2f} TFLOP/s (n={ceilings.matmul_n}), "
        f"copy {ceilings.copy_gbs:.1f} GB/s ({ceilings.copy_bytes / 2**20:.0f} MiB)",
        "",
        "| op | variant | T | implementation | fwd ms | TFLOP/s | GB/s | × XLA "
        "| fwd+bwd ms | TFLOP/s | GB/s | × XLA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['op']} | {r['variant']} | {r['t']} | {r['implementation']}"
        if r.get("tiling"):
            head += f" ({r['tiling']})"
        if r.get("interpret"):
            head += " (interpret)"
        if "error" in r:
            lines.append(head + f" | error: {r['error'][:120]} |" + " |" * 7)
            continue
        cells = []
        for name in ("fwd", "fwd_bwd"):
            p = r[name]
            speedup = p.get("speedup_vs_xla")
            cells += [
                f"{p['ms']:.3f}",
                f"{p['tflops']:.3f}",
                f"{p['gbs']:.1f}",
                "—" if speedup is None else f"{speedup:.2f}",
            ]
        lines.append(head + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(
    cases: Iterable[dict[str, Any]], a: argparse.Namespace, ceilings: Ceilings | None = None
) -> dict[str, Any]:
    """Times every case (dicts from an op's ``cases``) and returns the result document.

    A case holds ``op``, ``variant``, ``t``, ``implementation``, ``interpret``, ``shape`` (a dict
    for the JSON), optionally ``tiling`` (a label of the kernel's block sizes) and
    ``make() -> dict(forward=, loss=, args=, cost_fwd=, cost_train=)``.
    """
    ceilings = measure_ceilings(a.quick) if ceilings is None else ceilings
    rows = []
    for case in cases:
        row = {k: case[k] for k in ("op", "variant", "t", "implementation", "interpret", "shape")}
        if case.get("tiling"):
            row["tiling"] = case["tiling"]
        try:
            row.update(time_case(**case["make"](), repeats=a.repeats, ceilings=ceilings))
        except Exception as e:  # building the inputs failed
            row["error"] = f"setup: {type(e).__name__}: {e}"
        rows.append(row)
        if "error" in row:
            status = row["error"]
        else:
            status = f"fwd {row['fwd']['ms']:.3f} ms, fwd+bwd {row['fwd_bwd']['ms']:.3f} ms"
        name = f"{row['op']} ({row['variant']}) T={row['t']} {row['implementation']}"
        name += f" ({row['tiling']})" if "tiling" in row else ""
        print(f"{name}: {status}", flush=True)
    add_speedups(rows)
    # device_info() at the end of the run: its load average covers the timed calls.
    return {"device": device_info(), "ceilings": ceilings._asdict(), "rows": rows}


def report(result: dict[str, Any], out: str | None) -> None:
    """Prints the table and writes the JSON to ``out`` (when given)."""
    print(f"device: {result['device']}")
    print(format_table(result["rows"], Ceilings(**result["ceilings"])))
    if out:
        path = pathlib.Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
