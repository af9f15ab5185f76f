"""The in-context memory probe: loss by position with the memory writes on and off.

A model with an in-context memory (`nestlearn.models.has_memory`) is evaluated twice on the same
sequences with the same parameters: as trained (`model.memory_writes=True`) and with every memory
kept at its initial state (`memory_writes=False`, docs/SEMANTICS.md §3). The difference of the
next-token losses, by position, is what the memory contributes in context: without writes the
output at position t depends on the local window only (short conv, attention window), so a
memory that stores useful context shows a gap (off − on > 0) that grows along the sequence. The
late-position gap (positions in the second half of the window) is the summary, with its standard
error over the evaluated sequences. A model without in-context memory is evaluated once and both
curves are the same.

Pure parts: `token_losses` (per-position loss of a model on a batch), `build_position_loss`
(its jitted form over split model state), `position_losses` (over batches), `compare` (the
summary), `plot` and `report_section`. `nestlearn.train.trainer.probe_workdir` runs it on a
checkpoint and `train_and_evaluate` at the end of every run.

Shapes: b batch, t tokens (positions), n sequences, V vocabulary.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

__all__ = [
    "NUM_BUCKETS",
    "build_position_loss",
    "compare",
    "plot",
    "position_losses",
    "report_section",
    "token_losses",
]

#: Position buckets of the loss-by-position curves (fewer when the window is shorter).
NUM_BUCKETS = 16


def token_losses(model: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Next-token cross-entropy of every position, [b, t] float32 nats.

    Args:
      model: a `LanguageModel` (fresh sequences: each row starts from the initial memory).
      inputs: [b, t] int tokens.
      targets: [b, t] int, the token after each input.
    """
    logits, _ = model(inputs)  # [b, t, V]
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def build_position_loss(
    graphdef: nnx.GraphDef, *, params: Any = None, mesh: Mesh | None = None
) -> Callable:
    """The jitted `loss(params, rest, inputs, targets) -> [b, t]` of `token_losses`.

    `graphdef` decides the model, e.g. one built with `memory_writes=False`; `params` and `rest`
    are the split state (`nnx.split(model, nnx.Param, ...)`) of a model with the same parameter
    tree. With `mesh` (which needs `params`, arrays or shapes) params follow the partitioning
    rules, the batch is split over the data axes and the losses come back replicated.

    Raises:
      ValueError: `mesh` without `params`.
    """
    from nestlearn.parallel import batch_sharding, mesh_context, param_shardings, replicated

    def loss(params, rest, inputs, targets):
        return token_losses(nnx.merge(graphdef, params, rest), inputs, targets)

    if mesh is None:
        return jax.jit(loss)
    if params is None:
        raise ValueError("build_position_loss: mesh= needs params= (for the parameter shardings)")
    batch_sh, rep = batch_sharding(mesh), replicated(mesh)
    return jax.jit(
        mesh_context(loss, mesh),
        in_shardings=(param_shardings(params, mesh), rep, batch_sh, batch_sh),
        out_shardings=rep,
    )


def position_losses(loss: Callable, params: Any, rest: Any, batches: Iterable[Any]) -> np.ndarray:
    """Per-position losses of every sequence of `batches` (each with `inputs`, `targets`).

    Returns:
      [n, t] float64 numpy array, n the sequences of all batches in order.
    """
    rows = [np.asarray(loss(params, rest, b.inputs, b.targets), np.float64) for b in batches]
    if not rows:
        raise ValueError("position_losses needs at least one batch")
    return np.concatenate(rows)


def _bucket_edges(t: int, num_buckets: int) -> np.ndarray:
    """Edges of min(num_buckets, t) contiguous position buckets of near-equal size."""
    k = max(1, min(num_buckets, t))
    return np.linspace(0, t, k + 1).round().astype(int)


def _mean_and_se(x: np.ndarray) -> tuple[float, float | None]:
    """Mean of x [n] and its standard error (sample std / √n; None for n < 2)."""
    mean = float(np.mean(x))
    if x.size < 2:
        return mean, None
    return mean, float(np.std(x, ddof=1) / math.sqrt(x.size))


