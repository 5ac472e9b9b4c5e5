"""CLAIMS.md: every claim of every experiment, judged as its analysis plan says (docs/SPEC.md section 8).

    python -m replication.reporting.claims experiments/A/config.yaml experiments/B/config.yaml ... \\
        --scale S --results results/S --out results/S/CLAIMS.md

reads each experiment's plan (``experiments/NAME/plan.yaml``, ``replication.config.plan``) and the CSVs
aggregation wrote under ``results/S/NAME`` (``replication.reporting.aggregate``, whose
``analysis_summary`` adds the statistics the analysis derives from them). It first checks that the runs
were made under the plan that judges them (``replication.reporting.preregistration``; not at ``smoke``
scale, whose rows are not evidence), then judges each claim by its kind:

- a *primary* claim reads its test's p-value adjusted by Holm's method over the testable primary
  claims of its experiment: *reproduced* (p < 0.05 with the estimate on the claimed side),
  *opposite* (p < 0.05 on the other side) or *inconclusive*; *not testable* where its precondition
  fails, which also takes it out of the family. Beside it: whether the 95 % interval holds the
  paper's value, and for a claim that is not significant, the equivalence test (TOST) against the
  plan's smallest effect of interest and the effects its interval excludes;
- a *manipulation check* (the treatment acted: an MBE penalty lowers MBE) and a *descriptive
  condition* read *met* or *not met* with their numbers, at their own p < 0.05, outside the family.

Beside CLAIMS.md it writes the same rows for programs, ``claims.json`` (``--json``, by default in
CLAIMS.md's folder; ``replication.reporting.published`` loads it): an object with ``schema``
(``SCHEMA``), ``scale``, ``experiments`` (in the tables' order), ``plans`` (per experiment: its
``file``, content ``sha256`` and ``deviations``), ``run_commits`` (every commit the scale's runs were
trained at: the numbers come from those runs) and ``claims``, one record per table row in the tables'
order (``record`` names its keys). Keys are sorted and the file holds no time of its own, so that
making it again from the same CSVs gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from replication.config.plan import PAIRED, AnalysisPlan, ClaimPlan, load_plan, plan_path
from replication.config.report import ReportSpec, load_report_spec
from replication.reporting import aggregate, preregistration
from replication.reporting.stats import (
    Estimate,
    at_least,
    equivalence,
    fisher_combined,
    holm,
    paired_change,
    per_seed_effects,
    runs_at_least,
    verdict,
)
from replication.runtime import cli
from replication.science.errors import DataError, did_you_mean

NOT_EVIDENCE = "not evidence (would read: {})"
SCHEMA = 1  # claims.json's layout: raised when a key changes meaning or goes away
KINDS = ("primary", "manipulation", "descriptive")  # the order of CLAIMS.md's tables


@dataclass(frozen=True)
class Judgement:
    claim: ClaimPlan
    estimate: Estimate | None
    text: str  # ours, as printed
    p: float | None
    met: bool | None = None  # a runs_at_least condition: whether every run reaches the threshold
    runs: tuple[int, int] | None = None  # a runs_at_least condition: (runs reaching the threshold, runs)
    effects: tuple[float, ...] = ()  # the per-seed paired effects (log ratios or differences)


def _by_seed(summary: pd.DataFrame, method: str, metric: str) -> dict[int, float]:
    rows = summary[(summary.method == method) & (summary.metric == metric)]
    return dict(zip(rows.seed.astype(int), rows.value.astype(float)))


def _persistence(claim: ClaimPlan, summary: pd.DataFrame) -> Judgement:
    """RQ1: per run, one-sided permutation p-values of the lag-1 autocorrelation of the detrended
    cosine (``replication.reporting.rq1``), each side combined over runs (independent seeds) by
    Fisher's method; the smaller side decides the direction and its p-value is doubled for having
    looked at both. The runs test on the signs is combined the same way and printed beside it."""

    def combined(test: str) -> tuple[float, float] | None:
        sides = [
            fisher_combined(list(_by_seed(summary, claim.method, f"rq1/{test}_p_{side}").values()))
            for side in ("persistent", "alternating")
        ]
        if None in sides:
            return None
        persistent, alternating = sides
        return (min(1.0, 2 * min(persistent, alternating)), 1.0 if persistent <= alternating else -1.0)

    observed = list(_by_seed(summary, claim.method, claim.metric).values())
    n = len(observed)
    autocorr, runs = combined("autocorr"), combined("sign_runs")
    if autocorr is None or n < 2:
        return Judgement(claim, Estimate(math.nan, None, None, n), f"n/a (n={n})", None)
    p, side = autocorr
    null = list(_by_seed(summary, claim.method, f"{claim.metric}_shuffled").values())
    changes = list(_by_seed(summary, claim.method, "rq1/sign_runs").values())
    changes_null = list(_by_seed(summary, claim.method, "rq1/sign_runs_shuffled").values())
    text = (
        f"lag-1 autocorrelation {_mean(observed):.3g} against {_mean(null):.3g} in random order, "
        f"p = {p:.2g} for {'persistence' if side > 0 else 'alternation'}"
    )
    if runs is not None:
        text += (
            f"; runs test on the signs: {_mean(changes):.3g} sign changes per block against "
            f"{_mean(changes_null):.3g}, p = {runs[0]:.2g} "
            f"for {'persistence' if runs[1] > 0 else 'alternation'}"
        )
    text += f" (permutation, Fisher over n={n} runs)"
    return Judgement(claim, Estimate(side, None, None, n, p, 0.0, "permutation"), text, p)


def _context(name: str, values: dict[int, float]) -> str:
    """'; name: median m (from a to b over runs)', of one context metric of the claim's runs."""
    if not values:
        return f"; {name}: no runs"
    ordered = sorted(values.values())
    return f"; {name}: median {_median(ordered):.3g} (from {ordered[0]:.3g} to {ordered[-1]:.3g} over runs)"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _median(values: list[float]) -> float:
    return float(pd.Series(values, dtype=float).median()) if values else math.nan


