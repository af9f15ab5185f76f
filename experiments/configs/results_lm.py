"""Shared sizes and setup of the language-model comparison and the S-NIAH study.

Purpose: every model of the comparison (Transformer++, DeltaNet, Gated DeltaNet, Titans LMM,
Titans MAC, Hope, Hope-Attention) and every Hope ablation of the paper's Table 6 (arXiv 2512.24695)
at one parameter budget, `TARGET_PARAMS` = 2.0M (each within ±10%; measured 1.97–2.01M), trained
on the same byte-level Shakespeare windows (two held-out plays for validation, two for test) for
the same number of tokens. All models share d_model 128, 4 layers, 4 heads and the optimizer
(AdamW, lr 3e-3, warmup then cosine); only the feed-forward width (`mlp_ratio`, per variant in
`MLP_RATIOS`) differs, so that the parameter counts match. The CMS models (Hope, Hope-Attention)
split their feed-forward budget over three levels (periods 1, 4, 16 steps), so each level is
about a third of a Transformer++ MLP. `model.max_len` is 8192 so that the same models can be read
at the S-NIAH test lengths (it sizes only the attention KV cache, never a parameter).

"w/o CMS" keeps one CMS level (period 1): a plain SwiGLU feed-forward, widened to the budget.
Every ablation is re-matched to the budget, so a row differs from Hope in one mechanism, not in
size. Hope and every ablation use `HOPE_SELF_MODIFYING` (the Table 6 reference: DGD, momentum,
curvature-normalised chunk step at η_max 0.1), not the `hope` model's default write rule.

Expected result and wall time: see docs/results/lm/README.md (written by the script).

Commands:
  python experiments/lm_compare.py                 # 7 models × 3 seeds, then the ablations
  python experiments/lm_compare.py --quick --out=/tmp/lm   # seconds, synthetic corpus
  python experiments/main.py --config=experiments/configs/results_lm.py:hope --workdir=runs/h
"""

from __future__ import annotations

from nestlearn.train.config import base_config

#: Parameter budget of every full-size run; each model must be within ±`PARAM_TOLERANCE`.
TARGET_PARAMS = 2_000_000
PARAM_TOLERANCE = 0.10

#: Training tokens of every full-size run (the budget from measured throughput; see the README).
TRAIN_TOKENS = 2048 * 120

#: The compared models, by registry name.
MODELS = (
    "transformer_pp",
    "deltanet",
    "gated_deltanet",
    "titans_lmm",
    "titans_mac",
    "hope",
    "hope_attention",
)

#: Row labels of the compared models in the reports.
LABELS = {
    "transformer_pp": "Transformer++",
    "deltanet": "DeltaNet",
    "gated_deltanet": "Gated DeltaNet",
    "titans_lmm": "Titans (LMM)",
    "titans_mac": "Titans (MAC)",
    "hope": "Hope",
    "hope_attention": "Hope-Attention",
}

#: The Hope ablations of NL-arXiv Table 6: name → (row label, `self_modifying` overrides).
#: "hope_no_cms" changes the CMS instead (one level; see the module docstring).
ABLATIONS = {
    "hope_no_dgd": ("w/o DGD", {"use_dgd": False}),
    "hope_no_momentum": ("w/o momentum", {"momentum": 0.0}),
    "hope_no_decay": ("w/o weight decay (α)", {"use_decay": False}),
    "hope_no_cms": ("w/o CMS", {}),
    "hope_static_k": ("static k", {"adaptive_k": False}),
    "hope_static_v": ("static v", {"adaptive_v": False}),
    "hope_adaptive_q": ("adaptive q", {"adaptive_q": True}),
}

#: Feed-forward ratio of each variant that puts it at `TARGET_PARAMS` (d 128, 4 layers, 4 heads;
#: solved by bisection on `nestlearn.models.count_params`, rounded to 1/8; checked by
#: tests/experiments/test_results_lm.py and again by the script before every run).
MLP_RATIOS = {
    "transformer_pp": 8.625,
    "deltanet": 8.25,
    "gated_deltanet": 8.25,
    "titans_lmm": 7.875,
    "titans_mac": 6.25,
    "hope": 2.625,
    "hope_attention": 2.875,
    "hope_no_dgd": 2.625,
    "hope_no_momentum": 2.625,
    "hope_no_decay": 2.625,
    "hope_no_cms": 7.75,
    "hope_static_k": 2.625,
    "hope_static_v": 2.625,
    "hope_adaptive_q": 2.5,
}

VARIANTS = MODELS + tuple(ABLATIONS)

#: Hope's self-modifying memory in this study, for Hope and every ablation: the Table 6
#: reference with every switch of the table on (DGD erase, momentum 0.5), the curvature-normalised
#: chunk step at η_max 0.1, α₀ ≈ 0.98 and retention towards zero (Eq. 88 as printed). The `hope`
#: model's default write rule (`nestlearn.models.hope.HOPE_WRITES`: no DGD, no momentum,
#: token-normalised η ≤ 4, retention towards the initial weights) has two of
#: those switches off, so the ablations need this one; experiments/configs/memory_study.py
#: compares the two (docs/SEMANTICS.md §1.3).
HOPE_SELF_MODIFYING = {
    "eta_max": 0.1,
    "dgd_step": "chunk_normalized",
    "use_dgd": True,
    "momentum": 0.5,
    "stop_gradient_vhat": True,
    "alpha_bias_init": 4.0,
    "retention_target": "zero",
}


