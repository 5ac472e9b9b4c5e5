"""The one training loop of every experiment.

    python -m replication.training.train RUN_DIR/config.yaml

trains the run whose resolved config sits in RUN_DIR and writes into RUN_DIR:
- ``metrics.jsonl``: one JSON object per event. ``kind`` is "train" (every optimizer step: the
  step index, tokens seen after it, the phase it ran in, the controller's counters and minima after
  its update, the training main loss, the training MBE of every block, learning rates, time),
  "eval" (after ``step`` optimizer steps: the task's validation metrics), "alignment" (RQ1) or
  "event" (start, resume, phase_change, nonfinite_step).
- ``summary.json``: headline metrics, phase changes, provenance, and the resolved config with its
  digest; written last, so its presence means the run finished. A run folder that holds one is not
  retrained; one whose summary belongs to another config is an error that names the differing keys.
- ``checkpoint.pt`` every ``train.checkpoint_every`` steps, after the last step (before the final
  evaluation), and when the process is asked to stop (SIGINT, SIGTERM); ``checkpoint.prev.pt`` is the
  one before it. Running the same command again resumes from checkpoint.pt and produces the same
  metrics as an uninterrupted run (bit-identical on CPU). Both are removed once the summary is
  written, unless ``train.keep_checkpoint``.
- ``train.lock`` while a process trains the folder: a second trainer of the same folder refuses, naming
  the holder's pid; a lock left by a killed process is taken over.

A stop request during training checkpoints at the end of the current step (under torchrun: the same
step on every process, which agree on it in the step's all-reduce); during the final evaluation,
whose checkpoint is already written, a single process stops at once, and a distributed run finishes
the evaluation. A second request stops at once.

``train.dtype`` is decided once (``replication.runtime.precision``) for training, evaluation and RQ1;
``train.compile`` compiles each block (``ReplicationModel.compile_blocks``), never the whole model.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from replication.config.base import ConfigError
from replication.config.run import RunConfig, check_summary_config, config_mismatch, load_run_config
from replication.models import build_model
from replication.runtime import cli
from replication.runtime.distributed import all_reduce_gradients, all_reduce_sum, init_distributed
from replication.runtime.precision import autocast_for
from replication.runtime.progress import Progress
from replication.runtime.record import (
    CHECKPOINT_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    MetricsWriter,
    RunLock,
    load_checkpoint,
    now,
    peak_memory_bytes,
    provenance,
    read_json,
    read_metrics,
    remove_checkpoints,
    save_checkpoint,
    write_json_atomic,
)
from replication.science.errors import ReplicationError, RunFolderError
from replication.science.gapt import Phase, PhaseController
from replication.science.methods import METHODS
from replication.tasks.registry import build_task
from replication.training.alignment import InStepAlignment, gradient_alignment
from replication.training.objectives import (
    StepResult,
    accumulate_gradients,
    micro_batch_kind,
    plan_layers,
    update_controller,
)
from replication.training.optim import Optimizers

SUMMARY_NAME = "summary.json"
COMPILE_BACKEND = "inductor"  # torch.compile's backend under train.compile (tests use "eager")
METRICS_NAME = "metrics.jsonl"


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


class NonFiniteLossError(ReplicationError):
    exit_code = 3


class TrainingInterrupted(ReplicationError):
    exit_code = 130
    prefix = "interrupted"


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to checkpoint at the end of the current step and stop; inside
    ``at_once(message)`` (work whose state is already checkpointed) they stop at once.

    In a distributed run each process sees its own signals, each at its own point of a step, and a
    process that stopped alone would leave the others blocked in their next all-reduce. There the loop
    does not act on ``signal``: ``Trainer._reduce`` adds ``pending()`` (1.0 while this process holds a
    request) to the all-reduce every step already does and stores in ``agreed`` whether any process
    held one, so every process stops after the same step. A request that arrives after a step's
    all-reduce stays pending and counts at the next step's.

    ``at_once`` is for a single process only. In a distributed run the final evaluation all-reduces
    too, so a process that raised at once would leave the others blocked there until the launcher
    (torchrun) tore the group down, and deciding together would cost a collective of its own. There a
    stop request during the final evaluation (or after the last step's all-reduce) is not acted on:
    every process finishes the evaluation, which is short next to training, and the run finishes,
    unless the launcher's own deadline ends it first (torchrun kills its workers 30 s after passing
    on a signal). A second signal still stops a process at once (``KeyboardInterrupt``), leaving the
    teardown of the others to the launcher. Either way the checkpoint of the last step resumes into
    the evaluation."""

    def __init__(self, distributed: bool = False) -> None:
        self.signal: int | None = None
        self.distributed = distributed
        self.agreed = False  # distributed: some process held a request at the last step's all-reduce
        self._previous: dict[int, Any] = {}
        self._at_once: str | None = None

    def pending(self) -> float:
        """This process's vote in the step's all-reduce: 1.0 once it has received a stop request."""
        return 0.0 if self.signal is None else 1.0

    def reason(self) -> str:
        """What stopped this process, for the message: its own signal, or another process's request."""
        return f"signal {self.signal}" if self.signal is not None else "a stop request to another process"

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.signal = signum
        if self._at_once is not None:
            raise TrainingInterrupted(f"stopped by signal {signum} {self._at_once}")

    @contextmanager
    def at_once(self, message: str) -> Iterator[None]:
        if self.distributed:  # see the class docstring: every process finishes the work inside
            yield
            return
        if self.signal is not None:
            raise TrainingInterrupted(f"stopped by signal {self.signal} {message}")
        self._at_once = message
        try:
            yield
        finally:
            self._at_once = None

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would find (its own order: $CXX, then the usual names), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _check_config(config: RunConfig, method_name: str, world_size: int, device: torch.device) -> None:
    method = METHODS[method_name]
    attention = getattr(config.model, "attention", None)
    if attention == "flex" and device.type == "cpu":
        raise ConfigError(
            "model.attention is flex, but FlexAttention has no backward pass on CPU (torch "
            f"{torch.__version__.split('+')[0]}): use model.attention: auto (flex on CUDA, sdpa elsewhere) or sdpa"
        )
    if attention in ("flex", "auto") and device.type == "cuda" and not config.train.compile:
        raise ConfigError(
            f"model.attention is {attention}, which is FlexAttention on CUDA, and train.compile is false: "
            "uncompiled, FlexAttention builds every (T, T) score matrix; set train.compile: true, or "
            "model.attention: sdpa"
        )
    if config.train.compile and COMPILE_BACKEND == "inductor" and cxx_compiler() is None:
        raise ConfigError(
            "train.compile is true, and torch.compile's inductor needs a C++ compiler, but none was found "
            "($CXX, c++, g++, clang++): install one (Debian: apt install g++), or set train.compile: false"
        )
    if config.train.grad_accum % world_size:
        raise ConfigError(
            f"train.grad_accum ({config.train.grad_accum} micro-batches per step in all) must be divisible "
            f"by the number of processes ({world_size})"
        )
    if method.compression == "alternate" and config.train.grad_accum < 2:
        raise ConfigError(
            f"method {method_name} alternates main-loss and MBE micro-batches within a step: "
            f"train.grad_accum must be >= 2 (got {config.train.grad_accum})"
        )


