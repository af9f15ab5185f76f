"""`train_and_evaluate(config, workdir)`: the whole pipeline of one experiment.

Data (split by document, tokenized, a checkpointable batch iterator) → model
(`nestlearn.models.build`) → levels (`config.levels`: the backbone and the scheduled CMS levels)
→ a jitted train step → loop with metrics (JSONL, TensorBoard, tqdm), periodic evaluation and
orbax checkpoints → final evaluation on the validation and test splits, samples, and
`workdir/report.md`.

Resume is automatic: the newest usable checkpoint in `workdir/checkpoints` restores params, every
level's optimizer state, the model's other variables, the step, the RNG and the iterator state,
and the metrics file is cut back to that step, so a run killed at any moment and restarted logs
exactly the losses of an uninterrupted run.

Scale-out (`config.mesh`, `nestlearn.parallel`, docs/scaling.md): `jax.distributed` starts first
when the config or the environment asks for it; the train state is placed on the mesh by the
logical partitioning rules, every batch is split over the data axes, the steps are compiled with
in/out shardings, and checkpoints restore onto whatever mesh the resumed run has.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from nestlearn.core.host_memory import tune_host_allocator
from nestlearn.data.dataset import Dataset, load_dataset
from nestlearn.data.iterator import Batch, BatchIterator, eval_batches
from nestlearn.eval.perplexity import bits_per_char, perplexity
from nestlearn.eval.report import write_report
from nestlearn.optim.scheduler import NestedState, level_stats
from nestlearn.parallel import (
    batch_divisor,
    batch_sharding,
    global_batch,
    initialize,
    make_mesh,
    replicated,
)
from nestlearn.train.checkpoint import Checkpointer, dump_config
from nestlearn.train.config import validate_config
from nestlearn.train.errors import CheckpointCorruptError
from nestlearn.train.instruments import (
    LevelMonitor,
    build_instrument_step,
    describe,
)
from nestlearn.train.levels import build_levels, level_config, resolve_levels
from nestlearn.train.metrics import MetricWriter
from nestlearn.train.progress import Progress
from nestlearn.train.step import (
    TrainState,
    build_eval_step,
    build_train_step,
    split_model,
    state_shardings,
)

__all__ = [
    "NoCheckpointError",
    "NonFiniteError",
    "Run",
    "build_run",
    "evaluate_split",
    "evaluate_workdir",
    "on_mesh",
    "probe_run",
    "probe_workdir",
    "restore_workdir",
    "sample_texts",
    "train_and_evaluate",
]

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training stopped after `train.max_consecutive_nonfinite` skipped steps in a row."""


class NoCheckpointError(ValueError):
    """A workdir to evaluate or probe holds no usable checkpoint."""


class Run(NamedTuple):
    """Everything built from a config before the first step."""

    config: ml_collections.ConfigDict  # the experiment config, model.vocab_size resolved
    data: Dataset  # tokenized splits and the tokenizer
    graphdef: nnx.GraphDef  # the model's structure
    rest: Any  # nnx.State of the model's variables other than nnx.Param
    levels: tuple  # the training-step levels (nestlearn.core.Level)
    state: TrainState  # the freshly initialised train state
    checkpointer: Checkpointer  # over workdir/checkpoints
    mesh: Mesh  # the devices of the run (config.mesh); state and batches live on it


def _resolve(config: ml_collections.ConfigDict, data: Dataset) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy; the caller's stays
    vocab = data.tokenizer.vocab_size
    if config.model.vocab_size == 0:
        config.model.vocab_size = vocab
    elif config.model.vocab_size < vocab:
        raise ValueError(
            f"config key 'model.vocab_size'={config.model.vocab_size} is smaller "
            f"than the {config.data.tokenizer} tokenizer's vocabulary ({vocab})"
        )
    if config.data.seq_len > config.model.max_len:
        raise ValueError(
            f"config key 'data.seq_len'={config.data.seq_len} exceeds "
            f"'model.max_len'={config.model.max_len}"
        )
    return config


