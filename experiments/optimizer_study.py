"""Deep optimizers at small scale: AdamW, Muon, M3, Delta momentum and DMGD on two problems.

(a) `lm`: a Transformer++ byte LM (d 128, 4 layers, ≈1.08M parameters) on Shakespeare (split by
    play), `lm_steps` steps of 8×128 bytes, warmup + cosine schedule, global-norm clip 1.0; each
    run is `nestlearn.train.train_and_evaluate` of a config whose `levels.backbone` names the
    optimizer and its keywords (`lm_config`; checkpoints and metrics under --workdir).
(b) `mlp`: a 784-256-256-10 ReLU MLP on Fashion-MNIST (10 classes), 55,000 training images,
    5,000 held out for validation, `mlp_epochs` epochs of batches of 128, constant rate, the
    same global-norm clip.

Each optimizer gets a three-point learning-rate grid at seed 0; the run with the lowest final
validation loss is its best setting (a diverged run counts as +inf), which is then run again
with the seeds of `--best_seeds` (default 1 and 2: model initialisation and data order), and
the tables report its mean ± sample std over all its seeds. Every optimizer updates every
parameter (no AdamW fallback for embeddings or vectors), so the comparison is of the rules
themselves:

- AdamW: `optax.adamw` (b2 0.95 on the LM, weight decay 0.1 on matrices on the LM; 1e-4 on MLP)
- Muon: `newton_schulz_momentum` (Eq. 52: β 0.95, Nesterov, 5 quintic Newton–Schulz steps;
  vectors get the plain momentum read)
- M3: `m3(form="printed", ema=False)` (Algorithm 1 as printed: accumulated moments, slow
  level every 16 steps, α 0.5)
- Delta momentum: `delta_momentum(form="arxiv")` (Eq. 49 as printed, α 0.9, erase rate 1)
- DMGD: `deep_momentum` (Eq. 50, coordinate-wise MLP memory, ℓ2 inner objective)

Command (writes docs/results/optimizer_study/; 30 runs, measured 3,641 s of runs on the shared
2-core machine under load 15–20, 1,023 s of them for `--problems mlp`):

    python experiments/optimizer_study.py
    python experiments/optimizer_study.py --quick --data synthetic --out /tmp/opt   # seconds

Every (problem, optimizer, learning rate) run writes `runs/<problem>-<optimizer>-<lr>.json`
under --out; a rerun skips finished runs. Same seed, same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import optax
from flax import nnx

from nestlearn import models, tune_host_allocator
from nestlearn.data.fashion_mnist import FashionMNIST, load_fashion_mnist, standardized_splits
from nestlearn.eval import compare
from nestlearn.models import classifier
from nestlearn.optim import rule_factory
from nestlearn.train import train_and_evaluate
from nestlearn.train.config import base_config, validate_config
from nestlearn.train.metrics import read_metrics

matplotlib.use("Agg")
from matplotlib import pyplot as plt

OPTIMIZERS = ("adamw", "muon", "m3", "delta", "dmgd")
LABELS = {
    "adamw": "AdamW",
    "muon": "Muon (NS momentum)",
    "m3": "M3",
    "delta": "Delta momentum",
    "dmgd": "DMGD",
}
#: problem -> optimizer -> learning-rate grid (3 points, spaced by ~3×)
GRIDS = {
    "lm": {
        "adamw": (1e-3, 3e-3, 1e-2),
        "muon": (0.01, 0.03, 0.1),
        "m3": (1e-3, 3e-3, 1e-2),
        "delta": (0.03, 0.1, 0.3),
        "dmgd": (0.3, 1.0, 3.0),
    },
    "mlp": {
        "adamw": (3e-4, 1e-3, 3e-3),
        "muon": (0.01, 0.03, 0.1),
        "m3": (3e-4, 1e-3, 3e-3),
        "delta": (0.01, 0.03, 0.1),
        "dmgd": (0.1, 0.3, 1.0),
    },
}


def get_settings(quick: bool) -> dict:
    s = dict(
        seed=0,
        lm_d_model=128,
        lm_layers=4,
        lm_steps=150,
        lm_batch=8,
        lm_seq=128,
        lm_warmup=15,
        lm_eval_every=25,
        lm_eval_batches=4,
        mlp_hidden=256,
        mlp_epochs=1,
        mlp_batch=128,
        mlp_eval_every=100,
    )
    if quick:
        s.update(
            lm_d_model=32,
            lm_layers=1,
            lm_steps=6,
            lm_batch=2,
            lm_seq=32,
            lm_warmup=2,
            lm_eval_every=3,
            lm_eval_batches=1,
            mlp_hidden=32,
            mlp_epochs=1,
            mlp_batch=32,
            mlp_eval_every=5,
        )
    return s


#: optimizer -> (rule name, keyword arguments) of the deep optimizers (`rule_factory` names)
RULES = {
    "muon": ("newton_schulz_momentum", {"beta": 0.95, "ns_steps": 5}),
    "m3": ("m3", {"slow_period": 16, "form": "printed", "ema": False}),
    "delta": ("delta_momentum", {"alpha": 0.9, "form": "arxiv"}),
    "dmgd": ("deep_momentum", {"alpha": 0.999, "beta": 0.9, "inner_lr": 0.01}),
}
#: AdamW's keyword arguments per problem
ADAMW = {
    "lm": {"b1": 0.9, "b2": 0.95, "weight_decay": 0.1, "mask": "matrices"},
    "mlp": {"weight_decay": 1e-4},
}


def rule_of(name: str, problem: str) -> tuple[str, dict]:
    """(rule name, keyword arguments) of optimizer `name` on `problem`."""
    if name == "adamw":
        return "adamw", ADAMW[problem]
    if name not in RULES:
        raise ValueError(f"optimizer={name!r} is not one of {OPTIMIZERS}")
    return RULES[name]


def make_optimizer(name: str, lr) -> optax.GradientTransformation:
    """The MLP's optimizer `name` with learning rate (or schedule) `lr`."""
    rule, kwargs = rule_of(name, "mlp")
    return rule_factory(rule)(lr, **kwargs)


