"""Continual language modelling over domains: Shakespeare → Milton → fortunes (bytes).

Byte-level LMs at matched size (≈1.35–1.43M parameters) are trained on one domain after the
other, the same number of steps per domain, one optimizer state carried through, by
`nestlearn.train.continual.train_tasks` on the library's train step:

- `transformer_pp`: Transformer++ (RoPE attention + SwiGLU), d 128, 5 layers;
- `hope_attention`: attention + a three-level CMS (sequential, SwiGLU levels) per block, d 128,
  2 layers; CMS level ℓ is trained by AdamW every `periods[ℓ]` steps on its summed gradients
  (scheduled mode, Eq. 71, arXiv 2512.24695; docs/levels.md);
- `hope`: the `hope` model's self-modifying memory + the same CMS, d 128, 2 layers;
- `hope_attention_online`: `hope_attention` with online CMS: level ℓ also writes its weights in
  context every `online_chunks[ℓ]` bytes of a window (dynamic evaluation with `cms.online_rule`,
  reset each window); its initial weights are trained every step. About 7× slower per step
  than scheduled CMS on the CPU;
- `transformer_pp_replay`: Transformer++ whose every batch after the first domain is paired
  with as many windows drawn uniformly from a buffer of `replay_windows` training windows of
  each finished domain (`nestlearn.data.replay`; twice the bytes per step from then on);
- `transformer_pp_ewc`: Transformer++ with Elastic Weight Consolidation
  (`nestlearn.train.ewc`): after each domain the diagonal empirical Fisher of the per-window
  mean log-likelihood over `fisher_windows` of its training windows is added to the running
  Fisher and the anchor moves to the current weights; the loss adds ½ λ Σ F (θ − θ*)². The
  strength λ is chosen from `EWC_LAMBDAS` on the first seed by the final mean loss (every
  strength's record is kept and reported), the other seeds run at the chosen one.

The CMS periods and steps per domain are chosen so the slowest scheduled level applies 100
updates on every domain (`updates` in each record). After each domain the record holds
(`nestlearn.train.continual`): the validation loss of every domain (the loss matrix L[i, j]),
how far each parameter group moved during the domain, and the loss on every earlier domain
when one group alone is put back to its value before the domain (where the forgetting lives).
Groups: `embed`, `mixer` (attention, or Hope's memory and its projections), `ffn`
(Transformer++'s MLPs), each CMS level, `other` (norms). Learning rate: linear warmup over
the first domain's `warmup` steps, then constant (no decay that would favour the last domain).
Gradient clip 1.0.

Command (writes docs/results/continual/lm.{md,json,png} and lm_stability.png):

    python experiments/continual_lm.py                     # 6 models × 3 seeds
    python experiments/continual_lm.py --quick --data synthetic --out /tmp/cl   # seconds

Each (model, seed) writes `lm_runs/<model>-seed<k>.json` under --out (EWC:
`<model>-lam<λ>-seed<k>.json`); a rerun skips finished runs and refuses a record made with other
settings. Same seed, same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx

from nestlearn import models, tune_host_allocator
from nestlearn.core import Level
from nestlearn.core.tree import flatten_with_paths
from nestlearn.data.dataset import load_dataset
from nestlearn.data.iterator import BatchIterator, eval_batches
from nestlearn.data.replay import replay_sample
from nestlearn.eval import compare
from nestlearn.eval.continual import locate_forgetting, summarize
from nestlearn.train.config import base_config, validate_config
from nestlearn.train.continual import Task, train_tasks
from nestlearn.train.ewc import ewc_penalty
from nestlearn.train.levels import build_levels
from nestlearn.train.step import (
    TrainState,
    build_eval_step,
    build_train_step,
    lm_loss,
    split_model,
)

matplotlib.use("Agg")
from matplotlib import pyplot as plt

DOMAINS = ("shakespeare", "milton", "fortunes")
MODELS = (
    "transformer_pp",
    "hope_attention",
    "hope",
    "hope_attention_online",
    "transformer_pp_replay",
    "transformer_pp_ewc",
)
LABELS = {
    "transformer_pp": "Transformer++",
    "hope_attention": "Hope-Attention (CMS scheduled)",
    "hope_attention_online": "Hope-Attention (CMS online)",
    "hope": "Hope",
    "transformer_pp_replay": "Transformer++ + replay",
    "transformer_pp_ewc": "Transformer++ + EWC",
}
#: model -> (registered model, d_model, num_layers) giving ≈1.35–1.43M parameters (bytes)
SIZES = {
    "transformer_pp": ("transformer_pp", 128, 5),
    "hope_attention": ("hope_attention", 128, 2),
    "hope_attention_online": ("hope_attention", 128, 2),
    "hope": ("hope", 128, 2),
    "transformer_pp_replay": ("transformer_pp", 128, 5),
    "transformer_pp_ewc": ("transformer_pp", 128, 5),
}
#: EWC strengths λ tried on the first seed (the penalty is ½ λ Σ F (θ − θ*)²)
EWC_LAMBDAS = (1e1, 1e2, 1e3, 1e4)
#: the rehearsal and EWC baselines' own settings (the other models' records do not hold them)
BASELINE_SETTINGS = dict(
    replay_windows=2048,  # training windows stored per finished domain (256 KiB of bytes)
    fisher_windows=64,  # training windows of the finished domain the Fisher averages over
)
#: the parameter groups whose movement and reset are measured; CMS levels are added per model
GROUPS = (("embed", r"^embed/"), ("mixer", r"/(attn|mixer)/"), ("ffn", r"/mlp/"))


def get_settings(quick: bool) -> dict:
    s = dict(
        steps_per_phase=900,  # optimizer steps on each domain
        periods=(1, 3, 9),  # CMS level periods: the slowest gets 100 updates per domain
        online_chunks=(32, 64, 96),  # online CMS: bytes per write; each level writes in a window
        batch=8,  # windows per batch
        seq_len=128,  # bytes per window
        lr=3e-3,  # AdamW peak rate (backbone and CMS levels)
        warmup=20,  # warmup steps at the start of the first phase
        eval_batches=8,  # validation batches per domain per evaluation
    )
    if quick:
        s.update(steps_per_phase=4, batch=2, seq_len=32, warmup=1, eval_batches=1)
        s.update(periods=(1, 2, 4), online_chunks=(8, 16, 32))
    return s


def model_config(name: str, s: dict, seed: int, quick: bool):
    """The experiment config of one model (validated); the data comes from `load_domains`."""
    registered, d, layers = SIZES[name]
    c = base_config(registered)
    c.seed = seed
    if quick:
        d, layers = 32, 1
    c.model.vocab_size = 256
    c.model.d_model = d
    c.model.num_layers = layers
    c.model.num_heads = 4 if d >= 64 else 2
    c.model.max_len = max(256, s["seq_len"])
    if quick:
        c.model.chunk_size = 16
        if name == "hope":
            c.model.self_modifying.chunk_size = 16
    if "cms" in c.model:
        c.model.cms.periods = tuple(s["periods"])
        c.model.cms.mode = "online" if name.endswith("_online") else "scheduled"
        c.model.cms.chunk_sizes = tuple(s["online_chunks"])
    c.data.tokenizer = "byte"
    c.data.seq_len = s["seq_len"]
    c.data.batch_size = s["batch"]
    c.optim.lr = s["lr"]
    c.optim.warmup_steps = s["warmup"]
    c.optim.min_lr_ratio = 1.0  # constant after warmup
    c.train.num_steps = s["steps_per_phase"] * len(DOMAINS)
    validate_config(c)
    return c


def measured_groups(config, params) -> tuple[Level, ...]:
    """The parameter groups of the record: those of `GROUPS` the model has, each CMS level,
    and `other` (the rest)."""
    paths = [path for path, _ in flatten_with_paths(params)[0]]
    named = [(n, rx) for n, rx in GROUPS if any(re.search(rx, p) for p in paths)]
    named += [(n, rx) for n, rx, _ in models.cms_level_selectors(config)]
    return (
        *(Level(n, rx, optax.identity()) for n, rx in named),
        Level("other", None, optax.identity()),
    )


def load_domains(data: str, s: dict) -> dict:
    """domain -> Dataset (byte tokens, split by document); synthetic: three seeded corpora."""
    out = {}
    for i, domain in enumerate(DOMAINS):
        c = base_config("transformer_pp").data
        c.tokenizer = "byte"
        if data == "synthetic":
            c.corpus = "synthetic"
            c.split_seed = i
            c.synthetic.num_docs = 12
            c.synthetic.doc_words = 60
        else:
            c.corpus = domain
        out[domain] = load_dataset(c)
    return out


def ewc_loss(lam: float):
    """`loss(model, inputs, targets, anchor, fisher)`: the LM loss + ½ λ Σ F (θ − θ*)²."""

    def loss(model, inputs, targets, anchor, fisher):
        value, aux = lm_loss(model, inputs, targets)
        penalty = ewc_penalty(nnx.state(model, nnx.Param), anchor, fisher)
        return value + 0.5 * lam * penalty, {**aux, "ewc_penalty": penalty}

    return loss


def window_fisher(graphdef, rest, params, windows: np.ndarray):
    """Diagonal empirical Fisher of the per-window mean log-likelihood at `params`:
    mean over `windows` [n, t + 1] of the squared gradient of each window's LM loss."""
    grad = jax.jit(jax.grad(lambda p, x, y: lm_loss(nnx.merge(graphdef, p, rest), x, y)[0]))
    total = jax.tree.map(jnp.zeros_like, params)
    for w in windows:
        g = grad(params, w[None, :-1], w[None, 1:])
        total = jax.tree.map(lambda a, b: a + b * b, total, g)
    return jax.tree.map(lambda a: a / len(windows), total)