def _make_mesh(config: ml_collections.ConfigDict) -> Mesh:
    initialize(config.mesh.distributed)
    try:
        mesh = make_mesh(config.mesh)
    except ValueError as e:
        raise ValueError(f"config section 'mesh' is invalid: {e}") from e
    shards = batch_divisor(mesh)
    if config.data.batch_size % shards:
        raise ValueError(
            f"config key 'data.batch_size'={config.data.batch_size} must be divisible by the "
            f"batch shards mesh.data x mesh.fsdp = {shards}"
        )
    return mesh


def on_mesh(batch: Batch, mesh: Mesh) -> Batch:
    """`batch` (the same global batch on every process) as arrays split over the data axes."""
    sharding = batch_sharding(mesh)
    return Batch(global_batch(batch.inputs, sharding), global_batch(batch.targets, sharding))


def build_run(config: ml_collections.ConfigDict, workdir: str | Path) -> Run:
    """Validates `config`, starts `jax.distributed` if asked, builds the mesh, loads the data,
    builds model, levels and checkpointer, and places the fresh state on the mesh (no restore).
    """
    from nestlearn import models

    validate_config(config)
    mesh = _make_mesh(config)
    data = load_dataset(config.data)
    config = _resolve(config, data)
    model = models.build(config.model, rngs=nnx.Rngs(config.seed))
    graphdef, params, rest = split_model(model)
    levels = build_levels(config)
    state = TrainState.create(params, levels, seed=config.seed)
    state = jax.device_put(state, state_shardings(state, mesh))
    rest = jax.device_put(rest, replicated(mesh))
    checkpointer = Checkpointer(
        Path(workdir) / "checkpoints",
        level_names=tuple(level.name for level in levels),
        max_to_keep=config.train.keep_checkpoints,
    )
    return Run(config, data, graphdef, rest, levels, state, checkpointer, mesh)


def checkpoint_trees(state: TrainState, rest: Any) -> dict[str, Any]:
    """The checkpoint items of a train state: params, model state, counters, one per level."""
    trees = {
        "params": state.params,
        "model_state": rest,
        "train": {
            "step": state.step,
            "consecutive_nonfinite": state.consecutive_nonfinite,
            "skipped": state.skipped,
            "rng": state.rng,
        },
    }
    for name, level_state in state.opt_state.levels.items():
        trees[f"opt_{name}"] = level_state
    return trees


def state_from_trees(trees: dict[str, Any], level_names: tuple[str, ...]) -> tuple[TrainState, Any]:
    """`(state, rest)` from restored checkpoint items, the inverse of `checkpoint_trees`."""
    opt = NestedState({name: trees[f"opt_{name}"] for name in level_names})
    t = trees["train"]
    state = TrainState(
        trees["params"], opt, t["step"], t["consecutive_nonfinite"], t["skipped"], t["rng"]
    )
    return state, trees["model_state"]


#: Config fields a run cannot change when it resumes: they fix the shapes of what is restored
#: (model, levels) or the meaning of the saved iterator position (data).
_FIXED_ON_RESUME = (
    "seed",
    "model",
    "data.corpus",
    "data.path",
    "data.tokenizer",
    "data.seq_len",
    "data.split_seed",
    "data.val_fraction",
    "data.test_fraction",
    "data.synthetic",
)
#: Keys of every level that fix the shape of its restored optimizer state.
_FIXED_LEVEL_KEYS = ("select", "rule", "period", "clip")


def _fixed_on_resume(*configs: dict[str, Any]) -> list[str]:
    names = sorted({name for config in configs for name in config.get("levels", {})})
    return [
        *_FIXED_ON_RESUME,
        *(f"levels.{name}.{key}" for name in names for key in _FIXED_LEVEL_KEYS),
    ]


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
    return tree


