"""Typed, strict run configuration.

A run is described by one ``RunConfig``: frozen pydantic models in which an unknown key is an
error naming the key. Experiments are YAML files (``experiments/<name>/config.yaml``) of partial
configs merged in this order, later layers winning:

    field defaults < experiment ``defaults`` < ``scales.<scale>.config`` < ``methods.<method>``
    < ``scales.<scale>.methods.<method>`` < run identity (experiment, scale, method, seed)

``resolve_run_config`` does this merge once; the result is written whole into the run folder and is
the only thing ``python -m replication.train`` reads.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from replication.gapt import GaptConfig

METHOD_NAMES = ("ce", "ce_mbe", "gapt", "gapt_joint")


class ConfigError(ValueError):
    """A configuration that cannot be used, with a message that names the offending key."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- models ------------------------------------------------------------------------------------


class ModdedModelConfig(StrictModel):
    """The author's modded-nanogpt GPT-2 small (PAPER.md section 5); defaults are paper size."""

    name: Literal["modded"] = "modded"
    vocab_size: int = 50304
    n_layer: int = 12
    d_model: int = 768
    n_head: int = 6
    head_dim: int = 128
    mlp_ratio: int = 4
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    window_start: int = 64  # sliding attention window at the start of training (tokens)
    window_end: int = 1792  # ... and at the end; linear in between
    window_multiple: int = 64
    attention: Literal["auto", "sdpa", "flex"] = "auto"  # auto: flex on CUDA, sdpa elsewhere


class GPT2ModelConfig(StrictModel):
    """A plain GPT-2: learned positions, LayerNorm, GELU, tied head."""

    name: Literal["gpt2"] = "gpt2"
    vocab_size: int = 50304
    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    max_seq_len: int = 1024
    bias: bool = True


class MLPModelConfig(StrictModel):
    """The 10 -> 50 -> 1 ReLU network of experiment 3."""

    name: Literal["mlp"] = "mlp"
    in_dim: int = 10
    hidden_dim: int = 50
    out_dim: int = 1


ModelConfig = Annotated[Union[ModdedModelConfig, GPT2ModelConfig, MLPModelConfig], Field(discriminator="name")]


# -- optimizers --------------------------------------------------------------------------------


class ScheduleConfig(StrictModel):
    """Learning-rate multiplier: linear warm-up, flat, then linear decay to final_multiplier."""

    warmup_steps: int = 0
    stable_fraction: float = 0.6  # of all steps, at multiplier 1 (after warm-up)
    final_multiplier: float = 0.1


class MuonAdamConfig(StrictModel):
    """Muon for the 2-D block weights, Adam for head, embedding and scalars (PAPER.md section 5)."""

    name: Literal["muon_adam"] = "muon_adam"
    muon_lr: float = 0.05
    muon_momentum_start: float = 0.85
    muon_momentum_end: float = 0.95
    muon_momentum_warmup_steps: int = 300
    head_lr: float = 0.008
    embed_lr: float = 0.6
    scalar_lr: float = 0.04
    adam_betas: tuple[float, float] = (0.8, 0.95)
    adam_eps: float = 1e-10
    schedule: ScheduleConfig = ScheduleConfig()


class AdamWConfig(StrictModel):
    name: Literal["adamw"] = "adamw"
    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # on matrices only; biases, norms and embeddings of positions excluded
    schedule: ScheduleConfig = ScheduleConfig()


class AdamConfig(StrictModel):
    name: Literal["adam"] = "adam"
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: ScheduleConfig = ScheduleConfig(stable_fraction=1.0, final_multiplier=1.0)


OptimConfig = Annotated[Union[MuonAdamConfig, AdamWConfig, AdamConfig], Field(discriminator="name")]


# -- objective, training, logging --------------------------------------------------------------


class ObjectiveConfig(StrictModel):
    """The MBE objective (PAPER.md sections 2 and 3.2)."""

    patch_size: int = 8
    alpha: float = 2.0
    eps: float = 1e-7
    clamp: bool = False
    lambda_mbe: float = 20.0  # lambda of the joint objective (gapt_joint and ce_mbe)
    alternate_layers: list[int] | None = None  # None: the middle layers 2 .. L-3 (0-based)
    joint_layers: list[int] | None = None  # None: the middle layers 1 .. L-2 (0-based)

    def mbe_options(self) -> dict[str, Any]:
        """The keyword arguments of mbe.layer_mbe / patch_mbe that this objective sets."""
        return {"patch_size": self.patch_size, "alpha": self.alpha, "eps": self.eps, "clamp": self.clamp}


