"""What the Snakemake DAG runs, computed from the global config (the Snakefile only wires it up).

The global config (``config/<scale>.yaml``, validated against ``workflow/schemas/config.schema.yaml``)
names the scale, the experiments and optionally a subset of methods and seeds; everything else comes
from each experiment's own ``experiments/<name>/config.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import yaml

from replication.config import ConfigError, ExperimentSpec, load_experiment, resolve_run_config

TABLE_FILES = ("summary.csv", "runs.csv", "curves.csv", "phases.csv", "alignment.csv", "table.md")


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
    def specs(self) -> dict[str, ExperimentSpec]:
        specs = {name: load_experiment(self.experiment_config(name)) for name in self.config["experiments"]}
        for name, spec in specs.items():
            if spec.experiment != name:
                raise ConfigError(f"{self.experiment_config(name)} names itself {spec.experiment!r}, not {name!r}")
        for name, spec in specs.items():
            if self.scale not in spec.scales:
                raise ConfigError(f"experiment {name} has no scale {self.scale!r}; it has {sorted(spec.scales)}")
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

    @cached_property
    def run_datasets(self) -> dict[str, str]:
        """Run path -> the data set its task reads (runs without one are absent)."""
        found = {}
        for experiment, spec in self.specs.items():
            for run in self.runs(experiment):
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
        return int(override.get(key, self.config.get(key, DEFAULTS[key])))

    def launcher(self, python: str, experiment: str) -> str:
        """What precedes the training module's name: python -m, or torchrun for several processes."""
        n = self.job(experiment, "nproc_per_run")
        if n <= 1:
            return f"{python} -m"
        return f"{python} -m torch.distributed.run --standalone --nproc-per-node {n} -m"



SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def _schema_defaults() -> dict[str, Any]:
    """The defaults the DAG's config schema fills in (one place states them: the schema)."""
    properties = yaml.safe_load(SCHEMA.read_text())["properties"]
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


DEFAULTS = {"methods": None, "seeds": None, **_schema_defaults()}


def check_outputs(argv: list[str] | None = None) -> int:
    """python -m replication.workflow CONFIG.yaml [KEY=VALUE ...]: is every final output there?

    The same KEY=VALUE overrides as snakemake's --config; exits 1 naming whatever is missing or empty.
    """
    parser = argparse.ArgumentParser(prog="python -m replication.workflow", description=check_outputs.__doc__)
    parser.add_argument("configfile", type=str)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE, as given to snakemake --config")
    args = parser.parse_args(argv)
    config = {**DEFAULTS, **yaml.safe_load(open(args.configfile))}
    for item in args.overrides:
        key, _, value = item.partition("=")
        config[key] = value
    plan = Plan(config)
    outputs = plan.final_outputs()
    bad = [p for p in outputs if not Path(p).is_file() or Path(p).stat().st_size == 0]
    for path in bad:
        print(f"missing or empty: {path}", file=sys.stderr)
    print(f"{len(outputs) - len(bad)} of {len(outputs)} expected outputs present")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(check_outputs())
