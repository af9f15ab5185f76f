"""The run report: `workdir/report.md` with the config, final metrics, loss curves, the in-context
memory probe (`nestlearn.eval.probe`) and samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nestlearn.eval.probe import report_section

__all__ = ["plot_losses", "write_report"]


def plot_losses(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Plots train loss (and validation loss, if any) against the step into a PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [
        (r["step"], r["loss"])
        for r in records
        if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float))
    ]
    val = [
        (r["step"], r["val_loss"])
        for r in records
        if r.get("kind") == "eval" and isinstance(r.get("val_loss"), (int, float))
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.0)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(metrics: dict[str, Any]) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for name, value in metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        rows.append(f"| {name} | {text} |")
    return "\n".join(rows)


def write_report(
    workdir: str | Path,
    *,
    config_json: dict[str, Any],
    final: dict[str, Any],
    records: list[dict[str, Any]],
    samples: list[str],
    title: str = "",
    probe: dict[str, Any] | None = None,
) -> Path:
    """Writes `workdir/report.md` and `workdir/loss.png`; returns the report's path.

    Args:
      workdir: the run directory.
      config_json: the experiment config as JSON.
      final: final metrics (name -> value), shown as a table.
      records: the metric records (for the loss curves).
      samples: generated texts.
      title: the report's heading (default: the model name and corpus).
      probe: the result of `nestlearn.eval.probe.compare` (its plot `probe.png` already in
        `workdir`), shown as its own section; None leaves the section out.
    """
    workdir = Path(workdir)
    plot_losses(records, workdir / "loss.png")
    model, data = config_json.get("model", {}), config_json.get("data", {})
    title = title or f"{model.get('name', 'model')} on {data.get('corpus', 'data')}"
    parts = [
        f"# {title}",
        "",
        "## Final metrics",
        "",
        _table(final),
        "",
        "## Loss curves",
        "",
        "![loss curves](loss.png)",
        "",
    ]
    if probe is not None:
        parts += [report_section(probe)]
    parts += ["## Samples", ""]
    for i, text in enumerate(samples):
        parts += [f"### Sample {i + 1}", "", "```text", text.replace("```", "'''"), "```", ""]
    parts += [
        "## Config",
        "",
        "```json",
        json.dumps(config_json, indent=2, sort_keys=True),
        "```",
        "",
    ]
    path = workdir / "report.md"
    path.write_text("\n".join(parts))
    return path
