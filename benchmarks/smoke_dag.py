"""The smoke DAG end to end on this machine, with and without the warm training server, and how
much of it is orchestration.

Orchestration = the DAG's wall time minus the time spent inside training loops divided by the
number of parallel job slots: Snakemake's own work plus every job's interpreter and torch start-up
(which the warm server, ``replication.launch``, pays once). The two DAGs run twice each in this
process, in the order ABBA, so that their ratio compares like with like.
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
TARGET_S = 40.0


def _one_dag(cores: int, train_server: bool) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="smoke-bench-"))
    paths = [f"{k}={scratch}/{k.split('_')[0]}" for k in ("runs_dir", "results_dir", "logs_dir", "data_dir")]
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", "config/smoke.yaml",
               "--config", *paths, f"train_server={train_server}", "--quiet", "all"]  # fmt: skip
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


def _mean(dags: list[dict[str, Any]]) -> dict[str, Any]:
    mean = {key: sum(d[key] for d in dags) / len(dags) for key in dags[0]}
    return {**mean, "runs": dags[0]["runs"], "dag_wall_seconds_each": [d["dag_wall_seconds"] for d in dags]}


def smoke_dag(cores: int = 2) -> dict[str, Any]:
    # ABBA: each variant once first and once after the other, so that neither gains from a warmer cache
    runs = {False: [], True: []}
    for train_server in (False, True, True, False):
        runs[train_server].append(_one_dag(cores, train_server))
    alone, warm = (_mean(runs[key]) for key in (False, True))  # each job a process of its own; shipped
    return {
        "cores": cores,
        "shipped": warm,
        "without_train_server": alone,
        "speedup_from_train_server": alone["dag_wall_seconds"] / warm["dag_wall_seconds"],
        "dag_wall_seconds": warm["dag_wall_seconds"],
        "target": f"dag_wall_seconds <= {TARGET_S:g} (the shipped DAG)",
        "target_met": warm["dag_wall_seconds"] <= TARGET_S,
    }
