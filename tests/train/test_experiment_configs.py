"""The training configs under experiments/configs load, validate, and match their docstrings."""

import importlib.util
import math
from pathlib import Path

import jax
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.train.config import validate_config

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"config_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["default", "transformer_pp", "hope_760m", "hope_1p3b"])
def test_training_configs_validate(name):
    validate_config(_load(name).get_config())


@pytest.mark.parametrize("name,millions,tensor", [("hope_760m", 821, 1), ("hope_1p3b", 1440, 2)])
def test_paper_scale_configs_have_the_stated_size_and_mesh(name, millions, tensor):
    module = _load(name)
    config = module.get_config()
    abstract = nnx.eval_shape(lambda: models.build(config.model, rngs=nnx.Rngs(0)))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert abs(count / 1e6 - millions) / millions < 0.01, count
    assert (config.mesh.data, config.mesh.fsdp, config.mesh.tensor) == (1, -1, tensor)
    assert module.get_config("dp4").mesh.data == 4
    with pytest.raises(ValueError, match="dp<N>"):
        module.get_config("tp8")
