"""Stop requests: SIGINT and SIGTERM to a training process, and, under torchrun, the processes'
agreement on the step after which all of them stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from replication.science.errors import ReplicationError


class TrainingInterrupted(ReplicationError):
    exit_code = 130
    prefix = "interrupted"


class StopRequest:
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
    on a signal). Either way the checkpoint of the last step resumes into the evaluation.

    Schedulers repeat themselves: SLURM signals every process of a job step and torchrun passes the
    signal on, so a worker sees SIGTERM twice within milliseconds, and a preemption notice can be
    followed by another at the time limit. A repeated SIGTERM therefore changes nothing: the run still
    checkpoints after the current step (one that arrives after the checkpoint, when the exiting process
    has handed its signals back, ends it by the default action). Only a second SIGINT (a deliberate
    second Ctrl-C) stops at once
    (``KeyboardInterrupt``), leaving the teardown of other processes to the launcher; SIGKILL cannot be
    caught at all."""

    def __init__(self, distributed: bool = False) -> None:
        self.signal: int | None = None
        self.distributed = distributed
        self.agreed = False  # distributed: some process held a request at the last step's all-reduce
        self._previous: dict[int, Any] = {}
        self._at_once: str | None = None

    def pending(self) -> float:
        """This process's vote in the step's all-reduce: 1.0 once it has received a stop request."""
        return 0.0 if self.signal is None else 1.0

    def stops_after_step(self) -> bool:
        """Whether the loop stops after the step that just ended: this process's own request, or in a
        distributed run what all processes agreed at the step's all-reduce, so that all stop after it."""
        return self.agreed if self.distributed else self.signal is not None

    def reason(self) -> str:
        """What stopped this process, for the message: its own signal, or another process's request."""
        return f"signal {self.signal}" if self.signal is not None else "a stop request to another process"

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user means now
                raise KeyboardInterrupt
            return  # a repeated SIGTERM (scheduler, launcher): the checkpoint after this step stands
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
