"""Multi-query associative recall with the models of the LM comparison.

  python experiments/recall.py                      # every model, resumable
  python experiments/recall.py --models=gated_deltanet --steps=2000
  python experiments/recall.py --report_only
  python experiments/recall.py --quick --out=/tmp/recall   # seconds, tiny models

S-NIAH needs a model to write a value into its memory and read it back hundreds of tokens later.
This study isolates that skill: each model of the language-model comparison (the same ≈2M-parameter
configs, `experiments/configs/results_lm.py`, byte vocabulary) is trained from scratch on MQAR
(`nestlearn.eval.recall`): `--pairs` key–value pairs, then `--queries` of the keys again, each
followed by its value; the loss is the cross-entropy of the answers only. Keys are bytes 0–127,
values 128–255, so chance is 1/128 per answer. Optimizer: the model's own training levels
(AdamW; Hope's CMS levels every 1/4/16 steps), `--lr` with warmup and cosine, clip 1, as in
`experiments/niah.py`.

`--gap` puts that many filler tokens between the pairs and the queries (keys 0–126, values
127–253, filler 254): with a gap beyond the short convolution and any attention window, only an
in-context memory can carry a pair to its query. `--model_overrides` changes model config keys
(dotted, e.g. `self_modifying.eta_max=1`) for a sensitivity run.

Test: fresh sequences with `--pairs` pairs (the training length) and with 2× and 4× as many pairs
(more to store, a longer context), with the in-context writes on and, for a model with memory,
off (`model.memory_writes=False`, same parameters and sequences), `--test_batches` batches of
`--batch` sequences each; reported as the accuracy of the answers (the fraction predicted by
argmax). Each finished model writes `<out>/runs/<model>_s<seed>.json` (training curve,
accuracies, wall time, load); finished models are skipped. `<out>/README.md` and `results.json`
are rewritten from the finished runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "configs"))

import results_lm

from nestlearn import models, tune_host_allocator
from nestlearn.eval import answer_training, compare, recall

VOCAB = 256  # keys 0–127, values 128–255 (the byte vocabulary of the LM comparison)
GAP_VOCAB = 254  # with a filler gap: keys 0–126, values 127–253, filler 254
TEST_SCALES = (1, 2, 4)  # test with 1×, 2×, 4× the training pairs
QUICK = {"steps": 6, "batch": 4, "pairs": 4, "queries": 4, "test_batches": 1}
LABELS = results_lm.LABELS


def run_model(name: str, args: argparse.Namespace) -> dict:
    """Trains `name` from scratch on MQAR, tests it, writes and returns its JSON record."""
    s = QUICK if args.quick else vars(args)
    steps, batch, pairs, queries = s["steps"], s["batch"], s["pairs"], s["queries"]
    config = results_lm.task_config(name, seed=args.seed, steps=steps, lr=args.lr, quick=args.quick)
    config.model.vocab_size = VOCAB
    results_lm.apply_model_overrides(config, args.model_overrides, name)
    vocab = GAP_VOCAB if args.gap else VOCAB
    sample = functools.partial(recall.mqar_batch, queries=queries, vocab=vocab, gap=args.gap)
    rng = np.random.default_rng([args.seed, 1])

    def batches():
        while True:
            b = sample(rng, batch=batch, pairs=pairs)
            yield (b.inputs, b.targets, b.answer_mask), {}

    load_start, start = os.getloadavg(), time.perf_counter()
    run = answer_training.train_on_answers(
        config,
        batches(),
        steps=steps,
        answer_weight=1.0,
        lm_weight=0.0,
        log_every=25,
        log=lambda line: print(f"  {name} {line}", flush=True),
    )
    curve = [{"step": c["step"], "loss": c["answer"], "accuracy": c["byte_acc"]} for c in run.curve]
    train_s = run.seconds
    params, rest = run.params, run.rest
    # Writes on, and (a model with in-context memory) off: same parameters, same test sequences.
    graphs = answer_training.writes_graphs(config.model, run.graphdef, params)
    accuracy = {}
    for writes, graph in graphs.items():
        logits_fn = answer_training.make_logits_fn(graph)
        test_rng = np.random.default_rng([args.seed, 2])
        accuracy[writes] = {}
        for scale in TEST_SCALES:
            hits, total = 0, 0
            for _ in range(s["test_batches"]):
                b = sample(test_rng, batch=batch, pairs=scale * pairs)
                predicted = np.argmax(np.asarray(logits_fn(params, rest, b.inputs)), axis=-1)
                hits += int(((predicted == b.targets) & b.answer_mask).sum())
                total += int(b.answer_mask.sum())
            accuracy[writes][str(scale * pairs)] = hits / total
        print(f"  {name}: writes {writes}, test accuracy by pairs {accuracy[writes]}", flush=True)
    record = {
        "model": name,
        "seed": args.seed,
        "quick": args.quick,
        "parameters": models.count_params(params),
        "protocol": {
            "steps": steps,
            "batch": batch,
            "pairs": pairs,
            "queries": queries,
            "lr": args.lr,
            "test_batches": s["test_batches"],
            "gap": args.gap,
            "model_overrides": list(args.model_overrides),
        },
        "accuracy": accuracy["on"],
        "accuracy_writes_off": accuracy.get("off"),  # None: no in-context memory
        "curve": curve,
        "train_s": train_s,
        "wall_s": time.perf_counter() - start,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "machine": compare.machine_info(),
        "code": compare.source_fingerprint(Path(__file__).resolve().parent.parent),
    }
    compare.write_json_atomic(args.out / "runs" / f"{name}_s{args.seed}.json", record)
    return record


def write_report(out: Path, command: str) -> None:
    """README.md and results.json from every finished run under `out`."""
    runs = {record["model"]: record for record in compare.read_records(out / "runs")}
    names = [m for m in results_lm.MODELS if m in runs]
    if not names:
        return
    proto = runs[names[0]]["protocol"]
    counts = list(runs[names[0]]["accuracy"])
    rows = []
    for m in names:
        r = runs[m]
        first_half = [c for c in r["curve"] if c["step"] <= r["protocol"]["steps"] // 2]
        rows.append(
            [LABELS[m], f"{r['parameters'] / 1e6:.3f}M"]
            + [f"{100 * r['accuracy'][n]:.1f}" for n in counts]
            + [
                f"{100 * r['accuracy_writes_off'][counts[0]]:.1f}"
                if r.get("accuracy_writes_off")
                else "no memory"
            ]
            + [
                f"{100 * max(c['accuracy'] for c in first_half):.0f}" if first_half else "—",
                f"{r['curve'][-1]['loss']:.3f}",
                f"{r['train_s']:.0f}",
                f"{r['load_avg_start'][0]:.1f}–{r['load_avg_end'][0]:.1f}",
            ]
        )
    table = compare.markdown_table(
        ["model", "params"]
        + [f"accuracy (%), {n} pairs" for n in counts]
        + [f"writes off (%), {counts[0]} pairs"]
        + ["best train acc. (%), first half", "final answer loss", "train s", "load"],
        rows,
    )
    (out / "results.json").write_text(json.dumps({m: runs[m]["accuracy"] for m in names}, indent=1))
    same = lambda p: {k: v for k, v in p.items() if v or k not in ("gap", "model_overrides")}
    mixed = [m for m in names if same(runs[m]["protocol"]) != same(proto)]
    warning = (
        f"\n**Warning:** {', '.join(LABELS[m] for m in mixed)} ran another protocol; see each "
        "run's `protocol` field.\n"
        if mixed
        else ""
    )
    machine = runs[names[0]]["machine"]
    walls = [runs[m]["wall_s"] for m in names]
    text = f"""# Multi-query associative recall (MQAR), models of the LM comparison