def judge(claim: ClaimPlan, summary: pd.DataFrame, labels: dict[str, str] | None = None) -> Judgement:
    """The estimate of one claim from the (analysis) summary rows, before any multiplicity adjustment;
    ``labels`` names the context metrics for a reader (the experiment's table labels)."""
    if claim.statistic == "persistence":
        return _persistence(claim, summary)
    values = _by_seed(summary, claim.method, claim.metric)
    context = "".join(
        _context((labels or {}).get(key, key), _by_seed(summary, claim.method, key)) for key in claim.context
    )
    if claim.statistic == "runs_at_least":
        k, n = runs_at_least(list(values.values()), claim.threshold)
        ordered = [v for _, v in sorted(values.items())]
        shown = (
            ", ".join(f"{v:.3g}" for v in ordered)
            if n <= 6
            else f"from {min(ordered):.3g} to {max(ordered):.3g}"
        )
        text = f"{k} of {n} runs at least {claim.threshold:g} ({shown}){context}"
        return Judgement(claim, None, text, None, met=n > 0 and k == n, runs=(k, n))
    if claim.statistic == "robust_at_least":
        estimate = at_least(list(values.values()), claim.threshold, robust=True)
        return Judgement(claim, estimate, estimate.format() + context, estimate.p)
    baseline = _by_seed(summary, claim.baseline, claim.metric)
    try:
        estimate = paired_change(values, baseline, claim.statistic)
    except ValueError:  # a relative claim on a value <= 0: no ratio exists, so no verdict either
        estimate = Estimate(math.nan, None, None, 0)
        return Judgement(claim, estimate, "n/a (a value <= 0: the ratio is undefined)", None)
    effects = tuple(per_seed_effects(values, baseline, claim.statistic))
    return Judgement(claim, estimate, estimate.format() + context, estimate.p, effects=effects)


def precondition_failure(plan: AnalysisPlan, claim: ClaimPlan, summary: pd.DataFrame) -> str | None:
    """Why the claim's precondition fails on these runs (None where it holds or there is none): a seed
    of the runs below the bar, or without the metric."""
    if claim.precondition is None:
        return None
    need = plan.preconditions[claim.precondition]
    values = _by_seed(summary, need.method, need.metric)
    seeds = sorted(set(summary.seed.astype(int)))
    if seeds and all(s in values and values[s] >= need.at_least for s in seeds):
        return None
    shown = ", ".join(f"{values[s]:.3g}" if s in values else f"none for seed {s}" for s in seeds) or "no runs"
    return (
        f"{claim.precondition}: {need.metric} of {need.method} is {shown}, the plan needs {need.at_least:g}"
    )


