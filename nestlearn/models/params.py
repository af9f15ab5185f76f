"""Parameter counting."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx


def count_params(model_or_state: Any) -> int:
    """Number of scalar parameters.

    Args:
      model_or_state: an `nnx.Module` (its `nnx.Param` variables are counted, not fast state)
        or any pytree of arrays (e.g. `nnx.split(model, nnx.Param, ...)[1]`; every leaf counted).
    """
    tree = (
        nnx.state(model_or_state, nnx.Param)
        if isinstance(model_or_state, nnx.Module)
        else (model_or_state)
    )
    return int(sum(np.prod(np.shape(leaf), dtype=np.int64) for leaf in jax.tree.leaves(tree)))
