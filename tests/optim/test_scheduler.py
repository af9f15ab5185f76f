"""The level scheduler against a hand-written loop of Eq. 71 (arXiv 2512.24695), plus contracts.

The reference below is written straight from Eq. 71 with the half-open chunk (docs/levels.md):
level ℓ with period k keeps a running sum of its gradients and, on steps k, 2k, … (from 1),
hands the sum (or the sum / k) to its rule — SGD or Adam written out by hand in numpy float64 —
then clears the sum; on other steps its parameters and rule state stay as they were.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nestlearn.core import Level
from nestlearn.optim.scheduler import level_stats, make_train_step, nested

SHAPES = {"p1": (3,), "p2": (2, 2), "p3": (3,), "p5a": (2,), "p5b": (2,)}
PERIODS = {"one": 1, "two": 2, "three": 3, "five": 5}
OWNER = {"p1": "one", "p2": "two", "p3": "three", "p5a": "five", "p5b": "five"}
LR = {"one": 0.05, "two": 0.1, "three": 0.2, "five": 0.3}
CURVATURE = {"p1": 1.0, "p2": 2.0, "p3": 0.5, "p5a": 1.5, "p5b": 3.0}
COUPLING = 0.1
STEPS = 11


def _loss(params, targets):
    """Σ_leaf ½ c_leaf ||p − y||² + ½ γ (Σ all p)²: every gradient depends on every level."""
    fit = sum(0.5 * CURVATURE[n] * jnp.sum((params[n] - targets[n]) ** 2) for n in SHAPES)
    total = sum(jnp.sum(params[n]) for n in SHAPES)
    return fit + 0.5 * COUPLING * total**2


def _grad_reference(params, targets):
    total = sum(params[n].sum() for n in SHAPES)
    return {n: CURVATURE[n] * (params[n] - targets[n]) + COUPLING * total for n in SHAPES}


class _SGD:
    def __init__(self, lr):
        self.lr = lr

    def step(self, g):
        return -self.lr * g


class _Adam:
    """Adam (Kingma & Ba) with bias correction; t counts the rule's own applications."""

    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m = self.v = 0.0
        self.t = 0

    def step(self, g):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g**2
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return -self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def _levels(rule, accumulate):
    make = {"sgd": optax.sgd, "adam": optax.adam}[rule]
    return (
        Level("one", r"^p1$", make(LR["one"]), period=1, accumulate=accumulate),
        Level("two", r"^p2$", make(LR["two"]), period=2, accumulate=accumulate),
        Level("three", r"^p3$", make(LR["three"]), period=3, accumulate=accumulate),
        Level("five", r"^p5", make(LR["five"]), period=5, accumulate=accumulate),
    )


@pytest.mark.parametrize("accumulate", ["sum", "mean"])
@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_matches_hand_written_loop_step_by_step(x64, rule, accumulate):
    rng = np.random.default_rng(0)
    init = {n: rng.normal(size=s) for n, s in SHAPES.items()}
    targets = [{n: rng.normal(size=s) for n, s in SHAPES.items()} for _ in range(STEPS)]

    # Reference: Eq. 71 per leaf; one rule instance per leaf (all rules here are elementwise).
    ref = {n: v.copy() for n, v in init.items()}
    ref_rule = {n: (_SGD if rule == "sgd" else _Adam)(LR[OWNER[n]]) for n in SHAPES}
    ref_acc = {n: np.zeros(s) for n, s in SHAPES.items()}

    train = make_train_step(_loss, _levels(rule, accumulate), donate=False)
    params = {n: jnp.asarray(v) for n, v in init.items()}
    opt_state = train.init(params)
    for s in range(1, STEPS + 1):
        grads = _grad_reference(ref, targets[s - 1])
        for n in SHAPES:
            k = PERIODS[OWNER[n]]
            ref_acc[n] += grads[n]
            if s % k == 0:
                chunk = ref_acc[n] / k if accumulate == "mean" else ref_acc[n]
                ref[n] = ref[n] + ref_rule[n].step(chunk)
                ref_acc[n] = np.zeros_like(ref_acc[n])

        before = params
        targets_s = {n: jnp.asarray(v) for n, v in targets[s - 1].items()}
        params, opt_state, loss = train.step(params, opt_state, targets_s)
        np.testing.assert_allclose(float(loss), _loss(before, targets_s), rtol=1e-12)
        for n in SHAPES:
            np.testing.assert_allclose(params[n], ref[n], rtol=1e-10, atol=1e-12, err_msg=n)
            changed = not np.array_equal(params[n], before[n])
            assert changed == (s % PERIODS[OWNER[n]] == 0), (n, s)
        stats = level_stats(opt_state)
        assert {name: int(v) for name, v in stats.items()} == {
            name: s // k for name, k in PERIODS.items()
        }


