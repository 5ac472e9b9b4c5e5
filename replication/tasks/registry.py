"""Every task by name: its ``Task`` class, the one place the training loop looks a task up."""

from __future__ import annotations

from pathlib import Path

import torch

from replication.tasks.arithmetic.task import Task as ArithmeticTask
from replication.tasks.base import RunView, Task
from replication.tasks.fineweb.task import Task as FineWebTask
from replication.tasks.forgetting.task import Task as ForgettingTask
from replication.tasks.synthetic.task import Task as SyntheticTask

TASKS: dict[str, type[Task]] = {
    "synthetic": SyntheticTask,
    "arithmetic": ArithmeticTask,
    "forgetting": ForgettingTask,
    "fineweb": FineWebTask,
}


def build_task(
    config: RunView, device: torch.device, rank: int = 0, world_size: int = 1, data_root: Path | None = None
) -> Task:
    return TASKS[config.task.name](config, device, rank=rank, world_size=world_size, data_root=data_root)
