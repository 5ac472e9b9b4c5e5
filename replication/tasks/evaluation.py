"""Evaluation helpers shared by the language tasks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from replication.models import ReplicationModel
from replication.runtime.distributed import all_reduce_sum
from replication.science.mbe import layer_mbe
from replication.tasks.base import Batch, Task


def mbe_kwargs(task: Task) -> dict[str, Any]:
    return task.config.objective.mbe_options()


@torch.no_grad()
def evaluate_lm(
    model: ReplicationModel,
    task: Task,
    batches: Iterable[Batch],
    *,
    window: int | None,
    prefix: str = "val",
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> dict[str, Any]:
    """Mean token CE and every block's patch MBE over the batches this process was given, reduced
    over processes: {prefix/ce, prefix/mbe_by_layer, prefix/mbe (mean over blocks)}."""
    options = mbe_kwargs(task)
    was_training = model.training
    model.eval()
    ce_sum = torch.zeros((), dtype=torch.float64, device=task.device)
    tokens = torch.zeros((), dtype=torch.float64, device=task.device)
    # zeros, not None: a process may hold no validation batch (fewer batches than processes) and still
    # takes part in the all-reduce
    mbe_sum = torch.zeros(model.n_blocks, dtype=torch.float64, device=task.device)
    patches = torch.zeros((), dtype=torch.float64, device=task.device)
    for batch in batches:
        with autocast():
            out = task.forward(model, batch, window=window)
        logits = out.output.float()
        ce_sum += F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="sum").double()
        tokens += batch.targets.numel()
        n_patches = batch.inputs.numel() // options["patch_size"]
        per_layer = layer_mbe(out.hidden, **options).double() * n_patches
        mbe_sum = mbe_sum + per_layer
        patches += n_patches
    model.train(was_training)
    totals = all_reduce_sum(torch.cat([ce_sum[None], tokens[None], patches[None], mbe_sum]))
    ce, n_tokens, n_patches, mbe = totals[0], totals[1], totals[2], totals[3:] / totals[2]
    mbe_list = mbe.tolist()
    return {
        f"{prefix}/ce": (ce / n_tokens).item(),
        f"{prefix}/mbe_by_layer": mbe_list,
        f"{prefix}/mbe": sum(mbe_list) / len(mbe_list),
    }
