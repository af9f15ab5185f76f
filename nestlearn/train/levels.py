"""The training-step levels of an experiment, built from `config.levels`.

`config.levels` names the levels of the train step; each entry is a section with the keys of
`level_config` (docs/levels.md, "Levels from a config"):

- `select`: a regular expression over the `/`-joined parameter paths. `None` on an entry named
  `cms_level_<i>` means the model's CMS level i (`(^|/)cms/levels/<i>/`, from
  `nestlearn.models.cms_level_selectors`); on any other entry it means every leaf no other level
  claims (the catch-all; every shipped config calls it `backbone`).
- `rule`: the name of a rule factory: any `nestlearn.optim` transform (`m3`, `delta_momentum`,
  …) or optax alias (`adamw`, `sgd`, `lion`, `optax.contrib`'s `muon`, …), looked up when the
  levels are built, so new transforms are picked up by name.
- `learning_rate`, `schedule` (`warmup_cosine` or `constant`), `warmup_steps`, `min_lr_ratio`:
  the rule's learning rate. A periodic level counts its own updates, so its schedule is read at
  `updates · period`: every level follows its curve in training steps.
- `period`, `accumulate`: the level applies its rule every `period` steps to its summed (or
  averaged) gradients (Eq. 71, arXiv 2512.24695). `None` on a CMS entry is the model's
  `cms.periods[i]`, elsewhere 1.
- `clip`: clips the level's (accumulated) gradient to this global norm before its rule; 0 = off.
- a section named after a rule (e.g. `adamw`): that rule's other keyword arguments, used only
  while `rule` names it, so `--config.levels.backbone.rule=m3` leaves AdamW's `b2` behind.

A `None` value reads `config.optim`, the experiment's shared defaults: `learning_rate` reads
`optim.lr`; `warmup_steps`, `min_lr_ratio` and a rule's keywords (`b1`, `b2`, `eps`,
`weight_decay`) read the `optim` key of the same name. A `mask` keyword (or one ending in
`_mask`) takes `"matrices"` (parameters with ndim ≥ 2) or `"all"`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import optax
from ml_collections import config_dict

from nestlearn.core import Level
from nestlearn.optim.registry import available_rules, rule_factory

__all__ = [
    "SCHEDULES",
    "LevelSpec",
    "available_rules",
    "build_levels",
    "learning_rate_schedule",
    "level_config",
    "resolve_levels",
    "rule_factory",
]

#: Learning-rate schedules a level may follow.
SCHEDULES = ("warmup_cosine", "constant")

_ACCUMULATIONS = ("sum", "mean")
_CMS_PREFIX = "cms_level_"


def _matrices(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


#: Values of a rule's `mask` keyword (or one ending in `_mask`).
_MASKS = {"matrices": _matrices, "all": None}

#: Level keys whose `None` reads a differently named `config.optim` key.
_OPTIM_KEYS = {"learning_rate": "lr"}


def level_config(**overrides) -> ml_collections.ConfigDict:
    """One entry of `config.levels`: AdamW on the config's shared `optim` defaults.

    Every key is present, so each can be set from the command line; `None` reads `config.optim`
    (see the module docstring). Keyword arguments replace keys or add rule sections, e.g.
    `level_config(select=r"embed", rule="sgd", sgd=ml_collections.ConfigDict({"momentum": 0.9}))`.
    """
    c = ml_collections.ConfigDict()
    c.select = config_dict.placeholder(str)  # None: the CMS level of the name, else the rest
    c.rule = "adamw"  # a nestlearn.optim transform or an optax alias
    c.learning_rate = config_dict.placeholder(float)  # peak; None: optim.lr
    c.schedule = "warmup_cosine"  # warmup_cosine | constant
    c.warmup_steps = config_dict.placeholder(int)  # None: optim.warmup_steps
    c.min_lr_ratio = config_dict.placeholder(float)  # None: optim.min_lr_ratio
    c.period = config_dict.placeholder(int)  # None: the CMS level's period, else 1
    c.accumulate = "sum"  # sum (Eq. 71) | mean: how the level folds its period's gradients
    c.clip = 0.0  # global-norm clip of the level's gradient before its rule; 0 = off
    c.adamw = ml_collections.ConfigDict()  # keywords of rule adamw; None: optim.<key>
    c.adamw.b1 = config_dict.placeholder(float)
    c.adamw.b2 = config_dict.placeholder(float)
    c.adamw.eps = config_dict.placeholder(float)
    c.adamw.weight_decay = config_dict.placeholder(float)
    c.adamw.mask = "matrices"  # weight decay on matrices only
    c.update(overrides)
    return c


_LEVEL_KEYS = tuple(
    k for k, v in level_config().items() if not isinstance(v, ml_collections.ConfigDict)
)


def _keywords(factory) -> list[str]:
    return [
        p.name
        for p in list(inspect.signature(factory).parameters.values())[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def learning_rate_schedule(
    peak: float,
    *,
    num_steps: int,
    kind: str = "warmup_cosine",
    warmup_steps: int = 0,
    min_lr_ratio: float = 1.0,
) -> optax.Schedule:
    """A level's learning rate by step.

    `warmup_cosine`: linear warmup from 0 to `peak` over `warmup_steps` (at most `num_steps - 1`),
    then cosine decay to `peak · min_lr_ratio` at `num_steps`. `constant`: `peak` throughout.
    """
    if kind == "constant":
        return optax.constant_schedule(peak)
    if kind != "warmup_cosine":
        raise ValueError(f"schedule {kind!r} is unknown; allowed: {list(SCHEDULES)}")
    warmup = min(warmup_steps, max(num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=peak * min_lr_ratio,
    )


class LevelSpec(NamedTuple):
    """One entry of `config.levels` with every default filled in and its rule resolved."""

    name: str
    select: str | None  # regex; None: every leaf no other level claims
    rule: str
    factory: Callable[..., optax.GradientTransformation]
    kwargs: dict[str, Any]  # the rule's keyword arguments (learning_rate excepted)
    schedule: optax.Schedule  # the learning rate by training step
    period: int
    accumulate: str
    clip: float

    def transform(self) -> optax.GradientTransformation:
        """The level's optax rule: its schedule read at `updates · period`, after the clip."""
        learning_rate = self.schedule
        if self.period > 1:
            learning_rate = lambda count, k=self.period: self.schedule(count * k)
        rule = self.factory(learning_rate, **self.kwargs)
        if self.clip > 0:
            rule = optax.chain(optax.clip_by_global_norm(self.clip), rule)
        return rule


