"""Evaluate and sample from an existing run: `python -m nestlearn.train.evaluate --workdir DIR`.

The config comes from the newest checkpoint in `DIR/checkpoints` (so no config file is needed);
the data and model are rebuilt from it, the checkpoint restored, and the loss, perplexity and
bits per character of the chosen split printed with a few samples.
"""

from __future__ import annotations

import argparse
import json

from nestlearn.train.trainer import evaluate_workdir

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Parses the command line, evaluates, prints the metrics (JSON) and the samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="run directory (with checkpoints/)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--samples", type=int, default=None, help="number of samples")
    parser.add_argument("--prompt", default=None, help="prompt of the samples")
    parser.add_argument("--batches", type=int, default=None, help="evaluation batches")
    args = parser.parse_args(argv)
    result = evaluate_workdir(
        args.workdir,
        split=args.split,
        num_samples=args.samples,
        prompt=args.prompt,
        max_batches=args.batches,
    )
    samples = result.pop("samples")
    print(json.dumps(result, indent=2))
    for i, text in enumerate(samples):
        print(f"\n--- sample {i + 1} ---\n{text}")


if __name__ == "__main__":
    main()