def _params():
    return {"a": jnp.ones(2), "b": {"w": jnp.ones((2, 2)), "bias": jnp.ones(2)}}


@pytest.mark.parametrize(
    ("make_levels", "message"),
    [
        (lambda: (Level("w", r"w$", optax.sgd(1.0)),), r"leaf 'a' is claimed by no level"),
        (
            lambda: (Level("x", r"^b/", optax.sgd(1.0)), Level("y", r"bias|a", optax.sgd(1.0))),
            r"leaf 'b/bias' is claimed by levels 'x' and 'y'",
        ),
        (lambda: (Level("x", None, optax.sgd(1.0), period=0),), r"'x': period .* got period=0"),
        (lambda: (Level("x", None, optax.sgd(1.0), period=1.5),), r"'x': .*period=1.5"),
        (
            lambda: (Level("x", None, optax.sgd(1.0), accumulate="max"),),
            r"'x': accumulate must be one of .*'max'",
        ),
        (
            lambda: (Level("x", "a", optax.sgd(1.0)), Level("x", None, optax.sgd(1.0))),
            r"duplicate level name 'x'",
        ),
        (
            lambda: (Level("ghost", r"cms/", optax.sgd(1.0)), Level("x", None, optax.sgd(1.0))),
            r"level 'ghost' \(select='cms/'\) claims no parameter leaf",
        ),
    ],
    ids=["left-out", "claimed-twice", "period-0", "period-1.5", "max", "duplicate", "no-match"],
)
def test_bad_spec_raises_naming_leaf_or_level(make_levels, message):
    with pytest.raises(ValueError, match=message):
        nested(make_levels()).init(_params())


def test_inject_hyperparams_rule_and_changed_learning_rate():
    rule = optax.inject_hyperparams(optax.sgd)(learning_rate=0.5)
    tx = nested((Level("slow", r"^b/", rule, period=2), Level("fast", None, optax.sgd(1.0))))
    params = _params()
    state = tx.init(params)
    update = jax.jit(tx.update)
    grads = [jax.tree.map(lambda p, i=i: (i + 1.0) * jnp.ones_like(p), params) for i in range(4)]
    out = []
    for s, g in enumerate(grads, start=1):
        if s == 3:  # the schedule a training loop would set through the injected state
            slow = state.levels["slow"]
            hyper = dict(slow.rule_state.hyperparams, learning_rate=jnp.asarray(0.25))
            slow = slow._replace(rule_state=slow.rule_state._replace(hyperparams=hyper))
            state = state._replace(levels={**state.levels, "slow": slow})
        u, state = update(g, state, params)
        out.append(u)
    # Chunks {1, 2} and {3, 4}: the rule sees the sums 3 and 7, at learning rates 0.5 and 0.25.
    for s, expected in [(1, 0.0), (2, -1.5), (3, 0.0), (4, -1.75)]:
        np.testing.assert_allclose(out[s - 1]["b"]["w"], expected, rtol=1e-6)
        np.testing.assert_allclose(out[s - 1]["a"], -float(s), rtol=1e-6)
    assert int(state.levels["slow"].rule_state.count) == 2  # advanced on applications only
    assert level_stats(state) == {"fast": 4, "slow": 2}