class TrainConfig(StrictModel):
    steps: int
    grad_accum: int = 1  # micro-batches per optimizer step on each process
    eval_every: int = 0  # optimizer steps between evaluations; 0: only at the start and the end
    eval_at_start: bool = True
    checkpoint_every: int = 100  # optimizer steps; 0 disables periodic checkpoints
    keep_checkpoint: bool = False  # keep the last checkpoint once summary.json is written
    max_nonfinite_in_row: int = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"  # autocast dtype of the forward pass
    compile: bool = False


class AlignmentConfig(StrictModel):
    """The RQ1 gradient-alignment logger (PAPER.md section 4); every = 0 turns it off."""

    every: int = 0
    layers: list[int] | None = None  # None: the alternate (middle) layers


class TaskConfig(StrictModel):
    """Base of every task's config; each task module defines a subclass with ``name`` fixed."""

    name: str


class RunConfig(StrictModel):
    experiment: str
    scale: str
    method: Literal["ce", "ce_mbe", "gapt", "gapt_joint"]
    seed: int
    data_seed: int | None = None  # None: the run seed (a seed draws the data too)
    task: SerializeAsAny[TaskConfig]
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    objective: ObjectiveConfig = ObjectiveConfig()
    gapt: GaptConfig = GaptConfig()
    alignment: AlignmentConfig = AlignmentConfig()

    @field_validator("task", mode="before")
    @classmethod
    def _task_by_name(cls, value: Any) -> Any:
        if isinstance(value, TaskConfig):
            return value
        if not isinstance(value, dict) or "name" not in value:
            raise ValueError("task needs a 'name'")
        from replication.tasks import task_config_class

        return task_config_class(value["name"]).model_validate(value)

    @property
    def effective_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """A short hash of the resolved config: a checkpoint only resumes a run of the same config."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# -- experiment files --------------------------------------------------------------------------


class ScaleSpec(StrictModel):
    seeds: list[int]
    description: str = ""
    config: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]] = {}


class TableMetric(StrictModel):
    """One row of an experiment's table.md: a headline metric of summary.json, per method."""

    key: str  # a key of summary.json's "metrics", or a top-level field such as "phase_changes"
    label: str
    paper: dict[str, float | str] = {}  # the paper's value per method, where it gives one
    # how the change against ce is stated (replication.stats): "relative" needs positive values and
    # falls back to "difference" where some are not
    change: Literal["relative", "difference", "robust_difference"] = "relative"


class ClaimSpec(StrictModel):
    """One row of CLAIMS.md (PAPER.md section 8), judged from paired seeds (``replication.stats``).

    kind, by the quantity ``metric`` is:
    - "relative" (positive): the paired log ratio of ``method`` against ``baseline``;
    - "difference" (the baseline can be near zero): the paired difference, t interval;
    - "robust_difference" (heavy-tailed): the median paired difference, sign test;
    - "at_least" / "robust_at_least": ``method``'s values against ``threshold`` (mean and t, or median
      and sign test), the interval cut at 0 for a quantity that cannot be negative;
    - "serial_dependence": RQ1's permutation test; ``metric`` names the per-run statistic, whose
      ``_shuffled``, ``_p_persistent`` and ``_p_alternating`` companions the run also reports.
    A claim is reproduced when its p-value is below 0.05 with the estimate on the side of
    ``direction`` (for a threshold claim: above it).
    """

    id: str
    claim: str
    metric: str
    kind: Literal["relative", "difference", "robust_difference", "at_least", "robust_at_least",
                  "serial_dependence"] = "relative"  # fmt: skip
    method: str = "gapt"
    baseline: str = "ce"
    direction: Literal["decrease", "increase"] = "decrease"
    threshold: float | None = None
    paper_value: str  # as the paper states it, e.g. "-4.8 %"
    figure: str | None = None  # a file under results/<scale>/<experiment>/

    @model_validator(mode="after")
    def _threshold_claims_name_one(self) -> ClaimSpec:
        if self.kind in ("at_least", "robust_at_least") and self.threshold is None:
            raise ValueError(f"claim {self.id}: kind {self.kind} needs a threshold")
        return self


class FigureSpec(StrictModel):
    """One figure of an experiment, drawn from its CSVs alone (``replication.figures``).

    kinds: ``curves`` (the curves.csv ``metrics`` against step, one panel per metric and method,
    compress phases shaded), ``mbe_by_layer`` (the per-layer eval ``metric`` at the last evaluation),
    ``rq1_alignment`` (alignment.csv: cosine against step per layer with the noise baseline),
    ``by_digits`` (summary metrics ``<prefix><digits>`` for every ``prefixes`` entry),
    ``by_method`` (summary ``metrics`` per method with the seed spread).
    """

    kind: Literal["curves", "mbe_by_layer", "rq1_alignment", "by_digits", "by_method"]
    file: str  # file stem: <file>.png and <file>.pdf under results/<scale>/<experiment>/
    title: str = ""
    metrics: list[str] = []
    metric: str | None = None
    prefixes: list[str] = []
    caption: str = ""


