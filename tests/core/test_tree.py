"""Key paths: one `/`-joined string per leaf, aligned with `jax.tree.leaves`, NNX-aware."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from nestlearn.core import flatten_with_paths, key_path_str, tree_paths


class Pair(NamedTuple):
    value: jax.Array  # a NamedTuple field named `value` is a real key and must be kept
    scale: jax.Array


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.w_in = nnx.Linear(2, 3, rngs=rngs)
        self.w_out = nnx.Linear(3, 2, use_bias=False, rngs=rngs)


class Stack(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.blocks = nnx.List([Block(rngs) for _ in range(2)])
        self.norm = nnx.Param(jnp.ones(2))
        self.memory = nnx.Variable(jnp.zeros(2))  # not an nnx.Param: left out by the split


def test_plain_containers():
    tree = {"w": jnp.zeros(1), "b": [jnp.zeros(1), (jnp.zeros(1), None)], "p": Pair(1.0, 2.0)}
    assert tree_paths(tree) == ["b/0", "b/1/0", "p/value", "p/scale", "w"]


def test_paths_align_with_leaves():
    tree = {"z": [1.0, 2.0], "a": {"y": 3.0, "x": Pair(4.0, 5.0)}}
    pairs, treedef = flatten_with_paths(tree)
    assert [leaf for _, leaf in pairs] == jax.tree.leaves(tree)
    assert jax.tree.unflatten(treedef, [leaf for _, leaf in pairs]) == tree
    assert dict(pairs) == {"a/x/value": 4.0, "a/x/scale": 5.0, "a/y": 3.0, "z/0": 1.0, "z/1": 2.0}


def test_key_path_str_matches_jax_key_paths():
    tree = {"a": [{"b": 1.0}]}
    ((key_path, _),) = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert key_path_str(key_path) == "a/0/b"
    assert key_path_str(()) == ""


def test_nnx_state_paths_drop_the_variable_value_segment():
    _, params, _ = nnx.split(Stack(nnx.Rngs(0)), nnx.Param, ...)
    paths = tree_paths(params)
    assert paths == [
        "blocks/0/w_in/bias",
        "blocks/0/w_in/kernel",
        "blocks/0/w_out/kernel",
        "blocks/1/w_in/bias",
        "blocks/1/w_in/kernel",
        "blocks/1/w_out/kernel",
        "norm",
    ]
    raw = [key_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert raw == [path + "/value" for path in paths]
    # Gradients with respect to an nnx.State have the same structure and the same paths.
    grads = jax.grad(lambda s: sum(jnp.sum(x) for x in jax.tree.leaves(s)))(params)
    assert tree_paths(grads) == paths
