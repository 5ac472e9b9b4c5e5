"""The one training loop of every experiment.

    python -m replication.training.train RUN_DIR/config.yaml

trains the run whose resolved config sits in RUN_DIR and writes into RUN_DIR:
- ``metrics.jsonl``: one JSON object per event. ``kind`` is "train" (every optimizer step: the
  step index, tokens seen after it, the phase it ran in, the controller's counters and minima after
  its update, the training main loss, the training MBE of every block, learning rates, time),
  "eval" (after ``step`` optimizer steps: the task's validation metrics), "alignment" (RQ1) or
  "event" (start, resume, phase_change, nonfinite_step).
- ``summary.json``: headline metrics, phase changes, the model's trainable parameter count
  (``n_params``), provenance, and the resolved config with its digest; written last, so its presence
  means the run finished. A run folder that holds one is not retrained; one whose summary belongs to
  another config is an error that names the differing keys.
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
the evaluation. A second Ctrl-C stops at once; a repeated SIGTERM (a scheduler and its launcher
both signalling) does not.

``train.threads`` sets torch's CPU threads: the thread count changes a CPU run's numbers, so it is part
of the run's config (and of its digest), and a checkpoint resumes only with the same one.

``train.dtype`` is decided once (``replication.runtime.precision``) for training, evaluation and RQ1;
``train.compile`` compiles each block (``ReplicationModel.compile_blocks``), never the whole model.

This module builds a run and runs its steps; beside it, ``objectives`` computes a step's gradients,
``monitor`` the training MBE it logs, ``checkpoint`` what a checkpoint holds, ``stop`` the stop
requests, ``summary`` summary.json, and ``toolchain`` checks the config against the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from replication.config.base import ConfigError
from replication.config.run import RunConfig, load_run_config
from replication.models import build_model
from replication.runtime import cli
from replication.runtime.distributed import all_reduce_gradients, all_reduce_sum, init_distributed
from replication.runtime.precision import autocast_for
from replication.runtime.progress import Progress
from replication.runtime.record import (
    METRICS_NAME,
    SUMMARY_NAME,
    MetricsWriter,
    RunLock,
    now,
    provenance,
    read_metrics,
)
from replication.science.errors import NonFiniteLossError
from replication.science.gapt import Phase, PhaseController
from replication.science.methods import METHODS
from replication.science.schedule import mask
from replication.tasks.registry import build_task
from replication.training.alignment import InStepAlignment, gradient_alignment, merge_records
from replication.training.checkpoint import Checkpointer, LoopState, seed_everything
from replication.training.monitor import BlockMonitor
from replication.training.objectives import (
    StepResult,
    accumulate_gradients,
    micro_batch_kind,
    plan_layers,
    update_controller,
)
from replication.training.optim import Optimizers
from replication.training.pretrain import ce_pretrain
from replication.training.stop import StopRequest, TrainingInterrupted
from replication.training.summary import finished_summary, write_summary
from replication.training.toolchain import check_config

COMPILE_BACKEND = "inductor"  # torch.compile's backend under train.compile (tests use "eager")


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
    torch.set_num_threads(config.train.threads)  # the run's own thread count (train.threads)
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
        check_config(config, ctx.world_size, ctx.device, backend=COMPILE_BACKEND)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stop = StopRequest(distributed=ctx.enabled)
        tcfg = config.train
        self.method = METHODS[config.method]
        device = ctx.device
        seed_everything(config.seed)
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
        self.schedule = self._schedule()
        # stage starts from the ce pre-train (experiment 3's paper protocol): first step -> stage name
        self.fresh_starts = config.task.fresh_starts()
        if self.fresh_starts and ctx.world_size > 1:
            raise ConfigError(
                "a stage that starts from the ce pre-train runs in one process, not under torchrun"
            )
        if tcfg.compile:  # per block: gapt's upto never reaches a compiled frame (compile_blocks)
            self.model.compile_blocks(backend=COMPILE_BACKEND)
            # a recompile limit hit is an error, not a silent fall back to eager (at the paper's shapes
            # eager attention runs out of memory): every path compiles a bounded number of graphs
            torch._dynamo.config.fail_on_recompile_limit_hit = True
            if device.type == "cuda":  # the fused CE; on CPU the runs keep the eager one they were run with
                self.task.compile_loss(backend=COMPILE_BACKEND)
        # the run's precision, decided here once for training, evaluation and RQ1
        self.autocast = autocast_for(tcfg.dtype, device)
        # train.grad_accum counts a step's micro-batches over all processes; each runs an equal share,
        # by global index, so the data of a step does not depend on how many processes share it
        self.units_per_step = self.task.units_per_micro_batch * tcfg.grad_accum
        share = tcfg.grad_accum // ctx.world_size
        self.micro_batches = range(ctx.rank * share, (ctx.rank + 1) * share)
        self.writer = MetricsWriter(self.run_dir / METRICS_NAME, enabled=ctx.is_main)
        self.progress = Progress(tcfg.steps, enabled=ctx.is_main, bar=show_progress)
        self.monitor = BlockMonitor(
            self.plan, controlled=self.controller is not None, steps=tcfg.steps, every=tcfg.block_mbe_every
        )
        self.alignment_layers = list(config.alignment.layers or self.plan.alternate or self.plan.monitored)
        self.checkpoint = Checkpointer(
            self.run_dir,
            config,
            model=self.model,
            optimizers=self.optimizers,
            controller=self.controller,
            task=self.task,
            writer=self.writer,
            is_main=ctx.is_main,
            background=device.type == "cuda",  # periodic checkpoints written while training goes on
        )
        self.state = LoopState()  # next_step and elapsed: where this process starts; the counters: now

    def _schedule(self) -> list[bool] | None:
        """A matched-dose control's compress steps, one bool per step (None for other methods)."""
        if not self.method.matches:
            return None
        if self.config.schedule is None:
            raise ConfigError(
                f"{self.config.method} is the matched-dose control of {self.method.matches}: its config "
                "needs the schedule of that run, written by python -m replication.training.configure ... "
                f"--schedule-from RUNS/<the {self.method.matches} run of seed {self.config.seed}>/"
            )
        return mask(self.config.schedule.compress, self.config.train.steps)

    def phase_at(self, step: int) -> Phase:
        """The phase step ``step`` runs in: the controller's, the schedule's, or the method's fixed one."""
        if self.controller is not None:
            return self.controller.phase
        if self.schedule is not None:
            return Phase.COMPRESS if self.schedule[step] else Phase.MEMORIZE
        return self.method.fixed_phase

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            with self.stop, self._compiled_backward_keeps_its_graph():
                return self._run()
        finally:
            self._checkpoint_written()
            self.progress.close()
            self.writer.close()

    def _checkpoint_written(self) -> None:
        """Wait for a checkpoint being written in the background, whichever way the run ends; a failed
        write is reported, and the checkpoint before it stays."""
        try:
            self.checkpoint.wait()
        except Exception as error:
            print(f"warning: {self.run_dir}: a periodic checkpoint was not written: {error}", file=sys.stderr)

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
        self._start()

        def elapsed() -> float:
            return self.state.elapsed + time.perf_counter() - t_start

        self.progress.start(self.state.next_step)
        for step in range(self.state.next_step, tcfg.steps):
            self._train_step(step, elapsed)
            done = step + 1
            last = done == tcfg.steps
            if not last and tcfg.eval_every and done % tcfg.eval_every == 0:
                self._evaluate(done)
            interrupted = self.stop.stops_after_step()
            # the last step is always checkpointed: an interrupted final evaluation resumes into itself
            if last or interrupted or (tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0):
                self.checkpoint.save(
                    replace(self.state, next_step=done, elapsed=elapsed()), wait=last or interrupted
                )
            if interrupted:
                if self.ctx.enabled:  # no process exits (and has the launcher stop the rest) before the save
                    all_reduce_sum(torch.zeros(1, device=self.ctx.device)).item()
                raise TrainingInterrupted(
                    f"stopped by {self.stop.reason()} after step {done}; the checkpoint in {self.run_dir} "
                    "resumes the run when the same command runs again"
                )
        with self.stop.at_once(
            f"during the final evaluation; the checkpoint in {self.run_dir} resumes into it when the same "
            "command runs again"
        ):
            self._evaluate(tcfg.steps)
        self.progress.close()
        return self._finish(elapsed())

    def _start(self) -> None:
        """Resume from the checkpoint, or start afresh: a new metrics.jsonl and the first evaluation."""
        state = self.checkpoint.restore()
        if state is not None:
            self.state = state
            if self.ctx.is_main:
                what = (
                    "the final evaluation"
                    if state.next_step == self.config.train.steps
                    else f"step {state.next_step} of {self.config.train.steps}"
                )
                print(f"{self.run_dir}: resuming from {what} (resume {state.resumes})", file=sys.stderr)
            self.writer.write({"kind": "event", "event": "resume", "step": state.next_step, "at": now()})
            return
        self.checkpoint.remove()  # a previous attempt's checkpoint.prev.pt belongs to other metrics
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
        if self.config.train.eval_at_start:
            self._evaluate(0)

    def _start_from_ce_pretrain(self, step: int) -> None:
        """The paper's fine-tuning start: the weights of the seed's ce pre-train, a fresh optimizer
        and a fresh controller; the model so loaded is evaluated (``stage_start``) before its first step."""
        self.model.load_state_dict(ce_pretrain(self.config, self.task, step, self.autocast))
        for opt in self.optimizers.optimizers:
            opt.state.clear()  # Adam's moments and step count start again, as in a new optimizer
        if self.controller is not None:  # in memorize, its rules and averages new; its step count goes on
            old = self.controller.state_dict()
            fresh = PhaseController(self.config.gapt).state_dict()
            self.controller.load_state_dict(
                {**fresh, "n_updates": old["n_updates"], "transitions": old["transitions"]}
            )
        window = self.model.attention_window(step / self.config.train.steps)
        metrics = self.task.evaluate(self.model, step=step, window=window, autocast=self.autocast)
        record = {"stage": self.fresh_starts[step], "from": "ce_pretrain"}
        self.writer.write({"kind": "stage_start", "step": step, **metrics, **record})

    def _train_step(self, step: int, elapsed: Callable[[], float]) -> None:
        tcfg = self.config.train
        if step in self.fresh_starts:
            self._start_from_ce_pretrain(step)
        window = self.model.attention_window(step / tcfg.steps)
        lrs = self.optimizers.set_step(step)
        phase = self.phase_at(step)
        probe = self._alignment(step, phase, window)
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
            blocks=self.monitor.blocks(step),
        )
        probe_seconds = self._write_probe(step, probe)
        result = self._reduce(result)
        self._update(step, result)
        loss_key = f"train/{self.task.main_loss_name}"
        self.writer.write(
            {
                "kind": "train",
                "step": step,
                "tokens": (step + 1) * self.units_per_step,
                "phase": phase.value,
                **self._counters(),
                loss_key: result.main_loss,
                **self.monitor.fields(step, result.mbe_by_layer),
                "lr": lrs,
                "window": window,
                "step_time": time.perf_counter() - t0 - probe_seconds,  # without RQ1's record
                "time": elapsed(),
            }
        )
        self.progress.update(step, loss_key, result.main_loss, self.monitor.last, phase.value)
        if self.state.nonfinite_in_row >= tcfg.max_nonfinite_in_row:
            raise NonFiniteLossError(
                f"{self.run_dir}: the main loss was non-finite in {self.state.nonfinite_in_row} steps in a "
                f"row (last at step {step}); those updates were skipped and the run stops here. Lower the "
                "learning rate or check the data; the last periodic checkpoint is kept."
            )

    def _alignment(self, step: int, phase: Phase, window: int | None) -> InStepAlignment | None:
        """RQ1's record of this step (every ``alignment.every`` steps): the probe that takes it from
        the step's own passes where they allow it, each process taking its share of the layers; else
        written now by the main process from a pass of its own."""
        every = self.config.alignment.every
        if not (every and step % every == 0):
            return None
        if self._alignment_in_step(phase):
            rank, world = self.ctx.rank, self.ctx.world_size
            return InStepAlignment(
                self.model,
                self.task,
                self.alignment_layers[rank::world],
                len(self.micro_batches),
                autocast=self.autocast,
                first=self.micro_batches[0],
                noise=self.ctx.is_main,
            )
        if not self.ctx.is_main:
            return None
        record = gradient_alignment(
            self.model,
            self.task,
            step=step,
            layers=self.alignment_layers,
            window=window,
            autocast=self.autocast,
        )
        self.writer.write({"kind": "alignment", "step": step, **record})
        return None

    def _alignment_in_step(self, phase: Phase) -> bool:
        """Whether the step's own passes give RQ1's record: the main process runs micro-batches 0
        and 1, first and in that order, and every process's first micro-batch computes the main loss
        alone (a decision every process takes alike)."""
        share = len(self.micro_batches)
        firsts = [rank * share for rank in range(self.ctx.world_size)]
        kinds = {micro_batch_kind(self.method, phase, m) for m in (0, 1, *firsts)}
        return share >= 2 and kinds == {"main"}

    def _write_probe(self, step: int, probe: InStepAlignment | None) -> float:
        """Write the record the step's probe took, if any (put together from every process's share
        under torchrun); the seconds it took."""
        if probe is None:
            return 0.0
        start = time.perf_counter()
        record = probe.record
        if self.ctx.enabled:
            record = merge_records(probe, self.alignment_layers, all_reduce_sum)
        if record is not None:
            self.writer.write({"kind": "alignment", "step": step, **record})
        return probe.seconds + time.perf_counter() - start

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

    def _update(self, step: int, result: StepResult) -> None:
        """The optimizer step, skipped (and logged) where the step's loss was not finite; then the
        controller's update, for which a skipped step counts as non-finite and changes nothing else."""
        if result.finite:
            if self.ctx.enabled:
                all_reduce_gradients(self.model)
            self.optimizers.step()
            self.state.nonfinite_in_row = 0
        else:
            self.state.nonfinite_in_row += 1
            self.state.n_nonfinite += 1
            self.writer.write(
                {
                    "kind": "event",
                    "event": "nonfinite_step",
                    "step": step,
                    "loss": result.main_loss,
                    "in_a_row": self.state.nonfinite_in_row,
                }
            )
        self.optimizers.zero_grad()
        if self.controller is not None:
            for change in update_controller(self.controller, result, self.plan.monitored):
                self.writer.write({"kind": "event", "event": "phase_change", **change.as_dict()})
        elif (
            self.schedule is not None
            and step + 1 < len(self.schedule)
            and self.schedule[step + 1] != self.schedule[step]
        ):
            # a matched-dose control's phase changes where its schedule does, logged as a controller's
            phases = [Phase.MEMORIZE.value, Phase.COMPRESS.value]
            change = {
                "step": step,
                "from": phases[self.schedule[step]],
                "to": phases[self.schedule[step + 1]],
            }
            self.writer.write({"kind": "event", "event": "phase_change", **change, "reason": "schedule"})

    def _counters(self) -> dict[str, Any]:
        """The controller's counters and minima after the step's update (none without a controller)."""
        counters = self.controller.snapshot() if self.controller else {}
        counters.pop("phase", None)
        return counters

    def _evaluate(self, done: int) -> None:
        window = self.model.attention_window(done / self.config.train.steps)
        metrics = self.task.evaluate(self.model, step=done, window=window, autocast=self.autocast)
        record = {"kind": "eval", "step": done, "tokens": done * self.units_per_step, **metrics}
        self.writer.write(record)
        self.progress.log_eval(done, metrics)

    def _finish(self, wall_time: float) -> dict[str, Any]:
        self.writer.close()
        if not self.ctx.is_main:
            return {}
        summary = write_summary(
            self.run_dir,
            self.config,
            self.task,
            self.model,
            read_metrics(self.run_dir / METRICS_NAME),
            tokens=self.config.train.steps * self.units_per_step,
            world_size=self.ctx.world_size,
            device=self.ctx.device,
            nonfinite_steps=self.state.n_nonfinite,
            resumes=self.state.resumes,
            wall_time=wall_time,
        )
        self.checkpoint.remove(keep_last=self.config.train.keep_checkpoint)
        return summary


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
        "--threads",
        type=cli.positive_int,
        default=None,
        help="only as a check: the run's threads are its config's train.threads",
    )
    parser.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto")
    args = parser.parse_args(argv)
    return cli.run(_main, args)


def _main(args: argparse.Namespace) -> int:
    show = {"auto": None, "bar": True, "lines": False}[args.progress]
    config = load_run_config(args.config)
    if args.threads is not None and args.threads != config.train.threads:
        raise ConfigError(
            f"--threads {args.threads}, but {args.config} sets train.threads: {config.train.threads}. The "
            "thread count changes a CPU run's numbers, so it is part of the run's config: configure a run "
            f"with --threads {args.threads} (python -m replication.training.configure ... --threads "
            f"{args.threads}), or leave --threads out"
        )
    train(config, args.config.parent, data_root=args.data_root, show_progress=show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
