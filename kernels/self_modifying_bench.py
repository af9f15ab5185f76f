"""Benchmark of Hope's self-modifying memory: its chunk scans on the Pallas kernels vs XLA.

    python -m nestlearn.kernels.self_modifying_bench [--sm_d 32] [--out self_modifying.json]
    python -m nestlearn.kernels.self_modifying_bench --quick   # CPU smoke run (interpreter)

Times ``nestlearn.memory.self_modifying_memory`` — the whole layer a Hope model runs: the
generator memories (k, v, η, α), then the output memory — with ``kernel_impl="xla"`` and with
both chunk scans on the platform's Pallas kernels (``kernel_impl="pallas"``; the backward
kernels, chunk-start states recomputed). The write rule is the ``hope`` model's
(``nestlearn.models.hope.HOPE_WRITES``) with the DGD erase and momentum 0.5 switched on
(``--sm_variant dgd_momentum``, default) or as shipped (``--sm_variant hope``). Shape: T ∈ {2048,
8192}, per-head width ``--sm_d`` (default 32, the ``hope`` model's: the four generators'
weights, momenta and anchors, 96 KiB in float32, stay within one Triton program; at 64 they take
384 KiB and run in XLA, with a warning, while the output memory's 96 KiB stay on the kernel),
``--heads`` heads, batch ``--batch``, output-memory chunk ``--chunk`` (64), generator chunk 32.

Work counted, for both rows from the XLA path's forward and forward+backward, so the TFLOP/s
ratio of two rows is their speed ratio: FLOPs by ``nestlearn.core.count_flops`` (the jaxpr, every
chunk iteration), bytes accessed by XLA's cost analysis of the compiled program (which counts a
loop body once, so the bytes, and the % of the bandwidth ceiling, are understated).
"""

import contextlib
import functools
import os

import jax
import jax.numpy as jnp
from nestlearn.kernels import benchmarking
from nestlearn.kernels.benchmarking import Cost
from nestlearn.kernels.kernel_impl import INTERPRET_ENV, PALLAS_BACKENDS

VARIANTS = {
    "hope": {},
    "dgd_momentum": {"use_dgd": True, "momentum": 0.5},
}


def _config(variant: str, chunk: int):
    from nestlearn.memory.self_modifying import SelfModifyingConfig
    from nestlearn.models.hope import HOPE_WRITES

    options = {**HOPE_WRITES, **VARIANTS[variant]}
    return SelfModifyingConfig(memory_chunk_size=chunk, **options)


def _work(fn, args) -> Cost:
    """FLOPs of ``fn`` counted on its jaxpr; bytes accessed as XLA counts its compiled program."""
    from nestlearn.core import count_flops

    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return Cost(count_flops(fn, *args).flops, float(analysis.get("bytes accessed", 0.0)))


@contextlib.contextmanager
def _interpreted(on: bool):
    """The test-only interpret switch (``NESTLEARN_KERNEL_INTERPRET``) on while tracing."""
    old = os.environ.get(INTERPRET_ENV)
    if on:
        os.environ[INTERPRET_ENV] = "1"
    try:
        yield
    finally:
        if on and old is None:
            del os.environ[INTERPRET_ENV]
        elif on:
            os.environ[INTERPRET_ENV] = old


def _make(*, kernel_impl, interpret, b, t, h, d, dtype, chunk, variant):
    from nestlearn.memory import self_modifying as sm

    config = _config(variant, chunk)
    params = sm.self_modifying_init(jax.random.key(0), heads=h, dim=d, config=config)
    kx, kq = jax.random.split(jax.random.key(1))
    x = (d**-0.5 * jax.random.normal(kx, (b, t, h, d), jnp.float32)).astype(dtype)
    q = jax.random.normal(kq, (b, t, h, d), jnp.float32).astype(dtype)

    def forward(params, x, q, impl=kernel_impl):
        with _interpreted(interpret and impl != "xla"):  # read when the layer is traced
            return sm.self_modifying_memory(x, q, params=params, config=config, kernel_impl=impl)[0]

    def loss(params, x, q, impl=kernel_impl):
        return jnp.sum(forward(params, x, q, impl).astype(jnp.float32))

    args = (params, x, q)
    xla_loss = functools.partial(loss, impl="xla")
    return dict(
        forward=forward,
        loss=loss,
        args=args,
        cost_fwd=_work(functools.partial(forward, impl="xla"), args),
        cost_train=_work(jax.grad(xla_loss), args),
    )


def add_flags(p):
    """This benchmark's flags (also taken by ``bench_all``)."""
    p.add_argument("--sm_d", type=int, default=32, help="per-head width of the memories")
    p.add_argument("--sm_variant", default="dgd_momentum", choices=sorted(VARIANTS))


def cases(a):
    """The benchmark cases of parsed flags ``a`` (see :func:`benchmarking.run`).

    Rows: ``kernel_impl="xla"`` and, where the platform has a Pallas backend (or ``--quick``,
    which traces it with the test-only interpret switch ``NESTLEARN_KERNEL_INTERPRET`` on),
    ``kernel_impl="pallas"``.
    """
    d = 16 if a.quick else a.sm_d
    shape = dict(b=a.batch, h=a.heads, d=d, dtype=a.dtype, chunk=a.chunk, variant=a.sm_variant)
    pallas = PALLAS_BACKENDS.get(jax.default_backend()) or ("pallas_triton" if a.quick else None)
    for t in a.t:
        for impl in ["xla"] + (["pallas"] if pallas else []):
            interpret = impl != "xla" and a.interpret
            make = functools.partial(
                _make,
                kernel_impl=impl,
                interpret=interpret,
                t=t,
                **{**shape, "dtype": jnp.dtype(a.dtype)},
            )
            yield dict(
                op="self_modifying",
                variant=a.sm_variant,
                t=t,
                implementation="xla" if impl == "xla" else pallas,
                interpret=interpret,
                shape=shape,
                make=make,
            )


def main(argv=None):
    p = benchmarking.parser(__doc__.splitlines()[0])
    add_flags(p)
    a = benchmarking.finish_args(p.parse_args(argv), argv)
    benchmarking.report(benchmarking.run(cases(a), a), a.out)


if __name__ == "__main__":
    main()