Produced by `{command} --models={",".join(names)} --steps={proto["steps"]} --batch={proto["batch"]}
--pairs={proto["pairs"]} --queries={proto["queries"]} --lr={proto["lr"]:g}
--test_batches={proto["test_batches"]} --gap={proto.get("gap", 0)} --out={out}`
(`experiments/recall.py`, sequences from `nestlearn/eval/recall.py`); every number is read from
`runs/*.json`. Regenerate with `python experiments/recall.py --report_only --out={out}`.

**Protocol.** Each model (≈2M parameters, `experiments/configs/results_lm.py`) is trained from
scratch for {proto["steps"]} steps of {proto["batch"]} sequences: {proto["pairs"]} key–value pairs
(keys bytes 0–127, distinct; values bytes 128–255), then {proto["queries"]} of the keys in random
order, each followed by its value (after {proto.get("gap", 0)} filler tokens when the gap is
positive; keys 0–126 and values 127–253 then); loss = cross-entropy of the answers only; the
model's own training levels, lr {proto["lr"]:g}, warmup, cosine, clip 1. Test: fresh sequences
with 1×, 2× and 4× the training pairs ({proto["test_batches"]} × {proto["batch"]} sequences ×
{proto["queries"]} answers each), with the model's in-context writes on (as trained) and off
(`model.memory_writes=False`, same parameters and sequences). Chance: 1/128 = 0.8%.
{warning}
**Machine.** {machine["processor"]}, {machine["cpu_count"]} CPUs, jax {machine["jax"]}; wall time
per model {min(walls):.0f}–{max(walls):.0f} s, total {sum(walls) / 60:.1f} min (shared machine:
see the load column).

{len(names)} of {len(results_lm.MODELS)} models:

{table}

"best train acc., first half" is the highest answer accuracy on a training batch logged in the
first half of training (every 25 steps): how soon retrieval appeared.
"""
    (out / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/recall"))
    parser.add_argument("--models", default=",".join(results_lm.MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--test_batches", type=int, default=4)
    parser.add_argument(
        "--gap", type=int, default=0, help="filler tokens between the pairs and the queries"
    )
    parser.add_argument(
        "--model_overrides",
        type=lambda x: [i for i in x.split(",") if i],
        default=[],
        help="'key=value,...' model config changes (dotted keys reach sub-configs)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny models and steps (smoke)")
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--compilation_cache", default="runs/jax_cache", help="'' = off")
    args = parser.parse_args(argv)
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    command = "python experiments/recall.py" + (" --quick" if args.quick else "")
    if not args.report_only:
        for name in args.models.split(","):
            if name not in results_lm.MODELS:
                parser.error(f"--models: {name!r} is not one of {results_lm.MODELS}")
            if (args.out / "runs" / f"{name}_s{args.seed}.json").exists():
                print(f"skip {name} (finished)", flush=True)
                continue
            print(f"run {name} (load {os.getloadavg()[0]:.1f})", flush=True)
            record = run_model(name, args)
            print(f"done {name}: {record['wall_s']:.0f} s", flush=True)
            write_report(args.out, command)
    write_report(args.out, command)


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    main()
