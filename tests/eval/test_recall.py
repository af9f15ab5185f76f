"""MQAR sequences (nestlearn.eval.recall) and the answer-weighted train step."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.core import Level
from nestlearn.eval import answer_training, recall
from nestlearn.train.step import TrainState, build_train_step


def test_mqar_layout_answers_repeat_their_keys_values():
    rng = np.random.default_rng(0)
    b = recall.mqar_batch(rng, batch=5, pairs=6, queries=4, vocab=20, first=3)
    tokens = np.concatenate([b.inputs, b.targets[:, -1:]], axis=1)  # [5, 2 (6 + 4)]
    assert tokens.shape == (5, 20) and np.array_equal(b.inputs[:, 1:], b.targets[:, :-1])
    for row, mask in zip(tokens, b.answer_mask):
        keys, values = row[0:12:2], row[1:12:2]
        assert len(set(keys)) == 6 and keys.min() >= 3 and keys.max() < 13  # lower half
        assert values.min() >= 13 and values.max() < 23  # upper half
        lookup = dict(zip(keys, values))
        asked, answers = row[12::2], row[13::2]
        assert len(set(asked)) == 4 and all(lookup[k] == a for k, a in zip(asked, answers))
        assert np.array_equal(np.flatnonzero(mask) + 1, np.arange(13, 20, 2))  # answer targets


def test_mqar_gap_puts_filler_between_pairs_and_queries():
    b = recall.mqar_batch(np.random.default_rng(0), batch=3, pairs=4, queries=2, vocab=16, gap=5)
    tokens = np.concatenate([b.inputs, b.targets[:, -1:]], axis=1)  # [3, 8 + 5 + 4]
    assert tokens.shape == (3, 17)
    assert (
        np.all(tokens[:, 8:13] == 16) and np.all(tokens[:, :8] < 16) and np.all(tokens[:, 13:] < 16)
    )
    for row, mask in zip(tokens, b.answer_mask):
        lookup = dict(zip(row[0:8:2], row[1:8:2]))
        assert all(lookup[k] == a for k, a in zip(row[13::2], row[14::2]))
        assert np.array_equal(np.flatnonzero(mask) + 1, [14, 16])


@pytest.mark.parametrize(
    "kwargs",
    [dict(batch=0), dict(queries=7), dict(pairs=11, queries=2), dict(vocab=1), dict(gap=-1)],
)
def test_mqar_rejects_bad_sizes(kwargs):
    args = dict(batch=2, pairs=6, queries=4, vocab=20) | kwargs
    with pytest.raises(ValueError, match=r"must be|need"):
        recall.mqar_batch(np.random.default_rng(0), **args)


def test_answer_only_step_trains_on_the_answers_alone():
    config = models.default_config("transformer_pp")
    config.update(d_model=32, num_layers=1, num_heads=2, vocab_size=32, max_len=64)
    model = models.build(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    levels = (Level("all", None, optax.adam(1e-2)),)
    step = build_train_step(
        levels,
        params=params,
        grad_clip=1.0,
        graphdef=graphdef,
        loss=answer_training.answer_loss(answer_weight=1.0, lm_weight=0.0),
    )
    b = recall.mqar_batch(np.random.default_rng(1), batch=4, pairs=4, queries=4, vocab=32)
    state = TrainState.create(params, levels, seed=0)
    _, m = step(state, rest, b.inputs, b.targets, b.answer_mask)
    m = jax.device_get(m)
    assert np.isclose(m["loss"], m["answer"]) and not np.isclose(m["loss"], m["lm"])
    assert 0 <= m["byte_acc"] <= 1 and 0 <= m["exact"] <= 1
