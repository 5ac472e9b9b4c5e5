"""Timing helpers: interleaved repetitions and medians, so that machine noise hits every variant."""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from replication.runtime.record import now, provenance


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, repeats: int = 1) -> dict[str, float]:
    """Median seconds per call of each variant, the variants taking turns round after round, each
    round starting one further along, so that no variant is always measured last, or right after the
    same one."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            fn = variants[name]
            gc.collect()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[name].append((time.perf_counter() - start) / repeats)
    return {name: statistics.median(ts) for name, ts in times.items()}


def write_result(out_dir: Path, section: str, payload: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{section}.json"
    record = {
        "section": section,
        "measured_at": now(),
        "provenance": provenance(torch.device("cpu")),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
