"""The sections of a run's configuration, and what every config file shares.

Each section (model, optimizer, objective, training, alignment logging, and the base of every task's
config) is a frozen pydantic model in which an unknown key is an error naming the key. A whole run,
and the experiment files it is resolved from, are in ``replication.config.run``; each task's own
section is a module beside this one (``replication.config.<task>``); the reporting sections of an
experiment file are in ``replication.config.report``. This module also holds what they share: the
one-line-per-key error messages with did-you-mean hints, YAML loading, and the deep merge of layers.
"""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)

from replication.science.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# value constraints shared by the config classes (the task sections use them too); a violation is a
# validation error at load time whose location names the key
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # numpy's legacy seeding takes 32 bits
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # finite, >= 0
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # finite, > 0
UnitFraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]  # [0, 1): betas, momenta, EMA
LayerIndex = NonNegativeInt


# -- models ------------------------------------------------------------------------------------


class ModdedModelConfig(StrictModel):
    """The author's modded-nanogpt GPT-2 small (docs/SPEC.md section 5); defaults are paper size."""

    name: Literal["modded"] = "modded"
    vocab_size: PositiveInt = 50304
    n_layer: PositiveInt = 12
    d_model: PositiveInt = 768
    n_head: PositiveInt = 6
    head_dim: PositiveInt = 128  # even: RoPE rotates pairs of channels
    mlp_ratio: PositiveInt = 4
    rope_base: PositiveFloat = 10000.0
    logit_softcap: PositiveFloat = 30.0
    window_start: PositiveInt = 64  # sliding attention window at the start of training (tokens)
    window_end: PositiveInt = 1792  # ... and at the end; linear in between
    window_multiple: PositiveInt = 64
    attention: Literal["auto", "sdpa", "flex"] = "auto"  # auto: flex on CUDA, sdpa elsewhere

    @property
    def n_blocks(self) -> int:
        return self.n_layer

    @model_validator(mode="after")
    def _shapes_fit(self) -> ModdedModelConfig:
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs of channels), got {self.head_dim}")
        if self.window_end < self.window_start:
            raise ValueError(f"window_end ({self.window_end}) must be >= window_start ({self.window_start})")
        return self


class GPT2ModelConfig(StrictModel):
    """A plain GPT-2: learned positions, LayerNorm, GELU, tied head."""

    name: Literal["gpt2"] = "gpt2"
    vocab_size: PositiveInt = 50304
    n_layer: PositiveInt = 12
    d_model: PositiveInt = 768
    n_head: PositiveInt = 12
    max_seq_len: PositiveInt = 1024
    bias: bool = True

    @property
    def n_blocks(self) -> int:
        return self.n_layer

    @model_validator(mode="after")
    def _heads_split_the_width(self) -> GPT2ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        return self


class MLPModelConfig(StrictModel):
    """The 10 -> 50 -> 1 ReLU network of experiment 3."""

    name: Literal["mlp"] = "mlp"
    in_dim: PositiveInt = 10
    hidden_dim: PositiveInt = 50
    out_dim: PositiveInt = 1

    @property
    def n_blocks(self) -> int:
        return 1  # the hidden ReLU layer is the model's one block


ModelConfig = Annotated[ModdedModelConfig | GPT2ModelConfig | MLPModelConfig, Field(discriminator="name")]


# -- optimizers --------------------------------------------------------------------------------


class ScheduleConfig(StrictModel):
    """Learning-rate multiplier: linear warm-up, flat, then linear decay to final_multiplier."""

    warmup_steps: NonNegativeInt = 0
    stable_fraction: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.6  # of all steps, at 1
    final_multiplier: NonNegativeFloat = 0.1


class MuonAdamConfig(StrictModel):
    """Muon for the 2-D block weights, Adam for head, embedding and scalars (docs/SPEC.md section 5)."""

    name: Literal["muon_adam"] = "muon_adam"
    muon_lr: NonNegativeFloat = 0.05
    muon_momentum_start: UnitFraction = 0.85
    muon_momentum_end: UnitFraction = 0.95
    muon_momentum_warmup_steps: NonNegativeInt = 300
    head_lr: NonNegativeFloat = 0.008
    embed_lr: NonNegativeFloat = 0.6
    scalar_lr: NonNegativeFloat = 0.04
    adam_betas: tuple[UnitFraction, UnitFraction] = (0.8, 0.95)
    adam_eps: PositiveFloat = 1e-10
    schedule: ScheduleConfig = ScheduleConfig()


