"""Language-model comparison over seeds and the Hope ablations.

  python experiments/lm_compare.py                        # everything, resumable
  python experiments/lm_compare.py --variants=hope,transformer_pp --seeds=0
  python experiments/lm_compare.py --report_only          # tables and plot from finished runs
  python experiments/lm_compare.py --quick --out=/tmp/lm --workdir=/tmp/lm_runs   # smoke run
  python experiments/lm_compare.py --study=memory_study --out=docs/results/memory/lm \
      --workdir=runs/memory_study                         # another study's configs

`--study` names the config module under `experiments/configs` (default `results_lm`): its
`get_config`, `MODELS`, `ABLATIONS`, `LABELS` and parameter budget define the plan.

Every (variant, seed) is one `nestlearn.train.train_and_evaluate` run with the study's config.
A finished run writes `<out>/runs/<variant>_s<seed>.json` (config, parameters, tokens/s, loss
curve, final validation and test metrics, the probe of its in-context memory, wall time, load);
runs whose JSON exists are skipped, so an interrupted session loses at most the run in progress
(whose workdir is deleted and restarted from scratch, so that its tokens/s stay honest). Order:
every model for the first seed, then the next seed, then the ablations — partial results are
comparable at any point. After each run `<out>/README.md`, `<out>/results.json` and
`<out>/loss_vs_tokens.png` are rewritten from all finished runs.

A run that diverges (the trainer stops it with `NonFiniteError` after
`train.max_consecutive_nonfinite` non-finite steps in a row, or it finishes after skipped steps
with a non-finite validation loss) is recorded too: its JSON has
`final: null` and a `diverged` entry (first non-finite step, stopping step, last finite loss),
is skipped like a finished run, is left out of every mean, and is listed as diverged in the
tables; the sweep goes on with the next run.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import jax
from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parent / "configs"))

import results_lm

from nestlearn import models, tune_host_allocator
from nestlearn.eval import compare
from nestlearn.train import NonFiniteError, train_and_evaluate
from nestlearn.train.checkpoint import dump_config
from nestlearn.train.metrics import read_metrics

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "docs/results/lm", "Directory of the run records, tables and plot.")
flags.DEFINE_string("workdir", "runs/lm_compare", "Directory of the runs' checkpoints/metrics.")
flags.DEFINE_string(
    "study", "results_lm", "Config module of the study under experiments/configs (its MODELS)."
)
flags.DEFINE_list("variants", None, "Compared models (default: the study's MODELS).")
flags.DEFINE_list("ablations", None, "Hope ablations to run (default: the study's ABLATIONS).")
flags.DEFINE_list("seeds", None, "Seeds of the compared models (default: the study's SEEDS, 0-2).")
flags.DEFINE_list(
    "ablation_seeds", None, "Seeds of the ablations (default: the study's ABLATION_SEEDS, 0)."
)
flags.DEFINE_bool("quick", False, "Tiny synthetic runs (seconds; smoke test).")
flags.DEFINE_bool("report_only", False, "Only rewrite the tables and plot.")
flags.DEFINE_string(
    "compilation_cache", "runs/jax_cache", "Persistent XLA cache ('' = off); seeds reuse it."
)

# Paper figures quoted next to ours (docs/results/lm/README.md). Wiki perplexity at 760M / 30B
# tokens: NL-arXiv Table 2 (arXiv 2512.24695 §9.3) where the model is there, else Titans Table 1.
PAPER_PPL = {
    "transformer_pp": (24.18, "NL Table 2"),
    "deltanet": (24.52, "NL Table 2"),
    "gated_deltanet": (21.18, "Titans Table 1"),
    "titans_lmm": (20.04, "Titans Table 1 (NL Table 2 'Titans': 20.08)"),
    "titans_mac": (19.93, "Titans Table 1"),
    "hope": (18.68, "NL Table 2"),
    "hope_attention": (None, "no LM row in the paper"),
}
# NL-arXiv Table 6: LM perplexity of each ablation (scale not stated).
PAPER_ABLATION_PPL = {
    "hope": 12.24,
    "hope_no_dgd": 13.41,
    "hope_no_momentum": 13.58,
    "hope_no_decay": 13.71,
    "hope_no_cms": 13.04,
    "hope_static_k": 13.77,
    "hope_static_v": 13.90,
    "hope_adaptive_q": 12.19,
}
LABELS = {
    **results_lm.LABELS,
    **{name: f"Hope {label}" for name, (label, _) in results_lm.ABLATIONS.items()},
}


def run_name(variant: str, seed: int) -> str:
    return f"{variant}_s{seed}"


def config_for(variant: str, seed: int, quick: bool, study=results_lm):
    config = study.get_config(f"{variant},quick" if quick else variant)
    config.seed = seed
    return config


def check_params(config, quick: bool, study=results_lm) -> tuple[int, int]:
    """(all, non-embedding) parameters of the model of `config`.

    Full-size runs must be within the study's tolerance of its budget: `TARGET_NON_EMBEDDING`
    when the study defines one, else `TARGET_PARAMS` (all parameters).
    """
    from flax import nnx

    model = nnx.eval_shape(lambda: models.build(config.model, rngs=nnx.Rngs(0)))
    n, n_body = models.count_params(model), models.count_params(model, embedding=False)
    target = getattr(study, "TARGET_NON_EMBEDDING", None)
    counted, kind = (n_body, "non-embedding") if target else (n, "")
    target = target or study.TARGET_PARAMS
    tol = study.PARAM_TOLERANCE
    if not quick and abs(counted - target) > tol * target:
        raise ValueError(
            f"model {config.model.name} (mlp_ratio={config.model.mlp_ratio}) has {counted} "
            f"{kind + ' ' if kind else ''}parameters, outside {target} ± {tol:.0%}; update the "
            f"feed-forward ratios of experiments/configs/{study.__name__}.py"
        )
    return n, n_body


def steady_tokens_per_sec(records: list[dict], tokens_per_step: int) -> float:
    """Training throughput after the first logged step (which includes compilation)."""
    train = [r for r in records if r.get("kind") == "train"]
    if len(train) < 2:
        return float("nan")
    first, last = train[0], train[-1]
    return (
        (last["step"] - first["step"]) * tokens_per_step / (last["elapsed_s"] - first["elapsed_s"])
    )


def claim(path: Path) -> bool:
    """Takes the lock file `path` for this process; False when a live process holds it.

    Lets several `lm_compare.py` processes share one plan without training a run twice.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or "0"), 0)
            return False  # its owner is alive
        except (ProcessLookupError, ValueError):
            path.unlink(missing_ok=True)  # a stale lock of a dead process
            return claim(path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def train_one(
    variant: str,
    seed: int,
    out: Path,
    workdir: Path,
    quick: bool,
    study=results_lm,
    *,
    lr: float | None = None,
    name: str | None = None,
    folder: str = "runs",
) -> dict:
    """Trains one (variant, seed) from scratch and writes its JSON record `<out>/<folder>/<name>`.

    `lr` replaces the config's peak learning rate; `name` defaults to `run_name(variant, seed)`.
    The record holds the run's probe (`probe.json`: validation loss by position with the
    in-context writes on and off) when the run finished.
    """
    config = config_for(variant, seed, quick, study)
    if lr is not None:
        config.optim.lr = lr
    name = name or run_name(variant, seed)
    params, params_body = check_params(config, quick, study)
    run_dir = workdir / name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run restarts from scratch
    load_start = os.getloadavg()
    start = time.perf_counter()
    try:
        final, diverged = train_and_evaluate(config, run_dir), None
    except NonFiniteError as error:
        final = None
        diverged = divergence(read_metrics(run_dir / "metrics.jsonl"), str(error))
    if final is not None and not math.isfinite(float(final["val_loss"])):
        # Trained to the end with skipped steps, then evaluated to a non-finite loss.
        message = f"non-finite validation loss after {final.get('skipped_steps', 0)} skipped steps"
        final, diverged = None, divergence(read_metrics(run_dir / "metrics.jsonl"), message)
    wall = time.perf_counter() - start
    records = read_metrics(run_dir / "metrics.jsonl")
    tokens_per_step = config.data.batch_size * config.data.seq_len
    train = [r for r in records if r.get("kind") == "train"]
    record = {
        "variant": variant,
        "model": config.model.name,
        "seed": seed,
        "quick": quick,
        "parameters": params,
        "parameters_checked": params,
        "non_embedding_parameters": params_body,
        "lr": config.optim.lr,
        "train_tokens": config.train.num_steps * tokens_per_step,
        "tokens_per_sec": steady_tokens_per_sec(records, tokens_per_step),
        "wall_s": wall,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__} "
        f"{jax.default_backend()}",
        "code": compare.source_fingerprint(Path(__file__).resolve().parent.parent),
        "curve": {
            "tokens": [r["step"] * tokens_per_step for r in train],
            "loss": [r["loss"] for r in train],
        },
        "final": final,
        "diverged": diverged,
        "probe": json.loads((run_dir / "probe.json").read_text()) if final else None,
        "config": dump_config(config),
    }
    out.mkdir(parents=True, exist_ok=True)
    compare.write_json_atomic(out / folder / f"{name}.json", record)
    return record


