"""Training on retrieval tasks: next-token loss plus a weighted loss on the answer tokens.

Used by `experiments/niah.py` (S-NIAH in natural-text haystacks) and `experiments/recall.py`
(multi-query associative recall). The loss of a batch with answer mask m is

    lm_weight · mean_t CE_t + answer_weight · Σ_t m_t CE_t / Σ_t m_t,

with CE_t the next-token cross-entropy; the metrics are that loss, both terms, the answer
per-token accuracy (argmax) and the fraction of sequences whose every answer token is right.
`answer_loss` is that loss for the library's train step (`nestlearn.train.build_train_step`:
levels, clipping, the non-finite guard); `train_on_answers` trains a model of an experiment
config on a stream of such batches (the training loop of both studies) and `writes_graphs`
gives the graphs that evaluate it with its in-context writes on and off.

Shapes: b batch, t tokens, V vocabulary.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = ["AnswerRun", "answer_loss", "make_logits_fn", "train_on_answers", "writes_graphs"]


def answer_loss(*, answer_weight: float, lm_weight: float = 1.0):
    """`loss(model, inputs, targets, mask) -> (loss, metrics)` of the module docstring, for
    `nestlearn.train.build_train_step(..., loss=answer_loss(...))`.

    inputs, targets [b, t] int32; mask [b, t] bool (the answer tokens). The metrics are `lm`,
    `answer`, `exact` and `byte_acc`.
    """

    def loss(model: nnx.Module, inputs: jax.Array, targets: jax.Array, mask: jax.Array):
        logits, _ = model(inputs)  # [b, t, V]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [b, t]
        lm = ce.mean()
        answer = (ce * mask).sum() / jnp.maximum(mask.sum(), 1)
        right = (jnp.argmax(logits, axis=-1) == targets) & mask  # [b, t]
        metrics = {
            "lm": lm,
            "answer": answer,
            "exact": jnp.mean(jnp.all(right | ~mask, axis=1)),
            "byte_acc": right.sum() / jnp.maximum(mask.sum(), 1),
        }
        return lm_weight * lm + answer_weight * answer, metrics

    return loss


def make_logits_fn(graphdef: nnx.GraphDef):
    """Jitted `logits_fn(params, rest, inputs) -> logits [b, t, V]` of a fresh sequence."""

    @jax.jit
    def logits_fn(params: Any, rest: Any, inputs: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest)(inputs)[0]

    return logits_fn


class AnswerRun(NamedTuple):
    """What `train_on_answers` returns."""

    params: Any  # nnx.State of the trained parameters
    rest: Any  # the model's other state
    graphdef: nnx.GraphDef
    curve: list[dict]  # logged steps: step, the batch's extra fields, the step's metrics
    divergence: dict | None  # where the loss became non-finite (training stopped there)
    seconds: float  # training time


def train_on_answers(
    config,
    batches: Iterator[tuple[tuple[jax.Array, jax.Array, jax.Array], dict]],
    *,
    steps: int,
    answer_weight: float,
    lm_weight: float = 1.0,
    log_every: int = 10,
    log: Callable[[str], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    stream: dict | None = None,
) -> AnswerRun:
    """Trains the model of experiment `config` from scratch on `steps` answer batches.

    The model, its training levels (`config.levels`) and the train step
    (`nestlearn.train.build_train_step` with `answer_loss`, `config.optim.grad_clip`) come from
    the config; `config.seed` seeds the initialisation. Every step's loss is checked: a
    non-finite loss stops training there and is returned as `divergence` ({"step", the batch's
    extra fields, "last_finite": {"step", "loss"} or None}).

    With `checkpoint_dir`, the train state, the logged curve and the training time are saved
    there every `checkpoint_every` steps and at the end (the last step, or the diverged one),
    and a call that finds a checkpoint resumes from it: it skips as many batches as the
    checkpoint has steps, so `batches` must yield the same stream on every call (a seeded
    generator), and the resumed run equals an uninterrupted one. A finished checkpoint returns
    the trained model without training.

    Args:
      config: an experiment config (`nestlearn.train.base_config` and its studies).
      batches: yields ((inputs, targets, answer_mask), extra): the arrays of a batch and a dict
        logged with it (e.g. the curriculum's length).
      steps: training steps.
      answer_weight, lm_weight: the loss of the module docstring.
      log_every: log the metrics of every `log_every`-th step (and of the last and a diverged one).
      log: called with one progress line per logged step.
      checkpoint_dir: directory of the run's checkpoints (created); None: no checkpoints.
      checkpoint_every: steps between checkpoints.
      stream: JSON settings of the generator of `batches`, kept with the checkpoints and
        checked on resume like the config.

    Raises:
      ValueError: `checkpoint_dir` holds checkpoints of a run with another config, step count,
        loss weights or `stream`.
    """
    from nestlearn import models
    from nestlearn.train.checkpoint import Checkpointer, dump_config
    from nestlearn.train.levels import build_levels
    from nestlearn.train.step import TrainState, build_train_step, split_model
    from nestlearn.train.trainer import checkpoint_trees, state_from_trees

    model = models.build(config.model, rngs=nnx.Rngs(config.seed))
    graphdef, params, rest = split_model(model)
    levels = build_levels(config)
    state = TrainState.create(params, levels, seed=config.seed)
    train_step = build_train_step(
        levels,
        params=params,
        grad_clip=config.optim.grad_clip,
        graphdef=graphdef,
        loss=answer_loss(answer_weight=answer_weight, lm_weight=lm_weight),
    )
    progress = {"curve": [], "divergence": None, "last_finite": None, "seconds": 0.0}
    done = 0
    ckpt, identity = None, None
    if checkpoint_dir is not None:
        identity = {
            "config": dump_config(config),
            "steps": steps,
            "answer_weight": answer_weight,
            "lm_weight": lm_weight,
            "stream": stream,
        }
        names = tuple(level.name for level in levels)
        ckpt = Checkpointer(checkpoint_dir, level_names=names, max_to_keep=1)
        saved = ckpt.read_config()
        if saved is not None and saved != identity:
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            ckpt.close()
            raise ValueError(
                f"checkpoint_dir {checkpoint_dir} holds checkpoints of a run that differs in "
                f"{changed}; delete it or use another directory"
            )
        restored = ckpt.restore(checkpoint_trees(state, rest))
        if restored is not None:
            state, rest = state_from_trees(restored.trees, names)
            progress, done = restored.data, restored.step
            for _ in range(done):  # the stream up to the checkpoint, already trained on
                next(batches)
            if log is not None:
                log(f"resumed from step {done} ({checkpoint_dir})")
    start = time.perf_counter() - progress["seconds"]
    curve = progress["curve"]
    divergence, last_finite = progress["divergence"], progress["last_finite"]
    try:
        for i in range(done, steps) if divergence is None else ():
            arrays, extra = next(batches)
            state, m = train_step(state, rest, *arrays)
            loss = float(m["loss"])  # every step: a non-finite loss stops the run there
            if not math.isfinite(loss):
                divergence = {"step": i + 1, **extra, "last_finite": last_finite}
            else:
                last_finite = {"step": i + 1, "loss": loss}
            if i % log_every == 0 or i == steps - 1 or divergence:
                entry = {"step": i + 1, **extra}
                entry.update(
                    {k: float(m[k]) for k in ("loss", "lm", "answer", "exact", "byte_acc")}
                )
                curve.append(entry)
                if log is not None:
                    log(
                        f"step {i + 1}: loss {entry['loss']:.3f} (answer {entry['answer']:.3f}, "
                        f"exact {entry['exact']:.2f}, byte acc {entry['byte_acc']:.2f}) "
                        f"{time.perf_counter() - start:.0f} s"
                    )
            last = i == steps - 1 or divergence is not None
            if ckpt is not None and ((i + 1) % checkpoint_every == 0 or last):
                progress = {
                    "curve": curve,
                    "divergence": divergence,
                    "last_finite": last_finite,
                    "seconds": time.perf_counter() - start,
                }
                ckpt.save(
                    i + 1, trees=checkpoint_trees(state, rest), data=progress, config=identity
                )
            if divergence:
                break
    except BaseException:  # a save still in flight commits before the error goes on
        if ckpt is not None:
            with contextlib.suppress(Exception):
                ckpt.close()
        raise
    seconds = time.perf_counter() - start
    if ckpt is not None:
        ckpt.close()
    # the step donated the initial params: the trained ones live in the state
    return AnswerRun(state.params, rest, graphdef, curve, divergence, seconds)


def writes_graphs(model_config, graphdef: nnx.GraphDef, params: Any) -> dict[str, nnx.GraphDef]:
    """{"on": graphdef} and, for a model with in-context memory, "off": the same model with
    every memory held at its initial state (`model.memory_writes=False`), for `params`."""
    from nestlearn import models
    from nestlearn.train.trainer import memory_writes_graph

    graphs = {"on": graphdef}
    if models.has_memory(model_config):
        graphs["off"] = memory_writes_graph(model_config, False, params)
    return graphs
