"""The arithmetic task's section of a run config (``task.name: arithmetic``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import PositiveInt, field_validator, model_validator

from replication.config.base import NonNegativeFloat, ObjectiveConfig, TaskConfig, TrainConfig

# the task's 15 symbols (replication.tasks.arithmetic.data encodes with them)
SYMBOLS = ("<bos>", "<eos>", "x", "=", " ", *"0123456789")
VOCAB_SIZE = len(SYMBOLS)


def longest_example(max_digits: int) -> int:
    """Tokens in the longest example whose operands have at most max_digits digits."""
    return 1 + max_digits + 3 + max_digits + 3 + 2 * max_digits + 1


class Config(TaskConfig):
    name: Literal["arithmetic"] = "arithmetic"
    train_digits: tuple[int, int] = (1, 3)  # operand digits of train and of both ID validation splits
    ood_digits: tuple[int, int] = (4, 6)  # operand digits of OOD validation and the OOD control split
    train_examples: PositiveInt = 10_000_000
    val_examples: PositiveInt = 10_000  # each of held-out ID, seen ID, OOD validation and OOD control
    seq_len: PositiveInt = 32768  # tokens per row, training and validation
    micro_batch_size: PositiveInt = 1  # rows per micro-batch
    eval_batch_rows: PositiveInt = 1  # validation rows per forward pass
    # greedily decoded d x d prompts per digit count d (ID: held out)
    exact_match_per_digits: PositiveInt = 1000
    decode_batch: PositiveInt = 1000  # prompts per forward pass of greedy decoding
    # stop when control CE exceeds its running minimum by this fraction
    early_stop_tolerance: NonNegativeFloat = 0.01

    mbe_sequence_key: ClassVar[str] = "seq_len"

    @field_validator("train_digits", "ood_digits")
    @classmethod
    def _digit_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1] <= 9:
            raise ValueError(f"a digit range needs 1 <= lo <= hi <= 9, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _ood_above_train(self) -> Config:
        if self.ood_digits[0] <= self.train_digits[1]:
            raise ValueError(
                f"ood_digits {list(self.ood_digits)} must start above train_digits "
                f"{list(self.train_digits)}, so that no OOD pair can be a training pair"
            )
        return self

    @model_validator(mode="after")
    def _rows_hold_examples(self) -> Config:
        longest = longest_example(max(self.train_digits[1], self.ood_digits[1]))
        if self.seq_len + 1 < longest:
            raise ValueError(
                f"seq_len {self.seq_len} is too short for the longest example ({longest} tokens)"
            )
        return self

    def check_fit(self, model: Any, train: TrainConfig, objective: ObjectiveConfig) -> None:
        vocab = getattr(model, "vocab_size", None)
        if vocab is not None and vocab < VOCAB_SIZE:
            raise ValueError(
                f"the arithmetic task needs a vocabulary of at least {VOCAB_SIZE}; "
                f"model.vocab_size is {vocab}"
            )