def lr_run_name(variant: str, lr: float, seed: int) -> str:
    return f"{variant}_lr{lr:g}_s{seed}"


def selected_lr(out: Path, variant: str, grid, seed: int) -> float | None:
    """The rate of `grid` with the lowest validation loss of `variant` at `seed` (a diverged run
    counts as infinitely bad); None until every rate of the grid has its record."""
    losses = {}
    for lr in grid:
        path = out / "lr_runs" / f"{lr_run_name(variant, lr, seed)}.json"
        if not path.exists():
            return None
        final = json.loads(path.read_text()).get("final")
        losses[lr] = float(final["val_loss"]) if final else math.inf
    return min(grid, key=lambda lr: losses[lr])


def divergence(records: list[dict], message: str) -> dict:
    """The `diverged` entry of a run stopped by `NonFiniteError`, from its metric records.

    Every non-finite step is logged (the trainer writes a train record for it), so the first
    record whose `skipped` count is positive is the first non-finite step, and the last train
    record is the step the run stopped at.
    """
    train = [r for r in records if r.get("kind") == "train"]
    finite = [r for r in train if math.isfinite(float(r["loss"]))]  # non-finite: "nan" strings
    first_bad = next((r["step"] for r in train if r.get("skipped", 0) > 0), None)
    before = [r for r in finite if first_bad is None or r["step"] < first_bad]
    return {
        "first_nonfinite_step": first_bad,
        "stopped_at_step": train[-1]["step"] if train else None,
        "last_finite_step": before[-1]["step"] if before else None,
        "last_finite_loss": before[-1]["loss"] if before else None,
        "message": message,
    }


