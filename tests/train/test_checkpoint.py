"""Checkpointer: exact round trip of awkward pytrees, and fallback past a corrupted checkpoint."""

import os
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nestlearn.core import Level
from nestlearn.optim.scheduler import nested
from nestlearn.train import Checkpointer


def _trees(scale):
    params = {"w": jnp.arange(6.0).reshape(2, 3) * scale, "b": jnp.ones(3) * scale}
    tx = nested(
        (
            Level("slow", r"^w", optax.adam(1e-2), period=2),
            Level("rest", None, optax.sgd(1e-1, momentum=0.9)),
        )
    )
    opt = tx.init(params)
    opt = tx.update(jax.tree.map(jnp.ones_like, params), opt, params)[1]  # non-trivial state
    return {
        "params": params,
        "model_state": {"empty": jnp.zeros((0, 4)), "key": jax.random.key(3)},
        "train": {"step": jnp.asarray(7 * scale, jnp.int32), "rng": jax.random.PRNGKey(1)},
        "opt_slow": opt.levels["slow"],
        "opt_rest": opt.levels["rest"],
    }


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def _checkpointer(path):
    return Checkpointer(path, level_names=("slow", "rest"), max_to_keep=5)


def _save_two(path):
    ckpt = _checkpointer(path)
    for step, scale in ((3, 1), (6, 2)):
        ckpt.save(
            step,
            trees=_trees(scale),
            data={"seed": 0, "epoch": 1, "position": step},
            config={"train": {"num_steps": 9}},
        )
    ckpt.close()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved")
    _save_two(path)
    return path


@pytest.fixture
def workdir(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_round_trip_is_exact_for_every_item(workdir):
    tmp_path = workdir
    ckpt = _checkpointer(tmp_path)
    got = ckpt.restore(_trees(0))
    ckpt.close()
    assert got.step == 6 and got.data["position"] == 6 and got.config["train"]["num_steps"] == 9
    _assert_same(got.trees, _trees(2))


def _largest_data_file(step_dir):
    # The arrays of an item live in its OCDBT data files `<item>/d/*`.
    return max((step_dir / "params" / "d").iterdir(), key=os.path.getsize)


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "delete_item"])
def test_corrupted_latest_checkpoint_falls_back_to_previous_with_warning(workdir, damage):
    tmp_path = workdir
    if damage == "delete_item":
        shutil.rmtree(tmp_path / "6" / "opt_slow")
    else:
        path = _largest_data_file(tmp_path / "6")
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            if damage == "truncate":
                f.truncate(size // 2)
            else:
                f.seek(size // 2)
                f.write(bytes(255 - b for b in f.read(8)))
    ckpt = _checkpointer(tmp_path)
    with pytest.warns(UserWarning, match=r"checkpoint at step 6 .* corrupted or partial"):
        got = ckpt.restore(_trees(0))
    assert got.step == 3
    _assert_same(got.trees, _trees(1))
    assert ckpt.all_steps() == [3] and (tmp_path / "corrupt" / "6").is_dir()
    ckpt.close()


def test_no_checkpoint_gives_none_and_half_written_ones_are_ignored(workdir, tmp_path):
    ckpt = _checkpointer(tmp_path / "empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.restore(_trees(0)) is None
    ckpt.close()
    shutil.copytree(workdir / "6", workdir / "9.orbax-checkpoint-tmp-123")  # killed mid-save
    ckpt = _checkpointer(workdir)
    assert ckpt.restore(_trees(0)).step == 6
    ckpt.close()


def test_save_requires_every_item(tmp_path):
    ckpt = _checkpointer(tmp_path)
    trees = _trees(1)
    del trees["opt_rest"]
    with pytest.raises(ValueError, match="expected"):
        ckpt.save(1, trees=trees, data={}, config={})
    ckpt.close()
