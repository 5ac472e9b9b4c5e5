"""The smoke DAG end to end on this machine, and how much of it is orchestration.

Orchestration = the DAG's wall time minus the time spent inside training loops divided by the
number of parallel job slots: Snakemake's own work plus every job's interpreter and torch start-up.
The DAG runs twice, and the result is the mean of the two.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 60.0


def _one_dag(cores: int) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="smoke-bench-"))
    paths = [f"{k}={scratch}/{k.split('_')[0]}" for k in ("runs_dir", "results_dir", "logs_dir", "data_dir")]
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", "config/smoke.yaml"]
    command += ["--config", *paths, "--quiet", "all"]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    wall = time.perf_counter() - start
    summaries = list((scratch / "runs").rglob("summary.json"))
    train_seconds = sum(json.loads(p.read_text())["wall_time_s"] for p in summaries)
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "runs": len(summaries),
        "dag_wall_seconds": wall,
        "training_loop_seconds_total": train_seconds,
        "orchestration_share": max(0.0, 1.0 - train_seconds / cores / wall),
    }


def smoke_dag(cores: int = 2, repeats: int = 2) -> dict[str, Any]:
    dags = [_one_dag(cores) for _ in range(repeats)]
    mean = {key: sum(d[key] for d in dags) / len(dags) for key in dags[0]}
    return {
        "cores": cores,
        **mean,
        "runs": dags[0]["runs"],
        "dag_wall_seconds_each": [d["dag_wall_seconds"] for d in dags],
        "target": f"dag_wall_seconds <= {TARGET_S:g}",
        "target_met": mean["dag_wall_seconds"] <= TARGET_S,
    }
