"""Single-needle-in-a-haystack (S-NIAH) examples in a natural-text haystack, and their scoring.

The three single-needle tasks of RULER (Hsieh et al. 2024), as used in NL-arXiv Table 1
(arXiv 2512.24695 §9.2), with the haystack taken from a token stream (held-out Shakespeare plays):

- `passkey` (S-NIAH-1): needle "The pass key is V. Remember it. V is the pass key.", query
  "What is the pass key? The pass key is ", answer V (7 digits).
- `number` (S-NIAH-2): needle "One of the special magic numbers for K is: V.", query "What is
  the special magic number for K mentioned in the provided text? The special magic number for K
  mentioned in the provided text is ", answer V (7 digits).
- `uuid` (S-NIAH-3): the same with "uuid(s)", answer V a UUID4 string (36 characters).

K is an "adjective-noun" word pair. An example of context length `length` is `length + 1`
tokens: haystack with the needle inserted at a relative depth in [0, 1] (0 = the haystack's
start, 1 = right before the query), then the query, then the answer, which ends the example.
A model reads `inputs = tokens[:-1]` (`length` tokens) and is scored on the targets
`tokens[1:]` at the answer positions.

**Scoring** (`score`): a needle is retrieved when the greedy (argmax) prediction at every answer
position equals the answer token, given the answer's earlier tokens. That is exactly when greedy
decoding after the query reproduces the answer (RULER's string-match metric on the first
`len(answer)` generated tokens), computed in one forward pass. The per-token accuracy of the
answer is reported too (for 7 digits, chance is 0.1 per digit).

**Curriculum** (`curriculum`): the context length of every training step for stages of
increasing length (short haystacks first), as used by `experiments/niah.py` to make retrieval
learnable from scratch at small scale. `min_length` says from which length a task fits (passkey
needs about 110 bytes, number about 230, uuid about 285), so short stages can train passkey alone.

Shapes: b batch, t = `length` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from nestlearn.data.tokenizer import Tokenizer

__all__ = [
    "TASKS",
    "NeedleBatch",
    "NeedleExample",
    "NeedleScore",
    "curriculum",
    "make_batch",
    "make_example",
    "min_length",
    "score",
    "task_text",
]

#: The S-NIAH tasks: passkey (S-NIAH-1), number (S-NIAH-2), uuid (S-NIAH-3).
TASKS = ("passkey", "number", "uuid")

_ADJECTIVES = (
    "amber", "bitter", "brave", "brisk", "calm", "clever", "crimson", "dusty", "eager", "faint",
    "fierce", "gentle", "golden", "hollow", "humble", "icy", "jolly", "lively", "lucky", "mellow",
    "misty", "noble", "plain", "proud", "quiet", "rapid", "rusty", "silent", "silver", "steady",
    "tender", "wild",
)  # fmt: skip
_NOUNS = (
    "anchor", "apple", "badger", "barrel", "beacon", "candle", "castle", "cedar", "comet",
    "falcon", "garden", "harbor", "helmet", "island", "lantern", "meadow", "mirror", "orchard",
    "otter", "pebble", "pillow", "quarry", "raven", "river", "saddle", "spindle", "thimble",
    "tower", "valley", "walnut", "willow", "window",
)  # fmt: skip


class NeedleExample(NamedTuple):
    """One S-NIAH example."""

    tokens: np.ndarray  # [length + 1] int32: haystack ⊕ needle ⊕ haystack, query, answer
    needle_start: int  # index in `tokens` of the needle's first token
    needle_len: int  # tokens of the needle
    answer_start: int  # index in `tokens` of the answer's first token (= length + 1 − answer_len)
    answer_len: int  # tokens of the answer
    depth: float  # requested relative depth of the needle in the haystack, in [0, 1]
    key: str  # the needle's key ("" for passkey)
    value: str  # the answer text


class NeedleBatch(NamedTuple):
    """Examples of one length, ready for a language model."""

    inputs: np.ndarray  # [b, t] int32: tokens[:-1] of each example
    targets: np.ndarray  # [b, t] int32: tokens[1:]
    answer_mask: np.ndarray  # [b, t] bool: targets that are answer tokens
    depths: np.ndarray  # [b] float64: requested needle depth
    examples: tuple  # the b `NeedleExample`s


class NeedleScore(NamedTuple):
    """Per-example scores of a batch."""

    exact: np.ndarray  # [b] bool: every answer token predicted (greedy decoding retrieves it)
    token_accuracy: np.ndarray  # [b] float64: fraction of answer tokens predicted


def task_text(task: str, rng: np.random.Generator) -> tuple[str, str, str, str]:
    """`(needle, query, key, value)` texts of one example of `task` drawn with `rng`.

    Raises:
      ValueError: an unknown `task`.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is unknown; allowed: {TASKS}")
    if task == "passkey":
        value = str(int(rng.integers(1_000_000, 10_000_000)))
        needle = f"The pass key is {value}. Remember it. {value} is the pass key."
        return needle, "What is the pass key? The pass key is ", "", value
    key = f"{_ADJECTIVES[rng.integers(len(_ADJECTIVES))]}-{_NOUNS[rng.integers(len(_NOUNS))]}"
    if task == "number":
        kind, value = "number", str(int(rng.integers(1_000_000, 10_000_000)))
    else:
        raw = rng.integers(0, 16, size=32)
        raw[12] = 4  # UUID version 4
        raw[16] = 8 + raw[16] % 4  # RFC 4122 variant
        h = "".join("0123456789abcdef"[int(x)] for x in raw)
        kind, value = "uuid", f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return *_magic_texts(kind, key, value), key, value


