"""Partitioning rules cover every parameter of every model; mesh sizes and config validation."""

import jax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from nestlearn import models
from nestlearn.core import flatten_with_paths
from nestlearn.parallel import (
    MESH_AXES,
    MESH_RULES,
    logical_axes,
    mesh_shape,
    partition_spec,
    tree_shardings,
)
from nestlearn.train import base_config, validate_config

MESH = AbstractMesh((2, 2, 2), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _variants(name):
    """The default config of `name` at a small width, plus variants that add parameters."""
    base = models.default_config(name)
    base.d_model, base.num_heads, base.num_layers, base.max_len = 32, 4, 1, 32
    base.chunk_size = 8
    out = [base]
    untied = models.default_config(name)
    untied.update(base.to_dict())
    untied.tie_embeddings = False
    out.append(untied)
    if "cms" in base:
        mlp = models.default_config(name)
        mlp.update(base.to_dict())
        mlp.cms.ffn = "mlp"
        out.append(mlp)
    return out


def _abstract_params(config):
    model = nnx.eval_shape(lambda: models.build(config, rngs=nnx.Rngs(0)))
    return nnx.split(model, nnx.Param, ...)[1]


@pytest.mark.parametrize("name", models.available())
def test_every_parameter_of_every_model_has_a_rule_that_fits_its_shape(name):
    for config in _variants(name):
        pairs, _ = flatten_with_paths(_abstract_params(config))
        assert pairs
        for path, leaf in pairs:
            axes = logical_axes(path, leaf.ndim)  # raises when no rule or a wrong rank
            assert all(a is None or a in MESH_RULES for a in axes), (path, axes)
            spec = partition_spec(path, leaf.shape, MESH)
            for size, axis in zip(leaf.shape, tuple(spec) + (None,) * leaf.ndim):
                assert axis is None or size % MESH.shape[axis] == 0, (path, leaf.shape, spec)


def test_transformer_weights_are_split_over_fsdp_and_tensor():
    (config, *_) = _variants("transformer_pp")
    specs = {
        p: partition_spec(p, x.shape, MESH)
        for p, x in flatten_with_paths(_abstract_params(config))[0]
    }
    assert specs["blocks/0/mlp/w_in/kernel"] == PartitionSpec("fsdp", "tensor")
    assert specs["blocks/0/mlp/w_out/kernel"] == PartitionSpec("tensor", "fsdp")
    assert specs["blocks/0/attn/wq/kernel"] == PartitionSpec("fsdp", "tensor")
    assert specs["embed/embedding"] == PartitionSpec("tensor", "fsdp")
    assert specs["blocks/0/attn_norm/scale"] == PartitionSpec(None)


def test_a_dimension_the_mesh_axis_does_not_divide_stays_replicated():
    mesh = AbstractMesh((1, 3, 4), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    assert partition_spec("blocks/0/mlp/w_in/kernel", (6, 10), mesh) == PartitionSpec("fsdp", None)


def test_unknown_parameter_and_wrong_rank_name_the_path():
    with pytest.raises(ValueError, match=r"no partitioning rule .* 'blocks/0/mystery/w'"):
        logical_axes("blocks/0/mystery/w", 2)
    with pytest.raises(ValueError, match="'blocks/0/mlp/w_in/kernel' has 3 dimensions"):
        logical_axes("blocks/0/mlp/w_in/kernel", 3)


def test_optimizer_state_follows_its_parameter_and_counters_are_replicated():
    import optax

    mesh = jax.make_mesh((1, 1, 1), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    params = {"blocks": [{"mlp": {"w_in": {"kernel": jax.ShapeDtypeStruct((4, 8), "float32")}}}]}
    opt = jax.eval_shape(optax.adam(1e-3).init, params)
    shardings = tree_shardings({"params": params, "opt": opt}, params, mesh)
    mu = shardings["opt"][0].mu["blocks"][0]["mlp"]["w_in"]["kernel"]
    assert mu.spec == partition_spec("blocks/0/mlp/w_in/kernel", (4, 8), mesh)
    assert shardings["opt"][0].count.spec == PartitionSpec()


@pytest.mark.parametrize(
    ("sizes", "devices", "want"),
    [((1, 1, 1), 8, (1, 1, 1)), ((-1, 2, 1), 8, (4, 2, 1)), ((2, 2, 2), 8, (2, 2, 2))],
)
def test_mesh_shape_resolves_minus_one(sizes, devices, want):
    assert mesh_shape(sizes, devices) == want


@pytest.mark.parametrize(
    ("sizes", "devices", "pattern"),
    [
        ((4, 4, 1), 8, "need 16 devices, only 8"),
        ((-1, -1, 1), 8, "at most one axis may be -1"),
        ((-1, 3, 1), 8, "not a multiple of the fixed axes' product 3"),
        ((0, 1, 1), 8, r"mesh.data=0 must be"),
    ],
)
def test_mesh_shape_errors_name_the_sizes(sizes, devices, pattern):
    with pytest.raises(ValueError, match=pattern):
        mesh_shape(sizes, devices)


def test_config_has_a_single_device_mesh_by_default_and_validates_it():
    c = base_config("transformer_pp")
    assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (1, 1, 1)
    assert not c.mesh.distributed.enabled
    validate_config(c)
    c.mesh.tensor = -2
    with pytest.raises(ValueError, match=r"'mesh\.tensor'=-2"):
        validate_config(c)
    c.mesh.tensor, c.mesh.data, c.mesh.fsdp = 1, -1, -1
    with pytest.raises(ValueError, match="at most one may be -1"):
        validate_config(c)
