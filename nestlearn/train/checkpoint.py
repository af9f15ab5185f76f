"""Checkpoints with orbax: exact resume, and a fallback past a corrupted latest checkpoint.

One checkpoint per saved step, with `Composite` items from the first save on:

| item | what | format |
|---|---|---|
| `params` | the `nnx.Param` leaves (slow weights and meta-learned initial memories) | arrays |
| `opt_<level>` | one item per level: its `LevelState` (counter, accumulator, rule state) | arrays |
| `model_state` | the model's other variables (fast `MemoryState` and the like) | arrays |
| `train` | step, skip counters and the base PRNG key | arrays |
| `data` | the batch iterator's `IteratorState` (seed, epoch, position) | JSON |
| `config` | the experiment config | JSON |
| `meta` | leaf paths, and a sha256 fingerprint of every array item | JSON |

Array items are stored as flat `{index: array}` dicts (the tree structure comes from a freshly
initialised target on restore, the readable leaf paths are in `meta`), so any pytree —
NamedTuples, `optax.MaskedNode`s, `nnx.State` — round-trips. Saves are asynchronous; orbax copies
the arrays to host memory before `save` returns, so the caller may donate its buffers right after.

Sharded arrays: `jax.Array`s are handed to orbax as they are, so each process writes the shards
it holds (multi-host runs included), and restore reads every array straight into the sharding of
the target leaf — a checkpoint written on one mesh restores onto any other mesh shape. The
fingerprint of an array is computed on the devices (`_array_hash`: exact uint32 sums, which do
not depend on the sharding or the reduction order), so no process ever gathers a whole array.

Restoring walks the steps from the newest down and tells three failures apart:

- *mismatch*: the checkpoint's leaf paths, shapes or dtypes (from `meta` and the arrays' stored
  metadata, read before any array) differ from the target — a checkpoint of another model or
  config. `CheckpointMismatchError` names the mismatching arrays; nothing is moved.
- *read error*: an `OSError` or a storage error that is not about the data (unavailable, timed
  out, permission denied). The read is retried (`read_retries`), then `CheckpointReadError`
  names the step and the cause; nothing is moved.
- *corruption*: anything else — arrays that do not match their fingerprints, a truncated or
  overwritten file, a missing item. The checkpoint is reported with a warning, moved aside to
  `<directory>/corrupt/<step>` (`<step>.1`, `<step>.2`, ... when an older copy is there; none is
  ever deleted), and the next older one is tried.

Writes: a save that fails (a full disk, an I/O error), in `save` or in orbax's background
threads, raises `WriteError` naming the directory, the step and the cause at the next `check`,
`save`, `wait` or `close`; the checkpoints committed before it stay as they were.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from nestlearn.core import tree_paths
from nestlearn.train.errors import CheckpointMismatchError, CheckpointReadError, WriteError

__all__ = ["Checkpointer", "Restored", "dump_config"]

_ARRAY_ITEMS_FIXED = ("params", "model_state", "train")


class Restored(NamedTuple):
    """What `Checkpointer.restore` returns."""

    step: int  # the restored step
    trees: dict[str, Any]  # item name -> pytree with the structure of the target
    data: dict[str, Any]  # the iterator state (JSON)
    config: dict[str, Any]  # the config the checkpoint was written with (JSON)


def _to_host(tree: Any) -> tuple[dict[str, Any], Any]:
    """Flat `{index: array}` view of a pytree (PRNG keys as raw key data).

    `jax.Array` leaves stay on their devices with their sharding (orbax writes each shard from
    the process that holds it); other leaves become numpy arrays.
    """
    leaves = []
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        leaves.append(leaf if isinstance(leaf, jax.Array) else np.array(leaf))
    return {f"{i:05d}": x for i, x in enumerate(leaves)}, jax.tree.structure(tree)


@jax.jit
def _array_hash(x: jax.Array) -> jax.Array:
    """Two uint32 checksums of the bits of `x`, independent of its sharding.

    Each element's bits (as uint32 words) are multiplied by an odd weight derived from its flat
    index and summed modulo 2**32, so changing any single element always changes the first sum;
    integer sums are exact, so the result does not depend on the reduction order.
    """
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize >= 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8-byte items: a trailing axis of 2
    else:
        word = jnp.uint8 if x.dtype.itemsize == 1 else jnp.uint16
        bits = jax.lax.bitcast_convert_type(x, word).astype(jnp.uint32)
    bits = bits.reshape(-1)
    index = jax.lax.iota(jnp.uint32, bits.size)
    w1 = (index * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)) | jnp.uint32(1)
    w2 = (index * jnp.uint32(0x85EBCA6B) + jnp.uint32(0xC2B2AE35)) | jnp.uint32(1)
    h1 = jnp.sum(bits * w1, dtype=jnp.uint32)
    h2 = jnp.sum((bits ^ (index * jnp.uint32(0x27D4EB2F))) * w2, dtype=jnp.uint32)
    return jnp.stack([h1, h2])


def _leaf_digest(x: Any) -> str:
    if isinstance(x, jax.Array):
        return bytes(np.asarray(_array_hash(x)).tobytes()).hex()
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def _fingerprint(flat: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in sorted(flat):
        x = flat[key]
        digest.update(f"{key}:{np.dtype(x.dtype).str}:{tuple(x.shape)}".encode())
        digest.update(_leaf_digest(x).encode())
    return digest.hexdigest()


def _restore_target(x: Any) -> Any:
    """What orbax restores a leaf as: a `jax.Array` in the target's sharding, or numpy."""
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


