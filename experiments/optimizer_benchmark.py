"""Deep optimizers on the toy valley of §4.4 and on sklearn digits (arXiv 2512.24695).

(a) The toy objective of §4.4, ψ(r, θ) = r² + k (r − θ + a sin(ω r))², started from (−3.5, 2):
a curved, narrow valley whose floor θ = r + a sin(ω r) leads to the minimum ψ = 0 at (0, 0).
We use k = 10, a = 0.5, ω = 3 (the paper does not print them; these make the valley curved and
the problem ill-conditioned, about 40:1). Each optimizer gets a small learning-rate grid; the
table reports the fewest steps to ψ ≤ 1e-4 (within `--toy-steps`).

(b) A 64-64-10 tanh MLP on sklearn's 8×8 digits (1,437 train / 360 test), minibatches of 64;
each optimizer gets a three-point learning-rate grid, the rate with the lowest final training
loss is kept, and its test accuracy is reported.

    python experiments/optimizer_benchmark.py [--quick] [--out docs/results/optimizers]

Writes results.json, toy_trajectories.png and digits_loss.png to --out and prints a markdown
table. The full run takes about two minutes on two CPU cores.
"""

import argparse
import functools
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import nestlearn.optim as no
from nestlearn import tune_host_allocator
from nestlearn.models import classifier

matplotlib.use("Agg")
from matplotlib import pyplot as plt

TOY_K, TOY_A, TOY_OMEGA = 10.0, 0.5, 3.0
TOY_START = (-3.5, 2.0)
TOY_TOL = 1e-4


def toy_objective(p):
    """ψ(r, θ) = r² + k (r − θ + a sin(ω r))²; p is a [1, 2] matrix (r, θ)."""
    r, theta = p[0, 0], p[0, 1]
    return r**2 + TOY_K * (r - theta + TOY_A * jnp.sin(TOY_OMEGA * r)) ** 2


def toy_optimizers(quick):
    """name -> (learning-rate grid, factory); normalized-step methods get larger rates."""
    grids = {
        "SGD-momentum": (
            (0.003, 0.01, 0.015, 0.02, 0.03),
            lambda lr: optax.sgd(lr, momentum=0.9),
        ),
        "Delta momentum": (
            (0.003, 0.01, 0.015, 0.02, 0.03),
            lambda lr: no.delta_momentum(lr, 0.9, form="arxiv", erase_rate=1e-4),
        ),
        "DMGD": (
            (0.03, 0.1, 0.2, 0.3, 0.5),
            lambda lr: no.deep_momentum(lr, 0.999, 0.9, inner_lr=0.01),
        ),
        "Adam": ((0.1, 0.3, 1.0, 3.0), optax.adam),
        "NS momentum": (
            (0.01, 0.03, 0.1, 0.3),
            lambda lr: no.newton_schulz_momentum(lr, 0.9, 5, shape_scaling=False),
        ),
    }
    if quick:
        grids = {k: (lrs[1:3], make) for k, (lrs, make) in grids.items()}
    return grids


def run_toy(tx, steps):
    p0 = jnp.asarray([TOY_START], jnp.float32)

    def step(carry, _):
        p, s = carry
        g = jax.grad(toy_objective)(p)
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), (p[0], toy_objective(p))

    _, (path, values) = jax.jit(lambda c: jax.lax.scan(step, c, length=steps))((p0, tx.init(p0)))
    values = np.asarray(values)
    reached = np.flatnonzero(values <= TOY_TOL)
    return (int(reached[0]) + 1 if reached.size else None), np.asarray(path), values


def toy_benchmark(steps, quick):
    results = {}
    for name, (lrs, make) in toy_optimizers(quick).items():
        best = None
        for lr in lrs:
            hit, path, values = run_toy(make(lr), steps)
            final = float(values[-1]) if np.isfinite(values[-1]) else math.inf
            key = (hit if hit is not None else steps + 1, final)
            if best is None or key < best[0]:
                best = (key, lr, hit, path, final)
        _, lr, hit, path, final = best
        results[name] = {"lr_grid_value": lr, "steps_to_tol": hit, "final_psi": final, "path": path}
    return results


def plot_toy(results, out):
    r = np.linspace(-4.5, 1.5, 300)
    t = np.linspace(-4.0, 3.0, 300)
    rr, tt = np.meshgrid(r, t)
    psi = rr**2 + TOY_K * (rr - tt + TOY_A * np.sin(TOY_OMEGA * rr)) ** 2
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.contour(rr, tt, np.log10(psi + 1e-6), levels=25, cmap="Greys", linewidths=0.6)
    for name, res in results.items():
        path = np.concatenate([np.asarray([TOY_START]), res["path"]])
        ax.plot(path[:, 0], path[:, 1], lw=1.2, label=f"{name} (steps={res['steps_to_tol']})")
    ax.plot(*TOY_START, "ko")
    ax.plot(0, 0, "r*", ms=12)
    ax.set(xlabel="r", ylabel="θ", xlim=(-4.5, 1.5), ylim=(-4, 3))
    ax.set_title(f"ψ(r,θ) = r² + {TOY_K:g}(r − θ + {TOY_A:g} sin({TOY_OMEGA:g} r))²")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "toy_trajectories.png", dpi=120)
    plt.close(fig)


def load_digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x = x - x.mean(0)
    return train_test_split(x, data.target.astype(np.int32), test_size=0.2, random_state=0)