def load_runs(out: Path) -> dict[str, list[dict]]:
    """Recorded runs under `out/runs` (finished and diverged), grouped by variant, by seed."""
    groups: dict[str, list[dict]] = {}
    for record in compare.read_records(out / "runs"):
        groups.setdefault(record["variant"], []).append(record)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def split_runs(groups: dict[str, list[dict]]) -> tuple[dict, dict]:
    """`(finished, diverged)`: the records of `groups` with and without final metrics."""
    finished = {v: [r for r in rs if r.get("final")] for v, rs in groups.items()}
    diverged = {v: [r for r in rs if not r.get("final")] for v, rs in groups.items()}
    return {v: rs for v, rs in finished.items() if rs}, {v: rs for v, rs in diverged.items() if rs}


def _vals(runs: list[dict], key: str) -> list[float]:
    return [r["final"][key] for r in runs]


def _claim(groups, better: str, worse: str) -> list[str] | None:
    if better not in groups or worse not in groups:
        return None
    a, b = _vals(groups[better], "val_loss"), _vals(groups[worse], "val_loss")
    (ma, _), (mb, _) = compare.mean_std(a), compare.mean_std(b)
    holds = ma < mb
    beyond = compare.differs(a, b)
    verdict = ("holds" if holds else "does not hold") + (
        "" if beyond else " (within 2 standard errors: not resolved)"
    )
    return [
        f"{LABELS[better]} < {LABELS[worse]}",
        f"{ma - mb:+.4f}",
        f"{len(a)} / {len(b)}",
        verdict,
    ]


