"""The ``implementation=`` switch shared by every op: explicit requests fail loudly, the default
order falls back and says so.

An op gives, for each backend it has, a callable that either returns the op's result or raises
(:class:`Unavailable` when the backend cannot run here or for these shapes). With an explicit
``implementation`` the callable's exception propagates unchanged. With ``implementation=None``
the backends of the default order for the current platform are tried in turn; each failure is
logged and warned about, the one that ran is logged, and if all fail an ``ExceptionGroup`` holding
every failure is raised.
"""

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax

IMPLEMENTATIONS = ("xla", "pallas_triton", "pallas_mosaic_gpu", "pallas_tpu")

DEFAULT_ORDER = {
    "gpu": ("pallas_triton", "xla"),
    "tpu": ("pallas_tpu", "xla"),
    "cpu": ("xla",),
}

logger = logging.getLogger(__name__)


class Unavailable(RuntimeError):
    """A backend cannot run on this platform or for these shapes."""


def require_platform(implementation: str, platform: str, interpret) -> None:
    """Raises Unavailable unless the default JAX backend is ``platform`` or we interpret."""
    if interpret:
        return
    backend = jax.default_backend()
    if backend != platform:
        raise Unavailable(
            f"implementation={implementation!r} needs a {platform} device (default backend is "
            f"{backend!r}); pass interpret=True to run it in the Pallas interpreter"
        )


def default_order() -> tuple[str, ...]:
    """Backends tried, in order, when ``implementation`` is None on the current platform."""
    return DEFAULT_ORDER.get(jax.default_backend(), ("xla",))


def dispatch(
    op: str,
    implementation: str | None,
    backends: Mapping[str, Callable[[], Any]],
) -> Any:
    """Runs ``backends[implementation]``, or the default order with fallback (module docstring).

    Args:
      op: the op's name, for messages.
      implementation: None or one of ``IMPLEMENTATIONS``.
      backends: zero-argument callables per implementation the op has.

    Raises:
      ValueError: ``implementation`` is not one of ``IMPLEMENTATIONS``.
      Unavailable: an explicitly requested backend that this op does not have.
      ExceptionGroup: every backend of the default order failed.
    """
    if implementation is not None:
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation={implementation!r} must be None or one of {IMPLEMENTATIONS}"
            )
        if implementation not in backends:
            raise Unavailable(
                f"{op}: implementation={implementation!r} is not implemented for this op; "
                f"available: {tuple(backends)}"
            )
        return backends[implementation]()
    errors = []
    for name in default_order():
        if name not in backends:
            continue
        try:
            result = backends[name]()
        except Exception as e:
            message = f"{op}: {name} failed ({type(e).__name__}: {e}); trying the next backend"
            logger.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            errors.append(e)
            continue
        if errors:
            warnings.warn(
                f"{op}: fell back to implementation={name!r}", RuntimeWarning, stacklevel=3
            )
        logger.info("%s: using implementation=%r", op, name)
        return result
    raise ExceptionGroup(f"{op}: every implementation in {default_order()} failed", errors)
