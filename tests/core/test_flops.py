"""nestlearn.core.count_flops against XLA's cost analysis of loop-free programs."""

import jax
import jax.numpy as jnp
import pytest

from nestlearn.core import count_flops


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def _scanned(unroll):
    def fn(x, w):  # x [8, 16], w [16, 16]
        def body(h, _):
            return h @ w + h, None

        return jax.lax.scan(body, x, None, length=12, unroll=unroll)[0].sum()

    return fn


ARGS = (jnp.ones((8, 16)), jnp.full((16, 16), 0.01))


def test_a_dense_step_matches_xla():
    def loss(w1, w2, x):
        return jnp.sum(jnp.maximum(x @ w1, 0.0) @ w2)

    args = (jnp.ones((16, 32)), jnp.ones((32, 8)), jnp.ones((4, 16)))
    step = jax.value_and_grad(loss, argnums=(0, 1))
    assert count_flops(step, *args).flops == pytest.approx(_xla_flops(step, *args), rel=0.05)


@pytest.mark.parametrize("grad", [False, True])
def test_a_scan_counts_every_iteration_as_xla_does_unrolled(grad):
    rolled, unrolled = _scanned(1), _scanned(True)
    if grad:
        rolled, unrolled = jax.grad(rolled, argnums=1), jax.grad(unrolled, argnums=1)
    counted = count_flops(rolled, *ARGS)
    assert counted.while_loops == 0
    # Within 10%: the jaxpr keeps a few elementwise ops (zeros, add_any) that XLA simplifies away.
    assert counted.flops == pytest.approx(_xla_flops(unrolled, *ARGS), rel=0.1)
    # What the counter is for: XLA counts the loop body once.
    assert _xla_flops(rolled, *ARGS) < counted.flops / 4


def test_matmul_part_remat_cond_and_while():
    x = jnp.ones((8, 8))
    dot = 2.0 * 8**3
    assert count_flops(lambda a: a @ a, x).matmul_flops == dot
    # jax.checkpoint under grad recomputes the forward matmul: 1 forward + 1 recompute + 2 backward.
    remat = jax.grad(lambda a: jax.checkpoint(lambda b: jnp.tanh(b @ b))(a).sum())
    assert count_flops(remat, x).matmul_flops == 4 * dot
    branch = lambda a: jax.lax.cond(a[0, 0] > 0, lambda b: b @ b @ b, lambda b: b @ b, a)
    assert count_flops(branch, x).matmul_flops == 2 * dot  # the costlier branch
    body = lambda c: (c[0] @ c[0], c[1] + 1)
    loop = lambda a: jax.lax.while_loop(lambda c: c[1] < 5, body, (a, 0))
    counted = count_flops(loop, x)
    assert counted.while_loops == 1 and counted.matmul_flops == dot  # one iteration, flagged


def test_a_pallas_call_counts_zero():
    from jax.experimental import pallas as pl

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...] @ x_ref[...]

    x = jnp.ones((8, 8))
    call = pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), interpret=True)
    assert count_flops(lambda a: call(a) + a @ a, x).matmul_flops == 2.0 * 8**3  # a @ a only
