"""profiles/slurm turned into sbatch arguments by the Snakemake SLURM executor plugin (the `slurm`
extra), without a cluster: what a training job of each scale would ask for. The real submission runs
in `make test-slurm` (tests/cluster/)."""

import re

import pytest
import yaml

plugin = pytest.importorskip(
    "snakemake_executor_plugin_slurm", reason="the `slurm` extra: pip install -e '.[slurm]'"
)

from snakemake_executor_plugin_slurm.submit_string import get_submit_command  # noqa: E402
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra  # noqa: E402

from replication.dag.plan import Plan  # noqa: E402
from replication.dag.schema import resolve_global_config  # noqa: E402

from .conftest import REPO  # noqa: E402

PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())


class Resources(dict):
    def __getattr__(self, name):  # the plugin reads resources as attributes, a missing one as None
        return self.get(name)


class Job:
    def __init__(self, resources, threads):
        self.resources = Resources(resources)
        self.threads = threads


def sbatch_arguments(scale: str, rule: str, experiment: str = "fineweb_pretrain") -> str:
    """The sbatch line of one job of `rule` for `experiment`: the profile's default and rule resources,
    and a training rule's own threads and `gpu` (the scale's threads_per_run and gpus_per_run,
    workflow/rules/train.smk), as the plugin builds it."""
    config = yaml.safe_load((REPO / "config" / f"{scale}.yaml").read_text())
    plan = Plan(resolve_global_config(config))
    resources = {**PROFILE["default-resources"], **PROFILE["set-resources"].get(rule, {})}
    threads = 1
    if rule in ("train", "train_gpu"):
        assert re.fullmatch(plan.experiments_pattern(gpu=rule == "train_gpu"), experiment), (rule, experiment)
        resources["gpu"] = plan.job(experiment, "gpus_per_run")
        threads = plan.job(experiment, "threads_per_run")
    job = Job(resources, threads)
    validate_slurm_extra(job)
    params = {
        "run_uuid": "x",
        "slurm_logfile": "x.log",
        "comment_str": "x",
        "workdir": None,
        "account": f"-A {resources['slurm_account']}",
        "partition": f"-p {resources['slurm_partition']}",
    }
    line = get_submit_command(job, params) + set_gres_string(job)
    return line.split("--comment x ")[1]  # what the job asks for


def training_rule(scale: str, experiment: str) -> str:
    plan = Plan(resolve_global_config(yaml.safe_load((REPO / "config" / f"{scale}.yaml").read_text())))
    return "train_gpu" if plan.job(experiment, "gpus_per_run") > 0 else "train"


EXPERIMENTS = ("fineweb_pretrain", "arithmetic_ood", "forgetting_separation")


@pytest.mark.parametrize("scale", ["smoke", "cpu", "gpu1", "paper"])
def test_every_rule_of_every_scale_asks_for_what_its_job_is(scale):
    """The submit line of each training job and of each light rule, per scale (printed with -s)."""
    for experiment in EXPERIMENTS:
        rule = training_rule(scale, experiment)
        line = sbatch_arguments(scale, rule, experiment)
        print(f"{scale:6} {rule:9} {experiment:22} {line}")
        gpus = {"gpu1": 1, "paper": 8}.get(scale, 0) if experiment != "forgetting_separation" else 0
        if gpus:
            assert rule == "train_gpu" and f" --gpus={gpus}" in line and "-p gpu" in line
            assert "--cpus-per-gpu=8" in line and "--mem-per-cpu 8000" in line and "--nodes=1" in line
            assert "--signal=TERM@300" in line and "-t 720" in line
        else:  # a CPU job: no GPU, not on the GPU partition, the CPUs of its threads
            assert rule == "train" and "--gpus" not in line and "-p cpu" in line
            threads = 1 if scale == "smoke" or experiment == "forgetting_separation" else None
            assert "--cpus-per-task=" in line and (threads is None or "--cpus-per-task=1" in line)
            assert "--mem 4000" in line and "-t 120" in line and "--signal=TERM@60" in line
    for rule in ("configure_run", "aggregate", "claims", "figures_fineweb_pretrain", "prepare_data"):
        line = sbatch_arguments(scale, rule)
        print(f"{scale:6} {rule:9} {'':22} {line}")
        assert "--gpus" not in line and "-p cpu" in line and "--signal" not in line


def test_the_profile_names_the_cluster_only_by_account_and_partitions():
    """What a user fills in: the account and two partition names; the rest is scale, not cluster."""
    named = {k: v for k, v in PROFILE["default-resources"].items() if k.startswith("slurm_")}
    assert named == {"slurm_account": "YOUR_ACCOUNT", "slurm_partition": "cpu"}
    for rule, resources in PROFILE["set-resources"].items():
        assert {k for k in resources if k.startswith("slurm_")} <= {"slurm_partition", "slurm_extra"}, rule
        assert set(resources.get("slurm_extra", "--signal").split("=")[:1]) == {"--signal"}, rule
    assert PROFILE["show-failed-logs"] is True
