"""RQ1: alignment of the CE gradient with each layer's MBE gradient (docs/SPEC.md section 4).

On one micro-batch, g_CE = grad CE and g_l = grad MBE_l for each chosen layer, on the same batch and
without applying either. Recorded: the global cosine (all parameters flattened), the cosine within
each block, and the norms. The noise baseline is the cosine between the CE gradients of two
different micro-batches: what "no systematic alignment" looks like at this point of training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from replication.models import ReplicationModel
from replication.science.mbe import layer_mbe
from replication.tasks.base import Task
from replication.tasks.evaluation import mbe_kwargs


def _block_index(model: ReplicationModel, params: list[Tensor]) -> list[int]:
    """For each parameter, the block it belongs to, or -1 (embedding, head, skip weights)."""
    owner = {id(p): i for i, block in enumerate(model.blocks) for p in block.parameters()}
    return [owner.get(id(p), -1) for p in params]


def _cosines(a: Sequence[Tensor | None], b: Sequence[Tensor | None], blocks: list[int], n_blocks: int):
    """Global and per-block cosine of two gradient lists, and the norms of both."""
    device = next(g for g in (*a, *b) if g is not None).device
    dot, na, nb = (torch.zeros(n_blocks + 1, dtype=torch.float64, device=device) for _ in range(3))
    for ga, gb, blk in zip(a, b, blocks):
        slot = blk if blk >= 0 else n_blocks
        if ga is not None:
            na[slot] += ga.double().square().sum()
        if gb is not None:
            nb[slot] += gb.double().square().sum()
        if ga is not None and gb is not None:
            dot[slot] += (ga.double() * gb.double()).sum()
    dot, na, nb = dot.cpu(), na.cpu(), nb.cpu()  # one transfer for all parameters

    def cos(d: Tensor, x: Tensor, y: Tensor) -> float | None:
        denom = math.sqrt(x.item() * y.item())
        return d.item() / denom if denom > 0 else None

    per_block = [cos(dot[i], na[i], nb[i]) for i in range(n_blocks)]
    return (
        cos(dot.sum(), na.sum(), nb.sum()),
        per_block,
        math.sqrt(na.sum().item()),
        math.sqrt(nb.sum().item()),
    )


def _mbe_cosines(
    g_ce: Sequence[Tensor | None], mbes: Tensor, params: list[Tensor], blocks: list[int], n_blocks: int
):
    """Each layer's MBE gradient (one backward each, the graph freed after the last) against g_ce:
    global cosines, per-block cosines and the MBE gradients' norms, one entry per layer."""
    cos_global, cos_blocks, norm_mbe = [], [], []
    for i in range(len(mbes)):
        g_l = torch.autograd.grad(mbes[i], params, retain_graph=i < len(mbes) - 1, allow_unused=True)
        c, per_block, _, n_l = _cosines(g_ce, g_l, blocks, n_blocks)
        cos_global.append(c)
        cos_blocks.append(per_block)
        norm_mbe.append(n_l)
    return cos_global, cos_blocks, norm_mbe


