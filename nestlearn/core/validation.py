"""Argument checks shared by the memories and the kernels."""

import operator
from typing import Any

import jax
import numpy as np


def check_chunk_size(chunk_size: Any) -> int:
    """Returns `chunk_size` as an int ≥ 1 (numpy integers accepted); ValueError otherwise."""
    message = f"chunk_size must be a positive int, got {chunk_size!r}"
    if isinstance(chunk_size, bool):
        raise ValueError(message)
    try:
        size = operator.index(chunk_size)
    except TypeError:
        raise ValueError(message) from None
    if size < 1:
        raise ValueError(message)
    return size


def is_concrete(x: Any) -> bool:
    """Whether `x` holds values that can be read on the host now (not a tracer, not an array
    spread over other processes); only such values are range-checked."""
    if isinstance(x, jax.core.Tracer):
        return False
    return not isinstance(x, jax.Array) or x.is_fully_addressable


def check_token_ids(tokens: Any, vocab_size: int, *, name: str = "tokens") -> None:
    """ValueError naming the first id of `tokens` outside [0, vocab_size) and where it is.

    Checks concrete values only (`is_concrete`); inside `jit` the ids are not known and are not
    checked (an id ≥ vocab_size would give NaN logits there).
    """
    if not is_concrete(tokens):
        return
    ids = np.asarray(tokens)
    if not ids.size:
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}{list(where)} = {ids[where]} is not a token id: ids must lie in "
            f"[0, {vocab_size}) (the vocabulary size); {int(bad.sum())} of {ids.size} are outside"
        )


def check_unit_interval(x: Any, *, name: str) -> None:
    """ValueError naming the first value of `x` outside [0, 1] (or NaN) and where it is.

    Checks concrete values only (`is_concrete`).
    """
    if x is None or not is_concrete(x):
        return
    values = np.asarray(x, dtype=np.float64)
    bad = ~((values >= 0.0) & (values <= 1.0))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}{list(where)} = {float(values[where])} is outside [0, 1]; {name} must lie in "
            f"[0, 1] ({int(bad.sum())} of {values.size} values are outside)"
        )


def check_nonempty(shape: tuple[int, ...], axes: str, *, name: str) -> None:
    """ValueError when an axis of `shape` is 0, naming it and the shape.

    Args:
      shape: the array's shape.
      axes: one letter per axis, e.g. "bthd" (b batch, t tokens, h heads, d width).
      name: the argument's name.
    """
    for letter, size in zip(axes, shape):
        if size == 0:
            raise ValueError(
                f"{name} has shape {tuple(shape)} [{', '.join(axes)}] with {letter} = 0; every "
                "axis needs at least one element (a batch of 0 sequences or of 0 tokens has "
                "nothing to compute)"
            )
