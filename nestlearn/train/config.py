"""The experiment config: its schema, its defaults, and the up-front validation.

An experiment config (`experiments/configs/<name>.py::get_config`) is `base_config(model)` with
fields changed. `validate_config` checks it once, before anything is built: every section and
key must exist in the schema (the model section is checked against
`nestlearn.models.default_config(model.name)`, the `levels` section by
`nestlearn.train.levels.resolve_levels`), every value must have the schema's type, and the fields
with a fixed set of choices or a range must respect them. Each error names the key and what is
allowed.
"""

from __future__ import annotations

import math
import warnings

import ml_collections

__all__ = ["base_config", "validate_config"]


def _sections() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # seed of the model initialisation, the data order and sampling

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "shakespeare"  # shakespeare | milton | fortunes | text_dir | synthetic
    c.data.path = ""  # directory of *.txt documents for corpus=text_dir
    c.data.cache_dir = ""  # "" → $NESTLEARN_CACHE or ~/.cache/nestlearn
    c.data.tokenizer = "byte"  # byte | char | gpt2
    c.data.seq_len = 128  # tokens per training window
    c.data.batch_size = 16  # windows per batch
    c.data.val_fraction = 0.05  # fraction of documents (plays) held out for validation
    c.data.test_fraction = 0.05  # fraction of documents held out for testing
    c.data.split_seed = 0  # seed of the document split (and of the synthetic corpus)
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.num_docs = 40  # documents of the synthetic corpus
    c.data.synthetic.doc_words = 400  # words per synthetic document

    # The defaults every level of `levels` reads where its own key is None (levels.py).
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 3e-3  # peak learning rate (levels.<name>.learning_rate)
    c.optim.warmup_steps = 50  # linear warmup from 0 to lr
    c.optim.min_lr_ratio = 0.1  # cosine decay ends at lr * min_lr_ratio at train.num_steps
    c.optim.b1 = 0.9  # AdamW (levels.<name>.adamw.b1, …)
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1  # decoupled, on matrices (ndim >= 2) only
    c.optim.grad_clip = 1.0  # global-norm clip of the gradient before the levels; 0 = off

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 500  # optimizer steps
    c.train.log_every = 10  # steps between train-metric records
    c.train.eval_every = 250  # steps between evaluations (and at the end)
    c.train.eval_batches = 8  # validation batches per evaluation
    c.train.checkpoint_every = 100  # steps between checkpoints (and at the end)
    c.train.keep_checkpoints = 3  # newest checkpoints kept
    c.train.max_consecutive_nonfinite = 5  # stop after this many skipped steps in a row
    c.train.progress_bar = True  # tqdm bar with step, loss, tokens/s and ETA
    c.train.instruments = True  # memory and level instruments at log steps (train.instruments)

    c.mesh = ml_collections.ConfigDict()  # devices of the run (nestlearn.parallel, docs/scaling.md)
    c.mesh.data = 1  # data-parallel ways; -1 = the devices the other axes leave
    c.mesh.fsdp = 1  # fully-sharded data-parallel ways (batch and weight width); -1 as above
    c.mesh.tensor = 1  # tensor-parallel ways (heads, hidden units, vocabulary); -1 as above
    c.mesh.distributed = ml_collections.ConfigDict()  # multi-host: jax.distributed.initialize
    c.mesh.distributed.enabled = False  # also started when JAX_COORDINATOR_ADDRESS etc. are set
    c.mesh.distributed.coordinator_address = ""  # host:port; "" = environment or auto-detection
    c.mesh.distributed.num_processes = 0  # 0 = environment or auto-detection
    c.mesh.distributed.process_id = -1  # -1 = environment or auto-detection

    c.sample = ml_collections.ConfigDict()
    c.sample.num_samples = 2  # samples in the report
    c.sample.prompt = "ROMEO.\n"  # prompt of every sample
    c.sample.max_new_tokens = 200
    c.sample.temperature = 0.8
    c.sample.top_k = 0  # 0 = no top-k truncation
    return c


