"""Memory architectures: the function class M(·) that an associative memory stores.

Each architecture is a pair of pure functions (Def. 1, Eq. 6, arXiv 2512.24695): ``init`` builds the
meta-learned initial weights for ``heads`` independent memories (every leaf has a leading head axis
``[h, ...]``) and ``apply`` evaluates one head's memory on inputs of any leading shape. Multi-head
memories are ``jax.vmap(arch.apply)`` over that head axis.

Weights use the column convention of docs/SEMANTICS.md §5.1: a layer is ``W ∈ R^{d_out×d_in}``
and maps ``x ↦ W x``; layers carry no biases (Titans' memory MLP and Hope's Eq. 89/91 have none).

Shapes: h heads, d_in input width, d_out output width, n hidden width.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "identity": lambda x: x,
}


class MemoryArch(NamedTuple):
    """An associative-memory architecture as pure functions.

    Attributes:
      name: short description, e.g. ``"mlp(depth=2, hidden=64, silu)"``.
      init: ``init(key, *, heads, d_in, d_out, dtype=jnp.float32) -> params`` with every leaf shaped
        ``[h, ...]``.
      apply: ``apply(params_one_head, x) -> y``; x: ``[..., d_in]``, y: ``[..., d_out]``.
      input_weight: key of the input-side weight ``[d_out_layer, d_in]`` (the first layer applied to
        the input), on which the DGD factor (αI − η k kᵀ) of Eq. 88 acts (docs/SEMANTICS.md §5.4).
    """

    name: str
    init: Callable[..., Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    input_weight: str


def _activation(activation: str) -> Callable[[jax.Array], jax.Array]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[activation]


def _check_sizes(heads: int, **widths: int) -> None:
    for name, value in {"heads": heads, **widths}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _normal(key: jax.Array, heads: int, d_out: int, d_in: int, dtype: Any) -> jax.Array:
    """LeCun-normal weights [h, d_out, d_in] with variance 1/d_in."""
    w = jax.random.normal(key, (heads, d_out, d_in), jnp.float32) / jnp.sqrt(d_in)
    return w.astype(dtype)


def _linear(w: jax.Array, x: jax.Array) -> jax.Array:
    # w: [d_out, d_in], x: [..., d_in] -> [..., d_out]
    return jnp.einsum("oi,...i->...o", w, x)


def _check_input(params: Params, key: str, x: jax.Array) -> None:
    d_in = params[key].shape[-1]
    if x.shape[-1] != d_in:
        raise ValueError(f"x has shape {x.shape}, expected last axis {d_in} (weight {key!r})")


def matrix() -> MemoryArch:
    """Matrix (linear) memory M(x) = W x, W ∈ R^{d_out×d_in} (Eqs. 14–18, arXiv 2512.24695).

    ``init`` returns zeros, the empty memory that linear attention and DeltaNet start from.
    """

    def init(key, *, heads, d_in, d_out, dtype=jnp.float32):
        del key
        _check_sizes(heads, d_in=d_in, d_out=d_out)
        return {"w": jnp.zeros((heads, d_out, d_in), dtype)}

    def apply(params, x):
        _check_input(params, "w", x)
        return _linear(params["w"], x)

    return MemoryArch("matrix", init, apply, "w")


def mlp(depth: int, hidden: int, activation: str = "silu") -> MemoryArch:
    """MLP memory with ``depth`` ≥ 1 bias-free layers (Titans §3.1, Eqs. 11–15).

    M(x) = W_{L−1} σ(… σ(W_0 x)); weights ``"w0"`` (input side, [h, n, d_in]) … ``"w{L-1}"``
    ([h, d_out, n]); ``depth=1`` is the matrix memory W_0 x (with random, not zero, init).

    Args:
      depth: number of layers L ≥ 1.
      hidden: hidden width n of layers 1..L−1 (unused when depth is 1).
      activation: one of ``ACTIVATIONS``.
    """
    _check_sizes(1, depth=depth, hidden=hidden)
    sigma = _activation(activation)

    def init(key, *, heads, d_in, d_out, dtype=jnp.float32):
        _check_sizes(heads, d_in=d_in, d_out=d_out)
        widths = [d_in] + [hidden] * (depth - 1) + [d_out]
        keys = jax.random.split(key, depth)
        return {
            f"w{i}": _normal(keys[i], heads, widths[i + 1], widths[i], dtype) for i in range(depth)
        }

    def apply(params, x):
        _check_input(params, "w0", x)
        h = x
        for i in range(depth):
            h = _linear(params[f"w{i}"], h)
            if i < depth - 1:
                h = sigma(h)
        return h

    return MemoryArch(f"mlp(depth={depth}, hidden={hidden}, {activation})", init, apply, "w0")


def residual_mlp(hidden: int, activation: str = "silu") -> MemoryArch:
    """Residual two-layer MLP memory M(x) = x + W₁ σ(W₂ x) (Eqs. 89/91, arXiv 2512.24695).

    Weights ``"w2"`` (input side, [h, n, d]) and ``"w1"`` (output side, [h, d, n]); ``init`` draws
    W₂ LeCun-normal and sets W₁ = 0 so every memory starts as the identity map. ``d_out`` must equal
    ``d_in``.

    Args:
      hidden: hidden width n.
      activation: σ, one of ``ACTIVATIONS`` (the paper does not state it; docs/SEMANTICS.md
        §1.2 row 15).
    """
    _check_sizes(1, hidden=hidden)
    sigma = _activation(activation)

    def init(key, *, heads, d_in, d_out, dtype=jnp.float32):
        _check_sizes(heads, d_in=d_in, d_out=d_out)
        if d_out != d_in:
            raise ValueError(f"residual_mlp needs d_out == d_in, got d_in={d_in}, d_out={d_out}")
        return {
            "w1": jnp.zeros((heads, d_in, hidden), dtype),
            "w2": _normal(key, heads, hidden, d_in, dtype),
        }

    def apply(params, x):
        _check_input(params, "w2", x)
        return x + _linear(params["w1"], sigma(_linear(params["w2"], x)))

    return MemoryArch(f"residual_mlp(hidden={hidden}, {activation})", init, apply, "w2")


def apply_heads(arch: MemoryArch, params: Params, x: jax.Array) -> jax.Array:
    """Applies a multi-head memory: params leaves [h, ...], x [..., h, d_in] -> [..., h, d_out]."""
    heads = jax.tree.leaves(params)[0].shape[0]
    if x.ndim < 2 or x.shape[-2] != heads:
        raise ValueError(f"x has shape {x.shape}, expected [..., heads={heads}, d_in]")
    return jax.vmap(arch.apply, in_axes=(0, -2), out_axes=-2)(params, x)
