"""summary.json: a finished run's headline metrics, phase changes, provenance, size and resolved
config. Written last, so its presence means the run finished; a run folder that holds one is not
trained again."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from replication.config.run import RunConfig, check_summary_config
from replication.runtime.record import (
    SUMMARY_NAME,
    now,
    peak_memory_bytes,
    provenance,
    read_json,
    write_json_atomic,
)
from replication.science.methods import METHODS
from replication.tasks.base import Task


def finished_summary(config: RunConfig, run_dir: Path) -> dict[str, Any] | None:
    """The summary of a finished run of this config in run_dir, or None when the run has not finished."""
    path = Path(run_dir) / SUMMARY_NAME
    if not path.exists():
        return None
    summary = read_json(path)
    warning = check_summary_config(summary, config, path)
    if warning:
        print(warning, file=sys.stderr)
    return summary


def write_summary(
    run_dir: Path,
    config: RunConfig,
    task: Task,
    model: torch.nn.Module,
    records: list[dict[str, Any]],
    *,
    tokens: int,
    world_size: int,
    device: torch.device,
    nonfinite_steps: int,
    resumes: int,
    wall_time: float,
) -> dict[str, Any]:
    """Write the summary of a run whose metrics.jsonl holds ``records``; returns it."""
    gated = METHODS[config.method].gated
    changes = [r for r in records if r.get("event") == "phase_change"]
    summary = {
        "experiment": config.experiment,
        "scale": config.scale,
        "method": config.method,
        "config_digest": config.digest(),
        "seed": config.seed,
        "data_seed": config.effective_data_seed,
        "status": "finished",
        "steps": config.train.steps,
        "tokens": tokens,
        "world_size": world_size,
        "n_params": sum(p.numel() for p in model.parameters() if p.requires_grad),  # trainable
        "main_loss": task.main_loss_name,
        "metrics": task.summarize(records),
        "data_root": str(task.data_root),
        "gated": gated,
        "phase_changes": len(changes),
        "phase_change_steps": [c["step"] for c in changes],
        "never_changed_phase": gated and not changes,
        "compress_steps": sum(1 for r in records if r["kind"] == "train" and r["phase"] == "compress"),
        "nonfinite_steps": nonfinite_steps,
        "resumes": resumes,
        "wall_time_s": wall_time,
        "peak_memory_bytes": peak_memory_bytes(device),
        "finished_at": now(),
        "provenance": provenance(device),
        "config": config.to_dict(),
    }
    write_json_atomic(Path(run_dir) / SUMMARY_NAME, summary)
    return summary
