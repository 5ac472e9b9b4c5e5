"""CLAIMS.md: one row per claim of every experiment, judged from paired seeds (docs/SPEC.md section 8).

    python -m replication.reporting.claims experiments/A/config.yaml experiments/B/config.yaml ... \\
        --scale S --results results/S --out results/S/CLAIMS.md

reads ``results/S/<experiment>/summary.csv`` (written by ``replication.reporting.aggregate``). Each claim
names the statistic fit to its quantity (``ClaimSpec.kind``; ``replication.reporting.stats`` defines them):
the paired log ratio for a relative change of a positive quantity, the paired difference where the baseline
can be near zero, the median paired difference with the sign test for heavy-tailed quantities, a
threshold test for counts, and a permutation test of serial dependence for RQ1. The raw verdict
reads the claim's own p-value at 0.05; the Holm verdict reads its p-value adjusted over every claim of
the same experiment. At ``smoke`` scale the verdict columns say that smoke runs are not evidence.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from replication.config.report import ClaimSpec, ReportSpec, load_report_spec
from replication.reporting.stats import Estimate, at_least, fisher_combined, holm, paired_change, verdict
from replication.runtime import cli
from replication.science.errors import DataError


@dataclass(frozen=True)
class Judgement:
    claim: ClaimSpec
    estimate: Estimate
    text: str  # ours, as printed
    p: float | None
    direction: str


def _serial_dependence(claim: ClaimSpec, data: pd.DataFrame) -> Judgement:
    """RQ1: per run, one-sided permutation p-values of the lag-1 autocorrelation of the detrended
    cosine series (the metric's ``_p_persistent`` and ``_p_alternating`` companions), each side
    combined over runs (independent seeds) by Fisher's method. The smaller side decides the
    direction, and its p-value is doubled for having looked at both (Bonferroni)."""

    def per_seed(key: str) -> list[float]:
        rows = data[(data.metric == key) & (data.method == claim.method)]
        return [float(v) for v in rows.sort_values("seed").value]

    observed, shuffled = per_seed(claim.metric), per_seed(f"{claim.metric}_shuffled")
    persistent = fisher_combined(per_seed(f"{claim.metric}_p_persistent"))
    alternating = fisher_combined(per_seed(f"{claim.metric}_p_alternating"))
    n = len(observed)
    if persistent is None or alternating is None or n < 2:
        estimate = Estimate(math.nan, None, None, n, None)
        return Judgement(claim, estimate, f"n/a (n={n})", None, claim.direction)
    p = min(1.0, 2 * min(persistent, alternating))
    side = 1.0 if persistent <= alternating else -1.0  # +: more persistent than chance
    mean_obs, mean_null = sum(observed) / n, sum(shuffled) / n
    estimate = Estimate(side, None, None, n, p, 0.0, "permutation")
    text = (
        f"lag-1 autocorrelation {mean_obs:.3g} against {mean_null:.3g} in shuffled order; "
        f"p = {p:.2g} for {'persistence' if side > 0 else 'alternation'} "
        f"(permutation, Fisher over n={n} runs)"
    )
    return Judgement(claim, estimate, text, p, claim.direction)


def judge(claim: ClaimSpec, summary: pd.DataFrame) -> Judgement:
    data = summary[summary.metric.astype(str).str.startswith(claim.metric)]

    def by_seed(method: str) -> dict[int, float]:
        rows = data[(data.method == method) & (data.metric == claim.metric)]
        return dict(zip(rows.seed.astype(int), rows.value))

    if claim.kind == "serial_dependence":
        return _serial_dependence(claim, data)
    if claim.kind in ("at_least", "robust_at_least"):
        estimate = at_least(
            list(by_seed(claim.method).values()), claim.threshold, robust=claim.kind == "robust_at_least"
        )
        return Judgement(claim, estimate, estimate.format(), estimate.p, "increase")
    try:
        estimate = paired_change(by_seed(claim.method), by_seed(claim.baseline), claim.kind)
    except ValueError:  # a relative claim on a value <= 0: no ratio exists, so no verdict either
        estimate = Estimate(math.nan, None, None, 0)
        return Judgement(claim, estimate, "n/a (a value <= 0: the ratio is undefined)", None, claim.direction)
    return Judgement(claim, estimate, estimate.format(), estimate.p, claim.direction)


MEASURES = {
    "relative": "relative change (geometric mean of the paired ratio, t interval of its log)",
    "difference": "paired difference (mean, t interval)",
    "robust_difference": "paired difference (median, sign-test interval)",
}


def measure(claim: ClaimSpec) -> str:
    if claim.kind == "serial_dependence":
        return (
            f"`{claim.metric}` of {claim.method} runs: persistence of the detrended cosine beyond the same "
            "values in random order"
        )
    if claim.kind in ("at_least", "robust_at_least"):
        centre = "median, sign-test interval" if claim.kind == "robust_at_least" else "mean, t interval"
        return (
            f"`{claim.metric}` of {claim.method} runs, at least {claim.threshold:g} "
            f"(tested: {centre} above it)"
        )
    return f"`{claim.metric}`: {claim.method} vs {claim.baseline}, {MEASURES[claim.kind]}"


def claim_rows(spec: ReportSpec, summary: pd.DataFrame, scale: str) -> list[list[str]]:
    """The rows of one experiment: raw verdict at 0.05 and Holm verdict over the experiment's claims."""
    judgements = [judge(claim, summary) for claim in spec.paper.claims]
    adjusted = holm([j.p for j in judgements])
    rows = []
    for j, p_holm in zip(judgements, adjusted):
        raw, corrected = (
            verdict(j.estimate, j.direction),
            verdict(j.estimate, j.direction, p=p_holm if p_holm is not None else math.nan),
        )
        if scale == "smoke":
            raw, corrected = f"not evidence (would read: {raw})", f"not evidence (would read: {corrected})"
        p_text = "—" if j.p is None else f"{j.p:.2g} / {p_holm:.2g}"
        figure = f"[{j.claim.figure}]({spec.experiment}/{j.claim.figure})" if j.claim.figure else "—"
        rows.append(
            [
                j.claim.id,
                j.claim.claim,
                spec.experiment,
                measure(j.claim),
                j.claim.paper_value,
                f"{j.text}, {scale}",
                p_text,
                raw,
                corrected,
                figure,
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.reporting.claims", __doc__)
    parser.add_argument("experiments", nargs="+", type=Path, help="experiments/NAME/config.yaml files")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--results", type=Path, required=True, help="results/SCALE")
    parser.add_argument("--out", type=Path, required=True)
    return cli.run(_main, parser.parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    rows = []
    for path in args.experiments:
        spec = load_report_spec(path)
        csv = args.results / spec.experiment / "summary.csv"
        if not csv.exists():
            raise DataError(f"{csv} is missing: aggregate the experiment first")
        rows += claim_rows(spec, pd.read_csv(csv), args.scale)
    headers = [
        "id",
        "claim",
        "experiment",
        "measure",
        "paper",
        "ours (scale)",
        "p / Holm p",
        "verdict",
        "verdict (Holm)",
        "figure",
    ]
    experiments = sorted({row[2] for row in rows})
    per_experiment = ", ".join(f"{e} {sum(r[2] == e for r in rows)}" for e in experiments)
    text = [
        f"# Claims at `{args.scale}` scale",
        "",
        "Each verdict comes from the seeds of this scale, paired (same seed, same data), with the statistic",
        "fit to the quantity: a relative change of a positive quantity is the geometric mean of the paired",
        "ratio with the t interval of its log (it cannot pass -100 %); a quantity whose baseline can be near",
        "zero is a paired difference; a heavy-tailed one is the median paired difference with the sign "
        "test's",
        "distribution-free interval (none exists below 6 seeds); a count is tested for a mean above its",
        "threshold, with an interval cut at 0 (seeds with no spread: the sign test, no interval); RQ1's",
        "persistence is a permutation test of the lag-1 autocorrelation of the linearly detrended cosines",
        "against the same residuals in random order. Intervals are 95 %.",
        "*Reproduced*: p < 0.05 with the estimate on the claimed side; *opposite*: p < 0.05 on the other",
        "side; *inconclusive*: neither, or fewer than two seeds.",
        "",
        f"**Multiplicity.** {len(rows)} verdicts are drawn here ({per_experiment}). The raw verdict reads",
        "each claim's own p-value; the Holm verdict reads its p-value adjusted by Holm's step-down method",
        "over the claims of the same experiment, which keeps at most 5 % the chance that any claim of an",
        "experiment without a real effect reads other than *inconclusive*.",
        *(
            ["", "**Smoke runs prove the pipeline; they are not evidence for or against any claim.**"]
            if args.scale == "smoke"
            else []
        ),
        "",
        tabulate(rows, headers=headers, tablefmt="github"),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