def base_config(model: str = "hope") -> ml_collections.ConfigDict:
    """The full config with defaults, with the model section of `nestlearn.models.default_config`.

    `model.vocab_size = 0` means "the tokenizer's vocabulary size". `levels` has `backbone` and,
    for a model with a CMS, `cms_level_<i>` for each of the model's default CMS levels: AdamW on
    the `optim` defaults.
    """
    from nestlearn import models
    from nestlearn.train.levels import level_config

    c = _sections()
    c.model = models.default_config(model)
    # The train step's levels (nestlearn/train/levels.py, docs/levels.md): `backbone` owns every
    # parameter no other level claims; a scheduled CMS model adds one level per CMS level.
    c.levels = ml_collections.ConfigDict()
    c.levels.backbone = level_config()
    if "cms" in c.model:
        for i in range(len(c.model.cms.periods)):
            c.levels[f"cms_level_{i}"] = level_config()  # select, period: model.cms
    return c


def hope_pod_config(
    *, d_model: int, lr: float, num_steps: int, tensor: int, arg: str | None = None
) -> ml_collections.ConfigDict:
    """The sharded Hope recipe of the paper-scale configs (arXiv 2512.24695 §9; docs/scaling.md).

    24 layers, 16 heads, CMS feed-forward ratio 1.0 with levels of periods 1, 4, 16 steps
    (scheduled), a 32K GPT-2 vocabulary, 0.5M tokens per step (128 × 4096), bfloat16 compute with
    float32 params and remat, AdamW (cosine, 2,000 warm-up steps, weight decay 0.1), FSDP over
    every device × ``tensor``-way tensor parallelism, ``jax.distributed`` auto-detected.

    Args:
      d_model: model width.
      lr: peak learning rate.
      num_steps: training steps (tokens / 524,288).
      tensor: tensor-parallel degree (``mesh.tensor``).
      arg: the config file's argument: None, or ``"dp<N>"`` for N-way pure data parallelism
        outside FSDP (several slices or hosts).

    Raises:
      ValueError: ``arg`` is neither None nor ``"dp<N>"``.
    """
    c = base_config("hope")
    c.model.vocab_size = 32_000
    c.model.d_model = d_model
    c.model.num_layers = 24
    c.model.num_heads = 16
    c.model.mlp_ratio = 1.0
    c.model.max_len = 4096
    c.model.chunk_size = 64
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.model.cms.periods = (1, 4, 16)
    c.model.cms.mode = "scheduled"
    c.data.corpus = "text_dir"
    c.data.path = "data/fineweb_edu"
    c.data.tokenizer = "gpt2"
    c.data.seq_len = 4096
    c.data.batch_size = 128
    c.optim.lr = lr
    c.optim.warmup_steps = 2000
    c.optim.weight_decay = 0.1
    c.train.num_steps = num_steps
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 1000
    c.train.progress_bar = False
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = tensor
    c.mesh.distributed.enabled = True  # auto-detects TPU pods, SLURM, Open MPI
    if arg and arg.startswith("dp") and arg[2:].isdigit():
        c.mesh.data = int(arg[2:])
    elif arg:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: dp<N>")
    return c


_CHOICES = {
    "data.tokenizer": ("byte", "char", "gpt2"),
}
_POSITIVE = (
    "data.seq_len",
    "data.batch_size",
    "data.synthetic.num_docs",
    "data.synthetic.doc_words",
    "train.num_steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.max_consecutive_nonfinite",
    "sample.max_new_tokens",
    "optim.lr",
)
_NON_NEGATIVE = (
    "optim.warmup_steps",
    "optim.min_lr_ratio",
    "optim.weight_decay",
    "optim.grad_clip",
    "optim.eps",
    "sample.num_samples",
    "sample.top_k",
    "sample.temperature",
    "model.vocab_size",
)


def _type_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, tuple):
        return isinstance(value, tuple)
    if default is None:
        return True
    return isinstance(value, type(default))


#: Sections whose keys are the config's own (checked by their builders, not against the schema).
_OPEN_SECTIONS = ("levels",)


