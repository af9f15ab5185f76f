"""The compute every committed study took, summed from its run records.

    python experiments/compute_budget.py            # writes docs/results/compute.{md,json}
    python experiments/compute_budget.py --root docs/results --out /tmp/budget

A *run record* is a JSON file in a directory whose name ends in `runs` (`runs/`, `lr_runs/`,
`lm_runs/`, `fmnist_runs/`: one finished run each, as the resumable studies write them) or an
adapter experiment's result file (`adapters/*.json`: one entry per variant). Its compute is the
wall time the run recorded: `wall_s` (language models, S-NIAH, recall, the passkey adapter),
`seconds` (continual learning, optimizer studies) or the sum of its variants' `wall_s`
(adapters). A study is the records' directory, `runs/` itself left out (`lm_comparison`,
`lm_comparison/lr_runs`, `continual/lm_runs`).

The times are process wall times on the machine each record names — for the committed results a
2-core CPU shared with other runs (load averages of 1–29 are recorded beside the runs), so they
overstate what the same runs take on an idle machine and are not core-hours of exclusive use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def record_seconds(record: dict) -> float | None:
    """The wall seconds a run record states, None when it states none."""
    for key in ("wall_s", "seconds"):
        if isinstance(record.get(key), int | float):
            return float(record[key])
    variants = record.get("variants")
    if isinstance(variants, dict):
        times = [v.get("wall_s") for v in variants.values() if isinstance(v, dict)]
        if times and all(isinstance(t, int | float) for t in times):
            return float(sum(times))
    return None


def study_of(path: Path, root: Path) -> str | None:
    """The study a record belongs to, or None when `path` is not a run record."""
    rel = path.relative_to(root)
    if path.parent.name.endswith("runs"):  # lm_comparison/runs -> lm_comparison
        study = rel.parent.parent if path.parent.name == "runs" else rel.parent
        return str(study) if study != Path(".") else path.parent.name
    if rel.parts[0] == "adapters" and len(rel.parts) == 2:
        return f"adapters/{path.stem}"
    return None


def budget(root: Path) -> dict[str, dict]:
    """study -> {runs, seconds, without_time}: the summed wall time of its records."""
    out: dict[str, dict] = {}
    for path in sorted(root.rglob("*.json")):
        study = study_of(path, root)
        if study is None:
            continue
        seconds = record_seconds(json.loads(path.read_text()))
        row = out.setdefault(study, {"runs": 0, "seconds": 0.0, "without_time": 0})
        row["runs"] += 1
        if seconds is None:
            row["without_time"] += 1
        else:
            row["seconds"] += seconds
    return out


def markdown(rows: dict[str, dict], command: str) -> str:
    total = sum(r["seconds"] for r in rows.values())
    lines = [
        "# Compute per study",
        "",
        f"Produced by `{command}` from the run records under this directory (see the "
        "script's docstring for what counts as a record). Hours are process wall time on the "
        "machine each study's page names — for these results a 2-core CPU shared with other "
        "runs, so they overstate the cost on an idle machine.",
        "",
        "| study | runs | hours | runs without a time |",
        "|---|---|---|---|",
    ]
    for study, r in sorted(rows.items()):
        lines.append(
            f"| `{study}` | {r['runs']} | {r['seconds'] / 3600:.2f} | {r['without_time'] or ''} |"
        )
    lines.append(f"| **all** | {sum(r['runs'] for r in rows.values())} | {total / 3600:.2f} | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("docs/results"))
    parser.add_argument("--out", type=Path, default=None, help="default: --root")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise SystemExit(f"--root {args.root}: no such directory")
    out = args.out or args.root
    out.mkdir(parents=True, exist_ok=True)
    rows = budget(args.root)
    command = "python experiments/compute_budget.py"
    if args.root != Path("docs/results") or args.out is not None:
        command += f" --root {args.root}" + (f" --out {args.out}" if args.out else "")
    (out / "compute.json").write_text(json.dumps(rows, indent=1) + "\n")
    text = markdown(rows, command)
    (out / "compute.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