def finite_or_inf(x: float) -> float:
    return float(x) if math.isfinite(float(x)) else math.inf


# ----------------------------------------------------------------------------- (a) LM


def lm_config(s: dict, data: str, name: str = "adamw", lr: float = 3e-3):
    """The experiment config of one LM run: Transformer++, its backbone level set to optimizer
    `name` at peak rate `lr` (warmup, cosine), every step logged, no early stop."""
    c = base_config("transformer_pp")
    c.seed = s["seed"]
    c.model.d_model = s["lm_d_model"]
    c.model.num_layers = s["lm_layers"]
    c.model.num_heads = 4 if s["lm_d_model"] >= 64 else 2
    c.model.max_len = max(256, s["lm_seq"])
    c.data.corpus = "shakespeare" if data == "real" else "synthetic"
    c.data.tokenizer = "byte"
    c.data.seq_len = s["lm_seq"]
    c.data.batch_size = s["lm_batch"]
    c.train.num_steps = s["lm_steps"]
    c.optim.warmup_steps = s["lm_warmup"]
    rule, kwargs = rule_of(name, "lm")
    backbone = c.levels.backbone
    backbone.rule = rule
    backbone.learning_rate = float(lr)
    if rule != "adamw":
        backbone[rule] = ml_collections.ConfigDict()
    for key, value in kwargs.items():
        backbone[rule][key] = value
    c.train.log_every = 1
    c.train.eval_every = s["lm_eval_every"]
    c.train.eval_batches = s["lm_eval_batches"]
    c.train.checkpoint_every = s["lm_steps"]
    c.train.max_consecutive_nonfinite = s["lm_steps"] + 1  # a diverged run is recorded, not stopped
    c.train.instruments = False
    c.train.progress_bar = False
    c.sample.num_samples = 0
    validate_config(c)
    return c


