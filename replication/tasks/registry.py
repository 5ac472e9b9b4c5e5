"""Every task under its config section (``config.<task>.Config``): the one place the training loop looks
a task up."""

from __future__ import annotations

from pathlib import Path

import torch

from replication.config.arithmetic import Config as ArithmeticConfig
from replication.config.base import TaskConfig
from replication.config.fineweb import Config as FineWebConfig
from replication.config.forgetting import Config as ForgettingConfig
from replication.config.synthetic import Config as SyntheticConfig
from replication.tasks.arithmetic.task import Task as ArithmeticTask
from replication.tasks.base import RunView, Task
from replication.tasks.fineweb.task import Task as FineWebTask
from replication.tasks.forgetting.task import Task as ForgettingTask
from replication.tasks.synthetic.task import Task as SyntheticTask

TASKS: dict[type[TaskConfig], type[Task]] = {
    SyntheticConfig: SyntheticTask,
    ArithmeticConfig: ArithmeticTask,
    ForgettingConfig: ForgettingTask,
    FineWebConfig: FineWebTask,
}


def build_task(
    config: RunView, device: torch.device, rank: int = 0, world_size: int = 1, data_root: Path | None = None
) -> Task:
    if type(config.task) not in TASKS:
        raise TypeError(f"no task is registered for the config section {type(config.task).__name__}")
    return TASKS[type(config.task)](config, device, rank=rank, world_size=world_size, data_root=data_root)
