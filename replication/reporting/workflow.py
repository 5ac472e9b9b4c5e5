"""What the Snakemake DAG runs, computed from the global config (the Snakefile only wires it up).

The global config (``config/<scale>.yaml``, validated against ``config.schema.yaml`` beside this
module, whose method list is the registry's, ``replication.methods``) names the scale, the
experiments and optionally a subset of methods and seeds; everything else comes from each
experiment's own ``experiments/<name>/config.yaml``. Nothing here reads a file at import: the
schema is read on first use, and every repository path comes from the global config.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib.resources
import sys
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from replication import cli, launch
from replication.config import ConfigError, load_yaml
from replication.methods import BASELINE, METHOD_NAMES
from replication.reporting.spec import ReportSpec, load_report_spec
from replication.runconfig import StudySpec, resolve_run_config

TABLE_FILES = ("summary.csv", "runs.csv", "curves.csv", "phases.csv", "alignment.csv", "table.md")

# the files of a study's report: these always, and those of each part the study has
STUDY_FILES = ("study.csv", "README.md")
STUDY_PART_FILES = {
    "sizes": ("scaling.csv", "scaling_fit.csv", "scaling.png", "scaling.pdf"),
    "knobs": ("sensitivity.csv", "sensitivity.png", "sensitivity.pdf"),
    "settings": ("settings.csv", "settings_curves.csv", "settings.png", "settings.pdf"),
}


def study_files(study: StudySpec) -> list[str]:
    """The files replication.reporting.study writes for this study."""
    parts = {"sizes": study.sizes is not None, "knobs": bool(study.knobs), "settings": bool(study.settings)}
    return [*STUDY_FILES, *(name for part, has in parts.items() if has for name in STUDY_PART_FILES[part])]


@dataclass(frozen=True)
class RunId:
    experiment: str
    scale: str
    method: str
    seed: int

    @property
    def path(self) -> str:
        return f"{self.experiment}/{self.scale}/{self.method}/seed{self.seed}"


@dataclass
class Plan:
    config: dict[str, Any]

    @property
    def scale(self) -> str:
        return self.config["scale"]

    def experiment_config(self, experiment: str) -> str:
        return f"{self.config['experiments_dir']}/{experiment}/config.yaml"

    @cached_property
    def specs(self) -> dict[str, ReportSpec]:
        folder = Path(self.config["experiments_dir"])
        for name in self.config["experiments"]:
            _check_experiment_name(name, folder, "no experiment")
        specs = {name: load_report_spec(self.experiment_config(name)) for name in self.config["experiments"]}
        for name, spec in specs.items():
            if spec.experiment != name:
                raise ConfigError(f"{self.experiment_config(name)} names itself {spec.experiment!r}, not {name!r}")
        for name, spec in specs.items():
            if self.scale not in spec.scales:
                own = sorted(s for s, scale in spec.scales.items() if scale.study_of is None)  # not a study's arms
                raise ConfigError(f"experiment {name} has no scale {self.scale!r}; its scales: {', '.join(own)}")
        return specs

    def methods(self, experiment: str) -> list[str]:
        available = list(self.specs[experiment].methods)
        chosen = self.config.get("methods") or available
        unknown = [m for m in chosen if m not in available]
        if unknown:
            raise ConfigError(f"experiment {experiment} has no method(s) {unknown}")
        return list(chosen)

    def seeds(self, experiment: str) -> list[int]:
        return list(self.config.get("seeds") or self.specs[experiment].scales[self.scale].seeds)

    def runs(self, experiment: str) -> list[RunId]:
        return [RunId(experiment, self.scale, m, s) for m in self.methods(experiment) for s in self.seeds(experiment)]

    # -- the study of a scale (scales.<scale>.study; make study) --------------------------------
    def study_runs(self, experiment: str) -> list[RunId]:
        """The runs of every arm of the experiment's study at this scale (none without a study)."""
        spec = self.specs[experiment]
        return [RunId(experiment, scale, m, seed) for scale in spec.study_arms(self.scale).values()
                for m in spec.scales[scale].methods for seed in spec.scales[scale].seeds]  # fmt: skip

    def study_reference_runs(self, experiment: str) -> list[RunId]:
        """The scale's own runs a study compares against: its model size and the knobs' defaults
        (none for a study of settings alone, whose arms stand on their own)."""
        spec = self.specs[experiment]
        study = spec.scales[self.scale].study
        if study is None or not study.has_reference:
            return []
        methods = {BASELINE, *(study.sizes.methods if study.sizes else []), *(k.method for k in study.knobs.values())}
        return [RunId(experiment, self.scale, m, seed) for m in spec.methods if m in methods for seed in study.seeds]

    def studies(self) -> list[str]:
        return [e for e, spec in self.specs.items() if spec.study_arms(self.scale)]

    def study_dir(self, experiment: str) -> str:
        return f"{self.config['results_dir']}/{self.scale}/study/{experiment}"

    def study_inputs(self, experiment: str) -> list[str]:
        runs = self.study_reference_runs(experiment) + self.study_runs(experiment)
        return [f"{self.run_dir(run)}/summary.json" for run in runs]

    def study_outputs(self, experiment: str) -> list[str]:
        study = self.specs[experiment].scales[self.scale].study
        return [f"{self.study_dir(experiment)}/{name}" for name in study_files(study)]

    @cached_property
    def run_datasets(self) -> dict[str, str]:
        """Run path -> the data set its task reads (runs without one are absent)."""
        found = {}
        for experiment, spec in self.specs.items():
            for run in self.runs(experiment) + self.study_runs(experiment):
                task = resolve_run_config(spec, run.scale, run.method, run.seed).task
                dataset = getattr(task, "dataset", None)
                if dataset is not None:
                    if dataset not in spec.datasets:
                        raise ConfigError(f"{run.path}: data set {dataset!r} is not in {experiment}'s datasets:")
                    found[run.path] = dataset
        return found

    @cached_property
    def dataset_experiment(self) -> dict[str, str]:
        owners: dict[str, str] = {}
        for experiment, spec in self.specs.items():
            for name in spec.datasets:
                if owners.setdefault(name, experiment) != experiment:
                    raise ConfigError(f"data set {name!r} is declared by both {owners[name]} and {experiment}")
        return owners

    def check(self) -> Plan:
        """Resolve every run now, so that a bad config fails before any job starts."""
        for experiment in self.specs:
            self.runs(experiment)
        self.run_datasets, self.dataset_experiment
        return self

    # -- paths -----------------------------------------------------------------------------------
    def run_dir(self, run: RunId) -> str:
        return f"{self.config['runs_dir']}/{run.path}"

    def results_dir(self, experiment: str) -> str:
        return f"{self.config['results_dir']}/{self.scale}/{experiment}"

    def data_inputs(self, experiment: str, scale: str, method: str, seed: str) -> list[str]:
        dataset = self.run_datasets.get(f"{experiment}/{scale}/{method}/seed{seed}")
        return [] if dataset is None else [f"{self.config['data_dir']}/{dataset}/manifest.json"]

    def summaries(self, experiment: str) -> list[str]:
        return [f"{self.run_dir(run)}/summary.json" for run in self.runs(experiment)]

    def table_outputs(self, experiment: str) -> list[str]:
        return [f"{self.results_dir(experiment)}/{name}" for name in TABLE_FILES]

    def figure_outputs(self, experiment: str) -> list[str]:
        stems = [f.file for f in self.specs[experiment].figures]
        return [f"{self.results_dir(experiment)}/{stem}.{ext}" for stem in stems for ext in ("png", "pdf")]

    def claims_output(self) -> str:
        return f"{self.config['results_dir']}/{self.scale}/CLAIMS.md"

    def final_outputs(self) -> list[str]:
        outputs = [self.claims_output()]
        for experiment in self.specs:
            outputs += self.table_outputs(experiment) + self.figure_outputs(experiment)
        return outputs

    def job(self, experiment: str, key: str) -> int:
        """threads_per_run, gpus_per_run or nproc_per_run of one experiment's training jobs."""
        override = (self.config.get("per_experiment") or {}).get(experiment, {})
        return int(override.get(key, self.config.get(key, _defaults()[key])))

    def launcher(self, python: str, experiment: str) -> str:
        """The command line that trains one run of experiment, up to the run's arguments.

        Several processes per run: torchrun. One process on CPUs: ``replication.launch``, which forks
        the run from the DAG's warm training server when there is one (``launch.TrainServer``) and is
        ``replication.train`` itself otherwise. One process on a GPU: ``replication.train``. The line
        is the same whether a server runs or not, so Snakemake never sees changed params.
        """
        n = self.job(experiment, "nproc_per_run")
        if n > 1:
            return f"{python} -m torch.distributed.run --standalone --nproc-per-node {n} -m {launch.TRAIN_MODULE}"
        if self._forks(experiment):
            return f"{python} -m {launch.__name__}"
        return f"{python} -m {launch.TRAIN_MODULE}"

    def _forks(self, experiment: str) -> bool:
        return self.job(experiment, "nproc_per_run") == 1 and self.job(experiment, "gpus_per_run") == 0

    def forks_training(self) -> bool:
        """Whether some training job of this DAG goes through replication.launch (one CPU process)."""
        return any(self._forks(experiment) for experiment in self.specs)


