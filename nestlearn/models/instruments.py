"""Collecting the memory instruments of a model's forward pass (`nestlearn.memory.instruments`).

A memory module computes its `MemoryStats` only inside `capture_memory_stats`: there
`recording()` is True while the model is traced, and the module stores
``{memory name: MemoryStats}`` with `record` (an `nnx.Intermediate` sown under `STATS`, so it
passes through `nnx.remat` like any module state). Everywhere else — training, evaluation,
generation — `recording()` is False and the traced computation is the one without instruments.

The flag is read at trace time: call `capture_memory_stats` inside the function that is jitted,
never around a call of an already-jitted function.

Memory names: "memory" for a layer's (primary) in-context memory, "generators" for the summary of
Hope's generator memories. A model with an online CMS records nothing (its blocks run inside the
dynamic-evaluation scan, out of the capture's reach).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
from collections.abc import Iterator
from typing import Any

import jax
from flax import nnx

from nestlearn.memory.instruments import MemoryStats

__all__ = ["STATS", "capture_memory_stats", "record", "recording"]

#: Name of the `nnx.Intermediate` under which a module sows its instruments.
STATS = "memory_stats"

_RECORDING = contextvars.ContextVar("nestlearn_memory_stats", default=False)


def recording() -> bool:
    """Whether memory modules should compute and `record` their instruments (trace time)."""
    return _RECORDING.get()


@contextlib.contextmanager
def _recording() -> Iterator[None]:
    token = _RECORDING.set(True)
    try:
        yield
    finally:
        _RECORDING.reset(token)


def record(module: nnx.Module, stats: dict[str, MemoryStats] | None) -> None:
    """Stores `stats` of `module`'s memory for `capture_memory_stats` (nothing when None)."""
    if stats:
        module.sow(nnx.Intermediate, STATS, stats)


def _layer_of(path: tuple) -> int | None:
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
    for name, index in itertools.pairwise(keys):
        if name == "blocks" and isinstance(index, int):
            return index
    return None


def capture_memory_stats(
    model: nnx.Module, tokens: jax.Array
) -> tuple[jax.Array, dict[int, dict[str, MemoryStats]]]:
    """Runs `model(tokens)` on fresh sequences and collects its memories' instruments.

    Args:
      model: a `LanguageModel` (or any module whose blocks sit under `blocks/<i>`).
      tokens: [b, t] int tokens.

    Returns:
      (logits, {layer index: {memory name: MemoryStats}}); layers without an in-context memory
      are absent.

    Raises:
      ValueError: a layer records the same memory name twice.
    """
    if getattr(model, "online", False):
        logits, _ = model(tokens)
        return logits, {}
    with _recording():
        (logits, _), captured = nnx.capture(lambda m, x: m(x), nnx.Intermediate)(model, tokens)
    layers: dict[int, dict[str, MemoryStats]] = {}
    for path, value in jax.tree_util.tree_flatten_with_path(captured, is_leaf=_is_stats)[0]:
        layer = _layer_of(path)
        if layer is None:
            continue
        for name, stats in value.items():
            if name in layers.setdefault(layer, {}):
                raise ValueError(f"layer {layer} recorded memory {name!r} twice")
            layers[layer][name] = stats
    return logits, layers


def _is_stats(node: Any) -> bool:
    """Whether `node` is what `record` stores: a non-empty {name: MemoryStats} dict."""
    return (
        isinstance(node, dict)
        and bool(node)
        and all(isinstance(v, MemoryStats) for v in node.values())
    )
