"""Shared contract suite for `nestlearn.kernels.mlp_memory`, run for every implementation.

Oracle: `mlp_memory_recurrent`, token by token with `jax.grad` of ½‖M(k) − v‖² at the chunk-start
weights (Titans Eqs. 13–14, 16–18), in float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from nestlearn.kernels import mlp_memory
from nestlearn.kernels.mlp_memory import BlockSizes, mlp_memory_recurrent


def make_inputs(key, *, b=1, t=21, h=2, d=16, d_out=None, hidden=24, dtype=jnp.float64):
    d_out = d if d_out is None else d_out
    ks = jax.random.split(key, 8)
    args = {
        "q": jax.random.normal(ks[0], (b, t, h, d), dtype),
        "k": jax.random.normal(ks[1], (b, t, h, d), dtype) / jnp.sqrt(d),
        "v": jax.random.normal(ks[2], (b, t, h, d_out), dtype),
        "theta": jax.random.uniform(ks[3], (b, t, h), dtype, 0.01, 0.2),
        "alpha": jax.random.uniform(ks[4], (b, t, h), dtype, 0.0, 0.2),
        "eta": jax.random.uniform(ks[5], (b, t, h), dtype, 0.0, 0.9),
    }
    params = {
        "w1": jax.random.normal(ks[6], (h, d_out, hidden), dtype) / jnp.sqrt(hidden),
        "w2": jax.random.normal(ks[7], (h, hidden, d), dtype) / jnp.sqrt(d),
    }
    return args, params


def scalar_loss(o, state):
    return jnp.sum(jnp.sin(o)) + sum(jnp.sum(x * jnp.cos(x)) for x in jax.tree.leaves(state))


def assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def _loss(fn, args, params):
    return scalar_loss(*fn(args, params))


@functools.cache
def oracle(residual, t, chunk_size, dtype):
    """Inputs, values and gradients of the token recurrence, shared by every backend's suite."""
    args, params = make_inputs(jax.random.key(0), t=t, dtype=dtype)
    ref = lambda a, p: mlp_memory_recurrent(**a, params=p, chunk_size=chunk_size, residual=residual)
    grads = jax.jit(jax.grad(_loss, argnums=(1, 2)), static_argnums=0)(ref, args, params)
    return (args, params), ref(args, params), grads


