"""The run folder: where a run lives under a runs root (``RunId``), what it writes (metrics.jsonl,
summary.json, checkpoints, and the provenance of it all), the lock that keeps a second trainer out of
it, and the reading of a finished run (``read_run``).

torch is imported by the functions that need it, so that planning the DAG, which names run folders,
does not pay its import.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replication.config.run import RunConfig, check_summary_config, load_run_config
from replication.science.errors import RunFolderError

if TYPE_CHECKING:
    import torch

# the folder that holds the package: in a checkout, the repository whose state provenance records
SOURCE_ROOT = Path(__file__).resolve().parents[2]
CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
LOCK_NAME = "train.lock"


@dataclass(frozen=True)
class RunId:
    """One run: an experiment's method at one scale and seed."""

    experiment: str
    scale: str
    method: str
    seed: int

    @staticmethod
    def pattern() -> str:
        """A run folder's path under its runs root, its fields as Snakemake wildcards."""
        return "{experiment}/{scale}/{method}/seed{seed}"

    @property
    def path(self) -> str:
        return self.pattern().format(**asdict(self))

    def folder(self, runs: str | Path) -> Path:
        return Path(runs) / self.path


def runs_root(path: str | Path) -> Path:
    """The runs root that holds the run folder of ``path``, a file in that folder."""
    return Path(path).parents[len(Path(RunId.pattern()).parts)]


@dataclass(frozen=True)
class FinishedRun:
    """A run whose summary.json is written: its summary, and its metrics and config on demand."""

    id: RunId
    folder: Path
    summary: dict[str, Any]

    @property
    def n_params(self) -> int:
        """The trainable parameters of the run's model, as its summary records them."""
        if "n_params" not in self.summary:
            raise RunFolderError(
                f"{self.folder}: summary.json records no n_params (the model's parameter count): train "
                "the run again (delete everything in it but config.yaml)"
            )
        return int(self.summary["n_params"])

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.folder / METRICS_NAME)

    def config(self) -> RunConfig:
        """The run's config.yaml, which must be the config its summary records (a summary that records
        none gets a warning on stderr)."""
        path, summary_path = self.folder / CONFIG_NAME, self.folder / SUMMARY_NAME
        if not path.is_file():
            raise RunFolderError(f"{path} is missing: {summary_path} cannot be matched to its config")
        config = load_run_config(path)
        warning = check_summary_config(self.summary, config, summary_path)
        if warning:
            print(warning, file=sys.stderr)
        return config


def read_run(runs: str | Path, run: RunId) -> FinishedRun | None:
    """The run under the runs root ``runs``, or None while it has no summary.json."""
    folder = run.folder(runs)
    path = folder / SUMMARY_NAME
    return FinishedRun(run, folder, read_json(path)) if path.exists() else None


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
    """Write to a temporary file, flushed to disk, and rename: a reader never sees half a file, and a
    crash of the machine leaves the old file or the new one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with naming(path), tmp.open("w") as handle:
        handle.write(json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
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
            state = (
                "missing"
                if not self.path.exists()
                else f"shorter than the checkpoint expects ({truncate_to} bytes)"
            )
            raise RunFolderError(
                f"{self.path} is {state}: the metrics of the steps before the checkpoint are gone; "
                + restart_hint(self.path.parent)
            )
        with self.path.open("r+") as handle:
            handle.truncate(truncate_to)
        self._handle = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            return
        with naming(self.path):
            self._handle.write(json.dumps(_clean(record)) + "\n")
            self._handle.flush()

    def sync(self) -> None:
        """Put every record written so far on disk (before a checkpoint that points past them)."""
        if self._handle is not None:
            with naming(self.path):
                self._handle.flush()
                os.fsync(self._handle.fileno())

    def offset(self) -> int:
        return self._handle.tell() if self._handle is not None else 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl; a line that is not one JSON object names the file and line."""
    records = []
    with Path(path).open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise RunFolderError(
                    f"{path}, line {number}, is not a JSON record ({error.msg}): the file is damaged, or two "
                    f"processes wrote it at once; {restart_hint(Path(path).parent)}"
                ) from None
            if not isinstance(record, dict) or "kind" not in record:
                raise RunFolderError(f"{path}, line {number}, is not a metrics record (no 'kind')")
            records.append(record)
    return records


def restart_hint(run_dir: Path) -> str:
    """The way out of a run folder that cannot be continued: its config stays, the rest goes."""
    return f"to train the run from the start, delete everything in {run_dir} but config.yaml"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object written by write_json_atomic; a damaged one names its file."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path} is not valid JSON ({error}); delete it to write it again") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} does not hold a JSON object; delete it to write it again")
    return data


