"""What the Snakemake DAG runs, computed from the global config (the Snakefile only wires it up).

The global config (``config/<scale>.yaml``, validated by ``replication.dag.schema``) names the scale,
the experiments and optionally a subset of methods and seeds; everything else comes from each
experiment's own ``experiments/<name>/config.yaml``. Nothing here reads a file at import, and every
repository path comes from the global config.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from replication.config.base import ConfigError, load_yaml
from replication.config.plan import load_plan
from replication.config.report import ReportSpec, load_report_spec
from replication.config.run import StudySpec, resolve_run_config
from replication.dag.schema import check_experiment_name, defaults, resolve_global_config
from replication.runtime import cli
from replication.runtime.record import SUMMARY_NAME, RunId
from replication.science.methods import BASELINE, METHODS

TRAIN_MODULE = "replication.training.train"  # what every training job runs
# the tidy tables of an experiment's results by name, and their files: the curves, every evaluation of
# every run, gzip-compressed (experiment 3's 800 runs hold 28 MB of them as plain text, 4 MB so)
TABLES = {
    "summary": "summary.csv",
    "runs": "runs.csv",
    "curves": "curves.csv.gz",
    "phases": "phases.csv",
    "alignment": "alignment.csv",
}
TABLE_FILES = (*TABLES.values(), "table.md")

# the files of a study's report: these always, and those of each part the study has
STUDY_FILES = ("study.csv", "README.md")
STUDY_PART_FILES = {
    "sizes": ("scaling.csv", "scaling_fit.csv", "scaling.png", "scaling.pdf", "dose.png", "dose.pdf"),
    "knobs": ("sensitivity.csv", "sensitivity.png", "sensitivity.pdf", "dose.png", "dose.pdf"),
    "settings": ("settings.csv", "settings_curves.csv", "settings.png", "settings.pdf"),
}


def study_files(study: StudySpec) -> list[str]:
    """The files replication.reporting.study writes for this study."""
    parts = {"sizes": study.sizes is not None, "knobs": bool(study.knobs), "settings": bool(study.settings)}
    names = [*STUDY_FILES, *(name for part, has in parts.items() if has for name in STUDY_PART_FILES[part])]
    return list(dict.fromkeys(names))  # the dose figure of sizes and knobs once


@dataclass
class Plan:
    config: dict[str, Any]

    @property
    def scale(self) -> str:
        return self.config["scale"]

    def experiment_config(self, experiment: str) -> str:
        return f"{self.config['experiments_dir']}/{experiment}/config.yaml"

    def analysis_plan(self, experiment: str) -> str:
        """The experiment's analysis plan (replication.config.plan), which its table and claims follow."""
        return f"{self.config['experiments_dir']}/{experiment}/plan.yaml"

    @cached_property
    def specs(self) -> dict[str, ReportSpec]:
        folder = Path(self.config["experiments_dir"])
        for name in self.config["experiments"]:
            check_experiment_name(name, folder, "no experiment")
        specs = {name: load_report_spec(self.experiment_config(name)) for name in self.config["experiments"]}
        for name, spec in specs.items():
            if spec.experiment != name:
                raise ConfigError(
                    f"{self.experiment_config(name)} names itself {spec.experiment!r}, not {name!r}"
                )
        for name, spec in specs.items():
            if self.scale not in spec.scales:
                # the experiment's own scales, not a study's arms
                own = sorted(s for s, scale in spec.scales.items() if scale.study_of is None)
                raise ConfigError(
                    f"experiment {name} has no scale {self.scale!r}; its scales: {', '.join(own)}"
                )
        return specs

    def methods(self, experiment: str) -> list[str]:
        available = list(self.specs[experiment].methods)
        chosen = self.config.get("methods") or available
        unknown = [m for m in chosen if m not in available]
        if unknown:
            raise ConfigError(f"experiment {experiment} has no method(s) {unknown}")
        alone = [m for m in chosen if METHODS[m].matches and METHODS[m].matches not in chosen]
        if alone:
            raise ConfigError(
                f"methods {alone} are matched-dose controls: choose the methods they match with them "
                f"({', '.join(METHODS[m].matches for m in alone)})"
            )
        return list(chosen)

    def seeds(self, experiment: str) -> list[int]:
        return list(self.config.get("seeds") or self.specs[experiment].scales[self.scale].seeds)

    def runs(self, experiment: str) -> list[RunId]:
        return [
            RunId(experiment, self.scale, m, s)
            for m in self.methods(experiment)
            for s in self.seeds(experiment)
        ]

    # -- the study of a scale (scales.<scale>.study; make study) --------------------------------
    def study_runs(self, experiment: str) -> list[RunId]:
        """The runs of every arm of the experiment's study at this scale (none without a study)."""
        spec = self.specs[experiment]
        return [
            RunId(experiment, scale, m, seed)
            for scale in spec.study_arms(self.scale).values()
            for m in spec.scales[scale].methods
            for seed in spec.scales[scale].seeds
        ]

    def study_reference_runs(self, experiment: str) -> list[RunId]:
        """The scale's own runs a study compares against: its model size and the knobs' defaults
        (none for a study of settings alone, whose arms stand on their own)."""
        spec = self.specs[experiment]
        study = spec.scales[self.scale].study
        if study is None or not study.has_reference:
            return []
        methods = {
            BASELINE,
            *(study.sizes.methods if study.sizes else []),
            *(k.method for k in study.knobs.values()),
        }
        return [
            RunId(experiment, self.scale, m, seed)
            for m in spec.methods
            if m in methods
            for seed in study.seeds
        ]

    def studies(self) -> list[str]:
        return [e for e, spec in self.specs.items() if spec.study_arms(self.scale)]

    def study_dir(self, experiment: str) -> str:
        return f"{self.config['results_dir']}/{self.scale}/study/{experiment}"

    def study_inputs(self, experiment: str) -> list[str]:
        runs = self.study_reference_runs(experiment) + self.study_runs(experiment)
        return [self.summary(run) for run in runs]

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
                        raise ConfigError(
                            f"{run.path}: data set {dataset!r} is not in {experiment}'s datasets: "
                            f"{', '.join(spec.datasets) or 'none'}"
                        )
                    found[run.path] = dataset
        return found

    @cached_property
    def dataset_experiment(self) -> dict[str, str]:
        owners: dict[str, str] = {}
        for experiment, spec in self.specs.items():
            for name in spec.datasets:
                if owners.setdefault(name, experiment) != experiment:
                    raise ConfigError(
                        f"data set {name!r} is declared by both {owners[name]} and {experiment}"
                    )
        return owners

    def check(self) -> Plan:
        """Resolve every run and read every analysis plan now, so that a bad config or plan fails before
        any job starts."""
        for experiment in self.specs:
            self.runs(experiment)
        _ = self.run_datasets, self.dataset_experiment  # computed now: a bad data set fails here too
        for experiment, spec in self.specs.items():
            load_plan(self.analysis_plan(experiment), spec)
            self._check_devices(experiment)
        return self

    def _check_devices(self, experiment: str) -> None:
        """A job's ranks each need a GPU of their own, and no job more GPUs than the config gives."""
        gpus, ranks, machine = (
            self.job(experiment, "gpus_per_run"),
            self.job(experiment, "nproc_per_run"),
            self.config.get("gpus"),
        )
        if gpus and ranks > gpus:
            raise ConfigError(
                f"{experiment}: nproc_per_run {ranks} is more than gpus_per_run {gpus}, so ranks would "
                "share a GPU; give each rank its own (per_experiment sets them per experiment)"
            )
        if machine is not None and gpus > machine:
            raise ConfigError(
                f"{experiment}: gpus_per_run {gpus} is more than the {machine} GPUs the config gives (gpus); "
                "lower gpus_per_run and nproc_per_run, or run the scale on a larger machine or a cluster"
            )

    # -- paths -----------------------------------------------------------------------------------
    def summary(self, run: RunId) -> str:
        """The run's summary.json, the output of its training job."""
        return f"{self.config['runs_dir']}/{run.path}/{SUMMARY_NAME}"  # as the rules spell it

    def results_dir(self, experiment: str) -> str:
        return f"{self.config['results_dir']}/{self.scale}/{experiment}"

    def data_inputs(self, experiment: str, scale: str, method: str, seed: str) -> list[str]:
        dataset = self.run_datasets.get(RunId(experiment, scale, method, int(seed)).path)
        return [] if dataset is None else [f"{self.config['data_dir']}/{dataset}/manifest.json"]

    def gated_summary(self, experiment: str, scale: str, method: str, seed: str) -> list[str]:
        """The summary.json of the gated run a matched-dose control takes its schedule from (the
        input of the control's configure job), or none for any other method."""
        matches = METHODS[method].matches
        return [] if matches is None else [self.summary(RunId(experiment, scale, matches, int(seed)))]

    def schedule_option(self, experiment: str, scale: str, method: str, seed: str) -> str:
        """configure's --schedule-from for a matched-dose control, or nothing."""
        summary = self.gated_summary(experiment, scale, method, seed)
        return f"--schedule-from {Path(summary[0]).parent}" if summary else ""

    def summaries(self, experiment: str) -> list[str]:
        return [self.summary(run) for run in self.runs(experiment)]

    def table_outputs(self, experiment: str) -> list[str]:
        return [f"{self.results_dir(experiment)}/{name}" for name in TABLE_FILES]

    def figure_outputs(self, experiment: str) -> list[str]:
        stems = [f.file for f in self.specs[experiment].figures]
        return [f"{self.results_dir(experiment)}/{stem}.{ext}" for stem in stems for ext in ("png", "pdf")]

    def published(self) -> list[str]:
        """The chosen experiments whose results this scale holds (summary.csv): all of them once the
        DAG has run; fewer in a scale built one part at a time (make replicate PART=...)."""
        return [e for e in self.specs if Path(self.results_dir(e), "summary.csv").is_file()]

    def claims_experiments(self) -> list[str]:
        """The experiments CLAIMS.md covers: the chosen ones, and those of the full list (GlobalConfig's
        default) whose results the scale already holds, so that a part built alone adds its claims to
        those of the parts before it."""
        results = Path(self.config["results_dir"], self.scale)
        others = [
            e
            for e in defaults()["experiments"]
            if e not in self.specs and (results / e / "summary.csv").is_file()
        ]
        return [e for e in defaults()["experiments"] if e in self.specs or e in others] + [
            e for e in self.specs if e not in defaults()["experiments"]
        ]

    def claims_inputs(self) -> list[str]:
        """What the claims rule reads: the chosen experiments' tables (made by the DAG) and the committed
        summaries and runs of the other experiments CLAIMS.md covers."""
        made = [
            t for e in self.specs for t in self.table_outputs(e) if not t.endswith((TABLES["curves"], ".md"))
        ]
        results = Path(self.config["results_dir"], self.scale)
        kept = [
            str(results / e / name)
            for e in self.claims_experiments()
            if e not in self.specs
            for name in (TABLES["summary"], TABLES["runs"], TABLES["phases"], TABLES["alignment"])
        ]
        return made + kept

    def claims_output(self) -> str:
        return f"{self.config['results_dir']}/{self.scale}/CLAIMS.md"

    def final_outputs(self) -> list[str]:
        outputs = [self.claims_output()]
        for experiment in self.specs:
            outputs += self.table_outputs(experiment) + self.figure_outputs(experiment)
        return outputs

    def written(self) -> str:
        """What a finished DAG wrote, for its last lines: where the claims, tables and figures are."""
        scale_dir = f"{self.config['results_dir']}/{self.scale}"
        lines = [
            f"The {self.scale} scale is done. Its results are in {scale_dir}/:",
            f"  {self.claims_output()}: every claim with its verdict",
        ]
        for experiment in self.specs:
            tables = ", ".join(os.path.basename(p) for p in self.table_outputs(experiment))
            figures = len(self.figure_outputs(experiment)) // 2
            lines.append(f"  {self.results_dir(experiment)}/: {tables} and {figures} figures (PNG and PDF)")
        lines.append(
            f"  the runs themselves: {self.config['runs_dir']}/<experiment>/{self.scale}/<method>/seed<N>/"
        )
        if self.config["results_dir"] == defaults()["results_dir"]:  # where make report looks
            lines.append(f"  one page with all of it: make report SCALE={self.scale}")
        return "\n".join(lines)

    def job(self, experiment: str, key: str) -> int:
        """threads_per_run, gpus_per_run or nproc_per_run of one experiment's training jobs."""
        override = (self.config.get("per_experiment") or {}).get(experiment, {})
        return int(override.get(key, self.config.get(key, defaults()[key])))

    def experiments_pattern(self, gpu: bool) -> str:
        """A regular expression of the experiments whose training jobs need GPUs (``gpu``) or none:
        the two training rules' wildcard constraint; one that matches nothing where there are none."""
        chosen = [e for e in self.specs if (self.job(e, "gpus_per_run") > 0) == gpu]
        return "|".join(chosen) if chosen else "(?!)"

    def launcher(self, python: str, experiment: str) -> str:
        """The command line that trains one run of experiment, up to the run's arguments: the training
        command itself, or torchrun around it for several processes per run, under
        ``replication.dag.devices``, which gives the job its own gpus_per_run GPUs (none for 0)."""
        n = self.job(experiment, "nproc_per_run")
        gpus = self.config.get("gpus")
        devices = f"{python} -m replication.dag.devices {self.job(experiment, 'gpus_per_run')}"
        devices += "" if gpus is None else f" --of {gpus}"
        per_gpu = self.config.get("jobs_per_gpu", 1)
        devices += "" if per_gpu == 1 else f" --per-gpu {per_gpu}"
        if n > 1:
            train = f"{python} -m torch.distributed.run --standalone --nproc-per-node {n} -m {TRAIN_MODULE}"
        else:
            train = f"{python} -m {TRAIN_MODULE}"
        return f"{devices} -- {train}"


def logged(command: str) -> str:
    """The shell line of a DAG job: its output goes to the job's log, and on failure the log's last
    lines go to the terminal too."""
    return (
        f"{command} > {{log}} 2>&1 || {{{{ status=$?; echo '--- last lines of {{log}}:' >&2; "
        f"tail -n 15 {{log}} >&2; exit $status; }}}}"
    )


def check_outputs(argv: list[str] | None = None) -> int:
    """python -m replication.dag.plan CONFIG.yaml [KEY=VALUE ...]: is every final output there?

    The same KEY=VALUE overrides as snakemake's --config; exits 1 naming whatever is missing or empty.
    """
    parser = cli.parser("replication.dag.plan", check_outputs.__doc__)
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
