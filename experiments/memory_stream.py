"""A long stream through a model's in-context memories: loss and state norms, chunk by chunk.

  python experiments/memory_stream.py                             # default Hope, 1M tokens
  python experiments/memory_stream.py --workdir=runs/default      # its trained checkpoint
  python experiments/memory_stream.py --tokens=65536 --config=experiments/configs/default.py:smoke

The model (untrained from `--config`, or the newest checkpoint of `--workdir`) reads `--tokens`
bytes of a corpus split as one sequence (batch 1), `--chunk` tokens per call, carrying its state
(`LanguageModel.__call__(tokens, state)`: every memory writes as in training). After each call
the script records the mean next-token loss of the chunk, the Frobenius norm of every array of
the carried state (the self-modifying memories' weights and momenta, CMS, conv caches) and the
norm of that call's change of it, so a memory that blows up (a norm growing without bound), dies
(a weight decaying to 0) or stops writing (no change) shows. Prints a table of the state's
arrays (initial, minimum, maximum and final norm, last call's change) and writes the whole trace
as JSON (`--out`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from nestlearn import models, tune_host_allocator
from nestlearn.data.dataset import load_dataset
from nestlearn.eval import compare
from nestlearn.train import restore_workdir
from nestlearn.train.step import split_model

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command line (only when run as a script, so importing this module is free)."""
    config_flags.DEFINE_config_file(
        "config",
        "experiments/configs/default.py",
        "Experiment config (model and corpus).",
        lock_config=False,
    )
    flags.DEFINE_string("workdir", "", "Stream the newest checkpoint of this run instead.")
    flags.DEFINE_integer("tokens", 1 << 20, "Tokens to stream.")
    flags.DEFINE_integer("chunk", 4096, "Tokens per call (the state is carried between calls).")
    flags.DEFINE_enum("split", "train", ["train", "val", "test"], "Corpus split (wrapped around).")
    flags.DEFINE_string("out", "docs/results/memory/stream.json", "JSON trace ('' = none).")


def stream_tokens(tokens: np.ndarray, total: int) -> np.ndarray:
    """`total` tokens of `tokens`, repeated from its start as often as needed."""
    if tokens.size == 0:
        raise ValueError("the corpus split is empty")
    return np.resize(tokens, total)


def state_norms(state) -> dict[str, jax.Array]:
    """Frobenius norm of every floating array of a model state, by its path."""
    return {
        jax.tree_util.keystr(path): jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))
        for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
        if jnp.issubdtype(x.dtype, jnp.floating)
    }


def _difference(new, old):
    """new − old for floating leaves (the others are kept, and dropped by `state_norms`)."""
    floating = lambda a: jnp.issubdtype(a.dtype, jnp.floating)
    return jax.tree.map(lambda a, b: a - b if floating(a) else a, new, old)


