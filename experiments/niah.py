"""S-NIAH-1/2/3 (passkey, number, uuid) in Shakespeare haystacks.

  python experiments/niah.py                   # every model × seeds 0–2, resumable
  python experiments/niah.py --models=transformer_pp,hope --seeds=0
  python experiments/niah.py --study=lm_comparison --out=docs/results/niah_v2  # Hope's writes
  python experiments/niah.py --report_only
  python experiments/niah.py --quick --out=/tmp/niah      # seconds, synthetic corpus

**Protocol (the same for every model).** Each model of the language-model comparison (the
≈2M-parameter configs of `--study`, `experiments/configs/results_lm.py` by default;
`lm_comparison` gives Hope its learning write rule) is trained *from scratch* on
S-NIAH examples whose haystacks are Shakespeare from the training plays, with an easy-to-hard
curriculum of context lengths (`--curriculum`; by default a quarter of the steps each at 128,
256, 512 and 1024 bytes) and a fixed number of tokens per step (`--tokens_per_step`, so a batch
holds 16, 8, 4 or 2 examples by default). The tasks of `--tasks` that fit a stage's length
(`stage_tasks`: passkey alone at 128 bytes, passkey and number at 256, all three from 512) take
turns over the examples and the needle depth is uniform in [0, 1]. The loss is the mean
next-byte loss over the whole example (language modelling of the Shakespeare haystack) plus
`--answer_weight` times the mean loss over the answer bytes (the digits or hex characters of
the value). Optimizer: the model's own training levels (AdamW; Hope's CMS levels every 1/4/16
steps), lr `--lr` (3e-3 for every model: the rate the LM comparison chose for six of its seven
models; Titans LMM's 1e-2 diverged there on one seed), warmup a tenth of the steps, cosine to
0.1×, clip 1.

Two earlier protocols stayed at chance (`docs/results/niah/attempt_*`): fine-tuning each model
for 60 steps from its LM checkpoint, and training from scratch with haystacks of 384 bytes and
more from the start. Short passkey-only haystacks first is what made retrieval learnable (a
Transformer++ pilot, `docs/results/niah/pilots/`).

**Test.** Haystacks from the held-out *validation* plays; lengths 1K/2K/4K/8K (`--test_lengths`),
depths 0, 0.25, 0.5, 0.75, 1 (`DEPTHS`), `--samples` examples per (task, length, depth) with new
keys and values (10: 50 per task and length); scored by `nestlearn.eval.niah.score` (greedy
retrieval of the whole value, RULER's exact match; also the per-byte accuracy of the value), with
the in-context writes on and, for a model with memory, off. Each finished (model, seed) writes
`<out>/runs/<model>_s<seed>.json` (training curve, accuracies, wall times, load) and is skipped
by the next invocation; a run stopped during training resumes from its last checkpoint
(`--workdir`, every `--checkpoint_every` steps; removed once the record is written) and gives
the same record as an uninterrupted one; the tables give the mean ± std over seeds.
`<out>/README.md`, `results.json`, `heatmap_exact.png`, `heatmap_token.png` and
`train_curves.png` are rewritten from the finished runs.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parent / "configs"))

import results_lm

from nestlearn import models, tune_host_allocator
from nestlearn.data.dataset import load_dataset
from nestlearn.eval import answer_training, compare, niah

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "docs/results/niah", "Directory of the run records, tables, heat maps.")
flags.DEFINE_list("models", None, "Models to train and test (default: the study's MODELS).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the model initialisation and examples.")
flags.DEFINE_string(
    "study", "results_lm", "Config module under experiments/configs giving the models."
)
flags.DEFINE_integer("steps", 1600, "Training steps (over the whole curriculum).")
flags.DEFINE_integer("tokens_per_step", 2048, "Tokens per training batch (all stages).")
flags.DEFINE_integer("samples", 10, "Test examples per (task, length, depth).")
flags.DEFINE_float("answer_weight", 4.0, "Weight of the answer loss beside the LM loss.")
flags.DEFINE_list(
    "curriculum",
    [f"{n}:{f}" for n, f in ((128, 0.25), (256, 0.25), (512, 0.25), (1024, 0.25))],
    "Training stages 'length:fraction', easy to hard (the last length is the training length).",
)
flags.DEFINE_list("tasks", list(niah.TASKS), "S-NIAH tasks to train and test.")
flags.DEFINE_list("test_lengths", ["1024", "2048", "4096", "8192"], "Test context lengths.")
flags.DEFINE_float("lr", 3e-3, "Peak learning rate, the same for every model.")
flags.DEFINE_list(
    "model_overrides",
    [],
    "'key=value' model config changes for a sensitivity run (e.g. alpha_bias=7, "
    "self_modifying.alpha_bias_init=7).",
)
flags.DEFINE_bool("quick", False, "Tiny model, lengths and steps on the synthetic corpus (smoke).")
flags.DEFINE_bool("report_only", False, "Only rewrite the tables and heat maps.")
flags.DEFINE_string(
    "workdir",
    "runs/niah",
    "Mid-training checkpoints, in <workdir>/<name of --out>/<model>_s<seed> ('' = none).",
)
flags.DEFINE_integer("checkpoint_every", 100, "Training steps between checkpoints.")
flags.DEFINE_string("compilation_cache", "runs/jax_cache", "Persistent XLA cache ('' = off).")

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
EVAL_TOKENS = 8192  # tokens per evaluation batch (examples per batch = EVAL_TOKENS // length)
MIN_HAYSTACK = 16  # a task trains at a stage's length only if it leaves this much haystack
QUICK = {"curriculum": ((160, 0.5), (384, 0.5)), "test_lengths": (384,), "steps": 4}

# NL-arXiv Table 1 (arXiv 2512.24695 §9.2), S-NIAH accuracy (%) at 4K / 8K (models trained on
# ~50B tokens).
PAPER = {
    "transformer_pp": {"passkey": (88.6, 76.4), "number": (100, 98.8), "uuid": (78.0, 69.2)},
    "hope_attention": {"passkey": (100, 100), "number": (100, 98.4), "uuid": (76.8, 68.8)},
    "titans_lmm": {"passkey": (100, 100), "number": (99.6, 84.6), "uuid": (74.2, 42.8)},
    "hope": {"passkey": (100, 100), "number": (99.2, 88.4), "uuid": (73.2, 46.2)},
}
LABELS = results_lm.LABELS


def parse_curriculum(stages: list[str]) -> tuple[tuple[int, float], ...]:
    """`("384:0.25", ...)` → `((384, 0.25), ...)`; the values are checked by `niah.curriculum`."""
    try:
        return tuple((int(n), float(f)) for n, f in (stage.split(":") for stage in stages))
    except ValueError as error:
        raise ValueError(f"--curriculum={stages}: each stage must be 'length:fraction'") from error


def stage_tasks(
    tasks: tuple[str, ...], stages: tuple[tuple[int, float], ...], tokenizer
) -> dict[int, list[str]]:
    """The tasks that train at each stage's length: those leaving `MIN_HAYSTACK` haystack tokens.

    Raises:
      ValueError: an unknown task, or a stage too short for every task.
    """
    unknown = sorted(set(tasks) - set(niah.TASKS))
    if unknown or not tasks:
        raise ValueError(f"--tasks={list(tasks)}: each must be one of {niah.TASKS}")
    fits = {}
    for length, _ in stages:
        fits[length] = [
            t for t in tasks if niah.min_length(t, tokenizer, haystack=MIN_HAYSTACK) <= length
        ]
        if not fits[length]:
            need = min(niah.min_length(t, tokenizer, haystack=MIN_HAYSTACK) for t in tasks)
            raise ValueError(
                f"--curriculum stage {length} is too short for every task of --tasks={list(tasks)}"
                f" (the shortest needs {need} tokens)"
            )
    return fits


def _by_depth(values: list[float], depths: list[float]) -> list[float]:
    return [float(np.mean([x for x, d in zip(values, depths) if d == depth])) for depth in DEPTHS]


def study_module():
    """The config module named by `--study`."""
    try:
        return importlib.import_module(FLAGS.study)
    except ModuleNotFoundError as error:
        raise app.UsageError(
            f"--study={FLAGS.study!r}: no such module in experiments/configs"
        ) from error


def train_config(name: str, seed: int, steps: int, quick: bool):
    """The study's config of `name`, with this protocol's optimizer schedule."""
    config = results_lm.task_config(
        name, seed=seed, steps=steps, lr=FLAGS.lr, quick=quick, study=study_module()
    )
    results_lm.apply_model_overrides(config, FLAGS.model_overrides, name)
    if quick:
        config.model.max_len = max(QUICK["test_lengths"])
    return config


def run_model(name: str, seed: int, out: Path, quick: bool) -> dict:
    """Trains `name` from scratch on the S-NIAH curriculum, tests it, writes its JSON record."""
    steps = QUICK["steps"] if quick else FLAGS.steps
    stages = QUICK["curriculum"] if quick else parse_curriculum(FLAGS.curriculum)
    test_lengths = QUICK["test_lengths"] if quick else tuple(int(n) for n in FLAGS.test_lengths)
    tasks = tuple(FLAGS.tasks)
    config = train_config(name, seed, steps, quick)
    data = load_dataset(config.data)
    tok = data.tokenizer
    trained = stage_tasks(tasks, stages, tok)
    rng = np.random.default_rng([seed, 1])

    def batches():  # the curriculum: ((inputs, targets, answer mask), {"length"}) per step
        example = 0
        for length in niah.curriculum(steps, stages):
            size = max(1, FLAGS.tokens_per_step // length)
            here = trained[length]
            batch_tasks = [here[(example + j) % len(here)] for j in range(size)]
            example += size
            batch = niah.make_batch(
                batch_tasks,
                data.train,
                length=length,
                depths=rng.uniform(0, 1, size),
                rng=rng,
                tokenizer=tok,
            )
            yield (batch.inputs, batch.targets, batch.answer_mask), {"length": length}

    checkpoints = checkpoint_dir(out, name, seed)
    load_start = os.getloadavg()
    start = time.perf_counter()
    run = answer_training.train_on_answers(
        config,
        batches(),
        steps=steps,
        answer_weight=FLAGS.answer_weight,
        log_every=10,
        log=lambda line: print(f"  {name} {line}", flush=True),
        checkpoint_dir=checkpoints,
        checkpoint_every=FLAGS.checkpoint_every,
        stream={
            "curriculum": [list(stage) for stage in stages],
            "tasks": list(tasks),
            "tokens_per_step": FLAGS.tokens_per_step,
        },
    )
    divergence, curve, train_s = run.divergence, run.curve, run.seconds
    # training time spent by earlier processes of a resumed run (0 for a fresh one)
    earlier_s = max(0.0, train_s - (time.perf_counter() - start))
    if divergence:
        print(f"  {name} diverged at step {divergence['step']}: not tested", flush=True)
    params, rest = run.params, run.rest
    n_params = models.count_params(params)
    # Writes on, and (a model with in-context memory) the same parameters with every memory held
    # at its initial state: the same examples, so the two columns differ only by the writes.
    graphs = answer_training.writes_graphs(config.model, run.graphdef, params)
    exact = {w: {t: {} for t in tasks} for w in graphs}
    token = {w: {t: {} for t in tasks} for w in graphs}
    for writes, graph in graphs.items() if divergence is None else ():
        logits_fn = answer_training.make_logits_fn(graph)
        test_rng = np.random.default_rng([seed, 2])
        for length in test_lengths:
            per_batch = max(1, EVAL_TOKENS // length)
            for task in tasks:
                depths = [d for d in DEPTHS for _ in range(FLAGS.samples)]
                hits, accs = [], []
                for s in range(0, len(depths), per_batch):
                    batch = niah.make_batch(
                        task,
                        data.val,
                        length=length,
                        depths=depths[s : s + per_batch],
                        rng=test_rng,
                        tokenizer=tok,
                    )
                    result = niah.score(np.asarray(logits_fn(params, rest, batch.inputs)), batch)
                    hits += result.exact.tolist()
                    accs += result.token_accuracy.tolist()
                exact[writes][task][str(length)] = _by_depth(hits, depths)
                token[writes][task][str(length)] = _by_depth(accs, depths)
            accuracy = {t: round(float(np.mean(exact[writes][t][str(length)])), 3) for t in tasks}
            print(
                f"  {name} writes {writes} L={length}: exact {accuracy} "
                f"({time.perf_counter() - start:.0f} s)"
            )
    record = {
        "model": name,
        "seed": seed,
        "quick": quick,
        "parameters": n_params,
        "protocol": {
            "start": "from scratch",
            "steps": steps,
            "curriculum": [list(stage) for stage in stages],
            "tasks": list(tasks),
            "stage_tasks": {str(n): ts for n, ts in trained.items()},
            "tokens_per_step": FLAGS.tokens_per_step,
            "answer_weight": FLAGS.answer_weight,
            "lr": FLAGS.lr,
            "model_overrides": list(FLAGS.model_overrides),
            "study": FLAGS.study,
            "test_lengths": list(test_lengths),
            "depths": list(DEPTHS),
            "samples": FLAGS.samples,
        },
        "divergence": divergence,  # None, or where the loss became non-finite (then not tested)
        "exact": exact["on"],
        "token_accuracy": token["on"],
        "exact_writes_off": exact.get("off"),  # None: the model has no in-context memory
        "token_accuracy_writes_off": token.get("off"),
        "curve": curve,
        "train_s": train_s,
        "wall_s": earlier_s + time.perf_counter() - start,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__} "
        f"{jax.default_backend()}",
        "code": compare.source_fingerprint(Path(__file__).resolve().parent.parent),
    }
    compare.write_json_atomic(out / "runs" / f"{name}_s{seed}.json", record)
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return record


def checkpoint_dir(out: Path, name: str, seed: int) -> Path | None:
    """Where run (name, seed) of study `out` keeps its training checkpoints (None: nowhere)."""
    return Path(FLAGS.workdir) / out.name / f"{name}_s{seed}" if FLAGS.workdir else None


def write_report(out: Path, command: str) -> None:
    """README.md, results.json and the heat maps from every finished run under `out`.

    A cell is the mean over the tested seeds of the mean over depths (± the std over seeds when
    there are several); seeds whose training diverged are counted, never averaged.
    """
    runs: dict[str, list[dict]] = {}
    for record in compare.read_records(out / "runs"):
        runs.setdefault(record["model"], []).append(record)
    names = [m for m in results_lm.MODELS if m in runs]
    if not names:
        return
    for m in names:
        runs[m].sort(key=lambda r: r["seed"])
    first = runs[names[0]][0]
    lengths = [str(x) for x in first["protocol"]["test_lengths"]]
    tasks = list(first["exact"])  # the tested tasks, also in runs from before --tasks
    short = lambda x: f"{int(x) // 1024}K" if int(x) % 1024 == 0 else x
    tested = {m: [r for r in runs[m] if not r.get("divergence")] for m in names}
    n_diverged = {m: len(runs[m]) - len(tested[m]) for m in names}
    all_runs = [r for m in names for r in runs[m]]

    def cell(m, kind, t, n):  # mean over seeds of the mean over depths (%), or why none
        values = [100 * float(np.mean(r[kind][t][n])) for r in tested[m] if r.get(kind)]
        note = f" ({n_diverged[m]} diverged)" if n_diverged[m] else ""
        if not values:
            return "diverged" if n_diverged[m] else "—"
        text = f"{np.mean(values):.0f}"
        if len(values) > 1:
            text += f" ± {np.std(values, ddof=1):.0f}"
        return text + note

    header = ["model"] + [f"{t} {short(n)}" for t in tasks for n in lengths]
    exact_table, token_table = (
        compare.markdown_table(
            header,
            [[LABELS[m]] + [cell(m, kind, t, n) for t in tasks for n in lengths] for m in names],
        )
        for kind in ("exact", "token_accuracy")
    )
    with_off = [m for m in names if any(r.get("exact_writes_off") for r in tested[m])]
    off_table = compare.markdown_table(
        ["model", "writes"] + [f"{t} {short(n)}" for t in tasks for n in lengths],
        [
            [LABELS[m], writes] + [cell(m, kind, t, n) for t in tasks for n in lengths]
            for m in with_off
            for writes, kind in (("on", "exact"), ("off", "exact_writes_off"))
        ],
    )
    off_section = (
        "\n## In-context writes on and off (exact match, %)\n\n"
        "The same trained parameters and the same test examples, evaluated with the model's "
        "in-context memories writing (as trained) and held at their initial state "
        "(`model.memory_writes=False`). Retrieval that survives with the writes off is done by "
        "something other than the memory (attention, the convolution).\n\n" + off_table + "\n"
        if with_off
        else ""
    )
    train_rows = []
    for r in all_runs:
        last, div = r["curve"][-1], r.get("divergence")
        train_rows.append(
            [
                LABELS[r["model"]],
                r["seed"],
                f"{r['parameters'] / 1e6:.3f}M",
                last["step"],
                f"{last['answer']:.3f}",
                f"{100 * last['exact']:.0f}",
                f"{100 * last['byte_acc']:.0f}",
                f"{r['train_s']:.0f}",
                f"{r['wall_s'] - r['train_s']:.0f}",
                f"{r['load_avg_start'][0]:.1f}–{r['load_avg_end'][0]:.1f}",
                f"step {div['step']} (L={div['length']})" if div else "—",
            ]
        )
    train_table = compare.markdown_table(
        [
            "model",
            "seed",
            "params",
            "step",
            "answer loss",
            "train exact (%)",
            "train byte acc (%)",
            "train s",
            "test s",
            "load",
            "diverged",
        ],
        train_rows,
    )
    compare.plot_curves(
        {
            LABELS[m]: [
                ([c["step"] for c in r["curve"]], [c["byte_acc"] for c in r["curve"]])
                for r in tested[m] or runs[m][:1]
            ]
            for m in names
        },
        out / "train_curves.png",
        xlabel="training step (curriculum: short haystacks first)",
        ylabel="answer byte accuracy (training batch)",
        title="S-NIAH training, ≈2M parameters",
        ylim=(0.0, 1.0),
    )
    paper_rows = []
    for m in names:
        if m not in PAPER:
            continue
        here = [
            cell(m, "exact", t, n) if n in lengths else "—" for t in tasks for n in ("4096", "8192")
        ]
        paper = [f"{PAPER[m][t][i]}" for t in tasks for i in (0, 1)]
        paper_rows.append([LABELS[m], " / ".join(paper), " / ".join(here)])
    paper_table = compare.markdown_table(
        ["model", f"paper: {', '.join(f'{t} 4K/8K' for t in tasks)}", "here, same cells"],
        paper_rows,
    )
    depths = first["protocol"]["depths"]
    for kind, fname in (("exact", "heatmap_exact.png"), ("token_accuracy", "heatmap_token.png")):
        maps = {
            LABELS[m]: np.array(
                [
                    [np.mean([r[kind][t][n][i] for r in tested[m] for t in tasks]) for n in lengths]
                    for i in range(len(depths))
                ]
            )
            for m in names
            if tested[m]
        }
        if not maps:
            continue
        compare.plot_heatmaps(
            maps,
            out / fname,
            row_labels=[f"{d:g}" for d in depths],
            col_labels=[short(n) for n in lengths],
            xlabel="context length",
            ylabel="needle depth",
        )
    summary = {
        m: {
            "seeds": [r["seed"] for r in runs[m]],
            "divergence": {str(r["seed"]): r.get("divergence") for r in runs[m]},
            **{
                kind: {
                    t: {
                        n: [float(np.mean(r[kind][t][n])) for r in tested[m] if r.get(kind)]
                        for n in lengths
                    }
                    for t in tasks
                }
                for kind in ("exact", "token_accuracy", "exact_writes_off")
            },
        }
        for m in names
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    proto = first["protocol"]
    protocol_flags = " ".join(
        [
            f"--models={','.join(names)}",
            f"--seeds={','.join(str(x) for x in sorted({r['seed'] for r in all_runs}))}",
            f"--study={proto.get('study', 'results_lm')}",
            f"--steps={proto['steps']}",
            f"--tokens_per_step={proto['tokens_per_step']}",
            f"--answer_weight={proto.get('answer_weight', 1.0):g}",
            "--curriculum=" + ",".join(f"{n}:{f:g}" for n, f in proto["curriculum"]),
            f"--tasks={','.join(tasks)}",
            f"--samples={proto['samples']}",
            f"--lr={proto['lr']:g}",
            *(
                [f"--model_overrides={','.join(proto['model_overrides'])}"]
                if proto.get("model_overrides")
                else []
            ),
            "--test_lengths=" + ",".join(lengths),
        ]
    )
    stage_tasks = proto.get("stage_tasks", {})
    curriculum_text = ", then ".join(
        f"{length} bytes for {fraction:.0%} of the steps"
        + (f" ({', '.join(stage_tasks[str(length)])})" if str(length) in stage_tasks else "")
        for length, fraction in proto["curriculum"]
    )

    def same(r):  # the protocol; older records lack an empty "model_overrides" and "study"
        proto = {"study": "results_lm", **r["protocol"]}
        return {k: v for k, v in proto.items() if k != "start" and (v or k != "model_overrides")}

    mixed = sorted({LABELS[r["model"]] for r in all_runs if same(r) != same(first)})
    protocol_note = (
        f"\n**Warning:** {', '.join(mixed)} ran another protocol than {LABELS[first['model']]} "
        f"seed {first['seed']}; see each run's `protocol` field.\n"
        if mixed
        else ""
    )
    codes = sorted({r.get("code", "unrecorded") for r in all_runs})
    walls = [r["wall_s"] for r in all_runs]
    loads = [x for r in all_runs for x in (r["load_avg_start"][0], r["load_avg_end"][0])]
    text = f"""# S-NIAH ({", ".join(tasks)}) in Shakespeare haystacks