def training_windows(domain, s: dict, count: int, seed: int) -> np.ndarray:
    """`count` training windows [count, seq_len + 1] of a domain (a seeded draw)."""
    it = BatchIterator(domain.train, batch_size=count, seq_len=s["seq_len"], seed=seed)
    b = next(iter(it))
    return np.concatenate([np.asarray(b.inputs), np.asarray(b.targets)[:, -1:]], axis=1)


def run_model(
    name: str, seed: int, domains: dict, s: dict, quick: bool, ewc_lambda: float | None = None
) -> dict:
    """Trains one model through the domains; returns its `TaskRecord` and the run's facts."""
    config = model_config(name, s, seed, quick)
    model = models.build(config.model, rngs=nnx.Rngs(seed))
    graphdef, params, rest = split_model(model)
    levels = build_levels(config)
    method = name.removeprefix("transformer_pp_") if name != "transformer_pp" else None
    step = build_train_step(
        levels,
        params=params,
        grad_clip=config.optim.grad_clip,
        graphdef=graphdef,
        **({"loss": ewc_loss(ewc_lambda)} if method == "ewc" else {}),
    )
    eval_step = build_eval_step(graphdef)
    b = BASELINE_SETTINGS
    buffer = np.zeros((0, s["seq_len"] + 1), np.int32)  # replay: stored training windows
    # EWC: no penalty on the first domain; copies, since the step donates the state's buffers
    anchor, fisher = jax.tree.map(jnp.copy, params), jax.tree.map(jnp.zeros_like, params)
    draw = np.random.default_rng([seed, 5])
    val = [
        eval_batches(
            domains[d].val,
            batch_size=s["batch"],
            seq_len=s["seq_len"],
            max_batches=s["eval_batches"],
        )
        for d in DOMAINS
    ]

    def evaluate(p, j: int) -> float:
        return float(np.mean([float(eval_step(p, rest, b.inputs, b.targets)) for b in val[j]]))

    def batches(i: int):
        it = BatchIterator(
            domains[DOMAINS[i]].train,
            batch_size=s["batch"],
            seq_len=s["seq_len"],
            seed=seed + 17 * i,
        )
        for batch in it:
            inputs, targets = np.asarray(batch.inputs), np.asarray(batch.targets)
            if buffer.size:  # replay: as many stored windows as new ones
                old = buffer[replay_sample(np.arange(len(buffer)), (s["batch"],), draw)]
                inputs = np.concatenate([inputs, old[:, :-1]])
                targets = np.concatenate([targets, old[:, 1:]])
            if method == "ewc":
                yield inputs, targets, anchor, fisher
            else:
                yield inputs, targets

    def after_task(i: int, state):
        nonlocal buffer, anchor, fisher
        if method == "replay":
            new = training_windows(domains[DOMAINS[i]], s, b["replay_windows"], seed + 101 * i)
            buffer = np.concatenate([buffer, new])
        if method == "ewc":
            windows = training_windows(domains[DOMAINS[i]], s, b["fisher_windows"], seed + 7 * i)
            current = window_fisher(graphdef, rest, state.params, windows)
            fisher = jax.tree.map(jnp.add, fisher, current)
            anchor = jax.tree.map(jnp.copy, state.params)  # the step donates the state
        return state

    tasks = [Task(d, batches(i), s["steps_per_phase"]) for i, d in enumerate(DOMAINS)]
    start = time.perf_counter()
    _, record = train_tasks(
        lambda state, *batch: step(state, rest, *batch),
        TrainState.create(params, levels, seed=seed),
        tasks,
        evaluate,
        levels,
        groups=measured_groups(config.model, params),
        after_task=after_task if method else None,
        log=lambda line: print(f"  {name} seed {seed} {line}", flush=True),
    )
    replayed = (len(DOMAINS) - 1) * s["steps_per_phase"] if method == "replay" else 0
    tokens = (s["steps_per_phase"] * len(DOMAINS) + replayed) * s["batch"] * s["seq_len"]
    baseline = {}
    if method == "replay":
        baseline = {"replay_windows": b["replay_windows"]}
    if method == "ewc":
        baseline = {"ewc_lambda": ewc_lambda, "fisher_windows": b["fisher_windows"]}
    return {
        **baseline,
        "model": name,
        "seed": seed,
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "train_levels": [[lv.name, lv.period] for lv in levels],
        **record.to_json(),
        "summary": summarize(record.score, higher_is_better=False)._asdict(),
        "seconds": time.perf_counter() - start,
        "tokens_per_second": tokens / record.train_seconds,
        "load_average": "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()),
    }


