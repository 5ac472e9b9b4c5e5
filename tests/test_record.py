"""The run-record API: where a run lives under a runs root, the pattern of that folder the DAG's rules
write, and the reading of a finished run."""

import json
import re
import subprocess
import sys
from dataclasses import asdict

import pytest
from snakemake.io import regex_from_filepattern

from replication.config.run import resolve_run_config, write_run_config
from replication.dag.plan import Plan
from replication.dag.schema import defaults
from replication.runtime import record
from replication.runtime.record import RunId, read_run, runs_root
from replication.science.errors import RunFolderError

from .conftest import REPO

ARITHMETIC = REPO / "experiments" / "arithmetic_ood" / "config.yaml"
RUN = RunId("arithmetic_ood", "smoke", "gapt", 1)


def test_a_run_lives_in_its_own_folder_under_the_runs_root(tmp_path):
    folder = RUN.folder(tmp_path / "runs")
    assert folder == tmp_path / "runs" / "arithmetic_ood" / "smoke" / "gapt" / "seed1"
    assert RUN.path == "arithmetic_ood/smoke/gapt/seed1"
    assert runs_root(folder / "summary.json") == tmp_path / "runs"
    assert RunId.pattern() == "{experiment}/{scale}/{method}/seed{seed}"


def test_the_pattern_reads_back_every_run_the_dag_asks_for(tmp_path):
    plan = Plan({**defaults(), "scale": "smoke", "runs_dir": str(tmp_path)}).check()
    pattern = re.compile(regex_from_filepattern(f"{tmp_path}/{RunId.pattern()}/summary.json"))
    runs = [run for e in plan.specs for run in plan.runs(e) + plan.study_runs(e)]
    assert len(runs) > 20
    for run in runs:
        wildcards = pattern.match(plan.summary(run)).groupdict()
        assert RunId(**{**wildcards, "seed": int(wildcards["seed"])}) == run
        assert {k: str(v) for k, v in asdict(run).items()} == wildcards


def test_the_train_rule_writes_the_summary_in_the_folder_of_its_run(tmp_path):
    """Snakemake itself matches a run's summary.json to the train rule, with the run's wildcards."""
    target = RUN.folder(tmp_path / "runs") / "summary.json"
    dirs = [f"{k}={tmp_path}/{k.split('_')[0]}" for k in ("runs_dir", "results_dir", "logs_dir", "data_dir")]
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--configfile",
        "config/smoke.yaml",
        "--config",
        *dirs,
    ]
    done = subprocess.run(
        [*command, "--", str(target)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    train = done.stdout[done.stdout.index("rule train:") :]
    assert f"output: {target}\n" in train
    assert "wildcards: experiment=arithmetic_ood, scale=smoke, method=gapt, seed=1\n" in train


def _finished_run(runs, **summary):
    config = resolve_run_config(ARITHMETIC, RUN.scale, RUN.method, RUN.seed)
    folder = RUN.folder(runs)
    write_run_config(config, folder / "config.yaml")
    records = [{"kind": "train", "step": 0, "phase": "memorize"}, {"kind": "eval", "step": 1, "val/ce": 2.5}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"metrics": {"final/val/ce": 2.5}, "config": config.to_dict(), **summary}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder, records


def test_a_finished_run_is_its_summary_metrics_and_config(tmp_path):
    runs = tmp_path / "runs"
    assert read_run(runs, RUN) is None  # not finished: no summary.json
    folder, records = _finished_run(runs, n_params=1234)
    run = read_run(runs, RUN)
    assert (run.id, run.folder, run.n_params) == (RUN, folder, 1234)
    assert run.summary["metrics"] == {"final/val/ce": 2.5}
    assert run.metrics() == records
    assert (run.config().method, run.config().seed) == ("gapt", 1)
    (folder / "config.yaml").write_text((folder / "config.yaml").read_text().replace("seed: 1", "seed: 2"))
    with pytest.raises(RunFolderError, match="was written by a run of another config \\(seed: 1 -> 2"):
        run.config()


def test_a_summary_without_n_params_names_the_run_to_train_again(tmp_path):
    folder, _ = _finished_run(tmp_path / "runs")
    run = read_run(tmp_path / "runs", RUN)
    with pytest.raises(RunFolderError) as error:
        _ = run.n_params
    assert str(error.value) == (
        f"{folder}: summary.json records no n_params (the model's parameter count): train the run again "
        "(delete everything in it but config.yaml)"
    )


def test_provenance_reads_the_state_of_the_whole_checkout_not_of_the_package_alone():
    # a run whose experiment file, Snakefile or global config was edited is not of a clean commit
    assert record.SOURCE_ROOT == REPO and (record.SOURCE_ROOT / "pyproject.toml").is_file()
    outside = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "experiments"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if outside.returncode == 0 and outside.stdout.strip():  # the checkout has an edit outside replication/
        assert record.git_state()["git_dirty"] is True
