"""What a run writes: metrics.jsonl, summary.json, checkpoints, and the provenance of it all."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_NAME = "checkpoint.pt"


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (standard JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


class MetricsWriter:
    """Append-only metrics.jsonl, one JSON object per line, flushed per record.

    The byte offset is part of every checkpoint: resuming truncates the file to it, so the records
    of steps after the checkpoint are written once, by the resumed run.
    """

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self._handle = None

    def open(self, truncate_to: int | None) -> None:
        if not self.enabled:
            return
        if truncate_to is None:
            self._handle = self.path.open("w")
            return
        if not self.path.exists() or self.path.stat().st_size < truncate_to:
            raise RuntimeError(
                f"{self.path} is shorter than the checkpoint expects ({truncate_to} bytes): the metrics of "
                "the interrupted run are gone; delete the run folder to start the run again"
            )
        with self.path.open("r+") as handle:
            handle.truncate(truncate_to)
        self._handle = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            return
        self._handle.write(json.dumps(_clean(record)) + "\n")
        self._handle.flush()

    def offset(self) -> int:
        return self._handle.tell() if self._handle is not None else 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def device_description(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = platform.processor() or platform.machine()
        info["cpu_count"] = os.cpu_count()
    return info


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def provenance(device: torch.device) -> dict[str, Any]:
    return {
        **git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "command": " ".join(sys.orig_argv),
        **device_description(device),
    }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    path = run_dir / CHECKPOINT_NAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
