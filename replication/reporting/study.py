"""A scale's study (``scales.<scale>.study`` of an experiment file): does GAPT's effect on validation
CE change sign with model size, or with one of its knobs? Does a changed setting (a longer run, a
wider model) let ``ce`` learn the task, and how do the other methods compare there?

    python -m replication.reporting.study experiments/E/config.yaml --scale S --runs RUNS --out DIR

reads the runs of the study's arms (``<scale>_study_<arm>``) and, for sizes and knobs, the scale's own
runs, through the tables the experiments aggregate (``replication.reporting.aggregate``), and writes
into DIR (``replication.dag.plan.study_files``):

- ``study.csv``: one row per run and metric (arm, knob, value, scale, method, seed, parameters,
  commit, metric, value): the metrics the study reports, phase changes, compress steps, wall time and
  the compress share (compress steps / steps); the parameters are the ``n_params`` of the run's
  summary.json;
- with sizes, which must all have the depth of the scale's own model (a ConfigError otherwise),
  ``scaling.csv``: per model size (the scale's own model among them) and metric, the paired relative
  change of each gated method against ``ce`` (``replication.reporting.stats``: the mean per-seed log
  ratio with its t interval, as a percentage) and the mean compress share of the method's runs; and
  ``scaling_fit.csv``, the log-linear fit of each size's mean per-seed log ratio on its
  log10(parameters), one point per size (n: the number of sizes): slope per tenfold, its t interval
  (NaN with fewer than three sizes), and where the fit and its 95 % confidence band cross zero within
  the sizes run (empty where they do not); ``scaling.png``/``.pdf``;
- with knobs, ``sensitivity.csv``: the same change at the scale's own model for the default config
  and for each knob arm, the arm's mean compress share, and whether the CE change's interval lies
  below zero (the knob flips the sign); ``sensitivity.png``/``.pdf``;
- with sizes or knobs, ``dose.png``/``.pdf``: each size's and knob arm's change in validation CE
  against its mean compress share;
- with settings, ``settings.csv``: per arm, method and ``settings_metrics`` entry, the mean over
  seeds with its t interval, each gated method's paired change against the arm's own ``ce``
  (relative where every value is positive, else the difference), and how many ``ce`` seeds are below
  ``baseline_learns``; ``settings_curves.csv``, every evaluation of the arms' runs for the final
  metrics; ``settings.png``/``.pdf``;
- ``README.md``, which states the finding in sentences from these numbers and the study's measured
  cost.

With ``--from-csv`` it reads no runs: the tables, figures and README are derived again from the
study.csv (and settings_curves.csv) already in DIR, so that a clone holding only the committed results
can redraw them.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from replication.config.report import ReportSpec, load_report_spec
from replication.config.run import StudySpec, resolve_run_config
from replication.dag.plan import study_files
from replication.reporting import figures
from replication.reporting.aggregate import finished_runs, tables
from replication.reporting.stats import CONFIDENCE, Estimate, paired_change, paired_values, t_interval
from replication.runtime import cli
from replication.runtime.record import RunId
from replication.science.errors import ConfigError, RunFolderError
from replication.science.methods import BASELINE, METHOD_NAMES

METRICS = {"final/val/ce": "validation CE", "final/val/mbe": "validation MBE"}
CE = "final/val/ce"
SHARE = "compress_share"  # compress_steps / steps of a run: how much it compressed
STUDY_COLUMNS = "arm knob value_label scale method seed parameters commit metric value".split()
CURVE_COLUMNS = ["arm", "method", "seed", "step", "metric", "value"]


@dataclass(frozen=True)
class Arm:
    name: str  # "reference" for the scale's own runs
    scale: str
    knob: str
    value: str
    methods: tuple[str, ...]


def arms(spec: ReportSpec, scale: str) -> list[Arm]:
    study = spec.scales[scale].study
    if study is None:
        raise ConfigError(f"experiment {spec.experiment} has no study at scale {scale!r}")
    found = []
    if study.has_reference:
        model = spec.scales[scale].config.get("model", {})
        own = f"{scale}'s model" + (f" ({model.get('n_layer')} x {model.get('d_model')})" if model else "")
        found.append(Arm("reference", scale, "default", own, tuple(spec.methods)))
    derived = spec.study_arms(scale)
    if study.sizes is not None:
        for name, overrides in study.sizes.models.items():
            value = f"{overrides.get('n_layer', '?')} x {overrides.get('d_model', '?')}"
            found.append(Arm(name, derived[name], "model size", value, tuple(study.sizes.methods)))
    for name, knob in study.knobs.items():
        found.append(Arm(name, derived[name], knob.knob, knob.value, (knob.method,)))
    for name, setting in study.settings.items():
        found.append(Arm(name, derived[name], "setting", setting.about, tuple(setting.methods)))
    return found


def _settings_metrics(study: StudySpec) -> dict[str, str]:
    """What the settings report: their metrics, and the baseline's bar (named by its key if need be)."""
    bar = study.baseline_learns
    return {
        **study.settings_metrics,
        **({bar.metric: bar.metric} if bar and bar.metric not in study.settings_metrics else {}),
    }


