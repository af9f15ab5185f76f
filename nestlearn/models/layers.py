"""Building blocks shared by every model (Titans §4.4; docs/SEMANTICS.md §6.1).

RMSNorm, the SwiGLU and two-layer MLPs, the short depthwise causal convolution (window 4) that
Titans and Hope put after the q/k/v projections, an ℓ2-normalisation helper for q and k, and the
output norm + linear gate placed before a mixer's output projection.

Shapes: b batch, t tokens, h heads, d width, f hidden width of an MLP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
}

DTYPES: Mapping[str, jnp.dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Returns the activation function called `name` (one of `ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not one of {tuple(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def compute_dtype(name: str) -> jnp.dtype:
    """Maps a config dtype string ("float32" / "bfloat16") to the compute dtype."""
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not one of {tuple(DTYPES)}")
    return DTYPES[name]


def mlp_hidden_size(d_model: int, mlp_ratio: float, multiple_of: int = 8) -> int:
    """Hidden width of a feed-forward layer: `mlp_ratio * d_model` rounded up to `multiple_of`."""
    if d_model < 1 or mlp_ratio <= 0:
        raise ValueError(f"need d_model >= 1 and mlp_ratio > 0, got {d_model=}, {mlp_ratio=}")
    hidden = round(mlp_ratio * d_model)
    return -(-hidden // multiple_of) * multiple_of


def accumulation_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float32, or float64 for float64 inputs: the precision of reductions and logits."""
    return jnp.promote_types(dtype, jnp.float32)


def l2_normalize(x: jax.Array, *, axis: int = -1, eps: float = 1e-6) -> jax.Array:
    """ℓ2-normalises `x` along `axis` (Titans §4.4: q and k are ℓ2-normalised), in float32."""
    x32 = x.astype(accumulation_dtype(x.dtype))
    y = x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=axis, keepdims=True) + eps)
    return y.astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, *, eps: float = 1e-6) -> jax.Array:
    """y = x / rms(x) * scale over the last axis, computed in float32, returned in x's dtype.

    Args:
      x: [..., d].
      scale: [d], or [b, d] per-sequence scales when x is [b, ..., d].
    """
    x32 = x.astype(accumulation_dtype(x.dtype))
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    scale = scale.astype(x32.dtype)
    if scale.ndim == 2:  # per-sequence [b, d]: broadcast over the middle axes of x
        scale = scale.reshape(scale.shape[:1] + (1,) * (x.ndim - 2) + scale.shape[1:])
    return (y * scale).astype(x.dtype)


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x @ w with either a shared weight w[d, f] or per-sequence weights w[b, d, f].

    Args:
      x: [b, ..., d].
      w: [d, f] or [b, d, f].

    Returns:
      [b, ..., f] in x's dtype.
    """
    w = w.astype(x.dtype)
    if w.ndim == 2:
        # Tokens flattened to one axis: XLA:CPU's weight gradient of a 3-D `x @ w` materialises a
        # transposed copy of the output gradient, which doubles the backward time of an MLP.
        return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])
    if w.ndim == 3 and w.shape[0] == x.shape[0]:
        return jnp.einsum("b...d,bdf->b...f", x, w)
    raise ValueError(f"weight of shape {w.shape} does not fit input of shape {x.shape}")


@jax.custom_vjp
def silu_gate(a: jax.Array, b: jax.Array) -> jax.Array:
    """The SwiGLU gate silu(a) ⊙ b = a σ(a) ⊙ b, with a hand-written backward.

    Gradients: ∂/∂a = g ⊙ b ⊙ σ(a)(1 + a(1 − σ(a))), ∂/∂b = g ⊙ a σ(a), computed from the saved
    inputs in one fused pass; XLA:CPU's code for autodiff through `jax.nn.silu(a) * b` takes
    several passes over the [.., f] arrays (measured: 2.5% of the Transformer++ train step at
    d 128, T 256, batch 4).

    Args:
      a, b: arrays of the same shape and dtype.
    """
    return a * jax.nn.sigmoid(a) * b


def _silu_gate_fwd(a, b):
    return silu_gate(a, b), (a, b)


def _silu_gate_bwd(residuals, g):
    a, b = residuals
    sig = jax.nn.sigmoid(a)
    silu = a * sig
    return g * b * (sig + silu * (1 - sig)), g * silu


silu_gate.defvjp(_silu_gate_fwd, _silu_gate_bwd)


def swiglu_apply(weights: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    """SwiGLU feed-forward, y = (silu(x W_gate) ⊙ x W_in) W_out.

    Args:
      weights: {"w_in": [d, f], "w_gate": [d, f], "w_out": [f, d]} (or each with a leading b axis).
      x: [b, ..., d].
    """
    hidden = silu_gate(matmul(x, weights["w_gate"]), matmul(x, weights["w_in"]))
    return matmul(hidden, weights["w_out"])


def mlp_apply(weights: Mapping[str, jax.Array], x: jax.Array, *, act: str = "gelu") -> jax.Array:
    """Two-layer MLP, y = σ(x W_in) W_out, with weights {"w_in": [d, f], "w_out": [f, d]}."""
    return matmul(activation(act)(matmul(x, weights["w_in"])), weights["w_out"])


def _kernel(layer: nnx.Linear) -> jax.Array:
    return layer.kernel[...]


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale (initialised to ones).

    Example:
      >>> norm = RMSNorm(32)
      >>> y = norm(jnp.ones((2, 5, 32)))
    """

    def __init__(self, dim: int, *, eps: float = 1e-6):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], eps=self.eps)


