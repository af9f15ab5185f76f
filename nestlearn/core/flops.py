"""Floating-point operation counts of a traced function, loops counted per iteration.

XLA's ``compiled.cost_analysis()`` counts the body of a while loop once, whatever its trip
count: a ``lax.scan`` of 100 matmuls reports the FLOPs of one. Every chunk-parallel memory runs
in such loops, so XLA's figure understates a recurrent model's work by about its number of
chunks. :func:`count_flops` walks the jaxpr instead and multiplies each ``scan`` body by its
length. The rules:

* ``dot_general``: 2 · (output elements) · (contracted size);
* elementwise arithmetic and reductions: one per output element (per input element for a
  reduction), as XLA counts them;
* layout and data movement (reshape, transpose, slice, gather, broadcast, convert): zero;
* ``scan``: ``length`` × its body; ``cond``: the costliest branch; any other primitive with
  sub-jaxprs (jit, remat, custom_jvp/vjp): the sum of them once; a ``shard_map`` body once, at
  its per-shard shapes; ``pallas_call``: zero (its body is a kernel program, not counted);
* ``while``: its body once, and the loop is counted in ``FlopCount.while_loops`` (its trip count
  is not known from the jaxpr).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex

# One FLOP per output element.
_ELEMENTWISE = frozenset(
    """abs acos acosh add add_any asin asinh atan atan2 atanh cbrt ceil clamp cos cosh cumlogsumexp
    cummax cummin cumprod cumsum digamma div erf erf_inv erfc exp exp2 expm1 floor igamma lgamma log
    log1p logistic max min mul neg nextafter pow integer_pow rem round rsqrt select_n sign sin sinh
    sqrt square sub tan tanh""".split()
)
# One FLOP per input element.
_REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_precision argmax argmin".split()
)


class FlopCount(NamedTuple):
    """Result of :func:`count_flops`.

    Attributes:
      flops: floating-point operations of one call.
      matmul_flops: the part of ``flops`` in ``dot_general``.
      while_loops: number of ``while`` loops met, each counted as one iteration.
    """

    flops: float
    matmul_flops: float
    while_loops: int


def _size(aval: Any) -> int:
    return math.prod(getattr(aval, "shape", ()))


def _dot_flops(eqn: jex.JaxprEqn) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contracted = math.prod(lhs_shape[i] for i in lhs_contract)
    return 2.0 * _size(eqn.outvars[0].aval) * contracted


def _sub_jaxprs(params: dict) -> list[jex.Jaxpr]:
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jex.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jex.Jaxpr):
                found.append(item)
    return found


def _count(jaxpr: jex.Jaxpr) -> tuple[float, float, int]:
    flops = matmul = 0.0
    loops = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            f = _dot_flops(eqn)
            flops, matmul = flops + f, matmul + f
        elif name in _ELEMENTWISE:
            flops += sum(_size(v.aval) for v in eqn.outvars)
        elif name in _REDUCTIONS:
            flops += _size(eqn.invars[0].aval)
        elif name == "pallas_call":
            continue
        elif name == "cond":
            branches = [_count(b.jaxpr) for b in eqn.params["branches"]]
            f, m, n = max(branches, key=lambda c: c[0])
            flops, matmul, loops = flops + f, matmul + m, loops + n
        else:
            times = eqn.params["length"] if name == "scan" else 1
            loops += name == "while"
            for sub in _sub_jaxprs(eqn.params):
                f, m, n = _count(sub)
                flops, matmul, loops = flops + times * f, matmul + times * m, loops + n
    return flops, matmul, loops


def count_flops(fn: Callable, *args: Any, **kwargs: Any) -> FlopCount:
    """FLOPs of one call ``fn(*args, **kwargs)``, traced with :func:`jax.make_jaxpr`.

    Counts what the traced program computes, recomputation under ``jax.checkpoint`` included;
    XLA may later remove dead or duplicate work.

    Args:
      fn: a JAX-traceable function.
      *args: its arguments (arrays or ``jax.ShapeDtypeStruct``).
      **kwargs: its keyword arguments.

    Returns:
      The :class:`FlopCount`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> step = lambda x: jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=10)[0]
      >>> count_flops(step, jnp.ones((8, 8))).flops  # 10 matmuls of 2·8³
      10240.0
    """
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    return FlopCount(*_count(closed.jaxpr))