def _upgrade(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the keys added since it was written, at the values it ran with.

    `model.memory_writes` did not exist before the switch; every such run had its writes on.
    A config without `levels` ran AdamW on the backbone and `optim.cms_rule` (at
    `optim.lr · optim.cms_lr_scale`, folding by `optim.cms_accumulate`) on each scheduled CMS level.
    """
    from nestlearn import models
    from nestlearn.train.config import base_config

    model = saved.get("model")
    if isinstance(model, dict):
        model.setdefault("memory_writes", True)
    if "levels" in saved or not isinstance(model, dict):
        return saved
    optim = saved.setdefault("optim", {})
    rule, scale = optim.pop("cms_rule", "adamw"), optim.pop("cms_lr_scale", 1.0)
    accumulate = optim.pop("cms_accumulate", "sum")
    saved["levels"] = levels = dump_config(base_config(model["name"]))["levels"]
    model_config = ml_collections.ConfigDict(_tuples(model))
    if model_config.get("cms") is not None and model_config.cms.get("mode") == "scheduled":
        for name, _, _ in models.cms_level_selectors(model_config):
            entry = levels.setdefault(name, json.loads(level_config().to_json()))
            entry.update(rule="sgd" if rule == "momentum" else rule, accumulate=accumulate)
            if rule == "momentum":
                entry["sgd"] = {"momentum": optim["b1"]}
            if scale != 1.0:
                entry["learning_rate"] = optim["lr"] * scale
    return saved


def _check_resumable(run: Run) -> None:
    saved = run.checkpointer.read_config()
    if saved is None:
        return
    saved = _upgrade(saved)
    now = dump_config(run.config)
    changed = [k for k in _fixed_on_resume(now, saved) if _lookup(now, k) != _lookup(saved, k)]
    if changed:
        raise ValueError(
            f"workdir {run.checkpointer.directory.parent} holds checkpoints of a run whose config "
            f"differs in {changed}, which cannot change on resume; use a new --workdir"
        )
    if _lookup(now, "train.num_steps") != _lookup(saved, "train.num_steps"):
        log.warning(
            "resuming with train.num_steps=%s, checkpoints written with %s: the learning-rate "
            "schedule is recomputed for the new length, so the resumed steps differ from an "
            "uninterrupted run of either length",
            _lookup(now, "train.num_steps"),
            _lookup(saved, "train.num_steps"),
        )


def restore(run: Run) -> tuple[TrainState, Any, dict[str, Any] | None]:
    """`(state, rest, iterator state)` from the newest usable checkpoint, or the fresh ones.

    Raises:
      ValueError: the checkpoints were written with a config that differs in a field that
        fixes the restored shapes or the data order (`_fixed_on_resume`).
      CheckpointMismatchError: the newest checkpoint's arrays do not fit the model.
      CheckpointReadError: reading a checkpoint kept failing with a storage error.
      CheckpointCorruptError: checkpoints existed but every one failed its integrity check, so
        nothing is left to resume from (rather than starting over without a word).
    """
    _check_resumable(run)
    restored = run.checkpointer.restore(checkpoint_trees(run.state, run.rest))
    if restored is None:
        corrupt = run.checkpointer.directory / "corrupt"
        if corrupt.is_dir() and any(corrupt.iterdir()):
            raise CheckpointCorruptError(
                f"workdir {run.checkpointer.directory.parent} has no usable checkpoint: every one "
                f"failed its integrity check and lies in {corrupt} "
                f"({sorted(p.name for p in corrupt.iterdir())}). Starting over would overwrite "
                f"the run's metrics.jsonl; to start from step 0 here, delete {corrupt}, or use "
                "a new --workdir"
            )
        return run.state, run.rest, None
    state, rest = state_from_trees(restored.trees, tuple(level.name for level in run.levels))
    return state, rest, restored.data


def evaluate_split(
    eval_step, params, rest, batches: list[Batch], chars_per_token: float, prefix: str
) -> dict[str, float]:
    """Mean loss over `batches` (nats/token), perplexity and bits per character."""
    losses = [float(eval_step(params, rest, b.inputs, b.targets)) for b in batches]
    loss = float(np.mean(losses))
    return {
        f"{prefix}_loss": loss,
        f"{prefix}_perplexity": perplexity(loss),
        f"{prefix}_bpc": bits_per_char(loss, chars_per_token),
    }


def sample_texts(run: Run, params, rest, rng: jax.Array) -> list[str]:
    """`config.sample.num_samples` continuations of `config.sample.prompt`, decoded."""
    from nestlearn import models

    s = run.config.sample
    if s.num_samples == 0:
        return []
    tok = run.data.tokenizer
    prompt = tok.encode(s.prompt) if s.prompt else run.data.val[:1]
    prompt = np.asarray(prompt[: run.config.model.max_len - 1], np.int32)
    new = min(s.max_new_tokens, run.config.model.max_len - len(prompt))
    model = nnx.merge(run.graphdef, params, rest)
    tokens = models.generate(
        model,
        jnp.tile(jnp.asarray(prompt)[None], (s.num_samples, 1)),
        max_new_tokens=new,
        rng=rng,
        temperature=s.temperature,
        top_k=s.top_k or None,
    )
    return [tok.decode(np.asarray(row)) for row in tokens]


def _nonfinite_cause(metrics: dict[str, Any], run: Run) -> str:
    """What went non-finite in a step: the levels with non-finite gradients, or the loss."""
    bad = [lv.name for lv, ok in zip(run.levels, metrics["level_finite"]) if not ok]
    if bad:
        return f"non-finite gradients in level(s) {bad}"
    return f"a non-finite loss ({metrics['loss']}) with finite gradients"


def _check_finite(
    metrics: dict[str, Any],
    state: TrainState,
    run: Run,
    step: int,
    instruments: dict[str, Any] | None = None,
) -> None:
    """Warns about a skipped step and raises `NonFiniteError` after too many in a row.

    `instruments`: the memory instruments of the step's forward pass (`describe` summarises
    them in the message; the train record of the step holds them all).
    """
    if bool(metrics["finite"]):
        return
    what = _nonfinite_cause(metrics, run)
    seen = ""
    if instruments is not None:
        seen = f"; memory instruments of the step: {describe(instruments)} (all in metrics.jsonl)"
    consecutive = int(state.consecutive_nonfinite)
    log.warning("step %d: %s; update skipped (%d in a row)%s", step, what, consecutive, seen)
    limit = run.config.train.max_consecutive_nonfinite
    if consecutive >= limit:
        raise NonFiniteError(
            f"stopping at step {step}: {limit} consecutive steps with "
            f"non-finite loss or gradients; last one had {what}{seen}"
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains and evaluates the experiment `config`, writing everything under `workdir`.

    Writes `checkpoints/`, `metrics.jsonl`, `tensorboard/`, `report.md` and `loss.png`. Resumes
    from the newest usable checkpoint in `workdir` if there is one.

    Returns:
      The final metrics (validation and test loss, perplexity, bits per character, ...).

    Raises:
      ValueError: an invalid config (naming the key).
      NonFiniteError: `train.max_consecutive_nonfinite` non-finite steps in a row.
      nestlearn.data.fetch.DataError: the corpus could not be fetched or is malformed.
      WriteError: a checkpoint or metric write failed (a full disk, an I/O error); the run
        stops at once and the checkpoints committed before stay intact.
      CheckpointMismatchError, CheckpointReadError, CheckpointCorruptError: the workdir's
        checkpoints cannot be resumed from (see `restore`).
    """
    tune_host_allocator()  # XLA:CPU's per-step buffers stay in the process (host_memory)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = build_run(config, workdir)
    cfg = run.config
    state, rest, data_state = restore(run)
    start = int(state.step)
    log.info(
        "%s: %d parameters, levels %s, starting at step %d",
        cfg.model.name,
        sum(x.size for x in jax.tree.leaves(state.params)),
        [(lv.name, lv.period) for lv in run.levels],
        start,
    )

    iterator = BatchIterator(
        run.data.train,
        batch_size=cfg.data.batch_size,
        seq_len=cfg.data.seq_len,
        seed=cfg.seed,
        vocab_size=cfg.model.vocab_size,
    )
    if data_state is not None:
        iterator.restore(data_state)
    val_batches = [
        on_mesh(b, run.mesh)
        for b in eval_batches(
            run.data.val,
            batch_size=cfg.data.batch_size,
            seq_len=cfg.data.seq_len,
            max_batches=cfg.train.eval_batches,
            vocab_size=cfg.model.vocab_size,
        )
    ]
    train_step = build_train_step(
        run.levels,
        params=state.params,
        grad_clip=cfg.optim.grad_clip,
        graphdef=run.graphdef,
        mesh=run.mesh,
    )
    eval_step = build_eval_step(run.graphdef, params=state.params, mesh=run.mesh)
    instrument_step = None
    if cfg.train.instruments:
        instrument_step = build_instrument_step(run.graphdef, params=state.params, mesh=run.mesh)
    levels = LevelMonitor(level_stats(state.opt_state))
    schedule = resolve_levels(cfg)[-1].schedule  # the catch-all level's (it comes last)
    # Multi-host: every process trains, process 0 alone writes metrics and the report.
    writer = MetricWriter(workdir, resume_step=start, primary=jax.process_index() == 0)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    progress = Progress(
        total=cfg.train.num_steps,
        initial=start,
        tokens_per_step=tokens_per_step,
        enabled=cfg.train.progress_bar,
    )
    config_json = dump_config(cfg)
    t_start, t_log, step_log = time.perf_counter(), time.perf_counter(), start
    tr = cfg.train
    try:
        for step in range(start + 1, tr.num_steps + 1):
            run.checkpointer.check()  # a failed background save stops the run at once
            batch = on_mesh(next(iterator), run.mesh)
            last = step == tr.num_steps
            logging = step % tr.log_every == 0 or last
            instruments = None
            if instrument_step is not None and logging:
                # The forward pass of this step: its batch, the params before its update.
                instruments = jax.device_get(instrument_step(state.params, rest, batch.inputs))
                if not instruments:  # no in-context memory to instrument: stop asking
                    instrument_step = instruments = None
            state, metrics = train_step(state, rest, batch.inputs, batch.targets)
            metrics = jax.device_get(metrics)
            levels.update(metrics)
            finite = bool(metrics["finite"])
            if instrument_step is not None and instruments is None and not finite:
                # A skipped step kept the params: this reruns the forward that went non-finite.
                instruments = jax.device_get(instrument_step(state.params, rest, batch.inputs))
            progress.update(step, float(metrics["loss"]))
            if logging or not finite:
                now = time.perf_counter()
                record = {
                    k: v
                    for k, v in metrics.items()
                    if k not in ("finite", "level_finite") and not k.startswith("level/")
                }
                record.update(levels.metrics())
                record.update(instruments or {})
                if not finite:
                    record["nonfinite"] = _nonfinite_cause(metrics, run)
                record.update(
                    lr=float(schedule(step - 1)),
                    skipped=int(state.skipped),
                    tokens_per_sec=(step - step_log) * tokens_per_step / (now - t_log),
                    elapsed_s=now - t_start,
                )
                writer.write(step, "train", record)
                t_log, step_log = now, step
            _check_finite(metrics, state, run, step, instruments)
            if step % tr.eval_every == 0 or last:
                writer.write(
                    step,
                    "eval",
                    evaluate_split(
                        eval_step,
                        state.params,
                        rest,
                        val_batches,
                        run.data.chars_per_token["val"],
                        "val",
                    ),
                )
            if step % tr.checkpoint_every == 0 or last:
                run.checkpointer.save(
                    step,
                    trees=checkpoint_trees(state, rest),
                    data=dict(iterator.state._asdict()),
                    config=config_json,
                )
        run.checkpointer.wait()
        final = _finish(run, state, rest, eval_step, writer, workdir, val_batches, config_json)
    except BaseException:
        # The error in flight names the cause; closing must neither hide it nor hang on it.
        for close in (progress.close, writer.close, run.checkpointer.close):
            with contextlib.suppress(Exception):
                close()
        raise
    progress.close()
    writer.close()
    run.checkpointer.close()
    return final


