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

Restoring walks the steps from the newest down. A checkpoint that fails to load, or whose arrays
do not match their fingerprints (a truncated or overwritten file, a half-written directory), is
reported with a warning, moved aside to `<directory>/corrupt/<step>`, and the next older one is
tried.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from nestlearn.core import tree_paths

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


class Checkpointer:
    """An orbax `CheckpointManager` over a fixed set of array items plus data/config/meta JSON.

    Example:
      ckpt = Checkpointer(workdir / "checkpoints", level_names=("backbone",), max_to_keep=3)
      ckpt.save(step, trees={"params": p, "opt_backbone": s, ...}, data=it_state, config=cfg)
      restored = ckpt.restore(targets)   # None when there is no usable checkpoint
    """

    def __init__(self, directory: str | Path, *, level_names: tuple[str, ...], max_to_keep: int):
        self.directory = Path(directory).absolute()
        self.array_items = (*_ARRAY_ITEMS_FIXED, *(f"opt_{n}" for n in level_names))
        self._max_to_keep = max_to_keep
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True)
        return ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=(*self.array_items, "data", "config", "meta"),
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self, step: int, *, trees: dict[str, Any], data: dict[str, Any], config: dict[str, Any]
    ) -> None:
        """Starts an asynchronous save of `trees` (one per array item) and the JSON items."""
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
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def _restore_step(self, step: int, targets: dict[str, Any]) -> Restored:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
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
                raise ValueError(f"item {name!r} does not match its fingerprint")
            full, _ = _to_host(targets[name])
            if int(flat.pop("n")) != len(full):
                raise ValueError(f"item {name!r} holds a different number of leaves")
            full.update(flat)
            trees[name] = _from_host(full, targets[name])
        return Restored(step, trees, dict(got["data"]), dict(got["config"]))

    def restore(self, targets: dict[str, Any]) -> Restored | None:
        """Restores the newest usable checkpoint into the structure of `targets`.

        A checkpoint that fails to load or to match its fingerprints is moved to
        `<directory>/corrupt/<step>` with a warning, and the next older one is tried.

        Returns:
          A `Restored`, or None when no usable checkpoint exists.
        """
        for step in reversed(self.all_steps()):
            try:
                return self._restore_step(step, targets)
            except Exception as e:  # any failure to load means unusable
                corrupt = self.directory / "corrupt" / str(step)
                reason = (str(e).splitlines() or [""])[0][:200]
                warnings.warn(
                    f"checkpoint at step {step} in {self.directory} is corrupted or partial "
                    f"({type(e).__name__}: {reason}); moved it to {corrupt} and falling back to "
                    "the previous checkpoint",
                    stacklevel=2,
                )
                corrupt.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(corrupt, ignore_errors=True)
                shutil.move(str(self.directory / str(step)), corrupt)
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
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def dump_config(config) -> dict[str, Any]:
    """The config as plain JSON (tuples become lists)."""
    return json.loads(config.to_json())
