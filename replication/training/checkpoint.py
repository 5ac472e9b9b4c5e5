"""A run's checkpoint: what ``checkpoint.pt`` holds, and saving and restoring it.

It holds everything that makes a resumed run equal the uninterrupted one: the model, the optimizers,
the controller, the task's data position, every random number generator, the loop's counters and
the byte offset of ``metrics.jsonl`` after the records of the checkpointed steps. ``runtime.record``
writes it atomically, keeping the one before as ``checkpoint.prev.pt``.

On a GPU the periodic checkpoints are written in the background: the main process copies the state
to host memory (a fraction of a second for the paper's model and its Adam moments) and a thread
writes the file while training goes on, so the other processes do not wait at the next all-reduce
for a 1.6 GB write. The checkpoint of a stop request, and the last one, are written before the loop
goes on; so is every checkpoint of a CPU run, whose models at the CPU scales make checkpoints of a
few MB, written in milliseconds.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from replication.config.run import RunConfig, config_mismatch
from replication.models import ReplicationModel
from replication.runtime.record import (
    CHECKPOINT_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    MetricsWriter,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from replication.science.errors import RunFolderError
from replication.science.gapt import PhaseController
from replication.tasks.base import Task
from replication.training.optim import Optimizers

# what a checkpoint must hold to resume a run
CHECKPOINT_KEYS = (
    "config_digest",
    "next_step",
    "model",
    "optimizers",
    "controller",
    "task",
    "rng",
    "nonfinite_in_row",
    "n_nonfinite",
    "elapsed",
    "resumes",
    "metrics_offset",
)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """The generators' states; of CUDA's, the current device's only (``cuda_device``), so that a run
    resumes on another number of GPUs (each process of a run sees its own devices)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"])
    elif state.get("cuda"):  # a checkpoint that held every visible device's state: the first one's
        torch.cuda.set_rng_state(state["cuda"][0])


def host_copy(value: Any) -> Any:
    """``value`` with every tensor in it copied to host memory (dicts, lists and tuples rebuilt), so
    that training may change the originals while the copy is written."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(host_copy(item) for item in value)
    return value


@dataclass
class LoopState:
    """The loop's own part of a checkpoint."""

    next_step: int = 0  # the first step to run
    elapsed: float = 0.0  # training seconds before next_step
    nonfinite_in_row: int = 0
    n_nonfinite: int = 0
    resumes: int = 0


class Checkpointer:
    """Saves (from the main process) and restores (in every process) the checkpoint of one run.

    ``background``: periodic saves copy the state to host memory and write it from a thread; the
    next save, ``wait()`` and ``remove()`` wait for that write and raise its error, if any.
    """

    def __init__(
        self,
        run_dir: Path,
        config: RunConfig,
        *,
        model: ReplicationModel,
        optimizers: Optimizers,
        controller: PhaseController | None,
        task: Task,
        writer: MetricsWriter,
        is_main: bool,
        background: bool = False,
    ):
        self.run_dir, self.config, self.is_main = run_dir, config, is_main
        self.model, self.optimizers, self.controller, self.task = model, optimizers, controller, task
        self.writer, self.background = writer, background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: LoopState, *, wait: bool = True) -> None:
        """Write the checkpoint of ``state``; with ``wait=False`` (and ``background``) from a thread."""
        if not self.is_main:
            return
        self.wait()  # one write at a time, in order
        self.writer.sync()  # the checkpoint's metrics offset must never point past what is on disk
        snapshot = self._state(state)
        if wait or not self.background:
            save_checkpoint(self.run_dir, snapshot)
            return
        snapshot = host_copy(snapshot)
        self._thread = threading.Thread(target=self._write, args=(snapshot,), name="checkpoint-writer")
        self._thread.start()

    def _write(self, snapshot: dict[str, Any]) -> None:
        try:
            save_checkpoint(self.run_dir, snapshot)
        except BaseException as error:  # raised in the training thread by wait()
            self._error = error

    def wait(self) -> None:
        """Wait for a write in the background to end; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _state(self, state: LoopState) -> dict[str, Any]:
        return {
            "config_digest": self.config.digest(),
            "config": self.config.to_dict(),
            "next_step": state.next_step,
            "model": self.model.state_dict(),
            "optimizers": self.optimizers.state_dict(),
            "controller": self.controller.state_dict() if self.controller else None,
            "task": self.task.state_dict(),
            "rng": rng_state(),
            "nonfinite_in_row": state.nonfinite_in_row,
            "n_nonfinite": state.n_nonfinite,
            "elapsed": state.elapsed,
            "resumes": state.resumes,
            "metrics_offset": self.writer.offset(),
        }

    def restore(self) -> LoopState | None:
        """Every part restored from checkpoint.pt, and metrics.jsonl cut back to its records; the
        loop's state to resume with (one resume more), or None where there is no checkpoint."""
        ckpt = load_checkpoint(self.run_dir, required=CHECKPOINT_KEYS)
        if ckpt is None:
            return None
        what = config_mismatch(ckpt, self.config)
        if what is not None:
            raise RunFolderError(
                f"{self.run_dir / CHECKPOINT_NAME} belongs to a different config ({what}); "
                f"delete checkpoint*.pt in {self.run_dir} to train this config from the start"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizers.load_state_dict(ckpt["optimizers"])
        if self.controller is not None:
            self.controller.load_state_dict(ckpt["controller"])
        self.task.load_state_dict(ckpt["task"])
        set_rng_state(ckpt["rng"])
        self.writer.open(truncate_to=ckpt["metrics_offset"])
        return LoopState(
            next_step=ckpt["next_step"],
            elapsed=ckpt["elapsed"],
            nonfinite_in_row=ckpt["nonfinite_in_row"],
            n_nonfinite=ckpt["n_nonfinite"],
            resumes=ckpt["resumes"] + 1,
        )

    def remove(self, *, keep_last: bool = False) -> None:
        """Remove the checkpoints (from the main process); ``keep_last`` keeps checkpoint.pt."""
        if not self.is_main:
            return
        self.wait()
        if keep_last:
            (self.run_dir / PREVIOUS_CHECKPOINT_NAME).unlink(missing_ok=True)
        else:
            remove_checkpoints(self.run_dir)
