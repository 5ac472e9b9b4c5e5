"""What every language task shares: documents in a token stream, token CE, evaluation."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from replication.models import ModelOutput, ReplicationModel
from replication.runtime.precision import Autocast
from replication.tasks.base import Batch, Task
from replication.tasks.evaluation import evaluate_lm


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token CE in float32 over the targets that are not -100: (B, T, V), (B, T) -> ()."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def document_ids(tokens: Tensor, separator: int) -> Tensor:
    """(B, T) -> (B, T): a new document begins at every separator token (which belongs to it)."""
    return (tokens == separator).cumsum(dim=-1)


class LanguageTask(Task):
    """A task over token streams; subclasses set ``separator`` and provide batches."""

    main_loss_name: ClassVar[str] = "ce"
    separator: int = 0

    def forward(
        self, model: ReplicationModel, batch: Batch, *, window: int | None = None, upto: int | None = None
    ) -> ModelOutput:
        return model(batch.inputs, docs=document_ids(batch.inputs, self.separator), window=window, upto=upto)

    _cross_entropy: Callable[[Tensor, Tensor], Tensor] = staticmethod(token_cross_entropy)

    def main_loss(self, output: Tensor, batch: Batch) -> Tensor:
        return self._cross_entropy(output, batch.targets)

    def compile_loss(self, **options: Any) -> None:
        """Compiled, the loss reads the (B, T, V) logits for its log-sum-exp and writes no log-softmax
        (6.6 GB in float32 at 32 k tokens of a 50 k vocabulary), and its backward is one pass too: on
        CPU at 2048 tokens of that vocabulary it takes 0.48 x the eager time, with the same loss and
        gradient bit for bit (``python -m benchmarks cross_entropy``)."""
        self._cross_entropy = torch.compile(token_cross_entropy, **options)

    def validation_batches(self) -> list[Batch]:
        """This process's share of the validation batches."""
        raise NotImplementedError

    def evaluate(
        self, model: ReplicationModel, *, step: int, window: int | None, autocast: Autocast = nullcontext
    ) -> dict[str, Any]:
        return evaluate_lm(
            model, self, self.validation_batches(), window=window, prefix="val", autocast=autocast
        )


def shard(items: list[Any], rank: int, world_size: int) -> list[Any]:
    """Round-robin share of a list for one process."""
    return items[rank::world_size]


def windows_to_batch(windows: Tensor, device: torch.device) -> Batch:
    """(B, T + 1) token windows -> inputs (B, T) and next-token targets (B, T), as int64 on device."""
    windows = windows.to(device=device, dtype=torch.long, non_blocking=True)
    return Batch(inputs=windows[:, :-1], targets=windows[:, 1:])