def _from_host(flat: dict[str, Any], target: Any) -> Any:
    leaves, treedef = jax.tree.flatten(target)
    if len(flat) != len(leaves):
        raise ValueError(f"checkpoint holds {len(flat)} arrays, the target {len(leaves)}")
    out = []
    for i, leaf in enumerate(leaves):
        x = flat[f"{i:05d}"]
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            out.append(jax.random.wrap_key_data(x, impl=jax.random.key_impl(leaf)))
            continue
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if tuple(x.shape) != tuple(np.shape(leaf)) or x.dtype != dtype:
            raise ValueError(
                f"array {i} is {x.dtype}{tuple(x.shape)}, the target expects "
                f"{dtype}{np.shape(leaf)}"
            )
        out.append(x if isinstance(x, jax.Array) else jnp.asarray(x))
    return jax.tree.unflatten(treedef, out)


def _nonempty(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # orbax writes neither zero-size arrays nor empty trees: zero-size leaves are rebuilt from the
    # target on restore, and the leaf count `n` keeps every item non-empty (and is checked).
    kept = {k: v for k, v in flat.items() if v.size}
    kept["n"] = np.asarray(len(flat), np.int64)
    return kept


class _Corrupt(Exception):
    """A checkpoint failed its integrity check (internal: it is moved aside)."""


#: Status codes of tensorstore errors that are about the storage, not the data.
_STORAGE_CODES = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "CANCELLED",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
)


def _is_read_error(e: BaseException) -> bool:
    """Whether a failure to load is the storage's (retry, then fail) rather than the data's."""
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return False  # a missing or misplaced file: an incomplete checkpoint
    if isinstance(e, OSError):
        return True
    return str(e).lstrip().startswith(_STORAGE_CODES)


def _first_line(e: BaseException) -> str:
    """The error's type and first line; a long line keeps its head and its tail (the cause)."""
    line = (str(e).splitlines() or [""])[0]
    if len(line) > 400:
        line = f"{line[:200]} ... {line[-200:]}"
    return f"{type(e).__name__}: {line}"