class AdamWConfig(StrictModel):
    name: Literal["adamw"] = "adamw"
    lr: NonNegativeFloat = 6e-4
    betas: tuple[UnitFraction, UnitFraction] = (0.9, 0.95)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.1  # matrices only; biases, norms and position embeddings excluded
    schedule: ScheduleConfig = ScheduleConfig()


class AdamConfig(StrictModel):
    name: Literal["adam"] = "adam"
    lr: NonNegativeFloat = 0.01
    betas: tuple[UnitFraction, UnitFraction] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    schedule: ScheduleConfig = ScheduleConfig(stable_fraction=1.0, final_multiplier=1.0)


OptimConfig = Annotated[MuonAdamConfig | AdamWConfig | AdamConfig, Field(discriminator="name")]


# -- objective, training, logging --------------------------------------------------------------


class ObjectiveConfig(StrictModel):
    """The MBE objective (docs/SPEC.md sections 2 and 3.2)."""

    patch_size: PositiveInt = 8
    alpha: PositiveFloat = 2.0  # Renyi order; 1 is the von Neumann limit (replication.science.mbe)
    eps: PositiveFloat = 1e-7
    clamp: bool = False
    lambda_mbe: NonNegativeFloat = 20.0  # lambda of the joint objective (gapt_joint and ce_mbe)
    # None: the middle layers 2 .. L-3 (0-based)
    alternate_layers: Annotated[list[LayerIndex], Field(min_length=1)] | None = None
    # None: the middle layers 1 .. L-2 (0-based)
    joint_layers: Annotated[list[LayerIndex], Field(min_length=1)] | None = None

    def mbe_options(self) -> dict[str, Any]:
        """The keyword arguments of mbe.layer_mbe / patch_mbe that this objective sets."""
        return {"patch_size": self.patch_size, "alpha": self.alpha, "eps": self.eps, "clamp": self.clamp}


class TrainConfig(StrictModel):
    steps: PositiveInt
    grad_accum: PositiveInt = 1  # micro-batches per optimizer step on each process
    eval_every: NonNegativeInt = 0  # optimizer steps between evaluations; 0: only at the start and the end
    eval_at_start: bool = True
    checkpoint_every: NonNegativeInt = 100  # optimizer steps; 0 disables periodic checkpoints
    keep_checkpoint: bool = False  # keep the last checkpoint once summary.json is written
    max_nonfinite_in_row: PositiveInt = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"  # autocast dtype of the forward pass
    compile: bool = False
    # steps between the training records that carry every block's detached MBE (train/mbe_by_layer,
    # train/mbe), the last step always among them; the steps between compute only the blocks the
    # controller monitors (train/mbe_monitored; none for a method without a controller) and the ones
    # the objective regularizes
    block_mbe_every: PositiveInt = 1
    # torch's CPU threads in each process of the run: part of the run because on CPU the thread count
    # changes the order of float sums, and so every number the run produces
    threads: PositiveInt = 1


class AlignmentConfig(StrictModel):
    """The RQ1 gradient-alignment logger (docs/SPEC.md section 4); every = 0 turns it off."""

    every: NonNegativeInt = 0
    layers: list[LayerIndex] | None = None  # None (or empty): the alternate (middle) layers


class TaskConfig(StrictModel):
    """Base of every task's config; each ``replication.config.<task>`` defines a subclass with ``name``
    fixed."""

    name: str
    # the field holding the length of the sequence that MBE patches are cut from, or None when the
    # task takes no MBE; RunConfig checks that objective.patch_size divides it
    mbe_sequence_key: ClassVar[str | None] = None

    def mbe_sequence_length(self) -> int | None:
        """Length of the sequence MBE patches are cut from (tokens of a row, or samples of a batch)."""
        return None if self.mbe_sequence_key is None else int(getattr(self, self.mbe_sequence_key))

    def segments(self, train: TrainConfig) -> list[tuple[int, int]]:
        """The run's segments as half-open step ranges: stretches trained on one kind of data, within
        which a matched-dose schedule moves the gated run's phases (``replication.science.schedule``).
        One segment, the whole run, unless a task has stages."""
        return [(0, train.steps)]

    def fresh_starts(self) -> dict[int, str]:
        """The first step of every stage that starts afresh from the ``ce`` pre-train, with the stage's
        name (``replication.training.pretrain``): none unless a task has such stages."""
        return {}

    def check_fit(self, model: Any, train: TrainConfig, objective: ObjectiveConfig) -> None:
        """Raise ValueError when this task cannot run with these sections of the run config (a model
        without the vocabulary it needs, stages that do not add up to train.steps, ...). RunConfig
        calls it on every validation, so that a mismatch fails before anything runs."""


