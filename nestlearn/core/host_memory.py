"""Host (CPU) memory allocator settings for XLA:CPU training loops.

XLA:CPU allocates the temporary buffers of every executable call with the C library's ``malloc``
and frees them when the call returns. With glibc's defaults, freed memory is handed back to the
kernel (``munmap`` of large chunks, trimming of the heap tops, including the per-thread arenas
that XLA's worker threads allocate from), so the next call page-faults the same memory in again.
On the 2-core CPU machine the Transformer++ train step of the small benchmark shape (d 128, 2
layers, T 256, batch 4) took 42.5–54.9 ms with the defaults and 30.3–30.6 ms with
:func:`tune_host_allocator` (``python experiments/model_benchmark.py --quick
--models=transformer_pp`` with and without ``NESTLEARN_TUNE_MALLOC=0``); the small
jitted function of ``tests/core/test_host_memory.py`` took 2,944 against 65 minor page faults per
call.

:func:`tune_host_allocator` keeps freed memory in the process instead (``mallopt``):

* ``M_MMAP_THRESHOLD`` 32 MiB (glibc's maximum): smaller blocks come from the heap, not ``mmap``;
* ``M_TRIM_THRESHOLD`` 1 GiB: the heap is not trimmed until 1 GiB is free at its top;
* ``M_TOP_PAD`` 64 MiB: the heap grows in large steps.

The cost is a resident set that stays at its peak. The entry points of this repository call it
(``nestlearn.train.train_and_evaluate`` and the scripts in ``experiments/``); scripts of your own
call it once at start-up. It changes nothing where the C library is not glibc, and nothing when
the environment variable ``NESTLEARN_TUNE_MALLOC=0`` is set.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "NESTLEARN_TUNE_MALLOC"

# mallopt parameter codes of glibc's <malloc.h> and the values set.
_PARAMS = {"M_TRIM_THRESHOLD": -1, "M_TOP_PAD": -2, "M_MMAP_THRESHOLD": -3}
SETTINGS = {"M_MMAP_THRESHOLD": 32 << 20, "M_TRIM_THRESHOLD": 1 << 30, "M_TOP_PAD": 64 << 20}


def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None (another C library, or not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune_host_allocator() -> dict[str, int] | None:
    """Makes glibc keep freed memory in the process (module docstring).

    Call it once, early (before the first large allocation). Calling it again is harmless.

    Returns:
      The settings applied (``SETTINGS``), or None when nothing was changed: the C library is not
      glibc, or ``NESTLEARN_TUNE_MALLOC=0``.

    Raises:
      RuntimeError: glibc rejected a setting (names it).
    """
    if os.environ.get(ENV, "1") == "0":
        return None
    libc = _glibc()
    if libc is None:
        return None
    for name, value in SETTINGS.items():
        if libc.mallopt(ctypes.c_int(_PARAMS[name]), ctypes.c_int(value)) != 1:
            raise RuntimeError(f"glibc mallopt rejected {name}={value}")
    return dict(SETTINGS)
