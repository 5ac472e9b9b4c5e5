"""GAPT in any PyTorch training loop: the MBE of the blocks you name, the phase controller, and the
loss to back-propagate for the current phase.

    from replication.integrations.dropin import GAPT

    gapt = GAPT(model.transformer.h, method="gapt", micro_batches=2)   # hooks on the blocks' outputs
    for step, micro_batches in enumerate(loader):                        # the micro-batches of one step
        for micro, batch in enumerate(micro_batches):
            with gapt.micro_batch(step, micro) as mb:
                output = model(batch["input_ids"])      # an MBE micro-batch ends after its block
                mb.main_loss = loss_fn(output, batch)    # not reached on an MBE micro-batch
            mb.loss.backward()                           # already divided by micro_batches
        report = gapt.end_step()                         # the controller's update: report.phase, .mbe
        if report.finite:
            optimizer.step()
        optimizer.zero_grad()

It is the suite's algorithm, not a copy of it: a micro-batch's objective
(``objectives.micro_batch_objective``), its detached MBE of every block (``monitor.block_mbe``), the
step's sums (``objectives.StepAccumulator``), the controller and its update
(``gapt.PhaseController``, ``objectives.update_controller``) and MBE (``mbe.layer_mbe``) are the
functions ``replication.training.train`` runs, and ``tests/test_dropin.py`` trains one model both
ways and compares them bit for bit.

Methods (``method``): ``gapt`` (compress: odd micro-batches are MBE-only and regularize one block,
rotating once per step; they end the forward pass after that block by raising from its hook),
``gapt_joint`` (compress: main + lambda * mean MBE of the joint blocks), ``ce_mbe`` (always the joint
objective) and ``ce`` (never compresses; MBE is only measured). Blocks are numbered in the order
given; ``ObjectiveConfig`` names the regularized ones (default: the paper's middle blocks),
``GaptConfig`` the controller's rule set and thresholds (``GaptConfig.preset`` gives each rule set's
own defaults). A step whose loss is not finite is reported (``report.finite``), not fed to the
controller: skip its optimizer step, as the suite does. One process: in a data-parallel loop, reduce
the step's sums over processes (``step_sums``) and pass them to ``end_step``, and construct with
``stop_early=False``: an MBE micro-batch that ends its forward pass by raising skips what a
``DistributedDataParallel`` wrapper does after the forward, and with it the gradient all-reduce
(``replication.training.train`` reduces by hand instead).

Every block must run once per forward pass (no block object listed twice, no block applied twice),
and the output its hook sees must carry gradients. Reentrant activation checkpointing
(``use_reentrant=True``) runs the hooks without gradients; the output of a checkpointed block gains
them afterwards, but not one inside a region of several blocks, nor the block an MBE micro-batch
stops at: those are refused. Non-reentrant checkpointing (the default of Hugging Face models) is
fine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from replication.config.base import ConfigError, ObjectiveConfig
from replication.science.gapt import GaptConfig, Phase, PhaseController
from replication.science.methods import METHODS
from replication.training.monitor import block_mbe
from replication.training.objectives import (
    StepAccumulator,
    StepResult,
    micro_batch_kind,
    micro_batch_objective,
    plan_layers,
    update_controller,
)


class _EndForward(Exception):  # noqa: N818 - a signal, not an error
    """Raised from the regularized block's hook: an MBE micro-batch needs nothing after it."""


def block_output(output: Any) -> Tensor:
    """The hidden state in a block's output: the output itself, or the first element of a tuple
    (Hugging Face blocks return (hidden, ...))."""
    return output[0] if isinstance(output, (tuple, list)) else output


@dataclass
class MicroBatch:
    """One micro-batch inside ``GAPT.micro_batch``: set ``main_loss`` in the block (a main or joint
    micro-batch); after it, ``loss`` is what to back-propagate."""

    kind: str  # "main", "joint" or "mbe"
    layer: int | None  # the block an MBE micro-batch regularizes
    main_loss: Tensor | None = None
    objective: Tensor | None = field(default=None, init=False)  # the micro-batch's loss, undivided
    loss: Tensor | None = field(default=None, init=False)  # objective / micro_batches


@dataclass(frozen=True)
class StepReport:
    """What ``GAPT.end_step`` tells the loop about the step that ended."""

    step: int
    phase: Phase  # the phase the step ran in
    next_phase: Phase
    finite: bool  # False: skip the optimizer step
    main_loss: float  # mean over the main and joint micro-batches
    mbe_by_layer: list[float]  # detached MBE of every block, mean over those micro-batches
    phase_changes: list[dict[str, Any]]  # the controller's transitions at this step

    @property
    def mbe(self) -> float:
        return sum(self.mbe_by_layer) / len(self.mbe_by_layer) if self.mbe_by_layer else float("nan")


