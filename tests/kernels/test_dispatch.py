"""The implementation switch, argument validation and block-size configs."""

import warnings

import jax
import jax.numpy as jnp
import pytest
from nestlearn.kernels import Unavailable, dispatch, gated_delta, mlp_memory, per_sequence
from nestlearn.kernels.gated_delta import BlockSizes as GatedDeltaBlocks
from nestlearn.kernels.mlp_memory import BlockSizes as MLPBlocks


def gd_args(t=5, h=2, d=16):
    x = jnp.ones((1, t, h, d)) / 4
    g = jnp.full((1, t, h), 0.5)
    return dict(q=x, k=x, v=x, alpha=g, beta=g)


def mlp_args(t=5, h=2, d=16, hidden=16):
    x = jnp.ones((1, t, h, d)) / 4
    g = jnp.full((1, t, h), 0.5)
    params = {"w1": jnp.zeros((h, d, hidden)), "w2": jnp.zeros((h, hidden, d))}
    return dict(q=x, k=x, v=x, theta=g, alpha=g, eta=g, params=params)


OPS = [(gated_delta, gd_args), (mlp_memory, mlp_args)]


@pytest.mark.parametrize("op, make", OPS)
@pytest.mark.parametrize(
    "implementation, match",
    [
        ("pallas_triton", "needs a gpu device"),
        ("pallas_tpu", "needs a tpu device"),
        ("pallas_mosaic_gpu", "not implemented"),
    ],
)
def test_explicit_backend_that_cannot_run_raises(op, make, implementation, match):
    with pytest.raises(Unavailable, match=match):
        op(**make(), chunk_size=16, implementation=implementation)


@pytest.mark.parametrize("op, make", OPS)
def test_unknown_implementation_raises(op, make):
    with pytest.raises(ValueError, match="implementation='cuda' must be None or one of"):
        op(**make(), chunk_size=16, implementation="cuda")


@pytest.mark.parametrize("op, make", OPS)
def test_triton_rejects_chunk_size_explicitly(op, make):
    with pytest.raises(ValueError, match="chunk_size=12 must be a power of two ≥ 16"):
        op(**make(), chunk_size=12, implementation="pallas_triton", interpret=True)


def test_default_order_falls_back_and_warns(monkeypatch):
    """A GPU-style default order on this CPU: Triton is unavailable, XLA runs, with a warning."""
    monkeypatch.setattr(dispatch, "default_order", lambda: ("pallas_triton", "xla"))
    with pytest.warns(RuntimeWarning) as record:  # dispatch happens while tracing
        got = jax.jit(lambda a: gated_delta(**a, chunk_size=4))(gd_args())
    messages = [str(w.message) for w in record]
    assert any("pallas_triton failed" in m and "needs a gpu device" in m for m in messages)
    assert any("fell back to implementation='xla'" in m for m in messages)
    want = jax.jit(lambda a: gated_delta(**a, chunk_size=4, implementation="xla"))(gd_args())
    assert jnp.allclose(got[0], want[0]) and jnp.allclose(got[1], want[1])


