"""Argument checks shared by the memories and the kernels."""

import operator
from typing import Any


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
