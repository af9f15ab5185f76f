"""Parameter counting."""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from nestlearn.core.tree import flatten_with_paths

#: The top-level parameter groups of a `LanguageModel` that map tokens to and from vectors.
EMBEDDING_GROUPS = ("embed", "head")


def count_params(model_or_state: Any, *, embedding: bool = True) -> int:
    """Number of scalar parameters.

    Args:
      model_or_state: an `nnx.Module` (its `nnx.Param` variables are counted, not fast state)
        or any pytree of arrays (e.g. `nnx.split(model, nnx.Param, ...)[1]`; every leaf counted).
      embedding: False leaves out the token embedding and an untied output head (the leaves
        under a top-level `embed` or `head`): the non-embedding count that model comparisons
        match, since the vocabulary's share differs between tokenizers.
    """
    tree = (
        nnx.state(model_or_state, nnx.Param)
        if isinstance(model_or_state, nnx.Module)
        else (model_or_state)
    )
    pairs = flatten_with_paths(tree)[0]
    return int(
        sum(
            np.prod(np.shape(leaf), dtype=np.int64)
            for path, leaf in pairs
            if embedding or path.split("/")[0] not in EMBEDDING_GROUPS
        )
    )
