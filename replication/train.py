"""The one training loop of every experiment.

    python -m replication.train RUN_DIR/config.yaml

trains the run whose resolved config sits in RUN_DIR and writes into RUN_DIR:
- ``metrics.jsonl``: one JSON object per event. ``kind`` is "train" (every optimizer step: the
  step index, tokens seen after it, the phase it ran in, the controller's counters and minima after
  its update, the training main loss, the training MBE of every block, learning rates, time),
  "eval" (after ``step`` optimizer steps: the task's validation metrics), "alignment" (RQ1) or
  "event" (start, resume, phase_change, nonfinite_step).
- ``summary.json``: headline metrics, phase changes, provenance; written last, so its presence
  means the run finished. A run folder that holds one is not retrained.
- ``checkpoint.pt`` every ``train.checkpoint_every`` steps and when the process is asked to stop
  (SIGINT, SIGTERM). Running the same command again resumes from it and produces the same metrics
  as an uninterrupted run (bit-identical on CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from replication.alignment import gradient_alignment
from replication.config import ConfigError, RunConfig, load_run_config
from replication.distributed import all_reduce_gradients, all_reduce_sum, init_distributed
from replication.gapt import PhaseController
from replication.models import build_model
from replication.objectives import METHODS, StepResult, accumulate_gradients, plan_layers
from replication.optim import Optimizers
from replication.progress import Progress
from replication.runio import (
    CHECKPOINT_NAME,
    MetricsWriter,
    load_checkpoint,
    now,
    peak_memory_bytes,
    provenance,
    read_metrics,
    save_checkpoint,
    write_json_atomic,
)
from replication.tasks import build_task

SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    pass


class TrainingInterrupted(RuntimeError):
    pass


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
    """SIGINT/SIGTERM ask the loop to checkpoint at the end of the current step and stop."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_config(config: RunConfig, method_name: str, world_size: int) -> None:
    method = METHODS[method_name]
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
    config: RunConfig, run_dir: str | Path, *, data_root: str | Path | None = None, show_progress: bool | None = None
) -> dict[str, Any]:
    """Train one run into run_dir (resuming from its checkpoint if there is one); returns the summary."""
    summary_path = Path(run_dir) / SUMMARY_NAME
    if summary_path.exists():
        print(f"{run_dir}: already finished ({SUMMARY_NAME} exists); not retraining", file=sys.stderr)
        return json.loads(summary_path.read_text())
    return Trainer(config, run_dir, data_root=data_root, show_progress=show_progress).run()


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
        _check_config(config, config.method, ctx.world_size)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stop = _StopRequest()
        tcfg = config.train
        self.method = METHODS[config.method]
        device = ctx.device
        _seed_everything(config.seed)
        self.task = build_task(
            config, device, rank=ctx.rank, world_size=ctx.world_size, data_root=None if data_root is None else Path(data_root)
        )
        self.model = build_model(config.model).to(device)
        self.task.init_model(self.model)
        self.plan = plan_layers(config.objective, self.method, self.model.n_blocks)
        self.optimizers = Optimizers(config.optim, self.model, tcfg.steps)
        self.controller = PhaseController(config.gapt) if self.method.gated else None
        self.forward_model = torch.compile(self.model) if tcfg.compile else self.model
        use_bf16 = tcfg.dtype == "bfloat16"
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
        # train.grad_accum counts a step's micro-batches over all processes; each runs an equal share,
        # by global index, so the data of a step does not depend on how many processes share it
        self.units_per_step = self.task.units_per_micro_batch * tcfg.grad_accum
        share = tcfg.grad_accum // ctx.world_size
        self.micro_batches = range(ctx.rank * share, (ctx.rank + 1) * share)
        self.writer = MetricsWriter(self.run_dir / METRICS_NAME, enabled=ctx.is_main)
        self.progress = Progress(tcfg.steps, enabled=ctx.is_main, bar=show_progress)
        self.alignment_layers = list(config.alignment.layers or self.plan.alternate or self.plan.monitored)
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
        ckpt = load_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        if ckpt["config_digest"] != self.config.digest():
            raise ConfigError(
                f"{self.run_dir / CHECKPOINT_NAME} belongs to a different config than {self.run_dir}/config.yaml; "
                "delete the checkpoint (or the run folder) to train this config from the start"
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
        save_checkpoint(
            self.run_dir,
            {
                "config_digest": self.config.digest(),
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
        with self.stop:
            return self._run()

    def _run(self) -> dict[str, Any]:
        tcfg = self.config.train
        t_start = time.perf_counter()
        resumed = self._restore()
        if resumed:
            self.writer.write({"kind": "event", "event": "resume", "step": self.start_step, "at": now()})
        else:
            self.writer.open(truncate_to=None)
            self.writer.write(
                {"kind": "event", "event": "start", "step": 0, "at": now(), "provenance": provenance(self.ctx.device)}
            )
            if tcfg.eval_at_start:
                self._evaluate(0)

        def elapsed() -> float:
            return self.elapsed_before + time.perf_counter() - t_start

        self.progress.start(self.start_step)
        for step in range(self.start_step, tcfg.steps):
            self._train_step(step, elapsed)
            done = step + 1
            if done == tcfg.steps or (tcfg.eval_every and done % tcfg.eval_every == 0):
                self._evaluate(done)
            interrupted = self.stop.signal is not None
            if done < tcfg.steps and (interrupted or (tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0)):
                self._save(done, elapsed())
            if interrupted:
                self.progress.close()
                self.writer.close()
                raise TrainingInterrupted(
                    f"stopped by signal {self.stop.signal} after step {done}; the checkpoint in {self.run_dir} "
                    "resumes the run when the same command runs again"
                )
        self.progress.close()
        return self._finish(elapsed())

    def _train_step(self, step: int, elapsed) -> None:
        tcfg = self.config.train
        progress = step / tcfg.steps
        window = self.model.attention_window(progress)
        lrs = self.optimizers.set_step(step)
        if self.config.alignment.every and step % self.config.alignment.every == 0 and self.ctx.is_main:
            record = gradient_alignment(
                self.forward_model, self.task, step=step, layers=self.alignment_layers, window=window,
                autocast=self.autocast,
            )  # fmt: skip
            self.writer.write({"kind": "alignment", "step": step, **record})
        phase = self.phase
        t0 = time.perf_counter()
        result = accumulate_gradients(
            self.forward_model, self.task, self.method, self.config.objective, self.plan,
            step=step, phase=phase, micro_batches=self.micro_batches, window=window, autocast=self.autocast,
        )  # fmt: skip
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
                {"kind": "event", "event": "nonfinite_step", "step": step, "loss": result.main_loss,
                 "in_a_row": self.nonfinite_in_row}
            )  # fmt: skip
        self.optimizers.zero_grad()

        if self.controller is not None:
            before = len(self.controller.transitions)
            if result.finite:
                self.controller.update(result.main_loss, [result.mbe_by_layer[i] for i in self.plan.monitored])
            else:  # a skipped step never drives the controller: it counts as non-finite and changes nothing
                self.controller.update(math.nan, [math.nan] * len(self.plan.monitored))
            for change in self.controller.transitions[before:]:
                self.writer.write({"kind": "event", "event": "phase_change", **change.as_dict()})
        counters = self.controller.snapshot() if self.controller else {}
        counters.pop("phase", None)
        mbe = result.mbe_by_layer
        monitored = [mbe[i] for i in self.plan.monitored] if mbe else []
        loss_key = f"train/{self.task.main_loss_name}"
        self.writer.write(
            {
                "kind": "train",
                "step": step,
                "tokens": (step + 1) * self.units_per_step,
                "phase": phase.value,
                **counters,
                loss_key: result.main_loss,
                "train/mbe_by_layer": mbe,
                "train/mbe": sum(mbe) / len(mbe) if mbe else None,
                "train/mbe_monitored": sum(monitored) / len(monitored) if monitored else None,
                "lr": lrs,
                "window": window,
                "step_time": time.perf_counter() - t0,
                "time": elapsed(),
            }
        )
        self.progress.update(step, loss_key, result.main_loss, mbe, phase.value)
        if self.nonfinite_in_row >= tcfg.max_nonfinite_in_row:
            self.writer.close()
            raise NonFiniteLossError(
                f"{self.run_dir}: the main loss was non-finite in {self.nonfinite_in_row} steps in a row "
                f"(last at step {step}); those updates were skipped and the run stops here. Lower the learning "
                "rate or check the data; the last periodic checkpoint is kept."
            )

    def _reduce(self, result: StepResult) -> StepResult:
        """Sums and counts over every process: all ranks then feed the controller the same numbers."""
        if not self.ctx.enabled:
            return result
        n_blocks = self.model.n_blocks
        mbe = result.mbe_sum or [0.0] * n_blocks
        packed = torch.tensor(
            [result.main_loss_sum, result.main_loss_count, result.mbe_count, 0.0 if result.finite else 1.0, *mbe],
            dtype=torch.float64, device=self.ctx.device,
        )  # fmt: skip
        total = all_reduce_sum(packed).tolist()
        return StepResult(total[0], int(total[1]), total[4:] if total[2] else [], int(total[2]), total[3] == 0.0)

    def _evaluate(self, done: int) -> None:
        window = self.model.attention_window(done / self.config.train.steps)
        metrics = self.task.evaluate(self.forward_model, step=done, window=window)
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
                "compress_steps": sum(1 for r in records if r["kind"] == "train" and r["phase"] == "compress"),
                "nonfinite_steps": self.n_nonfinite,
                "resumes": self.resumes,
                "wall_time_s": wall_time,
                "peak_memory_bytes": peak_memory_bytes(self.ctx.device),
                "finished_at": now(),
                "provenance": provenance(self.ctx.device),
            }
            write_json_atomic(self.run_dir / SUMMARY_NAME, summary)
            ckpt = self.run_dir / CHECKPOINT_NAME
            if ckpt.exists() and not self.config.train.keep_checkpoint:
                ckpt.unlink()
        return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replication.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="RUN_DIR/config.yaml, a resolved run config")
    parser.add_argument(
        "--data-root", type=Path, default=Path(os.environ.get("REPLICATION_DATA_ROOT", "data")),
        help="where prepared data sets live (default: $REPLICATION_DATA_ROOT or ./data)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    show = {"auto": None, "bar": True, "lines": False}[args.progress]
    try:
        config = load_run_config(args.config)
        train(config, args.config.parent, data_root=args.data_root, show_progress=show)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except TrainingInterrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
