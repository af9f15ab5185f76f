"""nestlearn.core: level specs, pytree paths, FLOP counts, host allocator, XLA:CPU flags."""

from nestlearn.core.flops import FlopCount, count_flops
from nestlearn.core.host_memory import tune_host_allocator
from nestlearn.core.level import ACCUMULATIONS, Level, Selector, assign_levels, check_levels
from nestlearn.core.tree import flatten_with_paths, key_path_str, tree_paths

__all__ = [
    "ACCUMULATIONS",
    "FlopCount",
    "Level",
    "Selector",
    "assign_levels",
    "check_levels",
    "count_flops",
    "flatten_with_paths",
    "key_path_str",
    "tree_paths",
    "tune_host_allocator",
]
