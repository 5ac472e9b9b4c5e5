# The replication DAG. `snakemake --cores all` runs the paper scale; `--configfile config/<scale>.yaml`
# selects another (smoke, cpu, gpu1). Every job is a `python -m replication.<command>` call that can
# also be run by hand; the Python package decides what to run (replication/workflow.py).
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/paper.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

from replication.workflow import TABLE_FILES, Plan

PLAN = Plan(config)
RUNS, DATA, LOGS = config["runs_dir"], config["data_dir"], config["logs_dir"]
PYTHON = sys.executable  # the environment Snakemake runs in is the one every job runs in


wildcard_constraints:
    method="ce|ce_mbe|gapt|gapt_joint",
    seed=r"\d+",
    experiment=r"[a-z0-9_]+",
    scale=r"[a-z0-9_]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        PLAN.final_outputs(),