class GAPT:
    """GAPT (or a baseline) around the blocks of any model; see the module docstring."""

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        *,
        method: str = "gapt",
        micro_batches: int = 1,
        objective: ObjectiveConfig | None = None,
        controller: GaptConfig | None = None,
        hidden_state: Callable[[Any], Tensor] = block_output,
        stop_early: bool = True,
    ):
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
        self.method = METHODS[method]
        if self.method.compression == "alternate" and micro_batches < 2:
            raise ConfigError(
                f"method {method} alternates main-loss and MBE micro-batches: micro_batches must be >= 2"
            )
        self.blocks = list(blocks)
        if len({id(block) for block in self.blocks}) != len(self.blocks):
            raise ConfigError("a block appears twice in blocks: every block must be a module of its own")
        self.stop_early = stop_early
        self.micro_batches = micro_batches
        self.objective = objective or ObjectiveConfig()
        self.plan = plan_layers(self.objective, self.method, len(self.blocks))
        self.controller = PhaseController(controller or GaptConfig()) if self.method.gated else None
        self.hidden_state = hidden_state
        self.step_index = 0
        self._sums: StepAccumulator | None = None
        self._captured: dict[int, Tensor] | None = None
        self._end_after: int | None = None
        self._handles = [block.register_forward_hook(self._hook(i)) for i, block in enumerate(self.blocks)]

    # -- state ---------------------------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        return self.controller.phase if self.controller is not None else self.method.fixed_phase

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable: the controller and the step counter."""
        return {
            "controller": self.controller.state_dict() if self.controller else None,
            "step": self.step_index,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.controller is not None:
            self.controller.load_state_dict(state["controller"])
        self.step_index = int(state["step"])

    def remove(self) -> None:
        """Remove the hooks: the model runs as if GAPT had never been attached."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- hooks ---------------------------------------------------------------------------------
    def _hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._captured is None:  # outside a micro-batch (evaluation, generation): nothing
                return
            if index in self._captured:
                raise RuntimeError(
                    f"block {index} ran twice in one micro-batch: GAPT needs each block once per forward "
                    "pass (one forward pass per `with gapt.micro_batch(...)`, no block applied twice)"
                )
            self._captured[index] = self.hidden_state(output)
            if index == self._end_after and self.stop_early:
                raise _EndForward

        return hook

    # -- a step ----------------------------------------------------------------------------------
    @contextmanager
    def micro_batch(self, step: int, micro: int) -> Iterator[MicroBatch]:
        """Run one micro-batch's forward pass inside: the blocks' outputs are collected, and an MBE
        micro-batch ends after its block. ``step`` counts optimizer steps from 0 (it rotates gapt's
        block), ``micro`` the step's micro-batches from 0 (odd ones are gapt's MBE micro-batches)."""
        if self._sums is None:
            self._sums = StepAccumulator(next(self.blocks[0].parameters()).device)
        kind = micro_batch_kind(self.method, self.phase, micro)
        layer = self.plan.alternate[step % len(self.plan.alternate)] if kind == "mbe" else None
        mb = MicroBatch(kind, layer)
        self._captured, self._end_after = {}, layer
        try:
            yield mb
        except _EndForward:
            pass
        finally:
            captured, self._captured, self._end_after = self._captured, None, None
        needed = len(self.blocks) if layer is None else layer + 1
        if len(captured) < needed:
            raise RuntimeError(
                f"{len(captured)} of the {needed} blocks ran inside the micro-batch: run the model's forward "
                "pass in the `with gapt.micro_batch(...)` block"
            )
        if kind != "mbe" and mb.main_loss is None:
            raise RuntimeError("set mb.main_loss inside the `with gapt.micro_batch(...)` block")
        hidden = [captured[i] for i in range(needed)]
        regularized = [layer] if kind == "mbe" else self.plan.joint if kind == "joint" else []
        if torch.is_grad_enabled() and any(not hidden[i].requires_grad for i in regularized):
            raise RuntimeError(
                "a regularized block's output carries no gradient: reentrant activation checkpointing runs "
                "the blocks' hooks without gradients; use use_reentrant=False"
            )
        losses = micro_batch_objective(kind, hidden, mb.main_loss, self.objective, self.plan, step)
        every_layer = block_mbe(hidden, losses, self.objective.mbe_options())
        self._sums.add(losses.loss, losses.main, every_layer)
        mb.objective = losses.loss
        mb.loss = mb.objective / self.micro_batches

    def end_step(self, result: StepResult | None = None) -> StepReport:
        """The step's sums go to the controller, which decides the next step's phase. ``result``:
        the step's sums reduced over processes, where several share it (default: this process's)."""
        if result is None:
            if self._sums is None:
                raise RuntimeError("end_step() before any micro_batch() of the step")
            result = self._sums.result()
        self._sums = None
        phase = self.phase
        changes = update_controller(self.controller, result, self.plan.monitored) if self.controller else []
        report = StepReport(
            self.step_index,
            phase,
            self.phase,
            result.finite,
            result.main_loss,
            result.mbe_by_layer,
            [c.as_dict() for c in changes],
        )
        self.step_index += 1
        return report

    def step_sums(self) -> StepResult:
        """This process's sums of the step so far (to reduce over processes before ``end_step``)."""
        if self._sums is None:
            raise RuntimeError("no micro-batch of this step has run")
        return self._sums.result()


__all__ = ["GAPT", "GaptConfig", "MicroBatch", "ObjectiveConfig", "StepReport", "block_output"]