def memory_section(groups: dict[str, list[dict]], variants: list[str], out: Path) -> str:
    """The probe's section: late on − off gap per model and `loss_by_position.png`.

    The late gap of a run is the probe's `late_gap` (mean over validation windows of each
    window's mean off − on loss over its second half); across seeds, mean ± standard error of
    the mean, and z = mean / SE (how many standard errors the gap is above zero).
    """
    probed = [v for v in variants if any(r.get("probe") for r in groups.get(v, []))]
    if not probed:
        return ""
    rows, curves = [], {}
    for v in probed:
        probes = [r["probe"] for r in groups[v] if r.get("probe")]  # older records have none
        gaps = [p["late_gap"] for p in probes]
        mean, std = compare.mean_std(gaps)
        se = std / math.sqrt(len(gaps))
        z = "—" if se == 0 else f"{mean / se:+.1f}"
        rows.append(
            [
                LABELS[v],
                "yes" if probes[0]["has_memory"] else "no",
                f"{mean:+.4f}",
                f"{se:.4f}" if len(gaps) > 1 else "—",
                z if len(gaps) > 1 else "—",
                ", ".join(f"{p['late_gap']:+.4f} ± {p['late_gap_se'] or 0:.4f}" for p in probes),
                compare.format_mean_std([p["loss_on"] for p in probes], 4),
                compare.format_mean_std([p["loss_off"] for p in probes], 4),
            ]
        )
        for writes in ("on", "off") if probes[0]["has_memory"] else ("on",):
            curves[f"{LABELS[v]}, writes {writes}"] = [
                (p["positions"], p[f"loss_by_position_{writes}"]) for p in probes
            ]
    compare.plot_curves(
        curves,
        out / "loss_by_position.png",
        xlabel="position in the window (bucket start)",
        ylabel="validation loss (nats/byte)",
        title="In-context writes on and off (same parameters; mean ± std over seeds)",
    )
    p0 = next(r["probe"] for r in groups[probed[0]] if r.get("probe"))
    table = compare.markdown_table(
        [
            "model",
            "in-context memory",
            "late gap off − on (nats/byte)",
            "SE over seeds",
            "z",
            "per seed: gap ± SE over windows",
            "val loss, writes on",
            "val loss, writes off",
        ],
        rows,
    )
    return f"""
## In-context memory: validation loss with the writes on and off

Each finished run ends with the probe (`nestlearn.eval.probe`): the same parameters evaluated on
{p0["num_sequences"]} validation windows of {p0["seq_len"]} bytes with every in-context memory
writing (as trained) and held at its initial state (`model.memory_writes=False`). The late gap is
the mean off − on loss over positions {p0["late_start"]}–{p0["seq_len"] - 1}; positive means the
writes lower the loss there. A model without in-context memory has a gap of 0 by construction.

{table}

![loss by position](loss_by_position.png)
"""


def paper_ablation(study, variant: str) -> tuple[float | None, float | None]:
    """(the paper's Table 6 perplexity of the row with `variant`'s setting, that of the row with
    Hope's setting): the study's `PAPER_ABLATION` when it has one, else Table 6's rows as named
    by `results_lm` (whose Hope has every switch of the table on)."""
    table = getattr(study, "PAPER_ABLATION", None)
    if table is not None:
        return table.get(variant, (None, None))
    return PAPER_ABLATION_PPL[variant], PAPER_ABLATION_PPL["hope"]


def lr_section(out: Path, study) -> str:
    """The learning-rate selection table (seed 0 at every rate of `study.LEARNING_RATES`)."""
    grid = getattr(study, "LEARNING_RATES", None)
    records = compare.read_records(out / "lr_runs")
    if not grid or not records:
        return ""
    by = {(r["variant"], r["config"]["optim"]["lr"]): r for r in records}
    seed = records[0]["seed"]
    rows = []
    for v in study.MODELS:
        if not any((v, lr) in by for lr in grid):
            continue
        chosen = selected_lr(out, v, grid, seed)
        cells = []
        for lr in grid:
            r = by.get((v, lr))
            if r is None:
                cells.append("not run")
            elif r["final"] is None:
                cells.append("diverged")
            else:
                mark = " **(chosen)**" if lr == chosen else ""
                cells.append(f"{r['final']['val_loss']:.4f}{mark}")
        rows.append(
            [LABELS[v], *cells, f"{sum(by[(v, lr)]['wall_s'] for lr in grid if (v, lr) in by):.0f}"]
        )
    table = compare.markdown_table(
        ["model", *[f"lr {lr:g}" for lr in grid], "wall s (all rates)"], rows
    )
    return f"""
## Learning rate per model

Validation loss (nats/byte) of seed {seed} at each peak learning rate (`lr_runs/`); every model's
seeds then run at the rate with the lowest loss (a diverged run never wins), and the ablations at
Hope's. The chosen run is also the model's seed-{seed} run in the tables below. The selection took
{sum(r["wall_s"] for r in records) / 3600:.2f} hours of wall time over {len(records)} runs.

{table}
"""


