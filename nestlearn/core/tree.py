"""Readable key paths for pytree leaves.

A leaf's key path is the sequence of keys that leads to it from the root of a pytree. This module
renders it as one `/`-joined string — `blocks/0/mlp/w_in/kernel` — that reads the same for dicts,
lists, tuples, NamedTuples, dataclasses and flax NNX `nnx.State` trees. Level specs
(`nestlearn.core.Level`) select parameters by matching these strings.

In flax NNX, every parameter is an `nnx.Variable` whose array sits under the attribute `value`,
so `jax.tree_util.tree_flatten_with_path` ends each path with `GetAttrKey('value')`. That segment
says nothing about the parameter and is dropped here: a kernel's path is `.../w_in/kernel`, not
`.../w_in/kernel/value`. A NamedTuple field or dict key named `value` is kept.

Paths are returned in the order of `jax.tree.leaves(tree)`, so position `i` of `tree_paths(tree)`
names leaf `i` of the flattened tree.
"""

from typing import Any

import jax
from flax import nnx

__all__ = ["flatten_with_paths", "key_path_str", "tree_paths"]

_VARIABLE_VALUE = jax.tree_util.GetAttrKey("value")


def _key_str(key: Any) -> str:
    """One key-path entry as text: a dict key, a sequence index or an attribute name."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def key_path_str(key_path: tuple[Any, ...]) -> str:
    """Joins a JAX key path with `/`.

    Args:
      key_path: a key path as produced by `jax.tree_util.tree_flatten_with_path`.

    Returns:
      The keys joined with `/`, e.g. `"blocks/0/w_in/kernel"`; `""` for the root.
    """
    return "/".join(_key_str(key) for key in key_path)


def _is_variable(node: Any) -> bool:
    return isinstance(node, nnx.Variable)


def flatten_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], jax.tree_util.PyTreeDef]:
    """Flattens a pytree into `(path, leaf)` pairs with readable `/`-joined paths.

    Example:
      >>> flatten_with_paths({"w": 1.0, "b": [2.0, 3.0]})[0]
      [('b/0', 2.0), ('b/1', 3.0), ('w', 1.0)]

    Args:
      tree: any pytree, including an `nnx.State` of `nnx.Variable`s.

    Returns:
      `(pairs, treedef)`: one `(path, leaf)` pair per leaf, in the order of `jax.tree.leaves`
      (so `jax.tree.unflatten(treedef, [leaf for _, leaf in pairs])` rebuilds `tree`), and the
      tree's structure.
    """
    leaves, treedef = jax.tree.flatten(tree)
    top, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)
    paths = []
    for key_path, node in top:
        if not _is_variable(node):
            paths.append(key_path_str(key_path))
            continue
        for sub_path, _ in jax.tree_util.tree_flatten_with_path(node)[0]:
            if sub_path[:1] == (_VARIABLE_VALUE,):
                sub_path = sub_path[1:]
            paths.append(key_path_str(key_path + sub_path))
    return list(zip(paths, leaves, strict=True)), treedef


def tree_paths(tree: Any) -> list[str]:
    """The `/`-joined key path of every leaf, in the order of `jax.tree.leaves(tree)`.

    Args:
      tree: any pytree, including an `nnx.State` of `nnx.Variable`s.

    Returns:
      One path string per leaf, e.g. `["blocks/0/w_in/bias", "blocks/0/w_in/kernel", ...]`.
    """
    return [path for path, _ in flatten_with_paths(tree)[0]]
