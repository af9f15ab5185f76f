"""`nestlearn.eval.answer_training.train_on_answers`: the studies' training loop."""

import itertools

import jax
import numpy as np
import pytest

from nestlearn.eval import answer_training
from nestlearn.train.config import base_config


def _config(lr: float, clip: float = 1.0):
    c = base_config("deltanet")
    c.seed = 3
    c.model.vocab_size = 16
    c.model.d_model = 16
    c.model.num_layers = 1
    c.model.num_heads = 2
    c.model.max_len = 16
    c.model.chunk_size = 4
    c.optim.lr = lr
    c.optim.warmup_steps = 1
    c.optim.grad_clip = clip
    c.train.num_steps = 8
    return c


def _batches():
    rng = np.random.default_rng(0)
    for i in itertools.count():
        inputs = rng.integers(0, 16, (2, 8)).astype(np.int32)
        targets = np.roll(inputs, -1, axis=1)
        mask = np.zeros((2, 8), bool)
        mask[:, -2:] = True
        yield (inputs, targets, mask), {"stage": i // 4}


def test_trains_logs_and_writes_graphs():
    run = answer_training.train_on_answers(
        _config(1e-2), _batches(), steps=8, answer_weight=2.0, log_every=3
    )
    assert [c["step"] for c in run.curve] == [1, 4, 7, 8]
    assert [c["stage"] for c in run.curve] == [0, 0, 1, 1]  # the batch's extra fields
    assert run.divergence is None and all(np.isfinite(c["loss"]) for c in run.curve)
    # loss = lm + 2 · answer, as logged
    c = run.curve[0]
    assert np.isclose(c["loss"], c["lm"] + 2.0 * c["answer"], rtol=1e-5)
    graphs = answer_training.writes_graphs(_config(1e-2).model, run.graphdef, run.params)
    assert set(graphs) == {"on", "off"}  # DeltaNet has an in-context memory


def test_a_nonfinite_loss_stops_training_there():
    run = answer_training.train_on_answers(
        _config(float("inf"), clip=0.0), _batches(), steps=8, answer_weight=1.0, log_every=100
    )
    d = run.divergence
    assert d is not None and 1 < d["step"] < 8 and "stage" in d
    assert d["last_finite"]["step"] == d["step"] - 1
    assert run.curve[-1]["step"] == d["step"] and not np.isfinite(run.curve[-1]["loss"])


def _stops_after(n: int):
    """The stream of `_batches` that raises after `n` batches (a killed run)."""
    for i, batch in enumerate(_batches()):
        if i == n:
            raise KeyboardInterrupt
        yield batch


def test_a_run_resumes_from_its_checkpoint_as_if_never_stopped(tmp_path):
    train = lambda batches, **kw: answer_training.train_on_answers(
        _config(1e-2), batches, steps=8, answer_weight=2.0, log_every=3, **kw
    )
    whole = train(_batches())
    ckpt = tmp_path / "ckpt"
    try:
        train(_stops_after(5), checkpoint_dir=ckpt, checkpoint_every=2)
    except KeyboardInterrupt:
        pass
    lines = []
    resumed = train(_batches(), checkpoint_dir=ckpt, checkpoint_every=2, log=lines.append)
    assert lines[0].startswith("resumed from step 4")
    assert resumed.curve == whole.curve
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a finished checkpoint trains nothing: 8 batches are skipped, none is trained on
    again = train(itertools.islice(_batches(), 8), checkpoint_dir=ckpt)
    assert again.curve == whole.curve
    with pytest.raises(ValueError, match="differs in \\['answer_weight'\\]"):
        answer_training.train_on_answers(
            _config(1e-2), _batches(), steps=8, answer_weight=1.0, checkpoint_dir=ckpt
        )
