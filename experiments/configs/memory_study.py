"""Does the in-context memory matter in language modelling? 1,024-byte windows, writes on and off.

  python experiments/lm_compare.py --study=memory_study --out=docs/results/memory/lm \
      --workdir=runs/memory_study
  python experiments/main.py --config=experiments/configs/memory_study.py:hope --workdir=W

The models of the LM comparison (`results_lm`: ≈2M parameters, byte-level Shakespeare, the same
optimizer levels), trained on windows of `SEQ_LEN` bytes so that a memory has hundreds of tokens
of context to write before the positions it is judged on. Each run ends with the probe
(`nestlearn.eval.probe`, docs/SEMANTICS.md §3): the validation loss by position with the
in-context writes on (as trained) and off (every memory held at its initial state, same
parameters). The study's measurement is the late gap, the mean off − on loss over positions
`SEQ_LEN // 2` … `SEQ_LEN - 1`; a model without in-context memory (Transformer++, full causal
attention over the window) has none by construction and is the control.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `results_lm`, beside this file
import results_lm

from nestlearn.models.hope import HOPE_WRITES

#: The `hope` model's write rule with retention towards zero (Eq. 88's α_t W) instead of towards
#: the meta-learned initial weights: the rule of the variants below that do not name a target.
ZERO_RETENTION = {**HOPE_WRITES, "retention_target": "zero"}

#: Hope variants of this study: `self_modifying` changes on top of the `hope` config.
HOPE_VARIANTS = {
    # Retention α ≈ sigmoid(7) = 0.999 at initialisation (a memory horizon of ~1,000 tokens)
    # instead of sigmoid(4) = 0.982 (~55 tokens), as Gated DeltaNet's forget gate.
    "hope_alpha7": ("Hope, α₀ 0.999", {"alpha_bias_init": 7.0}),
    # α₀ 0.999, each token's output-layer write the exact Eq. 57 step (up to η‖a‖²/(1 + η‖a‖²)
    # of its error) at η_max 1, and no DGD erase on the input-side weight W₂ (which, applied
    # token by token with unit keys, shrinks W₂ towards zero and with it every hidden feature).
    "hope_tok_nodgd": (
        "Hope, α₀ 0.999, token-normalised η ≤ 1, no DGD",
        {
            "alpha_bias_init": 7.0,
            "dgd_step": "token_normalized",
            "eta_max": 1.0,
            "use_dgd": False,
        },
    ),
    # As hope_tok_nodgd, with the inner gradient also through the self-generated target
    # v̂ = M(v) (each token's output-layer step then contracts the error M(k) − M(v) it sees,
    # with a = σ(W₂k) − σ(W₂v)) and no momentum (Eq. 88 as printed): the `hope` model's write
    # rule (`nestlearn.models.hope.HOPE_WRITES`) at η_max 1, retention towards zero.
    "hope_tok_nodgd_dv": (
        "Hope, token-normalised η ≤ 1, no DGD, ∇ through v̂, no momentum, α₀ 0.999",
        {**ZERO_RETENTION, "eta_max": 1.0},
    ),
    # The `hope` model's write rule (η_max 4) with retention towards zero.
    "hope_eta4": ("Hope, η ≤ 4, retention towards zero", ZERO_RETENTION),
    # The default write rule at η_max 16: a token's write removes the fraction
    # η‖a‖²/(1 + η‖a‖²) of its error, small when ‖a‖ is (a = σ(W₂k) − σ(W₂v), k close to v);
    # η_max 1 → 4 doubled the late gap.
    "hope_eta16": ("Hope, default write rule at η ≤ 16", {**ZERO_RETENTION, "eta_max": 16.0}),
    # The default write rule with M_k and M_v initialised further from the identity (W₁ std
    # s/√n; on unit random inputs cos(k, v) ≈ 0.8 at s = 1, 0.5 at 2, 0.2 at 4), so that a write
    # stores an association between two different vectors rather than the small difference
    # between k and v ≈ k (the trained default's inner loss ½‖k − v‖² is ≈ 0.03).
    "hope_kv2": (
        "Hope, default write rule, kv_init_scale 2",
        {**ZERO_RETENTION, "kv_init_scale": 2.0},
    ),
    "hope_kv4": (
        "Hope, default write rule, kv_init_scale 4",
        {**ZERO_RETENTION, "kv_init_scale": 4.0},
    ),
    # The `hope` model's write rule: retention towards the meta-learned initial weights W₀
    # (W₀ + α(W − W₀)) instead of towards zero, a fixed point of the residual-MLP memory's
    # writes that long streams collapse into (docs/SEMANTICS.md §1.3 "Long streams").
    "hope_w0": (
        "Hope, model default (η ≤ 4, retention towards W₀)",
        {**HOPE_WRITES, "retention_target": "initial"},
    ),
    # As hope_w0 with α₀ ≈ sigmoid(4) = 0.982 (a ~55-token horizon): towards W₀ a short
    # retention forgets the writes, not the meta-learned memory.
    "hope_w0_alpha4": (
        "Hope, default write rule, retention towards W₀, α₀ 0.982",
        {**HOPE_WRITES, "retention_target": "initial", "alpha_bias_init": 4.0},
    ),
    # Retention towards W₀ with a larger step (η ≤ 16) or keys and values further apart at
    # initialisation (kv_init_scale 4): the two ways to a larger write that diverged towards zero.
    "hope_w0_eta16": (
        "Hope, retention towards W₀, η ≤ 16",
        {**HOPE_WRITES, "retention_target": "initial", "eta_max": 16.0},
    ),
    "hope_w0_kv4": (
        "Hope, retention towards W₀, kv_init_scale 4",
        {**HOPE_WRITES, "retention_target": "initial", "kv_init_scale": 4.0},
    ),
    # Keys and values from separate learned input maps with a random initialisation, as Titans'
    # projections (k and v unrelated at the start), instead of M_k, M_v reading the same x.
    "hope_w0_proj": (
        "Hope, retention towards W₀, random input maps for k and v",
        {
            **HOPE_WRITES,
            "retention_target": "initial",
            "project_inputs": True,
            "project_init": "random",
        },
    ),
    "hope_w0_kv8": (
        "Hope, retention towards W₀, kv_init_scale 8",
        {**HOPE_WRITES, "retention_target": "initial", "kv_init_scale": 8.0},
    ),
}
#: Runs of a model of this study at another peak learning rate: name -> (model, lr). The model
#: default at lr 1e-3 (the study trains at 3e-3): the learning-rate half of the divergence grid
#: of docs/results/memory/README.md.
LR_VARIANTS = {"hope_w0_lr1e-3": ("hope_w0", 1e-3)}
#: Compared models: the memory models, Hope variants and the attention control.
MODELS = (
    "hope",
    *HOPE_VARIANTS,
    *LR_VARIANTS,
    "titans_lmm",
    "deltanet",
    "gated_deltanet",
    "transformer_pp",
)
#: No ablations in this study (the sweep's `--ablations` default).
ABLATIONS: dict = {}
LABELS = {**results_lm.LABELS, **{k: label for k, (label, _) in HOPE_VARIANTS.items()}}
LABELS.update({k: f"{LABELS[m]}, lr {lr:g}" for k, (m, lr) in LR_VARIANTS.items()})
TARGET_PARAMS = results_lm.TARGET_PARAMS
PARAM_TOLERANCE = results_lm.PARAM_TOLERANCE
#: Window length (bytes) and windows per batch (2,048 bytes per step, as the LM comparison).
SEQ_LEN = 1024
BATCH_SIZE = 2
#: Training bytes per run (the LM comparison's budget: 120 steps of 2,048 bytes).
TRAIN_TOKENS = 245_760
#: Validation windows of the final evaluation and the probe (sequences of the standard error).
EVAL_BATCHES = 24


def get_config(arg: str | None = "hope"):
    """The experiment config of one model: `results_lm.get_config(arg)` with long windows.

    Args:
      arg: "<model>" or "<model>,quick" (see `results_lm.get_config`); quick keeps its tiny
        model and synthetic corpus with windows of 64 tokens.
    """
    name, _, mode = (arg or "hope").partition(",")
    if name not in MODELS:
        raise ValueError(f"memory_study model {name!r} is unknown; allowed: {list(MODELS)}")
    if name in LR_VARIANTS:
        model, lr = LR_VARIANTS[name]
        c = get_config(f"{model},{mode}" if mode else model)
        c.optim.lr = lr
        return c
    base = "hope" if name in HOPE_VARIANTS else name
    c = results_lm.get_config(f"{base},{mode}" if mode else base)
    if name in HOPE_VARIANTS:
        c.model.self_modifying.update(HOPE_VARIANTS[name][1])
    if mode == "quick":
        c.data.seq_len = 64
        return c
    results_lm.set_budget(
        c,
        seq_len=SEQ_LEN,
        batch_size=BATCH_SIZE,
        train_tokens=TRAIN_TOKENS,
        eval_windows=EVAL_BATCHES,
        log_every=10,
    )
    return c
