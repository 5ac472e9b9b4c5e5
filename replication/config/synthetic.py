"""The synthetic task's section of a run config (``task.name: synthetic``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveInt

from replication.config.base import ObjectiveConfig, TaskConfig, TrainConfig


class Config(TaskConfig):
    name: Literal["synthetic"] = "synthetic"
    vocab_size: int = Field(default=32, ge=2)  # token 0 separates documents; successors are 1 .. V-1
    seq_len: PositiveInt = 64
    micro_batch_size: PositiveInt = 8
    branching: PositiveInt = 3
    mean_doc_length: PositiveInt = 24
    val_batches: PositiveInt = 4

    mbe_sequence_key: ClassVar[str] = "seq_len"

    def check_fit(self, model: Any, train: TrainConfig, objective: ObjectiveConfig) -> None:
        model_vocab = getattr(model, "vocab_size", self.vocab_size)
        if self.vocab_size > model_vocab:
            raise ValueError(f"task.vocab_size {self.vocab_size} exceeds model.vocab_size {model_vocab}")