# ----------------------------------------------------------------------------- report


def chosen_lambda(strengths: list[dict]) -> float | None:
    """The EWC strength with the lowest final mean loss on the first seed; None until every
    strength of `EWC_LAMBDAS` has its record."""
    if sorted(r["ewc_lambda"] for r in strengths) != sorted(EWC_LAMBDAS):
        return None
    return min(strengths, key=lambda r: r["summary"]["average"])["ewc_lambda"]


def ewc_table(strengths: list[dict]) -> list[dict]:
    """One row per EWC strength run on the first seed (the selection)."""
    lam = chosen_lambda(strengths)
    return [
        {
            "ewc_lambda": r["ewc_lambda"],
            "chosen": r["ewc_lambda"] == lam,
            "seed": r["seed"],
            "final_mean_loss": r["summary"]["average"],
            "forgetting": r["summary"]["forgetting"],
            "new_domain_loss": float(np.mean(np.diag(np.asarray(r["score"]))[1:])),
            "seconds": r["seconds"],
        }
        for r in sorted(strengths, key=lambda r: r["ewc_lambda"])
    ]


def _ms(values) -> list[float]:
    return [float(np.mean(values)), float(np.std(values))]


def peak_interference(matrix) -> float:
    """Mean over j < T−1 of max_{i>j} (L[i, j] − L[j, j]): the worst rise of each domain's loss
    above its just-learned value at any later phase (forgetting that a later phase may undo)."""
    m = np.asarray(matrix)
    t = m.shape[0]
    return float(np.mean([max(m[i, j] - m[j, j] for i in range(j + 1, t)) for j in range(t - 1)]))


