"""One run's whole configuration, and the experiment files it is resolved from.

A run is described by one ``RunConfig``: the sections of ``replication.config.base``, the task's own
section (one of the task packages' ``Config`` classes, told apart by ``task.name``), and the run's
identity. Experiments are YAML files (``experiments/<name>/config.yaml``) of partial configs merged
in this order, later layers winning:

    field defaults < experiment ``defaults`` < ``scales.<scale>.config`` < ``methods.<method>``
    < ``scales.<scale>.methods.<method>`` < run identity (experiment, scale, method, seed)

``resolve_run_config`` does this merge once; the result is written whole into the run folder and is
the only thing ``python -m replication.training.train`` reads. The reporting sections of an experiment file
(``paper``, ``figures``, ``reporting``) are carried here unread; ``replication.config.report``
validates them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from replication.config.arithmetic import Config as ArithmeticConfig
from replication.config.base import (
    AlignmentConfig,
    ModelConfig,
    NonNegativeInt,
    ObjectiveConfig,
    OptimConfig,
    Seed,
    StrictModel,
    TaskConfig,
    TrainConfig,
    deep_merge,
    format_validation_error,
    load_yaml,
)
from replication.config.fineweb import Config as FineWebConfig
from replication.config.forgetting import Config as ForgettingConfig
from replication.config.synthetic import Config as SyntheticConfig
from replication.science.errors import ConfigError, RunFolderError
from replication.science.gapt import GaptConfig
from replication.science.methods import BASELINE, METHOD_NAMES, METHODS, MethodName, default_layers

# every task's section, by its name; replication.tasks.registry maps each name to its Task
TASK_CONFIGS: dict[str, type[TaskConfig]] = {
    c.model_fields["name"].default: c
    for c in (SyntheticConfig, ArithmeticConfig, ForgettingConfig, FineWebConfig)
}
TaskConfigs = Annotated[Union[tuple(TASK_CONFIGS.values())], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007


class Schedule(StrictModel):
    """The compress steps of a matched-dose control, written by ``configure --schedule-from``: the
    phases of its gated run (``source``) moved as ``replication.science.schedule`` says."""

    source: str  # the gated run: experiment/scale/method/seed<k> and its config digest
    shifts: list[NonNegativeInt] = []  # the shift of each segment (replication.science.schedule)
    compress: list[tuple[NonNegativeInt, NonNegativeInt]]  # half-open [start, end) step ranges

    @field_validator("compress")
    @classmethod
    def _ordered(cls, compress: list[tuple[int, int]]) -> list[tuple[int, int]]:
        bounds = [x for pair in compress for x in pair]
        if any(a >= b for a, b in compress) or any(b > a for b, a in zip(bounds[1::2], bounds[2::2])):
            raise ValueError(
                f"schedule.compress must be sorted, disjoint [start, end) ranges, got {compress}"
            )
        return compress


class RunConfig(StrictModel):
    experiment: str
    scale: str
    method: MethodName
    seed: Seed
    data_seed: Seed | None = None  # None: the run seed (a seed draws the data too)
    task: TaskConfigs
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    objective: ObjectiveConfig = ObjectiveConfig()
    gapt: GaptConfig = GaptConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    schedule: Schedule | None = None  # a matched-dose control's compress steps (Method.matches)

    @field_validator("task", mode="before")
    @classmethod
    def _task_has_a_name(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if "name" not in value:
                raise ValueError(f"task needs a 'name', one of {sorted(TASK_CONFIGS)}")
            if value["name"] not in TASK_CONFIGS:
                raise ValueError(f"unknown task {value['name']!r}; the registry has {sorted(TASK_CONFIGS)}")
        return value

    @model_validator(mode="after")
    def _sections_fit(self) -> RunConfig:
        length = self.task.mbe_sequence_length()
        patch = self.objective.patch_size
        if length is not None and length % patch:
            raise ValueError(
                f"objective.patch_size ({patch}) must divide task.{self.task.mbe_sequence_key} ({length}), "
                "the length of the sequence MBE patches are cut from"
            )
        n_blocks = self.model.n_blocks
        for key, layers in (
            ("objective.alternate_layers", self.objective.alternate_layers),
            ("objective.joint_layers", self.objective.joint_layers),
            ("alignment.layers", self.alignment.layers),
        ):
            bad = [i for i in layers or [] if i >= n_blocks]
            if bad:
                raise ValueError(
                    f"{key} {layers} names blocks {bad}; the model has {n_blocks} (0..{n_blocks - 1})"
                )
        method = METHODS[self.method]
        if self.schedule is not None and not method.matches:
            raise ValueError(
                f"schedule is the compress steps of a matched-dose control; {self.method} is not one"
            )
        if (
            self.schedule is not None
            and self.schedule.compress
            and self.schedule.compress[-1][1] > self.train.steps
        ):
            raise ValueError(f"schedule.compress ends after train.steps ({self.train.steps})")
        if method.smoothed and not self.gapt.smoothing:
            raise ValueError(
                f"{self.method} is a smoothed gate: set gapt.smoothing above 0 "
                f"(the experiment's methods.{self.method})"
            )
        compression = method.compression
        if compression != "none" and getattr(self.objective, f"{compression}_layers") is None:
            default_layers(n_blocks, compression)  # a ConfigError (a ValueError) when the model has none
        self.task.check_fit(self.model, self.train, self.objective)
        return self

    @property
    def effective_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """A short hash of the resolved config: a checkpoint only resumes a run of the same config."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# -- experiment files --------------------------------------------------------------------------


