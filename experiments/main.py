"""Runs one experiment: `python experiments/main.py --config=experiments/configs/default.py
--workdir=runs/default` (training resumes from the newest checkpoint in the workdir).

`--mode=eval` evaluates and samples the newest checkpoint of `--workdir` on the test split;
`--mode=probe` writes its in-context memory probe (validation loss by position with the memory
writes on and off) to `probe.json` and `probe.png` there. Neither needs `--config`.

This file is intentionally kept short; everything happens in `nestlearn.train`.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import nestlearn.train
from nestlearn import tune_host_allocator

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the report.")
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "probe"],
    "train: train (or resume) and evaluate; eval: evaluate and sample the newest "
    "checkpoint in --workdir on the test split; probe: its validation loss by position with "
    "the in-context memory writes on and off (probe.json, probe.png in --workdir).",
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        if FLAGS.mode == "eval":
            result = nestlearn.train.evaluate_workdir(FLAGS.workdir)
            samples = result.pop("samples")
            print(json.dumps(result, indent=2), *samples, sep="\n\n")
            return
        if FLAGS.mode == "probe":
            print(json.dumps(nestlearn.train.probe_workdir(FLAGS.workdir), indent=2))
            return
    except nestlearn.train.NoCheckpointError as e:
        sys.exit(f"--mode={FLAGS.mode}: {e}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required with --mode=train")
    final = nestlearn.train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    print(json.dumps(final, indent=2))


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    app.run(main)