def located(run: dict) -> dict[str, dict[str, float]]:
    """Per group: the mean step forgetting and what the group's reset recovers
    (`nestlearn.eval.continual.locate_forgetting`, in nats/byte), its mean relative movement
    over the later domains and the fewest updates its level applied on a domain."""
    rise, recovered = locate_forgetting(run["score"], run["reset_score"], higher_is_better=False)
    levels, updates = run["levels"], np.asarray(run["updates"], np.float64)
    out = {}
    for g, name in enumerate(run["groups"]):
        owner = levels.index(name if name in levels else "backbone")
        out[name] = {
            "rise": rise,
            "recovered": float(recovered[g]),
            "movement": float(np.mean(np.asarray(run["movement"])[1:, g])),
            "min_updates": float(np.min(updates[:, owner])),
        }
    return out


def aggregate(runs: list[dict]) -> dict:
    out = {}
    for name in MODELS:
        mine = [r for r in runs if r["model"] == name]
        if not mine:
            continue
        mats = np.asarray([r["score"] for r in mine])
        summ = [r["summary"] for r in mine]
        loc = [located(r) for r in mine]
        out[name] = {
            "seeds": [r["seed"] for r in mine],
            "params": mine[0]["params"],
            "matrix_mean": mats.mean(0).tolist(),
            "matrix_std": mats.std(0).tolist(),
            "final_mean_loss": _ms([x["average"] for x in summ]),
            "forgetting": _ms([x["forgetting"] for x in summ]),
            "just_learned_mean": _ms([x["just_learned_mean"] for x in summ]),
            "new_domain_loss": _ms([np.mean(np.diag(m)[1:]) for m in mats]),
            "peak_interference": _ms([peak_interference(m) for m in mats]),
            "located": {g: {k: _ms([x[g][k] for x in loc]) for k in loc[0][g]} for g in loc[0]},
            "tokens_per_second": float(np.mean([r["tokens_per_second"] for r in mine])),
            "seconds": float(np.sum([r["seconds"] for r in mine])),
            "load_average": [r["load_average"] for r in mine],
            "skipped_steps": int(sum(r["skipped"] for r in mine)),
        }
    return out


