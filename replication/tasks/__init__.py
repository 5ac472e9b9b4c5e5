"""Tasks: the data and evaluation of each experiment, behind one interface (``base.Task``).

A task module defines ``Config`` (a ``TaskConfig`` subclass whose ``name`` is fixed) and ``Task``
(a ``base.Task`` subclass). Modules are imported on first use, so a task's dependencies load only
when an experiment asks for it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from replication.config import RunConfig, TaskConfig
    from replication.tasks.base import Task

TASK_MODULES = {
    "synthetic": "replication.tasks.synthetic",
    "arithmetic": "replication.tasks.arithmetic.task",
    "forgetting": "replication.tasks.forgetting.task",
    "fineweb": "replication.tasks.fineweb.task",
}


def _module(name: str) -> ModuleType:
    if name not in TASK_MODULES:
        raise ValueError(f"unknown task {name!r}; the registry has {sorted(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name])


def task_config_class(name: str) -> type[TaskConfig]:
    return _module(name).Config


def task_config_classes() -> list[type[TaskConfig]]:
    """Config classes of every task that can be imported here."""
    classes = []
    for name in TASK_MODULES:
        try:
            classes.append(task_config_class(name))
        except ImportError:
            continue
    return classes


def build_task(
    config: RunConfig, device: torch.device, rank: int = 0, world_size: int = 1, data_root: Path | None = None
) -> Task:
    return _module(config.task.name).Task(config, device, rank=rank, world_size=world_size, data_root=data_root)