ARM_NAME = r"^[a-z0-9_]+$"


class SizeArms(StrictModel):
    """A study's model sizes: each runs ``methods`` with the scale's config and this model."""

    methods: list[str]
    models: dict[Annotated[str, Field(pattern=ARM_NAME)], dict[str, Any]]  # name -> model overrides


class KnobArm(StrictModel):
    """A study's one-at-a-time change of one method's config at the scale's own model."""

    method: str
    knob: str  # what it varies, as a reader names it ("patience", "spike tolerance")
    value: str  # the setting, as shown ("x 0.5", "0.05", "off")
    config: dict[str, Any]  # run config overrides, over every layer of the scale


class SettingArm(StrictModel):
    """A study's change of the scale's config for every method it runs (a longer run, a larger model
    and more steps), whose methods are compared with the arm's own ``ce``."""

    methods: list[str]
    about: str  # the setting, as a reader names it ("6 x 128, 2800 steps")
    config: dict[str, Any]  # run config overrides, over the scale's config (its method layers still apply)


class Threshold(StrictModel):
    """A bar a study's baseline must clear for its comparisons to speak to the question."""

    metric: str
    below: float


class StudySpec(StrictModel):
    """``scales.<scale>.study``: arms that vary the scale's runs, each a scale of its own named
    ``<scale>_study_<arm>`` (so that the DAG configures and trains them as it does any run).
    With sizes or knobs, the scale's own runs are the study's reference: its model is one more size,
    its config the point the knobs move from. A setting arm stands alone: its methods are compared
    with its own ``ce``."""

    seeds: list[Seed]
    title: str = ""  # the question the study asks, as its README's title
    sizes: SizeArms | None = None
    knobs: dict[Annotated[str, Field(pattern=ARM_NAME)], KnobArm] = {}
    settings: dict[Annotated[str, Field(pattern=ARM_NAME)], SettingArm] = {}
    # what the setting arms report (summary key -> a reader's name); sizes and knobs report the
    # validation CE and MBE (final/val/ce, final/val/mbe)
    settings_metrics: dict[str, str] = {}
    # what ``ce`` must reach in a setting arm for the arm's comparison to speak to the question
    baseline_learns: Threshold | None = None

    @model_validator(mode="after")
    def _distinct_arms(self) -> StudySpec:
        names = [*(self.sizes.models if self.sizes else []), *self.knobs, *self.settings]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"arm names must differ across sizes, knobs and settings: {twice} appear twice")
        if self.settings and not any(k.startswith("final/") for k in self.settings_metrics):
            raise ValueError(
                "a study with settings names the metrics they report (settings_metrics), at least one "
                "a final/ metric, whose evaluations its figure draws"
            )
        if self.baseline_learns is not None:
            without = sorted(arm for arm, s in self.settings.items() if BASELINE not in s.methods)
            if without:
                raise ValueError(
                    f"baseline_learns needs {BASELINE} in every setting arm; {without} do not run it"
                )
        return self

    @property
    def has_reference(self) -> bool:
        """Whether the study compares with the scale's own runs (sizes and knobs do; settings do not)."""
        return self.sizes is not None or bool(self.knobs)


class ScaleSpec(StrictModel):
    seeds: list[Seed]
    description: str = ""
    config: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]] = {}
    reporting: dict[str, Any] = {}  # over the experiment's reporting: (replication.config.report)
    study: StudySpec | None = None
    # set on the scales a study derives (never in a file): the scale they vary and their arm
    study_of: str | None = None
    arm: str | None = None


