"""One metric sink: JSON lines (`workdir/metrics.jsonl`) and TensorBoard event files.

Each record is one JSON object per line: `{"step": s, "kind": "train"|"eval"|..., name: value}`.
On resume from step s, `MetricWriter(workdir, resume_step=s)` first drops every record after s
(and a torn last line), so the file of a run that was killed and restarted reads exactly like the
file of an uninterrupted run. TensorBoard events (tensorboardX's event-file format,
`workdir/tensorboard/`) are append-only; TensorBoard shows the newest value of a repeated step.

Every write is synchronous (no writer thread, no queue): a write that fails — a full disk, an I/O
error — raises `WriteError` naming the file and the cause in the training loop itself, so the run
stops at once instead of blocking. The cut on resume writes a temporary file and renames it over
`metrics.jsonl`, so a failure there leaves the old file whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nestlearn.train.errors import WriteError

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


class _EventFile:
    """A TensorBoard event file written synchronously (tensorboardX's format, no writer thread)."""

    def __init__(self, directory: Path):
        from tensorboardX.record_writer import RecordWriter

        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path, n = directory / name, 0
        while self.path.exists():  # a second writer in the same second: a new file, not this one
            n += 1
            self.path = directory / f"{name}.{n}"
        self._writer = RecordWriter(str(self.path))
        self._write(wall_time=time.time(), file_version="brain.Event:2")

    def _write(self, **fields: Any) -> None:
        from tensorboardX.proto import event_pb2

        self._writer.write(event_pb2.Event(**fields).SerializeToString())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboardX.summary import scalar

        now = time.time()
        for tag, value in values.items():
            self._write(wall_time=now, step=step, summary=scalar(tag, value))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricWriter:
    """Writes metric records to `workdir/metrics.jsonl` and TensorBoard.

    Args:
      workdir: the run directory.
      resume_step: records with a step above it are dropped first (None: start a new file).
      tensorboard: also write TensorBoard event files.
      primary: whether this process writes files. In a multi-host run only process 0 is primary;
        the others keep the records in memory (`records`) so every process sees the same ones.

    Raises:
      WriteError: a file could not be written (here or in `write`), naming it and the cause.
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
        self.failed = False  # a write failed: close() then ignores errors
        if not primary:
            return
        with self._writing(self.path):
            kept = "".join(json.dumps(r) + "\n" for r in self.records)
            if not self.path.exists() or self.path.read_text() != kept:
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(kept)
                os.replace(tmp, self.path)
            self._file = open(self.path, "a")  # closed in close()
        if tensorboard:
            with self._writing(Path(workdir) / "tensorboard"):
                self._tb = _EventFile(Path(workdir) / "tensorboard")

    @contextlib.contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """Turns an `OSError` while writing `path` into a `WriteError` naming it and the cause."""
        try:
            yield
        except OSError as e:
            self.failed = True
            raise WriteError(
                f"writing {path} failed ({e.strerror or e}); the run stops here. Free space or "
                "fix the file system, then rerun the same command to resume from the newest "
                "checkpoint"
            ) from e

    def write(self, step: int, kind: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """Appends one record (flushed) and returns it."""
        record = {"step": int(step), "kind": kind, **{k: _plain(v) for k, v in metrics.items()}}
        self.records.append(record)
        if self._file is None:
            return record
        with self._writing(self.path):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            scalars = {
                f"{kind}/{name}": value
                for name, value in record.items()
                if name not in ("step", "kind") and isinstance(value, (int, float))
            }
            with self._writing(self._tb.path):
                self._tb.scalars(int(step), scalars)
        return record

    def close(self) -> None:
        """Closes the files; a failure to flush them is ignored when a write already failed."""
        failed_before = self.failed
        for handle in (self._file, self._tb):
            if handle is None:
                continue
            try:
                with self._writing(self.path.parent):
                    handle.close()
            except WriteError:
                if not failed_before:
                    raise
        self._file = self._tb = None
