"""profiles/slurm turned into sbatch arguments by the Snakemake SLURM executor plugin (the `slurm`
extra), without a cluster: what a training job of each scale would ask for. The real submission runs
in `make test-slurm` (tests/cluster/)."""

import pytest
import yaml

plugin = pytest.importorskip(
    "snakemake_executor_plugin_slurm", reason="the `slurm` extra: pip install -e '.[slurm]'"
)

from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # noqa: E402
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402

from replication.dag.plan import Plan  # noqa: E402
from replication.dag.schema import resolve_global_config  # noqa: E402

from .conftest import REPO  # noqa: E402

PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())


class Resources(dict):
    __getattr__ = dict.__getitem__


class Job:
    def __init__(self, resources, threads):
        self.resources = Resources(resources)
        self.threads = threads


def sbatch_arguments(scale: str, rule: str, experiment: str = "fineweb_pretrain") -> str:
    """The sbatch line of one job of `rule`: the profile's default and rule resources, and the
    rule's own `gpu` (the scale's gpus_per_run), as the plugin builds it."""
    config = yaml.safe_load((REPO / "config" / f"{scale}.yaml").read_text())
    plan = Plan(resolve_global_config(config))
    resources = {**PROFILE["default-resources"], **PROFILE["set-resources"].get(rule, {})}
    threads = 1
    if rule == "train":  # the rule's own: threads and gpu from the scale's file (workflow/rules/train.smk)
        resources["gpu"] = plan.job(experiment, "gpus_per_run")
        threads = plan.job(experiment, "threads_per_run")
    job = Job(resources, threads)
    params = {
        "run_uuid": "x",
        "slurm_logfile": "x.log",
        "comment_str": "x",
        "workdir": None,
        "account": f"-A {resources['slurm_account']}",
        "partition": f"-p {resources['slurm_partition']}",
    }
    return get_submit_command(job, params) + set_gres_string(job)


def test_a_paper_scale_training_job_asks_for_one_node_with_eight_gpus_once():
    line = sbatch_arguments("paper", "train")
    print(line)
    assert " --gpus=8" in line and "--gres" not in line  # requested once, the plugin's way
    assert "-p gpu" in line and "--nodes=1" in line and "--mem 512000" in line and "--cpus-per" in line


def test_a_light_job_and_a_cpu_scale_job_ask_for_no_gpu():
    assert "--gpus" not in sbatch_arguments("paper", "aggregate")
    assert "--gpus" not in sbatch_arguments("cpu", "train")
    assert " --gpus=1" in sbatch_arguments("gpu1", "train")


def test_the_profile_names_the_cluster_only_by_account_and_partitions():
    """What a user fills in: the account and two partition names; the rest is scale, not cluster."""
    named = {k: v for k, v in PROFILE["default-resources"].items() if k.startswith("slurm_")}
    assert named == {"slurm_account": "YOUR_ACCOUNT", "slurm_partition": "cpu"}
    for rule, resources in PROFILE["set-resources"].items():
        assert {k for k in resources if k.startswith("slurm_")} <= {"slurm_partition"}, rule
    assert PROFILE["show-failed-logs"] is True