def _leaf_specs(flat: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {k: (np.dtype(v.dtype).name, tuple(v.shape)) for k, v in flat.items()}


class Checkpointer:
    """An orbax `CheckpointManager` over a fixed set of array items plus data/config/meta JSON.

    Example:
      ckpt = Checkpointer(workdir / "checkpoints", level_names=("backbone",), max_to_keep=3)
      ckpt.save(step, trees={"params": p, "opt_backbone": s, ...}, data=it_state, config=cfg)
      restored = ckpt.restore(targets)   # None when there is no usable checkpoint
    """

    #: Attempts at reading a checkpoint whose read fails with a storage error, and the pause
    #: before the first retry (doubled for each further one).
    read_retries = 3
    retry_delay_s = 0.5

    def __init__(self, directory: str | Path, *, level_names: tuple[str, ...], max_to_keep: int):
        self.directory = Path(directory).absolute()
        self.array_items = (*_ARRAY_ITEMS_FIXED, *(f"opt_{n}" for n in level_names))
        self._max_to_keep = max_to_keep
        self._manager = self._open()
        self._saving: int | None = None  # the step of the newest save started
        self._failed = False  # a save failed: close() then reports nothing more

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True)
        return ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=(*self.array_items, "data", "config", "meta"),
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def _write_error(self, e: BaseException, step: int | None) -> WriteError:
        """The `WriteError` of a failed save of `step`, naming the newest intact checkpoint."""
        self._failed = True
        committed = [s for s in self.all_steps() if s != step]
        resume = (
            f"the newest committed checkpoint (step {committed[-1]}) is intact: free space or fix "
            "the file system, then rerun the same command to resume from it"
            if committed
            else "no checkpoint was committed before it: free space or fix the file system, "
            "then rerun the same command to start over"
        )
        return WriteError(
            f"saving checkpoint step {step} in {self.directory} failed ({_first_line(e)}); the "
            f"run stops here, and {resume}"
        )

    def check(self) -> None:
        """Raises `WriteError` if a background save has failed (cheap; call it every step)."""
        try:
            self._manager.check_for_errors()
        except Exception as e:
            raise self._write_error(e, self._saving) from e

    def save(
        self, step: int, *, trees: dict[str, Any], data: dict[str, Any], config: dict[str, Any]
    ) -> None:
        """Starts an asynchronous save of `trees` (one per array item) and the JSON items.

        Raises:
          ValueError: `trees` lacks an array item or has an extra one.
          WriteError: this save, or the previous one still finishing, failed.
        """
        if set(trees) != set(self.array_items):
            raise ValueError(
                f"trees has items {sorted(trees)}, expected {sorted(self.array_items)}"
            )
        args, meta = {}, {"paths": {}, "fingerprints": {}}
        for name, tree in trees.items():
            flat, _ = _to_host(tree)
            meta["paths"][name] = tree_paths(tree)
            meta["fingerprints"][name] = _fingerprint(_nonempty(flat))
            args[name] = ocp.args.StandardSave(_nonempty(flat))
        args["data"] = ocp.args.JsonSave(data)
        args["config"] = ocp.args.JsonSave(config)
        args["meta"] = ocp.args.JsonSave(meta)
        self.wait()  # the previous save must have succeeded (orbax waits for it anyway)
        try:
            self._manager.save(step, args=ocp.args.Composite(**args), force=True)
        except Exception as e:  # this save, or the previous one finishing in the background
            raise self._write_error(e, step) from e
        self._saving = step

    def _check_fits(self, step: int, meta: dict[str, Any], targets: dict[str, Any]) -> None:
        """`CheckpointMismatchError` naming the arrays of `step` that do not fit `targets`.

        Compares leaf paths (from `meta`) and dtypes and shapes (the arrays' stored metadata)
        before any array is read.
        """
        problems = []
        for name in self.array_items:
            want_paths = tree_paths(targets[name])
            got_paths = meta.get("paths", {}).get(name)
            if got_paths is not None and got_paths != want_paths:
                missing = sorted(set(want_paths) - set(got_paths))
                extra = sorted(set(got_paths) - set(want_paths))
                detail = f"model-only {missing[:5]}, checkpoint-only {extra[:5]}"
                if not missing and not extra:
                    detail = "the same paths in another order"
                problems.append(f"{name}: {len(got_paths)} arrays vs {len(want_paths)} ({detail})")
                continue
            try:
                stored = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / name)
                stored = {k: v for k, v in dict(stored.tree).items() if k != "n"}
            except Exception:  # unreadable metadata: the restore checks the data itself
                continue
            flat, _ = _to_host(targets[name])
            want = _leaf_specs({k: v for k, v in flat.items() if v.size})
            got = _leaf_specs(stored)
            for key in sorted(set(want) | set(got)):
                if want.get(key) != got.get(key):
                    path = want_paths[int(key)] if int(key) < len(want_paths) else key
                    saved = "absent" if key not in got else f"{got[key][0]}{list(got[key][1])}"
                    model = "absent" if key not in want else f"{want[key][0]}{list(want[key][1])}"
                    problems.append(f"{name}/{path}: checkpoint {saved}, model {model}")
        if problems:
            shown = "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else "")
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} does not fit the model: {shown}. It "
                "was written by another model or config; nothing was moved. Restore it with the "
                "code and config that wrote it, or use a new workdir"
            )

    def _restore_step(self, step: int, targets: dict[str, Any]) -> Restored:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        self._check_fits(step, dict(meta.meta), targets)
        fingerprints = meta.meta["fingerprints"]
        args = {}
        for name in self.array_items:
            flat_target, _ = _to_host(targets[name])
            target = {k: _restore_target(v) for k, v in _nonempty(flat_target).items()}
            args[name] = ocp.args.StandardRestore(target)
        args["data"] = ocp.args.JsonRestore()
        args["config"] = ocp.args.JsonRestore()
        got = self._manager.restore(step, args=ocp.args.Composite(**args))
        trees = {}
        for name in self.array_items:
            flat = {
                k: v if isinstance(v, jax.Array) else np.asarray(v)
                for k, v in dict(got[name] or {}).items()
            }
            if _fingerprint(flat) != fingerprints[name]:
                raise _Corrupt(f"item {name!r} does not match its fingerprint")
            full, _ = _to_host(targets[name])
            if int(flat.pop("n")) != len(full):
                raise _Corrupt(f"item {name!r} holds a different number of leaves")
            full.update(flat)
            trees[name] = _from_host(full, targets[name])
        return Restored(step, trees, dict(got["data"]), dict(got["config"]))

    def _read(self, step: int, targets: dict[str, Any]) -> Restored:
        """Restores `step`, retrying storage errors; `_Corrupt` for a failed integrity check."""
        for attempt in range(self.read_retries):
            try:
                return self._restore_step(step, targets)
            except (CheckpointMismatchError, _Corrupt):
                raise
            except Exception as e:
                if not _is_read_error(e):
                    raise _Corrupt(_first_line(e)) from e
                if attempt + 1 == self.read_retries:
                    raise CheckpointReadError(
                        f"reading checkpoint step {step} in {self.directory} failed "
                        f"{self.read_retries} times ({_first_line(e)}); nothing was moved. Fix "
                        "the storage and rerun"
                    ) from e
                warnings.warn(
                    f"reading checkpoint step {step} in {self.directory} failed "
                    f"({_first_line(e)}); retrying",
                    stacklevel=3,
                )
                time.sleep(self.retry_delay_s * 2**attempt)
        raise AssertionError("unreachable")

    def _move_aside(self, step: int) -> Path:
        """Moves `step` to `corrupt/<step>`, or `corrupt/<step>.<n>` beside older copies."""
        corrupt = self.directory / "corrupt" / str(step)
        n = 0
        while corrupt.exists():
            n += 1
            corrupt = self.directory / "corrupt" / f"{step}.{n}"
        corrupt.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory / str(step)), corrupt)
        return corrupt

    def restore(self, targets: dict[str, Any]) -> Restored | None:
        """Restores the newest usable checkpoint into the structure of `targets`.

        A checkpoint that fails its integrity check is moved to `<directory>/corrupt/<step>`
        with a warning, and the next older one is tried (module docstring).

        Returns:
          A `Restored`, or None when no usable checkpoint exists.

        Raises:
          CheckpointMismatchError: the newest checkpoint's arrays do not fit `targets` (names
            them; nothing is moved).
          CheckpointReadError: a storage error persisted over `read_retries` attempts.
        """
        for step in reversed(self.all_steps()):
            try:
                return self._read(step, targets)
            except _Corrupt as e:
                corrupt = self._move_aside(step)
                warnings.warn(
                    f"checkpoint at step {step} in {self.directory} is corrupted or partial "
                    f"({e}); moved it to {corrupt} and falling back to the previous checkpoint",
                    stacklevel=2,
                )
                self._manager.close()
                self._manager = self._open()
        return None

    def read_config(self) -> dict[str, Any] | None:
        """The config JSON of the newest checkpoint that has one (None without checkpoints)."""
        for step in reversed(self.all_steps()):
            try:
                got = self._manager.restore(
                    step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
                )
                return dict(got["config"])
            except Exception:  # try the next older one
                continue
        return None

    def wait(self) -> None:
        """Waits for the pending save; `WriteError` if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(e, self._saving) from e

    def close(self) -> None:
        """Waits for the pending save and closes; after a `WriteError`, reports nothing more."""
        failed_before = self._failed
        try:
            self.wait()
            self._manager.close()
        except Exception:
            if not failed_before:
                raise


def dump_config(config) -> dict[str, Any]:
    """The config as plain JSON (tuples become lists)."""
    return json.loads(config.to_json())
