"""The models' `kernel_impl` switch: the Pallas kernels behind every wired model equal XLA.

`kernel_impl="pallas"` runs `nestlearn.kernels` ops (`gated_delta` for the matrix mixers,
`mlp_memory` for the Titans memory, `per_sequence.scan` of the self-modifying chunk write for
Hope's output memory); on the CPU the test-only switch `NESTLEARN_KERNEL_INTERPRET`
runs their Triton kernel body in the Pallas interpreter. Each wired model's logits and parameter
gradients must equal those of the same weights with `kernel_impl="xla"` (float32: only rounding
differs), "auto" must pick XLA on the CPU, and configurations no kernel covers must raise.

The interpreter is slow to compile, so the default run compares values and gradients for
`linear_attention` only (the Titans and self-modifying memories' kernel paths are compared in
float64 in tests/memory/test_titans.py and tests/memory/test_self_modifying.py) and traces the
others (their "pallas" jaxpr holds a `pallas_call`); `-m slow` compares every model.
"""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from nestlearn.kernels import kernel_impl

from nestlearn import models

WIRED = (
    "linear_attention",
    "deltanet",
    "gated_deltanet",
    "titans_lmm",
    "titans_mac",
    "titans_mag",
    "titans_mal",
    "hope",
)
DEFAULT_RUN = ("linear_attention",)  # titans_memory's kernel path: tests/memory/test_titans.py


def _slow_unless_default(names):
    return [n if n in DEFAULT_RUN else pytest.param(n, marks=pytest.mark.slow) for n in names]


VOCAB = 16
BATCH, T = 2, 20  # 20 tokens: one full chunk of 16 and a partial one
# float32 models: the kernel and XLA paths differ by summation order only.
# Measured: titans_lmm 3e-7 (logits) and 1e-6 (gradients); linear_attention is bit-exact.
LOGITS_TOL = 2e-5  # max |Δ logits| / max |logits|
GRAD_TOL = 1e-4  # per leaf: max |Δ g| / max |g|


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv(kernel_impl.INTERPRET_ENV, "1")


def tiny_config(name, impl, **memory):
    config = models.default_config(name)
    config.update(
        vocab_size=VOCAB,
        d_model=32,
        num_layers=1,
        num_heads=2,
        max_len=64,
        chunk_size=16,
        mlp_ratio=2.0,
        kernel_impl=impl,
    )
    if "window" in config:
        config.window = 8 if name != "titans_mac" else 0
    if memory:
        config.memory.update(memory)
    return config


def build(name, impl, **memory):
    return models.build(tiny_config(name, impl, **memory), rngs=nnx.Rngs(0))


def _tokens(t=T):
    return jax.random.randint(jax.random.key(1), (BATCH, t), 0, VOCAB)


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(graphdef, params, rest, tokens):
    def loss(params):
        logits, _ = nnx.merge(graphdef, params, rest)(tokens)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
        return jnp.mean(ce), logits

    return jax.value_and_grad(loss, has_aux=True)(params)


def loss_and_grads(model, tokens):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    (_, logits), grads = _loss_and_grads(graphdef, params, rest, tokens)
    return logits, jax.tree.leaves(grads)


def uses_pallas(model, tokens) -> bool:
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x)[0])(state, tokens)
    return "pallas_call" in str(jaxpr)


def assert_close(got, want, tol, what):
    scale = max(float(jnp.max(jnp.abs(want))), 1e-12)
    err = float(jnp.max(jnp.abs(got - want)))
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol} × {scale:.3g}"


@pytest.mark.parametrize("name", _slow_unless_default(WIRED))
def test_pallas_model_equals_xla_model(interpret, name):
    _assert_pallas_model_equals_xla_model(name)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the compiled Triton kernel needs a GPU")
@pytest.mark.parametrize("name", WIRED)
def test_compiled_kernel_model_equals_xla_model_on_gpu(name):
    """The same comparison with the compiled kernel (`kernels/gpu_check.sh`; run it with
    ``JAX_DEFAULT_MATMUL_PRECISION=highest`` so XLA's float32 matmuls do not round to TF32)."""
    _assert_pallas_model_equals_xla_model(name)


def _assert_pallas_model_equals_xla_model(name):
    xla, pallas = build(name, "xla"), build(name, "pallas")
    nnx.update(pallas, nnx.state(xla))  # same weights (equal already: same seed)
    tokens = _tokens()
    want_logits, want_grads = loss_and_grads(xla, tokens)
    got_logits, got_grads = loss_and_grads(pallas, tokens)
    assert_close(got_logits, want_logits, LOGITS_TOL, "logits")
    assert len(got_grads) == len(want_grads)
    for i, (g, w) in enumerate(zip(got_grads, want_grads)):
        assert_close(g, w, GRAD_TOL, f"gradient leaf {i} of {len(want_grads)}")


@pytest.mark.parametrize("name", _slow_unless_default(["linear_attention", "titans_mac"]))
def test_stream_switches_between_implementations(interpret, name):
    """A stream started on XLA continues on the kernel: the state layouts are the same."""
    xla, pallas = build(name, "xla"), build(name, "pallas")
    nnx.update(pallas, nnx.state(xla))
    tokens = _tokens()
    whole, _ = jax.jit(lambda x: xla(x))(tokens)
    first, state = jax.jit(lambda x: xla(x))(tokens[:, :9])
    second, _ = jax.jit(lambda x, s: pallas(x, s))(tokens[:, 9:], state)
    assert_close(jnp.concatenate([first, second], axis=1), whole, LOGITS_TOL, "logits")


@pytest.mark.parametrize("name", WIRED)
def test_switch_reaches_the_kernel_and_auto_picks_xla_on_cpu(interpret, name):
    """kernel_impl="pallas" puts a `pallas_call` in the model; "auto" on the CPU never does, even
    with the interpret switch on."""
    assert jax.default_backend() == "cpu"
    assert uses_pallas(build(name, "pallas"), _tokens(16))  # one full chunk
    assert not uses_pallas(build(name, "auto"), _tokens(16))


def test_pallas_needs_a_pallas_platform():
    model = build("gated_deltanet", "pallas")
    with pytest.raises(ValueError, match="platform 'cpu' has no Pallas backend"):
        model(_tokens())


@pytest.mark.parametrize(
    "name, memory, match",
    [
        ("titans_lmm", {"depth": 1}, "memory.depth=1.*arch='matrix'"),
        ("titans_mac", {"depth": 1}, "memory.depth=1"),
        ("titans_mag", {"depth": 3}, "memory.depth=3"),
        ("titans_mal", {"activation": "gelu"}, "memory.activation='gelu'"),
        ("titans_lmm", {"stop_gradient_writes": True}, "stop_gradient_writes=True"),
    ],
)
def test_uncovered_titans_memory_raises_at_build(name, memory, match):
    with pytest.raises(ValueError, match="kernel_impl='pallas'.*" + match):
        build(name, "pallas", **memory)
    build(name, "auto", **memory)  # auto and xla keep the XLA memory


def test_uncovered_chunk_size_raises(interpret):
    config = tiny_config("deltanet", "pallas")
    config.chunk_size = 8
    model = models.build(config, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="chunk_size=8 must be a power of two"):
        model(_tokens())


def test_hope_uncovered_configuration_raises():
    config = tiny_config("hope", "pallas")
    config.self_modifying.eta_alpha_per_channel = True
    model = models.build(config, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"kernel_impl='pallas'.*eta_alpha_per_channel=True"):
        model(_tokens())
