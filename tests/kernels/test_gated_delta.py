"""Shared contract suite for `nestlearn.kernels.gated_delta`, run for every implementation.

Oracle: `gated_delta_recurrent`, the token recurrence written straight from the equations, in
float64. Each subclass picks the implementation; the Pallas ones run in interpret mode on CPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from nestlearn.kernels import GatedDeltaState, gated_delta
from nestlearn.kernels.gated_delta import BlockSizes, gated_delta_recurrent


def make_inputs(key, *, b=1, t=21, h=2, d_k=16, d_v=16, momentum=True, dtype=jnp.float64):
    """Random inputs in the op's intended ranges (unit-norm keys, α ∈ (0.5, 1), β ∈ (0.1, 1))."""
    ks = jax.random.split(key, 8)
    k = jax.random.normal(ks[1], (b, t, h, d_k), dtype)
    args = {
        "q": jax.random.normal(ks[0], (b, t, h, d_k), dtype),
        "k": k / jnp.linalg.norm(k, axis=-1, keepdims=True),
        "v": jax.random.normal(ks[2], (b, t, h, d_v), dtype),
        "alpha": jax.random.uniform(ks[3], (b, t, h), dtype, 0.5, 1.0),
        "beta": jax.random.uniform(ks[4], (b, t, h), dtype, 0.1, 1.0),
    }
    mom = jax.random.uniform(ks[5], (b, t, h), dtype, 0.0, 0.9) if momentum else None
    return args, mom


def random_state(key, b, h, d_k, d_v, momentum, dtype=jnp.float64):
    k1, k2 = jax.random.split(key)
    s = 0.3 * jax.random.normal(k1, (b, h, d_v, d_k), dtype)
    if momentum is None:
        return s
    return GatedDeltaState(s, 0.1 * jax.random.normal(k2, (b, h, d_v, d_k), dtype))


def scalar_loss(o, state):
    """A loss touching every output and the final state with non-uniform weights."""
    return jnp.sum(jnp.sin(o)) + sum(jnp.sum(x * jnp.cos(x)) for x in jax.tree.leaves(state))


def assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def _loss(fn, args, mom, s0):
    return scalar_loss(*fn(args, mom, s0))


@functools.cache
def oracle(with_momentum, t, dtype):
    """Inputs, values and gradients of the token recurrence, shared by every backend's suite."""
    args, mom = make_inputs(jax.random.key(0), t=t, momentum=with_momentum, dtype=dtype)
    s0 = random_state(jax.random.key(1), 1, 2, 16, 16, mom, dtype)
    ref = lambda a, m, s: gated_delta_recurrent(**a, momentum=m, initial_state=s)
    grads = jax.jit(jax.grad(_loss, argnums=(1, 2, 3)), static_argnums=0)(ref, args, mom, s0)
    return (args, mom, s0), ref(args, mom, s0), grads