def _scale_by_eta():
    """A rule that needs a data-dependent extra argument: updates = −η · g."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, eta, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda g: -eta * g, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def test_extra_args_reach_every_rule_and_params_may_be_omitted():
    tx = nested(
        (
            Level("a", "^a$", _scale_by_eta()),
            Level("w", lambda path, leaf: leaf.ndim == 2, _scale_by_eta(), period=2),
            Level("bias", None, optax.sgd(1.0)),  # a plain rule ignores the extra argument
        )
    )
    params = _params()
    update = jax.jit(lambda g, s, eta: tx.update(g, s, eta=eta))
    g1 = jax.tree.map(jnp.ones_like, params)
    g2 = jax.tree.map(lambda p: 3.0 * jnp.ones_like(p), params)
    u1, state = update(g1, tx.init(params), 0.5)
    u2, state = update(g2, state, 0.25)
    np.testing.assert_allclose(u1["a"], -0.5)
    np.testing.assert_allclose(u2["a"], -0.75)
    np.testing.assert_allclose(u1["b"]["w"], 0.0)
    np.testing.assert_allclose(u2["b"]["w"], -0.25 * 4.0)  # η at the emitting step, on the sum
    np.testing.assert_allclose(u2["b"]["bias"], -3.0)


def test_no_recompilation_after_the_first_step():
    traces = []

    def loss_fn(params, batch):
        traces.append(None)
        return sum(jnp.sum((p - batch) ** 2) for p in jax.tree.leaves(params))

    levels = (
        Level("slow", r"^b/", optax.inject_hyperparams(optax.adam)(learning_rate=0.1), period=3),
        Level("fast", None, optax.adam(0.1)),
    )
    train = make_train_step(loss_fn, levels)
    params = _params()
    opt_state = train.init(params)
    for _ in range(4):
        params, opt_state, _ = train.step(params, opt_state, jnp.float32(0.5))
    assert len(traces) == 1
    assert train.step._cache_size() == 1
    assert level_stats(opt_state) == {"fast": 4, "slow": 1}


def test_state_is_stable_through_lax_cond():
    params = {"w": jnp.ones((2, 2)), "h": jnp.ones(3, jnp.bfloat16)}
    tx = nested(
        (
            Level("w", "w", optax.inject_hyperparams(optax.adam)(learning_rate=0.1), period=2),
            Level("h", "h", optax.adam(0.1), period=3, accumulate="mean"),
        )
    )
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    _, new_state = tx.update(grads, state, params)
    avals = lambda tree: jax.tree.map(lambda x: jax.typeof(x), tree)  # shape, dtype, weak type
    assert avals(new_state) == avals(state)
    assert new_state.levels["h"].acc["h"].dtype == jnp.float32  # bf16 sums accumulate in f32

    @jax.jit
    def maybe_update(pred, state):
        return jax.lax.cond(pred, lambda s: tx.update(grads, s, params)[1], lambda s: s, state)

    for pred in (True, False, True):
        state = maybe_update(pred, state)
    assert level_stats(state) == {"h": 0, "w": 1}
    u, _ = tx.update(grads, state, params)
    assert u["h"].dtype == jnp.bfloat16


class _Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])

    def __call__(self, x):
        return self.layers[1](jnp.tanh(self.layers[0](x)))


def test_nnx_state_bias_level_against_the_same_levels_on_a_dict():
    graphdef, params = nnx.split(_Tiny(nnx.Rngs(0)), nnx.Param)
    x = jax.random.normal(jax.random.key(1), (5, 3))
    y = jax.random.normal(jax.random.key(2), (5, 2))

    def loss_fn(params, batch):
        pred = nnx.merge(graphdef, params)(batch[0])
        return jnp.mean((pred - batch[1]) ** 2), pred

    def levels():
        return (
            Level("bias", r"bias$", optax.sgd(0.1), period=2),
            Level("weights", None, optax.adam(1e-2)),
        )

    train = make_train_step(loss_fn, levels(), has_aux=True)
    opt_state = train.init(params)
    tx = nested(levels())
    as_dict = jax.tree.map(jnp.array, nnx.to_pure_dict(params))  # a copy: the step donates
    dict_state = tx.init(as_dict)

    def dict_loss(d):  # the same network written out on the plain dict
        h = jnp.tanh(x @ d["layers"][0]["kernel"] + d["layers"][0]["bias"])
        return jnp.mean((h @ d["layers"][1]["kernel"] + d["layers"][1]["bias"] - y) ** 2)

    @jax.jit
    def dict_step(as_dict, dict_state):
        u, dict_state = tx.update(jax.grad(dict_loss)(as_dict), dict_state, as_dict)
        return optax.apply_updates(as_dict, u), dict_state

    for s in range(1, 5):
        before = jax.tree.map(np.array, nnx.to_pure_dict(params))
        as_dict, dict_state = dict_step(as_dict, dict_state)
        params, opt_state, loss, pred = train.step(params, opt_state, (x, y))
        assert pred.shape == (5, 2) and loss.shape == ()
        after = nnx.to_pure_dict(params)
        for i in range(2):
            bias_changed = not np.array_equal(
                after["layers"][i]["bias"], before["layers"][i]["bias"]
            )
            assert bias_changed == (s % 2 == 0)
            assert not np.array_equal(after["layers"][i]["kernel"], before["layers"][i]["kernel"])
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), after, as_dict
        )
    assert level_stats(opt_state) == {"bias": 2, "weights": 4}


def test_step_skips_non_finite_updates_and_clips():
    """A non-finite loss leaves params and optimizer state as they were; `grad_clip` bounds the
    SGD step to lr · grad_clip."""
    levels = (Level("all", None, optax.sgd(1.0)),)
    loss = lambda p, x: jnp.sum(p["w"] * x)
    params = {"w": jnp.ones(3)}
    train = make_train_step(loss, levels, donate=False, grad_clip=0.5)
    state = train.init(params)
    kept, kept_state, value = train.step(params, state, jnp.array([1.0, jnp.nan, 0.0]))
    assert not np.isfinite(value)
    np.testing.assert_array_equal(kept["w"], params["w"])
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), kept_state, state))
    moved, _, _ = train.step(params, state, jnp.array([3.0, 4.0, 0.0]))  # ‖g‖ = 5 → 0.5
    np.testing.assert_allclose(np.linalg.norm(params["w"] - moved["w"]), 0.5, rtol=1e-6)