def _git(*args: str, root: Path = SOURCE_ROOT) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """The commit and whether the code differs from it. Changes under ``results/`` do not count: the
    DAG writes them there itself, and a run trained after another experiment's tables were rewritten
    runs the same code."""
    commit = _git("rev-parse", "HEAD", root=root)
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", root=root)
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> dict[str, Any]:
    """The device, and the CPU with the instruction set torch's kernels use on it (``cpu_capability``):
    float32 results are bit-identical only between machines that run the same kernels."""
    import torch

    info: dict[str, Any] = {
        "device": device.type,
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = info["cpu_model"]
        info["cpu_count"] = os.cpu_count()
    return info


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def provenance(device: torch.device) -> dict[str, Any]:
    import torch

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
    """Write checkpoint.pt so that a complete checkpoint exists at every moment.

    The new state goes to a temporary file, flushed to disk; then the current checkpoint becomes
    checkpoint.prev.pt (a hard link, so checkpoint.pt never disappears) and the new file replaces
    checkpoint.pt. A crash or a full disk at any point leaves the last complete checkpoint readable,
    and the one before it beside it.
    """
    import torch

    path = run_dir / CHECKPOINT_NAME
    tmp = path.with_suffix(".pt.tmp")
    try:
        with naming(path), tmp.open("wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # half a checkpoint is no use, and may be large
        raise
    if path.exists():
        previous = run_dir / PREVIOUS_CHECKPOINT_NAME
        link = previous.with_suffix(".pt.tmp")
        link.unlink(missing_ok=True)
        try:
            os.link(path, link)
        except OSError:  # a file system without hard links: the previous checkpoint is not kept
            link = None
        if link is not None:
            link.replace(previous)
    tmp.replace(path)


def _read_checkpoint(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """The checkpoint at path; a RunFolderError names the problem when it cannot be used."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, MemoryError):
        raise  # the machine's answer (no permission, an I/O error, no memory), not a damaged file
    except Exception as error:  # noqa: BLE001 - whatever else torch.load raises on this file, it is unreadable
        raise RunFolderError(f"cannot be read ({_short_reason(error)})") from None
    if not isinstance(state, dict) or any(key not in state for key in required):
        missing = [key for key in required if not isinstance(state, dict) or key not in state]
        raise RunFolderError(f"is not a checkpoint of this trainer (it lacks {', '.join(missing[:4])})")
    return state


def _short_reason(error: BaseException, limit: int = 120) -> str:
    """The first sentence of an error's message, cut at a word within ``limit`` characters (with
    "...")."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    sentence = re.search(r"\.\s+(?=[A-Z])", line)  # the end of the first sentence ("e.g. the" is none)
    if sentence:
        line = line[: sentence.start()]
    if len(line) <= limit:
        return line
    cut = line.rfind(" ", 0, limit)
    return line[: cut if cut > 0 else limit].rstrip(" ,;:(") + " ..."


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Around a write: re-raise an OSError that names no file (a write to an open file) with ``path``
    as its file, so that its message says where the disk was full or read-only, and mark it as raised
    while writing."""
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise
        if error.filename is None:
            named = OSError(error.errno, error.strerror, str(path))
            named.writing = True  # type: ignore[attr-defined]  # read by runtime.cli's message
            raise named from error
        error.writing = True  # type: ignore[attr-defined]
        raise


def load_checkpoint(run_dir: Path, required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """checkpoint.pt of run_dir, or None when there is none.

    One that cannot be read (truncated, empty, not a checkpoint) raises a RunFolderError that names
    the file and the ways out: resume from checkpoint.prev.pt, when it is readable, or delete the
    checkpoint and train from the start.
    """
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        return _read_checkpoint(path, required)
    except RunFolderError as error:
        problem = f"{path} {error}"
    previous = run_dir / PREVIOUS_CHECKPOINT_NAME
    way_out = f"delete {path} to train the run from the start"
    if previous.exists():
        try:
            step = _read_checkpoint(previous, required).get("next_step", "?")
        except RunFolderError:
            pass
        else:
            way_out = (
                f"resume from the previous checkpoint (step {step}): mv {previous} {path}; or " + way_out
            )
    raise RunFolderError(f"{problem}.\n  Ways out: {way_out}")


def remove_checkpoints(run_dir: Path) -> None:
    """Every checkpoint of run_dir, with any temporary file a killed save left behind."""
    for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
        for path in (run_dir / name, (run_dir / name).with_suffix(".pt.tmp")):
            path.unlink(missing_ok=True)


class RunLock:
    """An exclusive lock on a run folder, held while one process trains it.

    ``train.lock`` holds the holder's pid, host and start time, for the message a second trainer
    gets. The lock itself is an ``flock`` on that file, which the operating system drops when its
    process dies however it dies: a lock file left by a killed trainer is stale, and the next trainer
    takes it over (``took_over`` then names the old holder). On a file system without ``flock``
    (``warning`` says so) the folder is not locked.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / LOCK_NAME
        self.enabled = enabled
        self.took_over: str | None = None
        self.warning: str | None = None
        self._handle = None

    def __enter__(self) -> RunLock:
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @staticmethod
    def _describe(text: str) -> str:
        try:
            holder = json.loads(text)
            return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
        except (json.JSONDecodeError, KeyError, TypeError):
            return "a process that left no pid"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = self.path.open("a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    handle.close()
                    self.warning = (
                        f"{self.path.parent}: the file system cannot lock files ({error.strerror}); "
                        "nothing stops a second trainer of this folder"
                    )
                    return
                text = _read_holder(handle)
                handle.close()
                raise RunFolderError(
                    f"{self.path.parent} is being trained by another process ({self._describe(text)}); "
                    "wait for it to finish, or stop it, then run this command again"
                ) from None
            if _same_file(handle, self.path):  # not a file its holder removed between our open and lock
                break
            handle.close()
        handle.seek(0)
        previous = handle.read()
        if previous.strip():
            self.took_over = self._describe(previous)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}) + "\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        if _same_file(self._handle, self.path):  # removed while still held: no other process locks it then
            self.path.unlink(missing_ok=True)
        self._handle.close()
        self._handle = None


def _same_file(handle: Any, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(handle: Any, wait: float = 2.0) -> str:
    """The lock file's text; a holder that has just taken the lock gets a moment to write its pid."""
    deadline = time.monotonic() + wait
    while True:
        handle.seek(0)
        text = handle.read()
        if text.endswith("\n") or time.monotonic() > deadline:
            return text
        time.sleep(0.02)