def run_lm(name: str, lr: float, s: dict, data: str, workdir: Path) -> dict:
    """Trains the LM with one optimizer and rate (`train_and_evaluate`); the train loss of every
    step and the validation loss every `lm_eval_every` steps, read from its metrics."""
    config = lm_config(s, data, name, lr)
    if workdir.exists():
        shutil.rmtree(workdir)  # an interrupted run restarts from scratch
    start = time.perf_counter()
    train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - start
    records = read_metrics(workdir / "metrics.jsonl")
    train = [r for r in records if r.get("kind") == "train"]
    val_curve = [
        [r["step"], finite_or_inf(r["val_loss"])] for r in records if r.get("kind") == "eval"
    ]
    steady = (train[-1]["elapsed_s"] - train[0]["elapsed_s"]) / max(1, len(train) - 1)
    return {
        "train_curve": [finite_or_inf(r["loss"]) for r in train],
        "val_curve": val_curve,
        "val_loss": val_curve[-1][1],
        "skipped_steps": int(train[-1].get("skipped", 0)),
        "params": models.count_params(
            nnx.eval_shape(lambda: models.build(config.model, rngs=nnx.Rngs(0)))
        ),
        "seconds": seconds,
        "seconds_per_step": steady,
    }


# ----------------------------------------------------------------------------- (b) MLP