def study_metrics(study: StudySpec) -> dict[str, str]:
    """The summary metrics study.csv keeps: the sizes' and knobs', and the settings'."""
    return {**(METRICS if study.has_reference else {}), **_settings_metrics(study)}


def read_runs(spec: ReportSpec, scale: str, runs_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """study.csv: every finished run of the study's arms and the scale's own runs it compares with;
    and settings_curves.csv: every evaluation of the setting arms' runs, for the metrics whose final
    value the study reports."""
    study = spec.scales[scale].study
    reported = [*study_metrics(study), "phase_changes", "compress_steps", "wall_time_s"]
    wanted = [curve_metric(k) for k in study_metrics(study) if curve_metric(k)]
    rows, curves, missing = [], [], []
    for arm in arms(spec, scale):
        ids = [RunId(spec.experiment, arm.scale, m, s) for m in arm.methods for s in study.seeds]
        finished, absent = finished_runs(runs_dir, ids)
        if arm.name != "reference":  # of the scale's own runs, those that finished are compared with
            missing += absent
        frames = tables(spec, arm.scale, finished)
        values = {(r.method, r.seed, r.metric): r.value for r in frames["summary"].itertuples()}
        for run in finished:
            base = {
                "arm": arm.name,
                "knob": arm.knob,
                "value_label": arm.value,
                "scale": arm.scale,
                "method": run.id.method,
                "seed": run.id.seed,
                "parameters": run.n_params,
                "commit": run.summary.get("provenance", {}).get("git_commit", "")[:12],
            }
            found = {k: values.get((run.id.method, run.id.seed, k)) for k in reported}
            steps = values.get((run.id.method, run.id.seed, "steps"))
            if found["compress_steps"] is not None and steps:
                found[SHARE] = found["compress_steps"] / steps
            rows += [{**base, "metric": k, "value": v} for k, v in found.items() if v is not None]
        if arm.name in study.settings:
            curves.append(_evaluations(frames["curves"], arm.name, wanted))
    if missing:
        raise RunFolderError(
            f"{len(missing)} run(s) of the study have no summary.json, e.g. {missing[0]}; "
            "run make study (or snakemake study) first"
        )
    curves = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.DataFrame(rows, columns=STUDY_COLUMNS), curves


def _evaluations(curves: pd.DataFrame, arm: str, metrics: list[str]) -> pd.DataFrame:
    """The evaluations of metrics among an arm's curves (aggregate's curves table), each evaluation's
    metrics in the order given."""
    rows = curves[(curves.kind == "eval") & curves.layer.isna() & curves.metric.isin(metrics)]
    run_step = rows[["method", "seed", "step"]]
    evaluation = run_step.ne(run_step.shift()).any(axis=1).cumsum()  # the rows of a record are consecutive
    order = np.lexsort((rows.metric.map(metrics.index), evaluation))
    return rows.iloc[order].assign(arm=arm)[CURVE_COLUMNS]


def _per_seed(frame: pd.DataFrame, arm: str, method: str, metric: str) -> dict[int, float]:
    rows = frame[(frame.arm == arm) & (frame.method == method) & (frame.metric == metric)]
    return dict(zip(rows.seed.astype(int), rows.value.astype(float)))


def _share(frame: pd.DataFrame, arm: str, method: str) -> float:
    """The mean compress share of the method's runs in the arm (NaN where study.csv has none)."""
    return float(pd.Series(_per_seed(frame, arm, method, SHARE), dtype=float).mean())


def _row(estimate: Estimate) -> dict[str, Any]:
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    return {
        "n": estimate.n,
        "change_percent": pct(estimate.mean),
        "low_percent": pct(estimate.low),
        "high_percent": pct(estimate.high),
        "p": estimate.p,
    }


def loglinear_fit(x: np.ndarray, y: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """OLS (scipy's linregress) of y, each size's mean per-seed log ratio, on x, its log10 parameters:
    one point per size, so n is the number of sizes. The slope's t interval (n - 2 degrees of freedom)
    and the pointwise confidence band for the mean exist from three sizes on (NaN, and no band, with
    two). Where the fitted line and its band cross zero is looked for within the sizes run only."""
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        return {"n": n}
    fit = scipy_stats.linregress(x, y)
    t = scipy_stats.t.ppf(0.5 + confidence / 2, n - 2) if n > 2 else math.nan
    residual = y - (fit.intercept + fit.slope * x)
    s = math.sqrt(float(residual @ residual) / (n - 2)) if n > 2 else math.nan
    sxx = float(((x - x.mean()) ** 2).sum())
    grid = np.linspace(x.min(), x.max(), 2001)
    mean = fit.intercept + fit.slope * grid
    half = t * s * np.sqrt(1 / n + (grid - x.mean()) ** 2 / sxx)
    holds_zero = (mean - half <= 0) & (mean + half >= 0)  # where the band does not exclude no effect
    crossing = -fit.intercept / fit.slope if fit.slope != 0 else math.nan
    return {
        "n": n,
        "slope": fit.slope,
        "slope_low": fit.slope - t * fit.stderr,
        "slope_high": fit.slope + t * fit.stderr,
        "slope_p": fit.pvalue if n > 2 else math.nan,
        "intercept": fit.intercept,
        "zero_at_log10_parameters": crossing if x.min() <= crossing <= x.max() else None,
        "band_holds_zero_from_log10": float(grid[holds_zero].min()) if holds_zero.any() else None,
        "band_holds_zero_to_log10": float(grid[holds_zero].max()) if holds_zero.any() else None,
        "x_min": float(x.min()),
        "x_max": float(x.max()),
        "x_mean": float(x.mean()),
        "s": s,
        "sxx": sxx,
        "t": t,
    }


def scaling_table(frame: pd.DataFrame, spec: ReportSpec, scale: str) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Per size and metric, each gated method's paired change against ce and its mean compress share;
    the fit of the sizes' changes per (method, metric)."""
    study = spec.scales[scale].study
    if study.sizes is None:
        return pd.DataFrame(), {}
    sizes = ["reference", *study.sizes.models]
    rows, fits = [], {}
    for method in [m for m in study.sizes.methods if m != BASELINE]:
        for metric in METRICS:
            xs, ys = [], []
            for arm in sizes:
                params = frame[(frame.arm == arm) & (frame.method == method)].parameters
                if params.empty:
                    continue
                estimate = paired_change(
                    _per_seed(frame, arm, method, metric), _per_seed(frame, arm, BASELINE, metric)
                )
                rows.append(
                    {
                        "arm": arm,
                        "parameters": int(params.iloc[0]),
                        "method": method,
                        "metric": metric,
                        **_row(estimate),
                        SHARE: _share(frame, arm, method),
                    }
                )
                if estimate.n:  # the size's mean per-seed log ratio: the fit's point
                    xs.append(math.log10(params.iloc[0]))
                    ys.append(math.log1p(estimate.mean))
            fits[f"{method} {metric}"] = loglinear_fit(np.array(xs), np.array(ys))
    table = pd.DataFrame(rows)
    return (table.sort_values(["method", "metric", "parameters"]) if len(table) else table), fits


def sensitivity_table(frame: pd.DataFrame, spec: ReportSpec, scale: str) -> pd.DataFrame:
    """At the scale's own model: each knob arm's method against ce, beside the same method's default."""
    study = spec.scales[scale].study
    rows = []
    for method in sorted({k.method for k in study.knobs.values()}, key=METHOD_NAMES.index):
        cases = [("reference", "default", "the scale's config")]
        cases += [(name, k.knob, k.value) for name, k in study.knobs.items() if k.method == method]
        for arm, knob, value in cases:
            row = {"method": method, "arm": arm, "knob": knob, "value": value}
            for metric, short in ((CE, "ce"), ("final/val/mbe", "mbe")):
                estimate = paired_change(
                    _per_seed(frame, arm, method, metric), _per_seed(frame, "reference", BASELINE, metric)
                )
                row.update({f"{short}_{k}": v for k, v in _row(estimate).items()})
            row[SHARE] = _share(frame, arm, method)
            row["gapt_lowers_ce"] = row["ce_high_percent"] is not None and row["ce_high_percent"] < 0
            rows.append(row)
    return pd.DataFrame(rows)


def dose_table(scaling: pd.DataFrame, sensitivity: pd.DataFrame) -> pd.DataFrame:
    """Per gated method and arm (every size and knob arm, the scale's own model once): the change in
    validation CE against ce with its interval, beside the mean compress share of the method's runs."""
    columns = ["method", "arm", SHARE, "change_percent", "low_percent", "high_percent"]
    sizes = scaling.reindex(columns=[*columns, "metric"])
    knobs = sensitivity.rename(columns=lambda c: c.removeprefix("ce_")).reindex(columns=columns)
    both = [part for part in (sizes[sizes.metric == CE][columns], knobs) if len(part)]
    return pd.concat(both).drop_duplicates(["method", "arm"], ignore_index=True) if both else knobs


def settings_table(frame: pd.DataFrame, spec: ReportSpec, scale: str) -> pd.DataFrame:
    """Per setting arm, method and metric: the mean over seeds with its t interval, and for a gated
    method the paired change against the arm's own ce (relative, in %, where every value is positive;
    otherwise the difference in the metric's units); for ce, how many seeds are below the bar."""
    study = spec.scales[scale].study
    bar = study.baseline_learns
    rows = []
    for arm, setting in study.settings.items():
        for method in setting.methods:
            for metric in _settings_metrics(study):
                values = _per_seed(frame, arm, method, metric)
                level = t_interval(list(values.values()))
                row = {
                    "arm": arm,
                    "setting": setting.about,
                    "method": method,
                    "metric": metric,
                    "n": level.n,
                    "mean": level.mean,
                    "low": level.low,
                    "high": level.high,
                }
                if method != BASELINE and BASELINE in setting.methods:
                    base = _per_seed(frame, arm, BASELINE, metric)
                    positive = all(a > 0 and b > 0 for a, b in paired_values(values, base))
                    how = "relative" if positive else "difference"
                    change = paired_change(values, base, how)
                    scale_by = 100 if how == "relative" else 1  # a relative change in %
                    bounds = {"change": change.mean, "change_low": change.low, "change_high": change.high}
                    row.update({k: None if v is None else scale_by * v for k, v in bounds.items()})
                    row.update(change_kind=how, p=change.p)
                if bar is not None and method == BASELINE and metric == bar.metric:
                    row["seeds_below_bar"] = sum(v < bar.below for v in values.values())
                rows.append(row)
    columns = [
        "arm",
        "setting",
        "method",
        "metric",
        "n",
        "mean",
        "low",
        "high",
        "change_kind",
        "change",
        "change_low",
        "change_high",
        "p",
        "seeds_below_bar",
    ]
    return pd.DataFrame(rows, columns=columns)


def _fmt_setting_change(row: pd.Series) -> str:
    """A settings row's change against ce: '+1.2 % [lo, hi]' (relative) or 'Δ +0.01 [lo, hi]'."""
    if pd.isna(row["change"]):
        return "—"
    if row["change_kind"] == "relative":
        interval = (
            "" if pd.isna(row["change_low"]) else f" [{row['change_low']:+.1f}, {row['change_high']:+.1f}]"
        )
        return f"{row['change']:+.1f} %{interval}"
    interval = "" if pd.isna(row["change_low"]) else f" [{row['change_low']:+.3g}, {row['change_high']:+.3g}]"
    return f"Δ {row['change']:+.3g}{interval}"


def curve_metric(key: str) -> str | None:
    """The evaluation record a final summary metric takes its value from (None for other summaries)."""
    return key.removeprefix("final/") if key.startswith("final/") else None


# -- the README ------------------------------------------------------------------------------------


def _fmt_change(row: pd.Series, prefix: str = "") -> str:
    mean, low, high = (
        row[f"{prefix}change_percent"],
        row[f"{prefix}low_percent"],
        row[f"{prefix}high_percent"],
    )
    interval = "" if pd.isna(low) else f" [{low:+.1f}, {high:+.1f}]"
    return f"{mean:+.1f} %{interval}"


def _crossing(fit: dict[str, Any]) -> str:
    if "slope" not in fit:
        return "no fit (it needs two sizes)"
    n = fit["n"]
    text = f"{100 * math.expm1(fit['slope']):+.1f} % per tenfold in parameters"
    if n < 3:
        text += f" (n={n} sizes: no interval exists, a t interval of the slope needs three)"
    else:
        low, high = (100 * math.expm1(fit[k]) for k in ("slope_low", "slope_high"))
        text += f" [{low:+.1f}, {high:+.1f}] (n={n} sizes)"
    at = fit["zero_at_log10_parameters"]
    text += "; the fitted line " + (
        f"crosses zero at {10**at:.3g} parameters"
        if at is not None
        else "has no crossing within the sizes run"
    )
    if n < 3:
        return text
    lo, hi = fit["band_holds_zero_from_log10"], fit["band_holds_zero_to_log10"]
    if lo is None:
        return text + ", and its 95 % band excludes zero over all the sizes run"
    if lo <= fit["x_min"] and hi >= fit["x_max"]:
        where = "over all the sizes run"
    elif lo <= fit["x_min"]:
        where = f"only up to {10**hi:.3g} parameters"
    elif hi >= fit["x_max"]:
        where = f"only from {10**lo:.3g} parameters to the largest size"
    else:
        where = f"only from {10**lo:.3g} to {10**hi:.3g} parameters"
    return text + f", and its 95 % band holds zero {where}"


def _fmt_level(row: pd.Series) -> str:
    interval = "" if pd.isna(row["low"]) else f" [{row['low']:.3g}, {row['high']:.3g}]"
    return f"{row['mean']:.3g}{interval}"


def _settings_finding(study: StudySpec, settings: pd.DataFrame) -> list[str]:
    """Per setting arm: whether ce clears its bar, and each gated method's change on the primary metric."""
    if not study.settings:
        return []
    names = study_metrics(study)
    primary = next(iter(study.settings_metrics))
    bar = study.baseline_learns
    sentences, cleared_in = [], []
    for arm, setting in study.settings.items():
        rows = settings[settings.arm == arm]
        text = f"With {setting.about}"
        if bar is not None:
            base = rows[(rows.method == BASELINE) & (rows.metric == bar.metric)]
            if len(base):
                r = base.iloc[0]
                below, n = int(r.seeds_below_bar), int(r.n)
                cleared = bool(n) and below == n
                if cleared:
                    cleared_in.append(setting.about)
                verdict = "clears the bar" if cleared else "does not clear the bar"
                if not cleared and any(m != BASELINE for m in setting.methods):
                    verdict += (
                        ", so the comparison that follows is between models that have not learned the task"
                    )
                text += (
                    f", `{BASELINE}` reaches a {names[bar.metric]} of {_fmt_level(r)} ({below} of {n} seeds "
                    f"below {bar.below:g}): it {verdict}"
                )
        changes = [
            f"`{r.method}` changes the {names[primary]} against `{BASELINE}` by {_fmt_setting_change(r)} "
            f"(n={r.n})"
            for _, r in rows[(rows.method != BASELINE) & (rows.metric == primary)].iterrows()
            if not pd.isna(r.change)
        ]
        sentences.append(text + ("; " + "; ".join(changes) if changes else "") + ".")
    if bar is not None:
        sentences.append(
            f"No setting of this study brings `{BASELINE}` below the bar in every seed."
            if not cleared_in
            else f"`{BASELINE}` clears the bar in every seed with: {'; '.join(cleared_in)}."
        )
    return sentences


def readme(
    spec: ReportSpec,
    scale: str,
    frame: pd.DataFrame,
    scaling: pd.DataFrame,
    fits: dict[str, dict],
    sensitivity: pd.DataFrame,
    settings: pd.DataFrame,
) -> str:
    study = spec.scales[scale].study
    times = frame[frame.metric == "wall_time_s"]
    arm_runs, own_runs = times[times.arm != "reference"], times[times.arm == "reference"]
    cost, own_cost = arm_runs.value.sum(), own_runs.value.sum()
    commits = sorted(set(frame.commit.dropna().astype(str)))
    lines = [f"# {study.title or 'The study'} ({scale} scale, {spec.experiment})", ""]
    finding = []
    for key, fit in fits.items():
        method, metric = key.split(" ", 1)
        if metric != CE:
            continue
        rows = scaling[(scaling.method == method) & (scaling.metric == CE)]
        sizes = f"{rows.parameters.min() / 1e6:.2g}-{rows.parameters.max() / 1e6:.2g} M parameters"
        changes = ", ".join(f"{_fmt_change(r)} at {r.parameters / 1e6:.2g} M" for _, r in rows.iterrows())
        finding.append(
            f"Over {sizes}, `{method}` changes the final validation CE against `ce` by {changes} "
            f"(paired over seeds {', '.join(map(str, study.seeds))}); the log-linear trend is "
            f"{_crossing(fit)}."
        )
    flips = (
        sensitivity[sensitivity.gapt_lowers_ce & (sensitivity.arm != "reference")] if len(sensitivity) else []
    )
    if len(sensitivity):
        finding.append(
            "No knob moved one at a time makes GAPT lower the CE (no interval below zero)."
            if len(flips) == 0
            else "These settings make GAPT lower the CE (interval below zero): "
            + "; ".join(f"`{r.method}` {r.knob} {r.value}" for r in flips.itertuples())
            + "."
        )
    finding += _settings_finding(study, settings)
    lines += ["## Finding", "", " ".join(finding), ""]
    if study.sizes is not None:
        lines += [
            "The fit has one point per size, the size's mean per-seed log ratio (its change in the table), "
            "so its n is the number of sizes; it is drawn, and its crossings of zero are looked for, only "
            "over the sizes run.",
            "",
        ]
        lines += [
            "## Model size",
            "",
            "| method | metric | parameters | change vs ce [95 %] | n |",
            "| --- | --- | --- | --- | --- |",
        ]
        for _, r in scaling.iterrows():
            lines.append(
                f"| {r.method} | {METRICS[r.metric]} | {r.parameters:,} | {_fmt_change(r)} | {r.n} |"
            )
        for key, fit in fits.items():
            method, metric = key.split(" ", 1)
            lines.append(f"\nFit, `{method}`, {METRICS[metric]}: {_crossing(fit)}.")
        lines += ["", "![scaling](scaling.png)", ""]
    if len(sensitivity):
        lines += [
            "## GAPT's knobs, one at a time",
            "",
            "| method | knob | value | validation CE vs ce [95 %] | validation MBE vs ce [95 %] | n |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for _, r in sensitivity.iterrows():
            lines.append(
                f"| {r.method} | {r.knob} | {r.value} | {_fmt_change(r, 'ce_')} | {_fmt_change(r, 'mbe_')} | "
                f"{r.ce_n} |"
            )
        lines += ["", "![sensitivity](sensitivity.png)", ""]
    if study.has_reference:
        lines += [
            "## Compression dose",
            "",
            "`dose.png` sets each size's and knob arm's change in validation CE against the share of "
            f"its steps the method spent compressing (the mean `{SHARE}` of `scaling.csv` and "
            "`sensitivity.csv`).",
            "",
            "![dose](dose.png)",
            "",
        ]
    if study.settings:
        names = study_metrics(study)
        lines += [
            "## Settings",
            "",
            "Each setting's methods against the same setting's `ce`: the mean over seeds with its 95 % t "
            "interval, and the paired change: relative (the mean per-seed log ratio with its t interval, "
            "as a percentage), or, where a value is not positive, the mean paired difference (Δ).",
            "",
            "| setting | method | metric | mean [95 %] | change vs ce [95 %] | n |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for _, r in settings.iterrows():
            change = _fmt_setting_change(r)
            lines.append(
                f"| {r.setting} | {r.method} | {names[r.metric]} | {_fmt_level(r)} | {change} | {r.n} |"
            )
        lines += [
            "",
            "![settings](settings.png)",
            "",
            "Thin lines: seeds; thick: their mean; dotted: the bar `ce` must clear. Every evaluation: "
            "`settings_curves.csv`.",
            "",
        ]
    own = (
        f"; the {len(own_runs)} runs of the {scale} scale it compares with (from the {scale} DAG, or "
        f"trained by `make study` when missing) for {own_cost / 60:.1f} more"
        if study.has_reference
        else ""
    )
    tidy = ", ".join(f"`{name}`" for name in study_files(study) if name.endswith(".csv"))
    lines += [
        "## Cost",
        "",
        f"The study's own runs ({len(arm_runs)}) trained for {cost / 60:.1f} minutes in all, "
        f"{cost / 120:.1f} minutes on two cores{own}. "
        f"Runs made at commit {', '.join(commits) or 'unknown'}. Tidy data: {tidy}.",
        "",
    ]
    return "\n".join(lines)


def size_blocks(spec: ReportSpec, scale: str) -> dict[str, int]:
    """The number of blocks of each size's model (the scale's own as ``reference``), as its runs resolve
    it: a size study must be at one depth (``write_study``), so that a size changes width alone."""
    study = spec.scales[scale].study
    return {
        arm.name: resolve_run_config(spec, arm.scale, arm.methods[0], study.seeds[0]).model.n_blocks
        for arm in arms(spec, scale)
        if arm.knob in ("default", "model size")
    }


def write_study(spec: ReportSpec, scale: str, runs_dir: Path | None, out: Path) -> None:
    """The study's files from the runs in ``runs_dir``; with None, from the study.csv and
    settings_curves.csv already in ``out`` (the rest is derived from those two)."""
    study = spec.scales[scale].study
    blocks = size_blocks(spec, scale) if study.sizes is not None else {}
    if len(set(blocks.values())) > 1:
        depths = ", ".join(f"{arm}: {n}" for arm, n in blocks.items())
        raise ConfigError(
            f"the sizes of scales.{scale}.study differ in depth (blocks: {depths}): give every size the "
            f"scale's depth, {blocks['reference']} blocks, so that a size changes width alone"
        )
    if runs_dir is None:
        frame = pd.read_csv(out / "study.csv", dtype={"commit": str})
        curves = pd.read_csv(out / "settings_curves.csv") if study.settings else None
    else:
        frame, curves = read_runs(spec, scale, runs_dir)
        out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / "study.csv", index=False)
        if study.settings:
            curves.to_csv(out / "settings_curves.csv", index=False)
    scaling, fits = scaling_table(frame, spec, scale)
    if study.sizes is not None:
        scaling.to_csv(out / "scaling.csv", index=False)
        internal = ["s", "sxx", "t", "x_min", "x_max", "x_mean"]  # the figure's, not the table's
        fit_rows = pd.DataFrame([{"fit": key, **fit} for key, fit in fits.items()])
        fit_rows.drop(columns=internal, errors="ignore").to_csv(out / "scaling_fit.csv", index=False)
        figures.study_scaling(scaling, fits, METRICS, out)
    sensitivity = sensitivity_table(frame, spec, scale)
    if study.knobs:
        sensitivity.to_csv(out / "sensitivity.csv", index=False)
        figures.study_sensitivity(sensitivity, out)
    if study.has_reference:
        figures.study_dose(dose_table(scaling, sensitivity), out)
    settings = settings_table(frame, spec, scale)
    if study.settings:
        settings.to_csv(out / "settings.csv", index=False)
        labels = {curve_metric(k): name for k, name in study_metrics(study).items() if curve_metric(k)}
        bar = study.baseline_learns
        about = {arm: setting.about for arm, setting in study.settings.items()}
        line = None if bar is None else (curve_metric(bar.metric), bar.below)
        figures.study_settings(curves, about, labels, line, out)
    (out / "README.md").write_text(readme(spec, scale, frame, scaling, fits, sensitivity, settings))


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.reporting.study", __doc__)
    parser.add_argument("experiment", type=Path, help="experiments/NAME/config.yaml")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--from-csv",
        action="store_true",
        help="redraw from DIR's study.csv and settings_curves.csv, not runs",
    )
    args = parser.parse_args(argv)
    return cli.run(
        lambda a: write_study(load_report_spec(a.experiment), a.scale, None if a.from_csv else a.runs, a.out),
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