def study_scale(scale: str, arm: str) -> str:
    return f"{scale}_study_{arm}"


def _study_scales(scale: str, spec: ScaleSpec, methods: dict[str, Any]) -> dict[str, ScaleSpec]:
    """The scales a scale's study derives: one per model size, one per knob and one per setting."""
    study = spec.study
    derived: dict[str, ScaleSpec] = {}
    arms_methods = ([] if study.sizes is None else study.sizes.methods) + [
        k.method for k in study.knobs.values()
    ]
    arms_methods += [m for arm in study.settings.values() for m in arm.methods]
    unknown = sorted(set(arms_methods) - set(methods))
    if unknown:
        raise ValueError(f"scales.{scale}.study names methods the experiment lacks: {unknown}")
    if study.sizes is not None:
        for arm, model in study.sizes.models.items():
            derived[study_scale(scale, arm)] = ScaleSpec(
                seeds=study.seeds,
                description=f"{scale} with model {arm} ({scale}'s study of model size)",
                config=deep_merge(spec.config, {"model": model}),
                methods={m: spec.methods.get(m, {}) for m in study.sizes.methods},
                reporting=spec.reporting,
                study_of=scale,
                arm=arm,
            )
    for arm, knob in study.knobs.items():
        derived[study_scale(scale, arm)] = ScaleSpec(
            seeds=study.seeds,
            description=f"{scale} with {knob.knob} {knob.value} ({scale}'s study of GAPT's knobs)",
            config=spec.config,
            methods={knob.method: deep_merge(spec.methods.get(knob.method, {}), knob.config)},
            reporting=spec.reporting,
            study_of=scale,
            arm=arm,
        )
    for arm, setting in study.settings.items():
        derived[study_scale(scale, arm)] = ScaleSpec(
            seeds=study.seeds,
            description=f"{scale} with {setting.about} ({scale}'s study of settings)",
            config=deep_merge(spec.config, setting.config),
            methods={m: spec.methods.get(m, {}) for m in setting.methods},
            reporting=spec.reporting,
            study_of=scale,
            arm=arm,
        )
    return derived


class ExperimentSpec(StrictModel):
    """The schema of ``experiments/<name>/config.yaml``, as far as running it goes."""

    experiment: str
    description: str = ""
    # data sets prepared once before any run (name -> the preparation's own options); a run names the
    # one it reads in its task config, and finds it under the --data-root of the train command
    datasets: dict[str, dict[str, Any]] = {}
    defaults: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]]
    scales: dict[str, ScaleSpec]
    # the reporting sections, validated by replication.config.report.ReportSpec
    paper: dict[str, Any] = {}
    figures: list[Any] = []
    labels: dict[str, str] = {}
    reporting: dict[str, Any] = {}

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(methods) - set(METHOD_NAMES))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; the registry has {list(METHOD_NAMES)}")
        orphans = sorted(m for m in methods if METHODS[m].matches and METHODS[m].matches not in methods)
        if orphans:
            raise ValueError(f"matched-dose controls {orphans} need the methods they match in methods too")
        return methods

    @model_validator(mode="after")
    def _derive_study_scales(self) -> ExperimentSpec:
        for scale, spec in list(self.scales.items()):
            if spec.study_of is not None or spec.arm is not None:
                if spec.study is not None or scale not in _study_scales(
                    spec.study_of, self.scales[spec.study_of], self.methods
                ):
                    raise ValueError(f"scales.{scale}: study_of and arm are set by a study, not in a file")
                continue
            if spec.study is not None:
                for name, derived in _study_scales(scale, spec, self.methods).items():
                    if name in self.scales and self.scales[name] != derived:
                        raise ValueError(
                            f"scale {name!r} is both in the file and derived by scales.{scale}.study"
                        )
                    self.scales[name] = derived
        return self

    def study_arms(self, scale: str) -> dict[str, str]:
        """Arm name -> the scale that runs it, for the study of scale (empty without one)."""
        return {s.arm: name for name, s in self.scales.items() if s.study_of == scale}


def validate_run_config(data: dict[str, Any], source: str = "run config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source, RunConfig)) from None


def load_experiment(path: str | Path) -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(load_yaml(path))
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, str(path), ExperimentSpec)) from None