# -- merging layers ----------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; override wins, lists and scalars are replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# -- error messages ----------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """A type without Annotated, and without None when it is an optional."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _tagged_members(tp: Any) -> dict[str, type]:
    """The classes of a union of config classes told apart by their ``name``, by that name."""
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return {}
    members = {}
    for member in typing.get_args(tp):
        field = getattr(member, "model_fields", {}).get("name") if isinstance(member, type) else None
        if field is None or not isinstance(field.default, str):
            return {}
        members[field.default] = member
    return members


def _field_types(cls: Any) -> dict[str, Any] | None:
    """Field name -> type of a pydantic model; None for anything else."""
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: info.annotation for name, info in cls.model_fields.items()}
    return None


def _follow(root: Any, loc: tuple[str | int, ...]) -> tuple[list[str], Any]:
    """Walk an error location down from the root class: the location as the user wrote it (without
    the tags that discriminated unions put in it) and the class the location ends in
    (None where the walk cannot tell)."""
    shown: list[str] = []
    tp = root
    for part in loc:
        tp = _unwrap(tp)
        members = _tagged_members(tp)
        if isinstance(part, str) and part in members:  # ('model', 'modded', ...): the tag
            tp = members[part]
            continue
        shown.append(str(part))
        fields = _field_types(tp)
        if fields is not None:
            tp = fields.get(str(part))
            continue
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (list, tuple, set, frozenset) and args and isinstance(part, int):
            tp = args[0]
        elif origin is dict and len(args) == 2:
            tp = args[1]
        else:
            tp = None
    return shown, tp


def _model_named(title: str) -> type[BaseModel] | None:
    """The one loaded pydantic model class of this name (a ValidationError's title), if exactly one."""
    found, stack = set(), [BaseModel]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub.__name__ == title:
                found.add(sub)
            stack.append(sub)
    return found.pop() if len(found) == 1 else None


def describe_error(item: ErrorDetails, model: Any) -> str:
    """One line for one error of a validation of ``model`` (a class; None where unknown), naming the
    key. An unknown key gets a did-you-mean hint drawn from the fields of the section it is in, or,
    without a close one, the list of them; a value outside a fixed set gets the set and a hint."""
    shown, tp = _follow(model, item["loc"])
    dotted = ".".join(shown)
    if item["type"] == "extra_forbidden":
        _, section = _follow(model, item["loc"][:-1])
        fields = sorted(_field_types(_unwrap(section)) or {})
        listing = f"; valid keys: {', '.join(fields)}" if fields else ""
        return f"unknown key '{dotted}'" + (did_you_mean(item["loc"][-1], fields) or listing)
    message = item["msg"]
    choices = typing.get_args(_unwrap(tp)) if typing.get_origin(_unwrap(tp)) is Literal else ()
    if item["type"] == "literal_error" and choices:
        value = item["input"]
        message = f"{value!r} is not one of {', '.join(map(str, choices))}{did_you_mean(value, choices)}"
    elif item["type"] == "value_error" and "error" in item.get("ctx", {}):
        message = str(item["ctx"]["error"])  # without pydantic's "Value error, " prefix
    return f"{dotted}: {message}" if dotted else message


def format_validation_error(error: ValidationError, source: str, model: Any = None) -> str:
    """One line per error (``describe_error``) under a line naming the source. ``model``: the class
    that was validated (default: the one loaded model class named by the error's title; without one,
    unknown keys get no hint)."""
    root = model if model is not None else _model_named(error.title)
    lines = [f"invalid configuration ({source}):"]
    lines += [f"  {describe_error(item, root)}" for item in error.errors()]
    return "\n".join(lines)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open() as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (not UTF-8)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a YAML mapping")
    return data
