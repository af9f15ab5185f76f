"""Config validation: every bad key is reported by name with what is allowed."""

import pytest
import tiny_config

from nestlearn.train import validate_config


def _config():
    return tiny_config.get_config("hope_attention")


def test_tiny_config_is_valid():
    validate_config(_config())


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (
            lambda c: setattr(c.train, "num_stepz", 3),
            r"'train.num_stepz' is unknown; allowed in train: \[.*'num_steps'",
        ),
        (lambda c: setattr(c, "trian", 3), r"'trian' is unknown; allowed in the top level"),
        (lambda c: setattr(c.model, "d_modle", 3), r"'model.d_modle' is unknown"),
        (lambda c: setattr(c.model.cms, "perods", (1, 2)), r"'model.cms.perods' is unknown"),
        (lambda c: c.data.__delattr__("seq_len"), r"'data.seq_len' is missing"),
        (
            lambda c: setattr(c.model, "name", "gpt5"),
            r"'model.name'='gpt5' is unknown; allowed: \[.*'transformer_pp'",
        ),
        (lambda c: setattr(c.data, "corpus", "wiki"), r"'data.corpus'='wiki' is unknown; allowed"),
        (
            lambda c: setattr(c.data, "tokenizer", "sentencepiece"),
            r"'data.tokenizer'='sentencepiece' is not allowed; allowed: \['byte', 'char', 'gpt2'\]",
        ),
        (
            lambda c: setattr(c.levels.backbone, "rule", "lino"),
            r"'levels.backbone.rule'='lino' is unknown; allowed: \[.*'lion'",
        ),
        (lambda c: setattr(c.data, "batch_size", 0), r"'data.batch_size'=0 must be > 0"),
        (
            lambda c: setattr(c.optim, "weight_decay", -1.0),
            r"'optim.weight_decay'=-1.0 must be >= 0",
        ),
        (lambda c: setattr(c.model, "dtype", "float8"), r"section 'model' is invalid: dtype"),
        (lambda c: setattr(c.data, "corpus", "text_dir"), r"'data.path' must name a directory"),
    ],
)
def test_bad_configs_name_the_key(mutate, pattern):
    config = _config()
    with config.unlocked():
        mutate(config)
    with pytest.raises(ValueError, match=pattern):
        validate_config(config)


def test_wrong_type_and_lists_are_rejected():
    config = _config()
    config.train.unlocked()
    del config.train["progress_bar"]
    config.train.progress_bar = "yes"
    with pytest.raises(ValueError, match=r"'train.progress_bar'='yes' must be of type bool"):
        validate_config(config)
    config = _config()
    del config.model.cms["periods"]
    config.model.cms.periods = [1, 3]
    with pytest.raises(ValueError, match=r"'model.cms.periods' is a list; use a tuple"):
        validate_config(config)