def resolve_run_config(
    experiment: ExperimentSpec | str | Path, scale: str, method: str, seed: int
) -> RunConfig:
    """Merge an experiment's layers for one run, in the precedence written in the module docstring."""
    spec = experiment if isinstance(experiment, ExperimentSpec) else load_experiment(experiment)
    if scale not in spec.scales:
        raise ConfigError(
            f"experiment {spec.experiment} has no scale {scale!r}; it has {sorted(spec.scales)}"
        )
    if method not in spec.methods:
        raise ConfigError(
            f"experiment {spec.experiment} has no method {method!r}; it has {sorted(spec.methods)}"
        )
    scale_spec = spec.scales[scale]
    if scale_spec.study_of is not None and method not in scale_spec.methods:
        raise ConfigError(
            f"{scale}, an arm of scales.{scale_spec.study_of}.study, runs only {list(scale_spec.methods)}"
        )
    unknown = sorted(set(scale_spec.methods) - set(spec.methods))
    if unknown:
        raise ConfigError(f"scales.{scale}.methods names methods the experiment lacks: {unknown}")
    merged: dict[str, Any] = {}
    for layer in (spec.defaults, scale_spec.config, spec.methods[method], scale_spec.methods.get(method, {})):
        merged = deep_merge(merged, layer)
    merged.update(experiment=spec.experiment, scale=scale, method=method, seed=int(seed))
    return validate_run_config(
        merged, source=f"experiment {spec.experiment}, scale {scale}, method {method}, seed {seed}"
    )


# keys that run folders written by earlier versions hold and this version reads elsewhere: a recorded
# config (a run folder's config.yaml, summary or checkpoint) is read without them, so that the run
# still resumes and aggregates; an experiment file that sets one is an error naming it
MOVED_KEYS = {
    ("task", "rq1_time_constant"): "the experiment file's reporting.rq1.time_constant (RQ1's statistics are "
    "computed at aggregation)",
}


def without_moved_keys(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A recorded run config without the keys of MOVED_KEYS, and a note for each one dropped."""
    data, notes = dict(data), []
    for (section, key), where in MOVED_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            data[section] = {k: v for k, v in data[section].items() if k != key}
            notes.append(f"{section}.{key} is no longer read: it moved to {where}")
    return data, notes


def load_run_config(path: str | Path) -> RunConfig:
    data, notes = without_moved_keys(load_yaml(path))
    for note in notes:
        print(f"note: {path}: {note}", file=sys.stderr)
    if "scales" in data or "methods" in data:  # the shape of an ExperimentSpec
        raise ConfigError(
            f"{path} is an experiment config, not a run config: resolve a run first with "
            f"python -m replication.training.configure {path} --scale S --method M --seed N --out RUN_DIR/, "
            "then train RUN_DIR/config.yaml"
        )
    return validate_run_config(data, source=str(path))


def write_run_config(config: RunConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)


# -- comparing configs ---------------------------------------------------------------------------


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def config_differences(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """The keys in which two resolved configs differ, as ``key: old -> new``, dotted and sorted."""
    a, b = _flatten(old), _flatten(new)
    absent = "(absent)"
    changes = [
        f"{key}: {a.get(key, absent)} -> {b.get(key, absent)}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key, absent) != b.get(key, absent)
    ]
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return "; ".join(changes[:limit]) + more if changes else "no key differs (only the digest)"


def config_mismatch(record: dict[str, Any], config: RunConfig) -> str | None:
    """None when a summary's or checkpoint's ``config_digest``/``config`` record this run config;
    otherwise the keys in which the two differ.

    A recorded config is validated again before it is compared, so a field added to the code since
    (absent from the record, at its default now) is no difference, nor is a key of MOVED_KEYS; its
    digest is then recomputed.
    """
    if record.get("config_digest") == config.digest():
        return None
    old = record.get("config")
    if not isinstance(old, dict):
        return "the recorded config digest differs, and no config is recorded"
    try:
        revalidated = validate_run_config(without_moved_keys(old)[0])
    except ConfigError:
        return config_differences(old, config.to_dict())  # it no longer validates: compare it as written
    if revalidated.digest() == config.digest():
        return None
    return config_differences(revalidated.to_dict(), config.to_dict())


def check_summary_config(summary: dict[str, Any], config: RunConfig, path: Path) -> str | None:
    """A RunFolderError naming the keys that differ unless the summary at path was written by a run
    of this config. A summary from before summaries recorded their config cannot be checked: the
    returned warning says so (None otherwise)."""
    if "config" not in summary and "config_digest" not in summary:
        return f"warning: {path} records no config (written by an older version); it is not checked"
    what = config_mismatch(summary, config)
    if what is None:
        return None
    raise RunFolderError(
        f"{path} was written by a run of another config ({what}); delete {path.name} and any "
        f"checkpoint*.pt in {path.parent} to train this config there (metrics.jsonl is then rewritten)"
    )