class GatedDeltaSuite:
    """Contract tests; subclasses set IMPLEMENTATION, INTERPRET, CHUNK and FULL."""

    IMPLEMENTATION = "xla"
    INTERPRET = False
    CHUNK = 16
    FULL = True  # False: the TPU interpreter is ~1000× slower, run only the tiny cases
    EXACT_DTYPE = jnp.float64  # the TPU interpreter has no float64: float32 there
    EXACT_TOL = 1e-9

    def run(self, args, momentum, initial_state=None, chunk_size=None, block_sizes=None):
        fn = jax.jit(
            lambda args, momentum, initial_state: gated_delta(
                **args,
                momentum=momentum,
                initial_state=initial_state,
                chunk_size=chunk_size or self.CHUNK,
                implementation=self.IMPLEMENTATION,
                interpret=self.INTERPRET,
                block_sizes=block_sizes,
            )
        )
        return fn(args, momentum, initial_state)

    def require_full(self):
        if not self.FULL:
            pytest.skip("TPU interpreter: only the tiny cases run")

    @pytest.mark.parametrize("with_momentum", [False, True])
    def test_values_and_gradients_match_recurrence(self, x64, with_momentum):
        """T = 21 (not a multiple of the chunk), random initial state, float64."""
        if not self.FULL and not with_momentum:
            pytest.skip("TPU interpreter: only the tiny cases run")
        t = 21 if self.FULL else 9
        tol = self.EXACT_TOL
        inputs, want, want_grads = oracle(with_momentum, t, self.EXACT_DTYPE)
        fast = lambda a, m, s: self.run(a, m, initial_state=s)
        assert_trees_close(fast(*inputs), want, rtol=tol, atol=tol)
        grads = jax.jit(jax.grad(_loss, argnums=(1, 2, 3)), static_argnums=0)(fast, *inputs)
        assert_trees_close(grads, want_grads, atol=10 * tol)

    @pytest.mark.parametrize("with_momentum", [False, True])
    def test_backward_kernel_equals_xla_backward(self, x64, with_momentum):
        """The Pallas backward (chunk-start states recomputed by the forward kernel, chunks walked
        in reverse) gives the gradients of the XLA reverse scan from saved states; d_v = 32 is two
        Triton value blocks, whose partial sums of the shared terms' gradients are added."""
        if self.IMPLEMENTATION == "xla":
            pytest.skip("the XLA path has no kernel backward")
        if not self.FULL and not with_momentum:
            pytest.skip("TPU interpreter: only the tiny cases run")
        t, d_v = (21, 32) if self.FULL else (9, 16)
        dtype, tol = self.EXACT_DTYPE, self.EXACT_TOL
        args, mom = make_inputs(
            jax.random.key(11), t=t, d_v=d_v, momentum=with_momentum, dtype=dtype
        )
        s0 = random_state(jax.random.key(12), 1, 2, 16, d_v, mom, dtype)

        def grads(backward):
            blocks = BlockSizes(backward=backward)
            fast = lambda a, m, s: self.run(a, m, initial_state=s, block_sizes=blocks)
            return jax.jit(jax.grad(_loss, argnums=(1, 2, 3)), static_argnums=0)(
                fast, args, mom, s0
            )

        assert_trees_close(grads("pallas"), grads("xla"), rtol=tol, atol=tol)

    @pytest.mark.parametrize("d_k, d_v", [(48, 64), (64, 48)])
    def test_head_dims(self, x64, d_k, d_v):
        self.require_full()
        args, mom = make_inputs(jax.random.key(2), t=20, d_k=d_k, d_v=d_v)
        got = self.run(args, mom)
        want = gated_delta_recurrent(**args, momentum=mom)
        assert_trees_close(got, want, rtol=1e-9, atol=1e-9)

    def test_single_token(self, x64):
        self.require_full()
        args, mom = make_inputs(jax.random.key(3), t=1)
        assert_trees_close(
            self.run(args, mom), gated_delta_recurrent(**args, momentum=mom), rtol=1e-12, atol=1e-12
        )

    def test_streaming_equals_one_call(self, x64):
        """Two calls with the carried state equal one call over the whole sequence."""
        self.require_full()
        args, mom = make_inputs(jax.random.key(4), t=37)
        whole = self.run(args, mom)
        first = self.run({n: x[:, :20] for n, x in args.items()}, mom[:, :20])
        second = self.run(
            {n: x[:, 20:] for n, x in args.items()}, mom[:, 20:], initial_state=first[1]
        )
        o = jnp.concatenate([first[0], second[0]], axis=1)
        assert_trees_close((o, second[1]), whole, rtol=1e-9, atol=1e-9)

    @pytest.mark.parametrize(
        "dtype, tol", [(jnp.float32, 2e-4), (jnp.bfloat16, 5e-2)], ids=["f32", "bf16"]
    )
    def test_low_precision(self, dtype, tol):
        """Tolerances, relative to the largest output: f32 2e-4, bf16 5e-2 (inputs rounded to bf16;
        the kernels compute in f32). The oracle runs in f32 on the same rounded inputs."""
        self.require_full()
        args, mom = make_inputs(jax.random.key(5), t=40, dtype=jnp.float32)
        args = {n: x.astype(dtype) for n, x in args.items()}
        o, s = self.run(args, mom.astype(dtype))
        assert o.dtype == dtype and s.memory.dtype == jnp.float32
        o_ref, s_ref = gated_delta_recurrent(**args, momentum=mom.astype(dtype))
        scale = float(jnp.abs(o_ref.astype(jnp.float32)).max())
        np.testing.assert_allclose(
            np.asarray(o, np.float32), np.asarray(o_ref, np.float32), atol=tol * scale
        )
        assert_trees_close(s, s_ref, atol=tol * float(jnp.abs(s_ref.memory).max()))

    @pytest.mark.parametrize("with_momentum", [False, True])
    def test_correlated_keys_in_float32(self, with_momentum):
        """Keys of cosine ≈ 0.9 and β ≈ 1 at chunk 64 (the triangular solve's hard case: the
        product of powers was off by 10¹⁰ here, docs/kernels.md §2) match the f32 recurrence."""
        self.require_full()
        args, mom = make_inputs(jax.random.key(7), t=128, momentum=with_momentum, dtype=jnp.float32)
        shared = jax.random.normal(jax.random.key(8), (16,))
        k = 0.9 * shared + 0.1 * jax.random.normal(jax.random.key(9), args["k"].shape)
        args["k"] = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
        args["alpha"] = jnp.full_like(args["alpha"], 0.999)
        args["beta"] = jax.random.uniform(jax.random.key(10), args["beta"].shape, minval=0.9)
        o, s = self.run(args, mom, chunk_size=64)
        o_ref, s_ref = gated_delta_recurrent(**args, momentum=mom)
        scale = float(jnp.abs(o_ref).max())
        np.testing.assert_allclose(np.asarray(o), np.asarray(o_ref), atol=1e-4 * scale)
        state_scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(s_ref))
        assert_trees_close(s, s_ref, atol=1e-4 * state_scale)

    def test_nan_propagates(self):
        """A NaN in one value yields NaN in that head's later outputs and final state."""
        args, mom = make_inputs(jax.random.key(6), t=9, dtype=jnp.float32)
        args["v"] = args["v"].at[0, 3, 1, 0].set(jnp.nan)
        o, s = self.run(args, mom)
        assert bool(jnp.isnan(o[0, 3:, 1]).any()) and bool(jnp.isnan(s.memory[0, 1]).any())
        assert not bool(jnp.isnan(o[0, :, 0]).any())  # the other head is untouched


