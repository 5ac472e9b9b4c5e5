"""The DAG's global config (``config/<scale>.yaml``, or ``--config KEY=VALUE``): its keys, their
defaults and its validation, in ``GlobalConfig``.

It is the only source of the DAG's settings: a key it omits takes the default stated here, and no
other file is merged in. Only when neither a config file nor a scale is given does the Snakefile load
config/paper.yaml, the full replication. The methods it may name are the method registry's
(``replication.science.methods``). Nothing here reads a file at import.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, field_validator

from replication.config.base import StrictModel, describe_error
from replication.science.errors import ConfigError, did_you_mean
from replication.science.methods import MethodName


def check_experiment_name(name: str, folder: Path, problem: str) -> None:
    """ConfigError unless ``folder/name/config.yaml`` exists, naming the closest experiment there."""
    available = sorted(p.parent.name for p in folder.glob("*/config.yaml"))
    if name not in available:
        raise ConfigError(
            f"{problem} {name!r} in {folder}/"
            + (did_you_mean(name, available) or f"; it has {', '.join(available) or 'none'}")
        )


def _digits(value: Any) -> Any:
    """A digit string as the integer it spells: Snakemake's --config hands ``seeds=[0,1]`` over as
    ``['0', '1']``."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


# an integer, or a string of digits; never a bool or a float
Count = Annotated[int, BeforeValidator(_digits), Field(strict=True, ge=1)]
NonNegativeCount = Annotated[int, BeforeValidator(_digits), Field(strict=True, ge=0)]


class JobSettings(StrictModel):
    """``per_experiment.<experiment>``: the job settings that differ for one experiment. A key it
    omits (None) takes the global config's value; it may not be null."""

    threads_per_run: Count = None  # type: ignore[assignment]
    gpus_per_run: NonNegativeCount = None  # type: ignore[assignment]
    nproc_per_run: Count = None  # type: ignore[assignment]


class GlobalConfig(StrictModel):
    """The global config of the replication DAG; ``resolve_global_config`` validates one."""

    scale: str  # a scale every chosen experiment defines (smoke, cpu, gpu1, paper)
    # folders of experiments_dir; all three when omitted
    experiments: Annotated[list[Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]], Field(min_length=1)] = [
        "fineweb_pretrain",
        "arithmetic_ood",
        "forgetting_separation",
    ]
    methods: list[MethodName] | None = None  # a subset of methods; None runs every method of each experiment
    seeds: list[NonNegativeCount] | None = None  # seeds for every experiment; None: each one's for the scale
    experiments_dir: str = "experiments"
    runs_dir: str = "runs"
    data_dir: str = "data"
    results_dir: str = "results"
    logs_dir: str = "logs"
    threads_per_run: Count = 1  # CPU threads of one training job
    gpus_per_run: NonNegativeCount = 0  # GPUs one training job takes (replication.dag.devices)
    # the GPUs of this machine the DAG may use; None: those CUDA_VISIBLE_DEVICES names, or all of
    # nvidia-smi -L. A job waits for free ones, so no more ranks run on them than they hold.
    gpus: NonNegativeCount | None = None
    jobs_per_gpu: Count = 1  # training jobs that may share one GPU (small ones that fit together)
    nproc_per_run: Count = 1  # processes per training job; more than one launches torchrun (one per GPU)
    per_experiment: dict[str, JobSettings] = {}  # job settings that differ for one experiment, by its name

    @field_validator("experiments")
    @classmethod
    def _each_once(cls, experiments: list[str]) -> list[str]:
        twice = sorted({e for e in experiments if experiments.count(e) > 1})
        if twice:
            raise ValueError(f"names an experiment twice: {', '.join(twice)}")
        return experiments


def defaults() -> dict[str, Any]:
    """The defaults ``GlobalConfig`` states (the one place they are written), as a new dict."""
    return {
        name: copy.deepcopy(field.default)
        for name, field in GlobalConfig.model_fields.items()
        if not field.is_required()
    }


NO_SCALE = (
    "the config names no scale: add `scale: smoke|cpu|gpu1|paper`, or pass --configfile config/<scale>.yaml"
)


def resolve_global_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The global config with every omitted key set to its default, after validation.

    Nothing else is merged in: a config file that names ``scale: smoke`` and its experiments gets
    1 thread, 0 GPUs and 1 process per run, as ``GlobalConfig`` states. A ``per_experiment`` entry
    holds only the keys it sets. Raises ``ConfigError`` with one line per problem.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of keys to values, not {type(raw).__name__}")
    try:
        validated = GlobalConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(
            "\n".join(
                NO_SCALE
                if item["type"] == "missing" and item["loc"] == ("scale",)
                else describe_error(item, GlobalConfig)
                for item in error.errors()
            )
        ) from None
    config = {**defaults(), **validated.model_dump(exclude_unset=True)}
    # a per_experiment entry for an experiment that is not chosen is kept (and unused), so that one
    # scale's file serves any subset; one that names no experiment at all is a typo
    for name in sorted(config["per_experiment"]):
        check_experiment_name(name, Path(config["experiments_dir"]), "per_experiment names no experiment")
    return config
