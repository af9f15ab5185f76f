"""The language-model comparison at 1,024-byte windows and 1M training bytes per run.

  python experiments/lm_compare.py --study=lm_comparison --out=docs/results/lm_comparison \
      --workdir=runs/lm_comparison
  python experiments/main.py --config=experiments/configs/lm_comparison.py:hope --workdir=W

The seven models of `results_lm` (Transformer++, DeltaNet, Gated DeltaNet, Titans LMM, Titans
MAC, Hope, Hope-Attention; d_model 128, 4 layers, 4 heads, byte-level Shakespeare split by
play) with

- windows of `SEQ_LEN` = 1,024 bytes, 2 per batch, `TRAIN_TOKENS` = 2²⁰ training bytes per run
  (512 AdamW steps, warmup 51, cosine to 0.1×);
- each model's peak learning rate chosen from `LEARNING_RATES` on seed 0 (lowest validation
  loss; a diverged run counts as infinitely bad), then seeds 1 and 2 at that rate;
- non-embedding parameters matched: every model within `PARAM_TOLERANCE` of
  `TARGET_NON_EMBEDDING` (`nestlearn.models.count_params(..., embedding=False)`);
- Hope with the `hope` model's write rule (`nestlearn.models.hope.HOPE_WRITES`: token-normalised
  η ≤ 4, retention towards the initial weights, no DGD erase, no momentum), the rule under which
  its memory learns in context (docs/results/memory/README.md);
- every run ends with the in-context memory probe (`nestlearn.eval.probe`): validation loss by
  position with the writes on and off, and the late gap off − on.

The ablations are the switches of the paper's Table 6 (arXiv 2512.24695) applied to that Hope,
each at Hope's selected learning rate and seeds 0–2. Two of Table 6's mechanisms (the DGD erase
and momentum) are off in the default, so their rows switch them *on*; the paper's direction for
such a row is the reverse of its "w/o" row (`PAPER_ABLATION`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `results_lm`, beside this file
import results_lm

from nestlearn.models.hope import HOPE_WRITES

MODELS = results_lm.MODELS
LABELS = dict(results_lm.LABELS)

#: Peak learning rates tried for every model on seed 0.
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
#: Seeds of the compared models and of the ablations (`lm_compare.py`'s defaults).
SEEDS = (0, 1, 2)
ABLATION_SEEDS = (0, 1, 2)

#: Non-embedding parameter budget and tolerance (the `results_lm` widths give 1.94–1.98M).
TARGET_NON_EMBEDDING = 1_960_000
PARAM_TOLERANCE = 0.05

SEQ_LEN = 1024
BATCH_SIZE = 2
TRAIN_TOKENS = 2**20
#: Validation windows of the final evaluation and of the probe.
EVAL_BATCHES = 24

#: Table 6's switches on the `hope` model's default: name -> (row label, `self_modifying`
#: changes). "hope_no_cms" keeps one CMS level, widened to the budget (as in `results_lm`).
ABLATIONS = {
    "hope_with_dgd": ("with DGD erase", {"use_dgd": True}),
    "hope_with_momentum": ("with momentum 0.5", {"momentum": 0.5}),
    "hope_no_decay": ("w/o weight decay (α)", {"use_decay": False}),
    "hope_no_cms": ("w/o CMS", {}),
    "hope_static_k": ("static k", {"adaptive_k": False}),
    "hope_static_v": ("static v", {"adaptive_v": False}),
    "hope_adaptive_q": ("adaptive q", {"adaptive_q": True}),
}
LABELS.update({name: f"Hope {label}" for name, (label, _) in ABLATIONS.items()})

#: Table 6 perplexities: ablation -> (the paper's row with the ablation's setting, the paper's
#: row with Hope's setting). "with DGD" is the paper's Hope (12.24) against its "w/o DGD"
#: (13.41); the others are the paper's row against its Hope.
PAPER_ABLATION = {
    "hope_with_dgd": (12.24, 13.41),
    "hope_with_momentum": (12.24, 13.58),
    "hope_no_decay": (13.71, 12.24),
    "hope_no_cms": (13.04, 12.24),
    "hope_static_k": (13.77, 12.24),
    "hope_static_v": (13.90, 12.24),
    "hope_adaptive_q": (12.19, 12.24),
}

#: Feed-forward ratio of each ablation that changes the parameter count (`results_lm`'s).
_MLP_RATIOS = {"hope_no_cms": results_lm.MLP_RATIOS["hope_no_cms"]}
_MLP_RATIOS.update(
    {k: results_lm.MLP_RATIOS[k] for k in ("hope_static_k", "hope_static_v", "hope_adaptive_q")}
)


def get_config(arg: str | None = "hope"):
    """The experiment config of one model or ablation, at the study's default learning rate.

    Args:
      arg: "<name>" or "<name>,quick"; <name> is one of `MODELS` or `ABLATIONS`. The sweep sets
        `optim.lr` to the selected rate; quick keeps `results_lm`'s tiny synthetic run.
    """
    name, _, mode = (arg or "hope").partition(",")
    if name not in MODELS and name not in ABLATIONS:
        raise ValueError(
            f"lm_comparison model {name!r} is unknown; allowed: {[*MODELS, *ABLATIONS]}"
        )
    base = "hope" if name in ABLATIONS else name
    c = results_lm.get_config(f"{base},{mode}" if mode else base)
    if base == "hope":
        c.model.self_modifying.update(HOPE_WRITES)
        if mode == "quick":
            c.model.self_modifying.chunk_size = 8
    if name in ABLATIONS:
        c.model.self_modifying.update(ABLATIONS[name][1])
        c.model.mlp_ratio = _MLP_RATIOS.get(name, c.model.mlp_ratio)
        if name == "hope_no_cms":
            c.model.cms.periods = (1,)
            c.model.cms.chunk_sizes = (16,) if mode != "quick" else (8,)
    if mode == "quick":
        return c
    results_lm.set_budget(
        c,
        seq_len=SEQ_LEN,
        batch_size=BATCH_SIZE,
        train_tokens=TRAIN_TOKENS,
        eval_windows=EVAL_BATCHES,
        log_every=16,
    )
    return c
