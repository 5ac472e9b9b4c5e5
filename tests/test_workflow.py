"""The Snakemake DAG: dry runs of every scale, and the plan behind them."""

import re
import subprocess
import sys

import pytest
import yaml

from replication.config import ConfigError
from replication.workflow import DEFAULTS, Plan, check_outputs

from .conftest import REPO

SCALES = ["smoke", "cpu", "gpu1", "paper"]


def dry_run(*args: str, cwd=REPO) -> dict[str, int]:
    """Job counts by rule of `snakemake -n` (no data, no GPU, nothing run)."""
    snakemake = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", *args]
    done = subprocess.run(snakemake, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stats = done.stdout.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def expected_runs(config_file: str) -> dict[str, int]:
    config = {**DEFAULTS, **yaml.safe_load((REPO / config_file).read_text())}
    config["experiments_dir"] = str(REPO / "experiments")
    plan = Plan(config)
    return {e: len(plan.runs(e)) for e in plan.specs}


@pytest.mark.slow
@pytest.mark.parametrize("scale", SCALES)
def test_dry_run_of_every_scale_lists_every_run(scale, tmp_path):
    paths = [f"runs_dir={tmp_path}/runs", f"data_dir={tmp_path}/data", f"results_dir={tmp_path}/results"]
    jobs = dry_run("--configfile", f"config/{scale}.yaml", "--config", *paths)
    runs = expected_runs(f"config/{scale}.yaml")
    assert jobs["train"] == jobs["configure_run"] == sum(runs.values())
    assert jobs["aggregate"] == len(runs) and jobs["claims"] == 1
    assert all(jobs[f"figures_{e}"] == 1 for e in runs)
    if scale in ("smoke", "cpu", "paper"):
        assert all(n >= 2 * 4 for n in runs.values())  # every method, at least two seeds
    if scale == "paper":
        assert runs["forgetting_separation"] >= 20 * 4 and runs["fineweb_pretrain"] >= 3 * 4


@pytest.mark.slow
def test_default_config_is_the_paper_scale(tmp_path):
    jobs = dry_run("--config", f"runs_dir={tmp_path}/runs", f"results_dir={tmp_path}/results")
    assert jobs["train"] == sum(expected_runs("config/paper.yaml").values())


def test_config_is_validated_before_any_job_runs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scale: cpu\nexperiments: [arithmetic_ood]\nthreads_per_rnu: 2\n")
    snakemake = [sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)]
    done = subprocess.run(snakemake, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "threads_per_rnu" in done.stdout + done.stderr


def test_plan_rejects_a_scale_an_experiment_lacks(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.yaml").write_text(
        "experiment: demo\nmethods: {ce: {}}\nscales: {smoke: {seeds: [0]}}\n"
    )
    plan = Plan({**DEFAULTS, "scale": "cpu", "experiments": ["demo"], "experiments_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="has no scale 'cpu'"):
        plan.runs("demo")


def test_launcher_uses_torchrun_for_several_processes():
    config = {**DEFAULTS, "scale": "paper", "experiments": [], "nproc_per_run": 8,
              "per_experiment": {"forgetting_separation": {"nproc_per_run": 1, "gpus_per_run": 0}}}  # fmt: skip
    plan = Plan(config)
    assert plan.launcher("py", "fineweb_pretrain") == "py -m torch.distributed.run --standalone --nproc-per-node 8 -m"
    assert plan.launcher("py", "forgetting_separation") == "py -m"
    assert plan.job("forgetting_separation", "gpus_per_run") == 0 and plan.job("fineweb_pretrain", "nproc_per_run") == 8
    assert Plan({**DEFAULTS, "scale": "cpu", "experiments": []}).launcher("py", "x") == "py -m"


def test_output_check_names_what_is_missing(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"scale: smoke\nexperiments: [arithmetic_ood]\nexperiments_dir: {REPO / 'experiments'}\n")
    assert check_outputs([str(config), f"results_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert f"missing or empty: {tmp_path}/smoke/CLAIMS.md" in err
    assert "table.md" in err