class TestXla(GatedDeltaSuite):
    IMPLEMENTATION = "xla"
    SLOW_TESTS = (
        "test_head_dims",
        "test_low_precision[bf16]",
        "test_nan_propagates",  # the default run checks it on the Triton interpreter
    )

    def test_matches_matrix_memory(self, x64):
        """Without momentum, equals `nestlearn.memory.matrix_memory.gated_delta_rule`."""
        matrix_memory = pytest.importorskip("nestlearn.memory.matrix_memory")
        args, _ = make_inputs(jax.random.key(7), t=21, momentum=False)
        s0 = random_state(jax.random.key(8), 1, 2, 16, 16, None)
        want = matrix_memory.gated_delta_rule(**args, chunk_size=8, initial_state=s0)
        assert_trees_close(self.run(args, None, initial_state=s0), want, rtol=1e-9, atol=1e-9)

    def test_titans_linear_memory_mapping(self, x64):
        """Titans Eqs. 13–14 with a linear memory and ℓ = ½‖Mk − v‖², written token by token,
        equal this op under α = 1 − α^T, m = η, β = θ/α, v ← α v (the docstring's mapping)."""
        args, eta = make_inputs(jax.random.key(9), t=13)
        forget = 1.0 - args["alpha"]  # Titans' α^T
        theta = args["beta"]  # Titans' θ

        def titans_step(carry, x):
            m_, s_ = carry  # memory M and momentum S^T [b, h, d_v, d_k]
            q_t, k_t, v_t, a_t, th_t, et_t = x
            grad = jnp.einsum("bhv,bhk->bhvk", jnp.einsum("bhvk,bhk->bhv", m_, k_t) - v_t, k_t)
            s_ = et_t[..., None, None] * s_ - th_t[..., None, None] * grad
            m_ = (1.0 - a_t[..., None, None]) * m_ + s_
            return (m_, s_), jnp.einsum("bhvk,bhk->bhv", m_, q_t)

        xs = [jnp.moveaxis(x, 1, 0) for x in (args["q"], args["k"], args["v"], forget, theta, eta)]
        zeros = jnp.zeros((1, 2, 16, 16))
        (m_end, s_end), o = jax.lax.scan(titans_step, (zeros, zeros), xs)
        alpha = args["alpha"]
        mapped = dict(args, beta=theta / alpha, v=alpha[..., None] * args["v"])
        o_op, state = self.run(mapped, eta)
        assert_trees_close(
            (o_op, state),
            (jnp.moveaxis(o, 0, 1), GatedDeltaState(m_end, s_end)),
            rtol=1e-9,
            atol=1e-9,
        )


class TestTritonInterpret(GatedDeltaSuite):
    IMPLEMENTATION = "pallas_triton"
    INTERPRET = True
    SLOW_TESTS = (
        "test_values_and_gradients_match_recurrence[False]",
        "test_head_dims[48-64]",
        "test_streaming_equals_one_call",
        "test_low_precision[f32]",
        "test_backward_kernel_equals_xla_backward[False]",
    )


class TestTpuInterpret(GatedDeltaSuite):
    IMPLEMENTATION = "pallas_tpu"
    INTERPRET = pltpu.InterpretParams()
    CHUNK = 8
    FULL = False
    EXACT_DTYPE = jnp.float32
    EXACT_TOL = 1e-4
    SLOW_TESTS = (
        "test_values_and_gradients_match_recurrence",
        "test_nan_propagates",
        "test_backward_kernel_equals_xla_backward",  # the default run lowers it for tpu
    )

    def test_forward_tiny(self):
        """The default-run TPU-interpreter case: one forward with momentum, T = 9, two chunks."""
        args, mom = make_inputs(jax.random.key(10), t=9, dtype=jnp.float32)
        got = self.run(args, mom)
        want = gated_delta_recurrent(**args, momentum=mom)
        assert_trees_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the compiled Triton kernel needs a GPU")
class TestTritonGpu(GatedDeltaSuite):
    """The compiled Triton kernel on a real GPU (`kernels/gpu_check.sh`); every test runs."""

    IMPLEMENTATION = "pallas_triton"