def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Train one run into run_dir (resuming from its checkpoint if there is one); returns the summary.

    The folder is locked for the whole call (by the main process of a torchrun group), so a second
    trainer of it refuses, and one that starts after the first finished finds its summary.
    """
    run_dir = Path(run_dir)
    with RunLock(run_dir, enabled=int(os.environ.get("RANK", "0")) == 0) as lock:
        if lock.took_over:
            print(
                f"{run_dir}: taking over the lock left by {lock.took_over}, which no longer holds it",
                file=sys.stderr,
            )
        if lock.warning:
            print(f"warning: {lock.warning}", file=sys.stderr)
        summary = finished_summary(config, run_dir)
        if summary is not None:
            print(f"{run_dir}: already finished ({SUMMARY_NAME} exists); not retraining", file=sys.stderr)
            return summary
        return Trainer(config, run_dir, data_root=data_root, show_progress=show_progress).run()


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


class Trainer:
    """One run: built from its config, then ``run()`` once. The model, controller and task stay
    readable afterwards (tests and benchmarks use them)."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        data_root: str | Path | None = None,
        show_progress: bool | None = None,
    ):
        self.config, self.run_dir = config, Path(run_dir)
        self.ctx = ctx = init_distributed(config.train.device)
        _check_config(config, config.method, ctx.world_size, ctx.device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stop = _StopRequest(distributed=ctx.enabled)
        tcfg = config.train
        self.method = METHODS[config.method]
        device = ctx.device
        _seed_everything(config.seed)
        self.task = build_task(
            config,
            device,
            rank=ctx.rank,
            world_size=ctx.world_size,
            data_root=None if data_root is None else Path(data_root),
        )
        self.model = build_model(config.model).to(device)
        self.task.init_model(self.model)
        self.plan = plan_layers(config.objective, self.method, self.model.n_blocks)
        self.optimizers = Optimizers(config.optim, self.model, tcfg.steps)
        self.controller = PhaseController(config.gapt) if self.method.gated else None
        if (
            tcfg.compile
        ):  # per block: gapt's upto never reaches a compiled frame (ReplicationModel.compile_blocks)
            self.model.compile_blocks(backend=COMPILE_BACKEND)
        # the run's precision, decided here once for training, evaluation and RQ1
        self.autocast = autocast_for(tcfg.dtype, device)
        # train.grad_accum counts a step's micro-batches over all processes; each runs an equal share,
        # by global index, so the data of a step does not depend on how many processes share it
        self.units_per_step = self.task.units_per_micro_batch * tcfg.grad_accum
        share = tcfg.grad_accum // ctx.world_size
        self.micro_batches = range(ctx.rank * share, (ctx.rank + 1) * share)
        self.writer = MetricsWriter(self.run_dir / METRICS_NAME, enabled=ctx.is_main)
        self.progress = Progress(tcfg.steps, enabled=ctx.is_main, bar=show_progress)
        self.alignment_layers = list(config.alignment.layers or self.plan.alternate or self.plan.monitored)
        self.last_monitored: list[
            float
        ] = []  # the monitored blocks' latest training MBE, for the progress line
        self.start_step = 0
        self.nonfinite_in_row = 0
        self.n_nonfinite = 0
        self.elapsed_before = 0.0
        self.resumes = 0

    # -- phases ----------------------------------------------------------------------------------
    @property
    def phase(self):
        return self.controller.phase if self.controller else self.method.fixed_phase

    # -- checkpoints -----------------------------------------------------------------------------
    def _restore(self) -> bool:
        ckpt = load_checkpoint(self.run_dir, required=CHECKPOINT_KEYS)
        if ckpt is None:
            return False
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
        _set_rng_state(ckpt["rng"])
        self.start_step = ckpt["next_step"]
        self.nonfinite_in_row = ckpt["nonfinite_in_row"]
        self.n_nonfinite = ckpt["n_nonfinite"]
        self.elapsed_before = ckpt["elapsed"]
        self.resumes = ckpt["resumes"] + 1
        self.writer.open(truncate_to=ckpt["metrics_offset"])
        return True

    def _save(self, next_step: int, elapsed: float) -> None:
        if not self.ctx.is_main:
            return
        self.writer.sync()  # the checkpoint's metrics offset must never point past what is on disk
        save_checkpoint(
            self.run_dir,
            {
                "config_digest": self.config.digest(),
                "config": self.config.to_dict(),
                "next_step": next_step,
                "model": self.model.state_dict(),
                "optimizers": self.optimizers.state_dict(),
                "controller": self.controller.state_dict() if self.controller else None,
                "task": self.task.state_dict(),
                "rng": _rng_state(),
                "nonfinite_in_row": self.nonfinite_in_row,
                "n_nonfinite": self.n_nonfinite,
                "elapsed": elapsed,
                "resumes": self.resumes,
                "metrics_offset": self.writer.offset(),
            },
        )

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            with self.stop, self._compiled_backward_keeps_its_graph():
                return self._run()
        finally:
            self.progress.close()
            self.writer.close()

    def _compiled_backward_keeps_its_graph(self) -> AbstractContextManager:
        """RQ1's record takes gradients of graphs a backward has kept (retain_graph), which a compiled
        backward refuses when it donates its saved buffers: a compiled run that logs alignment compiles
        without donated buffers (they save memory only)."""
        if self.config.train.compile and self.config.alignment.every:
            return torch._functorch.config.patch(donated_buffer=False)
        return nullcontext()

    def _run(self) -> dict[str, Any]:
        tcfg = self.config.train
        t_start = time.perf_counter()
        resumed = self._restore()
        if resumed:
            if self.ctx.is_main:
                what = (
                    "the final evaluation"
                    if self.start_step == tcfg.steps
                    else f"step {self.start_step} of {tcfg.steps}"
                )
                print(f"{self.run_dir}: resuming from {what} (resume {self.resumes})", file=sys.stderr)
            self.writer.write({"kind": "event", "event": "resume", "step": self.start_step, "at": now()})
        else:
            if self.ctx.is_main:
                remove_checkpoints(
                    self.run_dir
                )  # a previous attempt's checkpoint.prev.pt belongs to other metrics
            self.writer.open(truncate_to=None)
            self.writer.write(
                {
                    "kind": "event",
                    "event": "start",
                    "step": 0,
                    "at": now(),
                    "provenance": provenance(self.ctx.device),
                }
            )
            if tcfg.eval_at_start:
                self._evaluate(0)

        def elapsed() -> float:
            return self.elapsed_before + time.perf_counter() - t_start

        self.progress.start(self.start_step)
        for step in range(self.start_step, tcfg.steps):
            self._train_step(step, elapsed)
            done = step + 1
            last = done == tcfg.steps
            if not last and tcfg.eval_every and done % tcfg.eval_every == 0:
                self._evaluate(done)
            # distributed: what all processes agreed at this step's all-reduce, so all stop after it
            interrupted = self.stop.agreed if self.ctx.enabled else self.stop.signal is not None
            # the last step is always checkpointed: an interrupted final evaluation resumes into itself
            if last or interrupted or (tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0):
                self._save(done, elapsed())
            if interrupted:
                if self.ctx.enabled:  # no process exits (and has the launcher stop the rest) before the save
                    all_reduce_sum(torch.zeros(1, device=self.ctx.device)).item()
                raise TrainingInterrupted(
                    f"stopped by {self.stop.reason()} after step {done}; the checkpoint in {self.run_dir} "
                    "resumes the run when the same command runs again"
                )
        with self.stop.at_once(
            f"during the final evaluation; the checkpoint in {self.run_dir} resumes into it when the same command "
            "runs again"
        ):
            self._evaluate(tcfg.steps)
        self.progress.close()
        return self._finish(elapsed())

    def _train_step(self, step: int, elapsed) -> None:
        tcfg = self.config.train
        progress = step / tcfg.steps
        window = self.model.attention_window(progress)
        lrs = self.optimizers.set_step(step)
        phase = self.phase
        probe = None
        if self.config.alignment.every and step % self.config.alignment.every == 0 and self.ctx.is_main:
            if self._alignment_in_step(phase):  # from the step's own passes (alignment.InStepAlignment)
                probe = InStepAlignment(
                    self.model,
                    self.task,
                    self.alignment_layers,
                    len(self.micro_batches),
                    autocast=self.autocast,
                )
            else:
                record = gradient_alignment(
                    self.model,
                    self.task,
                    step=step,
                    layers=self.alignment_layers,
                    window=window,
                    autocast=self.autocast,
                )
                self.writer.write({"kind": "alignment", "step": step, **record})
        every_block = step % tcfg.block_mbe_every == 0 or step == tcfg.steps - 1
        # between those steps: the blocks the controller reads, and none for a method without one
        # (the regularized blocks come with the loss either way)
        thin_blocks = self.plan.monitored if self.controller is not None else []
        has_monitored = (
            every_block or self.controller is not None or set(self.plan.monitored) <= set(self.plan.joint)
        )
        t0 = time.perf_counter()
        result = accumulate_gradients(
            self.model,
            self.task,
            self.method,
            self.config.objective,
            self.plan,
            step=step,
            phase=phase,
            micro_batches=self.micro_batches,
            window=window,
            autocast=self.autocast,
            probe=probe,
            blocks=None if every_block else thin_blocks,
        )
        probe_seconds = 0.0
        if probe is not None and probe.record is not None:
            self.writer.write({"kind": "alignment", "step": step, **probe.record})
            probe_seconds = probe.seconds
        result = self._reduce(result)
        if result.finite:
            if self.ctx.enabled:
                all_reduce_gradients(self.model)
            self.optimizers.step()
            self.nonfinite_in_row = 0
        else:
            self.nonfinite_in_row += 1
            self.n_nonfinite += 1
            self.writer.write(
                {
                    "kind": "event",
                    "event": "nonfinite_step",
                    "step": step,
                    "loss": result.main_loss,
                    "in_a_row": self.nonfinite_in_row,
                }
            )
        self.optimizers.zero_grad()

        if self.controller is not None:  # a skipped step counts as non-finite and changes nothing else
            for change in update_controller(self.controller, result, self.plan.monitored):
                self.writer.write({"kind": "event", "event": "phase_change", **change.as_dict()})
        counters = self.controller.snapshot() if self.controller else {}
        counters.pop("phase", None)
        mbe = result.mbe_by_layer
        monitored = [mbe[i] for i in self.plan.monitored] if mbe and has_monitored else []
        if monitored:
            self.last_monitored = monitored
        loss_key = f"train/{self.task.main_loss_name}"
        self.writer.write(
            {
                "kind": "train",
                "step": step,
                "tokens": (step + 1) * self.units_per_step,
                "phase": phase.value,
                **counters,
                loss_key: result.main_loss,
                "train/mbe_by_layer": mbe if every_block else None,  # else NaN outside the monitored blocks
                "train/mbe": sum(mbe) / len(mbe) if mbe and every_block else None,
                "train/mbe_monitored": sum(monitored) / len(monitored) if monitored else None,
                "lr": lrs,
                "window": window,
                "step_time": time.perf_counter() - t0 - probe_seconds,  # without RQ1's record
                "time": elapsed(),
            }
        )
        self.progress.update(step, loss_key, result.main_loss, self.last_monitored, phase.value)
        if self.nonfinite_in_row >= tcfg.max_nonfinite_in_row:
            raise NonFiniteLossError(
                f"{self.run_dir}: the main loss was non-finite in {self.nonfinite_in_row} steps in a row "
                f"(last at step {step}); those updates were skipped and the run stops here. Lower the learning "
                "rate or check the data; the last periodic checkpoint is kept."
            )

    def _alignment_in_step(self, phase: Phase) -> bool:
        """Whether this process's step runs micro-batches 0 and 1, first and in that order, each on the
        main loss alone: then RQ1's record comes from the step's own passes."""
        first = list(self.micro_batches[:2])
        kinds = {micro_batch_kind(self.method, phase, m) for m in (0, 1)}
        return first == [0, 1] and kinds == {"main"}

    def _reduce(self, result: StepResult) -> StepResult:
        """Sums and counts over every process: all ranks then feed the controller the same numbers.
        The same all-reduce counts the processes holding a stop request (``self.stop.agreed``)."""
        if not self.ctx.enabled:
            return result
        n_blocks = self.model.n_blocks
        mbe = result.mbe_sum or [0.0] * n_blocks
        packed = torch.tensor(
            [
                result.main_loss_sum,
                result.main_loss_count,
                result.mbe_count,
                0.0 if result.finite else 1.0,
                self.stop.pending(),
                *mbe,
            ],
            dtype=torch.float64,
            device=self.ctx.device,
        )
        total = all_reduce_sum(packed).tolist()
        self.stop.agreed = total[4] > 0.0
        return StepResult(
            total[0], int(total[1]), total[5:] if total[2] else [], int(total[2]), total[3] == 0.0
        )

    def _evaluate(self, done: int) -> None:
        window = self.model.attention_window(done / self.config.train.steps)
        metrics = self.task.evaluate(self.model, step=done, window=window, autocast=self.autocast)
        record = {"kind": "eval", "step": done, "tokens": done * self.units_per_step, **metrics}
        self.writer.write(record)
        self.progress.log_eval(done, metrics)

    # -- the end ---------------------------------------------------------------------------------
    def _finish(self, wall_time: float) -> dict[str, Any]:
        self.writer.close()
        summary: dict[str, Any] = {}
        if self.ctx.is_main:
            records = read_metrics(self.run_dir / METRICS_NAME)
            changes = [r for r in records if r.get("event") == "phase_change"]
            summary = {
                "experiment": self.config.experiment,
                "scale": self.config.scale,
                "method": self.config.method,
                "config_digest": self.config.digest(),
                "seed": self.config.seed,
                "data_seed": self.config.effective_data_seed,
                "status": "finished",
                "steps": self.config.train.steps,
                "tokens": self.config.train.steps * self.units_per_step,
                "world_size": self.ctx.world_size,
                "main_loss": self.task.main_loss_name,
                "metrics": self.task.summarize(records),
                "data_root": str(self.task.data_root),
                "gated": self.method.gated,
                "phase_changes": len(changes),
                "phase_change_steps": [c["step"] for c in changes],
                "never_changed_phase": self.method.gated and not changes,
                "compress_steps": sum(
                    1 for r in records if r["kind"] == "train" and r["phase"] == "compress"
                ),
                "nonfinite_steps": self.n_nonfinite,
                "resumes": self.resumes,
                "wall_time_s": wall_time,
                "peak_memory_bytes": peak_memory_bytes(self.ctx.device),
                "finished_at": now(),
                "provenance": provenance(self.ctx.device),
                "config": self.config.to_dict(),
            }
            write_json_atomic(self.run_dir / SUMMARY_NAME, summary)
            if self.config.train.keep_checkpoint:
                (self.run_dir / PREVIOUS_CHECKPOINT_NAME).unlink(missing_ok=True)
            else:
                remove_checkpoints(self.run_dir)
        return summary


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.training.train", __doc__)
    parser.add_argument("config", type=Path, help="RUN_DIR/config.yaml, a resolved run config")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("REPLICATION_DATA_ROOT", "data")),
        help="where prepared data sets live (default: $REPLICATION_DATA_ROOT or ./data)",
    )
    parser.add_argument(
        "--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto")
    args = parser.parse_args(argv)
    return cli.run(_main, args)


def _main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    show = {"auto": None, "bar": True, "lines": False}[args.progress]
    config = load_run_config(args.config)
    train(config, args.config.parent, data_root=args.data_root, show_progress=show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