def run_stream(model, tokens: np.ndarray, chunk: int, *, log_every: int = 32) -> dict:
    """Streams `tokens` [n] through `model` in calls of `chunk` tokens; the trace as a dict.

    Returns:
      `{"tokens", "loss" (per call), "norms" ({path: per-call norm}), "changes" ({path: norm of
      the call's change of the array}), "initial" ({path: norm}), "seconds"}`; lists are per
      call, in order.
    """
    n = tokens.size // chunk * chunk
    if n == 0:
        raise ValueError(f"--tokens={tokens.size} is shorter than one --chunk={chunk}")
    graphdef, params, rest = split_model(model)

    @jax.jit
    def step(params, rest, x, state):
        logits, new = nnx.merge(graphdef, params, rest)(x, state)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], x[:, 1:]).mean()
        return loss, new, state_norms(new), state_norms(_difference(new, state))

    state = model.init_state(1)
    trace = {"tokens": [], "loss": [], "norms": {}, "changes": {}, "initial": {}}
    trace["initial"] = {k: float(v) for k, v in state_norms(state).items()}
    start = time.perf_counter()
    for i, s in enumerate(range(0, n, chunk)):
        x = jnp.asarray(tokens[None, s : s + chunk], jnp.int32)
        loss, state, norms, changes = step(params, rest, x, state)
        trace["tokens"].append(s + chunk)
        trace["loss"].append(float(loss))
        for k, v in norms.items():
            trace["norms"].setdefault(k, []).append(float(v))
            trace["changes"].setdefault(k, []).append(float(changes[k]))
        if i % log_every == 0 or s + chunk == n:
            top = max(trace["norms"], key=lambda k: trace["norms"][k][-1])
            print(
                f"  {s + chunk:>9,} tokens: loss {float(loss):.3f}, largest state norm "
                f"{trace['norms'][top][-1]:.3g} ({top}), {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    trace["seconds"] = time.perf_counter() - start
    return trace


#: A state array whose final norm is below this fraction of its initial norm has collapsed.
COLLAPSE_RATIO = 1e-3


def collapsed(trace: dict) -> list[str]:
    """State arrays that started non-zero and ended below `COLLAPSE_RATIO` of their initial norm
    (a memory decayed to its zero state; momenta, which start at 0, never count)."""
    return [
        k
        for k, values in trace["norms"].items()
        if trace["initial"][k] > 0 and values[-1] < COLLAPSE_RATIO * trace["initial"][k]
    ]


def summary_rows(trace: dict) -> list[list[str]]:
    """One row per state array: path, initial, min, max, final norm, last call's change,
    finite, collapsed."""
    rows, dead = [], set(collapsed(trace))
    for k, values in trace["norms"].items():
        v = np.asarray(values)
        rows.append(
            [
                f"`{k}`",
                f"{trace['initial'][k]:.3g}",
                f"{np.nanmin(v):.3g}",
                f"{np.nanmax(v):.3g}",
                f"{v[-1]:.3g}",
                f"{trace['changes'][k][-1]:.3g}",
                "yes" if np.all(np.isfinite(v)) else "no",
                "yes" if k in dead else "no",
            ]
        )
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    if FLAGS.workdir:
        run, state, rest = restore_workdir(FLAGS.workdir)
        config, data = run.config, run.data
        model = nnx.merge(run.graphdef, state.params, rest)
        source = f"checkpoint step {int(state.step)} of {FLAGS.workdir}"
    else:
        config = FLAGS.config
        data = load_dataset(config.data)
        model = models.build(config.model, rngs=nnx.Rngs(config.seed))
        source = f"untrained, seed {config.seed}"
    tokens = stream_tokens(np.asarray(getattr(data, FLAGS.split)), FLAGS.tokens)
    print(
        f"streaming {FLAGS.tokens:,} tokens of the {config.data.corpus} {FLAGS.split} split "
        f"through {config.model.name} ({source}), {FLAGS.chunk} per call",
        flush=True,
    )
    trace = run_stream(model, tokens, FLAGS.chunk)
    rows = summary_rows(trace)
    print(
        compare.markdown_table(
            [
                "state array",
                "initial norm",
                "min",
                "max",
                "final",
                "last change",
                "finite",
                "collapsed",
            ],
            rows,
        )
    )
    finite = all(r[6] == "yes" for r in rows) and np.all(np.isfinite(trace["loss"]))
    largest = max(max(v) for v in trace["norms"].values())
    dead = collapsed(trace)
    live = sum(v > 0 for v in trace["initial"].values())
    print(
        f"finite: {finite}; collapsed (final norm < {COLLAPSE_RATIO:g} × initial): "
        f"{len(dead)} of {live} state arrays that started non-zero; "
        f"largest state norm over the stream {largest:.3g}; "
        f"mean loss {np.mean(trace['loss']):.3f}; "
        f"{len(trace['tokens']) * FLAGS.chunk / trace['seconds']:,.0f} tokens/s"
    )
    if FLAGS.out:
        record = {
            "model": config.model.name,
            "source": source,
            "split": FLAGS.split,
            "chunk": FLAGS.chunk,
            "finite": bool(finite),
            "largest_norm": largest,
            "collapsed": dead,
            "machine": compare.machine_info(),
            "command": "python " + " ".join(sys.argv),
            **trace,
        }
        compare.write_json_atomic(Path(FLAGS.out), record)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    tune_host_allocator()
    app.run(main)
