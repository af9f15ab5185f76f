"""Rules by name: the optax transforms a level can be given as a string.

A rule name resolves to a factory whose first parameter is `learning_rate`: any public
`nestlearn.optim` transform (`m3`, `delta_momentum`, …), then any `optax` alias (`adamw`, `sgd`,
`lion`, …), then `optax.contrib` (`muon`, …). New transforms are picked up by name. Used by
`config.levels` (`nestlearn.train.levels`) and by the online CMS (`cms.online_rule`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import optax

__all__ = ["available_rules", "rule_factory"]


def _namespaces():
    import optax.contrib

    import nestlearn.optim

    return (nestlearn.optim, optax, optax.contrib)


def _is_rule(name: str, obj) -> bool:
    if name.startswith(("_", "scale_by_")) or not callable(obj) or inspect.isclass(obj):
        return False
    try:
        params = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "learning_rate"


def rule_factory(name: str) -> Callable[..., optax.GradientTransformation] | None:
    """The factory a rule name resolves to, or None.

    Looked up in `nestlearn.optim`, then `optax`, then `optax.contrib`; a factory is a public
    function whose first parameter is `learning_rate` (not a `scale_by_*` direction).
    """
    for namespace in _namespaces():
        factory = getattr(namespace, name, None)
        if _is_rule(name, factory):
            return factory
    return None


def available_rules() -> list[str]:
    """Every rule name `rule_factory` resolves, sorted."""
    names = {
        name
        for namespace in _namespaces()
        for name in dir(namespace)
        if _is_rule(name, getattr(namespace, name))
    }
    return sorted(names)
