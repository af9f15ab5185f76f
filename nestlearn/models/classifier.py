"""A multilayer perceptron classifier as pure functions over a dict of weights.

The small model of the optimizer studies and benchmarks (Fashion-MNIST, digits): layers
h_{i+1} = σ(h_i W_i + b_i), the last one linear, cross-entropy on integer labels. Weights are
normal with variance g/d_in (He for ReLU, g = 2; LeCun for tanh, g = 1), biases zero.

Shapes: b batch, d_in input width, k classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

__all__ = ["MLP_ACTIVATIONS", "mlp_init", "mlp_logits", "mlp_loss"]

#: activation name -> (σ, g: the weights' initial variance times d_in)
MLP_ACTIVATIONS = {"relu": (jax.nn.relu, 2.0), "tanh": (jnp.tanh, 1.0)}


def _activation(name: str):
    if name not in MLP_ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not one of {tuple(MLP_ACTIVATIONS)}")
    return MLP_ACTIVATIONS[name]


def mlp_init(key: jax.Array, sizes: Sequence[int], *, activation: str = "relu") -> dict:
    """{"w0": [sizes[0], sizes[1]], "b0": [sizes[1]], …}: one split of `key` per layer, in order.

    Raises:
      ValueError: fewer than two sizes, a size < 1, or an unknown activation.
    """
    _, g = _activation(activation)
    if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
        raise ValueError(f"sizes must be ≥ 2 positive widths (input … classes), got {sizes}")
    params = {}
    for i in range(len(sizes) - 1):
        key, sub = jax.random.split(key)
        d_in, d_out = int(sizes[i]), int(sizes[i + 1])
        params[f"w{i}"] = jax.random.normal(sub, (d_in, d_out)) * math.sqrt(g / d_in)
        params[f"b{i}"] = jnp.zeros((d_out,))
    return params


def mlp_logits(params: dict, x: jax.Array, *, activation: str = "relu") -> jax.Array:
    """x [b, d_in] → logits [b, k]."""
    sigma, _ = _activation(activation)
    n = len(params) // 2
    h = x
    for i in range(n):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = sigma(h)
    return h


def mlp_loss(params: dict, x: jax.Array, y: jax.Array, *, activation: str = "relu") -> jax.Array:
    """Mean cross-entropy of the logits of x [b, d_in] against integer labels y [b]."""
    logits = mlp_logits(params, x, activation=activation)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
