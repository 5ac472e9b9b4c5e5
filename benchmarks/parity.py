"""bf16 parity at the cpu scale: does bf16 autocast change what a FineWeb run learns?

Trains the cpu scale's ``ce`` and ``gapt_joint`` runs of ``fineweb_pretrain`` on seeds 0, 1, 2, once in
float32 and once in bf16 autocast (MBE is float32 in both: ``replication.science.mbe``), two runs at a time on
one thread each, a float32 run beside its bf16 twin. Reported per method: the final validation CE and
MBE (mean over all blocks) of each dtype, the paired difference bf16 - float32 with its 95 % t
interval, and float32's seed-to-seed standard deviation. bf16 agrees when the mean paired difference
is smaller than that standard deviation for both metrics and both methods. Also reported: whether
the interval of each paired difference contains 0, and what the runs are for, gapt_joint's paired
change against ce in each dtype. About 30 minutes on 2 cores; runs already finished in ``work`` are
read, not trained again.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scipy import stats

from replication.config.run import load_experiment, resolve_run_config, write_run_config
from replication.reporting.stats import paired_change
from replication.runtime.record import read_json
from replication.tasks.fineweb.data import DatasetOptions, prepare

REPO = Path(__file__).resolve().parent.parent
FINEWEB = REPO / "experiments" / "fineweb_pretrain" / "config.yaml"
METHODS = ("ce", "gapt_joint")
SEEDS = (0, 1, 2)
DTYPES = ("float32", "bfloat16")
METRICS = ("final/val/ce", "final/val/mbe")


def _train(run_dir: Path, data_root: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "replication.training.train",
        str(run_dir / "config.yaml"),
        "--data-root",
        str(data_root),
        "--threads",
        "1",
        "--progress",
        "lines",
    ]
    with (run_dir / "train.log").open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return read_json(run_dir / "summary.json")


def bf16_parity(work: Path | None = None) -> dict[str, Any]:
    spec = load_experiment(FINEWEB)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(work) if work is not None else Path(scratch)
        data_root = root / "data"
        dataset = resolve_run_config(spec, "cpu", "ce", 0).task.dataset
        prepare(
            dataset,
            DatasetOptions.model_validate(spec.datasets[dataset]),
            data_root / dataset,
            root=REPO,
            progress=False,
        )
        jobs = []
        for method in METHODS:
            for seed in SEEDS:
                for dtype in DTYPES:
                    config = resolve_run_config(spec, "cpu", method, seed)
                    config = config.model_copy(
                        update={"train": config.train.model_copy(update={"dtype": dtype})}
                    )
                    run_dir = root / "runs" / method / dtype / f"seed{seed}"
                    if not (run_dir / "summary.json").is_file():
                        write_run_config(config, run_dir / "config.yaml")
                    jobs.append((method, seed, dtype, run_dir))
        with ThreadPoolExecutor(max_workers=2) as pool:  # a float32 run beside its bf16 twin
            summaries = list(pool.map(lambda job: _train(job[3], data_root), jobs))
    values: dict[str, dict[str, dict[str, list[float]]]] = {}
    speeds: dict[str, dict[str, list[float]]] = {}
    for (method, _seed, dtype, _), summary in zip(jobs, summaries):
        for metric in METRICS:
            values.setdefault(method, {}).setdefault(metric, {}).setdefault(dtype, []).append(
                summary["metrics"][metric]
            )
        speeds.setdefault(method, {}).setdefault(dtype, []).append(summary["metrics"]["speed/tokens_per_s"])
    rows = []
    for method in METHODS:
        for metric in METRICS:
            fp32, bf16 = values[method][metric]["float32"], values[method][metric]["bfloat16"]
            diffs = [b - f for b, f in zip(bf16, fp32)]
            mean = statistics.mean(diffs)
            half = float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / len(diffs) ** 0.5
            spread = statistics.stdev(fp32)
            rows.append(
                {
                    "method": method,
                    "metric": metric,
                    "float32": fp32,
                    "bfloat16": bf16,
                    "paired_difference": mean,
                    "interval": [mean - half, mean + half],
                    "float32_seed_sd": spread,
                    "agrees": abs(mean) < spread,
                    "interval_contains_zero": bool(mean - half <= 0 <= mean + half),
                }
            )
    effects = {}  # what the runs are for: gapt_joint's paired change against ce, in each dtype
    for metric in METRICS:
        for dtype in DTYPES:
            method = dict(zip(SEEDS, values["gapt_joint"][metric][dtype]))
            baseline = dict(zip(SEEDS, values["ce"][metric][dtype]))
            change = paired_change(method, baseline, "relative")
            effects.setdefault(metric, {})[dtype] = {
                "change": change.mean,
                "interval": [change.low, change.high],
                "text": change.format(),
            }
        fp32, bf16 = effects[metric]["float32"], effects[metric]["bfloat16"]
        effects[metric]["each_inside_the_others_interval"] = (
            fp32["interval"][0] <= bf16["change"] <= fp32["interval"][1]
            and bf16["interval"][0] <= fp32["change"] <= bf16["interval"][1]
        )
    speed = {
        m: statistics.mean(b / f for b, f in zip(speeds[m]["bfloat16"], speeds[m]["float32"]))
        for m in METHODS
    }
    return {
        "experiment": "fineweb_pretrain",
        "scale": "cpu",
        "seeds": list(SEEDS),
        "rows": rows,
        "runs_commit": sorted({str(s.get("provenance", {}).get("git_commit")) for s in summaries}),
        "agrees": all(r["agrees"] for r in rows),
        "gapt_joint_vs_ce": effects,
        "tokens_per_s_ratio_bf16_over_float32": speed,
        "note": "tokens/s ratios come from runs that ran side by side, a float32 run beside its bf16 twin; "
        "the step benchmark (gapt_overhead) measures the dtypes in one process",
    }