def _check_experiment_name(name: str, folder: Path, problem: str) -> None:
    """ConfigError unless ``folder/name/config.yaml`` exists, naming the closest experiment there."""
    available = sorted(p.parent.name for p in folder.glob("*/config.yaml"))
    if name not in available:
        hint = difflib.get_close_matches(name, available, n=1)
        raise ConfigError(
            f"{problem} {name!r} in {folder}/"
            + (f" (did you mean {hint[0]!r}?)" if hint else f"; it has {', '.join(available) or 'none'}")
        )


@cache
def schema() -> dict[str, Any]:
    """The global config's JSON schema, with the method registry as the methods' enum."""
    loaded = yaml.safe_load(importlib.resources.files(__package__).joinpath("config.schema.yaml").read_text())
    loaded["properties"]["methods"]["items"]["enum"] = list(METHOD_NAMES)
    return loaded


@cache
def _defaults() -> dict[str, Any]:
    return {
        "methods": None,
        "seeds": None,
        **{key: spec["default"] for key, spec in schema()["properties"].items() if "default" in spec},
    }


def defaults() -> dict[str, Any]:
    """The defaults the DAG's config schema states (the one place they are written), as a new dict."""
    return copy.deepcopy(_defaults())


def _describe(error: Any) -> str:
    """One line for one schema violation, naming the key and, for a typo, the closest valid one."""
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        parts = []
        for key in extra:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            parts.append(f"unknown key {(where + '.' if where else '') + str(key)!r}"
                         + (f" (did you mean {hint[0]!r}?)" if hint else f"; valid keys: {', '.join(allowed)}"))  # fmt: skip
        return "; ".join(parts)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        if missing == "scale":
            return "the config names no scale: add `scale: smoke|cpu|gpu1|paper`, or pass --configfile config/<scale>.yaml"
        return f"the config lacks the required key {missing!r}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    return f"{where or 'config'}: {error.message}"


