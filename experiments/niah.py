"""S-NIAH-1/2/3 (passkey, number, uuid) in Shakespeare haystacks (issue 6 item 2).

  python experiments/niah.py                   # every model whose seed-0 LM run has finished
  python experiments/niah.py --models=hope,transformer_pp
  python experiments/niah.py --report_only
  python experiments/niah.py --quick --lm_out=/tmp/lm --lm_workdir=/tmp/lm_runs --out=/tmp/niah

**Protocol (the same for every model).** At 2M parameters no model retrieves a needle it was
never trained to retrieve, so each model is *fine-tuned on the retrieval format*: start from the
seed-0 checkpoint of the language-model comparison (`experiments/lm_compare.py`; same parameters,
same pre-training tokens for every model), then `--steps` AdamW steps (the model's own training
levels, CMS periods included; lr `FT_LR`, warmup, cosine) on batches of `TRAIN_BATCH` examples of
`TRAIN_LENGTH` = 1024 tokens whose haystacks come from the *training* plays, the three tasks in
turn and the needle depth uniform in [0, 1]. The loss is the mean next-byte loss over the whole
example plus the mean loss over the answer bytes (so that the answer, 7–36 bytes of 1024, is half
of the signal and the model keeps modelling the text). Fine-tuning from the LM checkpoint rather
than training on a mix from scratch reuses the comparison's compute and starts every model from
the same kind of point (a matched byte-level Shakespeare LM).

**Test.** Haystacks from the held-out *validation* plays; lengths 1K/2K/4K/8K (`TEST_LENGTHS`),
depths 0, 0.25, 0.5, 0.75, 1 (`DEPTHS`), `--samples` examples per (task, length, depth) with new
keys and values; scored by `nestlearn.eval.niah.score` (greedy retrieval of the whole value,
RULER's exact match; also the per-byte accuracy of the value). Each finished model writes
`<out>/runs/<model>_s<seed>.json`; finished models are skipped (resumable by model).
`<out>/README.md`, `results.json`, `heatmap_exact.png` and `heatmap_token.png` are rewritten from
the finished runs.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent / "configs"))

import results_lm

from nestlearn.eval import compare, niah
from nestlearn.optim.scheduler import nested
from nestlearn.train.levels import build_levels
from nestlearn.train.trainer import build_run, restore

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "docs/results/niah", "Directory of the run records, tables, heat maps.")
flags.DEFINE_string("lm_workdir", "runs/lm_compare", "Workdirs of the LM comparison's runs.")
flags.DEFINE_string("lm_out", "docs/results/lm", "Records of the LM comparison (finished runs).")
flags.DEFINE_list("models", list(results_lm.MODELS), "Models to fine-tune and test.")
flags.DEFINE_integer("seed", 0, "Seed of the LM run to start from, and of the examples.")
flags.DEFINE_integer("steps", 60, "Fine-tuning steps.")
flags.DEFINE_integer("samples", 2, "Test examples per (task, length, depth).")
flags.DEFINE_bool("quick", False, "Tiny lengths and steps (smoke test; needs a --quick LM run).")
flags.DEFINE_bool("report_only", False, "Only rewrite the tables and heat maps.")
flags.DEFINE_string("compilation_cache", "runs/jax_cache", "Persistent XLA cache ('' = off).")

TRAIN_LENGTH = 1024
TRAIN_BATCH = 4
TEST_LENGTHS = (1024, 2048, 4096, 8192)
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
EVAL_TOKENS = 8192  # tokens per evaluation batch (examples per batch = EVAL_TOKENS // length)
FT_LR = 1e-3
QUICK = {"train_length": 320, "test_lengths": (320, 640), "steps": 3}

# NL-arXiv Table 1 (PAPER §7.5), S-NIAH accuracy (%) at 4K / 8K (models trained on ~50B tokens).
PAPER = {
    "transformer_pp": {"passkey": (88.6, 76.4), "number": (100, 98.8), "uuid": (78.0, 69.2)},
    "hope_attention": {"passkey": (100, 100), "number": (100, 98.4), "uuid": (76.8, 68.8)},
    "titans_lmm": {"passkey": (100, 100), "number": (99.6, 84.6), "uuid": (74.2, 42.8)},
    "hope": {"passkey": (100, 100), "number": (99.2, 88.4), "uuid": (73.2, 46.2)},
}
LABELS = {
    "transformer_pp": "Transformer++",
    "deltanet": "DeltaNet",
    "gated_deltanet": "Gated DeltaNet",
    "titans_lmm": "Titans (LMM)",
    "titans_mac": "Titans (MAC)",
    "hope": "Hope",
    "hope_attention": "Hope-Attention",
}


def _loss(graphdef, params, rest, inputs, targets, mask):
    model = nnx.merge(graphdef, params, rest)
    logits, _ = model(inputs)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [b, t]
    lm = ce.mean()
    answer = (ce * mask).sum() / jnp.maximum(mask.sum(), 1)
    return lm + answer, (lm, answer)


def make_train_step(graphdef, tx, grad_clip: float):
    grad_fn = jax.value_and_grad(functools.partial(_loss, graphdef), has_aux=True)

    @jax.jit
    def step(params, opt_state, rest, inputs, targets, mask):
        (loss, (lm, answer)), grads = grad_fn(params, rest, inputs, targets, mask)
        norm = optax.tree.norm(grads)
        scale = jnp.minimum(1.0, grad_clip / jnp.maximum(norm, 1e-12))
        grads = jax.tree.map(lambda g: g * scale, grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (
            optax.apply_updates(params, updates),
            opt_state,
            {"loss": loss, "lm": lm, "answer": answer},
        )

    return step


def make_logits_fn(graphdef):
    @jax.jit
    def logits_fn(params, rest, inputs):
        return nnx.merge(graphdef, params, rest)(inputs)[0]

    return logits_fn


def finetune_config(config, steps: int):
    c = ml_collections.ConfigDict(config.to_dict())
    c.optim.lr = FT_LR
    c.optim.warmup_steps = max(1, steps // 10)
    c.train.num_steps = steps
    return c


def _by_depth(values: list[float], depths: list[float]) -> list[float]:
    return [float(np.mean([x for x, d in zip(values, depths) if d == depth])) for depth in DEPTHS]


def run_model(name: str, seed: int, out: Path, quick: bool) -> dict:
    """Fine-tunes the seed-`seed` LM of `name` on S-NIAH examples, tests it, writes its JSON."""
    config = results_lm.get_config(f"{name},quick" if quick else name)
    config.seed = seed
    lm_dir = Path(FLAGS.lm_workdir) / f"{name}_s{seed}"
    run = build_run(config, lm_dir)
    try:
        state, rest, _ = restore(run)
    finally:
        run.checkpointer.close()
    if int(state.step) != config.train.num_steps:
        raise ValueError(f"{lm_dir} holds step {int(state.step)}, not the finished LM run")
    steps = QUICK["steps"] if quick else FLAGS.steps
    train_length = QUICK["train_length"] if quick else TRAIN_LENGTH
    test_lengths = QUICK["test_lengths"] if quick else TEST_LENGTHS
    tok = run.data.tokenizer
    params = state.params
    tx = nested(build_levels(finetune_config(run.config, steps)))
    opt_state = tx.init(params)
    train_step = make_train_step(run.graphdef, tx, run.config.optim.grad_clip)
    rng = np.random.default_rng([seed, 1])
    load_start = os.getloadavg()
    start = time.perf_counter()
    curve = []
    for i in range(steps):
        tasks = [niah.TASKS[(i * TRAIN_BATCH + j) % 3] for j in range(TRAIN_BATCH)]
        batch = niah.make_batch(
            tasks,
            run.data.train,
            length=train_length,
            depths=rng.uniform(0, 1, TRAIN_BATCH),
            rng=rng,
            tokenizer=tok,
        )
        params, opt_state, m = train_step(
            params, opt_state, rest, batch.inputs, batch.targets, batch.answer_mask
        )
        if i % 5 == 0 or i == steps - 1:
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            curve.append({"step": i + 1, **m})
            print(
                f"  {name} step {i + 1}: loss {m['loss']:.3f} (answer {m['answer']:.3f})",
                flush=True,
            )
    train_s = time.perf_counter() - start
    logits_fn = make_logits_fn(run.graphdef)
    test_rng = np.random.default_rng([seed, 2])
    exact = {t: {} for t in niah.TASKS}
    token = {t: {} for t in niah.TASKS}
    for length in test_lengths:
        per_batch = max(1, EVAL_TOKENS // length)
        for task in niah.TASKS:
            depths = [d for d in DEPTHS for _ in range(FLAGS.samples)]
            hits, accs = [], []
            for s in range(0, len(depths), per_batch):
                batch = niah.make_batch(
                    task,
                    run.data.val,
                    length=length,
                    depths=depths[s : s + per_batch],
                    rng=test_rng,
                    tokenizer=tok,
                )
                result = niah.score(np.asarray(logits_fn(params, rest, batch.inputs)), batch)
                hits += result.exact.tolist()
                accs += result.token_accuracy.tolist()
            exact[task][str(length)] = _by_depth(hits, depths)
            token[task][str(length)] = _by_depth(accs, depths)
        accuracy = {t: round(float(np.mean(exact[t][str(length)])), 3) for t in niah.TASKS}
        print(f"  {name} L={length}: exact {accuracy}", flush=True)
    record = {
        "model": name,
        "seed": seed,
        "quick": quick,
        "protocol": {
            "start": f"LM checkpoint {lm_dir} (step {int(state.step)})",
            "steps": steps,
            "train_length": train_length,
            "train_batch": TRAIN_BATCH,
            "lr": FT_LR,
            "test_lengths": list(test_lengths),
            "depths": list(DEPTHS),
            "samples": FLAGS.samples,
        },
        "exact": exact,
        "token_accuracy": token,
        "curve": curve,
        "train_s": train_s,
        "wall_s": time.perf_counter() - start,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__} "
        f"{jax.default_backend()}",
        "code": compare.source_fingerprint(Path(__file__).resolve().parent.parent),
    }
    path = out / "runs" / f"{name}_s{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return record


def write_report(out: Path, command: str) -> None:
    """README.md, results.json and the heat maps from every finished run under `out`."""
    runs = {}
    for path in sorted((out / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        runs[record["model"]] = record
    names = [m for m in results_lm.MODELS if m in runs]
    if not names:
        return
    lengths = [str(x) for x in runs[names[0]]["protocol"]["test_lengths"]]
    short = lambda x: f"{int(x) // 1024}K" if int(x) % 1024 == 0 else x
    mean_over_depth = lambda r, kind, t, n: 100 * float(np.mean(r[kind][t][n]))
    rows = []
    for m in names:
        r = runs[m]
        rows.append(
            [LABELS[m]]
            + [f"{mean_over_depth(r, 'exact', t, n):.0f}" for t in niah.TASKS for n in lengths]
        )
    header = ["model"] + [f"{t} {short(n)}" for t in niah.TASKS for n in lengths]
    exact_table = compare.markdown_table(header, rows)
    tok_rows = [
        [LABELS[m]]
        + [
            f"{mean_over_depth(runs[m], 'token_accuracy', t, n):.0f}"
            for t in niah.TASKS
            for n in lengths
        ]
        for m in names
    ]
    token_table = compare.markdown_table(header, tok_rows)
    paper_rows = []
    for m in names:
        if m not in PAPER:
            continue
        here = [
            f"{mean_over_depth(runs[m], 'exact', t, n):.0f}" if n in lengths else "—"
            for t in niah.TASKS
            for n in ("4096", "8192")
        ]
        paper = [f"{PAPER[m][t][i]}" for t in niah.TASKS for i in (0, 1)]
        paper_rows.append([LABELS[m], " / ".join(paper), " / ".join(here)])
    paper_table = compare.markdown_table(
        ["model", "paper PK 4K/8K, N 4K/8K, U 4K/8K", "here, same cells"], paper_rows
    )
    depths = runs[names[0]]["protocol"]["depths"]
    for kind, fname in (("exact", "heatmap_exact.png"), ("token_accuracy", "heatmap_token.png")):
        maps = {
            LABELS[m]: np.array(
                [
                    [np.mean([runs[m][kind][t][n][i] for t in niah.TASKS]) for n in lengths]
                    for i in range(len(depths))
                ]
            )
            for m in names
        }
        compare.plot_heatmaps(
            maps,
            out / fname,
            row_labels=[f"{d:g}" for d in depths],
            col_labels=[short(n) for n in lengths],
            xlabel="context length",
            ylabel="needle depth",
        )
    summary = {
        m: {"exact": runs[m]["exact"], "token_accuracy": runs[m]["token_accuracy"]} for m in names
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    proto = runs[names[0]]["protocol"]
    same = lambda r: {k: v for k, v in r["protocol"].items() if k != "start"}
    mixed = [m for m in names if same(runs[m]) != same(runs[names[0]])]
    protocol_note = (
        f"\n**Warning:** {', '.join(LABELS[m] for m in mixed)} ran another protocol than "
        f"{LABELS[names[0]]}; see each run's `protocol` field.\n"
        if mixed
        else ""
    )
    codes = sorted({runs[m].get("code", "unrecorded") for m in names})
    walls = [runs[m]["wall_s"] for m in names]
    loads = [x for m in names for x in (runs[m]["load_avg_start"][0], runs[m]["load_avg_end"][0])]
    text = f"""# S-NIAH (passkey, number, uuid) in Shakespeare haystacks