class MLPMemorySuite:
    """Contract tests; subclasses set IMPLEMENTATION, INTERPRET, CHUNK, FULL and dtypes."""

    IMPLEMENTATION = "xla"
    INTERPRET = False
    CHUNK = 16
    FULL = True
    EXACT_DTYPE = jnp.float64
    EXACT_TOL = 1e-9

    def run(
        self, args, params, initial_state=None, residual=False, chunk_size=None, block_sizes=None
    ):
        chunk_size = self.CHUNK if chunk_size is None else chunk_size
        fn = jax.jit(
            lambda args, params, initial_state: mlp_memory(
                **args,
                params=params,
                initial_state=initial_state,
                chunk_size=chunk_size,
                residual=residual,
                implementation=self.IMPLEMENTATION,
                interpret=self.INTERPRET,
                block_sizes=block_sizes,
            )
        )
        return fn(args, params, initial_state)

    def require_full(self):
        if not self.FULL:
            pytest.skip("TPU interpreter: only the tiny cases run")

    @pytest.mark.parametrize("residual", [False, True])
    def test_values_and_gradients_match_recurrence(self, x64, residual):
        """T not a multiple of the chunk; gradients w.r.t. inputs, gates and initial weights."""
        t = 21 if self.FULL else 9
        tol = self.EXACT_TOL
        inputs, want, want_grads = oracle(residual, t, self.CHUNK, self.EXACT_DTYPE)
        fast = lambda a, p: self.run(a, p, residual=residual)
        assert_trees_close(fast(*inputs), want, rtol=tol, atol=tol)
        grads = jax.jit(jax.grad(_loss, argnums=(1, 2)), static_argnums=0)(fast, *inputs)
        assert_trees_close(grads, want_grads, atol=10 * tol)

    def test_backward_kernel_equals_xla_backward(self, x64):
        """The Pallas backward (chunk-start weights and momenta recomputed by the forward kernel,
        chunks walked in reverse) gives the gradients of the XLA reverse scan from saved states."""
        if self.IMPLEMENTATION == "xla":
            pytest.skip("the XLA path has no kernel backward")
        t = 21 if self.FULL else 9
        tol = self.EXACT_TOL
        inputs, _, _ = oracle(True, t, self.CHUNK, self.EXACT_DTYPE)

        def grads(backward):
            blocks = BlockSizes(backward=backward)
            fast = lambda a, p: self.run(a, p, residual=True, block_sizes=blocks)
            return jax.jit(jax.grad(_loss, argnums=(1, 2)), static_argnums=0)(fast, *inputs)

        assert_trees_close(grads("pallas"), grads("xla"), rtol=tol, atol=tol)

    @pytest.mark.parametrize("d, d_out, hidden", [(48, 64, 16), (64, 16, 48)])
    def test_widths(self, x64, d, d_out, hidden):
        self.require_full()
        args, params = make_inputs(jax.random.key(1), t=20, d=d, d_out=d_out, hidden=hidden)
        want = mlp_memory_recurrent(**args, params=params, chunk_size=self.CHUNK)
        assert_trees_close(self.run(args, params), want, rtol=1e-9, atol=1e-9)

    def test_single_token(self, x64):
        self.require_full()
        args, params = make_inputs(jax.random.key(2), t=1)
        want = mlp_memory_recurrent(**args, params=params, chunk_size=self.CHUNK)
        assert_trees_close(self.run(args, params), want, rtol=1e-12, atol=1e-12)

    def test_streaming_equals_one_call(self, x64):
        """A split at a chunk boundary with the carried state equals one call."""
        self.require_full()
        args, params = make_inputs(jax.random.key(3), t=37)
        whole = self.run(args, params)
        first = self.run({n: x[:, :16] for n, x in args.items()}, params)
        second = self.run({n: x[:, 16:] for n, x in args.items()}, params, initial_state=first[1])
        o = jnp.concatenate([first[0], second[0]], axis=1)
        assert_trees_close((o, second[1]), whole, rtol=1e-9, atol=1e-9)

    @pytest.mark.parametrize(
        "dtype, tol", [(jnp.float32, 2e-4), (jnp.bfloat16, 5e-2)], ids=["f32", "bf16"]
    )
    def test_low_precision(self, dtype, tol):
        """Tolerance relative to the largest output: f32 2e-4, bf16 5e-2 (kernels compute in
        f32 from bf16-rounded inputs; the oracle runs on the same rounded inputs)."""
        self.require_full()
        args, params = make_inputs(jax.random.key(4), t=40, dtype=jnp.float32)
        args = {n: x.astype(dtype) for n, x in args.items()}
        o, state = self.run(args, params)
        assert o.dtype == dtype and state.weights["w1"].dtype == jnp.float32
        o_ref, _ = mlp_memory_recurrent(**args, params=params, chunk_size=self.CHUNK)
        scale = float(jnp.abs(o_ref.astype(jnp.float32)).max())
        np.testing.assert_allclose(
            np.asarray(o, np.float32), np.asarray(o_ref, np.float32), atol=tol * scale
        )

    def test_nan_propagates(self):
        """A NaN key poisons that head's next chunk and its final weights, not the other head."""
        args, params = make_inputs(jax.random.key(5), t=20, dtype=jnp.float32)
        args["k"] = args["k"].at[0, 2, 1, 0].set(jnp.nan)
        o, state = self.run(args, params)
        assert bool(jnp.isnan(o[0, self.CHUNK :, 1]).any()) and bool(
            jnp.isnan(state.weights["w2"][0, 1]).any()
        )
        assert not bool(jnp.isnan(o[0, :, 0]).any())


class TestXla(MLPMemorySuite):
    IMPLEMENTATION = "xla"
    SLOW_TESTS = (
        "test_widths",
        "test_low_precision[bf16]",
        "test_nan_propagates",  # the default run checks it on the Triton interpreter
    )

    def test_matches_titans_memory(self, x64):
        """Equals `nestlearn.memory.titans.titans_memory` with a residual MLP when it exists."""
        titans = pytest.importorskip("nestlearn.memory.titans")
        architectures = pytest.importorskip("nestlearn.memory.architectures")
        args, params = make_inputs(jax.random.key(6), t=21)
        arch = architectures.residual_mlp(hidden=24)
        want = titans.titans_memory(
            args["q"],
            args["k"],
            args["v"],
            args["theta"],
            args["alpha"],
            args["eta"],
            arch=arch,
            params=params,
            chunk_size=self.CHUNK,
        )
        o, state = self.run(args, params, residual=True)
        # TitansState and MLPMemoryState share the fields (weights, momentum).
        assert_trees_close((o, tuple(state)), (want[0], tuple(want[1])), rtol=1e-9, atol=1e-9)


class TestTritonInterpret(MLPMemorySuite):
    IMPLEMENTATION = "pallas_triton"
    INTERPRET = True
    SLOW_TESTS = (
        "test_values_and_gradients_match_recurrence[False]",
        "test_widths[48-64-16]",
        "test_streaming_equals_one_call",
        "test_low_precision[f32]",
        "test_backward_kernel_equals_xla_backward",  # the gradient test runs the kernel backward
    )


class TestTpuInterpret(MLPMemorySuite):
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
        """The default-run TPU-interpreter case: one residual forward, T = 9, two chunks."""
        args, params = make_inputs(jax.random.key(7), t=9, dtype=jnp.float32)
        want = mlp_memory_recurrent(**args, params=params, chunk_size=8, residual=True)
        assert_trees_close(self.run(args, params, residual=True), want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the compiled Triton kernel needs a GPU")
class TestTritonGpu(MLPMemorySuite):
    """The compiled Triton kernel on a real GPU (`kernels/gpu_check.sh`); every test runs."""

    IMPLEMENTATION = "pallas_triton"
