"""The gradient computation of one optimizer step (docs/SPEC.md 3.2-3.3), for each compression
objective a method (``replication.science.methods``) can name:

- ``alternate`` (method ``gapt``): the step's micro-batches alternate between main-loss-only
  (even index) and MBE-only (odd index, weight 1) micro-batches; the MBE micro-batch regularizes one
  layer, rotating over the alternate layers once per step. The MBE micro-batch runs the model only
  up to that layer.
- ``joint`` (methods ``gapt_joint`` and ``ce_mbe``): every micro-batch uses main + lambda * the mean
  MBE of the joint layers.

Gradients are summed over the step's micro-batches and divided by their count, so every method sees
the same tokens per step. The training MBE that is logged, and fed to the controller, is measured
apart from the losses (``replication.training.monitor``) and summed here with them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from replication.config.base import ConfigError, ObjectiveConfig
from replication.models import ReplicationModel
from replication.science.gapt import Phase, PhaseController, Transition
from replication.science.mbe import layer_mbe
from replication.science.methods import Method, default_layers
from replication.tasks.base import Task
from replication.training import monitor


class MicroBatchProbe(Protocol):
    """What looks into a step's micro-batches without running them again (RQ1's in-step record)."""

    def retain_graph(self, micro: int) -> bool: ...

    def after_backward(self, micro: int, hidden: Sequence[Tensor], main: Tensor | None) -> None: ...


@dataclass(frozen=True)
class LayerPlan:
    alternate: list[int]  # the rotation of gapt's MBE micro-batches
    joint: list[int]  # the layers of the joint objective
    monitored: list[int]  # what the controller watches: the layers the method regularizes


def plan_layers(objective: ObjectiveConfig, method: Method, n_blocks: int) -> LayerPlan:
    def pick(explicit: list[int] | None, kind: Literal["alternate", "joint"]) -> list[int]:
        layers = default_layers(n_blocks, kind) if explicit is None else list(explicit)
        bad = [i for i in layers if not 0 <= i < n_blocks]
        if bad or not layers:
            raise ConfigError(
                f"objective.{kind}_layers {layers} must be non-empty and within 0..{n_blocks - 1}"
            )
        return layers

    needs_alternate = method.compression == "alternate"
    needs_joint = method.compression == "joint"
    alternate = pick(objective.alternate_layers, "alternate") if needs_alternate else []
    joint = pick(objective.joint_layers, "joint") if needs_joint else []
    if not (needs_alternate or needs_joint):  # ce: nothing regularized; monitor the paper's middle
        try:
            monitored = pick(objective.alternate_layers, "alternate")
        except ConfigError:
            monitored = list(range(n_blocks))
    else:
        monitored = alternate or joint
    return LayerPlan(alternate=alternate, joint=joint, monitored=monitored)


@dataclass
class StepResult:
    """Sums over the micro-batches one process ran, so that processes can be reduced exactly."""

    main_loss_sum: float  # over the micro-batches that computed the main loss
    main_loss_count: int
    mbe_sum: list[float]  # per block, over the micro-batches that ran the whole model
    mbe_count: int
    finite: bool

    @property
    def main_loss(self) -> float:
        return self.main_loss_sum / self.main_loss_count if self.main_loss_count else math.nan

    @property
    def mbe_by_layer(self) -> list[float]:
        return [m / self.mbe_count for m in self.mbe_sum] if self.mbe_count else []


def micro_batch_kind(method: Method, phase: Phase, micro: int) -> Literal["main", "joint", "mbe"]:
    if phase is Phase.MEMORIZE or method.compression == "none":
        return "main"
    if method.compression == "joint":
        return "joint"
    return "mbe" if micro % 2 == 1 else "main"


@dataclass(frozen=True)
class MicroBatchLoss:
    """What one micro-batch back-propagates, and its parts."""

    loss: Tensor  # the micro-batch's loss, before the step divides it by its micro-batch count
    main: Tensor | None  # the detached main loss; None for an MBE micro-batch
    layers: list[int]  # the regularized layers
    mbe: Tensor | None  # their MBE, one value per layer (None where none is regularized)


def micro_batch_objective(
    kind: str,
    hidden: Sequence[Tensor],
    main: Tensor | None,
    objective: ObjectiveConfig,
    plan: LayerPlan,
    step: int,
) -> MicroBatchLoss:
    """What one micro-batch back-propagates, from its blocks' hidden states and its main loss (an MBE
    micro-batch has none, and may have run only up to its layer). The suite's loop and the drop-in API
    (``replication.integrations.dropin``) both compute a micro-batch here."""
    mbe_kwargs = objective.mbe_options()
    if kind == "mbe":
        layers = [plan.alternate[step % len(plan.alternate)]]
        mbe = layer_mbe(hidden, layers, **mbe_kwargs)
        return MicroBatchLoss(mbe[0], None, layers, mbe)
    if main is None:
        raise ValueError(f"a {kind} micro-batch needs its main loss")
    if kind == "joint":
        mbe = layer_mbe(hidden, plan.joint, **mbe_kwargs)
        return MicroBatchLoss(main + objective.lambda_mbe * mbe.mean(), main.detach(), plan.joint, mbe)
    return MicroBatchLoss(main, main.detach(), [], None)


class StepAccumulator:
    """The sums of one optimizer step over the micro-batches this process ran (``StepResult``)."""

    def __init__(self, device: torch.device):
        self.main_losses: list[Tensor] = []
        self.mbe_sums: Tensor | None = None
        self.n_full = 0
        self.all_finite = torch.ones((), dtype=torch.bool, device=device)

    def add(self, loss: Tensor, main: Tensor | None, every_layer: Tensor | None) -> None:
        if main is not None:
            self.main_losses.append(main)
            self.mbe_sums = every_layer if self.mbe_sums is None else self.mbe_sums + every_layer
            self.n_full += 1
        self.all_finite &= torch.isfinite(
            loss.detach()
        )  # checked once per step: no host sync per micro-batch

    def result(self) -> StepResult:
        main_sum = torch.stack(self.main_losses).sum().item() if self.main_losses else 0.0
        mbe = self.mbe_sums.tolist() if self.mbe_sums is not None else []
        finite = bool(self.all_finite) and math.isfinite(main_sum)
        return StepResult(main_sum, len(self.main_losses), mbe, self.n_full, finite)


def update_controller(
    controller: PhaseController, result: StepResult, monitored: Sequence[int]
) -> list[Transition]:
    """Feed the controller one step (the suite's loop and the drop-in API alike); its transitions.
    A skipped (non-finite) step counts as non-finite and changes nothing else."""
    before = len(controller.transitions)
    if result.finite:
        controller.update(result.main_loss, [result.mbe_by_layer[i] for i in monitored])
    else:
        controller.update(math.nan, [math.nan] * len(monitored))
    return controller.transitions[before:]


def accumulate_gradients(
    model: ReplicationModel,
    task: Task,
    method: Method,
    objective: ObjectiveConfig,
    plan: LayerPlan,
    *,
    step: int,
    phase: Phase,
    micro_batches: Sequence[int],
    window: int | None,
    autocast: Callable[[], AbstractContextManager],
    probe: MicroBatchProbe | None = None,
    blocks: Sequence[int] | None = None,
) -> StepResult:
    """Forward and backward this process's micro-batches of one optimizer step (their indices
    among all of the step's micro-batches); gradients land in .grad, averaged over these
    micro-batches, so that averaging over equal shares of processes gives the step's mean.
    ``probe`` (RQ1's ``alignment.InStepAlignment``) sees each micro-batch's hidden states and .grad
    after its backward, the graph kept where it asks. ``blocks``: those whose detached MBE
    (``monitor.block_mbe``) the result holds besides the regularized ones (None: every block; the rest
    NaN)."""
    step_sums = StepAccumulator(task.device)
    mbe_kwargs = objective.mbe_options()
    for micro in micro_batches:
        batch = task.train_batch(step, micro)
        kind = micro_batch_kind(method, phase, micro)
        with autocast():
            if kind == "mbe":  # the model runs only up to the regularized layer
                upto = plan.alternate[step % len(plan.alternate)] + 1
                out, main = task.forward(model, batch, window=window, upto=upto), None
            else:
                out = task.forward(model, batch, window=window)
                main = task.main_loss(out.output, batch)
            losses = micro_batch_objective(kind, out.hidden, main, objective, plan, step)
            every_layer = monitor.block_mbe(out.hidden, losses, mbe_kwargs, blocks)
        step_sums.add(losses.loss, losses.main, every_layer)
        (losses.loss / len(micro_batches)).backward(
            retain_graph=probe is not None and probe.retain_graph(micro)
        )
        if probe is not None:
            probe.after_backward(micro, out.hidden, losses.main)
    return step_sums.result()
