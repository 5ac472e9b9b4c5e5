"""The interface between the training loop and a task (data, main loss, evaluation)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import Tensor

from replication.config.base import ObjectiveConfig, TaskConfig, TrainConfig
from replication.models import ModelOutput
from replication.runtime.precision import Autocast

if TYPE_CHECKING:
    from replication.models import ReplicationModel


class RunView(Protocol):
    """What a task reads of its run's config (a ``replication.config.run.RunConfig`` is one). Whether
    the sections fit together was checked when the config was validated (``TaskConfig.check_fit``)."""

    experiment: str
    seed: int
    task: TaskConfig
    model: Any  # one of replication.config.base.ModelConfig's classes
    train: TrainConfig
    objective: ObjectiveConfig

    @property
    def effective_data_seed(self) -> int: ...


def derive_seed(*parts: object) -> int:
    """A seed from a tuple of ints and strings, the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


@dataclass
class Batch:
    inputs: Tensor
    targets: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class Task(ABC):
    """One experiment's data and metrics.

    ``train_batch(step, micro)`` is a pure function of its arguments and the data seed. ``micro``
    indexes the step's micro-batches over all processes (``train.grad_accum`` of them; under
    torchrun each process runs an equal share), so a resumed run, and a run on any number of
    processes, sees exactly the batches of an uninterrupted single-process run.
    """

    main_loss_name: ClassVar[str] = "ce"  # the key of the main loss in metrics: train/<name>

    def __init__(
        self,
        config: RunView,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        data_root: Path | None = None,
    ):
        self.config = config
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.data_root = Path("data") if data_root is None else Path(data_root)  # prepared data lives here

    @property
    @abstractmethod
    def units_per_micro_batch(self) -> int:
        """Tokens (language tasks) or examples (regression) in one micro-batch."""

    @abstractmethod
    def train_batch(self, step: int, micro: int) -> Batch:
        """Micro-batch ``micro`` (0 <= micro < train.grad_accum) of optimizer step ``step``."""

    @abstractmethod
    def main_loss(self, output: Tensor, batch: Batch) -> Tensor:
        """Scalar main loss (CE or L1), float32."""

    @abstractmethod
    def evaluate(
        self, model: ReplicationModel, *, step: int, window: int | None, autocast: Autocast = nullcontext
    ) -> dict[str, Any]:
        """Validation metrics at this point of training, keys like 'val/ce', 'val/mbe_by_layer'; every
        forward pass runs inside ``autocast()``, the run's precision (``replication.runtime.precision``)."""

    def forward(
        self, model: ReplicationModel, batch: Batch, *, window: int | None = None, upto: int | None = None
    ) -> ModelOutput:
        return model(batch.inputs, window=window, upto=upto)

    def init_model(self, model: ReplicationModel) -> None:  # noqa: B027 - optional hook, no-op by default
        """Hook for tasks that prescribe the initial weights (experiment 3 starts at theta_0)."""

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Headline metrics of a finished run from all its metrics.jsonl records (oldest first).

        Default: every scalar metric of the last evaluation as ``final/<key>``, and the best (lowest)
        value of the main validation loss as ``best/<key>``.
        """
        evals = [r for r in records if r["kind"] == "eval"]
        if not evals:
            return {}
        last = evals[-1]
        summary = {
            f"final/{k}": v for k, v in last.items() if k.startswith(("val/", "ood/", "id/")) and is_scalar(v)
        }
        key = f"val/{self.main_loss_name}"
        values = [e[key] for e in evals if is_scalar(e.get(key))]
        if values:
            summary[f"best/{key}"] = min(values)
        return summary

    def compile_loss(self, **options: Any) -> None:  # noqa: B027 - optional hook, no-op by default
        """``torch.compile`` the main loss (``options``: torch.compile's), where that saves passes over
        a large output; the loop calls it on a GPU under ``train.compile``."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook, stateless default
        pass


def is_scalar(value: Any) -> bool:
    """A metric value that is a number: not a bool, not a null (a non-finite value is logged as null)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