INTEGER_KEYS = ("threads_per_run", "gpus_per_run", "nproc_per_run")


def _integers(raw: dict[str, Any]) -> dict[str, Any]:
    """Digit strings as integers where the schema wants integers: Snakemake's --config parses
    ``seeds=[0,1]`` into ``['0', '1']``."""

    def number(value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    out = dict(raw)
    for key in INTEGER_KEYS:
        if key in out:
            out[key] = number(out[key])
    if isinstance(out.get("seeds"), list):
        out["seeds"] = [number(v) for v in out["seeds"]]
    if isinstance(out.get("per_experiment"), dict):
        out["per_experiment"] = {
            name: {k: number(v) for k, v in values.items()} if isinstance(values, dict) else values
            for name, values in out["per_experiment"].items()
        }
    return out


def resolve_global_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The global config with every omitted key set to the schema's default, after validation.

    Nothing else is merged in: a config file that names ``scale: smoke`` and its experiments gets
    1 thread, 0 GPUs and 1 process per run, as the schema documents. Raises ``ConfigError`` with one
    line per problem.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of keys to values, not {type(raw).__name__}")
    raw = _integers(raw)
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(_describe(e) for e in errors))
    config = copy.deepcopy({**_defaults(), **raw})
    # a per_experiment entry for an experiment that is not chosen is kept (and unused), so that one
    # scale's file serves any subset; one that names no experiment at all is a typo
    for name in sorted(config["per_experiment"]):
        _check_experiment_name(name, Path(config["experiments_dir"]), "per_experiment names no experiment")
    return config


def check_outputs(argv: list[str] | None = None) -> int:
    """python -m replication.reporting.workflow CONFIG.yaml [KEY=VALUE ...]: is every final output there?

    The same KEY=VALUE overrides as snakemake's --config; exits 1 naming whatever is missing or empty.
    """
    parser = cli.parser("replication.reporting.workflow", check_outputs.__doc__)
    parser.add_argument("configfile", type=str)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE, as given to snakemake --config")
    return cli.run(_check_outputs, parser.parse_args(argv))


def _check_outputs(args: argparse.Namespace) -> int:
    config = load_yaml(args.configfile)
    for item in args.overrides:
        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value) if value else value
    try:
        plan = Plan(resolve_global_config(config)).check()
    except ConfigError as error:
        raise ConfigError(f"{args.configfile}: {error}") from None
    outputs = plan.final_outputs()
    bad = [p for p in outputs if not Path(p).is_file() or Path(p).stat().st_size == 0]
    for path in bad:
        print(f"missing or empty: {path}", file=sys.stderr)
    print(f"{len(outputs) - len(bad)} of {len(outputs)} expected outputs present")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(check_outputs())
