"""All runs of one experiment at one scale -> tidy CSVs and table.md.

    python -m replication.reporting.aggregate experiments/NAME/config.yaml --scale S --runs RUNS --out DIR

reads the run folders under RUNS (``replication.runtime.record``) of the experiment's methods at the
scale's seeds: their summary.json and metrics.jsonl (a summary must match the folder's config.yaml:
one written by a run of another config is an error naming the keys that differ), and writes into DIR
(results/S/NAME in the DAG):
- ``summary.csv``: one row per (experiment, scale, method, seed, metric): every headline metric of
  summary.json, the metrics the experiment's ``reporting`` section pairs with the baseline run of
  the same seed (``replication.config.report``), and the run's top-level counts (phase_changes,
  compress_steps, nonfinite_steps, ...);
- ``runs.csv``: one row per run with its provenance (git commit, versions, device, wall time);
- ``curves.csv.gz``: evaluation records (every scalar, per-layer values with a ``layer`` column) and
  training records thinned to at most MAX_TRAIN_POINTS per run, at 7 significant digits; this and
  the next two files take the experiment and scale from their folder;
- ``phases.csv``: the phase intervals of every run, for shading;
- ``alignment.csv``: the RQ1 gradient-alignment records, where runs logged them;
- ``table.md``: mean ± std per method beside the paper's values, and the paired change against ce
  (``replication.reporting.stats.paired_change``, as each table row's ``change`` names it) with its 95 %
  interval and n.
Nothing here reads logs or stdout: only what the runs wrote.

Statistics the analysis derives from those files are not stored in them: ``analysis_summary`` adds
them to summary.csv's rows wherever tables and claims are made, so that they follow the experiment's
analysis plan (``experiments/NAME/plan.yaml``) and can be made again from the committed CSVs. They
are RQ1's cycle statistics of each run's rows of alignment.csv (``replication.reporting.rq1``, where
the ``reporting`` section declares ``rq1``) and the median length of each gated run's compress
phases, from phases.csv (``phases/compress_median_steps``).

    python -m replication.reporting.aggregate experiments/NAME/config.yaml --scale S --out DIR --from-csv

writes table.md again from the CSVs already in DIR, reading no run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from replication.config.plan import AnalysisPlan, load_plan, plan_path
from replication.config.report import PairedMetricSpec, ReportSpec, fill_units, load_report_spec
from replication.dag.plan import TABLES
from replication.reporting.rq1 import frame_statistics
from replication.reporting.stats import CHANGES, paired_change
from replication.runtime import cli
from replication.runtime.record import SUMMARY_NAME, FinishedRun, RunId, read_run
from replication.science.errors import ConfigError, DataError
from replication.science.methods import BASELINE
from replication.tasks.forgetting.separation import alleviation_percent

TOP_LEVEL = (
    "phase_changes",
    "compress_steps",
    "nonfinite_steps",
    "wall_time_s",
    "tokens",
    "steps",
    "peak_memory_bytes",
)
PROVENANCE = (
    "git_commit",
    "git_dirty",
    "torch",
    "python",
    "device",
    "device_name",
    "cpu_model",
    "cpu_capability",
    "torch_threads",
)
# bookkeeping and controller internals: phases.csv and metrics.jsonl hold what matters of them
TRAIN_KEYS_SKIPPED = {
    "kind",
    "step",
    "tokens",
    "phase",
    "lr",
    "window",
    "step_time",
    "time",
    "s_m",
    "s_c",
    "e_min",
    "m_min",
    "ce_input",
    "mbe_input",
}
MAX_TRAIN_POINTS = 100  # training records kept per run in curves.csv.gz (every evaluation is kept)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finished_runs(runs: Path, ids: list[RunId]) -> tuple[list[FinishedRun], list[str]]:
    """The finished runs among ids under the runs root, and the summary.json paths of the others."""
    found = [(run, read_run(runs, run)) for run in ids]
    missing = [str(run.folder(runs) / SUMMARY_NAME) for run, finished in found if finished is None]
    return [finished for _, finished in found if finished is not None], missing


def collect(
    spec: ReportSpec, scale: str, runs: Path, methods: list[str], seeds: list[int]
) -> dict[str, pd.DataFrame]:
    """The tables of every run of the methods at the seeds; each must have finished."""
    finished, missing = finished_runs(
        runs, [RunId(spec.experiment, scale, m, s) for m in methods for s in seeds]
    )
    frames = tables(spec, scale, finished)
    if missing:
        raise FileNotFoundError(
            "runs without a summary.json (unfinished or never run):\n  " + "\n  ".join(missing)
        )
    return frames


def tables(spec: ReportSpec, scale: str, finished: list[FinishedRun]) -> dict[str, pd.DataFrame]:
    """The summary, runs, curves, phases and alignment tables of finished runs of one scale."""
    reporting = spec.reporting_for(scale)
    summary_rows, run_rows, curve_rows, phase_rows, align_rows = [], [], [], [], []
    for run in finished:
        summary = run.summary
        run.config()  # an error where the folder's config.yaml is not the one its summary was written by
        key = {"method": run.id.method, "seed": run.id.seed}
        records = run.metrics()
        for metric, value in summary["metrics"].items():
            if _is_number(value):
                summary_rows.append({**key, "metric": metric, "value": float(value)})
        for metric in TOP_LEVEL:
            if _is_number(summary.get(metric)):
                summary_rows.append({**key, "metric": metric, "value": float(summary[metric])})
        prov = summary.get("provenance", {})
        run_rows.append(
            {
                **key,
                "run_dir": str(run.folder),
                **{k: prov.get(k) for k in PROVENANCE},
                "world_size": summary.get("world_size"),
                "wall_time_s": summary.get("wall_time_s"),
                "peak_memory_bytes": summary.get("peak_memory_bytes"),
                "finished_at": summary.get("finished_at"),
                "resumes": summary.get("resumes"),
            }
        )
        curve_rows += _curve_rows(key, records, summary["steps"])
        phase_rows += _phase_rows(key, records)
        align_rows += _alignment_rows(key, records)
    summary_frame = pd.DataFrame(summary_rows, columns=["method", "seed", "metric", "value"])
    if reporting.paired and not summary_frame.empty:
        paired = [_paired_rows(p, summary_frame) for p in reporting.paired]
        summary_frame = pd.concat([summary_frame, *paired], ignore_index=True)
    frames = {
        "summary": summary_frame,
        "runs": pd.DataFrame(run_rows),
        "curves": pd.DataFrame(
            curve_rows,
            columns=["method", "seed", "kind", "step", "tokens", "stage", "metric", "layer", "value"],
        ),
        "phases": pd.DataFrame(phase_rows, columns=["method", "seed", "phase", "start_step", "end_step"]),
        "alignment": pd.DataFrame(
            align_rows, columns=["method", "seed", "step", "layer", "cos", "noise_cos", "norm_ce", "norm_mbe"]
        ),
    }
    for name in ("summary", "runs"):  # the per-step tables take both from their folder's name
        frames[name].insert(0, "scale", scale)
        frames[name].insert(0, "experiment", spec.experiment)
    return frames


DERIVED = ("rq1/", "phases/")  # the prefixes of the metrics analysis_summary derives


def analysis_summary(
    spec: ReportSpec, scale: str, plan: AnalysisPlan, frames: dict[str, pd.DataFrame]
) -> pd.DataFrame:
    """summary.csv's rows with the statistics the analysis derives from the other tables (the module
    docstring names them)."""
    summary = frames["summary"][["method", "seed", "metric", "value"]]
    # a summary.csv aggregated by earlier code may hold such rows, computed another way: never both
    derived = [summary[~summary.metric.astype(str).str.startswith(DERIVED)]]
    reporting = spec.reporting_for(scale)
    alignment = frames.get("alignment")
    if reporting.rq1 is not None and alignment is not None and len(alignment):
        derived.append(frame_statistics(alignment, time_constant=reporting.rq1.time_constant, plan=plan.rq1))
    phases = frames.get("phases")
    if phases is not None and len(phases):
        compress = phases[phases.phase == "compress"]
        lengths = (compress.end_step - compress.start_step).groupby([compress.method, compress.seed]).median()
        derived.append(
            pd.DataFrame(
                [
                    {"method": m, "seed": int(s), "metric": "phases/compress_median_steps", "value": float(v)}
                    for (m, s), v in lengths.items()
                ],
                columns=["method", "seed", "metric", "value"],
            )
        )
    return pd.concat(derived, ignore_index=True)


PAIRED_KINDS = {"alleviation_percent": alleviation_percent}  # f(baseline_after, after, baseline_before)


def _paired_rows(paired: PairedMetricSpec, summary: pd.DataFrame) -> pd.DataFrame:
    """One row of ``paired.metric`` per run whose seed has a baseline run with both inputs."""
    wide = summary.pivot_table(index=["method", "seed"], columns="metric", values="value")
    needed = {paired.before, paired.after}
    if not needed <= set(wide.columns) or paired.baseline not in wide.index.get_level_values("method"):
        return summary.iloc[0:0]
    baseline = wide.loc[paired.baseline]
    formula = PAIRED_KINDS[paired.kind]
    rows = []
    for (method, seed), row in wide.iterrows():
        if seed not in baseline.index:
            continue
        value = formula(
            baseline.loc[seed, paired.after], row[paired.after], baseline.loc[seed, paired.before]
        )
        rows.append({"method": method, "seed": seed, "metric": paired.metric, "value": value})
    return pd.DataFrame(rows, columns=["method", "seed", "metric", "value"])


def _curve_rows(
    key: dict, records: list[dict], steps: int, max_train_points: int = MAX_TRAIN_POINTS
) -> list[dict]:
    rows = []
    stride = max(1, steps // max_train_points)
    for r in records:
        if r["kind"] == "eval" or (
            r["kind"] == "train" and (r["step"] % stride == 0 or r["step"] == steps - 1)
        ):
            # a staged task's records name their stage (forgetting: mix, then finetune); the figures mark
            # its end
            stage = r.get("stage") if isinstance(r.get("stage"), str) else None
            base = {**key, "kind": r["kind"], "step": r["step"], "tokens": r.get("tokens"), "stage": stage}
            for metric, value in r.items():
                if metric in TRAIN_KEYS_SKIPPED:
                    continue
                if _is_number(value):
                    rows.append({**base, "metric": metric, "layer": None, "value": float(value)})
                elif isinstance(value, list) and len(value) > 1 and all(_is_number(v) for v in value):
                    # (a one-block list repeats its own mean, which the record also holds)
                    rows += [
                        {**base, "metric": metric, "layer": i, "value": float(v)} for i, v in enumerate(value)
                    ]
    return rows


def _phase_rows(key: dict, records: list[dict]) -> list[dict]:
    rows: list[dict] = []
    for r in records:
        if r["kind"] != "train":
            continue
        if rows and rows[-1]["phase"] == r["phase"] and rows[-1]["end_step"] == r["step"]:
            rows[-1]["end_step"] = r["step"] + 1
        else:
            rows.append({**key, "phase": r["phase"], "start_step": r["step"], "end_step": r["step"] + 1})
    return rows


def _alignment_rows(key: dict, records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        if r["kind"] != "alignment":
            continue
        for layer, cos, norm in zip(r["align/layers"], r["align/cos"], r["align/norm_mbe"]):
            rows.append(
                {
                    **key,
                    "step": r["step"],
                    "layer": layer,
                    "cos": cos,
                    "noise_cos": r["align/noise_cos"],
                    "norm_ce": r["align/norm_ce"],
                    "norm_mbe": norm,
                }
            )
    return rows


def metric_table(
    spec: ReportSpec, plan: AnalysisPlan, summary: pd.DataFrame, methods: list[str], scale: str
) -> tuple[str, str]:
    """The two markdown tables: values per method, and paired relative changes against ce."""
    values_rows, change_rows = [], []
    for row in spec.paper.table:
        data = summary[summary.metric == row.key]
        cells = []
        for method in methods:
            x = data[data.method == method].value
            cells.append(
                f"{x.mean():.4g} ± {x.std(ddof=1):.2g}"
                if len(x) > 1
                else (f"{x.mean():.4g}" if len(x) else "n/a")
            )
        paper = ", ".join(f"{m} {v}" for m, v in row.paper.items()) or "—"
        values_rows.append([fill_units(row.label, spec, scale), paper, *cells])
        if BASELINE not in methods:
            continue
        by_seed = {m: dict(zip(data[data.method == m].seed, data[data.method == m].value)) for m in methods}
        changes = []
        for method in methods:
            if method == BASELINE:
                continue
            try:
                change = paired_change(by_seed[method], by_seed[BASELINE], row.change)
            except ValueError:  # a ratio of a quantity that reaches 0 means nothing: the difference
                change = paired_change(by_seed[method], by_seed[BASELINE], "difference")
            changes.append(change.format())
        claimed = [
            f"{c.method} {c.paper_value}"
            for c in plan.claims
            if c.metric == row.key and c.baseline == BASELINE and c.statistic in CHANGES
        ]
        change_rows.append(
            [fill_units(row.label, spec, scale), "; ".join(dict.fromkeys(claimed)) or "—", *changes]
        )
    values = tabulate(values_rows, headers=["metric", "paper", *methods], tablefmt="github")
    changes = tabulate(
        change_rows, headers=["metric", "paper", *[m for m in methods if m != BASELINE]], tablefmt="github"
    )
    return values, changes


def write_table(
    spec: ReportSpec,
    plan: AnalysisPlan,
    scale: str,
    frames: dict[str, pd.DataFrame],
    methods: list[str],
    out: Path,
) -> None:
    runs = frames["runs"]
    values, changes = metric_table(spec, plan, analysis_summary(spec, scale, plan, frames), methods, scale)
    commits = sorted({str(c)[:12] for c in runs.git_commit.dropna()}) if "git_commit" in runs else []
    dirty = bool(runs.git_dirty.fillna(False).any()) if "git_dirty" in runs else False
    seeds = sorted(set(runs.seed)) if len(runs) else []
    scale_note = spec.scales[scale].description.strip()
    lines = [
        f"# {spec.experiment} at `{scale}` scale",
        "",
        *([scale_note, ""] if scale_note else []),
        f"{len(runs)} runs: methods {', '.join(methods)}; seeds {', '.join(map(str, seeds))}. "
        f"Code: commit {', '.join(commits) or 'unknown'}{' (uncommitted changes present)' if dirty else ''}. "
        "Provenance of every run: `runs.csv`.",
        "",
        "## Values (mean ± std over seeds)",
        "",
        values,
        "",
        "## Change against `ce`, paired by seed",
        "",
        "A relative change (`+4.1 %`) is the geometric mean of the per-seed ratio to `ce`, with the 95 % t",
        "interval of the log ratio mapped back; `Δ` is the mean per-seed difference with its t interval, for",
        "a quantity that reaches 0; `median` is the median per-seed difference with the sign test's",
        "distribution-free interval (none below 6 seeds), for a heavy-tailed quantity.",
        "",
        changes,
        "",
    ]
    if scale == "smoke":
        lines += [
            "Smoke runs prove the pipeline; their numbers are not evidence for or against the paper.",
            "",
        ]
    (out / "table.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.reporting.aggregate", __doc__)
    parser.add_argument("experiment", type=Path, help="experiments/NAME/config.yaml")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="*", help="default: every method of the experiment")
    parser.add_argument("--seeds", nargs="*", type=int, help="default: the scale's seeds")
    parser.add_argument(
        "--from-csv", action="store_true", help="write table.md again from the CSVs in --out, reading no run"
    )
    return cli.run(_main, parser.parse_args(argv))


def read_tables(out: Path) -> dict[str, pd.DataFrame]:
    """The summary, runs, phases and alignment tables aggregation wrote into ``out``."""
    frames = {}
    for name in ("summary", "runs", "phases", "alignment"):
        path = out / TABLES[name]
        if not path.is_file():
            raise DataError(
                f"{path} is missing: aggregate the experiment's runs first (the DAG's aggregate rule)"
            )
        try:
            frames[name] = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            frames[name] = pd.DataFrame()
        if name in ("summary", "runs") and frames[name].empty:
            raise DataError(
                f"{path} holds no rows: aggregate the experiment's runs again (the DAG's aggregate rule)"
            )
    return frames


def _main(args: argparse.Namespace) -> int:
    spec = load_report_spec(args.experiment)
    if args.scale not in spec.scales:
        raise ConfigError(f"{args.experiment} has no scale {args.scale!r}; it has {sorted(spec.scales)}")
    plan, _ = load_plan(plan_path(args.experiment), spec)
    methods = args.methods or list(spec.methods)
    if args.from_csv:
        write_table(spec, plan, args.scale, read_tables(args.out), methods, args.out)
        return 0
    seeds = args.seeds or spec.scales[args.scale].seeds
    frames = collect(spec, args.scale, args.runs, methods, seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        # curves only feed figures: 7 significant digits; summary.csv keeps full precision for the tables
        # gzip without a time stamp, so that the same curves give the same bytes
        frame.to_csv(
            args.out / TABLES[name],
            index=False,
            float_format=None if name == "summary" else "%.7g",
            compression={"method": "gzip", "mtime": 0} if TABLES[name].endswith(".gz") else None,
        )
    # from the files just written, as --from-csv reads them: the table is the same either way
    write_table(spec, plan, args.scale, read_tables(args.out), methods, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