def write_report(out: Path, command: str, study=results_lm) -> None:
    """README.md, results.json and the plots from every recorded run under `out`.

    Means are over finished runs; diverged runs are counted and listed, never averaged.
    """
    recorded = load_runs(out)
    if not recorded:
        return
    LABELS.update(study.LABELS)  # the study's own variants
    groups, diverged = split_runs(recorded)
    main = [v for v in study.MODELS if v in recorded]
    ablations = [v for v in study.ABLATIONS if v in recorded]
    summary = {}
    for v, runs in diverged.items():
        summary[v] = {"diverged": {str(r["seed"]): r["diverged"] for r in runs}}
    for v, runs in groups.items():
        summary.setdefault(v, {}).update(
            {
                "seeds": [r["seed"] for r in runs],
                "parameters": runs[0]["parameters"],
                "train_tokens": runs[0]["train_tokens"],
                **{
                    k: compare.mean_std(_vals(runs, k))
                    for k in ("val_loss", "val_bpc", "val_perplexity", "test_loss", "test_bpc")
                },
                "tokens_per_sec": compare.mean_std([r["tokens_per_sec"] for r in runs]),
                "wall_s": [r["wall_s"] for r in runs],
            }
        )
    (out / "results.json").write_text(json.dumps(summary, indent=1))

    def cell(v: str, values, digits: int) -> str:
        return compare.format_mean_std(values, digits) if v in groups else "diverged"

    def seeds(v: str) -> str:
        n_bad = len(diverged.get(v, []))
        return f"{len(groups.get(v, []))}" + (f" (+{n_bad} diverged)" if n_bad else "")

    rows = []
    for v in main:
        runs = groups.get(v, [])
        ppl, source = PAPER_PPL.get(v, (None, "not in the paper"))
        body = recorded[v][0].get("non_embedding_parameters")
        rows.append(
            [
                LABELS[v],
                f"{recorded[v][0]['parameters'] / 1e6:.3f}M",
                "—" if body is None else f"{body / 1e6:.3f}M",
                f"{recorded[v][0]['config']['optim']['lr']:g}",
                cell(v, _vals(runs, "val_loss"), 4),
                cell(v, _vals(runs, "val_bpc"), 3),
                cell(v, _vals(runs, "val_perplexity"), 3),
                cell(v, _vals(runs, "test_bpc"), 3),
                cell(v, [r["tokens_per_sec"] for r in runs], 0),
                seeds(v),
                "—" if ppl is None else f"{ppl} ({source})",
            ]
        )
    diverged_rows = [
        [
            LABELS[v],
            r["seed"],
            r["diverged"]["first_nonfinite_step"],
            r["diverged"]["stopped_at_step"],
            r["config"]["train"]["num_steps"],
            "—"
            if r["diverged"]["last_finite_loss"] is None
            else f"{r['diverged']['last_finite_loss']:.4f} (step "
            f"{r['diverged']['last_finite_step']})",
        ]
        for v in [*study.MODELS, *study.ABLATIONS]
        for r in diverged.get(v, [])
    ]
    diverged_table = (
        "Diverged runs (recorded in `runs/`, left out of every mean): the trainer stops a run "
        "after `train.max_consecutive_nonfinite` consecutive steps with a non-finite loss or "
        "gradient.\n\n"
        + compare.markdown_table(
            [
                "run",
                "seed",
                "first non-finite step",
                "stopped at step",
                "of",
                "last finite train loss",
            ],
            diverged_rows,
        )
        if diverged_rows
        else "No run diverged."
    )
    main_table = compare.markdown_table(
        [
            "model",
            "params",
            "non-embedding",
            "peak lr",
            "val loss (nats/byte)",
            "val bpc",
            "val ppl (per byte)",
            "test bpc",
            "train tokens/s",
            "seeds",
            "paper: Wiki ppl, 760M/30B",
        ],
        rows,
    )
    ranked = [v for v in main if v in groups]
    order_here = sorted(ranked, key=lambda v: compare.mean_std(_vals(groups[v], "val_loss"))[0])
    order_paper = sorted(
        [v for v in ranked if PAPER_PPL.get(v, (None,))[0] is not None],
        key=lambda v: PAPER_PPL[v][0],
    )
    claims = [
        c
        for c in (
            _claim(groups, "hope", "transformer_pp"),
            _claim(groups, "hope", "titans_lmm"),
            _claim(groups, "hope", "gated_deltanet"),
            _claim(groups, "titans_lmm", "transformer_pp"),
            _claim(groups, "titans_mac", "titans_lmm"),
            _claim(groups, "gated_deltanet", "deltanet"),
            _claim(groups, "transformer_pp", "deltanet"),
            _claim(groups, "hope_attention", "transformer_pp"),
        )
        if c is not None
    ]
    claim_table = compare.markdown_table(
        ["paper's claim (lower loss)", "Δ val loss here", "seeds", "here"], claims
    )

    abl_rows = []
    if "hope" in groups and ablations:
        hope_loss, hope_std = compare.mean_std(_vals(groups["hope"], "val_loss"))
        hope_by_seed = {r["seed"]: r["final"]["val_loss"] for r in groups["hope"]}
        for v in ["hope", *ablations]:
            runs = groups.get(v, [])
            paper, paper_ref = paper_ablation(study, v)
            paper_delta = None if paper is None else paper - paper_ref
            here_delta, paired, verdict = 0.0, [], "—"
            if runs:
                here_delta = compare.mean_std(_vals(runs, "val_loss"))[0] - hope_loss
                paired = [
                    r["final"]["val_loss"] - hope_by_seed[r["seed"]]
                    for r in runs
                    if r["seed"] in hope_by_seed
                ]
                # The same-seed difference when there is one (it removes the seed's noise).
                delta = sum(paired) / len(paired) if paired else here_delta
                if abs(delta) <= hope_std:
                    verdict = "no effect (within Hope's seed std)"
                elif paper_delta is None:
                    verdict = "—"
                else:
                    same = (paper_delta > 0) == (delta > 0)
                    verdict = "paper's direction" if same else "opposite direction"
            is_hope = v == "hope"
            abl_rows.append(
                [
                    LABELS[v],
                    f"{recorded[v][0]['parameters'] / 1e6:.3f}M",
                    cell(v, _vals(runs, "val_loss"), 4),
                    cell(v, _vals(runs, "val_perplexity"), 3),
                    "—" if is_hope or not runs else f"{here_delta:+.4f}",
                    "—" if is_hope or not paired else f"{float(sum(paired) / len(paired)):+.4f}",
                    seeds(v),
                    "—" if paper is None else f"{paper}",
                    "—" if is_hope or paper_delta is None else f"{paper_delta:+.2f}",
                    "—" if is_hope else verdict,
                ]
            )
    abl_table = compare.markdown_table(
        [
            "variant",
            "params",
            "val loss",
            "val ppl",
            "Δ loss vs Hope (mean)",
            "Δ loss vs Hope, same seed",
            "seeds",
            "paper ppl (Table 6)",
            "paper Δ ppl",
            "here",
        ],
        abl_rows,
    )

    def with_diverged(variants) -> dict:
        curves = {
            LABELS[v]: [(r["curve"]["tokens"], r["curve"]["loss"]) for r in groups[v]]
            for v in variants
            if v in groups
        }
        for v in variants:
            for r in diverged.get(v, []):
                label = f"{LABELS[v]} seed {r['seed']}, diverged"
                curves[label] = [(r["curve"]["tokens"], r["curve"]["loss"])]
        return curves

    curves = with_diverged(main)
    if curves:
        compare.plot_curves(
            curves,
            out / "loss_vs_tokens.png",
            xlabel="training tokens (bytes)",
            ylabel="train loss (nats/byte)",
            title="Shakespeare, byte level, ≈2M parameters (mean ± std over seeds)",
            ylim=None,
        )
    if ablations and "hope" in groups:
        compare.plot_curves(
            with_diverged(["hope", *ablations]),
            out / "ablations_loss_vs_tokens.png",
            xlabel="training tokens (bytes)",
            ylabel="train loss (nats/byte)",
            title="Hope ablations (Table 6 switches)",
        )
    runs_all = [r for rs in recorded.values() for r in rs]
    n_finished = sum(len(rs) for rs in groups.values())
    n_diverged = len(runs_all) - n_finished

    def write_rule(sm) -> str:
        return (
            f"η_max {sm['eta_max']:g}, dgd_step {sm.get('dgd_step', 'printed')}, "
            f"DGD {'on' if sm.get('use_dgd', True) else 'off'}, "
            f"momentum {sm.get('momentum', 0.5):g}"
        )

    hope_rules = sorted(
        {
            write_rule(r["config"]["model"]["self_modifying"])
            for r in runs_all
            if r["config"]["model"]["name"] == "hope"
        }
    )
    hope_note = (
        ""
        if not hope_rules
        else "Hope's self-modifying write rules in these runs (η = η_max·sigmoid(·)): "
        + "; ".join(hope_rules)
        + " (`results_lm.HOPE_SELF_MODIFYING`, and the study's variants)."
    )
    codes = sorted({r["code"] for r in runs_all if "code" in r})
    unrecorded = sum("code" not in r for r in runs_all)
    code_note = (
        "one source tree" + (f" (fingerprint {codes[0]})" if codes else "")
        if len(codes) <= 1
        else f"{len(codes)} different source trees ({', '.join(codes)}: other work changed the "
        "library between runs; each run's `code` field says which)"
    )
    if unrecorded:
        code_note += f"; {unrecorded} run(s) started before fingerprints were recorded"
    seeds = getattr(study, "SEEDS", (0, 1, 2))
    ablation_seeds = getattr(study, "ABLATION_SEEDS", (0,))
    planned = [run_name(v, s) for s in seeds for v in study.MODELS]
    planned += [run_name(v, s) for s in ablation_seeds for v in study.ABLATIONS]
    done = {run_name(r["variant"], r["seed"]) for r in runs_all}
    missing = [p for p in planned if p not in done]
    walls = [r["wall_s"] for r in runs_all]
    loads = [x for r in runs_all for x in (r["load_avg_start"][0], r["load_avg_end"][0])]
    any_run = runs_all[0]
    cfg = any_run["config"]
    body_target = getattr(study, "TARGET_NON_EMBEDDING", None)
    budget = (
        f"{body_target / 1e6:.2f}M ± {study.PARAM_TOLERANCE:.0%} non-embedding parameters"
        if body_target
        else f"{study.TARGET_PARAMS / 1e6:.1f}M ± {study.PARAM_TOLERANCE:.0%} parameters"
    )
    rate = (
        "peak lr per model from " + ", ".join(f"{lr:g}" for lr in study.LEARNING_RATES) + " (below)"
        if getattr(study, "LEARNING_RATES", None)
        else f"lr {cfg['optim']['lr']}"
    )
    text = f"""# Language modelling: matched models on byte-level Shakespeare

Produced by `{command}` (`experiments/lm_compare.py`, config
`experiments/configs/{study.__name__}.py`); every number below is read from `runs/*.json`.
Regenerate the tables from finished runs with the same command and `--report_only`.

**Setup.** {cfg["data"]["corpus"]} ({cfg["data"]["tokenizer"]} tokens), split by whole play
(validation and test each {cfg["data"]["val_fraction"]:.0%} of the 42 works: two held-out plays
each, never seen in training). d_model {cfg["model"]["d_model"]}, {cfg["model"]["num_layers"]}
layers, {cfg["model"]["num_heads"]} heads; feed-forward width per model so that every model has
{budget}. Windows of
{cfg["data"]["seq_len"]} bytes, batch {cfg["data"]["batch_size"]},
{any_run["train_tokens"]:,} training tokens per run ({cfg["train"]["num_steps"]} AdamW steps,
{rate}, warmup {cfg["optim"]["warmup_steps"]}, cosine to
{cfg["optim"]["min_lr_ratio"]}×, weight decay {cfg["optim"]["weight_decay"]}, clip
{cfg["optim"]["grad_clip"]}); Hope's CMS levels are trained every 1, 4 and 16 steps (scheduled
mode, Eq. 71). {hope_note} Validation and test loss over {cfg["train"]["eval_batches"]} batches
({cfg["train"]["eval_batches"] * cfg["data"]["batch_size"] * cfg["data"]["seq_len"]:,} bytes) of
the held-out plays. Mean ± sample std over seeds; bpc = loss / ln 2 (one byte per character).

**Token budget.** {any_run["train_tokens"]:,} training tokens per run, so that the plan fits a
CPU session; the measured wall times are below. This is small: the models are far from
converged, and the comparison measures how fast each architecture learns in its first
{any_run["train_tokens"]:,} bytes.

**Machine.** {any_run["machine"]}, shared with other jobs: load average
{min(loads):.1f}–{max(loads):.1f} during these runs, so tokens/s are contended numbers (compare
them only with each other, and with care: the load changed between runs). Wall time per run
{min(walls):.0f}–{max(walls):.0f} s, total {sum(walls) / 60:.1f} min for {len(runs_all)} runs.
Library code: {code_note}.

**Status.** {len(runs_all)} of {len(planned)} planned runs recorded (every model × seeds
{", ".join(map(str, seeds))}; every ablation × seeds {", ".join(map(str, ablation_seeds))}): {
        n_finished
    } finished, {n_diverged} diverged. Not run: {", ".join(missing) if missing else "none"}.

**Commands.** `python experiments/lm_compare.py` runs (or resumes) the whole plan;
`--variants`, `--seeds`, `--ablations`, `--ablation_seeds` pick a part; several processes may
share the plan (a lock file per run); `--report_only` rewrites this file.

{lr_section(out, study)}
## Models ({len(main)} of {len(study.MODELS)} with at least one seed)

{main_table}

Paper column: Wiki perplexity of 760M-parameter models trained on 30B tokens (NL-arXiv Table 2,
arXiv 2512.24695 §9.3; Titans Table 1, arXiv 2501.00663, where NL Table 2 has no row).
Paper order (best first):
{" < ".join(LABELS[v] for v in order_paper)}. Order here (val loss, best first):
{" < ".join(LABELS[v] for v in order_here)}.

{claim_table}

{diverged_table}

![loss vs tokens](loss_vs_tokens.png)
{memory_section(groups, main, out)}
## Hope ablations (NL-arXiv Table 6)

{abl_table if abl_rows else "(not run yet)"}

The paper does not state the scale of Table 6, so only the direction is compared.
Ablation seeds: {sorted({r["seed"] for v in ablations for r in recorded[v]}) if ablations else "—"}.
"Same seed" pairs each ablation run with the Hope run of its seed (same initialisation seed and
data order); the "here" column judges that difference (the mean difference where no Hope run
shares the seed): an ablation whose difference is within Hope's standard deviation over seeds
has no measurable effect here.
"""
    (out / "README.md").write_text(text)