def gradient_alignment(
    model: ReplicationModel,
    task: Task,
    *,
    step: int,
    layers: Sequence[int],
    window: int | None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> dict[str, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    blocks = _block_index(model, params)
    n_blocks = model.n_blocks
    first, second = task.train_batch(step, 0), task.train_batch(step, 1)

    with autocast():
        out = task.forward(model, first, window=window)
        ce = task.main_loss(out.output, first)
        mbes = layer_mbe(out.hidden, layers, **mbe_kwargs(task))
    g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
    cos_global, cos_blocks, norm_mbe = _mbe_cosines(g_ce, mbes, params, blocks, n_blocks)

    with autocast():
        out2 = task.forward(model, second, window=window)
        ce2 = task.main_loss(out2.output, second)
    g_ce2 = torch.autograd.grad(ce2, params, allow_unused=True)
    noise, noise_blocks, norm_ce, _ = _cosines(g_ce, g_ce2, blocks, n_blocks)
    return {
        "align/layers": list(layers),
        "align/cos": cos_global,
        "align/cos_by_block": cos_blocks,
        "align/norm_ce": norm_ce,
        "align/norm_mbe": norm_mbe,
        "align/noise_cos": noise,
        "align/noise_cos_by_block": noise_blocks,
        "align/ce": ce.item(),
        "align/mbe": mbes.detach().tolist(),
    }


class InStepAlignment:
    """The same record as ``gradient_alignment``, taken from the training step's own passes.

    A step whose micro-batches 0 and 1 both compute the main loss alone (``ce``, and a gated method
    while it memorizes) already runs the forward and backward passes that the record needs:
    - ``g_CE`` of micro-batch 0 is ``.grad`` after that micro-batch's backward (times the number of
      micro-batches, which the step divides by);
    - the noise baseline's second gradient is what micro-batch 1 adds to ``.grad``;
    - ``g_l`` comes from micro-batch 0's graph, kept through its backward, one backward per layer.
    So the step's micro-batches are not run a second time. The values equal the separate pass's up to
    floating-point rounding (the difference of two sums stands for micro-batch 1's gradient).
    ``seconds`` is the time spent on the record, which the loop keeps out of the step's time.

    Under torchrun each process takes its share of the layers (``layers``) on its own first
    micro-batch (``first``), and only the main process the noise baseline (``noise``), so that no
    process waits while one runs every layer's backward; ``merge_records`` puts the shares together.
    Each layer's cosine is then measured on a micro-batch of its own, all of the same step.
    """

    def __init__(
        self,
        model: ReplicationModel,
        task: Task,
        layers: Sequence[int],
        micro_batches: int,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        *,
        first: int = 0,
        noise: bool = True,
    ):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.blocks = _block_index(model, self.params)
        self.n_blocks = model.n_blocks
        self.task, self.layers, self.scale, self.autocast = task, list(layers), float(micro_batches), autocast
        self.first, self.noise = first, noise
        self.record: dict[str, Any] | None = None
        self.seconds = 0.0
        self._first: list[Tensor | None] = []
        self._partial: dict[str, Any] = {}

    def retain_graph(self, micro: int) -> bool:
        """Whether the step's backward of this micro-batch must keep its graph for the MBE gradients."""
        return micro == self.first and bool(self.layers)

    def after_backward(self, micro: int, hidden: Sequence[Tensor], main: Tensor | None) -> None:
        start = time.perf_counter()
        if micro == self.first:
            self._first = [None if p.grad is None else p.grad.detach() * self.scale for p in self.params]
            cos_global, cos_blocks, norm_mbe, values = [], [], [], []
            if self.layers:
                with self.autocast():
                    mbes = layer_mbe(list(hidden), self.layers, **mbe_kwargs(self.task))
                cos_global, cos_blocks, norm_mbe = _mbe_cosines(
                    self._first, mbes, self.params, self.blocks, self.n_blocks
                )
                values = mbes.detach().tolist()
            self._partial = {
                "align/layers": list(self.layers),
                "align/cos": cos_global,
                "align/cos_by_block": cos_blocks,
                "align/norm_mbe": norm_mbe,
                "align/ce": float(main) if main is not None else None,
                "align/mbe": values,
            }
            if not self.noise:
                self.record, self._first = self._partial, []
        elif micro == self.first + 1 and self._first:
            second = [
                None if p.grad is None else p.grad.detach() * self.scale - (0 if g is None else g)
                for p, g in zip(self.params, self._first)
            ]
            noise, noise_blocks, norm_ce, _ = _cosines(self._first, second, self.blocks, self.n_blocks)
            p = self._partial
            self.record = {
                "align/layers": p["align/layers"],
                "align/cos": p["align/cos"],
                "align/cos_by_block": p["align/cos_by_block"],
                "align/norm_ce": norm_ce,
                "align/norm_mbe": p["align/norm_mbe"],
                "align/noise_cos": noise,
                "align/noise_cos_by_block": noise_blocks,
                "align/ce": p["align/ce"],
                "align/mbe": p["align/mbe"],
            }
            self._first = []
        self.seconds += time.perf_counter() - start


def merge_records(
    probe: InStepAlignment, layers: Sequence[int], all_reduce_sum: Callable[[Tensor], Tensor]
) -> dict[str, Any] | None:
    """The record of a step whose layers the processes shared (``InStepAlignment``), put together on
    every process by one all-reduce (``all_reduce_sum``); the main process's record (the one with
    the noise baseline) gets every layer's values, in the order of ``layers``, and
    ``align/micro_by_layer``, the micro-batch each layer's values come from. None elsewhere."""
    n_blocks = probe.n_blocks
    width = 5 + n_blocks  # owned, cos, norm_mbe, mbe, micro, per-block cosines
    packed = torch.zeros(len(layers), width, dtype=torch.float64)
    mine = probe.record or {}
    for j, layer in enumerate(mine.get("align/layers", [])):
        slot = list(layers).index(layer)
        row = [1.0, mine["align/cos"][j], mine["align/norm_mbe"][j], mine["align/mbe"][j], probe.first]
        row += mine["align/cos_by_block"][j]
        packed[slot] = torch.tensor([math.nan if v is None else float(v) for v in row], dtype=torch.float64)
    total = all_reduce_sum(packed.to(probe.task.device)).cpu()
    if not probe.noise:
        return None
    if not bool((total[:, 0] == 1.0).all()):
        raise RuntimeError(f"RQ1's layers {list(layers)} were not each taken by exactly one process")

    def value(x: Tensor) -> float | None:
        return None if math.isnan(x.item()) else x.item()

    return {
        **mine,
        "align/layers": list(layers),
        "align/cos": [value(x) for x in total[:, 1]],
        "align/cos_by_block": [[value(x) for x in row] for row in total[:, 5:]],
        "align/norm_mbe": [value(x) for x in total[:, 2]],
        "align/mbe": [value(x) for x in total[:, 3]],
        "align/micro_by_layer": [int(x) for x in total[:, 4]],
    }