def _magic_texts(kind: str, key: str, value: str) -> tuple[str, str]:
    """`(needle, query)` of S-NIAH-2/3 for a `kind` ("number" or "uuid"), key and value."""
    needle = f"One of the special magic {kind}s for {key} is: {value}."
    query = (
        f"What is the special magic {kind} for {key} mentioned in the provided text? "
        f"The special magic {kind} for {key} mentioned in the provided text is "
    )
    return needle, query


def _encode(tokenizer: Tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text), dtype=np.int32).reshape(-1)


def _framed_lengths(tokenizer: Tokenizer, needle: str, query: str, value: str) -> int:
    """Tokens of the framed needle, framed query and answer, as `make_example` encodes them."""
    parts = ("\n" + needle + "\n", "\n" + query, value)
    return sum(len(_encode(tokenizer, text)) for text in parts)


def min_length(task: str, tokenizer: Tokenizer, *, haystack: int = 1) -> int:
    """The shortest context length whose examples of `task` all hold `haystack` haystack tokens.

    The worst case over every key (adjective-noun pair) and value shape the generator draws:
    a `make_example` call with `length >= min_length(task, tokenizer, haystack=h)` never fails
    for lack of room and leaves at least `h` tokens of haystack.

    Raises:
      ValueError: an unknown `task`, or `haystack` < 1.
    """
    if haystack < 1:
        raise ValueError(f"haystack={haystack} must be >= 1")
    needle, query, _, value = task_text(task, np.random.default_rng(0))  # values: fixed length
    if task == "passkey":
        worst = _framed_lengths(tokenizer, needle, query, value)
    else:
        worst = max(
            _framed_lengths(tokenizer, *_magic_texts(task, f"{adjective}-{noun}", value), value)
            for adjective in _ADJECTIVES
            for noun in _NOUNS
        )
    return worst - 1 + haystack  # an example of length t has t + 1 tokens


