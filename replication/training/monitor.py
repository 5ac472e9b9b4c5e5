"""The training MBE: the detached patch-MBE of each block, which ``metrics.jsonl`` records and the
controller reads, apart from the losses that are back-propagated.

It is measured on the micro-batches that ran the whole model (main-loss and joint ones) and averaged
over them (``objectives.StepAccumulator``): every block on the steps the loop logs them all (every
``train.block_mbe_every`` steps, and the last), and on the steps between only the blocks the
controller reads (none for a method without a controller). The regularized blocks' values come from
the objective either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from replication.science.mbe import layer_mbe

if TYPE_CHECKING:
    from replication.training.objectives import LayerPlan, MicroBatchLoss


@torch.no_grad()
def block_mbe(
    hidden: Sequence[Tensor],
    losses: MicroBatchLoss,
    options: dict[str, Any],
    blocks: Sequence[int] | None = None,
) -> Tensor | None:
    """Detached MBE of ``blocks`` (None: every block) and of the blocks the objective regularized
    (their values taken from ``losses``, not computed again), NaN for the other blocks; None for an MBE
    micro-batch, which may have run only up to its layer. ``options``: ``ObjectiveConfig.mbe_options``."""
    if losses.main is None:
        return None
    known = losses.layers
    wanted = range(len(hidden)) if blocks is None else blocks
    rest = sorted({i for i in wanted if i not in known})
    values = torch.full((len(hidden),), math.nan, device=hidden[0].device)
    if rest:
        values[rest] = layer_mbe([h.detach() for h in hidden], rest, **options)
    if known:
        values[known] = losses.mbe.detach()
    return values


class BlockMonitor:
    """Which blocks' training MBE the loop measures at a step, and what its training record says of
    them; ``last`` is the monitored blocks' latest values, for the progress line."""

    def __init__(self, plan: LayerPlan, *, controlled: bool, steps: int, every: int):
        self.monitored = plan.monitored
        self.between = plan.monitored if controlled else []
        # whether the steps between hold the monitored blocks: the controller reads them, or they are
        # all regularized
        self.monitored_between = controlled or set(plan.monitored) <= set(plan.joint)
        self.steps, self.every = steps, every
        self.last: list[float] = []

    def every_block(self, step: int) -> bool:
        return step % self.every == 0 or step == self.steps - 1

    def blocks(self, step: int) -> list[int] | None:
        """The blocks measured at this step besides the regularized ones (None: every block)."""
        return None if self.every_block(step) else self.between

    def fields(self, step: int, mbe: list[float]) -> dict[str, Any]:
        """The training record's MBE fields, from the step's ``StepResult.mbe_by_layer``."""
        every_block = self.every_block(step)
        has_monitored = every_block or self.monitored_between
        monitored = [mbe[i] for i in self.monitored] if mbe and has_monitored else []
        if monitored:
            self.last = monitored
        return {
            "train/mbe_by_layer": mbe if every_block else None,  # else NaN outside the measured blocks
            "train/mbe": sum(mbe) / len(mbe) if mbe and every_block else None,
            "train/mbe_monitored": sum(monitored) / len(monitored) if monitored else None,
        }
