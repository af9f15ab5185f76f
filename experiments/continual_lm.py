"""Continual language modelling over domains: Shakespeare → Milton → fortunes (bytes).

Three byte-level LMs at matched size (≈1.35–1.43M parameters) are trained on one domain after
the other, the same number of steps per phase, with one optimizer state carried through:

- `transformer_pp`: Transformer++ (RoPE attention + SwiGLU), d 128, 5 layers (1.34M);
- `hope_attention`: attention + a three-level CMS (sequential, SwiGLU levels) per block, d 128,
  2 layers (1.34M); the CMS levels are trained in scheduled mode, level ℓ by AdamW every
  1, 4, 16 steps on its summed gradients (Eq. 71, arXiv 2512.24695);
- `hope`: self-modifying Titans memory + the same CMS, d 128, 2 layers (1.43M), with the
  model's default self-modifying memory (η_max 0.1, curvature-normalised chunk step).

Each domain is split by whole document (`nestlearn.data.load_dataset`); after every phase the
validation loss (nats/byte) of every domain is measured, which gives the loss matrix L[i, j]
(after phase i, on domain j) and, through `nestlearn.eval.continual.summarize` with
`higher_is_better=False`, the forgetting (rise of the loss on earlier domains). Learning rate:
linear warmup over the first phase's `warmup` steps, then constant (no decay that would favour
the last phase). Gradient clip 1.0.

Command (writes docs/results/continual/lm.{md,json,png}; two seeds, 6 runs, measured 2,259 s on
the shared 2-core machine under load 15–25):

    python experiments/continual_lm.py
    python experiments/continual_lm.py --quick --data synthetic --out /tmp/cl   # seconds

Each (model, seed) writes `lm_runs/<model>-seed<k>.json` under --out; a rerun skips finished
runs. Same seed, same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np
from flax import nnx

from nestlearn import models, tune_host_allocator
from nestlearn.data.dataset import load_dataset
from nestlearn.data.iterator import BatchIterator, eval_batches
from nestlearn.eval import compare
from nestlearn.eval.continual import summarize
from nestlearn.train.config import base_config, validate_config
from nestlearn.train.levels import build_levels
from nestlearn.train.step import TrainState, build_eval_step, build_train_step, split_model

matplotlib.use("Agg")
from matplotlib import pyplot as plt

DOMAINS = ("shakespeare", "milton", "fortunes")
MODELS = ("transformer_pp", "hope_attention", "hope")
LABELS = {
    "transformer_pp": "Transformer++",
    "hope_attention": "Hope-Attention (CMS)",
    "hope": "Hope",
}
#: model -> (d_model, num_layers) giving ≈1.35–1.43M parameters with byte vocabulary
SIZES = {"transformer_pp": (128, 5), "hope_attention": (128, 2), "hope": (128, 2)}


def get_settings(quick: bool) -> dict:
    s = dict(
        steps_per_phase=100,  # optimizer steps on each domain
        batch=8,  # windows per batch
        seq_len=128,  # bytes per window
        lr=3e-3,  # AdamW peak rate (backbone and CMS levels)
        warmup=20,  # warmup steps at the start of the first phase
        eval_batches=8,  # validation batches per domain per evaluation
    )
    if quick:
        s.update(steps_per_phase=3, batch=2, seq_len=32, warmup=1, eval_batches=1)
    return s


def model_config(name: str, s: dict, seed: int, quick: bool):
    """The experiment config of one model (validated); `data.corpus` is set per phase."""
    c = base_config(name)
    c.seed = seed
    d, layers = SIZES[name]
    if quick:
        d, layers = 32, 1
    c.model.vocab_size = 256
    c.model.d_model = d
    c.model.num_layers = layers
    c.model.num_heads = 4 if d >= 64 else 2
    c.model.max_len = max(256, s["seq_len"])
    if quick:
        c.model.chunk_size = 16
    if "cms" in c.model:
        c.model.cms.periods = (1, 4, 16)
        c.model.cms.mode = "scheduled"
        if quick:
            c.model.cms.chunk_sizes = (16, 64, 256)
    if name == "hope":
        if quick:
            c.model.self_modifying.chunk_size = 16
    c.data.tokenizer = "byte"
    c.data.seq_len = s["seq_len"]
    c.data.batch_size = s["batch"]
    c.optim.lr = s["lr"]
    c.optim.warmup_steps = s["warmup"]
    c.optim.min_lr_ratio = 1.0  # constant after warmup
    c.train.num_steps = s["steps_per_phase"] * len(DOMAINS)
    validate_config(c)
    return c


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


def run_model(name: str, seed: int, domains: dict, s: dict, quick: bool) -> dict:
    """Trains one model through the phases; returns the loss matrix and timings."""
    config = model_config(name, s, seed, quick)
    model = models.build(config.model, rngs=nnx.Rngs(seed))
    graphdef, params, rest = split_model(model)
    levels = build_levels(config)
    train_step = build_train_step(levels, params=params, grad_clip=1.0, graphdef=graphdef)
    eval_step = build_eval_step(graphdef)
    state = TrainState.create(params, levels, seed=seed)
    val = {
        d: eval_batches(
            ds.val, batch_size=s["batch"], seq_len=s["seq_len"], max_batches=s["eval_batches"]
        )
        for d, ds in domains.items()
    }
    matrix = np.full((len(DOMAINS), len(DOMAINS)), np.nan)
    curve = []
    train_seconds = 0.0
    start = time.perf_counter()
    for i, domain in enumerate(DOMAINS):
        iterator = BatchIterator(
            domains[domain].train, batch_size=s["batch"], seq_len=s["seq_len"], seed=seed + 17 * i
        )
        phase_start = time.perf_counter()
        for _ in range(s["steps_per_phase"]):
            batch = next(iterator)
            state, metrics = train_step(state, rest, batch.inputs, batch.targets)
            curve.append(float(metrics["loss"]))
        jax.block_until_ready(state.params)
        train_seconds += time.perf_counter() - phase_start
        for j, d in enumerate(DOMAINS):
            losses = [float(eval_step(state.params, rest, b.inputs, b.targets)) for b in val[d]]
            matrix[i, j] = float(np.mean(losses))
        print(
            f"  {name} seed {seed} after {domain}: "
            + ", ".join(f"{d} {matrix[i, j]:.3f}" for j, d in enumerate(DOMAINS)),
            flush=True,
        )
    tokens = s["steps_per_phase"] * len(DOMAINS) * s["batch"] * s["seq_len"]
    return {
        "model": name,
        "seed": seed,
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "levels": [[lv.name, lv.period] for lv in levels],
        "matrix": matrix.tolist(),
        "summary": summarize(matrix, higher_is_better=False)._asdict(),
        "train_curve": curve,
        "skipped_steps": int(state.skipped),
        "seconds": time.perf_counter() - start,
        "tokens_per_second": tokens / train_seconds,
        "load_average": "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()),
    }


# ----------------------------------------------------------------------------- report


def aggregate(runs: list[dict]) -> dict:
    out = {}
    for name in MODELS:
        mine = [r for r in runs if r["model"] == name]
        if not mine:
            continue
        mats = np.asarray([r["matrix"] for r in mine])
        summ = [r["summary"] for r in mine]
        out[name] = {
            "seeds": [r["seed"] for r in mine],
            "params": mine[0]["params"],
            "matrix_mean": mats.mean(0).tolist(),
            "matrix_std": mats.std(0).tolist(),
            "final_mean_loss": [
                float(np.mean([x["average"] for x in summ])),
                float(np.std([x["average"] for x in summ])),
            ],
            "forgetting": [
                float(np.mean([x["forgetting"] for x in summ])),
                float(np.std([x["forgetting"] for x in summ])),
            ],
            "just_learned_mean": [
                float(np.mean([x["just_learned_mean"] for x in summ])),
                float(np.std([x["just_learned_mean"] for x in summ])),
            ],
            "peak_interference": [
                float(np.mean([peak_interference(m) for m in mats])),
                float(np.std([peak_interference(m) for m in mats])),
            ],
            "tokens_per_second": float(np.mean([r["tokens_per_second"] for r in mine])),
            "seconds": float(np.sum([r["seconds"] for r in mine])),
            "load_average": [r["load_average"] for r in mine],
            "skipped_steps": int(sum(r["skipped_steps"] for r in mine)),
        }
    return out


def peak_interference(matrix) -> float:
    """Mean over j < T−1 of max_{i>j} (L[i, j] − L[j, j]): the worst rise of each domain's loss
    above its just-learned value at any later phase (forgetting that a later phase may undo)."""
    m = np.asarray(matrix)
    t = m.shape[0]
    return float(np.mean([max(m[i, j] - m[j, j] for i in range(j + 1, t)) for j in range(t - 1)]))


def pm(pair, digits=3) -> str:
    """`mean ± std`, or only the mean when the std is over a single seed (exactly 0)."""
    if pair[1] == 0:
        return f"{pair[0]:.{digits}f}"
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def markdown(agg: dict, meta: dict) -> str:
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
        f"at the end of each run: {', '.join(meta['loads'])} (shared machine: tokens/s are "
        "contended and only roughly comparable).  ",
        f"Data: {meta['data']}; {s['steps_per_phase']} steps of {s['batch']}×{s['seq_len']} "
        f"bytes per domain; seeds {meta['seeds']}; validation = held-out documents of each "
        "domain.",
        "",
        "Validation loss in nats/byte (perplexity = exp(loss)). *Forgetting*: mean over the "
        "first two domains of (final loss − best earlier loss); *just learned*: mean of "
        "L[i, i]; *final mean*: mean of the last row; *peak interference*: mean over the first "
        "two domains of the largest rise of their loss above the just-learned value at any later "
        "phase (a later phase on related text can undo forgetting, which the final row hides).",
        "",
        "| model | params | just learned | final mean | forgetting | peak interference | "
        "skipped | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, a in agg.items():
        lines.append(
            f"| {LABELS[name]} | {a['params']:,} | {pm(a['just_learned_mean'])} | "
            f"{pm(a['final_mean_loss'])} | {pm(a['forgetting'])} | "
            f"{pm(a['peak_interference'])} | {a['skipped_steps']} | "
            f"{a['tokens_per_second']:,.0f} |"
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
        "NL-arXiv §9.1, Fig. 8 (arXiv 2512.24695; figure only): in continual translation of two "
        "new languages learned one after the other, in-context learning collapses while Hope "
        "with 3 extra CMS levels almost recovers its single-language score; arXiv §7.1 argues that "
        "slow CMS levels keep what fast levels overwrite. At this scale (≈1.4M-parameter byte "
        f"LMs, {s['steps_per_phase']} steps per domain, trained from scratch).",
        "",
        "Whether it holds here is judged from the tables above in docs/results/README.md.",
        "",
        "![loss after each phase](lm.png)",
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/continual", type=Path)
    parser.add_argument("--data", default="real", choices=("real", "synthetic"))
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--quick", action="store_true", help="tiny models and data (smoke)")
    args = parser.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",")]
    names = [m for m in args.models.split(",") if m]
    for m in names:
        if m not in MODELS:
            raise ValueError(f"--models: {m!r} is not one of {MODELS}")
    s = get_settings(args.quick)
    run_dir = args.out / "lm_runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    domains = load_domains(args.data, s)
    start = time.perf_counter()
    runs, computed = [], 0
    for name in names:
        for seed in seeds:
            path = run_dir / f"{name}-seed{seed}.json"
            if path.exists():
                runs.append(json.loads(path.read_text()))
                continue
            result = run_model(name, seed, domains, s, args.quick)
            result.update(settings=s, data=args.data)
            path.write_text(json.dumps(result))
            runs.append(result)
            computed += 1
    agg = aggregate(runs)
    command_args = argv if argv is not None else sys.argv[1:]
    meta = {
        **compare.run_meta("experiments/continual_lm.py", command_args, start, runs, computed),
        "loads": [f"{r['model']}/{r['seed']}: {r['load_average']}" for r in runs],
        "data": args.data,
        "seeds": seeds,
        "settings": s,
    }
    (args.out / "lm.json").write_text(json.dumps({"meta": meta, "models": agg}, indent=1))
    (args.out / "lm.md").write_text(markdown(agg, meta))
    plot(agg, runs, args.out / "lm.png")
    print(markdown(agg, meta))


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    main()
