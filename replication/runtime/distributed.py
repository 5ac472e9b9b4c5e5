"""Multi-process training under torchrun: gradients and losses all-reduced by hand.

Reducing by hand rather than through DDP keeps the alternate objective simple (its MBE micro-batch
runs only part of the model, which DDP would flag as unused parameters) and makes the reduction
order explicit. Every rank ends a step with the same averaged gradients, and the controller is fed
the averaged losses, so every rank is always in the same phase.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(preference: str) -> torch.device:
    """The device of this process: CPU, or the visible GPU of its local rank (local ranks beyond the
    visible GPUs wrap around, so that several share one)."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def backend_for(device: torch.device, local_world_size: int, visible_gpus: int) -> str:
    """NCCL where each process has a GPU of its own; gloo on CPU, and where processes share a GPU,
    which NCCL refuses. The DAG never shares one (``dag.plan`` refuses nproc_per_run above
    gpus_per_run); the GPU check does, to run two ranks on a one-GPU machine."""
    if device.type == "cuda" and local_world_size <= visible_gpus:
        return "nccl"
    return "gloo"


def init_distributed(device_preference: str) -> DistContext:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    device = select_device(device_preference)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(0, 1, device)
    if not dist.is_initialized():
        visible = 0
        if device.type == "cuda":
            torch.cuda.set_device(device)
            visible = torch.cuda.device_count()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        dist.init_process_group(backend=backend_for(device, local_world, visible))
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_gradients(model: nn.Module) -> None:
    """Average .grad over ranks in one flat buffer; a parameter without a gradient counts as zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = all_reduce_mean(_flatten_dense_tensors(grads))
    for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(reduced)