def test_default_order_all_failing_raises_group(monkeypatch):
    monkeypatch.setattr(dispatch, "default_order", lambda: ("pallas_triton", "pallas_tpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ExceptionGroup, match="every implementation"):
            gated_delta(**gd_args(), chunk_size=4)


def test_cpu_default_is_xla_without_warning():
    assert jax.default_backend() == "cpu" and dispatch.default_order() == ("xla",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.jit(lambda a: gated_delta(**a, chunk_size=4))(gd_args())


@pytest.mark.parametrize(
    "bad, match",
    [
        (
            dict(q=jnp.ones((1, 5, 2))),
            r"q must have shape \[b, t, h, d_k\], got q.shape=\(1, 5, 2\)",
        ),
        (dict(beta=jnp.ones((1, 5, 3))), r"beta must have shape \[b, t, h\]=\(1, 5, 2\)"),
        (dict(initial_state=jnp.ones((1, 2, 16, 8))), r"initial_state must be an array of shape"),
    ],
)
def test_gated_delta_bad_shapes(bad, match):
    with pytest.raises(ValueError, match=match):
        gated_delta(**{**gd_args(), **bad}, chunk_size=4)


def test_gated_delta_momentum_needs_state_pair():
    args = gd_args()
    with pytest.raises(ValueError, match="must be a GatedDeltaState"):
        gated_delta(
            **args, chunk_size=4, momentum=args["alpha"], initial_state=jnp.ones((1, 2, 16, 16))
        )


def test_mlp_memory_bad_params_and_residual():
    args = mlp_args()
    with pytest.raises(ValueError, match=r"params must be w1 \[h, d_out, n\]"):
        mlp_memory(
            **{**args, "params": {"w1": jnp.zeros((2, 16, 8)), "w2": jnp.zeros((2, 16, 16))}},
            chunk_size=4,
        )
    args = {
        **args,
        "v": jnp.ones((1, 5, 2, 8)),
        "params": {"w1": jnp.zeros((2, 8, 16)), "w2": jnp.zeros((2, 16, 16))},
    }
    with pytest.raises(ValueError, match="residual=True needs d_out == d_in"):
        mlp_memory(**args, chunk_size=4, residual=True)


@pytest.mark.parametrize("chunk_size", [0, 2.5, True])
def test_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        gated_delta(**gd_args(), chunk_size=chunk_size)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (GatedDeltaBlocks, dict(block_v=0), "block_v=0 must be a positive int or None"),
        (GatedDeltaBlocks, dict(num_warps=3), "num_warps=3 must be a positive power of two"),
        (GatedDeltaBlocks, dict(num_stages=0), "num_stages=0 must be a positive int"),
        (MLPBlocks, dict(num_warps=6), "num_warps=6 must be a positive power of two"),
        (GatedDeltaBlocks, dict(backward="cuda"), "backward='cuda' must be one of"),
        (MLPBlocks, dict(backward=None), "backward=None must be one of"),
    ],
)
def test_block_sizes_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_block_v_must_tile_value_width():
    with pytest.raises(ValueError, match="d_v=48 must be a multiple of block_v=32"):
        GatedDeltaBlocks(block_v=32).value_block(48)


def test_block_v_default_is_per_backend():
    """None: the caller's default capped at d_v (Triton passes 16), else the whole of d_v."""
    blocks = GatedDeltaBlocks()
    assert blocks.value_block(128, default=16) == 16
    assert blocks.value_block(8, default=16) == 8
    assert blocks.value_block(128) == 128
    assert GatedDeltaBlocks(block_v=32).value_block(128, default=16) == 32


def test_triton_refuses_mlp_memory_too_large_for_one_program():
    """W₁, W₂ and momenta of d 128 × hidden 256 (512 KiB) exceed what one program holds."""
    args = mlp_args(t=5, h=1, d=128, hidden=256)
    with pytest.raises(Unavailable, match="hidden=256 take 512 KiB > 128 KiB"):
        mlp_memory(**args, chunk_size=16, implementation="pallas_triton", interpret=True)


@pytest.mark.slow
def test_block_v_splits_value_axis(x64):
    """A Triton value block smaller than d_v gives the same result as one block."""
    args = gd_args(t=20, d=32)
    args["v"] = jnp.sin(jnp.arange(20 * 2 * 32.0)).reshape(1, 20, 2, 32)
    kw = dict(chunk_size=16, implementation="pallas_triton", interpret=True)
    whole = gated_delta(**args, block_sizes=GatedDeltaBlocks(block_v=32), **kw)
    split = gated_delta(**args, **kw)  # the Triton default: blocks of 16
    assert jnp.allclose(whole[0], split[0], atol=1e-12) and jnp.allclose(
        whole[1], split[1], atol=1e-12
    )


def test_per_sequence_triton_refuses_untileable_or_large_states():
    step = lambda x, s: (x, s + x.sum())  # o = the chunk, state + its sum

    def scan(terms, state):
        return per_sequence.scan(
            step, terms, state, name="toy", implementation="pallas_triton", interpret=True
        )

    with pytest.raises(Unavailable, match="1 or a power of two ≥ 16, got a block of shape"):
        scan(jnp.zeros((1, 2, 16, 24)), jnp.zeros((1, 16, 16)))
    with pytest.raises(Unavailable, match="256 KiB > 128 KiB"):
        scan(jnp.zeros((1, 2, 16, 16)), jnp.zeros((1, 256, 256)))


@pytest.mark.parametrize("implementation", ["pallas_triton", "pallas_tpu"])
@pytest.mark.parametrize("backward", ["pallas", "xla"])
def test_per_sequence_step_with_a_tree_of_outputs_matches_xla(implementation, backward):
    """A step may return a pytree of outputs (one array per leaf, each [c, ...]); the kernels
    write every leaf and take every leaf's cotangent, like the XLA scan."""

    def step(x, s):  # x: {"a": [c, d], "b": [c, 1]}; s: [d, d]
        read = x["a"] @ s
        out = {"read": read, "gate": jnp.tanh(x["b"] * read[:, :1])}
        return out, 0.5 * s + x["a"].T @ (x["a"] * x["b"])

    kx, ks = jax.random.split(jax.random.key(0))
    terms = {"a": jax.random.normal(kx, (2, 3, 16, 16)), "b": jnp.full((2, 3, 16, 1), 0.3)}
    state = 0.1 * jax.random.normal(ks, (2, 16, 16))

    def loss(impl, terms, state):
        kw = dict(interpret=True, backward=backward) if impl != "xla" else {}
        o, end = per_sequence.scan(step, terms, state, name="toy", implementation=impl, **kw)
        return jnp.sum(jnp.sin(o["read"])) + jnp.sum(o["gate"] ** 2) + jnp.sum(end**2)

    want = jax.value_and_grad(loss, argnums=(1, 2))("xla", terms, state)
    got = jax.value_and_grad(loss, argnums=(1, 2))(implementation, terms, state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.shape == b.shape
        assert jnp.allclose(a, b, rtol=1e-5, atol=1e-5), float(jnp.max(jnp.abs(a - b)))