def unknown_metrics(plan: AnalysisPlan, summary: pd.DataFrame) -> list[str]:
    """Each metric the plan names that no run of its method has, where the method ran: a typo in the
    plan, or an analysis statistic the experiment file does not declare; named with the nearest
    metrics the runs have. A method the scale did not run (the global config's ``methods``) leaves its
    claims n/a instead."""
    found = []
    named = [(c.id, c.method, m) for c in plan.claims for m in (c.metric, *c.context)]
    named += [(c.id, c.baseline, c.metric) for c in plan.claims if c.statistic in PAIRED]
    named += [(k, p.method, p.metric) for k, p in plan.preconditions.items()]
    ran = set(summary.method)
    for owner, method, metric in dict.fromkeys(named):
        have = set(summary.metric[summary.method == method])
        if method in ran and metric not in have:  # a method the DAG left out: its claims read n/a
            found.append(f"{owner} names {metric!r}, which no {method} run has" + did_you_mean(metric, have))
    return found


def _direction(j: Judgement, p: float | None) -> str:
    """reproduced / opposite / inconclusive at p (the estimate's own where None)."""
    if j.estimate is None:
        return "inconclusive"
    return verdict(j.estimate, j.claim.direction, p=p)


def condition(j: Judgement) -> str:
    """A manipulation check's or descriptive condition's verdict: met / not met at its own p."""
    if j.met is not None:
        return "met" if j.met else "not met"
    read = _direction(j, None)
    return {"reproduced": "met", "opposite": "not met (the other way)"}.get(read, "not met")


def holds_paper(j: Judgement) -> str:
    """Whether the estimate's 95 % interval holds the paper's value, where both exist."""
    e = j.estimate
    if j.claim.paper is None or e is None or e.low is None:
        return "—"
    return "yes" if e.low <= j.claim.paper <= e.high else "no"


def _amount(claim: ClaimPlan, value: float) -> str:
    return f"{100 * value:+.1f} %" if claim.statistic == "relative" else f"{value:+.3g}"


def equivalence_p(j: Judgement) -> float | None:
    """TOST of a paired primary claim against its smallest effect of interest (None where none applies)."""
    if j.claim.statistic not in PAIRED or j.claim.sesoi is None or j.estimate is None or j.estimate.n < 2:
        return None
    return equivalence(list(j.effects), j.claim.sesoi, j.claim.statistic)


def equivalence_text(j: Judgement, significant: bool) -> str:
    """A testable primary claim against the smallest effect of interest (TOST), and for one that is not
    significant, the effects its 95 % interval excludes."""
    claim, e, p = j.claim, j.estimate, equivalence_p(j)
    if claim.statistic == "persistence":
        return "no bound: a permutation test gives no interval of the effect"
    if p is None:
        return "—"
    bound = f"±{100 * claim.sesoi:g} %" if claim.statistic == "relative" else f"±{claim.sesoi:g}"
    if significant:
        if p < 0.05:
            return f"the whole effect lies within {bound}, the smallest effect of interest (TOST p = {p:.2g})"
        if e.low is not None and (e.low > claim.sesoi or e.high < -claim.sesoi):
            return f"the whole interval lies beyond {bound}, the smallest effect of interest"
        return f"the interval reaches both within and beyond {bound}, the smallest effect of interest"
    text = f"{'equivalent' if p < 0.05 else 'not shown equivalent'} within {bound} (TOST p = {p:.2g})"
    if e.low is not None:
        text += f"; excludes changes below {_amount(claim, e.low)} and above {_amount(claim, e.high)}"
    return text


def figure_link(spec: ReportSpec, claim: ClaimPlan) -> str:
    return f"[{claim.figure}]({spec.experiment}/{claim.figure})" if claim.figure else "—"


def measure(claim: ClaimPlan) -> str:
    if claim.statistic == "persistence":
        return (
            f"`{claim.metric}` of {claim.method} runs: lag-1 autocorrelation of the detrended cosine against "
            "the same values in random order; beside it, the runs test on its signs"
        )
    if claim.statistic == "runs_at_least":
        return f"`{claim.metric}` of each {claim.method} run, at least {claim.threshold:g}"
    if claim.statistic == "robust_at_least":
        return f"`{claim.metric}` of {claim.method} runs: median against {claim.threshold:g}, sign test"
    how = {
        "relative": "relative change (geometric mean of the paired ratio, t interval of its log)",
        "difference": "paired difference (mean, t interval)",
        "robust_difference": "paired difference (median, sign-test interval)",
    }[claim.statistic]
    return f"`{claim.metric}`: {claim.method} vs {claim.baseline}, {how}"


