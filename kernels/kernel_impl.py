"""The models' ``kernel_impl`` switch (``auto | xla | pallas``), resolved to an op backend.

A memory layer or mixer whose memory an op of this package covers asks :func:`resolve` which path
to run:

* ``"xla"``: the pure-JAX memory path of ``nestlearn.memory`` (:func:`resolve` returns None).
* ``"pallas"``: the Pallas backend of the current platform (GPU: ``pallas_triton``, TPU:
  ``pallas_tpu``). It fails loudly, with a ``ValueError`` naming the configuration and the reason,
  when no op covers the memory, when the backend cannot tile the chunk size, or when the platform
  has no Pallas backend (CPU).
* ``"auto"``: on GPU/TPU, when covered, the op with its default order (the Pallas backend, falling
  back to the op's XLA form with a warning, :mod:`nestlearn.kernels.dispatch`); otherwise, and
  always on CPU, the pure-JAX path. Never interpret mode.

**Test-only switch.** With the environment variable ``NESTLEARN_KERNEL_INTERPRET=1``,
``"pallas"`` runs ``pallas_triton`` in the GPU-style Pallas interpreter on any platform, so that
CPU tests exercise the real kernel body behind the models' switch. It is read when the layer is
traced (a function already jitted keeps the path it was traced with) and never changes ``"auto"``
or ``"xla"``. It is not meant for training: the interpreter is slow.
"""

import os
from typing import Any, NamedTuple

import jax
from nestlearn.kernels.dispatch import Unavailable
from nestlearn.kernels.gated_delta import pallas_triton

KERNEL_IMPLS = ("auto", "xla", "pallas")
INTERPRET_ENV = "NESTLEARN_KERNEL_INTERPRET"
PALLAS_BACKENDS = {"gpu": "pallas_triton", "tpu": "pallas_tpu"}


class NoPallasBackend(Unavailable, ValueError):
    """``kernel_impl="pallas"`` on a platform without a Pallas backend.

    Both a bad configuration value (``ValueError``) and a backend that cannot run here
    (:class:`nestlearn.kernels.Unavailable`, what an explicit ``implementation=`` raises).
    """


class Backend(NamedTuple):
    """How to call an op of this package (the ``implementation=``/``interpret=`` arguments)."""

    implementation: str | None  # an op implementation, or None for the op's default order
    interpret: bool  # run the Pallas backend in its interpreter (the test-only switch)

    def kwargs(self) -> dict[str, Any]:
        """The op keyword arguments."""
        return {"implementation": self.implementation, "interpret": self.interpret}


def check_kernel_impl(kernel_impl: Any) -> str:
    """Returns ``kernel_impl`` if it is one of ``KERNEL_IMPLS``; ValueError naming it otherwise."""
    if kernel_impl not in KERNEL_IMPLS:
        raise ValueError(f"kernel_impl={kernel_impl!r} is not one of {KERNEL_IMPLS}")
    return kernel_impl


def interpret_forced() -> bool:
    """Whether the test-only interpret switch (``NESTLEARN_KERNEL_INTERPRET``) is on."""
    return os.environ.get(INTERPRET_ENV, "").strip().lower() not in ("", "0", "false")


def _chunk_problem(implementation: str, chunk_size: int | None) -> str | None:
    """Why ``implementation`` cannot tile ``chunk_size``, or None."""
    if implementation != "pallas_triton" or chunk_size is None:
        return None
    try:
        pallas_triton.check_chunk_size(chunk_size)
    except ValueError as e:
        return str(e)
    return None


def resolve(
    kernel_impl: str,
    *,
    what: str,
    unsupported: str | None = None,
    chunk_size: int | None = None,
) -> Backend | None:
    """The op backend for ``kernel_impl`` (module docstring), or None for the pure-JAX path.

    Args:
      kernel_impl: ``"auto"``, ``"xla"`` or ``"pallas"``.
      what: the memory or layer asking, for messages (e.g. ``"titans_memory(arch=...)"``).
      unsupported: why no op covers this configuration, or None when one does.
      chunk_size: the chunk size the op will run with (the Triton backend needs a power of
        two ≥ 16).

    Returns:
      A :class:`Backend`, or None for the pure-JAX memory path.

    Raises:
      ValueError: a bad ``kernel_impl``; or ``"pallas"`` for an uncovered configuration, an
        untileable chunk size or (:class:`NoPallasBackend`) a platform without a Pallas backend.
    """
    check_kernel_impl(kernel_impl)
    if kernel_impl == "xla":
        return None
    platform = jax.default_backend()
    if kernel_impl == "auto":
        implementation = PALLAS_BACKENDS.get(platform)
        if implementation is None or unsupported or _chunk_problem(implementation, chunk_size):
            return None
        return Backend(None, False)
    if unsupported:
        raise ValueError(f"kernel_impl='pallas': no Pallas kernel covers {what}: {unsupported}")
    interpret = interpret_forced()
    implementation = "pallas_triton" if interpret else PALLAS_BACKENDS.get(platform)
    if implementation is None:
        raise NoPallasBackend(
            f"kernel_impl='pallas' for {what}: platform {platform!r} has no Pallas backend "
            f"(GPU and TPU have); use 'auto' or 'xla' (tests may set {INTERPRET_ENV}=1 to run "
            "the Triton kernel in the interpreter)"
        )
    problem = _chunk_problem(implementation, chunk_size)
    if problem:
        raise ValueError(f"kernel_impl='pallas' for {what}: {problem}")
    return Backend(implementation, interpret)