def _finish(
    run: Run,
    state: TrainState,
    rest,
    eval_step,
    writer: MetricWriter,
    workdir: Path,
    val_batches: list[Batch],
    config_json: dict[str, Any],
) -> dict[str, Any]:
    cfg = run.config
    test_batches = [
        on_mesh(b, run.mesh)
        for b in eval_batches(
            run.data.test,
            batch_size=cfg.data.batch_size,
            seq_len=cfg.data.seq_len,
            max_batches=cfg.train.eval_batches,
            vocab_size=cfg.model.vocab_size,
        )
    ]
    final = {"step": int(state.step), "skipped_steps": int(state.skipped)}
    final.update(
        evaluate_split(
            eval_step, state.params, rest, val_batches, run.data.chars_per_token["val"], "val"
        )
    )
    final.update(
        evaluate_split(
            eval_step, state.params, rest, test_batches, run.data.chars_per_token["test"], "test"
        )
    )
    records = writer.records
    train_losses = [r["loss"] for r in records if r.get("kind") == "train"]
    if train_losses:
        final["final_train_loss"] = train_losses[-1]
    final["parameters"] = int(sum(x.size for x in jax.tree.leaves(state.params)))
    last_train = next((r for r in reversed(records) if r.get("kind") == "train"), {})
    final.update({k: v for k, v in last_train.items() if k.startswith(("level/", "memory_rms/"))})
    writer.write(int(state.step), "final", final)
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), int(state.step))
    samples = sample_texts(run, state.params, rest, rng)
    probe = probe_run(run, state.params, rest, val_batches, workdir if writer.primary else None)
    if writer.primary:
        write_report(
            workdir,
            config_json=config_json,
            final=final,
            records=writer.records,
            samples=samples,
            probe=probe,
        )
    return final


