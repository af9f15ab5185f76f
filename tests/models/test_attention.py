"""Attention, RoPE, KV cache and the small layers against plain references (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nestlearn.models.attention import (
    Attention,
    blockwise_causal_attention,
    causal_attention,
    rope,
)
from nestlearn.models.layers import OutputGate, ShortConv, l2_normalize, rms_norm, silu_gate


def attention_reference(q, k, v, q_pos, k_pos, window, pk, pv):
    """Softmax attention written out query by query, key by key (Eqs. 62–63)."""
    b, t, h, d = q.shape
    g = k.shape[2]
    out = np.zeros((b, t, h, d))
    for bi in range(b):
        for i in range(t):
            for hi in range(h):
                gi = hi // (h // g)
                keys, vals = [], []
                if pk is not None:
                    keys += list(pk[:, gi])
                    vals += list(pv[:, gi])
                for j in range(k.shape[1]):
                    visible = 0 <= k_pos[j] <= q_pos[i]
                    if window:
                        visible = visible and q_pos[i] - k_pos[j] < window
                    if visible:
                        keys.append(k[bi, j, gi])
                        vals.append(v[bi, j, gi])
                scores = np.array([q[bi, i, hi] @ kk for kk in keys]) / np.sqrt(d)
                w = np.exp(scores - scores.max())
                out[bi, i, hi] = (w / w.sum()) @ np.array(vals)
    return out


def plain_attention(q, k, v, q_pos, k_pos, window, pk, pv):
    """Eq. 63 with autodiff's own softmax backward: the gradient reference for the custom VJP."""
    r = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, r, axis=2), jnp.repeat(v, r, axis=2)
    q = q / np.sqrt(q.shape[-1])
    scores = jnp.einsum("bthd,bshd->bhts", q, k)
    visible = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])
    if window:
        visible &= q_pos[:, None] - k_pos[None, :] < window
    scores = jnp.where(visible, scores, -jnp.inf)
    if pk is not None:
        pk, pv = jnp.repeat(pk, r, axis=1), jnp.repeat(pv, r, axis=1)
        scores = jnp.concatenate([jnp.einsum("bthd,shd->bhts", q, pk), scores], axis=-1)
        v = jnp.concatenate([jnp.broadcast_to(pv, (q.shape[0], *pv.shape)), v], axis=1)
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v)


