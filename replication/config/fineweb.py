"""The FineWeb task's section of a run config (``task.name: fineweb``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from replication.config.base import TaskConfig


class Config(TaskConfig):
    name: Literal["fineweb"] = "fineweb"
    dataset: str  # a folder under the data root, made by python -m replication.tasks.fineweb.prepare
    seq_len: int = Field(default=32768, gt=0)  # tokens per row
    micro_batch_size: int = Field(default=1, gt=0)  # rows per micro-batch on each process
    val_tokens: int = Field(default=10_485_760, gt=0)  # predicted validation tokens; a multiple of seq_len

    mbe_sequence_key: ClassVar[str] = "seq_len"

    @model_validator(mode="after")
    def _whole_validation_windows(self) -> Config:
        if self.val_tokens % self.seq_len:
            raise ValueError(f"val_tokens ({self.val_tokens}) must be a multiple of seq_len ({self.seq_len})")
        return self