def _tuples(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _tuples(v) for k, v in node.items()}
    if isinstance(node, list):
        return tuple(_tuples(v) for v in node)
    return node


def evaluate_workdir(
    workdir: str | Path,
    *,
    split: str = "test",
    num_samples: int | None = None,
    prompt: str | None = None,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Evaluates the newest checkpoint of `workdir` on `split` and samples from it.

    Args:
      workdir: a run directory written by `train_and_evaluate`.
      split: "val" or "test".
      num_samples: samples to draw (default: the run's `sample.num_samples`).
      prompt: the samples' prompt (default: the run's `sample.prompt`).
      max_batches: evaluation batches (default: the run's `train.eval_batches`).

    Returns:
      `{"step", "<split>_loss", "<split>_perplexity", "<split>_bpc", "samples"}`.

    Raises:
      ValueError: an unknown split.
      NoCheckpointError: no usable checkpoint in `workdir` (nothing is created there).
    """
    if split not in ("val", "test"):
        raise ValueError(f"split={split!r} must be 'val' or 'test'")
    workdir = Path(workdir)
    config = _saved_config(workdir)
    if num_samples is not None:
        config.sample.num_samples = num_samples
    if prompt is not None:
        config.sample.prompt = prompt
    run, state, rest = _restored(config, workdir, max_batches)
    batches = _split_batches(run, split)
    result: dict[str, Any] = {"step": int(state.step)}
    result.update(
        evaluate_split(
            build_eval_step(run.graphdef, params=state.params, mesh=run.mesh),
            state.params,
            rest,
            batches,
            run.data.chars_per_token[split],
            split,
        )
    )
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), int(state.step) + 1)
    result["samples"] = sample_texts(run, state.params, rest, rng)
    return result


def restore_workdir(workdir: str | Path) -> tuple[Run, TrainState, Any]:
    """The run of `workdir`'s saved config and its newest checkpoint; creates nothing there.

    Returns:
      `(run, state, rest)`: the run (config, data, graph, mesh), the restored train state and the
      model's non-parameter state.

    Raises:
      NoCheckpointError: no usable checkpoint in `workdir`.
    """
    workdir = Path(workdir)
    return _restored(_saved_config(workdir), workdir)


def _restored(
    config: ml_collections.ConfigDict, workdir: Path, max_batches: int | None = None
) -> tuple[Run, TrainState, Any]:
    """The run of a saved `config` and its newest checkpoint."""
    if max_batches is not None:
        config.train.eval_batches = max_batches
    run = build_run(config, workdir)
    try:
        state, rest, _ = restore(run)
    finally:
        run.checkpointer.close()
    return run, state, rest


def _split_batches(run: Run, split: str) -> list[Batch]:
    """`split`'s evaluation batches of `run` on its mesh."""
    cfg = run.config
    return [
        on_mesh(b, run.mesh)
        for b in eval_batches(
            getattr(run.data, split),
            batch_size=cfg.data.batch_size,
            seq_len=cfg.data.seq_len,
            max_batches=cfg.train.eval_batches,
            vocab_size=cfg.model.vocab_size,
        )
    ]


def _saved_config(workdir: Path) -> ml_collections.ConfigDict:
    """The experiment config of the newest checkpoint of `workdir`; creates nothing there.

    Raises:
      NoCheckpointError: `workdir` has no `checkpoints/` directory or no readable checkpoint.
    """
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise NoCheckpointError(
            f"workdir={str(workdir)!r} holds no checkpoint (no {directory.name}/ directory); "
            "train there first (--mode=train) or pass the workdir of a run"
        )
    checkpointer = Checkpointer(directory, level_names=(), max_to_keep=1000)
    try:
        saved = checkpointer.read_config()
    finally:
        checkpointer.close()
    if saved is None:
        raise NoCheckpointError(f"workdir={str(workdir)!r} holds no usable checkpoint")
    return ml_collections.ConfigDict(_tuples(_upgrade(saved)))


def memory_writes_graph(model_config: ml_collections.ConfigDict, writes: bool, params: Any):
    """The graph of the model of `model_config` with `memory_writes=writes` (built abstractly).

    Raises:
      ValueError: its parameter tree differs from `params` (the switch must not change it).
    """
    from nestlearn import models

    config = ml_collections.ConfigDict(model_config.to_dict())
    config.memory_writes = writes
    abstract = nnx.eval_shape(lambda: models.build(config, rngs=nnx.Rngs(0)))
    graphdef, shapes, _ = split_model(abstract)
    if jax.tree.structure(shapes) != jax.tree.structure(params):
        raise ValueError(
            f"model {config.name!r} with memory_writes={writes} has another parameter tree than "
            "the trained one; the switch must not change the parameters"
        )
    return graphdef


def probe_run(
    run: Run, params: Any, rest: Any, batches: list[Batch], workdir: Path | None = None
) -> dict[str, Any]:
    """The in-context memory probe (`nestlearn.eval.probe`) of a run's params on `batches`.

    Per-position losses with the model's memory writes on and off (same params; one evaluation
    for a model without in-context memory), summarised by `probe.compare`. With `workdir`,
    writes `probe.json` and `probe.png` there.

    Args:
      run: the run (config, graph, mesh).
      params, rest: the model's split state, e.g. restored from a checkpoint.
      batches: evaluation batches on the run's mesh (those of the validation loss).
      workdir: where to write the files, or None.

    Returns:
      `probe.compare`'s dict and `model` (the model's name).
    """
    from nestlearn import models
    from nestlearn.eval import probe

    model_config = run.config.model
    memory = models.has_memory(model_config)

    def losses(writes: bool):
        graph = run.graphdef
        if model_config.memory_writes != writes:
            graph = memory_writes_graph(model_config, writes, params)
        step = probe.build_position_loss(graph, params=params, mesh=run.mesh)
        return probe.position_losses(step, params, rest, batches)

    result = probe.compare(losses(True), losses(False) if memory else None, has_memory=memory)
    result["model"] = model_config.name
    if workdir is not None:
        workdir = Path(workdir)
        (workdir / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
        probe.plot(result, workdir / "probe.png", title=f"{model_config.name}: in-context memory")
    return result


def probe_workdir(workdir: str | Path, *, max_batches: int | None = None) -> dict[str, Any]:
    """Probes the newest checkpoint of `workdir` on the validation split; writes the files.

    Evaluates the per-position validation loss with the memory writes on and off
    (`probe_run`) and writes `workdir/probe.json` and `workdir/probe.png`.

    Args:
      workdir: a run directory written by `train_and_evaluate`.
      max_batches: evaluation batches (default: the run's `train.eval_batches`).

    Returns:
      The probe's result (`probe_run`) with the checkpoint's `step`.

    Raises:
      NoCheckpointError: no usable checkpoint in `workdir` (nothing is created there).
    """
    workdir = Path(workdir)
    run, state, rest = _restored(_saved_config(workdir), workdir, max_batches)
    batches = _split_batches(run, "val")
    primary = jax.process_index() == 0
    result = probe_run(run, state.params, rest, batches, workdir if primary else None)
    return {"step": int(state.step), **result}