@pytest.mark.parametrize("window,persistent,kv_heads", [(0, 0, 2), (3, 0, 1), (0, 2, 2), (4, 3, 1)])
def test_causal_attention_matches_reference(x64, window, persistent, kv_heads):
    keys = jax.random.split(jax.random.key(0), 5)
    b, t, h, d = 2, 7, 2, 4
    q = jax.random.normal(keys[0], (b, t, h, d), jnp.float64)
    k = jax.random.normal(keys[1], (b, t, kv_heads, d), jnp.float64)
    v = jax.random.normal(keys[2], (b, t, kv_heads, d), jnp.float64)
    pk = jax.random.normal(keys[3], (persistent, kv_heads, d), jnp.float64) if persistent else None
    pv = jax.random.normal(keys[4], (persistent, kv_heads, d), jnp.float64) if persistent else None
    pos = jnp.arange(t)
    k_pos = pos.at[2].set(-1)  # an empty cache slot is never visible
    kwargs = dict(q_pos=pos, k_pos=k_pos, window=window, persistent_k=pk, persistent_v=pv)

    # Backward: directional derivative of a scalar loss against central differences.
    def loss(q, k, v):
        return jnp.sum(jnp.sin(causal_attention(q, k, v, **kwargs)))

    dirs = [jax.random.normal(kk, x.shape, jnp.float64) for kk, x in zip(keys, (q, k, v))]
    eps = 1e-6

    def plain_loss(q, k, v):
        return jnp.sum(jnp.sin(plain_attention(q, k, v, pos, k_pos, window, pk, pv)))

    @jax.jit
    def run(q, k, v):
        plus = loss(*(x + eps * dx for x, dx in zip((q, k, v), dirs)))
        minus = loss(*(x - eps * dx for x, dx in zip((q, k, v), dirs)))
        grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
        plain_grads = jax.grad(plain_loss, argnums=(0, 1, 2))(q, k, v)
        return causal_attention(q, k, v, **kwargs), grads, plain_grads, plus, minus

    out, grads, plain_grads, plus, minus = run(q, k, v)
    ref = attention_reference(
        *map(np.asarray, (q, k, v, pos, k_pos)),
        window,
        None if pk is None else np.asarray(pk),
        None if pv is None else np.asarray(pv),
    )
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    analytic = sum(jnp.vdot(g, dx) for g, dx in zip(grads, dirs))
    np.testing.assert_allclose(analytic, (plus - minus) / (2 * eps), rtol=1e-6)
    # The custom VJP (row term dO·O) equals autodiff through a plain masked softmax.
    for grad, plain_grad in zip(grads, plain_grads):
        np.testing.assert_allclose(grad, plain_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "t,block,window,persistent,kv_heads",
    [(7, 3, 0, 0, 2), (9, 4, 4, 3, 1), (5, 8, 0, 0, 2)],
)
def test_blockwise_attention_matches_full_attention(x64, t, block, window, persistent, kv_heads):
    """Skipping the hidden key blocks changes nothing, values and gradients (uneven blocks too)."""
    keys = jax.random.split(jax.random.key(1), 6)
    b, h, d = 2, 2, 4
    q = jax.random.normal(keys[0], (b, t, h, d), jnp.float64)
    k = jax.random.normal(keys[1], (b, t, kv_heads, d), jnp.float64)
    v = jax.random.normal(keys[2], (b, t, kv_heads, d), jnp.float64)
    pk = jax.random.normal(keys[3], (persistent, kv_heads, d), jnp.float64) if persistent else None
    pv = jax.random.normal(keys[4], (persistent, kv_heads, d), jnp.float64) if persistent else None
    g = jax.random.normal(keys[5], (b, t, h, d), jnp.float64)
    pos = jnp.arange(t)

    def fast(q, k, v, pk, pv):
        out = blockwise_causal_attention(
            q, k, v, window=window, persistent_k=pk, persistent_v=pv, block_size=block
        )
        return jnp.sum(out * g), out

    def plain(q, k, v, pk, pv):
        out = plain_attention(q, k, v, pos, pos, window, pk, pv)
        return jnp.sum(out * g), out

    argnums = (0, 1, 2, 3, 4) if persistent else (0, 1, 2)

    @jax.jit
    def both(*args):
        return tuple(jax.value_and_grad(f, argnums, has_aux=True)(*args) for f in (fast, plain))

    ((_, out), grads), ((_, ref), ref_grads) = both(q, k, v, pk, pv)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    for grad, ref_grad in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_blockwise_attention_rejects_bad_input():
    q = jnp.ones((1, 4, 2, 4))
    with pytest.raises(ValueError, match="keys must be the queries"):
        blockwise_causal_attention(q, jnp.ones((1, 5, 2, 4)), jnp.ones((1, 5, 2, 4)))
    with pytest.raises(ValueError, match="block_size"):
        blockwise_causal_attention(q, q, q, block_size=-1)
    with pytest.raises(ValueError, match="incompatible"):
        blockwise_causal_attention(q, jnp.ones((1, 4, 3, 4)), jnp.ones((1, 4, 3, 4)))


def test_silu_gate_matches_autodiff(x64):
    a, b, g = (
        jax.random.normal(k, (3, 5), jnp.float64) for k in jax.random.split(jax.random.key(3), 3)
    )

    def plain(a, b):
        return jnp.sum(a / (1 + jnp.exp(-a)) * b * g)

    np.testing.assert_allclose(silu_gate(a, b), a / (1 + jnp.exp(-a)) * b, rtol=1e-12)
    grads = jax.grad(lambda a, b: jnp.sum(silu_gate(a, b) * g), (0, 1))(a, b)
    for grad, ref_grad in zip(grads, jax.grad(plain, (0, 1))(a, b)):
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-14)