def init_mlp(key, sizes=(64, 64, 10)):
    return classifier.mlp_init(key, sizes, activation="tanh")


mlp_logits = functools.partial(classifier.mlp_logits, activation="tanh")
mlp_loss = functools.partial(classifier.mlp_loss, activation="tanh")


def digits_optimizers(quick):
    grids = {
        "AdamW": ((1e-3, 3e-3, 1e-2), lambda lr: optax.adamw(lr, weight_decay=1e-4)),
        "SGD-momentum": ((0.03, 0.1, 0.3), lambda lr: optax.sgd(lr, momentum=0.9)),
        "Delta momentum": (
            (0.03, 0.1, 0.3),
            lambda lr: optax.chain(
                optax.clip_by_global_norm(1.0), no.delta_momentum(lr, 0.9, form="arxiv")
            ),
        ),
        "DMGD": ((1.0, 3.0, 10.0), lambda lr: no.deep_momentum(lr, 0.999, 0.9, inner_lr=0.01)),
        "Muon (NS momentum)": (
            (0.01, 0.03, 0.1),
            lambda lr: no.newton_schulz_momentum(lr, 0.95, 5),
        ),
        "M3": ((3e-4, 1e-3, 3e-3), lambda lr: no.m3(lr, slow_period=16, form="printed", ema=False)),
    }
    if quick:
        grids = {k: ((lrs[1],), make) for k, (lrs, make) in grids.items()}
    return grids


def train_digits(tx, data, steps, batch, seed=0):
    x_tr, x_te, y_tr, y_te = (jnp.asarray(a) for a in data)
    params = init_mlp(jax.random.key(seed))
    n = x_tr.shape[0]
    idx = jax.random.randint(jax.random.key(seed + 1), (steps, batch), 0, n)

    def step(carry, batch_idx):
        p, s = carry
        loss, g = jax.value_and_grad(mlp_loss)(p, x_tr[batch_idx], y_tr[batch_idx])
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    @jax.jit
    def run(params):
        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), idx)
        accuracy = jnp.mean(jnp.argmax(mlp_logits(params, x_te), -1) == y_te)
        return losses, mlp_loss(params, x_tr, y_tr), accuracy

    losses, train_loss, accuracy = run(params)
    return np.asarray(losses), float(train_loss), float(accuracy)


def digits_benchmark(steps, batch, quick):
    data = load_digits_split()
    results = {}
    for name, (lrs, make) in digits_optimizers(quick).items():
        best = None
        for lr in lrs:
            start = time.perf_counter()
            losses, train_loss, accuracy = train_digits(make(lr), data, steps, batch)
            seconds = time.perf_counter() - start
            score = train_loss if np.isfinite(train_loss) else math.inf
            if best is None or score < best["train_loss"]:
                best = dict(lr=lr, train_loss=score, test_accuracy=accuracy, seconds=seconds)
                best["curve"] = losses
        results[name] = best
    return results


def plot_digits(results, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, res in results.items():
        curve = res["curve"]
        window = max(1, len(curve) // 50)
        smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
        ax.plot(smooth, label=f"{name} (lr={res['lr']:g})")
    ax.set(xlabel="step", ylabel="train loss (moving average)", yscale="log")
    ax.set_title("64-64-10 MLP on sklearn digits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "digits_loss.png", dpi=120)
    plt.close(fig)


def markdown(toy, digits, toy_steps):
    lines = [
        f"| toy valley ψ ≤ {TOY_TOL:g} | steps (of {toy_steps}) | best lr in grid | final ψ |",
        "|---|---|---|---|",
    ]
    for name, res in toy.items():
        steps = res["steps_to_tol"] if res["steps_to_tol"] is not None else "not reached"
        lines.append(f"| {name} | {steps} | {res['lr_grid_value']:g} | {res['final_psi']:.2e} |")
    lines += [
        "",
        "| digits MLP | best lr | final train loss | test accuracy | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, res in digits.items():
        lines.append(
            f"| {name} | {res['lr']:g} | {res['train_loss']:.4f} | "
            f"{100 * res['test_accuracy']:.1f}% | {res['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/optimizers", type=pathlib.Path)
    parser.add_argument("--quick", action="store_true", help="a small grid and few steps")
    parser.add_argument("--toy-steps", type=int, default=None)
    parser.add_argument("--digits-steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    toy_steps = args.toy_steps or (300 if args.quick else 1500)
    digits_steps = args.digits_steps or (100 if args.quick else 600)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    toy = toy_benchmark(toy_steps, args.quick)
    plot_toy(toy, args.out)
    digits = digits_benchmark(digits_steps, args.batch, args.quick)
    plot_digits(digits, args.out)
    table = markdown(toy, digits, toy_steps)
    print(table)
    summary = {
        "toy": {
            "objective": "r^2 + k (r - theta + a sin(omega r))^2",
            "k": TOY_K,
            "a": TOY_A,
            "omega": TOY_OMEGA,
            "start": TOY_START,
            "tolerance": TOY_TOL,
            "steps": toy_steps,
            "results": {
                k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in toy.items()
            },
        },
        "digits": {
            "steps": digits_steps,
            "batch": args.batch,
            "results": {
                k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in digits.items()
            },
        },
        "seconds": time.perf_counter() - start,
        "quick": args.quick,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nwrote {args.out}/results.json, toy_trajectories.png, digits_loss.png "
        f"in {summary['seconds']:.0f} s"
    )


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    main()