def _number(value: float | None) -> float | None:
    """A statistic as claims.json holds it: to 12 significant digits, far beyond what the tables print,
    so that the last bits, which another machine's libraries may round differently, seldom change the
    file; None where there is none or it is not finite (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.12g}")


def _cell(text: str) -> str | None:
    """A table cell for claims.json: None where the table prints a dash (nothing applies)."""
    return None if text == "—" else text


def record(
    claim: ClaimPlan,
    j: Judgement,
    experiment: str,
    scale: str,
    cells: list[str],
    *,
    p: float | None,
    p_holm: float | None = None,
    tost_p: float | None = None,
) -> dict[str, Any]:
    """One claims.json record: the table row ``cells`` (as ``claim_rows`` prints it) with the numbers
    behind it. ``estimate``, ``low``, ``high``, ``paper`` and ``sesoi`` are in the statistic's units
    (a relative change as a fraction: 0.038 is +3.8 %); ``low`` and ``high`` bound the 95 % interval
    where there is one. ``estimate`` is the paired change, the median of a ``robust_at_least``
    statistic, the number of runs that reach ``threshold`` of ``runs_at_least`` (of ``n`` runs), and
    None for ``persistence`` (a permutation p-value; its text is in ``ours``). ``p`` is the test's own
    p-value and ``p_holm`` the Holm-adjusted one (a testable primary claim only; a claim that is not
    testable has neither); ``verdict``, ``raw_verdict``, ``ours`` and ``against_sesoi`` are the
    table's text, None where the table prints a dash. ``interval_holds_paper`` is whether the 95 %
    interval holds the paper's value (None where either is missing). ``plan_sha256`` and
    ``run_commits`` are added by ``main``, which knows the plan and the runs."""
    header = dict(zip(HEADERS[claim.kind], cells))
    e = j.estimate
    if j.runs is not None:
        estimate, n = j.runs
    else:
        estimate = None if e is None or claim.statistic == "persistence" else _number(e.mean)
        n = None if e is None else e.n
    return {
        "experiment": experiment,
        "id": claim.id,
        "kind": claim.kind,
        "claim": claim.claim,
        "statistic": claim.statistic,
        "metric": claim.metric,
        "method": claim.method,
        "baseline": claim.baseline if claim.statistic in PAIRED else None,
        "direction": None if claim.statistic == "runs_at_least" else claim.direction,
        "threshold": claim.threshold,
        "estimate": estimate,
        "low": None if e is None else _number(e.low),
        "high": None if e is None else _number(e.high),
        "n": n,
        "p": _number(p),
        "p_holm": _number(p_holm),
        "ours": cells[5],
        "verdict": header["verdict"],
        "raw_verdict": _cell(header.get("raw verdict", "—")),
        "paper_value": claim.paper_value,
        "paper": claim.paper,
        "interval_holds_paper": {"yes": True, "no": False}.get(
            header.get("interval holds the paper's value")
        ),
        "sesoi": claim.sesoi,
        "tost_p": _number(tost_p),
        "against_sesoi": _cell(header.get("against the smallest effect of interest", "—")),
        "figure": f"{experiment}/{claim.figure}" if claim.figure else None,
        "scale": scale,
    }


@dataclass
class Rows:
    """The rows of CLAIMS.md's three tables, and their claims.json records (in the same order within
    a kind)."""

    primary: list[list[str]]
    manipulation: list[list[str]]
    descriptive: list[list[str]]
    records: list[dict[str, Any]] = field(default_factory=list)


def claim_rows(spec: ReportSpec, plan: AnalysisPlan, summary: pd.DataFrame, scale: str) -> Rows:
    """The rows of one experiment's three tables."""
    smoke = scale == "smoke"
    labels = {row.key: row.label for row in spec.paper.table}
    unknown = unknown_metrics(plan, summary)
    if unknown:
        raise DataError(f"{spec.experiment}'s plan: " + "; ".join(unknown))

    def shown(read: str) -> str:
        return NOT_EVIDENCE.format(read) if smoke else read

    def row(claim: ClaimPlan, j: Judgement, *cells: str) -> list[str]:
        first = [
            claim.id,
            spec.experiment,
            claim.claim,
            measure(claim),
            claim.paper_value,
            f"{j.text}, {scale}",
        ]
        return [*first, *cells, figure_link(spec, claim)]

    primary, records = [], []
    judged = [(c, judge(c, summary, labels)) for c in plan.of_kind("primary")]
    failures = [precondition_failure(plan, c, summary) for c, _ in judged]
    adjusted = holm([None if why else j.p for (_, j), why in zip(judged, failures)])
    for (claim, j), why, p_holm in zip(judged, failures, adjusted):
        holds, tost = holds_paper(j), None
        if why is not None:
            headline, raw, p_text, equivalent, holds = f"not testable ({why})", "—", "—", "—", "—"
        else:
            headline = _direction(j, math.nan if p_holm is None else p_holm)
            raw = _direction(j, None)
            p_text = "—" if j.p is None else f"{j.p:.2g} / {p_holm:.2g}"
            equivalent = equivalence_text(j, headline != "inconclusive")
            tost = equivalence_p(j)
            if headline != "inconclusive" and tost is not None and tost < 0.05:
                headline += " (smaller than the smallest effect of interest)"
        cells = row(claim, j, p_text, shown(headline), shown(raw), holds, equivalent)
        primary.append(cells)
        tested = why is None
        records.append(
            record(
                claim,
                j,
                spec.experiment,
                scale,
                cells,
                p=j.p if tested else None,
                p_holm=p_holm if tested else None,
                tost_p=tost,
            )
        )
    others: dict[str, list[list[str]]] = {"manipulation": [], "descriptive": []}
    for kind, rows in others.items():
        for claim in plan.of_kind(kind):
            j = judge(claim, summary, labels)
            p_text = "—" if j.p is None else f"{j.p:.2g}"
            magnitude = [holds_paper(j)] if kind == "manipulation" else []  # only that table has the column
            cells = row(claim, j, p_text, shown(condition(j)), *magnitude)
            rows.append(cells)
            records.append(record(claim, j, spec.experiment, scale, cells, p=j.p))
    manipulation, descriptive = others["manipulation"], others["descriptive"]
    return Rows(primary, manipulation, descriptive, records)


