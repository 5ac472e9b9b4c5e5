# The replication DAG. `snakemake --cores all` with no config file runs the paper scale
# (config/paper.yaml); `--configfile config/<scale>.yaml` selects another (smoke, cpu, gpu1). A global
# config gets nothing from any other file: a key it omits takes the default that GlobalConfig in
# replication/dag/schema.py states. Every job is a `python -m replication.<command>` call that can also
# be run by hand; the Python package decides what to run (replication/dag/plan.py).
import os  # noqa: F401  (the rules compose paths with os.path)
import sys

from snakemake.utils import min_version

min_version("9.0")

from replication.science.errors import ConfigError
from replication.science.methods import METHOD_NAMES
from replication.dag.plan import TABLE_FILES, Plan, logged
from replication.dag.schema import resolve_global_config
from replication.runtime.record import RunId, runs_root

PAPER_CONFIG = f"{workflow.basedir}/config/paper.yaml"  # what runs when nothing names a config or a scale

if not workflow.overwrite_configfiles and "scale" not in config:
    # nothing names a config file or a scale: the full replication, by this explicit choice
    workflow.configfile(PAPER_CONFIG)

try:
    _resolved = resolve_global_config(config)
    config.clear()
    config.update(_resolved)
    PLAN = Plan(config).check()
except ConfigError as error:
    sys.exit(f"error: the global config: {error}")

RUNS, DATA, LOGS = config["runs_dir"], config["data_dir"], config["logs_dir"]
RUN = RunId.pattern()  # a run folder under RUNS (and its logs under LOGS), with the run's wildcards
# one inductor cache for every training job of the DAG: a run with train.compile reuses the kernels an
# earlier run of the same shapes compiled (the first one pays; the rest load them in seconds)
COMPILE_CACHE = f"{RUNS}/.compile-cache"
PYTHON = sys.executable  # the environment Snakemake runs in is the one every job runs in


wildcard_constraints:
    method="|".join(METHOD_NAMES),  # the method registry
    seed=r"\d+",
    experiment=r"[a-z0-9_]+",
    scale=r"[a-z0-9_]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/study.smk"


rule all:
    default_target: True
    input:
        PLAN.final_outputs(),


onsuccess:
    if all(os.path.exists(path) for path in PLAN.final_outputs()):  # the whole scale, not a single target
        print(PLAN.written())
