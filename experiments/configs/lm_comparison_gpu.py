"""The LM comparison at GPU scale: `lm_comparison`'s models with 10 × 2²⁰ training bytes per run.

  bash experiments/gpu_lm_comparison.sh      # on a machine with an NVIDIA GPU; see the script

The seven models of `lm_comparison` (non-embedding parameters ±5%, 1,024-byte windows, Hope's
learning write rule, the memory probe at the end) with 8 windows per batch and 1,280 steps, so
each run sees 10,485,760 training bytes (10× the CPU study). One seed at the CPU study's default
peak rate 3e-3 (no rate selection: a device session is short), models in the order of
`MODELS`, so a partial sweep still compares the first ones. Every record names the device it ran
on (`machine`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `lm_comparison`, beside this file
import lm_comparison

MODELS = lm_comparison.MODELS
LABELS = lm_comparison.LABELS
ABLATIONS: dict = {}
SEEDS = (0,)
ABLATION_SEEDS = ()
TARGET_NON_EMBEDDING = lm_comparison.TARGET_NON_EMBEDDING
PARAM_TOLERANCE = lm_comparison.PARAM_TOLERANCE
BATCH_SIZE = 8
TRAIN_TOKENS = 10 * 2**20


def get_config(arg: str | None = "hope"):
    """`lm_comparison.get_config(arg)` with 8 windows per batch and 10 × 2²⁰ training bytes."""
    c = lm_comparison.get_config(arg)
    if (arg or "").endswith(",quick"):
        return c
    lm_comparison.results_lm.set_budget(
        c,
        seq_len=lm_comparison.SEQ_LEN,
        batch_size=BATCH_SIZE,
        train_tokens=TRAIN_TOKENS,
        eval_windows=lm_comparison.EVAL_BATCHES,
        log_every=32,
    )
    return c
