"""The training-step levels of an experiment: the backbone plus one level per scheduled CMS level.

The backbone (every parameter no other level claims) is trained by AdamW with warmup + cosine
decay. A CMS model in scheduled mode adds one level per CMS level, as
`nestlearn.models.cms_level_selectors` names them: level ℓ owns the parameters under
`cms/levels/<ℓ>/`, applies its own rule every `period_ℓ` steps to its summed gradients (Eq. 71,
arXiv 2512.24695), and follows the same learning-rate curve measured in training steps — its
rule counts its own updates, so its schedule is evaluated at `updates · period`.
"""

from __future__ import annotations

import jax
import optax

from nestlearn.core import Level

__all__ = ["build_levels", "learning_rate_schedule"]


def learning_rate_schedule(optim, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `optim.lr` over `optim.warmup_steps`, then cosine decay to
    `optim.lr · optim.min_lr_ratio` at `num_steps`."""
    warmup = min(optim.warmup_steps, max(num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=optim.lr * optim.min_lr_ratio,
    )


def _matrices(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _rule(kind: str, lr: optax.Schedule, optim) -> optax.GradientTransformation:
    if kind == "adamw":
        return optax.adamw(
            lr,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=_matrices,
        )
    if kind == "momentum":
        return optax.sgd(lr, momentum=optim.b1)
    return optax.sgd(lr)


def build_levels(config) -> tuple[Level, ...]:
    """The levels of `config`: `backbone` (AdamW) plus the CMS levels of a scheduled CMS model.

    Args:
      config: a validated experiment config (its `model`, `optim` and `train` sections).

    Returns:
      A tuple of `nestlearn.core.Level`, the backbone last (it owns every unclaimed leaf).
    """
    from nestlearn import models

    schedule = learning_rate_schedule(config.optim, config.train.num_steps)
    levels = []
    cms = config.model.get("cms")
    if cms is not None and cms.get("mode") == "scheduled":
        for name, regex, period in models.cms_level_selectors(config.model):
            scaled = lambda count, period=period: (
                config.optim.cms_lr_scale * schedule(count * period)
            )
            levels.append(
                Level(
                    name,
                    regex,
                    _rule(config.optim.cms_rule, scaled, config.optim),
                    period=int(period),
                    accumulate=config.optim.cms_accumulate,
                )
            )
    levels.append(Level("backbone", None, _rule("adamw", schedule, config.optim)))
    return tuple(levels)
