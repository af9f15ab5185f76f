"""nestlearn.memory: associative memories as pure functions (arXiv 2512.24695 §5–8; Titans).

One machinery — memory architecture × objective (attentional bias) × retention × inner rule ×
chunk size — of which the standard mixers are configurations. Inputs are laid out
`[batch, time, heads, dim]`; every public mixer returns `(outputs, final_state)`, and the final
state can be passed back as `initial_state` to continue a stream.

* `matrix_memory` — linear attention, DeltaNet, Gated DeltaNet with exact chunk-parallel (WY/UT)
  forms and token-by-token references.
* `architectures`, `objectives`, `retention`, `rules`, `scan` — the generic machinery.
* `titans` — Titans' neural long-term memory (surprise, momentum, forgetting).
* `self_modifying` — Hope's self-modifying deep memory (Eqs. 83–93).
* `instruments` — `MemoryStats` of a memory over a batch (inner loss before/after the writes,
  step size and retention percentiles, state and update norms), for the train loop's logging.
"""

from nestlearn.memory import architectures, instruments, objectives, retention, rules
from nestlearn.memory.architectures import MemoryArch, apply_heads, matrix, mlp, residual_mlp
from nestlearn.memory.matrix_memory import (
    delta_rule,
    delta_rule_recurrent,
    gated_delta_rule,
    gated_delta_rule_recurrent,
    linear_attention,
    linear_attention_recurrent,
)
from nestlearn.memory.scan import MemoryState, scan
from nestlearn.memory.self_modifying import (
    SelfModifyingConfig,
    SelfModifyingState,
    self_modifying_init,
    self_modifying_memory,
    self_modifying_memory_recurrent,
)
from nestlearn.memory.titans import TitansState, titans_memory

__all__ = [
    "MemoryArch",
    "MemoryState",
    "SelfModifyingConfig",
    "SelfModifyingState",
    "TitansState",
    "apply_heads",
    "architectures",
    "delta_rule",
    "delta_rule_recurrent",
    "gated_delta_rule",
    "gated_delta_rule_recurrent",
    "instruments",
    "linear_attention",
    "linear_attention_recurrent",
    "matrix",
    "mlp",
    "objectives",
    "residual_mlp",
    "retention",
    "rules",
    "scan",
    "self_modifying_init",
    "self_modifying_memory",
    "self_modifying_memory_recurrent",
    "titans_memory",
]
