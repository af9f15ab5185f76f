"""Model registry and the block protocol.

A model is a `LanguageModel` (embedding → `num_layers` blocks → final RMSNorm → head) whose
blocks all come from one registered block class. Registering a new model takes one call, made at
import time by the module that defines the block:

    register("my_model", MyBlock, my_default_config)

**Block protocol.** A block class is a `flax.nnx.Module` with

- `Block(config, *, rngs: nnx.Rngs)`: `config` is the model config (a read-only
  `ml_collections.FrozenConfigDict` with at least the fields of `base_config`, plus whatever the
  block's own default config adds);
- `block.init_state(batch_size) -> state`: the state of `batch_size` fresh sequences; any pytree
  (`None` for a stateless block; a `KVCache` for attention; memory states for recurrent mixers);
- `block(x, state) -> (y, new_state)`: x and y are [b, t, d_model]; `state=None` means a fresh
  sequence (a block may take a faster path then, e.g. attention without a cache). Feeding a
  sequence in pieces with the state carried between calls must equal one call, and the output at
  position i may depend on inputs at positions ≤ i only.

**In-context memory.** A block class whose blocks hold an in-context memory (a memory written by
the tokens of the sequence: matrix memories, Titans, the self-modifying memory) sets the class
attribute `in_context_memory = True` and honours `config.memory_writes`: False keeps every such
memory at its initial state while everything else is computed as before from the same parameters
(so the parameter tree must not depend on the flag). An online CMS is an in-context memory of any
block; `LanguageModel` switches its dynamic-evaluation steps. `has_memory(config)` says whether a
model config has one.

Layout is pre-norm residual (y = x + f(norm(x)) for each sub-layer). Running memory state is passed
functionally through `state`; meta-learned initial memory values are `nnx.Param`s. Fast state that a
block stores on itself must use `MemoryState`, so that `nnx.split(model, nnx.Param, ...)` separates
the slow weights from it. A block whose state contains `cms.CMSOnlineState` leaves (online continuum
memory, docs/SEMANTICS.md §6.2) gets their dynamic-evaluation updates from `LanguageModel`.

**Default config.** `default_config_fn()` returns a fresh `ml_collections.ConfigDict`; build it
from `base_config(name)` (the common fields) and add the block's own fields; CMS models add
`cms=cms_config()`. Configs hold tuples, never lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import ml_collections
from flax import nnx


class MemoryState(nnx.Variable):
    """Fast (in-context) state stored on a module; kept apart from `nnx.Param` slow weights."""


class ModelSpec(NamedTuple):
    """One registered model."""

    name: str  # registry key, also `config.name`
    block_cls: type  # the block class (see the block protocol above)
    default_config_fn: Callable[[], ml_collections.ConfigDict]  # returns a fresh model config


_REGISTRY: dict[str, ModelSpec] = {}


def register(
    name: str, block_cls: type, default_config_fn: Callable[[], ml_collections.ConfigDict]
) -> None:
    """Registers a model built from `block_cls` blocks. Re-registering the same class is a no-op."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    existing = _REGISTRY.get(name)
    if existing is not None and existing.block_cls is not block_cls:
        raise ValueError(
            f"model {name!r} is already registered with block {existing.block_cls.__name__}"
        )
    for method in ("init_state", "__call__"):
        if not callable(getattr(block_cls, method, None)):
            raise ValueError(f"block class {block_cls.__name__} lacks {method}()")
    _REGISTRY[name] = ModelSpec(name, block_cls, default_config_fn)


def available() -> tuple[str, ...]:
    """Names of the registered models, in registration order."""
    return tuple(_REGISTRY)


def spec(name: str) -> ModelSpec:
    """The registered `ModelSpec` of `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name={name!r}; available: {available()}")
    return _REGISTRY[name]


def default_config(name: str) -> ml_collections.ConfigDict:
    """A fresh copy of the default model config of `name`."""
    config = spec(name).default_config_fn()
    if config.get("name") != name:
        raise ValueError(f"default config of {name!r} has name={config.get('name')!r}")
    return config


def base_config(name: str) -> ml_collections.ConfigDict:
    """The fields every model config has, with their defaults.

    Args:
      name: the registered model name.
    """
    return ml_collections.ConfigDict(
        {
            "name": name,
            "vocab_size": 256,  # tokens
            "d_model": 128,  # residual width d
            "num_layers": 2,  # blocks
            "num_heads": 4,  # heads h
            "head_dim": 0,  # head width; 0 means d_model // num_heads
            "mlp_ratio": 4.0,  # feed-forward hidden width / d_model (rounded up to 8)
            "chunk_size": 64,  # chunk of chunk-parallel memories
            "max_len": 1024,  # longest context: RoPE range and full-attention KV-cache slots
            "tie_embeddings": True,  # the head reuses the embedding matrix
            "dtype": "float32",  # compute dtype: "float32" or "bfloat16" (params stay float32)
            "remat": False,  # rematerialise each block in the backward pass
            "kernel_impl": "auto",  # memory kernels: "auto" | "xla" | "pallas"
            "memory_writes": True,  # in-context memory writes; False: memories stay initial
        }
    )


def has_memory(config: ml_collections.ConfigDict) -> bool:
    """Whether the model of `config` has an in-context memory that `memory_writes` switches.

    True for a block class with `in_context_memory = True` (block protocol) and for any model
    with an online CMS (`cms.mode == "online"`, dynamic evaluation inside the sequence).

    Args:
      config: a model config (its `name` must be registered).
    """
    block = spec(config.name).block_cls
    online_cms = "cms" in config and config.cms.mode == "online"
    return bool(getattr(block, "in_context_memory", False)) or online_cms


def attention_config() -> ml_collections.ConfigDict:
    """The attention fields, added to the configs of models with softmax attention."""
    return ml_collections.ConfigDict(
        {
            "num_kv_heads": 0,  # kv heads for grouped-query attention; 0 means num_heads
            "window": 0,  # sliding window (positions a query sees); 0 means full causal
            "num_persistent": 0,  # persistent memory tokens N_p (Titans Eq. 19)
            "rope_theta": 10_000.0,  # RoPE base
        }
    )


def cms_config() -> ml_collections.ConfigDict:
    """The `cms` sub-config of models with a Continuum Memory System (arXiv 2512.24695 §7.1)."""
    return ml_collections.ConfigDict(
        {
            "periods": (1, 4, 16),  # scheduled mode: level i trains every periods[i] steps
            "mode": "scheduled",  # "scheduled" | "online"
            "variant": "sequential",  # "sequential" (Eq. 70) | "nested" (Eq. 72) |
            # "independent" (Eq. 74)
            "chunk_sizes": (16, 64, 256),  # online mode: level i steps every chunk_sizes[i] tokens
            "inner_lr": 1e-3,  # online mode: step size of the in-context updates
            "online_rule": "sgd",  # online mode: their rule (nestlearn.optim.rule_factory)
            "ffn": "swiglu",  # level MLP: "swiglu" | "mlp" (two layers)
            "activation": "gelu",  # activation of the two-layer MLP
        }
    )
