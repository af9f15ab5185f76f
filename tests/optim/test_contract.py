"""The contract every optimizer in `nestlearn.optim` keeps (after optax/contrib/_common_test.py).

Each transform, in every form: runs under `jax.jit` without recompiling on later calls; returns
updates in the params' dtype (bfloat16 and float32) with a state whose structure, shapes and
dtypes do not change, so `lax.cond` can choose between an updated and a carried state; is pure
(the same call gives the same result and leaves its inputs unchanged); composes in `optax.chain`;
works inside `optax.inject_hyperparams` (same updates and state) and inside `optax.MultiSteps`.
Out-of-domain hyperparameters are a ValueError naming the argument.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nestlearn.optim as no

# name -> (factory, kwargs, static args for inject_hyperparams)
OPTIMIZERS = {
    "momentum_memory": (no.momentum_memory, dict(learning_rate=0.1, beta=0.9), ()),
    "preconditioned_momentum": (
        no.preconditioned_momentum,
        dict(learning_rate=0.1, alpha=0.9, preconditioner=optax.scale_by_rms()),
        (),
    ),
    "delta_momentum": (no.delta_momentum, dict(learning_rate=0.1, alpha=0.9), ()),
    "delta_momentum_arxiv": (
        no.delta_momentum,
        dict(learning_rate=0.1, alpha=0.9, form="arxiv", erase_rate=0.5),
        (),
    ),
    "delta_momentum_neurips_square": (
        no.delta_momentum,
        dict(learning_rate=0.1, alpha=0.9, form="neurips"),
        (),
    ),
    "delta_momentum_rate_inside": (
        no.delta_momentum,
        dict(learning_rate=0.1, alpha=0.9, learning_rate_in="momentum"),
        (),
    ),
    "deep_momentum": (
        no.deep_momentum,
        dict(learning_rate=0.1, alpha=0.99, beta=0.9, inner_lr=0.1, hidden=4),
        ("hidden", "seed"),
    ),
    "deep_momentum_dot": (
        no.deep_momentum,
        dict(learning_rate=0.1, alpha=0.99, inner_lr=0.1, hidden=4, objective="dot"),
        ("hidden", "seed"),
    ),
    "feature_momentum": (
        no.feature_momentum,
        dict(learning_rate=0.1, alpha=0.9, coefficients=(0.0, 1.0, 0.0, 0.1)),
        (),
    ),
    "newton_schulz_momentum": (
        no.newton_schulz_momentum,
        dict(learning_rate=0.1, beta=0.9, ns_steps=3),
        ("ns_steps",),
    ),
    "m3": (
        no.m3,
        dict(learning_rate=0.1, ns_steps=3, slow_period=2),
        ("ns_steps", "slow_period"),
    ),
    "m3_separate": (
        no.m3,
        dict(learning_rate=0.1, ns_steps=3, slow_period=2, form="preconditioned"),
        ("ns_steps", "slow_period"),
    ),
    "m3_printed": (
        no.m3,
        dict(learning_rate=0.1, ns_steps=3, slow_period=2, form="printed", ema=False),
        ("ns_steps", "slow_period", "ema"),
    ),
    "dgd": (no.dgd, dict(learning_rate=0.1), ()),
}
NAMES = sorted(OPTIMIZERS)


def _problem(dtype, square=False):
    """A linear map with a bias (square leaves only: a [4, 4] kernel and a scalar bias)."""
    d_in = 4 if square else 3
    params = {
        "w": jnp.full((d_in, 4), 0.5, dtype),
        "b": jnp.asarray(0.3, dtype) if square else jnp.linspace(-1.0, 1.0, 4, dtype=dtype),
    }
    inputs = jnp.linspace(-1.0, 2.0, 2 * d_in, dtype=dtype).reshape(2, d_in)

    def loss(p):
        return jnp.sum((inputs @ p["w"] + p["b"] - 1.0) ** 2)

    return params, loss, {"layer_inputs": {"w": inputs, "b": None}}


def _setup(name, dtype):
    return _problem(jnp.dtype(dtype), square=name.endswith("_square"))


def _extra(name, extra):
    return extra if name == "dgd" else {"unexpected_extra_arg": 1}


def _signature(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_jit_dtype_cond_and_no_recompile(name, dtype):
    factory, kwargs, _ = OPTIMIZERS[name]
    tx = factory(**kwargs)
    params, loss, extra = _setup(name, dtype)
    extra = _extra(name, extra)
    traces = []

    @jax.jit
    def step(params, state, apply):
        traces.append(None)
        grads = jax.grad(loss)(params)
        updates, state = jax.lax.cond(
            apply,
            lambda: tx.update(grads, state, params, **extra),
            lambda: (jax.tree.map(jnp.zeros_like, params), state),
        )
        return optax.apply_updates(params, updates), state, updates

    state = tx.init(params)
    init_signature = _signature(state)
    for apply in (True, False, True):
        params, state, updates = step(params, state, jnp.asarray(apply))
        assert _signature(state) == init_signature
        for u in jax.tree.leaves(updates):
            assert u.dtype == jnp.dtype(dtype)
    assert len(traces) == 1, "the jitted update retraced on a later call"
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams(name):
    factory, kwargs, static = OPTIMIZERS[name]
    params, loss, extra = _setup(name, jnp.float32)
    extra = _extra(name, extra)
    grads = jax.grad(loss)(params)
    tx = factory(**kwargs)
    injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
    updates, state = jax.jit(lambda s: tx.update(grads, s, params, **extra))(tx.init(params))
    updates_i, state_i = jax.jit(lambda s: injected.update(grads, s, params, **extra))(
        injected.init(params)
    )
    for a, b in zip(jax.tree.leaves(updates_i), jax.tree.leaves(updates), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state_i.inner_state), jax.tree.leaves(state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_multisteps(name):
    factory, kwargs, _ = OPTIMIZERS[name]
    tx = optax.MultiSteps(factory(**kwargs), every_k_schedule=2)
    params, loss, extra = _setup(name, jnp.float32)
    extra = _extra(name, extra)
    grads = jax.grad(loss)(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))
    state = tx.init(params)
    updates, state = update(grads, state, params)
    for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(u, jnp.zeros_like(u))
    updates, state = update(grads, state, params)
    assert any(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", NAMES)
def test_state_can_be_donated(name):
    """No two state leaves share a buffer, so a train step may donate the whole state."""
    factory, kwargs, _ = OPTIMIZERS[name]
    params, _, _ = _setup(name, jnp.float32)
    state = factory(**kwargs).init(params)
    leaves = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
    assert len({id(x) for x in leaves}) == len(leaves)
    jax.block_until_ready(jax.jit(lambda s: s, donate_argnums=0)(state))


@pytest.mark.parametrize("name", NAMES)
def test_pure_and_chains(name):
    """update(g, s, p) twice gives the same result, leaves s unchanged, and chains."""
    factory, kwargs, _ = OPTIMIZERS[name]
    tx = factory(**kwargs)
    params, loss, extra = _setup(name, jnp.float32)
    extra = _extra(name, extra)
    grads = jax.grad(loss)(params)
    state = tx.init(params)
    before = jax.tree.map(np.array, state)
    update = jax.jit(lambda g, s: tx.update(g, s, params, **extra))
    first, second = update(grads, state), update(grads, state)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(a, b)
    chained = optax.chain(optax.scale(2.0), tx)
    updates, _ = jax.jit(lambda s: chained.update(grads, s, params, **extra))(chained.init(params))
    expected, _ = update(jax.tree.map(lambda g: 2.0 * g, grads), state)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# (factory, bad keyword arguments, the argument the message must name)
BAD_HYPERPARAMETERS = [
    *[
        (factory, {**kwargs, "learning_rate": -0.1}, "learning_rate")
        for factory, kwargs, _ in OPTIMIZERS.values()
    ],
    (no.momentum_memory, dict(learning_rate=0.1, beta=1.5), "beta"),
    (no.preconditioned_momentum, dict(learning_rate=0.1, alpha=-0.1), "alpha"),
    (no.feature_momentum, dict(learning_rate=0.1, alpha=2.0), "alpha"),
    (no.delta_momentum, dict(learning_rate=0.1, alpha=1.5), "alpha"),
    (no.delta_momentum, dict(learning_rate=0.1, erase_rate=-1.0), "erase_rate"),
    (no.delta_momentum, dict(learning_rate=0.1, form="other"), "form"),
    (no.delta_momentum, dict(learning_rate=0.1, learning_rate_in="other"), "learning_rate_in"),
    (no.deep_momentum, dict(learning_rate=0.1, alpha=1.5), "alpha"),
    (no.deep_momentum, dict(learning_rate=0.1, beta=-0.5), "beta"),
    (no.deep_momentum, dict(learning_rate=0.1, inner_lr=-0.1), "inner_lr"),
    (no.newton_schulz_momentum, dict(learning_rate=0.1, ns_steps=0), "ns_steps"),
    (no.newton_schulz_momentum, dict(learning_rate=0.1, beta=1.1), "beta"),
    (no.m3, dict(learning_rate=0.1, ns_steps=0), "ns_steps"),
    (no.m3, dict(learning_rate=0.1, slow_period=0), "slow_period"),
    (no.m3, dict(learning_rate=0.1, beta1=1.5), "beta1"),
    (no.m3, dict(learning_rate=0.1, alpha=-1.0), "alpha"),
    (no.m3, dict(learning_rate=0.1, form="other"), "form"),
    (lambda **kw: no.newton_schulz(jnp.eye(2), **kw), dict(steps=0), "steps"),
]


@pytest.mark.parametrize(
    "factory, kwargs, argument",
    BAD_HYPERPARAMETERS,
    ids=[f"{i}-{arg}" for i, (_, _, arg) in enumerate(BAD_HYPERPARAMETERS)],
)
def test_out_of_domain_hyperparameters_name_the_argument(factory, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        factory(**kwargs)