Produced by `{command}` (`experiments/niah.py`, generators and scoring in
`nestlearn/eval/niah.py`); every number is read from `runs/*.json`. Regenerate with
`python experiments/niah.py --report_only`.

**Protocol.** Every model starts from its seed-{runs[names[0]]["seed"]} checkpoint of the
language-model comparison (docs/results/lm: ≈2M parameters, same tokens) and is fine-tuned for
{proto["steps"]} AdamW steps (lr {proto["lr"]}, its own training levels) on batches of
{proto["train_batch"]} S-NIAH examples of {proto["train_length"]} bytes (haystacks from the
training plays; the three tasks in turn; depth uniform in [0, 1]; loss = mean next-byte loss +
mean loss on the answer bytes). Test haystacks come from the held-out validation plays; lengths
{", ".join(short(n) for n in lengths)}; depths {", ".join(f"{d:g}" for d in depths)};
{proto["samples"]} example(s) per (task, length, depth), so each cell of the first table averages
{proto["samples"] * len(depths)} examples and each heat-map cell {proto["samples"] * 3}.
A needle counts as retrieved when greedy decoding after the query reproduces the whole value
(RULER's exact match, computed teacher-forced in one pass).
{protocol_note}
**Machine.** {runs[names[0]]["machine"]}, shared: load average {min(loads):.1f}–{max(loads):.1f}.
Wall time per model {min(walls):.0f}–{max(walls):.0f} s (fine-tuning and test), total
{sum(walls) / 60:.1f} min. Library source fingerprints: {", ".join(codes)}.

## Exact-match accuracy (%), mean over depths ({len(names)} of {len(results_lm.MODELS)} models)

{exact_table}

## Per-byte accuracy of the value (%), mean over depths (chance ≈ 10 for digits, ≈ 6 for hex)

{token_table}

## Next to the paper (NL-arXiv Table 1, PAPER §7.5: 760M-class models, ~50B tokens)

{paper_table}

Paper claims: Hope and Titans reach 100% on passkey at 4K–16K, Hope-Attention matches the
Transformer, and among attention-free models Hope does best on every task.

Heat maps (depth × length, mean over the three tasks): exact match `heatmap_exact.png`, per-byte
accuracy `heatmap_token.png`.

![exact](heatmap_exact.png)

![per-byte](heatmap_token.png)
"""
    (out / "README.md").write_text(text)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if FLAGS.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    out = Path(FLAGS.out)
    command = "python experiments/niah.py" + (" --quick" if FLAGS.quick else "")
    if FLAGS.report_only:
        write_report(out, command)
        return
    for name in FLAGS.models:
        if name not in results_lm.MODELS:
            raise app.UsageError(f"--models: {name!r} is not one of {results_lm.MODELS}")
        if (out / "runs" / f"{name}_s{FLAGS.seed}.json").exists():
            print(f"skip {name} (finished)", flush=True)
            continue
        if not (Path(FLAGS.lm_out) / "runs" / f"{name}_s{FLAGS.seed}.json").exists():
            print(f"skip {name}: its seed-{FLAGS.seed} LM run has not finished", flush=True)
            continue
        print(f"run {name} (load {os.getloadavg()[0]:.1f})", flush=True)
        record = run_model(name, FLAGS.seed, out, FLAGS.quick)
        print(f"done {name}: {record['wall_s']:.0f} s", flush=True)
        write_report(out, command)
    write_report(out, command)


if __name__ == "__main__":
    app.run(main)