def _error(name: str, key: str, message: str) -> ValueError:
    separator = "" if message.startswith("=") else " "
    return ValueError(f"config key 'levels.{name}.{key}'{separator}{message}")


def _default(config, name: str, key: str, value):
    """`value`, or its `config.optim` default when it is None (`key` may be `<rule>.<keyword>`)."""
    if value is not None:
        return value
    optim_key = _OPTIM_KEYS.get(key, key.rpartition(".")[2])
    if optim_key not in config.optim:
        raise _error(name, key, f"is None and config.optim has no {optim_key!r} to default to")
    return config.optim[optim_key]


def _rule_kwargs(config, name: str, section: str, factory, values) -> dict[str, Any]:
    allowed = _keywords(factory)
    kwargs = {}
    for key, value in values.items():
        if key not in allowed:
            raise _error(
                name,
                f"{section}.{key}",
                f"is not a keyword of rule {section!r} ({factory.__module__}.{factory.__name__}); "
                f"allowed: {allowed}",
            )
        value = _default(config, name, f"{section}.{key}", value)
        if (key == "mask" or key.endswith("_mask")) and isinstance(value, str):
            if value not in _MASKS:
                raise _error(name, f"{section}.{key}", f"={value!r} must be one of {list(_MASKS)}")
            value = _MASKS[value]
        kwargs[key] = value
    return kwargs


