"""Retention gates: the multiplicative decay a memory applies to its state at every write.

A retention turns the per-token gate α_t handed to an inner rule into a decay factor a_t that
multiplies the weights before the new write (Miras' retention axis, arXiv 2504.13173):

- ``none()``: a_t = 1 (no gate is read);
- ``scalar()``: a_t = α_t, a scalar per token and head (Hope's α_t I, Eq. 88; GDN's α_t);
- ``forget_gate()``: a_t = 1 − α_t, Titans' forget gate (Titans Eq. 13);
- ``per_channel()``: a_t = diag(α_t) with α_t ∈ R^{d_in} acting on the input axis of the memory's
  input-side weight (GLA-style decay of key channels); the other weights of a deep memory are not
  decayed.

Padded tokens (``mask`` 0) get a_t = 1 so they leave the state unchanged.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Retention(NamedTuple):
    """A retention gate.

    Attributes:
      name: ``"none"``, ``"scalar"``, ``"forget_gate"`` or ``"per_channel"``.
      per_channel: whether the gate is a vector over the input channels ([c, d_in]) rather than a
        scalar per token ([c]).
    """

    name: str
    per_channel: bool

    def factor(self, gate: jax.Array | None, mask: jax.Array) -> jax.Array:
        """Decay factors a_t for a chunk.

        Args:
          gate: α_t, [c] (or [c, d_in] when ``per_channel``); ignored (may be None) for ``none``.
          mask: [c], 1 for real tokens and 0 for padding.

        Returns:
          [c] or [c, d_in] decay factors, 1 at padded tokens.
        """
        if self.name == "none":
            return jnp.ones(mask.shape, mask.dtype)
        if gate is None:
            raise ValueError(f"retention {self.name!r} needs the extra argument 'retention' (α_t)")
        want = mask.ndim + (1 if self.per_channel else 0)
        if gate.ndim != want or gate.shape[: mask.ndim] != mask.shape:
            raise ValueError(
                f"retention gate has shape {gate.shape}, expected {mask.shape}"
                + (" + (d_in,)" if self.per_channel else "")
                + f" for {self.name!r} retention"
            )
        a = 1 - gate if self.name == "forget_gate" else gate
        m = mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)).astype(bool)
        return jnp.where(m, a, jnp.ones_like(a))


def none() -> Retention:
    """No retention gate: a_t = 1."""
    return Retention("none", False)


def scalar() -> Retention:
    """Scalar decay a_t = α_t (Eq. 88, arXiv 2512.24695; GDN Eq. 10)."""
    return Retention("scalar", False)


def forget_gate() -> Retention:
    """Titans' forget gate a_t = 1 − α_t, α_t ∈ [0, 1] (Titans Eq. 13)."""
    return Retention("forget_gate", False)


def per_channel() -> Retention:
    """Per-channel decay diag(α_t), α_t ∈ R^{d_in}, on the input-side weight (GLA-style)."""
    return Retention("per_channel", True)