def pm(pair, digits=3) -> str:
    """`mean ± std`, or only the mean when the std is over a single seed (exactly 0)."""
    if pair[1] == 0:
        return f"{pair[0]:.{digits}f}"
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def markdown(agg: dict, meta: dict, ewc: list[dict]) -> str:
    s = meta["settings"]
    lines = [
        "# Continual language modelling: Shakespeare → Milton → fortunes",
        "",
        f"Command: `{meta['command']}`  ",
        f"Compute: {meta['run_seconds']:.0f} s summed over the {meta['total']} runs "
        f"({meta['computed']} computed by this invocation in {meta['wall_seconds']:.0f} s; "
        "the others read from their JSON).  ",
        f"Machine: {meta['machine']['processor']}, {meta['machine']['cpu_count']} CPUs, "
        f"{meta['machine']['platform']}, jax {meta['machine']['jax']}; load averages (1/5/15 min) "
        f"at the end of each run: {', '.join(meta['loads'])}.  ",
        f"Data: {meta['data']}; {s['steps_per_phase']} steps of {s['batch']}×{s['seq_len']} "
        f"bytes per domain; CMS periods {tuple(s['periods'])}; seeds {meta['seeds']}; "
        "validation = held-out documents of each domain.",
        "",
        "Validation loss in nats/byte (perplexity = exp(loss)). *Forgetting*: mean over the "
        "first two domains of (final loss − best earlier loss); *just learned*: mean of "
        "L[i, i]; *new domain*: mean of L[i, i] over the second and third domains (plasticity); "
        "*final mean*: mean of the last row; *peak interference*: mean over the first two "
        "domains of the largest rise of their loss above the just-learned value at any later "
        "phase.",
        "",
        "| model | params | just learned | new domain | final mean | forgetting | "
        "peak interference | skipped | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in agg.items():
        lines.append(
            f"| {LABELS[name]} | {a['params']:,} | {pm(a['just_learned_mean'])} | "
            f"{pm(a['new_domain_loss'])} | {pm(a['final_mean_loss'])} | {pm(a['forgetting'])} | "
            f"{pm(a['peak_interference'])} | {a['skipped_steps']} | "
            f"{a['tokens_per_second']:,.0f} |"
        )
    if ewc or "transformer_pp_replay" in agg:
        lines += [
            "",
            f"**Baselines.** Replay pairs every batch after the first domain with as many "
            f"windows from a buffer of {BASELINE_SETTINGS['replay_windows']} training windows "
            "per finished domain (so it trains on twice the bytes per step from the second "
            "domain on). EWC's strength λ is chosen on the first seed by the final mean loss; "
            f"its Fisher averages {BASELINE_SETTINGS['fisher_windows']} training windows of "
            "each finished domain.",
        ]
    if ewc:
        lines += [
            "",
            "| EWC λ | seed | final mean | forgetting | new domain | wall s |",
            "|---|---|---|---|---|---|",
        ]
        for row in ewc:
            mark = " **(chosen)**" if row["chosen"] else ""
            lines.append(
                f"| {row['ewc_lambda']:g}{mark} | {row['seed']} | {row['final_mean_loss']:.3f} | "
                f"{row['forgetting']:.3f} | {row['new_domain_loss']:.3f} | {row['seconds']:.0f} |"
            )
    lines += [
        "",
        "## Where the forgetting lives",
        "",
        "Over every later domain i and earlier domain j < i: *rise* is the mean of "
        "L[i, j] − L[i−1, j] (what domain i cost domain j); *recovered by reset* is the mean of "
        "L[i, j] − R[i, g, j], where R is the loss with group g alone put back to its value "
        "before domain i (positive: the group's change during i caused part of the rise; a "
        "reset that breaks the model's coupling to the other groups can also make it negative); "
        "*moved* is ‖Δθ_g‖/‖θ_g‖ over a domain (mean over the second and third); *updates* is "
        "the fewest updates the group's level applied on a domain.",
        "",
        "| model | group | updates | moved | rise | recovered by reset |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in agg.items():
        for g, v in a["located"].items():
            lines.append(
                f"| {LABELS[name]} | {g} | {v['min_updates'][0]:.0f} | {pm(v['movement'])} | "
                f"{pm(v['rise'])} | {pm(v['recovered'])} |"
            )
    lines += [
        "",
        "Loss matrices, mean over seeds (rows: after phase; columns: domain; "
        "perplexity in brackets):",
        "",
    ]
    for name, a in agg.items():
        lines += [
            f"**{LABELS[name]}**",
            "",
            "| after \\ on | " + " | ".join(DOMAINS) + " |",
            "|---" * (len(DOMAINS) + 1) + "|",
        ]
        for i, row in enumerate(a["matrix_mean"]):
            lines.append(
                f"| {DOMAINS[i]} | "
                + " | ".join(f"{v:.3f} ({math.exp(v):.2f})" for v in row)
                + " |"
            )
        lines.append("")
    lines += [
        "## The paper's claim",
        "",
        "arXiv 2512.24695 §9.1, Fig. 8 (figure only): in continual translation of two new "
        "languages learned one after the other, in-context learning collapses while Hope with "
        "3 extra CMS levels almost recovers its single-language score; §7.1 argues that slow "
        "CMS levels keep what fast levels overwrite. Here: ≈1.4M-parameter byte LMs, "
        f"{s['steps_per_phase']} steps per domain, trained from scratch. Whether it holds is "
        "judged from the tables above in docs/results/README.md.",
        "",
        "![loss after each phase](lm.png)",
        "",
        "![stability and plasticity](lm_stability.png)",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def plot(agg: dict, runs: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(DOMAINS) + 1, figsize=(4 * (len(DOMAINS) + 1), 3.5))
    for j, domain in enumerate(DOMAINS):
        ax = axes[j]
        for name, a in agg.items():
            m, sd = np.asarray(a["matrix_mean"]), np.asarray(a["matrix_std"])
            ax.errorbar(
                range(len(DOMAINS)),
                m[:, j],
                yerr=sd[:, j],
                marker="o",
                label=LABELS[name],
                capsize=3,
            )
        ax.set_xticks(range(len(DOMAINS)), [f"after {d}" for d in DOMAINS], fontsize=7)
        ax.set(ylabel="validation loss (nats/byte)", title=f"on {domain}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for name in agg:
        curve = np.asarray(next(r["train_curve"] for r in runs if r["model"] == name))
        window = max(1, len(curve) // 40)
        ax.plot(np.convolve(curve, np.ones(window) / window, mode="valid"), label=LABELS[name])
    ax.set(xlabel="step (phases back to back)", ylabel="train loss", title="training (first seed)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_stability(runs: list[dict], strengths: list[dict], path: Path) -> None:
    """Forgetting (stability) against the new domains' score (plasticity), one point per
    model at the mean of its seeds, and one per EWC strength (first seed)."""
    points: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        new = float(np.mean(np.diag(np.asarray(r["score"]))[1:]))
        points.setdefault(LABELS[r["model"]], []).append((new, r["summary"]["forgetting"]))
    for r in strengths:
        new = float(np.mean(np.diag(np.asarray(r["score"]))[1:]))
        label = f"EWC λ={r['ewc_lambda']:g} (seed {r['seed']})"
        points.setdefault(label, []).append((new, r["summary"]["forgetting"]))
    compare.plot_points(
        points,
        path,
        xlabel="loss on the new domain (nats/byte; left: more plastic)",
        ylabel="forgetting (nats/byte; down: more stable)",
        title="stability vs plasticity (mean ± std over seeds)",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/continual", type=Path)
    parser.add_argument("--data", default="real", choices=("real", "synthetic"))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--quick", action="store_true", help="tiny models and data (smoke)")
    parser.add_argument(
        "--report_only", action="store_true", help="tables and plots from the finished runs"
    )
    args = parser.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",")]
    names = [m for m in args.models.split(",") if m]
    for m in names:
        if m not in MODELS:
            raise ValueError(f"--models: {m!r} is not one of {MODELS}")
    s = get_settings(args.quick)
    run_dir = args.out / "lm_runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    domains = None if args.report_only else load_domains(args.data, s)
    start = time.perf_counter()
    runs, computed = [], 0
    strengths: list[dict] = []  # EWC: every (λ, first seed) record, the selection
    for name in MODELS:  # the report holds every finished run; --models picks what runs
        run = name in names and not args.report_only
        for seed in seeds:
            plan = [(f"{name}-seed{seed}", None)]
            if name == "transformer_pp_ewc":
                if seed == seeds[0]:
                    plan = [(f"{name}-lam{lam:g}-seed{seed}", lam) for lam in EWC_LAMBDAS]
                else:
                    lam = chosen_lambda(strengths)
                    if lam is None:
                        if run:
                            print(f"skip {name} seed {seed}: the EWC strengths are not all run")
                        continue
                    plan = [(f"{name}-lam{lam:g}-seed{seed}", lam)]
            for stem, lam in plan:
                path = run_dir / f"{stem}.json"
                record = compare.cached_record(path, settings=s, data=args.data)
                if record is None and run:
                    print(f"run {stem}", flush=True)
                    record = run_model(name, seed, domains, s, args.quick, ewc_lambda=lam)
                    record.update(settings=s, data=args.data)
                    compare.write_json_atomic(path, record)
                    computed += 1
                if record is None:
                    continue
                if lam is not None and seed == seeds[0]:
                    strengths.append(record)
                else:
                    runs.append(record)
    lam = chosen_lambda(strengths)
    runs += [r for r in strengths if r["ewc_lambda"] == lam]
    if not runs:
        print(f"no finished runs under {run_dir}")
        return
    agg = aggregate(runs)
    command_args, skip = [], False  # the command that reproduces the whole report
    for a in argv if argv is not None else sys.argv[1:]:
        if skip or a == "--report_only" or a.startswith("--models="):
            skip = False
            continue
        skip = a == "--models"
        if not skip:
            command_args.append(a)
    records = runs + [r for r in strengths if r not in runs]  # every run's compute counts
    meta = {
        **compare.run_meta("experiments/continual_lm.py", command_args, start, records, computed),
        "loads": [f"{r['model']}/{r['seed']}: {r['load_average']}" for r in records],
        "data": args.data,
        "seeds": seeds,
        "settings": s,
    }
    ewc = ewc_table(strengths)
    (args.out / "lm.json").write_text(
        json.dumps({"meta": meta, "models": agg, "ewc_strengths": ewc}, indent=1)
    )
    (args.out / "lm.md").write_text(markdown(agg, meta, ewc))
    plot(agg, runs, args.out / "lm.png")
    plot_stability(runs, strengths, args.out / "lm_stability.png")
    print(markdown(agg, meta, ewc))


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    main()