def mlp_data(data: str, quick: bool):
    """(x_train, y_train, x_val, y_val, x_test, y_test) with pixels standardised; 1/12 of the
    training images (5,000 of 60,000) held out for validation."""
    if data == "real":
        train, test = (1200, 200) if quick else (None, None)
        n = train or 60_000
        return tuple(
            standardized_splits(
                load_fashion_mnist(), val_examples=n // 12, train_limit=train, test_limit=test
            )
        )
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 784)) * 0.3
    y = rng.integers(0, 10, 600 if quick else 6000)
    y_te = rng.integers(0, 10, 100 if quick else 1000)
    x = centers[y] + rng.normal(size=(y.size, 784))
    x_te = centers[y_te] + rng.normal(size=(y_te.size, 784))
    synthetic = FashionMNIST(x, y, x_te, y_te)
    return tuple(standardized_splits(synthetic, val_examples=y.size // 12))


def mlp_init(seed: int, hidden: int) -> dict:
    """The study's ReLU MLP 784-hidden-hidden-10 (`nestlearn.models.classifier`)."""
    return classifier.mlp_init(jax.random.key(seed), (784, hidden, hidden, 10))


mlp_loss = classifier.mlp_loss


def run_mlp(name: str, lr: float, s: dict, data) -> dict:
    x_tr, y_tr, x_va, y_va, x_te, y_te = (jnp.asarray(a) for a in data)
    steps_per_epoch = x_tr.shape[0] // s["mlp_batch"]
    steps = s["mlp_epochs"] * steps_per_epoch
    rng = np.random.default_rng([s["seed"], 2])
    order = np.concatenate([rng.permutation(x_tr.shape[0]) for _ in range(s["mlp_epochs"])])
    idx = order[: steps * s["mlp_batch"]].reshape(steps, s["mlp_batch"])
    tx = optax.chain(optax.clip_by_global_norm(1.0), make_optimizer(name, lr))
    params = mlp_init(s["seed"], s["mlp_hidden"])

    def step(carry, batch_idx):
        p, opt_state = carry
        loss, g = jax.value_and_grad(mlp_loss)(p, x_tr[batch_idx], y_tr[batch_idx])
        u, opt_state = tx.update(g, opt_state, p)
        return (optax.apply_updates(p, u), opt_state), loss

    @jax.jit
    def segment(carry, idx):
        carry, losses = jax.lax.scan(step, carry, idx)
        return carry, losses, mlp_loss(carry[0], x_va, y_va)

    carry = (params, tx.init(params))
    train_curve, val_curve = [], []
    every = s["mlp_eval_every"]
    start = time.perf_counter()
    for begin in range(0, steps, every):
        carry, losses, val_loss = segment(carry, jnp.asarray(idx[begin : begin + every]))
        train_curve += [finite_or_inf(v) for v in np.asarray(losses)]
        val_curve.append([begin + len(losses), finite_or_inf(val_loss)])
    accuracy = float(jnp.mean(jnp.argmax(classifier.mlp_logits(carry[0], x_te), -1) == y_te))
    seconds = time.perf_counter() - start
    return {
        "train_curve": train_curve,
        "val_curve": val_curve,
        "val_loss": val_curve[-1][1],
        "test_accuracy": accuracy,
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
    }


# ----------------------------------------------------------------------------- report


def load_range(runs: list[dict]) -> str:
    """ "a–b over the runs" from the runs' recorded load averages (1-minute values)."""
    loads = compare.load_range(runs)
    if loads is None:
        return "not recorded by these runs"
    low, high, missing = loads
    note = f" ({missing} runs did not record it)" if missing else ""
    return f"{low:.1f}–{high:.1f} at the end of the runs{note}"


def run_seed(run: dict) -> int:
    """The seed of a run record (records from before `--best_seeds` existed are seed 0)."""
    return run.get("seed", 0)


def best_runs(runs: list[dict], problem: str) -> dict:
    """optimizer -> its seed-0 run with the lowest final validation loss (ties: the first lr)."""
    out = {}
    for name in OPTIMIZERS:
        mine = [
            r
            for r in runs
            if r["problem"] == problem and r["optimizer"] == name and run_seed(r) == 0
        ]
        if mine:
            out[name] = min(mine, key=lambda r: (r["val_loss"], r["lr"]))
    return out


def fmt(x: float) -> str:
    if not math.isfinite(x):
        return "diverged"
    return f"{x:.4f}" if x < 100 else f"{x:.2e}"


def seed_runs(runs: list[dict], best: dict) -> list[dict]:
    """Every run (all seeds) of the problem, optimizer and learning rate of the run `best`."""
    same = ("problem", "optimizer", "lr")
    return sorted(
        (r for r in runs if all(r[k] == best[k] for k in same)),
        key=run_seed,
    )


def fmt_seeds(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    """`mean ± std (n)` over seeds (sample std); "diverged" if any seed diverged."""
    x = np.asarray(values, np.float64) * scale
    if not np.all(np.isfinite(x)):
        return f"diverged in {int(np.sum(~np.isfinite(x)))} of {len(x)}"
    spec = f".{digits}f" if np.abs(x).max() < 100 else ".2e"
    std = f" ± {x.std(ddof=1):{spec}}" if len(x) > 1 else ""
    return f"{x.mean():{spec}}{std} (n={len(x)})"


def mean_over_seeds(runs: list[dict], best: dict) -> float:
    """Mean validation loss over the seeds of `best`'s setting (+inf if any seed diverged)."""
    x = np.asarray([r["val_loss"] for r in seed_runs(runs, best)], np.float64)
    return float(x.mean()) if np.all(np.isfinite(x)) else math.inf


def table(runs: list[dict], problem: str) -> list[str]:
    best = best_runs(runs, problem)
    head = "| optimizer | best lr | val loss (best, seed 0) | val loss at each lr | "
    head += "best lr over seeds: val loss | "
    head += (
        "test acc (%), over seeds | ms/step |" if problem == "mlp" else "skipped steps | ms/step |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, r in sorted(best.items(), key=lambda kv: kv[1]["val_loss"]):
        grid = sorted(
            (
                x
                for x in runs
                if x["problem"] == problem and x["optimizer"] == name and run_seed(x) == 0
            ),
            key=lambda x: x["lr"],
        )
        each = ", ".join(f"{x['lr']:g}: {fmt(x['val_loss'])}" for x in grid)
        edge = (
            " (grid edge)" if len(grid) > 1 and r["lr"] in (grid[0]["lr"], grid[-1]["lr"]) else ""
        )
        seeds = seed_runs(runs, r)
        over_seeds = fmt_seeds([x["val_loss"] for x in seeds])
        tail = (
            f"{fmt_seeds([x['test_accuracy'] for x in seeds], 100, 1)} | "
            f"{1000 * r['seconds_per_step']:.1f} |"
            if problem == "mlp"
            else f"{r['skipped_steps']} | {1000 * r['seconds_per_step']:.0f} |"
        )
        lines.append(
            f"| {LABELS[name]} | {r['lr']:g}{edge} | {fmt(r['val_loss'])} | {each} | "
            f"{over_seeds} | {tail}"
        )
    return lines


def plot(runs: list[dict], problem: str, path: Path, title: str) -> None:
    best = best_runs(runs, problem)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in best.items():
        curve = np.asarray(r["train_curve"], np.float64)
        window = max(1, len(curve) // 30)
        smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
        axes[0].plot(
            np.arange(len(smooth)) + window, smooth, label=f"{LABELS[name]} lr={r['lr']:g}"
        )
        steps, vals = zip(*r["val_curve"])
        axes[1].plot(steps, vals, "o-", label=f"{LABELS[name]} lr={r['lr']:g}")
    axes[0].set(xlabel="step", ylabel="train loss (moving average)", title=title)
    axes[1].set(xlabel="step", ylabel="validation loss", title=title + ": validation")
    for ax in axes:
        ax.set_yscale("log")  # a diverging optimizer would flatten the others on a linear axis
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(runs: list[dict], meta: dict) -> str:
    s = meta["settings"]
    lines = [
        "# Deep optimizers at small scale",
        "",
        f"Command: `{meta['command']}`  ",
        f"Compute: {meta['run_seconds']:.0f} s summed over the {meta['total']} runs "
        f"({meta['computed']} computed by this invocation in {meta['wall_seconds']:.0f} s, the "
        "others read from their JSON).  ",
        f"Machine: {meta['machine']['processor']}, {meta['machine']['cpu_count']} CPUs, "
        f"{meta['machine']['platform']}, jax {meta['machine']['jax']}; 1-minute load average "
        f"{meta['loads']} (shared machine, so ms/step are contended and only roughly "
        "comparable).  ",
        f"Data: {meta['data']}; learning-rate grid at seed {s['seed']}; the best rate of each "
        f"optimizer also at seeds {meta['best_seeds'] or 'none'} (mean ± sample std over all its "
        "seeds in the 'over seeds' columns).",
        "",
    ]
    if any(r["problem"] == "lm" for r in runs):
        params = next(r["params"] for r in runs if r["problem"] == "lm")
        lines += [
            f"## (a) Transformer++ byte LM on Shakespeare ({params:,} parameters, "
            f"{s['lm_steps']} steps of {s['lm_batch']}×{s['lm_seq']} bytes)",
            "",
            "Validation loss in nats/byte on the held-out plays, after the last step.",
            "",
            *table(runs, "lm"),
            "",
            "![LM loss](lm_loss.png)",
            "",
        ]
    if any(r["problem"] == "mlp" for r in runs):
        params = next(r["params"] for r in runs if r["problem"] == "mlp")
        lines += [
            f"## (b) {s['mlp_hidden']}-{s['mlp_hidden']} ReLU MLP on Fashion-MNIST ({params:,} "
            f"parameters, {s['mlp_epochs']} epoch(s), batch {s['mlp_batch']})",
            "",
            "Validation loss on 5,000 held-out training images; test accuracy on the 10,000 "
            "test images.",
            "",
            *table(runs, "mlp"),
            "",
            "![MLP loss](mlp_loss.png)",
            "",
        ]
    lines += [
        "*(grid edge)*: the best rate is the smallest or the largest of its grid, so a wider "
        "grid might find a better run; *diverged*: a non-finite loss.",
        "",
        "## The paper's claims",
        "",
        "NL-arXiv §9.7 (arXiv 2512.24695; figures only): on ImageNet-21K ViTs (24M, 86M) M3 "
        "reaches the best training and test loss against AdamW and Muon (Fig. 11), and M3 is "
        "slower than Muon per step (Fig. 12). arXiv §4.3–4.4 / Fig. 4: Delta momentum converges "
        "faster "
        "than momentum on a toy valley. Our scale is far smaller (≈1M-parameter LM for "
        f"{s['lm_steps']} steps, a 0.27M MLP), a 3-point grid per optimizer at one seed, the best "
        "rate repeated over seeds.",
        "",
        "Whether it holds here is judged from the tables above in docs/results/README.md.",
        "",
        "Hyperparameters: " + ", ".join(f"{k}={v}" for k, v in s.items()) + "; learning-rate "
        "grids: "
        + "; ".join(
            f"{p}: " + ", ".join(f"{LABELS[n]} {list(g)}" for n, g in GRIDS[p].items())
            for p in GRIDS
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/optimizer_study", type=Path)
    parser.add_argument(
        "--workdir", default="runs/optimizer_study", type=Path, help="the LM runs' checkpoints"
    )
    parser.add_argument("--data", default="real", choices=("real", "synthetic"))
    parser.add_argument("--problems", default="mlp,lm")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--quick", action="store_true", help="tiny models and data (smoke)")
    parser.add_argument(
        "--best_seeds", default="1,2", help="further seeds of each optimizer's best rate"
    )
    parser.add_argument(
        "--report_only", action="store_true", help="tables and plots from the finished runs only"
    )
    args = parser.parse_args(argv)
    problems = [p for p in args.problems.split(",") if p]
    names = [n for n in args.optimizers.split(",") if n]
    for p in problems:
        if p not in GRIDS:
            raise ValueError(f"--problems: {p!r} is not one of {tuple(GRIDS)}")
    for n in names:
        if n not in OPTIMIZERS:
            raise ValueError(f"--optimizers: {n!r} is not one of {OPTIMIZERS}")
    s = get_settings(args.quick)
    run_dir = args.out / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    best_seeds = [int(x) for x in args.best_seeds.split(",") if x]
    if s["seed"] in best_seeds:
        raise ValueError(
            f"--best_seeds={args.best_seeds} must not repeat the grid seed {s['seed']}"
        )
    runs, computed = [], 0

    def run_once(problem, name, lr, seed, prepared, config) -> dict | None:
        nonlocal computed
        suffix = "" if seed == s["seed"] else f"-s{seed}"
        path = run_dir / f"{problem}-{name}-{lr:g}{suffix}.json"
        if path.exists():
            return json.loads(path.read_text())
        if args.report_only:
            return None
        settings = dict(s, seed=seed)
        if problem == "lm":
            result = run_lm(name, lr, settings, args.data, args.workdir / path.stem)
        else:
            result = run_mlp(name, lr, settings, prepared)
        result.update(problem=problem, optimizer=name, lr=lr, seed=seed, data=args.data)
        result["load_average"] = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
        path.write_text(json.dumps(result))
        computed += 1
        print(
            f"{problem} {name:6s} lr={lr:<6g} seed {seed} val loss {fmt(result['val_loss'])} "
            f"({result['seconds']:.1f} s)",
            flush=True,
        )
        return result

    for problem in problems:
        if args.report_only:
            config = prepared = None
        elif problem == "lm":
            config = prepared = None
        else:
            config, prepared = None, mlp_data(args.data, args.quick)
        for name in names:
            grid = GRIDS[problem][name]
            for lr in grid[1:2] if args.quick else grid:  # --quick: the middle rate only
                runs.append(run_once(problem, name, lr, s["seed"], prepared, config))
            runs = [r for r in runs if r is not None]
            best = best_runs(runs, problem).get(name)
            for seed in best_seeds if best else ():
                runs.append(run_once(problem, name, best["lr"], seed, prepared, config))
            runs = [r for r in runs if r is not None]
    command_args = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report_only"]
    meta = {
        **compare.run_meta("experiments/optimizer_study.py", command_args, start, runs, computed),
        "loads": load_range(runs),
        "data": args.data,
        "settings": s,
        "best_seeds": best_seeds,
    }
    summary = {
        "meta": meta,
        "best": {
            p: {
                n: {k: v for k, v in r.items() if k not in ("train_curve",)}
                for n, r in best_runs(runs, p).items()
            }
            for p in problems
        },
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    for problem, title in (("lm", "Transformer++ on Shakespeare"), ("mlp", "MLP on Fashion-MNIST")):
        if problem in problems:
            plot(runs, problem, args.out / f"{problem}_loss.png", title)
    text = markdown(runs, meta)
    (args.out / "optimizer_study.md").write_text(text)
    print(text)


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    main()
