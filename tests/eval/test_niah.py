"""S-NIAH generators and scoring (`nestlearn.eval.niah`)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.data.tokenizer import ByteTokenizer
from nestlearn.eval import niah

TOK = ByteTokenizer()
LINE = "Now is the winter of our discontent made glorious summer by this sun of York;\n"
HAYSTACK = TOK.encode("".join(f"{i:04d} {LINE}" for i in range(400)))  # every window unique


def _find(stream, piece):
    """Start indices of `piece` in `stream`."""
    n = len(piece)
    return [i for i in range(len(stream) - n + 1) if np.array_equal(stream[i : i + n], piece)]


@pytest.mark.parametrize("task", niah.TASKS)
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_example_layout(task, depth):
    length = 600
    ex = niah.make_example(
        task, HAYSTACK, length=length, depth=depth, rng=np.random.default_rng(1), tokenizer=TOK
    )
    assert ex.tokens.shape == (length + 1,) and ex.tokens.dtype == np.int32
    text = TOK.decode(ex.tokens)
    needle, query, key, value = niah.task_text(task, np.random.default_rng(1))
    # The answer ends the example and is the value; the query comes right before it.
    assert ex.answer_start + ex.answer_len == length + 1
    assert TOK.decode(ex.tokens[ex.answer_start :]) == value == ex.value
    assert text.endswith("\n" + query + value)
    # The needle sits at needle_start, framed by newlines, and mentions the value.
    assert TOK.decode(ex.tokens[ex.needle_start : ex.needle_start + ex.needle_len]) == (
        "\n" + needle + "\n"
    )
    assert value in needle and (key in needle and key in query if task != "passkey" else True)
    # Removing needle, query and answer leaves one contiguous slice of the haystack stream.
    query_start = ex.answer_start - len(TOK.encode("\n" + query))
    hay = np.concatenate(
        [ex.tokens[: ex.needle_start], ex.tokens[ex.needle_start + ex.needle_len : query_start]]
    )
    assert len(_find(HAYSTACK, hay)) == 1
    # Depth: the needle follows round(depth · h) haystack tokens, moved back to a line start.
    h = len(hay)
    target = round(depth * h)
    assert target - 80 <= ex.needle_start <= target
    if 0 < ex.needle_start < h:
        assert hay[ex.needle_start - 1] == ord("\n")
    if depth == 0.0:
        assert ex.needle_start == 0
    if depth == 1.0:
        assert ex.needle_start + ex.needle_len == query_start


def test_value_formats_and_determinism():
    for seed in range(20):
        _, _, _, v = niah.task_text("passkey", np.random.default_rng(seed))
        assert re.fullmatch(r"[1-9]\d{6}", v)
        _, _, k, v = niah.task_text("number", np.random.default_rng(seed))
        assert re.fullmatch(r"[1-9]\d{6}", v) and re.fullmatch(r"[a-z]+-[a-z]+", k)
        _, _, _, v = niah.task_text("uuid", np.random.default_rng(seed))
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", v
        )
    make = lambda seed: niah.make_batch(
        niah.TASKS,
        HAYSTACK,
        length=400,
        depths=[0.1, 0.5, 0.9],
        rng=np.random.default_rng(seed),
        tokenizer=TOK,
    )
    np.testing.assert_array_equal(make(3).inputs, make(3).inputs)
    assert not np.array_equal(make(3).inputs, make(4).inputs)


def test_batch_mask_selects_the_answer_targets():
    batch = niah.make_batch(
        ["uuid", "passkey", "number"],
        HAYSTACK,
        length=500,
        depths=[0.0, 0.5, 1.0],
        rng=np.random.default_rng(0),
        tokenizer=TOK,
    )
    assert batch.inputs.shape == batch.targets.shape == batch.answer_mask.shape == (3, 500)
    np.testing.assert_array_equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    for i, ex in enumerate(batch.examples):
        np.testing.assert_array_equal(batch.inputs[i], ex.tokens[:-1])
        assert TOK.decode(batch.targets[i][batch.answer_mask[i]]) == ex.value
        assert batch.answer_mask[i, -1]  # the answer ends the example


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(task="needle"), "task='needle' is unknown"),
        (dict(depth=1.5), r"depth=1.5 must be in \[0, 1\]"),
        (dict(length=100), "length=100 is too short for task 'number'"),
        (dict(haystack=HAYSTACK[:200]), "haystack has 200 tokens, the example needs"),
        (dict(haystack=HAYSTACK.reshape(-1, 1)), "haystack must be a 1-D token stream"),
    ],
)
def test_make_example_rejects_bad_input(kwargs, match):
    args = dict(task="number", haystack=HAYSTACK, length=800, depth=0.5)
    args.update(kwargs)
    task, haystack = args.pop("task"), args.pop("haystack")
    with pytest.raises(ValueError, match=match):
        niah.make_example(task, haystack, rng=np.random.default_rng(0), tokenizer=TOK, **args)


@pytest.mark.parametrize("task", niah.TASKS)
def test_min_length_is_the_worst_case_over_keys(task):
    shortest = niah.min_length(task, TOK)
    assert niah.min_length(task, TOK, haystack=17) == shortest + 16
    rng = np.random.default_rng(3)
    for _ in range(300):  # every key and value fits at the minimum (no "too short" error)
        niah.make_example(task, HAYSTACK, length=shortest, depth=0.5, rng=rng, tokenizer=TOK)
    if task == "passkey":  # fixed texts: one token less leaves no haystack
        with pytest.raises(ValueError, match="too short"):
            niah.make_example(
                task, HAYSTACK, length=shortest - 1, depth=0.5, rng=rng, tokenizer=TOK
            )
    with pytest.raises(ValueError, match="haystack=0"):
        niah.min_length(task, TOK, haystack=0)


def test_make_batch_rejects_mismatched_tasks():
    with pytest.raises(ValueError, match="got 2 tasks for 3 depths"):
        niah.make_batch(
            ["uuid", "number"],
            HAYSTACK,
            length=400,
            depths=[0, 0.5, 1],
            rng=np.random.default_rng(0),
            tokenizer=TOK,
        )
    with pytest.raises(ValueError, match="depths is empty"):
        niah.make_batch(
            "uuid", HAYSTACK, length=400, depths=[], rng=np.random.default_rng(0), tokenizer=TOK
        )


def test_score_on_constructed_logits():
    batch = niah.make_batch(
        "number",
        HAYSTACK,
        length=300,
        depths=[0.2, 0.8],
        rng=np.random.default_rng(0),
        tokenizer=TOK,
    )
    logits = np.eye(256)[batch.targets]  # [b, t, V]: every target predicted
    result = niah.score(logits, batch)
    np.testing.assert_array_equal(result.exact, [True, True])
    np.testing.assert_array_equal(result.token_accuracy, [1.0, 1.0])
    wrong = logits.copy()
    answer_pos = np.nonzero(batch.answer_mask[0])[0]
    wrong[0, answer_pos[2]] = np.eye(256)[(batch.targets[0, answer_pos[2]] + 1) % 256]
    wrong[1, 5] = np.eye(256)[(batch.targets[1, 5] + 1) % 256]  # outside the answer: ignored
    result = niah.score(wrong, batch)
    np.testing.assert_array_equal(result.exact, [False, True])
    np.testing.assert_allclose(result.token_accuracy, [1 - 1 / len(answer_pos), 1.0])
    with pytest.raises(ValueError, match="does not match targets"):
        niah.score(logits[:, :-1], batch)


@pytest.mark.slow
def test_teacher_forced_score_equals_greedy_decoding():
    """Exact match in one pass ⇔ greedy generation after the query reproduces the answer."""
    config = models.default_config("transformer_pp")
    config.update(d_model=32, num_layers=1, num_heads=2, max_len=512)
    model = models.build(config, rngs=nnx.Rngs(0))
    batch = niah.make_batch(
        "passkey",
        HAYSTACK,
        length=300,
        depths=[0.5],
        rng=np.random.default_rng(0),
        tokenizer=TOK,
    )
    ex = batch.examples[0]
    prompt = jnp.asarray(ex.tokens[None, : ex.answer_start])
    generated = models.generate(
        model, prompt, max_new_tokens=ex.answer_len, rng=jax.random.key(0), temperature=0.0
    )
    greedy = np.asarray(generated)[0, -ex.answer_len :]
    assert not np.array_equal(greedy, ex.tokens[ex.answer_start :])  # an untrained model
    logits = np.asarray(model(jnp.asarray(batch.inputs))[0])
    assert not niah.score(logits, batch).exact[0]
    # Replace the answer by the model's own greedy continuation: now it must count as retrieved.
    tokens = ex.tokens.copy()
    tokens[ex.answer_start :] = greedy
    own = batch._replace(inputs=tokens[None, :-1], targets=tokens[None, 1:])
    logits = np.asarray(model(jnp.asarray(own.inputs))[0])
    result = niah.score(logits, own)
    assert result.exact[0] and result.token_accuracy[0] == 1.0


def test_curriculum_covers_every_step_in_stage_order():
    lengths = niah.curriculum(10, [(384, 0.25), (640, 0.25), (1024, 0.5)])
    # round(2.5) = 2 steps, round(2.5) = 2 steps, the last stage takes the rest.
    assert lengths == [384] * 2 + [640] * 2 + [1024] * 6
    assert niah.curriculum(3, [(8, 0.9), (16, 0.1)]) == [8, 8, 8]
    assert niah.curriculum(1, [(8, 1.0)]) == [8]
    for steps in (1, 7, 300):
        assert len(niah.curriculum(steps, [(1, 0.3), (2, 0.3), (3, 0.4)])) == steps
    with pytest.raises(ValueError, match="summing to 1"):
        niah.curriculum(10, [(8, 0.5), (16, 0.4)])
    with pytest.raises(ValueError, match="steps >= 1"):
        niah.curriculum(0, [(8, 1.0)])