HEADERS = {
    "primary": [
        "id",
        "experiment",
        "claim",
        "measure",
        "paper",
        "ours (scale)",
        "p / Holm p",
        "verdict",
        "raw verdict",
        "interval holds the paper's value",
        "against the smallest effect of interest",
        "figure",
    ],
    "manipulation": [
        "id",
        "experiment",
        "check",
        "measure",
        "paper",
        "ours (scale)",
        "p",
        "verdict",
        "interval holds the paper's value",
        "figure",
    ],
    "descriptive": [
        "id",
        "experiment",
        "condition",
        "measure",
        "paper",
        "ours (scale)",
        "p",
        "verdict",
        "figure",
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.reporting.claims", __doc__)
    parser.add_argument("experiments", nargs="+", type=Path, help="experiments/NAME/config.yaml files")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--results", type=Path, required=True, help="results/SCALE")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--json", type=Path, default=None, help="claims.json's path (default: claims.json beside --out)"
    )
    return cli.run(_main, parser.parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    tables = Rows([], [], [])
    plans, problems, run_commits = [], [], {}
    for path in args.experiments:
        spec = load_report_spec(path)
        plan_file = plan_path(path)
        plan, plan_hash = load_plan(plan_file, spec)
        results = args.results / spec.experiment
        frames = aggregate.read_tables(results)
        commits = preregistration.run_commits(results / "runs.csv")  # '' for a run without one
        if args.scale != "smoke":
            problems += preregistration.problems(plan, plan_hash, plan_file, commits)
        run_commits[spec.experiment] = sorted(filter(None, commits))
        plans.append((spec.experiment, plan_file, plan_hash, plan))
        rows = claim_rows(spec, plan, aggregate.analysis_summary(spec, args.scale, plan, frames), args.scale)
        tables.primary += rows.primary
        tables.manipulation += rows.manipulation
        tables.descriptive += rows.descriptive
        tables.records += [
            {**r, "plan_sha256": plan_hash, "run_commits": run_commits[spec.experiment]} for r in rows.records
        ]
    if problems:
        raise DataError(
            "the analysis plan does not match the runs it would judge:\n  " + "\n  ".join(problems)
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args.scale, plans, tables))
    json_path = args.json or args.out.parent / "claims.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(render_json(args.scale, plans, tables, run_commits), encoding="utf-8")
    return 0


def render_json(
    scale: str,
    plans: list[tuple[str, Path, str, AnalysisPlan]],
    tables: Rows,
    run_commits: dict[str, list[str]],
) -> str:
    """claims.json (the module docstring names its keys): the records in CLAIMS.md's order, primary
    claims first, then the manipulation checks and the descriptive conditions; ``run_commits`` holds
    the commits of each experiment's runs."""
    document = {
        "schema": SCHEMA,
        "scale": scale,
        "experiments": [e for e, *_ in plans],
        "plans": {
            e: {
                "file": Path(*Path(f).parts[-3:]).as_posix(),
                "sha256": h,
                "deviations": [d.model_dump() for d in p.deviations],
            }
            for e, f, h, p in plans
        },
        "run_commits": sorted({c for commits in run_commits.values() for c in commits}),
        "claims": sorted(tables.records, key=lambda r: KINDS.index(r["kind"])),  # stable within a kind
    }
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def render(scale: str, plans: list[tuple[str, Path, str, AnalysisPlan]], tables: Rows) -> str:
    families = ", ".join(f"{e} {sum(r[1] == e and r[6] != '—' for r in tables.primary)}" for e, *_ in plans)
    text = [
        f"# Claims at `{scale}` scale",
        "",
        "Every row is judged as its experiment's analysis plan fixes it: the claim's kind, its statistic,",
        "the paper's value, the smallest effect of interest and the precondition it needs. Comparisons are",
        "paired (same seed, same data). A relative change of a positive quantity is the geometric mean of",
        "the paired ratio with the t interval of its log; a paired difference has a t interval; a",
        "heavy-tailed quantity has the median paired difference with the sign test's distribution-free",
        "interval (none below 6 seeds). Intervals are 95 %.",
        "",
        "| plan | content hash (SHA-256) | deviations |",
        "|---|---|---|",
        *(
            f"| [{e}]({Path('..', '..', *Path(f).parts[-3:]).as_posix()}) | `{h}` | "
            + ("; ".join(f"runs at `{d.runs_commit[:12]}`: {d.what}" for d in p.deviations) or "none")
            + " |"
            for e, f, h, p in plans
        ),
        "",
        "## Primary claims",
        "",
        "One family per experiment: the verdict reads each claim's p-value adjusted by Holm's step-down",
        "method over the testable primary claims of its experiment, which keeps at most 5 % the chance that",
        "any claim of an experiment without a real effect reads other than *inconclusive*. *Reproduced*: the",
        "adjusted p < 0.05 with the estimate on the claimed side; *opposite*: on the other side;",
        "*inconclusive*: neither; *not testable*: the precondition the plan states failed, so the",
        "comparison says nothing about the claim. The raw verdict reads the unadjusted p-value. The last",
        "columns set the estimate against the paper's value (does the 95 % interval hold it?) and against",
        "the plan's smallest effect of interest: for an inconclusive claim, the two one-sided tests (TOST)",
        "of equivalence within it and the effects the interval excludes; for a significant one, whether the",
        "effect lies wholly within it (TOST; the verdict then says the effect is smaller than that) or its",
        "interval wholly beyond it. RQ1 (C1) is a permutation test, combined over runs by Fisher's method",
        f"(the p-value doubled for looking at both sides); it has no interval. Testable primary claims per "
        f"family: {families}.",
        "",
        tabulate(tables.primary, headers=_named(HEADERS["primary"], scale), tablefmt="github"),
        "",
        "## Manipulation checks",
        "",
        "Whether the treatment acted (an MBE penalty lowers MBE): *met* at p < 0.05 in the expected",
        "direction. They are not claims of the paper's benefit and are outside the families.",
        "",
        tabulate(tables.manipulation, headers=_named(HEADERS["manipulation"], scale), tablefmt="github"),
        "",
        "## Descriptive conditions",
        "",
        "What the runs did, read on their own: a per-run condition is *met* when every run meets it; a",
        "comparison when p < 0.05 in the stated direction. None is evidence for a claim by itself.",
        "",
        tabulate(tables.descriptive, headers=_named(HEADERS["descriptive"], scale), tablefmt="github"),
        "",
    ]
    if scale == "smoke":
        text[1:1] = ["", "**Smoke runs prove the pipeline; they are not evidence for or against any claim.**"]
    return "\n".join(text)


def _named(headers: list[str], scale: str) -> list[str]:
    return [f"ours ({scale})" if h == "ours (scale)" else h for h in headers]


if __name__ == "__main__":
    sys.exit(main())