class PaperSpec(StrictModel):
    table: list[TableMetric] = []
    claims: list[ClaimSpec] = []


class ExperimentSpec(StrictModel):
    """The schema of ``experiments/<name>/config.yaml``."""

    experiment: str
    description: str = ""
    paper: PaperSpec = PaperSpec()  # the paper's numbers, for tables and claims
    figures: list[FigureSpec] = []
    # data sets prepared once before any run (name -> the preparation's own options); a run names the
    # one it reads in its task config, and finds it under the --data-root of the train command
    datasets: dict[str, dict[str, Any]] = {}
    defaults: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]]
    scales: dict[str, ScaleSpec]

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(methods) - set(METHOD_NAMES))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; the registry has {list(METHOD_NAMES)}")
        return methods

    @model_validator(mode="after")
    def _claims_point_at_drawn_figures(self) -> ExperimentSpec:
        drawn = {f"{figure.file}.png" for figure in self.figures}
        for claim in self.paper.claims:
            if claim.figure is not None and claim.figure not in drawn:
                raise ValueError(f"claim {claim.id} points at {claim.figure}, which figures: does not draw")
            for name in (claim.method, claim.baseline):
                if name not in self.methods:
                    raise ValueError(f"claim {claim.id} names method {name!r}, which the experiment does not run")
        return self


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; override wins, lists and scalars are replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_MODEL_CLASSES = (ModdedModelConfig, GPT2ModelConfig, MLPModelConfig)
_OPTIM_CLASSES = (MuonAdamConfig, AdamWConfig, AdamConfig)
_UNION_TAGS = {cls.model_fields["name"].default for cls in _MODEL_CLASSES + _OPTIM_CLASSES}


def _known_keys() -> set[str]:
    """Every field name of every config class, for did-you-mean hints on unknown keys."""
    from replication.tasks import task_config_classes

    classes = [RunConfig, ExperimentSpec, ScaleSpec, ObjectiveConfig, TrainConfig, AlignmentConfig, ScheduleConfig]
    classes += [PaperSpec, ClaimSpec, TableMetric, FigureSpec]
    classes += [*_MODEL_CLASSES, *_OPTIM_CLASSES, *task_config_classes()]
    keys = {name for cls in classes for name in cls.model_fields}
    return keys | set(GaptConfig.__dataclass_fields__)


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        # a discriminated union puts its tag in the location, ('model', 'modded', 'n_layr'): drop it
        loc = [str(p) for i, p in enumerate(item["loc"]) if not (i == 1 and p in _UNION_TAGS)]
        dotted = ".".join(loc)
        if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            hint = difflib.get_close_matches(loc[-1], sorted(_known_keys()), n=1)
            suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
            lines.append(f"  unknown key '{dotted}'{suffix}")
        else:
            lines.append(f"  {dotted or '<root>'}: {item['msg']}")
    return "\n".join(lines)


def validate_run_config(data: dict[str, Any], source: str = "run config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a YAML mapping")
    return data


def load_experiment(path: str | Path) -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(load_yaml(path))
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, str(path))) from None


def resolve_run_config(experiment: ExperimentSpec | str | Path, scale: str, method: str, seed: int) -> RunConfig:
    """Merge an experiment's layers for one run, in the precedence written in the module docstring."""
    spec = experiment if isinstance(experiment, ExperimentSpec) else load_experiment(experiment)
    if scale not in spec.scales:
        raise ConfigError(f"experiment {spec.experiment} has no scale {scale!r}; it has {sorted(spec.scales)}")
    if method not in spec.methods:
        raise ConfigError(f"experiment {spec.experiment} has no method {method!r}; it has {sorted(spec.methods)}")
    scale_spec = spec.scales[scale]
    unknown = sorted(set(scale_spec.methods) - set(spec.methods))
    if unknown:
        raise ConfigError(f"scales.{scale}.methods names methods the experiment lacks: {unknown}")
    merged: dict[str, Any] = {}
    for layer in (spec.defaults, scale_spec.config, spec.methods[method], scale_spec.methods.get(method, {})):
        merged = deep_merge(merged, layer)
    merged.update(experiment=spec.experiment, scale=scale, method=method, seed=int(seed))
    return validate_run_config(merged, source=f"{spec.experiment}/{scale}/{method}/seed{seed}")


def load_run_config(path: str | Path) -> RunConfig:
    return validate_run_config(load_yaml(path), source=str(path))


def write_run_config(config: RunConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)