def _compare(config, schema, prefix: str) -> None:
    keys, allowed = set(config.keys()), set(schema.keys())
    for key in sorted(keys - allowed):
        raise ValueError(
            f"config key '{prefix}{key}' is unknown; allowed in "
            f"{prefix.rstrip('.') or 'the top level'}: {sorted(allowed)}"
        )
    for key in sorted(allowed - keys):
        raise ValueError(f"config key '{prefix}{key}' is missing (expected like {schema[key]!r})")
    for key in sorted(keys):
        value, default = config[key], schema[key]
        if isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ValueError(f"config key '{prefix}{key}' must be a section, got {value!r}")
            if f"{prefix}{key}" not in _OPEN_SECTIONS:
                _compare(value, default, f"{prefix}{key}.")
        elif isinstance(value, list):
            raise ValueError(f"config key '{prefix}{key}' is a list; use a tuple: {tuple(value)}")
        elif not _type_ok(value, default):
            raise ValueError(
                f"config key '{prefix}{key}'={value!r} must be of type "
                f"{type(default).__name__} (like the default {default!r})"
            )
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config key '{prefix}{key}'={value!r} must be finite")


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks an experiment config against the schema, before anything is built.

    Warns (UserWarning) when `model.chunk_size` exceeds `data.seq_len`.

    Raises:
      ValueError: naming the first offending key and what is allowed there — an unknown or
        missing key, a value of the wrong type, a list instead of a tuple, a non-finite float
        (`optim.lr=inf`), an unknown choice (model name, corpus, tokenizer), a value out of
        range, or a bad level (an unknown rule, level key or rule keyword;
        `nestlearn.train.levels.resolve_levels`).
    """
    from nestlearn import models
    from nestlearn.data.corpora import CORPORA

    if "model" not in config or "name" not in config.model:
        raise ValueError(
            f"config key 'model.name' is missing; allowed model names: {list(models.available())}"
        )
    if config.model.name not in models.available():
        raise ValueError(
            f"config key 'model.name'={config.model.name!r} is unknown; allowed: "
            f"{list(models.available())}"
        )
    _compare(config, base_config(config.model.name), "")
    corpora = (*CORPORA, "synthetic")
    if config.data.corpus not in corpora:
        raise ValueError(
            f"config key 'data.corpus'={config.data.corpus!r} is unknown; allowed: {list(corpora)}"
        )
    for key, choices in _CHOICES.items():
        if _get(config, key) not in choices:
            raise ValueError(
                f"config key {key!r}={_get(config, key)!r} is not allowed; allowed: {list(choices)}"
            )
    for key in _POSITIVE:
        if not _get(config, key) > 0:
            raise ValueError(f"config key {key!r}={_get(config, key)!r} must be > 0")
    for key in _NON_NEGATIVE:
        if not _get(config, key) >= 0:
            raise ValueError(f"config key {key!r}={_get(config, key)!r} must be >= 0")
    if config.data.corpus == "text_dir" and not config.data.path:
        raise ValueError("config key 'data.path' must name a directory for corpus='text_dir'")
    from nestlearn.models.language_model import validate_config as validate_model_config

    model = ml_collections.ConfigDict(config.model.to_dict())
    model.vocab_size = max(1, model.vocab_size)  # 0 means "the tokenizer's", known later
    try:
        validate_model_config(model)
    except ValueError as e:
        raise ValueError(f"config section 'model' is invalid: {e}") from e
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        if size < 1 and size != -1:
            raise ValueError(f"config key 'mesh.{axis}'={size} must be >= 1, or -1 (the rest)")
    if [config.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) > 1:
        raise ValueError("config keys 'mesh.data/fsdp/tensor': at most one may be -1")
    if config.mesh.distributed.num_processes < 0:
        raise ValueError(
            f"config key 'mesh.distributed.num_processes'="
            f"{config.mesh.distributed.num_processes} must be >= 0"
        )
    if config.mesh.distributed.process_id < -1:
        raise ValueError(
            f"config key 'mesh.distributed.process_id'={config.mesh.distributed.process_id} "
            "must be >= -1"
        )
    if config.optim.min_lr_ratio > 1:
        raise ValueError(
            f"config key 'optim.min_lr_ratio'={config.optim.min_lr_ratio} must be <= 1"
        )
    if config.model.chunk_size > config.data.seq_len:
        warnings.warn(
            f"config key 'model.chunk_size'={config.model.chunk_size} exceeds "
            f"'data.seq_len'={config.data.seq_len}: each training window is one partial chunk, "
            "so a memory that reads its chunk-start state (Titans, Hope) never reads its own "
            "writes during training; use model.chunk_size <= data.seq_len",
            UserWarning,
            stacklevel=2,
        )

    from nestlearn.train.levels import resolve_levels

    resolve_levels(config)
