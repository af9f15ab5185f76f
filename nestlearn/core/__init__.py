"""nestlearn.core: level specs and pytree path helpers."""

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
]