def compare(
    on: np.ndarray,
    off: np.ndarray | None,
    *,
    has_memory: bool,
    num_buckets: int = NUM_BUCKETS,
) -> dict[str, Any]:
    """The probe's summary of per-position losses with the writes on and off.

    Args:
      on: [n, t] losses with the writes on (as trained).
      off: [n, t] losses with the writes off, or None for a model without in-context memory
        (then the off numbers are the on numbers).
      has_memory: whether the model has an in-context memory.
      num_buckets: position buckets of the curves (at most t).

    Returns:
      A JSON-able dict: `has_memory`; `loss_on`, `loss_off` (mean nats per token); `positions`
      (bucket starts) with `loss_by_position_on` / `_off` (mean loss per bucket); `late_start`
      (the first late position, t // 2), `late_gap` (mean over sequences of each sequence's
      mean off − on loss over the late positions) and `late_gap_se` (its standard error over
      the n sequences; None for n < 2); `num_sequences`, `seq_len`.

    Raises:
      ValueError: shapes that are not [n, t] or do not match, or `off` for a model without memory.
    """
    on = np.asarray(on, np.float64)
    if on.ndim != 2 or not on.size:
        raise ValueError(f"on must be a non-empty [n, t] array, got shape {on.shape}")
    if off is None:
        off = on
    elif not has_memory:
        raise ValueError("off losses given for a model without in-context memory (has_memory)")
    off = np.asarray(off, np.float64)
    if off.shape != on.shape:
        raise ValueError(f"on {on.shape} and off {off.shape} must have the same [n, t] shape")
    n, t = on.shape
    edges = _bucket_edges(t, num_buckets)
    by_position = lambda x: [float(x[:, a:b].mean()) for a, b in itertools.pairwise(edges)]
    late = t // 2
    gap, gap_se = _mean_and_se((off[:, late:] - on[:, late:]).mean(axis=1))
    return {
        "has_memory": bool(has_memory),
        "loss_on": float(on.mean()),
        "loss_off": float(off.mean()),
        "positions": [int(e) for e in edges[:-1]],
        "loss_by_position_on": by_position(on),
        "loss_by_position_off": by_position(off),
        "late_start": late,
        "late_gap": gap,
        "late_gap_se": gap_se if has_memory else 0.0,
        "num_sequences": n,
        "seq_len": t,
    }


def plot(result: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Loss by position with the writes on and off (`compare`'s result) into a PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = np.asarray(result["positions"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(positions, result["loss_by_position_on"], "o-", label="memory writes on", lw=1.5)
    if result["has_memory"]:
        ax.plot(positions, result["loss_by_position_off"], "s--", label="memory writes off", lw=1.5)
    ax.axvline(result["late_start"], color="grey", lw=0.8, ls=":", label="late positions")
    ax.set_xlabel("position in the window (bucket start)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or ("" if result["has_memory"] else "no in-context memory"))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def report_section(result: dict[str, Any], *, image: str = "probe.png") -> str:
    """The markdown section of the probe for `report.md` (heading, plot, losses and late gap)."""
    n, t, late = result["num_sequences"], result["seq_len"], result["late_start"]
    lines = ["## In-context memory probe", ""]
    if not result["has_memory"]:
        lines += [
            "The model has no in-context memory (`nestlearn.models.has_memory`): evaluated once, "
            f"loss {result['loss_on']:.4f} nats/token on {n} validation sequences of {t} tokens.",
            "",
            f"![loss by position]({image})",
            "",
        ]
        return "\n".join(lines)
    se = result["late_gap_se"]
    gap = f"{result['late_gap']:+.4f}" + ("" if se is None else f" ± {se:.4f}")
    lines += [
        "Validation loss by position with the in-context memory writes on (as trained) and off "
        "(`model.memory_writes=False`: every memory stays at its initial state), same parameters, "
        f"{n} sequences of {t} tokens.",
        "",
        f"![loss by position, writes on and off]({image})",
        "",
        "| | writes on | writes off |",
        "|---|---|---|",
        f"| loss (nats/token) | {result['loss_on']:.4f} | {result['loss_off']:.4f} |",
        "",
        f"Late-position gap (off − on, positions {late}–{t - 1}): **{gap}** nats/token "
        "(± one standard error over the sequences); > 0 means the memory's writes help.",
        "",
    ]
    return "\n".join(lines)
