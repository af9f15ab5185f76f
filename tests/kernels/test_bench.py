"""The benchmark scripts: their analytic work counts, and a smoke run so they cannot rot.

FLOPs are checked against the `dot_general`s in the jaxpr of each op's chunk step; forward bytes
against the operands and results of the Triton kernel's `pallas_call`.
"""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import pytest
from nestlearn.kernels import bench_all, kernel_impl, triangular
from nestlearn.kernels.gated_delta import bench as gd_bench
from nestlearn.kernels.gated_delta import chunk as gd_chunk
from nestlearn.kernels.gated_delta import gated_delta
from nestlearn.kernels.mlp_memory import bench as mlp_bench
from nestlearn.kernels.mlp_memory import chunk as mlp_chunk
from nestlearn.kernels.mlp_memory import mlp_memory


def _sub_jaxprs(value):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def dot_flops(jaxpr) -> int:
    """2 × (output size) × (contracted size), summed over every dot_general, nested included."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[i] for i in contract)
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                total += dot_flops(sub)
    return total


def pallas_call_bytes(jaxpr) -> int:
    """Bytes of the operands and results of the (single) pallas_call in ``jaxpr``."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                found.append(eqn)
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    walk(sub)

    walk(jaxpr)
    assert len(found) == 1
    avals = [v.aval for v in (*found[0].invars, *found[0].outvars)]
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in avals)


def _one_chunk(terms):
    return jax.tree.map(lambda x: None if x is None else x[0, 0], terms)


@pytest.mark.parametrize(
    "momentum, c, d_k, d_v", [(False, 64, 32, 16), (True, 16, 16, 32), (True, 12, 8, 8)]
)
def test_gated_delta_flops_match_the_chunk_step(momentum, c, d_k, d_v):
    shape = (1, c, 1)
    q = jnp.ones((*shape, d_k))
    gates = jnp.ones(shape)
    terms = gd_chunk.chunk_terms(
        q,
        q,
        jnp.ones((*shape, d_v)),
        gates,
        gates,
        gates if momentum else None,
        chunk_size=c,
        d_k=d_k,
        d_v=d_v,
        dtype=jnp.float32,
    )
    s0 = jnp.zeros((d_v, d_k))
    step = functools.partial(gd_chunk.chunk_step, solve=triangular.unit_lower_solve)  # kernels'
    jaxpr = jax.make_jaxpr(step)(_one_chunk(terms), (s0, s0 if momentum else None))
    fwd, train = gd_bench.cost(b=1, t=c, h=1, d_k=d_k, d_v=d_v, chunk_size=c, momentum=momentum)
    assert fwd.flops == dot_flops(jaxpr.jaxpr)
    assert train.flops == 3 * fwd.flops


@pytest.mark.parametrize("momentum", [False, True])
def test_gated_delta_bytes_match_the_kernel_operands(momentum):
    b, t, h, d, c = 2, 40, 3, 16, 16
    x = jnp.ones((b, t, h, d))
    gates = jnp.ones((b, t, h))
    jaxpr = jax.make_jaxpr(
        lambda x, g: gated_delta(
            x,
            x,
            x,
            g,
            g,
            momentum=g if momentum else None,
            chunk_size=c,
            implementation="pallas_triton",
            interpret=True,
        )
    )(x, gates)
    fwd, _ = gd_bench.cost(b=b, t=t, h=h, d_k=d, d_v=d, chunk_size=c, momentum=momentum)
    assert fwd.bytes == pallas_call_bytes(jaxpr.jaxpr)


def test_mlp_memory_flops_and_bytes():
    b, t, h, d_in, d_out, n, c = 1, 40, 2, 16, 32, 48, 16
    shape = (b, t, h)
    q, v, gates = jnp.ones((*shape, d_in)), jnp.ones((*shape, d_out)), jnp.full(shape, 0.5)
    terms = mlp_chunk.chunk_terms(
        q, q, v, gates, gates, gates, chunk_size=c, d_in=d_in, d_out=d_out, dtype=jnp.float32
    )
    w = mlp_chunk.Weights(jnp.ones((d_out, n)), jnp.ones((n, d_in)))
    step = lambda x, s: mlp_chunk.chunk_step(x, s, residual=False)
    jaxpr = jax.make_jaxpr(step)(_one_chunk(terms), (w, w))
    per_chunk, _ = mlp_bench.cost(b=1, t=c, h=1, d_in=d_in, d_out=d_out, hidden=n, chunk_size=c)
    assert per_chunk.flops == dot_flops(jaxpr.jaxpr)
    params = {"w1": jnp.ones((h, d_out, n)), "w2": jnp.ones((h, n, d_in))}
    jaxpr = jax.make_jaxpr(
        lambda q, v, g: mlp_memory(
            q,
            q,
            v,
            g,
            g,
            g,
            params=params,
            chunk_size=c,
            implementation="pallas_triton",
            interpret=True,
        )
    )(q, v, gates)
    # Triton pads widths to powers of two: count with the padded widths.
    fwd, _ = mlp_bench.cost(b=b, t=t, h=h, d_in=16, d_out=32, hidden=64, chunk_size=c)
    assert fwd.bytes == pallas_call_bytes(jaxpr.jaxpr)


@pytest.mark.slow
def test_bench_all_quick_smoke(tmp_path, capsys):
    """The one-command benchmark end to end on the CPU (tiny shapes, interpreted kernel)."""
    out = tmp_path / "kernels.json"
    bench_all.main(["--quick", "--t", "16", "--heads", "1", "--hidden", "16", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["device"]["platform"] == "cpu"
    assert result["device"]["host_cpus"] >= 1 and len(result["device"]["load_average"]) == 3
    assert result["ceilings"]["matmul_tflops"] > 0 and result["ceilings"]["copy_gbs"] > 0
    rows = result["rows"]
    key = lambda r: (r["op"], r["variant"].split(",")[0], r["implementation"], r.get("tiling"))
    assert [key(r) for r in rows] == [
        (op, variant, impl, tiling)
        for op, variant in [
            ("gated_delta", "plain"),
            ("gated_delta", "momentum"),
            ("mlp_memory", "residual"),
        ]
        for impl, tiling in [
            ("xla", None),
            ("pallas_triton", "backward pallas"),
            ("pallas_triton", "backward xla"),
        ]
    ] + [("self_modifying", "dgd_momentum", impl, None) for impl in ("xla", "pallas_triton")]
    assert kernel_impl.INTERPRET_ENV not in os.environ  # the interpret switch was traced only
    for r in rows:
        assert "error" not in r, r.get("error")
        for name in ("fwd", "fwd_bwd"):
            assert r[name]["ms"] > 0 and r[name]["tflops"] > 0 and r[name]["gbs"] > 0
            assert r[name]["speedup_vs_xla"] > 0
    table = capsys.readouterr().out
    row = "| gated_delta | momentum | 16 | pallas_triton (backward pallas) (interpret) |"
    assert row in table
