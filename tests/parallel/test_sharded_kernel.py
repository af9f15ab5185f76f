"""Pallas kernels under `shard_map` equal the unsharded op, forward and backward.

The 8-device cases run `sharded_kernel_run.py` in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`, the kernels in Pallas interpret mode.

Tolerance. Each device runs the same kernel on its own sequences and heads, so outputs and the
gradients of per-sequence inputs are those of the unsharded op (measured: outputs bit-identical,
gradients within 1.4e-6 of magnitudes up to 14: the unsharded op's XLA backward sums the
gradients of gates over a differently shaped batch); the gradient of per-head parameters
replicated over the batch shards is a cross-device sum, another reduction order. Bound: 1e-6
relative to the largest entry for outputs, 1e-6 relative for gradients (float32 eps 1.2e-7, a
few sums of at most 64 terms).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType
from nestlearn.kernels import GatedDeltaState, gated_delta

from nestlearn.parallel import (
    GATED_DELTA_LAYOUT,
    MESH_AXES,
    make_mesh,
    mesh_context,
    sharded_kernel,
)

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
RTOL = 1e-6
MESH8 = AbstractMesh((2, 2, 2), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _run(*cases):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharded_kernel_run.py"), *cases],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [
        json.loads(ln.removeprefix("KERNEL_RESULT "))
        for ln in proc.stdout.splitlines()
        if ln.startswith("KERNEL_RESULT ")
    ]


def _check(report):
    assert report["out_max_abs"] <= RTOL * report["out_max"], report
    assert report["grad_max_abs"] <= RTOL * report["grad_max"], report
    assert report["forward_collectives"] == [], report  # each device computes its own block


def _inputs(b=2, t=8, h=2, d=4):
    ks = jax.random.split(jax.random.PRNGKey(0), 5)
    q = jax.random.normal(ks[0], (b, t, h, d))
    v = jax.random.normal(ks[1], (b, t, h, d))
    alpha = jax.nn.sigmoid(jax.random.normal(ks[2], (b, t, h)) + 3)
    beta = jax.nn.sigmoid(jax.random.normal(ks[3], (b, t, h)))
    return q, q / jnp.linalg.norm(q, axis=-1, keepdims=True), v, alpha, beta


@pytest.mark.slow
def test_mlp_memory_with_per_head_params_on_a_2x2x2_mesh_from_the_context_mesh():
    (report,) = _run("mlp_memory_2x2x2")
    _check(report)
    assert "params" in report["grad_names"]  # summed over the batch shards by shard_map
    assert report["o_spec"] == "P(('data', 'fsdp'), None, 'tensor')"
    assert report["o_shard_shape"] == [1, 16, 1, 8]  # 4 sequences / 4, 2 heads / 2


@pytest.mark.slow
def test_gated_delta_momentum_state_indivisible_heads_and_the_tpu_kernel():
    reports = _run(
        "gated_delta_momentum_2x2x2",
        "gated_delta_indivisible_2x2x2",
        "mlp_memory_state_8x1x1",
        "gated_delta_tpu_2x1x2",
    )
    for r in reports:
        _check(r)
    momentum, indivisible, mlp_state, tpu = reports
    assert "initial_state" in momentum["grad_names"] and "momentum" in momentum["grad_names"]
    assert momentum["o_shard_shape"] == [1, 16, 1, 8]
    assert indivisible["o_shard_shape"] == [2, 16, 3, 8]  # whole on every device
    assert mlp_state["o_shard_shape"] == [1, 16, 2, 8]
    assert tpu["o_shard_shape"] == [1, 16, 1, 8]


def test_without_a_mesh_it_is_the_op(x64):
    q, k, v, alpha, beta = _inputs()
    want = gated_delta(q, k, v, alpha, beta, chunk_size=4, implementation="xla")
    got = jax.jit(lambda *a: sharded_kernel(gated_delta)(*a, chunk_size=4, implementation="xla"))(
        q, k, v, alpha, beta
    )
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_mesh_context_sets_the_mesh_while_tracing():
    mesh = make_mesh((1, 1, 1))
    seen = []

    def fn(x):
        seen.append(jax.sharding.get_abstract_mesh())
        return x

    jax.jit(mesh_context(fn, mesh))(jnp.ones(2))
    assert seen == [mesh.abstract_mesh]
    assert mesh_context(fn, None) is fn


def test_bad_calls_name_the_argument():
    q, k, v, alpha, beta = _inputs(b=4)
    with pytest.raises(ValueError, match="KERNEL_LAYOUTS"):
        sharded_kernel(lambda q: q, MESH8)
    other = AbstractMesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    with pytest.raises(ValueError, match=r"\['fsdp', 'tensor'\]"):
        sharded_kernel(gated_delta, other)(q, k, v, alpha, beta, chunk_size=4)
    bad_state = GatedDeltaState(jnp.zeros((4, 2, 4, 4)), jnp.zeros((2, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"'initial_state'.*shape \(2, 2, 4, 4\)"):
        sharded_kernel(gated_delta, MESH8, layout=GATED_DELTA_LAYOUT)(
            q, k, v, alpha, beta, chunk_size=4, initial_state=bad_state
        )
