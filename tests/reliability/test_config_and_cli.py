"""Config values and command lines a user can get wrong are refused (or warned about) by name,
and `--mode=eval` on a workdir without checkpoints creates nothing."""

import os
import warnings

import pytest
from helpers import TINY_CONFIG, run_main, tiny_config

from nestlearn.train import NoCheckpointError, evaluate_workdir, validate_config


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 0.0, -1.0])
def test_a_non_finite_or_non_positive_learning_rate_is_refused(lr):
    config = tiny_config()
    config.optim.lr = lr
    with pytest.raises(ValueError, match=r"config key 'optim.lr'=.* must be (finite|> 0)"):
        validate_config(config)


def test_chunk_size_longer_than_the_training_window_is_warned_about_by_name():
    config = tiny_config()
    config.model.chunk_size = config.data.seq_len + 1
    with pytest.warns(UserWarning, match=r"'model.chunk_size'=17 exceeds 'data.seq_len'=16"):
        validate_config(config)
    config.model.chunk_size = config.data.seq_len
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_config(config)


def test_a_bad_self_modifying_value_is_named_before_the_model_is_built():
    config = tiny_config("hope")
    config.model.self_modifying.eta_max = -1.0
    with pytest.raises(ValueError, match=r"invalid: self_modifying\.eta_max must be > 0"):
        validate_config(config)


def test_eval_on_a_workdir_without_checkpoints_creates_nothing(tmp_path):
    for workdir in (tmp_path / "absent", tmp_path):
        with pytest.raises(NoCheckpointError, match="holds no checkpoint"):
            evaluate_workdir(workdir)
    assert os.listdir(tmp_path) == []
    assert not (tmp_path / "absent").exists()


def test_the_command_line_names_an_unknown_key_its_section_and_the_allowed_keys(tmp_path):
    done = run_main(
        f"--config={TINY_CONFIG}", f"--workdir={tmp_path / 'run'}", "--config.train.foo=1"
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "--config.train.foo: config key 'train.foo' is unknown; allowed in train: "
            "['checkpoint_every', "
        )
    )
    assert not (tmp_path / "run").exists()
