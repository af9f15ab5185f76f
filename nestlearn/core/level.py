"""The `Level` spec: one parameter group with its own update rule and update period.

In Nested Learning a level is a group of components that update at the same frequency
(Def. 2, §3.2, arXiv 2512.24695). On the training-step clock, a level is a set of parameter
leaves, the optax rule that updates them, and the period k of its updates: the level changes its
parameters once every k steps, applying its rule to the gradients of those k steps summed
(Eq. 71, arXiv 2512.24695, with the half-open chunk so that each gradient counts once) or
averaged. `nestlearn.optim.scheduler.nested` turns a tuple of levels into one optax transform.
"""

import dataclasses
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import optax

from nestlearn.core.tree import flatten_with_paths

__all__ = ["ACCUMULATIONS", "Level", "Selector", "assign_levels", "check_levels"]

#: A leaf selector: a regular expression searched (`re.search`) in the leaf's `/`-joined key
#: path, a predicate `(path, leaf) -> bool`, or `None` for "every leaf no other level selects".
Selector = str | Callable[[str, Any], bool] | None

#: The ways a level folds the gradients of its k steps into one: Eq. 71 sums them; "mean"
#: divides the sum by k.
ACCUMULATIONS = ("sum", "mean")


@dataclasses.dataclass(frozen=True)
class Level:
    """A parameter group updated by its own rule once every `period` training steps.

    Example:
      >>> import optax
      >>> levels = (
      ...     Level("backbone", None, optax.adamw(1e-3)),
      ...     Level("cms_slow", r"cms/levels/1/", optax.sgd(1e-2), period=4),
      ... )

    Attributes:
      name: the level's name; unique within a spec, used in error messages and statistics.
      select: which parameter leaves the level owns. A string is a regular expression searched
        (`re.search`) in the leaf's `/`-joined key path (see `nestlearn.core.tree_paths`), e.g.
        `r"bias$"` or `r"cms/levels/1/"`. A callable is called as `select(path, leaf)` and
        returns whether the level owns the leaf; it sees the parameter when the optimizer is
        given `params` and otherwise the gradient, so it should decide from the path, shape and
        dtype only. `None` owns every leaf that no other level selects (at most one level per
        spec may use it).
      rule: the optax transform that turns the level's accumulated gradients into updates: any
        `optax.GradientTransformation` or `optax.GradientTransformationExtraArgs`, including
        `optax.inject_hyperparams(...)` rules.
      period: k ≥ 1; the level applies its rule on steps k, 2k, … (counting from 1) and emits
        zero updates in between (Eq. 71, arXiv 2512.24695).
      accumulate: `"sum"` (Eq. 71) or `"mean"`: how the gradients of the k steps are combined.
    """

    name: str
    select: Selector
    rule: optax.GradientTransformation
    period: int = 1
    accumulate: str = "sum"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Level name must be a non-empty string, got name={self.name!r}")
        if isinstance(self.select, str):
            try:
                re.compile(self.select)
            except re.error as err:
                raise ValueError(
                    f"Level {self.name!r}: select={self.select!r} is not a valid regular "
                    f"expression ({err})"
                ) from err
        elif self.select is not None and not callable(self.select):
            raise ValueError(
                f"Level {self.name!r}: select must be a regular expression, a callable "
                f"(path, leaf) -> bool or None, got select={self.select!r}"
            )
        if not (
            callable(getattr(self.rule, "init", None))
            and callable(getattr(self.rule, "update", None))
        ):
            raise ValueError(
                f"Level {self.name!r}: rule must be an optax GradientTransformation "
                f"(with init and update), got rule={self.rule!r}"
            )
        if (
            isinstance(self.period, bool)
            or not isinstance(self.period, numbers.Integral)
            or self.period < 1
        ):
            raise ValueError(
                f"Level {self.name!r}: period must be an integer >= 1, got period={self.period!r}"
            )
        object.__setattr__(self, "period", int(self.period))
        if self.accumulate not in ACCUMULATIONS:
            raise ValueError(
                f"Level {self.name!r}: accumulate must be one of {ACCUMULATIONS}, "
                f"got accumulate={self.accumulate!r}"
            )

    @property
    def is_rest(self) -> bool:
        """Whether the level owns every leaf that no other level selects (`select=None`)."""
        return self.select is None

    def selects(self, path: str, leaf: Any) -> bool:
        """Whether the level's selector picks the leaf at `path` (always False for a rest level).

        Args:
          path: the leaf's `/`-joined key path.
          leaf: the leaf (a parameter or its gradient).

        Returns:
          True when a regex selector is found in `path` or a callable selector returns true.
        """
        if self.select is None:
            return False
        if isinstance(self.select, str):
            return re.search(self.select, path) is not None
        return bool(self.select(path, leaf))


def check_levels(levels: Sequence[Level]) -> tuple[Level, ...]:
    """Checks a level spec as a whole and returns it as a tuple.

    Args:
      levels: the levels of one nested stack.

    Returns:
      `tuple(levels)`.

    Raises:
      ValueError: if `levels` is empty, holds something that is not a `Level`, repeats a level
        name, or has more than one rest level (`select=None`).
    """
    levels = tuple(levels)
    if not levels:
        raise ValueError("levels must hold at least one Level, got an empty spec")
    seen: dict[str, int] = {}
    for i, level in enumerate(levels):
        if not isinstance(level, Level):
            raise ValueError(f"levels[{i}] must be a Level, got {level!r}")
        if level.name in seen:
            raise ValueError(
                f"levels: duplicate level name {level.name!r} (levels[{seen[level.name]}] and "
                f"levels[{i}])"
            )
        seen[level.name] = i
    rest = [level.name for level in levels if level.is_rest]
    if len(rest) > 1:
        raise ValueError(
            f"levels: at most one level may have select=None (every leaf not selected "
            f"elsewhere), got {rest}"
        )
    return levels


def assign_levels(levels: Sequence[Level], tree: Any) -> list[str]:
    """Assigns every leaf of `tree` to the one level that owns it.

    Args:
      levels: the levels of one nested stack (checked with `check_levels`).
      tree: a parameter (or gradient) pytree.

    Returns:
      The owning level's name for every leaf, in the order of `jax.tree.leaves(tree)`.

    Raises:
      ValueError: naming the leaf path when a leaf is selected by no level or by two, and naming
        the level when a level selects no leaf at all; plus the errors of `check_levels`.
    """
    levels = check_levels(levels)
    rest = next((level for level in levels if level.is_rest), None)
    pairs, _ = flatten_with_paths(tree)
    owners = []
    for path, leaf in pairs:
        picked = [level.name for level in levels if level.selects(path, leaf)]
        if len(picked) > 1:
            raise ValueError(
                f"parameter leaf {path!r} is claimed by levels {picked[0]!r} and {picked[1]!r}; "
                "every leaf must belong to exactly one level"
            )
        if not picked:
            if rest is None:
                raise ValueError(
                    f"parameter leaf {path!r} is claimed by no level (selectors: "
                    f"{_describe(levels)}); add a level for it or a level with select=None"
                )
            picked = [rest.name]
        owners.append(picked[0])
    for level in levels:
        if level.name not in owners:
            sample = [path for path, _ in pairs[:8]]
            raise ValueError(
                f"level {level.name!r} (select={level.select!r}) claims no parameter leaf; "
                f"leaf paths start {sample}"
            )
    return owners


def _describe(levels: tuple[Level, ...]) -> str:
    return ", ".join(f"{level.name}={level.select!r}" for level in levels)