def test_rope_static_positions_match_traced(x64):
    x = jax.random.normal(jax.random.key(4), (2, 6, 3, 8), jnp.float64)
    positions = np.arange(3, 9, dtype=np.int32)
    static, traced = jax.jit(lambda x, p: (rope(x, positions), rope(x, p)))(
        x, jnp.asarray(positions)
    )
    np.testing.assert_allclose(static, traced, rtol=1e-12, atol=1e-14)


def test_rope_scores_depend_on_relative_position_only(x64):
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8), jnp.float64)
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8), jnp.float64)

    def score(m, n):
        return float(jnp.sum(rope(q, jnp.array([m])) * rope(k, jnp.array([n]))))

    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-10)
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)
    np.testing.assert_allclose(rope(q, jnp.array([0])), q)  # position 0 is the identity
    norms = jnp.linalg.norm(rope(q, jnp.array([7])))
    np.testing.assert_allclose(norms, jnp.linalg.norm(q), rtol=1e-12)


@pytest.mark.parametrize("window,persistent", [(0, 0), (3, 2)])
def test_attention_token_by_token_equals_one_call(window, persistent):
    attn = Attention(
        16,
        num_heads=2,
        head_dim=8,
        max_len=16,
        window=window,
        num_persistent=persistent,
        rngs=nnx.Rngs(0),
    )
    x = jax.random.normal(jax.random.key(1), (2, 9, 16))
    call = nnx.jit(lambda m, x, s: m(x, s))
    whole, cache = call(attn, x, None)
    state, outs = attn.init_state(2), []
    for piece in (x[:, :1], x[:, 1:5], x[:, 5:]):  # pieces longer than the window ring
        y, state = call(attn, piece, state)
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), whole, atol=1e-5, rtol=1e-5)
    assert int(state.length) == 9
    np.testing.assert_array_equal(state.pos, cache.pos)


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="num_heads"):
        Attention(16, num_heads=3, head_dim=4, max_len=8, num_kv_heads=2, rngs=nnx.Rngs(0))


def test_short_conv_matches_convolution_and_streams(x64):
    conv = ShortConv(3, window=4, act=None, dtype=jnp.float64, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 3), jnp.float64)
    y, _ = conv(x)
    kernel = np.asarray(conv.kernel[...])
    ref = np.zeros((2, 7, 3))
    for t in range(7):
        for i in range(4):
            src = t - 3 + i
            if src >= 0:
                ref[:, t] += kernel[i] * np.asarray(x[:, src])
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    y1, s = conv(x[:, :2])
    y2, _ = conv(x[:, 2:], s)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], axis=1), y, rtol=1e-12)


def test_norms_match_definitions(x64):
    x = jax.random.normal(jax.random.key(0), (2, 3, 5), jnp.float64)
    scale = jnp.linspace(0.5, 2.0, 5)
    expected = np.asarray(x) / np.sqrt(np.mean(np.asarray(x) ** 2, -1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(rms_norm(x, scale), expected * np.asarray(scale), rtol=1e-12)
    per_sequence = jnp.stack([scale, 2 * scale])  # [b, d] scales
    np.testing.assert_allclose(
        rms_norm(x, per_sequence)[1], 2 * expected[1] * np.asarray(scale), rtol=1e-12
    )
    np.testing.assert_allclose(jnp.linalg.norm(l2_normalize(x), axis=-1), 1.0, rtol=1e-6)


def test_output_gate_checks_shapes():
    gate = OutputGate(8, num_heads=2, head_dim=4, rngs=nnx.Rngs(0))
    assert gate(jnp.ones((1, 3, 2, 4)), jnp.ones((1, 3, 8))).shape == (1, 3, 8)
    with pytest.raises(ValueError, match="o must have shape"):
        gate(jnp.ones((1, 3, 4, 2)), jnp.ones((1, 3, 8)))
