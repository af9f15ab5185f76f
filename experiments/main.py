"""Runs one experiment: `python experiments/main.py --config=experiments/configs/default.py
--workdir=runs/default` (training resumes from the newest checkpoint in the workdir).

`--mode=eval` evaluates and samples the newest checkpoint of `--workdir` on the test split;
`--mode=probe` writes its in-context memory probe (validation loss by position with the memory
writes on and off) to `probe.json` and `probe.png` there. Neither needs `--config`.

A run that cannot go on — an unknown `--config.<key>` override, a failed checkpoint or metric
write (a full disk), checkpoints that cannot be resumed from, no checkpoint to evaluate — ends
with exit status 1 and one message naming the key or the workdir and the cause.

This file is intentionally kept short; everything happens in `nestlearn.train`.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import nestlearn.train
from nestlearn import tune_host_allocator

FLAGS = flags.FLAGS
#: Errors that end a run with their message alone (each names the workdir or file and the cause).
_STOPS = (
    nestlearn.train.NoCheckpointError,
    nestlearn.train.WriteError,
    nestlearn.train.CheckpointMismatchError,
    nestlearn.train.CheckpointReadError,
    nestlearn.train.CheckpointCorruptError,
)
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


def _unknown_override(argv: list[str]) -> str | None:
    """The message for the first `--config.<dotted>` override naming no key of the config."""
    files = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    if not files:
        return None
    config = FLAGS["config"].parser.parse(files[-1])  # the config file the flag loads
    for arg in argv[1:]:
        if not arg.startswith("--config."):
            continue
        dotted = arg.removeprefix("--config.").split("=", 1)[0]
        node, parts = config, dotted.split(".")
        for i, part in enumerate(parts):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                key, section = ".".join(parts[: i + 1]), ".".join(parts[:i]) or "the top level"
                return (
                    f"--config.{dotted}: config key {key!r} is unknown; allowed in {section}: "
                    f"{sorted(keys)}"
                )
            node = node[part]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with an unknown config override named instead of a traceback."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):
        message = _unknown_override(argv)
        if message is None:
            raise
        sys.exit(message)


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
    except _STOPS as e:
        sys.exit(f"--mode={FLAGS.mode}: {e}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required with --mode=train")
    try:
        final = nestlearn.train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (*_STOPS, OSError) as e:  # OSError: the report or probe files (it names the file)
        sys.exit(f"--mode=train --workdir={FLAGS.workdir}: {type(e).__name__}: {e}")
    print(json.dumps(final, indent=2))


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    app.run(main, flags_parser=_parse_flags)
