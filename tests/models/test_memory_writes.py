"""`model.memory_writes`: with the in-context writes off every memory stays at its initial state.

For every model with an in-context memory (`models.has_memory`), at test size (d 32, 2 layers,
T 48): with writes off the output at position t depends on the tokens within the model's local
reach only (short conv, attention window, MAC segment), so changing earlier tokens changes
nothing; with writes on it does. The streamed memory state with writes off equals the initial
state bit for bit, the parameter tree does not depend on the flag, and a model without memory
rejects the flag. The matrix mixers' and Titans' switch is checked on the `nestlearn.kernels`
path too, and the pure read-only functions against their writing forms with a zero step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nestlearn.kernels import kernel_impl

from nestlearn import models
from nestlearn.memory import architectures, matrix_memory, titans
from nestlearn.models import mixers, titans_mixer
from nestlearn.models.attention import KVCache
from nestlearn.models.cms import CMSOnlineState
from nestlearn.models.layers import ShortConv

VOCAB = 16
T = 48
BATCH = 2
PREFIX = 24  # tokens [0, PREFIX) are changed


def _online(cms):
    cms.mode = "online"
    cms.inner_lr = 0.1  # a visible in-context step at test size


# name → model config changes (a value, or a function that edits a sub-config in place); every
# model with an in-context memory, plus online CMS variants.
CASES = {
    **{name: {} for name in models.available() if models.has_memory(models.default_config(name))},
    "hope_attention/online": {"window": 8, "cms": _online},
}
# Two layers where compiling is cheap (the reach adds up over layers), one elsewhere.
TWO_LAYERS = ("linear_attention", "deltanet", "gated_deltanet", "titans_lmm")


def tiny_config(case, *, writes=True):
    name = case.split("/")[0]
    config = models.default_config(name)
    config.update(vocab_size=VOCAB, d_model=32, num_heads=2, max_len=64)
    config.num_layers = 2 if case in TWO_LAYERS else 1
    config.chunk_size = 8
    config.mlp_ratio = 2.0
    if "window" in config:  # MAG/MAL: a window shorter than the changed prefix; MAC: segments
        config.window = 0 if name == "titans_mac" else 8
    if "cms" in config:
        config.cms.periods = (1, 2)
        config.cms.chunk_sizes = (8, 16)
    for key, change in CASES[case].items():
        if callable(change):
            change(config[key])
        else:
            config[key] = change
    config.memory_writes = writes
    return config


def reach(model, config) -> int:
    """How many positions back an output can see when no memory is written.

    Per layer: the short conv (window w → w − 1 back), the sliding window of attention, MAC's
    segment (`chunk_size`, attention never crosses it); layers add up.
    """
    convs = [m.window for _, m in nnx.iter_graph(model) if isinstance(m, ShortConv)]
    conv = max(convs) - 1 if convs else 0
    name = config.name
    if name == "titans_mac":
        per_layer = (
            min(config.window, config.chunk_size) if config.window else config.chunk_size
        ) - 1
    elif name == "titans_mag":  # attention and memory side by side
        per_layer = max(conv, config.window - 1)
    elif name == "titans_mal":  # memory, then attention
        per_layer = conv + config.window - 1
    elif name == "hope_attention":
        per_layer = config.window - 1
    else:
        per_layer = conv
    return config.num_layers * per_layer


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, rest, tokens, state):
    return nnx.merge(graphdef, params, rest)(tokens, state)


class Pair:
    """One case with writes on and off: one set of parameters, two graphs, each run once.

    The writes-off graph is built abstractly (`nnx.eval_shape`) and gets the parameters of the
    writes-on model, as a checkpoint trained with writes on is evaluated with them off.
    """

    def __init__(self, case):
        self.case = case
        self.on_config, self.off_config = (tiny_config(case, writes=w) for w in (True, False))
        on = models.build(self.on_config, rngs=nnx.Rngs(0))
        off = nnx.eval_shape(lambda: models.build(self.off_config, rngs=nnx.Rngs(0)))
        self.on_graph, self.params, self.rest = nnx.split(on, nnx.Param, ...)
        self.off_graph, self.off_params, _ = nnx.split(off, nnx.Param, ...)
        self.off = nnx.merge(self.off_graph, self.params, self.rest)
        tokens = jax.random.randint(jax.random.key(1), (BATCH, T), 0, VOCAB)
        shift = jax.random.randint(jax.random.key(2), (BATCH, PREFIX), 1, VOCAB)
        changed = tokens.at[:, :PREFIX].set((tokens[:, :PREFIX] + shift) % VOCAB)
        self.tokens = jnp.concatenate([tokens, changed])  # [2·BATCH, T]: originals, changed

    def run(self, graph, state=None):
        logits, new_state = _apply(graph, self.params, self.rest, self.tokens, state)
        return np.asarray(logits), new_state

    @functools.cached_property
    def on_run(self):
        return self.run(self.on_graph)

    @functools.cached_property
    def off_run(self):
        return self.run(self.off_graph)


# The default run keeps one case per kind of memory; the rest run with `-m slow`.
DEFAULT_CASES = ("hope", "titans_lmm", "gated_deltanet", "hope_attention/online")


@pytest.fixture(
    scope="module",
    params=[c if c in DEFAULT_CASES else pytest.param(c, marks=pytest.mark.slow) for c in CASES],
)
def pair(request):
    return Pair(request.param)


def test_parameters_do_not_depend_on_the_switch(pair):
    assert jax.tree.structure(pair.params) == jax.tree.structure(pair.off_params)
    for a, b in zip(jax.tree.leaves(pair.params), jax.tree.leaves(pair.off_params)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)


def test_writes_off_outputs_see_only_the_local_window(pair):
    r = reach(pair.off, pair.off_config)
    assert PREFIX + r < T - 1, "the test needs positions beyond the reach of the changed prefix"
    logits, _ = pair.off_run
    original, changed = logits[:BATCH], logits[BATCH:]
    scale = np.abs(original).max()
    # Positions ≥ PREFIX + r see none of the changed tokens (t − r > PREFIX − 1).
    np.testing.assert_allclose(
        changed[:, PREFIX + r :], original[:, PREFIX + r :], rtol=0, atol=1e-6 * scale
    )
    # A changed token's own output changes: the check above can fail.
    assert np.abs(changed[:, PREFIX - 1] - original[:, PREFIX - 1]).max() > 1e-3 * scale


def test_writes_on_carry_the_prefix_to_the_last_position(pair):
    logits, _ = pair.on_run
    original, changed = logits[:BATCH], logits[BATCH:]
    diff = np.abs(changed[:, T - 1] - original[:, T - 1]).max()
    assert diff > 1e-4 * np.abs(original).max(), f"last position unchanged ({diff:.2e})"


def memories(layers) -> list:
    """The in-context memories of a model state: matrix S, a ChunkStream's memory, online CMS."""
    found = []

    def walk(node):
        if isinstance(node, mixers.MixerState):
            walk(node.memory)  # the conv state is not a memory
        elif isinstance(node, mixers.ChunkStream):
            found.append(node.start)  # pending inputs are recomputed, not memory
        elif isinstance(node, CMSOnlineState):
            found.append((node.weights, node.opt_state))
        elif isinstance(node, KVCache) or node is None:
            return
        elif isinstance(node, tuple):
            for child in node:
                walk(child)
        else:
            found.append(node)  # a matrix memory S

    walk(layers)
    return found