class SwiGLU(nnx.Module):
    """SwiGLU MLP (the Transformer++ feed-forward): `w_in`, `w_gate` [d, f] and `w_out` [f, d].

    Example:
      >>> mlp = SwiGLU(32, 96, rngs=nnx.Rngs(0))
      >>> y = mlp(jnp.ones((2, 5, 32)))   # [2, 5, 32]
    """

    def __init__(
        self,
        d_model: int,
        hidden: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        zero_out: bool = False,
        rngs: nnx.Rngs,
    ):
        out_init = nnx.initializers.zeros if zero_out else nnx.initializers.lecun_normal()
        self.dtype = dtype
        self.w_in = nnx.Linear(d_model, hidden, use_bias=False, rngs=rngs)
        self.w_gate = nnx.Linear(d_model, hidden, use_bias=False, rngs=rngs)
        self.w_out = nnx.Linear(hidden, d_model, use_bias=False, kernel_init=out_init, rngs=rngs)

    def weights(self) -> dict[str, jax.Array]:
        """The kernels as a dict of arrays, the input of `swiglu_apply`."""
        return {
            "w_in": _kernel(self.w_in),
            "w_gate": _kernel(self.w_gate),
            "w_out": _kernel(self.w_out),
        }

    def __call__(self, x: jax.Array) -> jax.Array:
        return swiglu_apply(self.weights(), x.astype(self.dtype))


class MLP(nnx.Module):
    """Two-layer MLP, y = σ(x W_in) W_out, with `w_in` [d, f] and `w_out` [f, d]."""

    def __init__(
        self,
        d_model: int,
        hidden: int,
        *,
        act: str = "gelu",
        dtype: jnp.dtype = jnp.float32,
        zero_out: bool = False,
        rngs: nnx.Rngs,
    ):
        activation(act)
        out_init = nnx.initializers.zeros if zero_out else nnx.initializers.lecun_normal()
        self.act = act
        self.dtype = dtype
        self.w_in = nnx.Linear(d_model, hidden, use_bias=False, rngs=rngs)
        self.w_out = nnx.Linear(hidden, d_model, use_bias=False, kernel_init=out_init, rngs=rngs)

    def weights(self) -> dict[str, jax.Array]:
        """The kernels as a dict of arrays, the input of `mlp_apply`."""
        return {"w_in": _kernel(self.w_in), "w_out": _kernel(self.w_out)}

    def __call__(self, x: jax.Array) -> jax.Array:
        return mlp_apply(self.weights(), x.astype(self.dtype), act=self.act)


class ShortConv(nnx.Module):
    """Depthwise causal 1-D convolution over time (Titans §4.4; Hope: window 4).

    y_t = Σ_{i<w} kernel[i] ⊙ x_{t−w+1+i}. The streaming state holds the last w−1 inputs, so a
    sequence fed in pieces with carried state gives the same output as one call.

    Example:
      >>> conv = ShortConv(32, rngs=nnx.Rngs(0))
      >>> y, state = conv(jnp.ones((2, 5, 32)))          # fresh sequence
      >>> y2, state = conv(jnp.ones((2, 3, 32)), state)  # continue it
    """

    def __init__(
        self,
        channels: int,
        *,
        window: int = 4,
        act: str | None = "silu",
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window=}")
        if act is not None:
            activation(act)
        self.window = window
        self.channels = channels
        self.act = act
        self.dtype = dtype
        bound = 1.0 / window**0.5
        kernel = jax.random.uniform(rngs.params(), (window, channels), jnp.float32, -bound, bound)
        self.kernel = nnx.Param(kernel)

    def init_state(self, batch_size: int) -> jax.Array:
        """Zeros [b, window−1, channels]: the inputs that precede a fresh sequence."""
        return jnp.zeros((batch_size, self.window - 1, self.channels), self.dtype)

    def __call__(self, x: jax.Array, state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Args: x [b, t, c]; state [b, w−1, c] or None. Returns (y [b, t, c], new state)."""
        if x.ndim != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"x must be [b, t, {self.channels}], got shape {x.shape}")
        x = x.astype(self.dtype)
        if state is None:
            state = self.init_state(x.shape[0])
        t = x.shape[1]
        xp = jnp.concatenate([state.astype(x.dtype), x], axis=1)  # [b, t+w−1, c]
        kernel = self.kernel[...].astype(x.dtype)
        y = sum(kernel[i] * xp[:, i : i + t] for i in range(self.window))
        if self.act is not None:
            y = activation(self.act)(y)
        new_state = xp[:, xp.shape[1] - (self.window - 1) :]
        return y, new_state


class OutputGate(nnx.Module):
    """Output norm + linear gate before the output projection (Titans §4.4).

    y = RMSNorm(o) ⊙ σ(x W_g), the norm taken per head over the head width.

    Example:
      >>> gate = OutputGate(32, num_heads=4, head_dim=8, rngs=nnx.Rngs(0))
      >>> y = gate(jnp.ones((2, 5, 4, 8)), jnp.ones((2, 5, 32)))   # [2, 5, 32]
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int,
        head_dim: int,
        act: str = "silu",
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        activation(act)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.act = act
        self.dtype = dtype
        self.norm = RMSNorm(head_dim)
        self.w_gate = nnx.Linear(d_model, num_heads * head_dim, use_bias=False, rngs=rngs)

    def __call__(self, o: jax.Array, x: jax.Array) -> jax.Array:
        """Args: o [b, t, h, d_h] (mixer output); x [b, t, d] (block input).

        Returns:
          [b, t, h·d_h].
        """
        expected = (*x.shape[:2], self.num_heads, self.head_dim)
        if o.shape != expected:
            raise ValueError(f"o must have shape {expected}, got {o.shape} (x: {x.shape})")
        gate = activation(self.act)(matmul(x.astype(self.dtype), _kernel(self.w_gate)))
        normed = self.norm(o.astype(self.dtype)).reshape(*x.shape[:2], -1)
        return normed * gate
