"""Shared pieces of the per-op `bench.py` scripts: flags, timing and the result table."""

import argparse
import time
from collections.abc import Callable

import jax


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every op benchmark takes; an op adds its own on the returned parser."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--t", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--interpret", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--implementations", nargs="+", default=["xla", "pallas_triton"])
    return p


def seconds_per_call(fn: Callable, *args, repeats: int) -> float:
    """Mean wall time of `fn(*args)` after one compiling call."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / repeats


def report(a: argparse.Namespace, bench: Callable[..., tuple[float, float]], **fixed) -> None:
    """Runs `bench(implementation=, t=, **fixed)` for every T and implementation and prints it."""
    print(f"device: {jax.devices()[0].device_kind}; {vars(a)}")
    for t in a.t:
        for impl in a.implementations:
            fwd, bwd = bench(implementation=impl, t=t, **fixed)
            print(f"T={t:6d} {impl:14s} fwd {fwd * 1e3:9.2f} ms   fwd+bwd {bwd * 1e3:9.2f} ms")
