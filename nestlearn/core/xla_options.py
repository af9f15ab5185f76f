"""The XLA:CPU flags nestlearn sets when it is imported (`apply_cpu_flags`).

XLA:CPU hands three kinds of fusions to the YNNPACK library by default: matrix products,
element-wise fusions and reductions. The memory scans of the recurrent models (Hope's
self-modifying memory above all) run many small element-wise and reduction fusions inside
their chunk loops, and each YNNPACK call costs far more than the arithmetic: in a profile of
one Hope layer's forward + backward at b 1, T 4,096, d 32 × 4 heads
(``NESTLEARN_XLA_CPU_OPTIONS=0 python experiments/hope_layer_profile.py --batch 1 --seq_len 4096
--trace``) the costliest op was a YNNPACK multiply-and-reduce over a [4, 4, 32, 32] array,
0.46 ms per chunk. :data:`CPU_FLAGS` keeps YNNPACK to matrix products
(``--xla_cpu_experimental_ynn_fusion_type=dot``); XLA's own loop emitter runs the rest.

Measured by ``python experiments/model_benchmark.py --compare_options [--long]`` (the library's
train step of each model's default config compiled both ways in one process, timed in
interleaved rounds; 2-core CPU machine; ``docs/results/xla_options_benchmark*.json``), tokens/s
with the flag over without: Hope 1.04 / 1.17 at the small / medium shapes and 1.35 / 1.31 /
1.54 at batch 1, T 1K / 4K / 16K; Gated DeltaNet 1.06 / 0.99 and 1.28 / 1.25 / 1.21; Titans LMM
0.94 / 0.89 and 1.11 / 1.18 / 1.12; Transformer++ 0.94 / 1.03 and 1.07 / 1.06 / 1.12. The flag
changes float results only in the last bits (another fusion, another order of operations).

XLA reads ``XLA_FLAGS`` once, when JAX starts its backends (the first computation), so the flag
is a process setting: ``import nestlearn`` appends it to ``XLA_FLAGS`` and every CPU
compilation in the process uses it, yours included (the compilation of one function cannot
take it: ``jax.jit(..., compiler_options=...)`` is refused inside another ``jit``, which would
break a train step nested in a user's loop). Nothing is changed when ``NESTLEARN_XLA_CPU_OPTIONS=0``
is set, when ``XLA_FLAGS`` already names ``xla_cpu_experimental_ynn_fusion_type`` (yours wins),
when the installed jaxlib is outside the versions the flag was checked with
(:data:`CHECKED_JAXLIB`; XLA aborts on a flag it does not know), or when JAX's backends had
started before nestlearn was imported (then a warning says so). Other backends ignore the flag.
"""

from __future__ import annotations

import os
import warnings

import jaxlib

ENV = "NESTLEARN_XLA_CPU_OPTIONS"
YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"--{YNN_FUSION_TYPE}=dot",)
# The same setting for one top-level compilation: `jax.jit(f).lower(...).compile(this)`.
CPU_COMPILE_OPTIONS = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_DOT"}
CHECKED_JAXLIB = ((0, 10), (0, 11))  # [first, last) (major, minor): the flag checked with 0.10


def _jaxlib_checked(version: str) -> bool:
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    first, last = CHECKED_JAXLIB
    return first <= major_minor < last


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - JAX moved it; assume not started
        return False
    return xla_bridge.backends_are_initialized()


def apply_cpu_flags() -> tuple[str, ...]:
    """Appends :data:`CPU_FLAGS` to ``XLA_FLAGS`` (module docstring); ``import nestlearn`` calls it.

    Returns:
      The flags added; empty when nothing was changed (opt-out, the user's own setting, an
      unchecked jaxlib, or backends already started).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get(ENV, "1") == "0" or YNN_FUSION_TYPE in flags:
        return ()
    if not _jaxlib_checked(jaxlib.__version__):
        return ()
    if _backends_started():
        warnings.warn(
            "nestlearn was imported after JAX started its backends, so its XLA:CPU flags "
            f"{CPU_FLAGS} do not apply in this process (import nestlearn before the first "
            f"computation, or set {ENV}=0 to silence this)",
            stacklevel=3,
        )
        return ()
    os.environ["XLA_FLAGS"] = " ".join([flags, *CPU_FLAGS]).strip()
    return CPU_FLAGS
