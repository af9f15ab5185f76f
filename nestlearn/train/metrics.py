"""One metric sink: JSON lines (`workdir/metrics.jsonl`) and TensorBoard event files.

Each record is one JSON object per line: `{"step": s, "kind": "train"|"eval"|..., name: value}`.
On resume from step s, `MetricWriter(workdir, resume_step=s)` first drops every record after s
(and a torn last line), so the file of a run that was killed and restarted reads exactly like the
file of an uninterrupted run. TensorBoard events (tensorboardX, `workdir/tensorboard/`) are
append-only; TensorBoard shows the newest value of a repeated step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MetricWriter", "read_metrics"]


def _plain(value: Any) -> Any:
    value = np.asarray(value)
    if value.ndim:
        return value.tolist()
    value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl file (a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricWriter:
    """Writes metric records to `workdir/metrics.jsonl` and TensorBoard.

    Args:
      workdir: the run directory.
      resume_step: records with a step above it are dropped first (None: start a new file).
      tensorboard: also write TensorBoard event files.
      primary: whether this process writes files. In a multi-host run only process 0 is primary;
        the others keep the records in memory (`records`) so every process sees the same ones.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        resume_step: int | None,
        tensorboard: bool = True,
        primary: bool = True,
    ):
        self.path = Path(workdir) / "metrics.jsonl"
        self.primary = primary
        self.records: list[dict[str, Any]] = (
            []
            if resume_step is None
            else [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        )
        self._file = self._tb = None
        if not primary:
            return
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        self._file = open(self.path, "a")  # closed in close()
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, kind: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """Appends one record (flushed) and returns it."""
        record = {"step": int(step), "kind": kind, **{k: _plain(v) for k, v in metrics.items()}}
        self.records.append(record)
        if self._file is None:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                if name not in ("step", "kind") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{name}", value, int(step))
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
