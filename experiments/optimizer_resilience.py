"""How wide is each optimizer's stable learning-rate band, and how does it take gradient noise?

The claim measured: deep optimizers derived from an ℓ2 (regression) inner objective are more
resilient variants of momentum than the dot-product ones (§4.3–4.4, arXiv 2512.24695). Every
optimizer runs with its library defaults, no gradient clipping and a constant rate, on a
10-point log grid 1e-4 … 1, at 3 seeds (initialisation and data order / noise draws):

- (a) `lsq`: least squares 64 × 8 → 4 (inputs N(0, 4), targets a random linear map plus
  N(0, 0.25) noise, so the optimum loss is ≈ 0.43 > 0), full-batch, 300 steps.
- (b) `mlp`: the Fashion-MNIST ReLU MLP of `experiments/optimizer_study.py` (784-128-128-10,
  batches of 128, 300 steps); the final loss is the loss on its 5,000 held-out images.
- (c) `lm`: the byte LM of `experiments/optimizer_study.py` (Transformer++ on Shakespeare,
  `--lm_steps` steps, noise-free only), one run per (rate, seed); slow on a CPU.

Gradient noise: N(0, (σ · rms(g₀))²) added to every coordinate of every gradient, σ in
`NOISE` (rms(g₀): the rms of the first gradient at seed 0). Reported per optimizer: the stable
band (grid points whose final loss, mean over seeds, lies within 10% of the best final loss of
any optimizer on the problem; a non-finite seed makes the point unstable), the points that
diverged (final loss non-finite or above the initial loss), and the best final loss over the
grid at each noise level.

    python experiments/optimizer_resilience.py                      # lsq, mlp
    python experiments/optimizer_resilience.py --problems lsq --quick   # smoke run, seconds
    python experiments/optimizer_resilience.py --problems lm --lm_steps 500 [--lm_seeds 0]

Each (problem, optimizer, noise) of (a) and (b) writes one JSON under `--out`/runs (all rates
and seeds of it at once: they run as one vmapped program), each (optimizer, seed) of (c) one
(`lm-<optimizer>-seed<s>.json`, merged over the seeds present); a rerun skips finished records,
`--report_only` rebuilds the tables and plots (`resilience_<problem>.png`: final loss against the
rate, best loss against the noise level) from them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

# Delta momentum solves one small SPD system per matrix leaf with LAPACK (Cholesky). Vmapped over
# the grid (30 runs), XLA:CPU's concurrency-optimized scheduler runs the leaves' batched solves at
# once, each waits for batch tasks on the same 2-thread pool, and the process deadlocks (jaxlib
# 0.10.2, 2 cores; docs/optimizers.md, "Known limits"). Scheduling them in order avoids it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_concurrency_optimized_scheduler=false"
).strip()

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nestlearn.optim as no
from nestlearn import tune_host_allocator
from nestlearn.eval import compare

#: name -> (label, factory of the learning rate); every optimizer at its library defaults.
OPTIMIZERS = {
    "sgdm": ("SGD momentum 0.9", lambda lr: optax.sgd(lr, momentum=0.9)),
    "adamw": ("AdamW", lambda lr: optax.adamw(lr, weight_decay=1e-4)),
    "muon": ("Muon (NS momentum)", lambda lr: no.newton_schulz_momentum(lr)),
    "precond": (
        "Preconditioned momentum (P = RMS)",
        lambda lr: no.preconditioned_momentum(lr, 0.9, optax.scale_by_rms()),
    ),
    "delta": ("Delta momentum (implicit, default)", lambda lr: no.delta_momentum(lr)),
    "delta_printed": (
        "Delta momentum (Eq. 49 printed)",
        lambda lr: no.delta_momentum(lr, form="arxiv"),
    ),
    "dmgd": ("DMGD (ℓ2, default)", lambda lr: no.deep_momentum(lr)),
    "dmgd_dot": ("DMGD (dot, printed)", lambda lr: no.deep_momentum(lr, objective="dot")),
    "m3": ("M3 (combined, EMA, default)", lambda lr: no.m3(lr)),
    "m3_separate": (
        "M3 (each level orthogonalized, EMA)",
        lambda lr: no.m3(lr, form="preconditioned"),
    ),
    "m3_printed": (
        "M3 (Algorithm 1 printed)",
        lambda lr: no.m3(lr, form="printed", ema=False),
    ),
    # The two halves of M3's mend, each alone: which change makes it train.
    "m3_printed_ema": ("M3 (printed order, EMA)", lambda lr: no.m3(lr, form="printed")),
    "m3_accumulated": (
        "M3 (each level orthogonalized, accumulated)",
        lambda lr: no.m3(lr, form="preconditioned", ema=False),
    ),
    "m3_no_slow": ("M3 (default, α = 0: no slow level)", lambda lr: no.m3(lr, alpha=0.0)),
}
GRID = tuple(float(x) for x in np.logspace(-4, 0, 10))
NOISE = (0.0, 0.1, 0.3, 1.0)
SEEDS = (0, 1, 2)
BAND_TOLERANCE = 0.1


def _study():
    """experiments/optimizer_study.py, whose MLP and LM pieces this study reuses."""
    spec = importlib.util.spec_from_file_location(
        "optimizer_study", Path(__file__).with_name("optimizer_study.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- problems


def lsq_problem(settings: dict):
    """(init(seed), loss(params, batch), final_loss(params, batch), batch indices or None)."""
    kx, kw, kn = jax.random.split(jax.random.key(0), 3)
    x = 2.0 * jax.random.normal(kx, (64, 8))
    y = x @ jax.random.normal(kw, (8, 4)) + 0.5 * jax.random.normal(kn, (64, 4))

    def init(seed):
        return {"w": jax.random.normal(jax.random.key(seed), (8, 4)), "b": jnp.zeros((4,))}

    def loss(p, batch):
        del batch
        return 0.5 * jnp.mean(jnp.sum((x @ p["w"] + p["b"] - y) ** 2, -1))

    return init, loss, loss, None


def mlp_problem(settings: dict):
    study = _study()
    x_tr, y_tr, x_va, y_va, _, _ = (
        jnp.asarray(a) for a in study.mlp_data(settings["data"], settings["quick"])
    )
    steps, batch = settings["steps"], settings["mlp_batch"]
    idx = np.stack(
        [
            np.random.default_rng([seed, 2]).permutation(x_tr.shape[0])[: steps * batch]
            for seed in settings["seeds"]
        ]
    ).reshape(len(settings["seeds"]), steps, batch)

    def init(seed):
        return study.mlp_init(seed, settings["mlp_hidden"])

    def loss(p, b):
        return study.mlp_loss(p, x_tr[b], y_tr[b])

    def final_loss(p, b):
        del b
        return study.mlp_loss(p, x_va, y_va)

    return init, loss, final_loss, jnp.asarray(idx)


PROBLEMS = {"lsq": lsq_problem, "mlp": mlp_problem}


def run_grid(problem, name: str, noise: float, settings: dict) -> dict:
    """All rates × seeds of one optimizer at one noise level, as one jitted, vmapped program."""
    init, loss, final_loss, batches = problem
    factory = OPTIMIZERS[name][1]
    seeds = jnp.asarray(settings["seeds"])
    steps = settings["steps"]
    g0 = jax.grad(loss)(init(0), None if batches is None else batches[0, 0])
    g_rms = float(
        jnp.sqrt(jnp.mean(jnp.concatenate([jnp.ravel(g) ** 2 for g in jax.tree.leaves(g0)])))
    )
    sigma = noise * g_rms

    def one(lr, seed_index):
        tx = factory(lr)
        params = init(seeds[seed_index])
        key = jax.random.fold_in(jax.random.key(17), seeds[seed_index])

        def step(carry, t):
            p, s = carry
            b = None if batches is None else batches[seed_index, t]
            value, g = jax.value_and_grad(loss)(p, b)
            leaves, treedef = jax.tree.flatten(g)
            keys = jax.random.split(jax.random.fold_in(key, t), len(leaves))
            g = treedef.unflatten(
                [x + sigma * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
            )
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), value

        (p, _), curve = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
        return final_loss(p, None), curve

    lrs = jnp.asarray(settings["grid"])
    run = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))  # [lr, seed]
    start = time.perf_counter()
    final, curves = run(lrs, jnp.arange(len(settings["seeds"])))
    final, curves = np.asarray(final, np.float64), np.asarray(curves, np.float64)
    every = max(1, steps // 50)
    return {
        "grid": list(settings["grid"]),
        "seeds": list(settings["seeds"]),
        "noise": noise,
        "noise_std": sigma,
        "final_loss": [[_finite_or_inf(v) for v in row] for row in final],  # [lr][seed]
        "curves": [[[_finite_or_inf(v) for v in c[::every]] for c in row] for row in curves],
        "curve_every": every,
        "seconds": time.perf_counter() - start,
    }


def run_lm_grid(name: str, settings: dict, seed: int) -> dict:
    """The byte LM of the optimizer study at one seed: one run per rate, constant, no clip."""
    from flax import nnx

    from nestlearn import models
    from nestlearn.core import Level
    from nestlearn.data.dataset import load_dataset
    from nestlearn.data.iterator import BatchIterator, eval_batches
    from nestlearn.train.step import TrainState, build_eval_step, build_train_step, split_model

    study = _study()
    s = dict(study.get_settings(settings["quick"]), lm_steps=settings["lm_steps"])
    config = study.lm_config(s, settings["data"])
    dataset = load_dataset(config.data)
    val = eval_batches(
        dataset.val, batch_size=s["lm_batch"], seq_len=s["lm_seq"], max_batches=s["lm_eval_batches"]
    )
    final = []
    initial = None
    start = time.perf_counter()
    for lr in settings["grid"]:
        model = models.build(config.model, rngs=nnx.Rngs(seed))
        graphdef, params, rest = split_model(model)
        levels = (Level("backbone", None, OPTIMIZERS[name][1](lr)),)
        train_step = build_train_step(levels, params=params, grad_clip=0.0, graphdef=graphdef)
        eval_step = build_eval_step(graphdef)
        state = TrainState.create(params, levels, seed=seed)
        iterator = BatchIterator(
            dataset.train, batch_size=s["lm_batch"], seq_len=s["lm_seq"], seed=seed
        )
        for step in range(s["lm_steps"]):
            batch = next(iterator)
            state, metrics = train_step(state, rest, batch.inputs, batch.targets)
            if initial is None and step == 0:
                initial = float(metrics["loss"])
        # The train step skips non-finite updates; a run that skipped any counts as diverged.
        value = np.mean([float(eval_step(state.params, rest, b.inputs, b.targets)) for b in val])
        final.append([_finite_or_inf(value) if int(state.skipped) == 0 else math.inf])
        print(f"lm {name} lr={lr:g} seed {seed}: {final[-1][0]:.4g}", flush=True)
    return {
        "grid": list(settings["grid"]),
        "seeds": [seed],
        "noise": 0.0,
        "noise_std": 0.0,
        "initial_loss": initial,
        "final_loss": final,
        "seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------- report


def _finite_or_inf(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else math.inf


def summarise(records: dict) -> dict:
    """problem -> optimizer -> band, divergences and best loss per noise level."""
    out = {}
    for problem, by_name in records.items():
        clean = {n: r[0.0] for n, r in by_name.items() if 0.0 in r}
        if not clean:
            continue
        means = {n: _seed_means(r) for n, r in clean.items()}
        best = min(min(m) for m in means.values())
        out[problem] = {"best_loss": best}
        for name, m in means.items():
            r = clean[name]
            own = min(m)
            row = {
                "band": [lr for lr, v in zip(r["grid"], m) if v <= (1 + BAND_TOLERANCE) * best],
                "own_band": [
                    lr
                    for lr, v in zip(r["grid"], m)
                    if math.isfinite(own) and v <= (1 + BAND_TOLERANCE) * own
                ],
                "diverged": [
                    lr
                    for lr, row in zip(r["grid"], r["final_loss"])
                    if any(
                        not math.isfinite(v) or v > _initial_loss(r, s) for s, v in enumerate(row)
                    )
                ],
                "best_lr": r["grid"][int(np.argmin(m))],
                "seeds": list(r["seeds"]),
                "best": {},
            }
            for noise, rec in sorted(by_name[name].items()):
                nm = _seed_means(rec)
                i = int(np.argmin(nm))
                row["best"][str(noise)] = {"loss": nm[i], "lr": rec["grid"][i]}
            out[problem][name] = row
    return out


def merge_seeds(records: list[dict]) -> dict:
    """One record of several single-seed LM records of an optimizer (seeds in the given order)."""
    first = records[0]
    for r in records[1:]:
        if r["grid"] != first["grid"]:
            raise ValueError(f"LM records of {first['optimizer']} have different rate grids")
    return {
        **first,
        "seeds": [s for r in records for s in r["seeds"]],
        "final_loss": [
            [v for r in records for v in r["final_loss"][i]] for i in range(len(first["grid"]))
        ],
        "seconds": sum(r["seconds"] for r in records),
    }


def _initial_loss(record: dict, seed_index: int) -> float:
    """The loss before the first step at a seed (the LM records keep seed 0's only)."""
    if "curves" in record:
        return record["curves"][0][seed_index][0]
    return record["initial_loss"]


def _seed_means(record: dict) -> list[float]:
    return [
        float(np.mean(row)) if all(math.isfinite(v) for v in row) else math.inf
        for row in record["final_loss"]
    ]


def _fmt(x: float) -> str:
    return "diverged" if not math.isfinite(x) else f"{x:.4g}"


def markdown(summary: dict, meta: dict) -> str:
    lines = [
        "# Optimizer resilience: stable learning-rate band and gradient noise",
        "",
        f"Command: `{meta['command']}`  ",
        "Machine: {processor}, {cpu_count} CPUs, {platform}, jax {jax}, {device}; ".format(
            **meta["machine"]
        )
        + "1-minute load average (low, high, runs without) "
        f"{meta['loads']} (a shared machine: seconds are contended)  ",
        f"Compute: {meta['run_seconds']:.0f} s over {meta['total']} records "
        f"({meta['computed']} computed by this invocation)  ",
        f"Grid: {len(meta['settings']['grid'])} rates, log-spaced 1e-4 … 1; "
        f"seeds {list(meta['settings']['seeds'])}; constant rate, "
        "no clipping, library defaults. Band: grid points whose final loss (mean over seeds) "
        f"is within {BAND_TOLERANCE:.0%} of the best of any optimizer on the problem "
        "(own band: of the optimizer's own best). Diverged: some seed ends non-finite or "
        "above the initial loss. Noise σ: Gaussian noise of σ × rms(g₀) on every gradient "
        "coordinate; best final loss over the grid.",
        "",
    ]
    titles = {
        "lsq": "(a) Least squares 64 × 8 → 4, 300 full-batch steps (final training loss)",
        "mlp": "(b) Fashion-MNIST MLP 784-128-128-10, 300 steps of 128 (final held-out loss)",
        "lm": "(c) Byte LM on Shakespeare (final validation loss, nats/byte)",
    }
    for problem, rows in summary.items():
        noises = sorted({k for n, r in rows.items() if n != "best_loss" for k in r["best"]})
        lines += [
            f"## {titles.get(problem, problem)}",
            "",
            f"Best final loss of any optimizer: {rows['best_loss']:.4g}. Seeds: "
            + "; ".join(sorted({str(r["seeds"]) for n, r in rows.items() if n != "best_loss"}))
            + ".",
            "",
            f"| optimizer | band (of {len(meta['settings']['grid'])}) | band rates | own band "
            "| diverged at | best lr | " + " | ".join(f"best loss, σ {k}" for k in noises) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(noises),
        ]
        order = sorted(
            (n for n in rows if n != "best_loss"),
            key=lambda n: (-len(rows[n]["band"]), rows[n]["best"]["0.0"]["loss"]),
        )
        for name in order:
            r = rows[name]
            band = r["band"]
            span = f"{band[0]:.2g} … {band[-1]:.2g}" if band else "—"
            div = ", ".join(f"{x:.2g}" for x in r["diverged"]) or "none"
            lines.append(
                f"| {OPTIMIZERS[name][0]} | {len(band)} | {span} | {len(r['own_band'])} | {div} "
                f"| {r['best_lr']:.2g} | "
                + " | ".join(
                    f"{_fmt(r['best'][k]['loss'])} (lr {r['best'][k]['lr']:.2g})"
                    if k in r["best"]
                    else "—"
                    for k in noises
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(records: dict, out: Path) -> list[Path]:
    """One PNG per problem: final loss against the rate (σ 0) and best loss against σ.

    Args:
      records: problem -> optimizer -> noise -> record.
      out: directory of the PNGs (`resilience_<problem>.png`).

    Returns:
      The written paths. A rate whose mean final loss is non-finite or above 3× the initial
      loss is drawn as a cross on the top edge.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for problem, by_name in records.items():
        clean = {n: r[0.0] for n, r in by_name.items() if 0.0 in r}
        if not clean:
            continue
        means = {n: np.asarray(_seed_means(r)) for n, r in clean.items()}
        finite = np.concatenate([m[np.isfinite(m)] for m in means.values()])
        # The axis ends at 3× the initial loss; a point above it or non-finite is a cross there.
        high = 3 * max(_initial_loss(r, 0) for r in clean.values())
        low = finite.min() / 1.5
        fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 4.6), dpi=110)
        styles = ["-", "--", ":", "-."]
        for i, (name, m) in enumerate(means.items()):
            grid = np.asarray(clean[name]["grid"])
            (line,) = left.plot(
                grid,
                np.where(m <= high, m, np.nan),
                styles[i // 10 % 4],
                marker="o",
                ms=3,
                lw=1.2,
                label=OPTIMIZERS[name][0],
            )
            bad = ~(m <= high)
            left.plot(grid[bad], np.full(bad.sum(), high), "x", color=line.get_color(), ms=7)
            noises = sorted(by_name[name])
            if len(noises) > 1:
                best = [min(_seed_means(by_name[name][k])) for k in noises]
                right.plot(
                    noises,
                    np.where(np.isfinite(best), best, np.nan),
                    styles[i // 10 % 4],
                    marker="o",
                    ms=3,
                    color=line.get_color(),
                    label=OPTIMIZERS[name][0],
                )
        left.set(
            xscale="log",
            yscale="log",
            ylim=(low, high * 1.05),
            xlabel="learning rate",
            ylabel="final loss (mean over seeds)",
            title=f"{problem}: σ 0 (× = non-finite or > 3× the initial loss)",
        )
        right.set(
            yscale="log",
            xlabel="gradient noise σ (× rms of the first gradient)",
            ylabel="best final loss over the grid",
            title=f"{problem}: gradient noise",
        )
        for ax in (left, right):
            ax.grid(alpha=0.3)
        left.legend(fontsize=6.5, ncol=2)
        fig.tight_layout()
        path = out / f"resilience_{problem}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/optimizers/resilience", type=Path)
    parser.add_argument("--problems", default="lsq,mlp")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--data", default="real", choices=("real", "synthetic"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lm_steps", type=int, default=500)
    parser.add_argument(
        "--lm_seeds", default="0,1,2", help="seeds of (c), one record per optimizer and seed"
    )
    parser.add_argument(
        "--noise", default=",".join(f"{x:g}" for x in NOISE), help="noise levels σ to run"
    )
    parser.add_argument("--quick", action="store_true", help="3 rates, 1 seed, 20 steps (smoke)")
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args(argv)
    problems = [p for p in args.problems.split(",") if p]
    names = [n for n in args.optimizers.split(",") if n]
    for p in problems:
        if p not in (*PROBLEMS, "lm"):
            raise ValueError(f"--problems: {p!r} is not one of {(*PROBLEMS, 'lm')}")
    for n in names:
        if n not in OPTIMIZERS:
            raise ValueError(f"--optimizers: {n!r} is not one of {tuple(OPTIMIZERS)}")
    settings = dict(
        grid=GRID[::4] if args.quick else GRID,
        seeds=SEEDS[:1] if args.quick else SEEDS,
        noise=NOISE[:2] if args.quick else tuple(float(x) for x in args.noise.split(",") if x),
        steps=20 if args.quick else args.steps,
        lm_steps=4 if args.quick else args.lm_steps,
        lm_seeds=(0,) if args.quick else tuple(int(x) for x in args.lm_seeds.split(",") if x),
        mlp_hidden=16 if args.quick else 128,
        mlp_batch=32 if args.quick else 128,
        data=args.data,
        quick=args.quick,
    )
    run_dir = args.out / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    start, computed = time.perf_counter(), 0
    records: dict = {}
    for problem in problems:
        prepared = None
        for name in names:
            if problem == "lm":
                done = []
                for seed in settings["lm_seeds"]:
                    path = run_dir / f"lm-{name}-seed{seed}.json"
                    if path.exists():
                        done.append(json.loads(path.read_text()))
                    elif not args.report_only:
                        record = run_lm_grid(name, settings, seed)
                        record.update(problem="lm", optimizer=name, steps=settings["lm_steps"])
                        record["load_average"] = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
                        path.write_text(json.dumps(record))
                        computed += 1
                        done.append(record)
                if done:
                    records.setdefault("lm", {}).setdefault(name, {})[0.0] = merge_seeds(done)
                continue
            for noise in settings["noise"]:
                path = run_dir / f"{problem}-{name}-noise{noise:g}.json"
                if path.exists():
                    record = json.loads(path.read_text())
                elif args.report_only:
                    continue
                else:
                    prepared = prepared or PROBLEMS[problem](settings)
                    record = run_grid(prepared, name, noise, settings)
                    record.update(problem=problem, optimizer=name, steps=settings["steps"])
                    record["load_average"] = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
                    path.write_text(json.dumps(record))
                    computed += 1
                    means = _seed_means(record)
                    print(
                        f"{problem} {name} σ {noise:g}: best {_fmt(min(means))} "
                        f"({record['seconds']:.0f} s)",
                        flush=True,
                    )
                records.setdefault(problem, {}).setdefault(name, {})[noise] = record
    summary = summarise(records)
    command_args = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report_only"]
    all_records = [r for by in records.values() for rs in by.values() for r in rs.values()]
    meta = compare.run_meta(
        "experiments/optimizer_resilience.py", command_args, start, all_records, computed
    )
    meta["loads"] = compare.load_range(all_records)
    meta["settings"] = {k: v for k, v in settings.items() if k != "quick"}
    (args.out / "resilience.json").write_text(
        json.dumps({"meta": meta, "summary": summary}, indent=1)
    )
    text = markdown(summary, meta)
    (args.out / "resilience.md").write_text(text)
    plot(records, args.out)
    print(text)


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    main()
