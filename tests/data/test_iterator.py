"""Batch iterator: windows, epochs, determinism and exact resume from its state."""

import json

import numpy as np
import pytest

from nestlearn.data import BatchIterator, IteratorState, eval_batches


def _stream(n=103):
    return np.arange(n, dtype=np.int32) * 7 % 101


def test_windows_are_shifted_pairs_and_each_epoch_visits_every_window_once():
    tokens = _stream()
    it = BatchIterator(tokens, batch_size=3, seq_len=10, seed=1)
    assert it.num_windows == 10  # (103 - 1) // 10
    starts = []
    for _ in range(10):  # 30 windows = 3 epochs
        batch = next(it)
        assert batch.inputs.shape == batch.targets.shape == (3, 10)
        assert batch.inputs.dtype == np.int32
        for row_in, row_tg in zip(batch.inputs, batch.targets):
            start = int(np.flatnonzero(tokens == row_in[0])[0])
            np.testing.assert_array_equal(row_in, tokens[start : start + 10])
            np.testing.assert_array_equal(row_tg, tokens[start + 1 : start + 11])
            starts.append(start)
    for epoch in range(3):
        assert sorted(starts[epoch * 10 : (epoch + 1) * 10]) == list(range(0, 100, 10))
    assert starts[:10] != starts[10:20]  # reshuffled per epoch
    assert it.state == IteratorState(1, 3, 0)


def test_same_seed_same_batches_other_seed_other_order():
    a = BatchIterator(_stream(), batch_size=4, seq_len=5, seed=0)
    b = BatchIterator(_stream(), batch_size=4, seq_len=5, seed=0)
    c = BatchIterator(_stream(), batch_size=4, seq_len=5, seed=1)
    xa, xb, xc = ([next(it).inputs for _ in range(8)] for it in (a, b, c))
    np.testing.assert_array_equal(np.stack(xa), np.stack(xb))
    assert not np.array_equal(np.stack(xa), np.stack(xc))


def test_restore_from_json_state_continues_the_exact_sequence():
    tokens = _stream(211)
    it = BatchIterator(tokens, batch_size=3, seq_len=7, seed=5)
    for _ in range(11):  # crosses an epoch boundary (30 windows per epoch)
        next(it)
    saved = json.loads(json.dumps(it.state._asdict()))
    expected = [next(it) for _ in range(25)]
    fresh = BatchIterator(tokens, batch_size=3, seq_len=7, seed=5)
    fresh.restore(saved)
    for want in expected:
        got = next(fresh)
        np.testing.assert_array_equal(got.inputs, want.inputs)
        np.testing.assert_array_equal(got.targets, want.targets)


def test_eval_batches_are_consecutive_and_capped():
    tokens = _stream()
    batches = eval_batches(tokens, batch_size=4, seq_len=10, max_batches=5)
    assert len(batches) == 2  # 10 windows → two full batches of 4
    np.testing.assert_array_equal(batches[1].inputs[0], tokens[40:50])


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="fewer than seq_len"):
        BatchIterator(np.arange(5), batch_size=1, seq_len=8, seed=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        BatchIterator(np.arange(50), batch_size=0, seq_len=8, seed=0)
    with pytest.raises(ValueError, match="1-D"):
        BatchIterator(np.zeros((4, 20)), batch_size=1, seq_len=8, seed=0)
    it = BatchIterator(np.arange(50), batch_size=1, seq_len=8, seed=0)
    with pytest.raises(ValueError, match="does not fit"):
        it.restore({"seed": 0, "epoch": 0, "position": 99})
