"""nestlearn.core: level specs, pytree path helpers and the host allocator settings."""

from nestlearn.core.host_memory import tune_host_allocator
from nestlearn.core.level import ACCUMULATIONS, Level, Selector, assign_levels, check_levels
from nestlearn.core.tree import flatten_with_paths, key_path_str, tree_paths

__all__ = [
    "ACCUMULATIONS",
    "Level",
    "Selector",
    "assign_levels",
    "check_levels",
    "flatten_with_paths",
    "key_path_str",
    "tree_paths",
    "tune_host_allocator",
]
