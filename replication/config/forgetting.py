"""The forgetting task's section of a run config (``task.name: forgetting``): its stages."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from replication.config.base import (
    NonNegativeFloat,
    ObjectiveConfig,
    PositiveFloat,
    StrictModel,
    TaskConfig,
    TrainConfig,
)

GROUPS = ("a", "b")
Group = Literal["a", "b"]
RESERVED_STAGE_NAMES = {
    "val",
    "final",
    "best",
    "forgetting",
    "phase_changes",
    "pretrain",
}  # other summary prefixes


class Stage(StrictModel):
    """``steps`` optimizer steps on the mix of ``groups`` (an equal share of each per micro-batch).

    ``start`` says what a stage after the first starts from. ``previous``: the run's own state at the
    end of the stage before, optimizer state and controller carried on (each method pre-trains with
    itself: the ``own_pretrain`` protocol). ``ce_pretrain``: the weights that plain ``ce`` training
    of the same seed reaches through the stages before (the paper's protocol: one ``ce`` pre-train
    per seed, every method fine-tuned from it), with fresh optimizer state and a fresh controller.
    """

    name: str
    steps: int = Field(ge=1)
    groups: list[Group]
    start: Literal["previous", "ce_pretrain"] = "previous"

    @field_validator("groups")
    @classmethod
    def _distinct(cls, groups: list[str]) -> list[str]:
        if not groups or len(set(groups)) != len(groups):
            raise ValueError(f"a stage trains on one or more distinct groups of {GROUPS}, got {groups}")
        return groups


class Config(TaskConfig):
    name: Literal["forgetting"] = "forgetting"
    input_std: PositiveFloat = 0.25
    train_per_group: PositiveInt = 500
    val_per_group: PositiveInt = 100  # at least objective.patch_size (checked by the Task)
    micro_batch_size: PositiveInt = 16  # examples; half from each group in a mix stage
    # "grouped": a micro-batch holds one group's samples, then the other's, so with 8 per group an
    # MBE patch never mixes the groups (the author's batches were built this way); "shuffled" mixes.
    order: Literal["grouped", "shuffled"] = "grouped"
    shift_rank: PositiveInt = 3
    shift_scale: tuple[PositiveFloat, PositiveFloat] = (0.5, 5.0)  # U(lo, hi) times the tensor's norm
    shift_magnitude: NonNegativeFloat = 1.0
    # |selectivity| (in [-1, 1]) above this: a specialized unit
    specialization_threshold: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.5
    stages: list[Stage] = [
        Stage(name="mix", steps=1000, groups=["a", "b"]),
        Stage(name="finetune", steps=1000, groups=["a"]),
    ]

    # the hidden layer of a micro-batch's samples is the one sequence that MBE patches are cut from
    mbe_sequence_key: ClassVar[str] = "micro_batch_size"

    @model_validator(mode="after")
    def _stages_fit(self) -> Config:
        names = [s.name for s in self.stages]
        if not self.stages or len(set(names)) != len(names):
            raise ValueError(f"task.stages needs at least one stage and distinct names, got {names}")
        if RESERVED_STAGE_NAMES & set(names):
            raise ValueError(f"stage names {sorted(RESERVED_STAGE_NAMES)} are taken by other summary keys")
        for stage in self.stages:
            if self.micro_batch_size % len(stage.groups):
                raise ValueError(
                    f"micro_batch_size {self.micro_batch_size} does not split evenly over stage "
                    f"{stage.name!r}'s groups {stage.groups}"
                )
            share = self.micro_batch_size // len(stage.groups)
            if share > self.train_per_group:  # a micro-batch draws its share without replacement
                raise ValueError(
                    f"train_per_group ({self.train_per_group}) is below the {share} examples per group "
                    f"of a micro-batch of stage {stage.name!r}"
                )
        if sum(stage.start == "ce_pretrain" for stage in self.stages) > 1:
            raise ValueError("at most one stage starts from the ce pre-train")
        if self.stages[0].start != "previous":
            raise ValueError(
                f"the first stage ({names[0]!r}) has nothing before it to start from: start: previous"
            )
        lo, hi = self.shift_scale
        if not 0 < lo <= hi:
            raise ValueError(f"shift_scale must be 0 < lo <= hi, got {self.shift_scale}")
        return self

    def segments(self, train: TrainConfig) -> list[tuple[int, int]]:
        """One segment per stage."""
        ends = list(itertools.accumulate(s.steps for s in self.stages))
        return list(zip([0, *ends[:-1]], ends))

    def fresh_starts(self) -> dict[int, str]:
        ends = list(itertools.accumulate(s.steps for s in self.stages))
        return {end: stage.name for stage, end in zip(self.stages[1:], ends) if stage.start == "ce_pretrain"}

    def check_fit(self, model: Any, train: TrainConfig, objective: ObjectiveConfig) -> None:
        if model.name != "mlp":
            raise ValueError(f"the forgetting task trains model.name: mlp, got {model.name}")
        ends = list(itertools.accumulate(s.steps for s in self.stages))
        if ends[-1] != train.steps:
            raise ValueError(f"task.stages add up to {ends[-1]} steps but train.steps is {train.steps}")
        every = train.eval_every
        for stage, end in zip(self.stages[:-1], ends):
            if not every or end % every:
                raise ValueError(
                    f"stage {stage.name!r} ends at step {end}, which is not an evaluation step: "
                    f"train.eval_every ({every}) must divide it"
                )
        patch = objective.patch_size  # (that it divides micro_batch_size, RunConfig checks for every task)
        if self.val_per_group < patch:
            raise ValueError(f"task.val_per_group ({self.val_per_group}) is below the patch size ({patch})")