Produced by `{command} {protocol_flags} --out={out}` (`experiments/niah.py`, generators and
scoring in `nestlearn/eval/niah.py`); every number is read from `runs/*.json`. Regenerate with
`python experiments/niah.py --report_only --out={out}`.

**Protocol.** Every model of the language-model comparison (same ≈2M-parameter configs,
`experiments/configs/{proto.get("study", "results_lm")}.py`) is trained from scratch for {
        proto["steps"]
    } steps of
{proto["tokens_per_step"]:,} tokens on S-NIAH examples with Shakespeare haystacks from the
training plays, easy to hard: {curriculum_text}. The tasks of a stage (those whose needle, query
and answer leave at least {MIN_HAYSTACK} haystack bytes) take turns; the needle depth is
uniform in [0, 1]; the loss is the mean next-byte loss over the example (language modelling of
the haystack) plus {
        proto.get(
            "answer_weight", 1.0
        ):g} × the mean loss over the answer bytes; the model's own training levels (AdamW,
Hope's CMS levels every 1/4/16 steps), lr {proto["lr"]}, warmup, cosine. Test haystacks come from
the held-out validation plays; lengths {", ".join(short(n) for n in lengths)}; depths
{", ".join(f"{d:g}" for d in depths)}; {proto["samples"]} example(s) per (task, length, depth), so
each cell of the first table averages {proto["samples"] * len(depths)} examples and each
heat-map cell {proto["samples"] * len(tasks)}. A needle counts as retrieved when greedy decoding
after the query reproduces the whole value (RULER's exact match, computed teacher-forced in one
pass). Chance: 10⁻⁷ for a 7-digit value (0.1 per digit), 16⁻³² for a UUID.
{protocol_note}
**Machine.** {first["machine"]}, shared: load average {min(loads):.1f}–{max(loads):.1f}.
Wall time per run {min(walls):.0f}–{max(walls):.0f} s (training and test), total
{sum(walls) / 60:.1f} min for {len(all_runs)} runs; seeds
{
        ", ".join(str(x) for x in sorted({r["seed"] for r in all_runs}))
    }, mean ± std over seeds. Library source fingerprints: {", ".join(codes)}.

