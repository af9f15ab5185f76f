"""nestlearn.data.replay: class-balanced storage and uniform draws."""

import numpy as np
import pytest

from nestlearn.data.replay import replay_add, replay_sample


def test_buffer_stores_per_class_examples_of_the_given_classes():
    labels = np.repeat(np.arange(4), [5, 5, 2, 5])
    rng = np.random.default_rng(0)
    buffer = replay_add(np.zeros(0, np.int64), labels, (0, 2), 3, rng)
    counts = np.bincount(labels[buffer], minlength=4)
    assert counts.tolist() == [3, 0, 2, 0]  # class 2 has only two examples
    assert len(set(buffer.tolist())) == buffer.size  # without replacement
    buffer = replay_add(buffer, labels, (1,), 3, rng)
    assert np.bincount(labels[buffer], minlength=4).tolist() == [3, 3, 2, 0]
    draws = replay_sample(buffer, (50, 4), rng)
    assert draws.shape == (50, 4) and set(draws.ravel()) <= set(buffer.tolist())


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        replay_sample(np.zeros(0, np.int64), (2,), np.random.default_rng(0))
    with pytest.raises(ValueError, match="per_class"):
        replay_add(np.zeros(0, np.int64), np.zeros(3), (0,), -1, np.random.default_rng(0))