# Cases whose state is also checked when the call continues a stream (`init_state` passed in:
# the ChunkStream / online-CMS bookkeeping path); one more compile each.
STREAMED = ("gated_deltanet", "titans_lmm", "titans_mac", "hope_attention/online")


def test_writes_off_state_equals_the_initial_state(pair):
    initial = memories(pair.off.init_state(2 * BATCH).layers)
    assert initial, "every case has an in-context memory"
    states = [pair.off_run[1]]
    if pair.case in STREAMED:
        states.append(pair.run(pair.off_graph, pair.off.init_state(2 * BATCH))[1])
    for state in states:
        got = memories(state.layers)
        assert jax.tree.structure(got) == jax.tree.structure(initial)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(initial)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)  # bit for bit
    # With writes on the same call moves the memory: the comparison above can fail.
    _, written = pair.on_run
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(memories(written.layers)), jax.tree.leaves(initial))
    ]
    assert any(moved)


@pytest.mark.parametrize("name", ["transformer_pp", "hope_attention"])
def test_memory_writes_off_without_memory_is_an_error_naming_the_key(name):
    config = models.default_config(name)  # hope_attention: scheduled CMS, no in-context memory
    assert not models.has_memory(config)
    config.memory_writes = False
    with pytest.raises(ValueError, match=rf"model\.memory_writes.*{name}"):
        models.build(config, rngs=nnx.Rngs(0))


def test_has_memory_of_the_registered_defaults():
    memory = {n for n in models.available() if models.has_memory(models.default_config(n))}
    assert memory == {
        "linear_attention",
        "deltanet",
        "gated_deltanet",
        "titans_lmm",
        "titans_mac",
        "titans_mag",
        "titans_mal",
        "hope",
    }
    assert models.has_memory(tiny_config("hope_attention/online"))


def test_writes_is_the_model_key_not_a_self_modifying_key():
    config = models.default_config("hope")
    assert "writes" not in config.self_modifying and config.memory_writes is True
    config.self_modifying.writes = False
    with pytest.raises(ValueError, match=r"\['writes'\] in self_modifying.*memory_writes"):
        models.build(config, rngs=nnx.Rngs(0))


# --- the kernel path and the pure functions --------------------------------------------------

D, HEADS, HEAD_DIM = 16, 2, 8


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv(kernel_impl.INTERPRET_ENV, "1")