def make_example(
    task: str,
    haystack: np.ndarray,
    *,
    length: int,
    depth: float,
    rng: np.random.Generator,
    tokenizer: Tokenizer,
) -> NeedleExample:
    """One S-NIAH example of context length `length` with its needle at relative `depth`.

    The haystack is a contiguous slice of `haystack` starting at a random offset. The needle is
    placed after `round(depth · h)` haystack tokens (h = haystack tokens in the example), moved
    back to the start of that line when a newline token lies among the 80 tokens before it (so
    that a needle does not split a word; "\\n" must encode to one token for this), and framed by
    newlines.

    Args:
      task: one of `TASKS`.
      haystack: [n] int token stream of the haystack text.
      length: context length t; the example has t + 1 tokens.
      depth: relative needle position in [0, 1].
      rng: draws the offset, the key and the value.
      tokenizer: encodes the needle, query and answer texts.

    Raises:
      ValueError: an unknown task, a depth outside [0, 1], a `length` too short for needle,
        query and answer, or a haystack stream shorter than the haystack the example needs.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth} must be in [0, 1]")
    haystack = np.asarray(haystack)
    if haystack.ndim != 1:
        raise ValueError(f"haystack must be a 1-D token stream, got shape {haystack.shape}")
    needle_text, query_text, key, value = task_text(task, rng)
    newline = _encode(tokenizer, "\n")
    needle = _encode(tokenizer, "\n" + needle_text + "\n")
    query = _encode(tokenizer, "\n" + query_text)
    answer = _encode(tokenizer, value)
    h = length + 1 - len(needle) - len(query) - len(answer)
    if h < 1:
        raise ValueError(
            f"length={length} is too short for task {task!r}: needle, query and answer take "
            f"{length + 1 - h} tokens"
        )
    if len(haystack) < h:
        raise ValueError(f"haystack has {len(haystack)} tokens, the example needs {h}")
    offset = int(rng.integers(0, len(haystack) - h + 1))
    hay = np.asarray(haystack[offset : offset + h], dtype=np.int32)
    pos = round(depth * h)
    if len(newline) == 1 and 0 < pos < h:
        before = np.nonzero(hay[max(0, pos - 80) : pos] == newline[0])[0]
        if before.size:
            pos = max(0, pos - 80) + int(before[-1]) + 1
    tokens = np.concatenate([hay[:pos], needle, hay[pos:], query, answer]).astype(np.int32)
    return NeedleExample(
        tokens=tokens,
        needle_start=pos,
        needle_len=len(needle),
        answer_start=len(tokens) - len(answer),
        answer_len=len(answer),
        depth=float(depth),
        key=key,
        value=value,
    )


def make_batch(
    tasks: str | Sequence[str],
    haystack: np.ndarray,
    *,
    length: int,
    depths: Sequence[float],
    rng: np.random.Generator,
    tokenizer: Tokenizer,
) -> NeedleBatch:
    """A batch of one example per depth (task i is `tasks[i]`, or `tasks` for all).

    Raises:
      ValueError: as `make_example`; `tasks` and `depths` of different lengths; no depths.
    """
    depths = list(depths)
    if not depths:
        raise ValueError("depths is empty")
    task_list = [tasks] * len(depths) if isinstance(tasks, str) else list(tasks)
    if len(task_list) != len(depths):
        raise ValueError(f"got {len(task_list)} tasks for {len(depths)} depths")
    examples = tuple(
        make_example(task, haystack, length=length, depth=d, rng=rng, tokenizer=tokenizer)
        for task, d in zip(task_list, depths)
    )
    tokens = np.stack([ex.tokens for ex in examples])  # [b, t + 1]
    mask = np.zeros(tokens.shape, dtype=bool)
    for i, ex in enumerate(examples):
        mask[i, ex.answer_start : ex.answer_start + ex.answer_len] = True
    return NeedleBatch(
        inputs=tokens[:, :-1],
        targets=tokens[:, 1:],
        answer_mask=mask[:, 1:],
        depths=np.asarray(depths, dtype=np.float64),
        examples=examples,
    )


def score(logits: np.ndarray, batch: NeedleBatch) -> NeedleScore:
    """Teacher-forced greedy retrieval of each example's answer.

    Args:
      logits: [b, t, V] next-token logits of `batch.inputs`.
      batch: the `NeedleBatch` the logits belong to.

    Raises:
      ValueError: logits whose [b, t] do not match the batch's targets.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[:2] != batch.targets.shape:
        raise ValueError(
            f"logits shape {logits.shape} does not match targets {batch.targets.shape} + [V]"
        )
    hit = (np.argmax(logits, axis=-1) == batch.targets) | ~batch.answer_mask  # [b, t]
    correct = ((np.argmax(logits, axis=-1) == batch.targets) & batch.answer_mask).sum(axis=1)
    return NeedleScore(
        exact=hit.all(axis=1),
        token_accuracy=correct / batch.answer_mask.sum(axis=1),
    )


def curriculum(steps: int, stages: Sequence[tuple[int, float]]) -> list[int]:
    """The context length of each of `steps` training steps, stage by stage in order.

    Args:
      steps: training steps in all.
      stages: `(length, fraction)` pairs; stage i gets `round(fraction_i · steps)` steps, the
        last stage the rest (so the lengths always cover exactly `steps` steps).

    Raises:
      ValueError: `steps` < 1, no stages, a length < 1, or fractions that are not positive or
        do not sum to 1.
    """
    stages = [(int(n), float(f)) for n, f in stages]
    if steps < 1 or not stages:
        raise ValueError(f"need steps >= 1 and at least one stage, got steps={steps}, {stages=}")
    fractions = [f for _, f in stages]
    if min(n for n, _ in stages) < 1 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"stages need lengths >= 1 and positive fractions summing to 1, got {stages}"
        )
    lengths: list[int] = []
    for length, fraction in stages[:-1]:
        lengths += [length] * round(fraction * steps)
    lengths = lengths[:steps]
    return lengths + [stages[-1][0]] * (steps - len(lengths))
