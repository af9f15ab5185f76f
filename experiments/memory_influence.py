"""How much do a model's in-context writes change its predictions, by position, before training?

  python experiments/memory_influence.py                                  # every study model
  python experiments/memory_influence.py --models=hope,hope_alpha7 --out=''

For each model of a study config (`experiments/configs/<study>.py`: `MODELS` and
`get_config(name)`), the untrained model (seed `--seed`) reads the same `--windows` validation
windows twice, with its memories writing and with `model.memory_writes=False` (every memory held
at its initial state; the same parameters). Per position the script measures

    influence_t = ‖log p_on(·|x≤t) − log p_off(·|x≤t)‖ / ‖log p_off(·|x≤t) − mean‖

(the change of the log-probabilities relative to their spread; ≈ √2 when the two predictions
are unrelated) and prints its mean over position buckets. A memory whose writes leave the
predictions unchanged gives the outer loop no gradient towards using them: this is the
mechanism check that comes before any training run (docs/SEMANTICS.md §1.3).
"""

from __future__ import annotations

import importlib
import itertools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from nestlearn import models, tune_host_allocator
from nestlearn.data.dataset import load_dataset
from nestlearn.eval import compare

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command line (only when run as a script)."""
    flags.DEFINE_string("study", "memory_study", "Config module in experiments/configs/.")
    flags.DEFINE_list("models", [], "Models of the study (default: all of its MODELS).")
    flags.DEFINE_integer("windows", 2, "Validation windows (the study's window length).")
    flags.DEFINE_integer("seed", 0, "Initialisation seed.")
    flags.DEFINE_string("out", "docs/results/memory/influence.json", "JSON record ('' = none).")


def buckets(length: int) -> list[tuple[int, int]]:
    """Position buckets [0, 64), [64, L/4), [L/4, L/2), [L/2, L) of a window of `length`."""
    edges = sorted({0, min(64, length), length // 4, length // 2, length})
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def influence(config, tokens: jax.Array, seed: int) -> np.ndarray:
    """influence_t [t] averaged over the windows `tokens` [b, t] (see the module docstring)."""
    logp = []
    for writes in (True, False):
        config.model.memory_writes = writes
        model = models.build(config.model, rngs=nnx.Rngs(seed))
        logits, _ = model(tokens)
        logp.append(jax.nn.log_softmax(logits))
    on, off = logp
    spread = jnp.linalg.norm(off - off.mean(-1, keepdims=True), axis=-1)
    return np.asarray((jnp.linalg.norm(on - off, axis=-1) / spread).mean(0))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "configs"))
    study = importlib.import_module(FLAGS.study)
    names = FLAGS.models or list(study.MODELS)
    unknown = sorted(set(names) - set(study.MODELS))
    if unknown:
        raise app.UsageError(f"--models {unknown} not in {FLAGS.study}.MODELS {study.MODELS}")
    rows, record = [], {"models": {}}
    for name in names:
        config = study.get_config(name)
        has_memory = models.has_memory(config.model)
        val = np.asarray(load_dataset(config.data).val)
        length = config.data.seq_len
        if val.size < FLAGS.windows * length:
            raise app.UsageError(f"the validation split has fewer than {FLAGS.windows} windows")
        starts = np.linspace(0, val.size - length, FLAGS.windows).astype(int)
        tokens = jnp.asarray(np.stack([val[s : s + length] for s in starts]).astype(np.int32))
        start = time.perf_counter()
        per_position = influence(config, tokens, FLAGS.seed) if has_memory else np.zeros(length)
        means = [float(per_position[a:b].mean()) for a, b in buckets(length)]
        label = getattr(study, "LABELS", {}).get(name, name)
        rows.append([label, *(f"{m:.3f}" for m in means)])
        record["models"][name] = {"label": label, "buckets": buckets(length), "influence": means}
        print(f"{name}: {means} ({time.perf_counter() - start:.0f} s)", flush=True)
    header = ["model", *(f"positions {a}–{b - 1}" for a, b in buckets(length))]
    print(compare.markdown_table(header, rows))
    if FLAGS.out:
        record.update(
            study=FLAGS.study,
            windows=FLAGS.windows,
            seed=FLAGS.seed,
            machine=compare.machine_info(),
            command="python " + " ".join(sys.argv),
        )
        compare.write_json_atomic(Path(FLAGS.out), record)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    tune_host_allocator()
    app.run(main)