def run_planned(
    variant: str,
    seed: int,
    out: Path,
    workdir: Path,
    command: str,
    study,
    *,
    lr: float | None = None,
    select: bool = False,
) -> None:
    """Trains one planned run unless its record exists or another process holds its lock;
    `select`: a learning-rate selection run (`lr_runs/`), else a compared run (`runs/`)."""
    name, folder = (
        (lr_run_name(variant, lr, seed), "lr_runs")
        if select
        else (
            run_name(variant, seed),
            "runs",
        )
    )
    if (out / folder / f"{name}.json").exists():
        print(f"skip {name} (finished)", flush=True)
        return
    lock = out / folder / f"{name}.lock"
    if not claim(lock):
        print(f"skip {name} (running in another process)", flush=True)
        return
    print(f"run {name} (load {os.getloadavg()[0]:.1f})", flush=True)
    try:
        record = train_one(
            variant, seed, out, workdir, FLAGS.quick, study, lr=lr, name=name, folder=folder
        )
    finally:
        lock.unlink(missing_ok=True)
    f, d = record["final"], record["diverged"]
    outcome = (
        f"val {f['val_loss']:.4f} nats/byte"
        if f
        else f"diverged at step {d['first_nonfinite_step']} (stopped at "
        f"{d['stopped_at_step']}, last finite loss {d['last_finite_loss']})"
    )
    print(
        f"done {name}: {outcome}, {record['tokens_per_sec']:.0f} tokens/s, "
        f"{record['wall_s']:.0f} s",
        flush=True,
    )
    write_report(out, command, study)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if FLAGS.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    out, workdir = Path(FLAGS.out), Path(FLAGS.workdir)
    try:
        study = importlib.import_module(FLAGS.study)
    except ModuleNotFoundError as error:
        raise app.UsageError(
            f"--study={FLAGS.study!r}: no such config module in experiments/configs"
        ) from error
    command = "python experiments/lm_compare.py" + (" --quick" if FLAGS.quick else "")
    if FLAGS.study != "results_lm":
        command += f" --study={FLAGS.study} --out={out}"
    if FLAGS.report_only:
        write_report(out, command, study)
        return
    variants = list(study.MODELS) if FLAGS.variants is None else FLAGS.variants
    ablations = list(study.ABLATIONS) if FLAGS.ablations is None else FLAGS.ablations
    for name in variants:
        if name not in study.MODELS:
            raise app.UsageError(f"--variants: {name!r} is not one of {study.MODELS}")
    for name in ablations:
        if name not in study.ABLATIONS:
            raise app.UsageError(f"--ablations: {name!r} is not one of {list(study.ABLATIONS)}")
    seeds = [int(x) for x in (FLAGS.seeds or getattr(study, "SEEDS", (0, 1, 2)))]
    ablation_seeds = FLAGS.ablation_seeds or getattr(study, "ABLATION_SEEDS", (0,))
    ablation_seeds = [int(x) for x in ablation_seeds]
    grid = getattr(study, "LEARNING_RATES", None)
    if grid:  # each model's rate is chosen on the first seed, then every seed runs at it
        for v in variants:
            for lr in grid:
                run_planned(v, seeds[0], out, workdir, command, study, lr=lr, select=True)
    plan = [(v, s) for s in seeds for v in variants]
    plan += [(v, s) for s in ablation_seeds for v in ablations]
    for variant, seed in plan:
        lr = None
        if grid:
            lr = selected_lr(out, "hope" if variant in study.ABLATIONS else variant, grid, seeds[0])
            if lr is None:
                print(f"skip {run_name(variant, seed)} (its learning rate is not chosen yet)")
                continue
            chosen = out / "lr_runs" / f"{lr_run_name(variant, lr, seed)}.json"
            target = out / "runs" / f"{run_name(variant, seed)}.json"
            if chosen.exists() and not target.exists():  # the selection run is this run
                compare.write_json_atomic(target, json.loads(chosen.read_text()))
        run_planned(variant, seed, out, workdir, command, study, lr=lr)
    write_report(out, command, study)


if __name__ == "__main__":
    tune_host_allocator()  # keep XLA's freed buffers in the process
    app.run(main)
