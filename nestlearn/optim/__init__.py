"""nestlearn.optim: deep optimizers as optax transforms (§4, §7.2, arXiv 2512.24695).

Every `scale_by_*` transform returns a direction that accumulates +gradients; the aliases chain
`optax.scale_by_learning_rate(learning_rate)`, which supplies the minus sign (W ← W − lr · m).
"""

from nestlearn.optim.deep_momentum import (
    DeepMomentumState,
    MemoryMLP,
    deep_momentum,
    scale_by_deep_momentum,
)
from nestlearn.optim.delta_momentum import (
    DeltaMomentumState,
    delta_momentum,
    scale_by_delta_momentum,
)
from nestlearn.optim.dgd import DGDState, dgd, scale_by_dgd
from nestlearn.optim.feature_momentum import (
    FeatureMomentumState,
    feature_momentum,
    polynomial_features,
    scale_by_feature_momentum,
)
from nestlearn.optim.m3 import M3State, m3, scale_by_m3
from nestlearn.optim.momentum_memory import (
    MomentumMemoryState,
    momentum_memory,
    scale_by_momentum_memory,
)
from nestlearn.optim.newton_schulz import (
    CUBIC,
    QUINTIC,
    NewtonSchulzMomentumState,
    newton_schulz,
    newton_schulz_momentum,
    scale_by_newton_schulz_momentum,
)
from nestlearn.optim.preconditioned_momentum import (
    PreconditionedMomentumState,
    preconditioned_momentum,
    scale_by_preconditioned_momentum,
)
from nestlearn.optim.registry import available_rules, rule_factory
from nestlearn.optim.scheduler import (
    LevelState,
    NestedState,
    TrainStep,
    level_stats,
    make_train_step,
    nested,
)

__all__ = [
    "CUBIC",
    "QUINTIC",
    "DGDState",
    "DeepMomentumState",
    "DeltaMomentumState",
    "FeatureMomentumState",
    "LevelState",
    "M3State",
    "MemoryMLP",
    "MomentumMemoryState",
    "NestedState",
    "NewtonSchulzMomentumState",
    "PreconditionedMomentumState",
    "TrainStep",
    "available_rules",
    "deep_momentum",
    "delta_momentum",
    "dgd",
    "feature_momentum",
    "level_stats",
    "m3",
    "make_train_step",
    "momentum_memory",
    "nested",
    "newton_schulz",
    "newton_schulz_momentum",
    "polynomial_features",
    "preconditioned_momentum",
    "rule_factory",
    "scale_by_deep_momentum",
    "scale_by_delta_momentum",
    "scale_by_dgd",
    "scale_by_feature_momentum",
    "scale_by_m3",
    "scale_by_momentum_memory",
    "scale_by_newton_schulz_momentum",
    "scale_by_preconditioned_momentum",
]