## Training (the last logged steps, at {proto["curriculum"][-1][0]} bytes)

{train_table}

A run whose loss becomes non-finite stops at that step and is not tested ("diverged": the
step and curriculum length are in the last column).

`train exact` and `train byte acc` are measured on the training batch of the last logged step
(before its update) — a noisy estimate from {
        proto["tokens_per_step"] // proto["curriculum"][-1][0]
    } examples; the test below is the measurement.

![training](train_curves.png)

## Exact-match accuracy (%), mean over depths ({len(names)} of {len(results_lm.MODELS)} models)

{exact_table}
{off_section}
## Per-byte accuracy of the value (%), mean over depths

Chance without retrieval: 10 for the 7 digits of passkey and number; about 20 for a UUID, whose
format alone fixes 5 of its 36 characters (4 dashes, the version digit 4), the variant
character is one of 8, 9, a, b and the other 30 are uniform hex: (5 + 1/4 + 30/16) / 36 = 19.8%.

{token_table}

## Next to the paper (NL-arXiv Table 1, arXiv 2512.24695 §9.2: 760M-class models, ~50B tokens)

{paper_table}

Paper claims: Hope and Titans reach 100% on passkey at 4K–16K, Hope-Attention matches the
Transformer, and among attention-free models Hope does best on every task.

Heat maps (depth × length, mean over the tasks): exact match `heatmap_exact.png`, per-byte
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
    study = study_module()
    names = FLAGS.models or list(study.MODELS)
    for name in names:
        if name not in study.MODELS:
            raise app.UsageError(f"--models: {name!r} is not one of {study.MODELS}")
    for seed in (int(x) for x in FLAGS.seeds):
        for name in names:
            if (out / "runs" / f"{name}_s{seed}.json").exists():
                print(f"skip {name} seed {seed} (finished)", flush=True)
                continue
            print(f"run {name} seed {seed} (load {os.getloadavg()[0]:.1f})", flush=True)
            record = run_model(name, seed, out, FLAGS.quick)
            print(f"done {name} seed {seed}: {record['wall_s']:.0f} s", flush=True)
            write_report(out, command)
    write_report(out, command)


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    app.run(main)
