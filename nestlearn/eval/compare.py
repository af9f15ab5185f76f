"""Comparisons over seeds: mean ± std, Markdown tables, curves with a spread band, heat maps.

Used by `experiments/lm_compare.py` and `experiments/niah.py` to turn per-run JSON records into
the tables and figures of `docs/results/`. Everything here is a pure function of its inputs
(plots are written with matplotlib's Agg backend, no display).

The standard deviation is the sample standard deviation (ddof = 1) over seeds; a single seed
reports std 0 and is marked `n=1` wherever a table shows counts.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "cached_record",
    "differs",
    "format_mean_std",
    "load_range",
    "machine_info",
    "markdown_table",
    "mean_curve",
    "mean_std",
    "plot_curves",
    "plot_heatmaps",
    "plot_points",
    "run_meta",
    "source_fingerprint",
    "write_json_atomic",
]


def source_fingerprint(
    root: str | Path, patterns: Sequence[str] = ("nestlearn/**/*.py", "kernels/**/*.py")
) -> str:
    """sha256 (first 16 hex digits) of the files under `root` matching `patterns`, with paths.

    Records carry it so that a report can tell when runs executed different library code (other
    work may change the tree between the runs of one comparison).
    """
    import hashlib

    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted({p for pattern in patterns for p in root.glob(pattern)}):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of finite `values`.

    Raises:
      ValueError: `values` is empty or holds a non-finite number.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"values must be finite, got {x.tolist()}")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """`"m ± s"` with `digits` decimals; a single value is shown without the ± part."""
    m, s = mean_std(values)
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def differs(a: Sequence[float], b: Sequence[float], *, z: float = 2.0) -> bool:
    """Whether the means of `a` and `b` differ by more than `z` standard errors of the difference.

    The standard error is √(s_a²/n_a + s_b²/n_b) with sample standard deviations. A side with a
    single value has no spread of its own and borrows the other side's; with a single value on
    both sides there is no spread to compare against, and the answer is False.
    """
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if len(a) == 1 and len(b) == 1:
        return False
    sa = sb if len(a) == 1 else sa
    sb = sa if len(b) == 1 else sb
    se = math.sqrt(sa**2 / len(a) + sb**2 / len(b))
    return abs(ma - mb) > z * se


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; every row must have one cell per header column.

    Raises:
      ValueError: a row whose length differs from the header's.
    """
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"rows[{i}] has {len(row)} cells, header has {len(header)}")
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def mean_curve(
    curves: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise mean and sample std of curves that share their x values (e.g. seeds of a run).

    Args:
      curves: one `(x [n], y [n])` per seed; every x must be identical.

    Returns:
      `(x [n], mean [n], std [n])`; std is 0 for a single curve.

    Raises:
      ValueError: no curves, a curve whose x and y lengths differ, or curves with different x.
    """
    if not curves:
        raise ValueError("curves is empty")
    x0 = np.asarray(curves[0][0], dtype=np.float64)
    ys = []
    for i, (x, y) in enumerate(curves):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"curves[{i}]: x has shape {x.shape}, y has {y.shape}")
        if x.shape != x0.shape or not np.array_equal(x, x0):
            raise ValueError(f"curves[{i}] has other x values than curves[0]")
        ys.append(y)
    y = np.stack(ys)  # [seeds, n]
    std = y.std(axis=0, ddof=1) if len(ys) > 1 else np.zeros_like(x0)
    return x0, y.mean(axis=0), std


def plot_points(
    points: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Path:
    """One point per label at the mean of its seeds' (x, y), with ±1 std error bars, as a PNG
    (e.g. forgetting against the new task's score: a stability–plasticity plot).

    Args:
      points: label → one `(x, y)` per seed.
      path: the PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=110)
    for label, pts in points.items():
        x, y = np.asarray(pts, dtype=np.float64).reshape(-1, 2).T
        ax.errorbar(
            x.mean(),
            y.mean(),
            xerr=x.std(),
            yerr=y.std(),
            marker="o",
            capsize=3,
            label=f"{label} (n={len(x)})",
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(
    curves: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One line per label (mean over its seeds) with a ±1 std band, written to a PNG.

    Args:
      curves: label → one `(x, y)` per seed (see `mean_curve`).
      path: the PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=110)
    for label, runs in curves.items():
        x, m, s = mean_curve(runs)
        (line,) = ax.plot(x, m, lw=1.3, label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_heatmaps(
    maps: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    xlabel: str,
    ylabel: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Path:
    """One annotated heat map per label (rows × columns, values in [vmin, vmax]) in one PNG.

    Raises:
      ValueError: no maps, or a map whose shape is not [len(row_labels), len(col_labels)].
    """
    if not maps:
        raise ValueError("maps is empty")
    shape = (len(row_labels), len(col_labels))
    for label, m in maps.items():
        if np.shape(m) != shape:
            raise ValueError(f"maps[{label!r}] has shape {np.shape(m)}, expected {shape}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(maps)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(2.9 * cols + 0.8, 2.6 * rows + 0.3),
        dpi=110,
        squeeze=False,
        layout="constrained",
    )
    image = None
    for ax, (label, m) in zip(axes.flat, maps.items()):
        m = np.asarray(m, dtype=np.float64)
        image = ax.imshow(m, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto", origin="upper")
        for (i, j), value in np.ndenumerate(m):
            if np.isfinite(value):
                color = "black" if value > (vmin + vmax) / 2 else "white"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(shape[1]), col_labels, fontsize=7)
        ax.set_yticks(range(shape[0]), row_labels, fontsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
        if ax in list(axes[:, 0]):
            ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(label, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def machine_info() -> dict:
    """The machine a result was measured on: platform, processor, cores, jax version, device."""
    import jax  # the rest of this module is numpy-only

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
    }


def load_range(runs: Sequence[dict]) -> tuple[float, float, int] | None:
    """`(lowest, highest, missing)` 1-minute load average over run records, or None if none
    recorded one (each record's `"load_average"` is the "1 5 15"-minute string at its end)."""
    ones = [float(r["load_average"].split()[0]) for r in runs if "load_average" in r]
    if not ones:
        return None
    return min(ones), max(ones), sum("load_average" not in r for r in runs)


def run_meta(
    script: str, argv: Sequence[str], start: float, runs: Sequence[dict], computed: int
) -> dict:
    """The metadata every experiment report starts from.

    Args:
      script: the experiment's path, e.g. "experiments/optimizer_study.py".
      argv: its command-line arguments (recorded as the reproducing command).
      start: `time.perf_counter()` when the invocation started.
      runs: every run record the report covers (each with its `"seconds"`).
      computed: how many of them this invocation computed (the others were cached).

    Returns:
      command, wall_seconds (this invocation), computed, total, machine (`machine_info`) and
      run_seconds (summed over every run record).
    """
    return {
        "command": " ".join(["python", script, *argv]),
        "wall_seconds": time.perf_counter() - start,
        "computed": computed,
        "total": len(runs),
        "machine": machine_info(),
        "run_seconds": float(sum(r["seconds"] for r in runs)),
    }


def read_records(directory: str | Path) -> list[dict]:
    """Every run record (`*.json`) in `directory`, in file-name order; [] when it does not exist."""
    return [json.loads(p.read_text()) for p in sorted(Path(directory).glob("*.json"))]


def cached_record(path: str | Path, **made_with: Any) -> dict | None:
    """The run record at `path` if it was made with `made_with` (its keys of the same names,
    compared as JSON), None when there is none.

    Raises:
      ValueError: naming the file and the differing keys when the record was made otherwise (a
        sweep must not mix runs of two protocols; move the record away or write elsewhere).
    """
    path = Path(path)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    want = json.loads(json.dumps(made_with))
    differ = [k for k, v in want.items() if record.get(k) != v]
    if differ:
        detail = "; ".join(f"{k}: {record.get(k)!r}, now {want[k]!r}" for k in differ)
        raise ValueError(
            f"{path} was made with other {', '.join(differ)} ({detail}); move it away or write "
            "the sweep to another directory"
        )
    return record


def write_json_atomic(path: str | Path, record: object) -> Path:
    """Writes `record` as JSON to `path` through a temporary file and a rename, so a half-written
    run record never counts as finished (the experiments skip runs whose record exists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return path
