"""CLAIMS.md: one row per claim of every experiment, judged from paired seeds (PAPER.md section 8).

    python -m replication.claims experiments/A/config.yaml experiments/B/config.yaml ... \\
        --scale S --results results/S --out results/S/CLAIMS.md

reads ``results/S/<experiment>/summary.csv`` (written by ``replication.aggregate``). A relative claim
compares each seed of ``method`` with the same seed of ``baseline`` (same data); the verdict is
*reproduced* when the 95 % t interval of the per-seed relative change excludes 0 on the claimed
side, *opposite* when it excludes 0 on the other side, *inconclusive* otherwise. At ``smoke`` scale
the verdict column says that smoke runs are not evidence.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from replication.config import ClaimSpec, ConfigError, ExperimentSpec, load_experiment
from replication.stats import Estimate, paired_relative_changes, t_interval, verdict_at_least, verdict_relative


def judge(claim: ClaimSpec, summary: pd.DataFrame) -> tuple[Estimate, str]:
    data = summary[summary.metric == claim.metric]

    def by_seed(method: str) -> dict[int, float]:
        rows = data[data.method == method]
        return dict(zip(rows.seed.astype(int), rows.value))

    if claim.kind == "relative":
        estimate = t_interval(paired_relative_changes(by_seed(claim.method), by_seed(claim.baseline)))
        return estimate, verdict_relative(estimate, claim.direction)
    estimate = t_interval(list(by_seed(claim.method).values()))
    return estimate, verdict_at_least(estimate, claim.threshold if claim.threshold is not None else 0.0)


def claim_rows(spec: ExperimentSpec, summary: pd.DataFrame, scale: str) -> list[list[str]]:
    rows = []
    for claim in spec.paper.claims:
        estimate, verdict = judge(claim, summary)
        if claim.kind == "relative":
            measure = f"`{claim.metric}`: {claim.method} vs {claim.baseline}, relative change"
            ours = estimate.format_percent()
        else:
            measure = f"`{claim.metric}` of {claim.method} runs, at least {claim.threshold:g}"
            ours = estimate.format()
        if scale == "smoke":
            verdict = f"not evidence (smoke runs; would read: {verdict})"
        figure = f"[{claim.figure}]({spec.experiment}/{claim.figure})" if claim.figure else "—"
        rows.append([claim.id, claim.claim, spec.experiment, measure, claim.paper_value, f"{ours}, {scale}", verdict, figure])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replication.claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+", type=Path, help="experiments/NAME/config.yaml files")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--results", type=Path, required=True, help="results/SCALE")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = []
    try:
        for path in args.experiments:
            spec = load_experiment(path)
            csv = args.results / spec.experiment / "summary.csv"
            if not csv.exists():
                raise FileNotFoundError(f"{csv} is missing: aggregate the experiment first")
            rows += claim_rows(spec, pd.read_csv(csv), args.scale)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    headers = ["id", "claim", "experiment", "measure", "paper", "ours (mean [95 % CI] (n seeds), scale)", "verdict", "figure"]
    text = [
        f"# Claims at `{args.scale}` scale",
        "",
        "Each verdict comes from the seeds of this scale: the per-seed paired change (same seed, same data)",
        "with a 95 % t interval. *Reproduced*: the interval excludes 0 on the claimed side (for a threshold",
        "claim: its lower end reaches the threshold); *opposite*: it excludes 0 on the other side (its upper",
        "end stays below the threshold); *inconclusive*: neither, or fewer than two seeds.",
        *(["", "**Smoke runs prove the pipeline; they are not evidence for or against any claim.**"] if args.scale == "smoke" else []),
        "",
        tabulate(rows, headers=headers, tablefmt="github"),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