@pytest.mark.parametrize("cls", [mixers.LinearAttention, mixers.DeltaNet, mixers.GatedDeltaNet])
def test_matrix_mixers_honour_writes_off_on_both_paths(cls, interpret):
    x = jax.random.normal(jax.random.key(0), (BATCH, 20, D))
    s0 = jax.random.normal(jax.random.key(1), (BATCH, HEADS, HEAD_DIM, HEAD_DIM))
    outputs = {}
    for impl in ("xla", "pallas"):
        mixer = cls(
            D,
            num_heads=HEADS,
            head_dim=HEAD_DIM,
            chunk_size=16,  # the smallest the Triton kernel tiles
            kernel_impl=impl,
            writes=False,
            rngs=nnx.Rngs(0),
        )
        state = mixer.init_state(BATCH)._replace(memory=s0)
        y, new = mixer(x, state)
        np.testing.assert_array_equal(new.memory, s0)
        inputs, gates, _ = mixer.features(x, None)
        q = mixers.l2_normalize(inputs[0])
        o, _ = mixer.memory(inputs, gates, s0)
        np.testing.assert_allclose(o, jnp.einsum("bhvk,bthk->bthv", s0, q), rtol=1e-5, atol=1e-6)
        outputs[impl] = y
        # A fresh sequence reads S_0 q = 0.
        o_fresh, s_fresh = mixer.memory(inputs, gates, None)
        np.testing.assert_array_equal(o_fresh, 0.0)
        np.testing.assert_array_equal(s_fresh, 0.0)
    np.testing.assert_array_equal(outputs["xla"], outputs["pallas"])


def test_titans_mixer_honours_writes_off_on_both_paths(interpret):
    x = jax.random.normal(jax.random.key(0), (BATCH, 20, D))
    outputs = {}
    for impl in ("xla", "pallas"):
        mixer = titans_mixer.TitansMemory(
            D,
            num_heads=HEADS,
            head_dim=HEAD_DIM,
            chunk_size=16,  # the smallest the Triton kernel tiles
            kernel_impl=impl,
            writes=False,
            rngs=nnx.Rngs(0),
        )
        y, state = mixer(x)
        initial = mixer.initial_memory(BATCH)
        for a, b in zip(jax.tree.leaves(state.memory.start), jax.tree.leaves(initial)):
            np.testing.assert_array_equal(a, b)
        outputs[impl] = y
    np.testing.assert_array_equal(outputs["xla"], outputs["pallas"])


def _streams(t=20):
    keys = jax.random.split(jax.random.key(3), 3)
    q, k, v = (jax.random.normal(kk, (BATCH, t, HEADS, HEAD_DIM)) for kk in keys)
    norm = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    return norm(q), norm(k), norm(v)


def test_matrix_read_only_is_the_gated_delta_rule_with_no_step():
    q, k, v = _streams()
    s0 = jax.random.normal(jax.random.key(4), (BATCH, HEADS, HEAD_DIM, HEAD_DIM))
    ones = jnp.ones(q.shape[:3])
    o, s = matrix_memory.read_only(q, k, v, initial_state=s0)
    o_ref, s_ref = matrix_memory.gated_delta_rule(
        q, k, v, ones, 0.0 * ones, chunk_size=8, initial_state=s0
    )
    np.testing.assert_array_equal(s, s0)
    np.testing.assert_allclose(s_ref, s0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-5)
    # The writing form moves away from S_0 with a nonzero step: the checks above can fail.
    o_written, _ = matrix_memory.gated_delta_rule(
        q, k, v, ones, 0.5 * ones, chunk_size=8, initial_state=s0
    )
    assert np.abs(o_written - o).max() > 1e-2


def test_titans_read_only_is_the_memory_with_no_step_and_no_forgetting():
    q, k, v = _streams()
    arch = architectures.mlp(2, 16, "silu")
    params = arch.init(jax.random.key(5), heads=HEADS, d_in=HEAD_DIM, d_out=HEAD_DIM)
    zeros, eta = jnp.zeros(q.shape[:3]), jnp.full(q.shape[:3], 0.5)
    kwargs = dict(arch=arch, params=params, chunk_size=8, kernel_impl="xla")
    o, state = titans.titans_memory(q, k, v, 0.1 + zeros, 0.1 + zeros, eta, writes=False, **kwargs)
    o_ref, state_ref = titans.titans_memory(q, k, v, zeros, zeros, eta, **kwargs)
    np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-6)
    for a, b, p in zip(
        jax.tree.leaves(state.weights), jax.tree.leaves(state_ref.weights), jax.tree.leaves(params)
    ):
        np.testing.assert_array_equal(a, jnp.broadcast_to(p, a.shape))
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    for a in jax.tree.leaves(state.momentum):
        np.testing.assert_array_equal(a, 0.0)
    # Continuing a stream returns that state itself.
    _, again = titans.titans_memory(
        q, k, v, zeros, zeros, eta, initial_state=state_ref, writes=False, **kwargs
    )
    assert again is state_ref
    # With a step the memory is written: the comparison above can fail.
    o_written, _ = titans.titans_memory(q, k, v, 0.1 + zeros, zeros, eta, **kwargs)
    assert np.abs(o_written - o).max() > 1e-4