def _resolve(config, name: str, entry, cms: dict[str, tuple[str, int]]) -> LevelSpec:
    rules = {}
    for key, value in entry.items():
        if isinstance(value, ml_collections.ConfigDict):
            factory = rule_factory(key)
            if factory is None:
                raise _error(
                    name,
                    key,
                    f"is neither a level key nor a rule; level keys: {list(_LEVEL_KEYS)}; "
                    f"rules: {available_rules()}",
                )
            rules[key] = (factory, value)
        elif key not in _LEVEL_KEYS:
            raise _error(
                name,
                key,
                f"is unknown; allowed: {list(_LEVEL_KEYS)}, or a section named after a rule",
            )
    for key in _LEVEL_KEYS:
        if key not in entry:
            raise _error(name, key, "is missing; build level entries with level_config()")
    factory = rule_factory(entry.rule) if isinstance(entry.rule, str) else None
    if factory is None:
        raise _error(name, "rule", f"={entry.rule!r} is unknown; allowed: {available_rules()}")
    kwargs = {}
    for section, (section_factory, values) in rules.items():
        checked = _rule_kwargs(config, name, section, section_factory, values)
        if section == entry.rule:
            kwargs = checked
    select, period = entry.select, entry.period
    if name in cms:
        select = cms[name][0] if select is None else select
        period = cms[name][1] if period is None else period
    period = 1 if period is None else period
    for key, choices in (("schedule", SCHEDULES), ("accumulate", _ACCUMULATIONS)):
        if entry[key] not in choices:
            raise _error(name, key, f"={entry[key]!r} is not allowed; allowed: {list(choices)}")
    peak = _default(config, name, "learning_rate", entry.learning_rate)
    warmup = _default(config, name, "warmup_steps", entry.warmup_steps)
    ratio = _default(config, name, "min_lr_ratio", entry.min_lr_ratio)
    for key, value, ok, bound in (
        ("learning_rate", peak, peak > 0, "> 0"),
        ("warmup_steps", warmup, warmup >= 0, ">= 0"),
        ("min_lr_ratio", ratio, 0 <= ratio <= 1, "in [0, 1]"),
        ("period", period, isinstance(period, int) and period >= 1, "an integer >= 1"),
        ("clip", entry.clip, entry.clip >= 0, ">= 0"),
    ):
        if not ok:
            raise _error(name, key, f"={value!r} must be {bound}")
    return LevelSpec(
        name=name,
        select=select,
        rule=entry.rule,
        factory=factory,
        kwargs=kwargs,
        schedule=learning_rate_schedule(
            peak,
            num_steps=config.train.num_steps,
            kind=entry.schedule,
            warmup_steps=warmup,
            min_lr_ratio=ratio,
        ),
        period=period,
        accumulate=entry.accumulate,
        clip=float(entry.clip),
    )


def resolve_levels(config) -> tuple[LevelSpec, ...]:
    """`config.levels` resolved: defaults filled in from `config.optim` and the model's CMS levels.

    The levels come in name order (ml_collections sorts keys), the catch-all last. A scheduled
    CMS model needs an entry `cms_level_<i>` for each of its CMS levels. An entry for a CMS level
    the model does not have (fewer `model.cms.periods`, online mode, no CMS) is skipped while it
    equals `level_config()` and is an error once changed.

    Args:
      config: an experiment config (its `levels`, `optim`, `model` and `train` sections).

    Raises:
      ValueError: naming the key, for an unknown or missing level key, an unknown rule or rule
        keyword (with what is allowed), a value out of range, a missing CMS entry, a changed
        entry with no CMS level, or more than one catch-all level.
    """
    from nestlearn import models

    cms = {}
    if config.model.get("cms") is not None and config.model.cms.get("mode") == "scheduled":
        cms = {
            name: (regex, period)
            for name, regex, period in models.cms_level_selectors(config.model)
        }
    for name in cms:
        if name not in config.levels:
            raise ValueError(
                f"config key 'levels.{name}' is missing: model.cms.periods has {len(cms)} "
                f"scheduled levels; add it, e.g. `config.levels.{name} = level_config()`"
            )
    specs, rest = [], []
    for name, entry in config.levels.items():
        if not isinstance(entry, ml_collections.ConfigDict):
            raise ValueError(f"config key 'levels.{name}' must be a section (level_config())")
        if name.startswith(_CMS_PREFIX) and name not in cms and entry.get("select") is None:
            if entry.to_dict() != level_config().to_dict():
                raise ValueError(
                    f"config key 'levels.{name}' configures a CMS level the model does not "
                    f"have (scheduled CMS levels: {list(cms)}); remove the change or the entry"
                )
            continue
        spec = _resolve(config, name, entry, cms)
        (rest if spec.select is None else specs).append(spec)
    if len(rest) > 1:
        raise ValueError(
            f"config key 'levels': at most one level may have select=None (every leaf no other "
            f"level claims), got {[s.name for s in rest]}"
        )
    return (*specs, *rest)


def build_levels(config) -> tuple[Level, ...]:
    """The `nestlearn.core.Level`s of `config.levels` (see `resolve_levels`), the catch-all last."""
    return tuple(
        Level(spec.name, spec.select, spec.transform(), spec.period, spec.accumulate)
        for spec in resolve_levels(config)
    )