def model_name(variant: str) -> str:
    """The registry name of `variant` ("hope" for every ablation)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is unknown; allowed: {list(VARIANTS)}")
    return "hope" if variant in ABLATIONS else variant


def get_config(arg: str | None = "hope"):
    """The experiment config of one variant.

    Args:
      arg: "<variant>" or "<variant>,quick"; <variant> is one of `VARIANTS`. "quick" gives a
        seconds-long run on the synthetic corpus with a tiny model (for smoke tests; its
        parameter count is not matched).
    """
    variant, _, mode = (arg or "hope").partition(",")
    if mode not in ("", "quick"):
        raise ValueError(f"config argument {arg!r}: the mode after ',' must be 'quick'")
    name = model_name(variant)
    c = base_config(name)
    c.seed = 0
    m = c.model
    m.vocab_size = 256
    m.d_model = 128
    m.num_layers = 4
    m.num_heads = 4
    m.max_len = 8192
    m.mlp_ratio = MLP_RATIOS[variant]
    if name == "hope":
        m.self_modifying.update(HOPE_SELF_MODIFYING)
    if variant in ABLATIONS:
        m.self_modifying.update(ABLATIONS[variant][1])
    if variant == "hope_no_cms":
        m.cms.periods = (1,)
        m.cms.chunk_sizes = (16,)
    c.data.corpus = "shakespeare"
    c.data.tokenizer = "byte"
    c.optim.lr = 3e-3
    set_budget(
        c, seq_len=256, batch_size=8, train_tokens=TRAIN_TOKENS, eval_windows=128, log_every=5
    )
    c.train.keep_checkpoints = 1
    c.train.progress_bar = False
    c.sample.num_samples = 0
    if mode == "quick":
        _quick(c)
    return c


def set_budget(
    c, *, seq_len: int, batch_size: int, train_tokens: int, eval_windows: int, log_every: int
) -> None:
    """Sets `c`'s windows (`seq_len` bytes, `batch_size` per step) and training budget:
    `train_tokens` bytes, warmup over a tenth of the steps, one evaluation on `eval_windows`
    validation windows and one checkpoint at the end, the train loss every `log_every` steps."""
    c.data.seq_len = seq_len
    c.data.batch_size = batch_size
    c.train.num_steps = train_tokens // (seq_len * batch_size)
    c.optim.warmup_steps = max(1, c.train.num_steps // 10)
    c.train.log_every = log_every
    c.train.eval_every = c.train.num_steps
    c.train.eval_batches = eval_windows // batch_size
    c.train.checkpoint_every = c.train.num_steps


def task_config(variant: str, *, seed: int, steps: int, lr: float, quick: bool = False, study=None):
    """`study.get_config(variant)` retimed for a synthetic-task study (S-NIAH, recall).

    The same model and optimizer levels, trained `steps` steps at peak learning rate `lr` with a
    warmup of a tenth of the steps, then cosine (`nestlearn.train.levels`). `study` is a config
    module with `get_config` (default: this one).
    """
    make = get_config if study is None else study.get_config
    config = make(f"{variant},quick" if quick else variant)
    config.seed = seed
    config.optim.lr = lr
    config.optim.warmup_steps = max(1, steps // 10)
    config.train.num_steps = steps
    return config


def apply_model_overrides(config, items, name: str) -> None:
    """Sets each `'key=value'` of `items` in `config.model` (dotted keys reach sub-configs).

    The value takes the type of the key's current value (`true`/`false` for a bool).

    Raises:
      ValueError: an item that is not `key=value` for an existing key of the model `name`.
    """
    for item in items:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = config.model
        for part in parents:
            node = node.get(part) if hasattr(node, "get") else None
        if node is None or not hasattr(node, "get") or leaf not in node or not value:
            raise ValueError(f"model override {item!r} is not 'key=value' for a key of {name}")
        old = node[leaf]
        node[leaf] = value.lower() == "true" if isinstance(old, bool) else type(old)(value)


def _quick(c):
    m = c.model
    m.d_model = 32
    m.num_layers = 1
    m.num_heads = 2
    m.mlp_ratio = 2.0
    m.chunk_size = 8
    if "cms" in m:
        m.cms.chunk_sizes = tuple(8 * 4**i for i in range(len(m.cms.periods)))
    if "self_modifying" in m:
        m.self_modifying.chunk_size = 8
    c.data.corpus = "synthetic"
    c.data.synthetic.num_docs = 20
    c.data.synthetic.doc_words = 200
    c.data.seq_len = 32
    c.data.batch_size = 2
    c.train.num_steps = 4
    c.optim.warmup_steps = 1
    c.train.log_every = 2
    c.train.eval_every = 4
    c.train.eval_batches = 1
    c.train.checkpoint_every = 4
