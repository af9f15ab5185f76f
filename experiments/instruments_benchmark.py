"""What the run's instruments cost: training tokens/s of the default experiment with them on vs off.

Purpose: check that the memory and level instruments (`nestlearn.train.instruments`) keep at least
90% of the training throughput of the default run (experiments/configs/default.py: Hope, 2
layers, d 128, batch 16 × 128 tokens, `train.log_every` = 10). Both arms run the same jitted
train step (`nestlearn.train.step.build_train_step`, which reports the level statistics every
step); "on" adds what the train loop adds at each logging step, one call of the instrumented step
(`build_instrument_step`: a forward pass with the memory statistics) per `log_every` steps.
Each round times `log_every` steps of each arm, in alternating order, on random tokens (the
throughput does not depend on the data); the ratio is that of the summed times over the rounds,
in wall time and in process CPU time (steadier on a shared machine), and the median of the
per-round wall-time ratios is reported beside them. Compilation happens before timing, and the
instrumented step alone is timed too (median of 3 calls, wall and CPU).

Command:
  .venv/bin/python experiments/instruments_benchmark.py [--rounds=4] [--log_every=10]
Writes docs/results/instruments_benchmark.json and prints the tokens/s of both arms.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
from flax import nnx

from nestlearn import models, tune_host_allocator
from nestlearn.train import build_levels
from nestlearn.train.instruments import build_instrument_step
from nestlearn.train.step import TrainState, build_train_step, split_model

ROOT = Path(__file__).resolve().parents[1]


def _default_config():
    path = ROOT / "experiments" / "configs" / "default.py"
    spec = importlib.util.spec_from_file_location("config_default", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main() -> None:
    tune_host_allocator()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per arm")
    parser.add_argument("--log_every", type=int, default=0, help="0: the config's log_every")
    parser.add_argument("--out", default="docs/results/instruments_benchmark.json")
    args = parser.parse_args()

    config = _default_config()
    log_every = args.log_every or config.train.log_every
    batch, seq = config.data.batch_size, config.data.seq_len
    model = models.build(config.model, rngs=nnx.Rngs(config.seed))
    graphdef, params, rest = split_model(model)
    levels = build_levels(config)
    train_step = build_train_step(
        levels, params=params, grad_clip=config.optim.grad_clip, graphdef=graphdef
    )
    instrument_step = build_instrument_step(graphdef)
    state = TrainState.create(params, levels, seed=0)
    tokens = jax.random.randint(
        jax.random.key(1), (log_every, batch, seq + 1), 0, config.model.vocab_size
    )

    def run(state, instruments: bool):
        for i in range(log_every):
            inputs, targets = tokens[i, :, :-1], tokens[i, :, 1:]
            if instruments and i == log_every - 1:  # the logging step of the window
                jax.block_until_ready(instrument_step(state.params, rest, inputs))
            state, metrics = train_step(state, rest, inputs, targets)
            jax.device_get(metrics)  # the train loop fetches the metrics every step
        return state

    start = time.perf_counter()
    state = run(state, True)  # compiles both steps
    compile_s = time.perf_counter() - start
    alone = []
    for _ in range(3):
        start, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(instrument_step(state.params, rest, tokens[0, :, :-1]))
        alone.append((time.perf_counter() - start, time.process_time() - cpu))
    instrument_s = statistics.median(w for w, _ in alone)
    instrument_cpu_s = statistics.median(c for _, c in alone)

    times = {"off": [], "on": []}
    cpu_times = {"off": [], "on": []}
    for r in range(args.rounds):
        for arm in ("off", "on") if r % 2 == 0 else ("on", "off"):
            start, cpu = time.perf_counter(), time.process_time()
            state = run(state, arm == "on")
            times[arm].append(time.perf_counter() - start)
            cpu_times[arm].append(time.process_time() - cpu)
            print(f"round {r} {arm}: {log_every * batch * seq / times[arm][-1]:.0f} tokens/s")
    rate = {arm: args.rounds * log_every * batch * seq / sum(t) for arm, t in times.items()}
    ratio = rate["on"] / rate["off"]
    cpu_ratio = sum(cpu_times["off"]) / sum(cpu_times["on"])
    median = statistics.median(off / on for on, off in zip(times["on"], times["off"]))
    result = {
        "config": "experiments/configs/default.py",
        "log_every": log_every,
        "rounds": args.rounds,
        "tokens_per_s_off": rate["off"],
        "tokens_per_s_on": rate["on"],
        "ratio_on_off": ratio,
        "cpu_time_ratio_on_off": cpu_ratio,
        "median_round_ratio": median,
        "instrument_step_s": instrument_s,
        "instrument_step_cpu_s": instrument_cpu_s,
        "compile_s": compile_s,
        "seconds": times,
        "cpu_seconds": cpu_times,
        "load_avg_1min": os.getloadavg()[0],
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
    }
    print(
        f"instruments off {rate['off']:.0f} tokens/s, on {rate['on']:.0f} tokens/s: "
        f"ratio {ratio:.3f} (median round {median:.3f}, CPU time {cpu_ratio:.3f}); "
        f"one instrumented step {instrument_s:.2f} s ({instrument_cpu_s:.2f} s CPU)"
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
