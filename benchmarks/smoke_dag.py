"""The smoke DAG end to end on this machine, and how much of it is orchestration.

Orchestration = the DAG's wall time minus the time spent inside training loops divided by the
number of parallel job slots: Snakemake's own work plus every job's interpreter and torch start-up.
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


def smoke_dag(cores: int = 2) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="smoke-bench-"))
    paths = [f"{k}={scratch}/{k.split('_')[0]}" for k in ("runs_dir", "results_dir", "logs_dir", "data_dir")]
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", "config/smoke.yaml",
               "--config", *paths, "--quiet", "all"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    wall = time.perf_counter() - start
    summaries = list((scratch / "runs").rglob("summary.json"))
    train_seconds = sum(json.loads(p.read_text())["wall_time_s"] for p in summaries)
    shutil.rmtree(scratch, ignore_errors=True)
    in_training = train_seconds / cores
    return {
        "cores": cores,
        "runs": len(summaries),
        "dag_wall_seconds": wall,
        "training_loop_seconds_total": train_seconds,
        "orchestration_share": max(0.0, 1.0 - in_training / wall),
        "target": "dag_wall_seconds <= 300",
    }
