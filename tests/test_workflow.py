"""The Snakemake DAG: dry runs of every scale, and the plan behind them."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from replication.config.base import ConfigError
from replication.dag.plan import Plan, check_outputs
from replication.dag.schema import defaults, resolve_global_config

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
    config = {**defaults(), **yaml.safe_load((REPO / config_file).read_text())}
    config["experiments_dir"] = str(REPO / "experiments")
    plan = Plan(config)
    return {e: len(plan.runs(e)) for e in plan.specs}


@pytest.mark.slow
@pytest.mark.parametrize("scale", SCALES)
def test_dry_run_of_every_scale_lists_every_run(scale, tmp_path):
    paths = [f"runs_dir={tmp_path}/runs", f"data_dir={tmp_path}/data", f"results_dir={tmp_path}/results"]
    jobs = dry_run("--configfile", f"config/{scale}.yaml", "--config", *paths)
    runs = expected_runs(f"config/{scale}.yaml")
    # the runs that need GPUs train in train_gpu, the others in train (workflow/rules/train.smk)
    assert jobs.get("train", 0) + jobs.get("train_gpu", 0) == jobs["configure_run"] == sum(runs.values())
    gpu_runs = (
        sum(n for e, n in runs.items() if e != "forgetting_separation") if scale in ("gpu1", "paper") else 0
    )
    assert jobs.get("train_gpu", 0) == gpu_runs
    assert jobs["aggregate"] == len(runs) and jobs["claims"] == 1
    assert all(jobs[f"figures_{e}"] == 1 for e in runs)
    if scale in ("smoke", "cpu", "paper"):
        assert all(n >= 2 * 4 for n in runs.values())  # every method, at least two seeds
    if scale == "paper":
        assert runs["forgetting_separation"] >= 20 * 4 and runs["fineweb_pretrain"] >= 3 * 4


@pytest.mark.slow
def test_default_config_is_the_paper_scale(tmp_path):
    jobs = dry_run("--config", f"runs_dir={tmp_path}/runs", f"results_dir={tmp_path}/results")
    runs = expected_runs("config/paper.yaml")
    assert (
        jobs["train"] == runs["forgetting_separation"]
        and jobs["train_gpu"] == sum(runs.values()) - jobs["train"]
    )


def snakemake_fails(*args: str, cwd=REPO) -> str:
    """stderr + stdout of a snakemake call that must fail before any job runs."""
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0, done.stdout[-2000:]
    return done.stderr + done.stdout


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "scale: cpu\nexperiments: [arithmetic_ood]\nthreads_per_rnu: 2\n",
            "unknown key 'threads_per_rnu' (did you mean 'threads_per_run'?)",
        ),
        (
            "scale: smok\nexperiments: [arithmetic_ood]\n",
            "experiment arithmetic_ood has no scale 'smok'; its scales: cpu, gpu1, paper, smoke",
        ),
        ("experiments: [arithmetic_ood]\n", "the config names no scale: add `scale: smoke|cpu|gpu1|paper`"),
        (
            "scale: cpu\nexperiments: [arithmetc_ood]\n",
            "no experiment 'arithmetc_ood' in experiments/ (did you mean",
        ),
        ("scale: cpu\nmethods: [gpat]\n", "methods.0: 'gpat' is not one of ce, ce_mbe, gapt, gapt_joint"),
        (
            "scale: cpu\nper_experiment: {forgeting_separation: {nproc_per_run: 1}}\n",
            "per_experiment names no experiment 'forgeting_separation' in experiments/ "
            "(did you mean 'forgetting_separation'?)",
        ),
    ],
)
def test_a_bad_global_config_is_one_short_message_before_any_job_runs(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    output = snakemake_fails("--configfile", str(bad))
    assert f"error: the global config: {message}" in output
    assert "Traceback" not in output and "File " not in output and len(output.strip().splitlines()) <= 2


def test_a_global_config_that_omits_keys_gets_the_schema_defaults_and_nothing_else(tmp_path):
    # config/paper.yaml (8 processes per run) is not merged into a config file that names its scale
    config = tmp_path / "c.yaml"
    config.write_text("scale: smoke\nexperiments: [arithmetic_ood]\n")
    paths = [f"runs_dir={tmp_path}/runs", f"results_dir={tmp_path}/results", f"logs_dir={tmp_path}/logs"]
    snakemake = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "-p",
        "--configfile",
        str(config),
        "--config",
        *paths,
    ]
    done = subprocess.run(snakemake, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert (
        "-m replication.training.train " in output and "torch.distributed" not in output
    )  # one process per run
    assert f"TORCHINDUCTOR_CACHE_DIR={tmp_path}/runs/.compile-cache " in output  # one cache for the whole DAG
    assert "--threads 1 " in output and "config/paper.yaml" not in output and "extended by" not in output
    resolved = resolve_global_config({"scale": "smoke"})
    assert resolved == {**defaults(), "scale": "smoke"}
    assert (resolved["threads_per_run"], resolved["gpus_per_run"], resolved["nproc_per_run"]) == (1, 0, 1)
    assert resolved["experiments"] == ["fineweb_pretrain", "arithmetic_ood", "forgetting_separation"]


def test_command_line_values_and_subsets_of_a_scale_file_resolve(tmp_path):
    # snakemake --config seeds=[0,1] threads_per_run=2 hands over strings
    resolved = resolve_global_config({"scale": "cpu", "seeds": ["0", "1"], "threads_per_run": "2"})
    assert resolved["seeds"] == [0, 1] and resolved["threads_per_run"] == 2
    # config/gpu1.yaml with one experiment chosen: its per_experiment entry for another is unused, no error
    gpu1 = yaml.safe_load((REPO / "config" / "gpu1.yaml").read_text())
    experiments_dir = str(REPO / "experiments")
    plan = Plan(
        resolve_global_config(
            {**gpu1, "experiments": ["fineweb_pretrain"], "experiments_dir": experiments_dir}
        )
    )
    assert plan.job("fineweb_pretrain", "gpus_per_run") == 1
    resolved["experiments"].append("x")  # the result is a copy: the defaults stay as the schema states them
    assert defaults()["experiments"] == ["fineweb_pretrain", "arithmetic_ood", "forgetting_separation"]
    config = tmp_path / "c.yaml"
    config.write_text(f"scale: smoke\nexperiments: [arithmetic_ood]\nexperiments_dir: {experiments_dir}\n")
    assert check_outputs([str(config), f"results_dir={tmp_path}", "seeds=[0]", "threads_per_run=2"]) == 1
    assert check_outputs([str(config), "methods=[gpat]"]) == 2


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"scale": "cpu", "threads_per_run": True}, "threads_per_run: Input should be a valid integer"),
        ({"scale": "cpu", "seeds": [0, 1.0]}, "seeds.1: Input should be a valid integer"),
        ({"scale": "cpu", "seeds": ["-1"]}, "seeds.0: Input should be a valid integer"),
        ({"scale": "cpu", "experiments": ["a", "b", "a"]}, "experiments: names an experiment twice: a"),
        (
            {"scale": "cpu", "per_experiment": {"x": {"nproc_per_run": None}}},
            "per_experiment.x.nproc_per_run",
        ),
        ({"scale": "cpu", "outdir": "x"}, "unknown key 'outdir'; valid keys: data_dir, experiments,"),
    ],
)
def test_a_bad_global_config_value_is_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as info:
        resolve_global_config(raw)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_per_experiment_entry_holds_only_the_keys_it_sets():
    raw = {"scale": "cpu", "experiments_dir": str(REPO / "experiments")}
    resolved = resolve_global_config({**raw, "per_experiment": {"arithmetic_ood": {"gpus_per_run": "1"}}})
    assert resolved["per_experiment"] == {"arithmetic_ood": {"gpus_per_run": 1}}


def test_a_wrong_scale_in_make_is_one_line_naming_the_valid_scales():
    done = subprocess.run(
        ["make", "-s", "check-scale", "SCALE=smok"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "*** SCALE=smok is not a scale; choose one of: cpu gpu1 paper smoke.  Stop." in done.stderr
    assert subprocess.run(["make", "-s", "check-scale", "SCALE=cpu"], cwd=REPO).returncode == 0


def test_torch_cpu_installs_the_pinned_release_from_pytorchs_cpu_index_and_only_when_asked(tmp_path):
    pin = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    venv = f"VENV={tmp_path}/venv"
    plan = subprocess.run(
        ["make", "-n", "install", venv, "TORCH=cpu"], cwd=REPO, capture_output=True, text=True
    ).stdout
    lines = plan.splitlines()
    cpu = f'pip install --quiet --index-url https://download.pytorch.org/whl/cpu "torch=={pin}"'
    assert any(line.endswith(cpu) for line in lines)
    assert lines.index(next(line for line in lines if line.endswith(cpu))) < lines.index(
        next(line for line in lines if "-e '.[suite,test,hf,slurm]'" in line)
    )
    default = subprocess.run(["make", "-n", "install", venv], cwd=REPO, capture_output=True, text=True).stdout
    assert "download.pytorch.org" not in default and "-e '.[suite,test,hf,slurm]'" in default
    bad = subprocess.run(
        ["make", "-s", "install", venv, "TORCH=cuda"], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "error: TORCH=cuda" in bad.stderr and not (tmp_path / "venv").exists()


@pytest.mark.slow
def test_a_failed_job_shows_its_log_tail_and_the_other_experiments_still_finish(tmp_path):
    """prepare_data of a FineWeb copy whose sample is absent fails; the MLP experiment runs to its figures."""
    for name, source in (("broken", "fineweb_pretrain"), ("good", "forgetting_separation")):
        spec = yaml.safe_load((REPO / "experiments" / source / "config.yaml").read_text())
        spec["experiment"] = name
        if name == "broken":
            spec["datasets"]["fineweb_sample_bytes"]["path"] = "absent.jsonl"
        (tmp_path / "experiments" / name).mkdir(parents=True)
        (tmp_path / "experiments" / name / "config.yaml").write_text(yaml.safe_dump(spec))
        plan = {
            **yaml.safe_load((REPO / "experiments" / source / "plan.yaml").read_text()),
            "experiment": name,
        }
        (tmp_path / "experiments" / name / "plan.yaml").write_text(yaml.safe_dump(plan))
    config = {
        "scale": "smoke",
        "experiments": ["broken", "good"],
        "methods": ["ce", "gapt"],
        "seeds": [0],
        **{f"{k}_dir": str(tmp_path / k) for k in ("experiments", "runs", "results", "logs", "data")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    snakemake = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "2",
        "--keep-going",
        "--quiet",
        "rules",
        "--configfile",
        str(tmp_path / "c.yaml"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(snakemake, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode != 0
    log = tmp_path / "logs" / "data" / "fineweb_sample_bytes.log"
    assert f"--- last lines of {log}:" in done.stderr
    assert "no source can be read here. Two ways out" in done.stderr  # the reason itself, on the terminal
    good = tmp_path / "results" / "smoke" / "good"
    assert (good / "table.md").is_file() and (good / "separation.png").is_file()
    assert not (tmp_path / "results" / "smoke" / "CLAIMS.md").exists()
    assert "--keep-going" in (REPO / "Makefile").read_text().split("\nsmoke:")[1].split("\n\n")[0]


def test_plan_rejects_a_scale_an_experiment_lacks(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.yaml").write_text(
        "experiment: demo\nmethods: {ce: {}}\nscales: {smoke: {seeds: [0]}}\n"
    )
    plan = Plan({**defaults(), "scale": "cpu", "experiments": ["demo"], "experiments_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="has no scale 'cpu'; its scales: smoke"):
        plan.runs("demo")


def test_launcher_uses_torchrun_for_several_processes_and_the_training_command_otherwise():
    config = {
        **defaults(),
        "scale": "paper",
        "experiments": [],
        "nproc_per_run": 8,
        "gpus_per_run": 8,
        "per_experiment": {
            "forgetting_separation": {"nproc_per_run": 1, "gpus_per_run": 0},
            "arithmetic_ood": {"nproc_per_run": 1, "gpus_per_run": 1},
        },
    }
    plan = Plan(config)
    torchrun = "py -m torch.distributed.run --standalone --nproc-per-node 8 -m replication.training.train"
    devices = "py -m replication.dag.devices"  # each job under its own GPUs (none for 0)
    assert plan.launcher("py", "fineweb_pretrain") == f"{devices} 8 -- {torchrun}"
    assert plan.launcher("py", "forgetting_separation") == f"{devices} 0 -- py -m replication.training.train"
    assert plan.launcher("py", "arithmetic_ood") == f"{devices} 1 -- py -m replication.training.train"
    assert (
        Plan({**defaults(), "scale": "cpu", "experiments": []}).launcher("py", "x")
        == f"{devices} 0 -- py -m replication.training.train"
    )
    given = Plan({**config, "gpus": 4})  # the machine's GPUs, given once
    assert given.launcher("py", "arithmetic_ood") == f"{devices} 1 --of 4 -- py -m replication.training.train"
    shared = Plan({**config, "jobs_per_gpu": 3})
    assert (
        shared.launcher("py", "arithmetic_ood")
        == f"{devices} 1 --per-gpu 3 -- py -m replication.training.train"
    )


def test_output_check_names_what_is_missing(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"scale: smoke\nexperiments: [arithmetic_ood]\nexperiments_dir: {REPO / 'experiments'}\n"
    )
    assert check_outputs([str(config), f"results_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert f"missing or empty: {tmp_path}/smoke/CLAIMS.md" in err
    assert "table.md" in err


@pytest.mark.slow
def test_two_smoke_dags_in_one_clone_run_side_by_side_without_touching_each_other(tmp_path):
    """`make smoke` twice at once, each in its own scratch folder under one .smoke/: both pass."""
    config = tmp_path / "tiny.yaml"
    config.write_text("scale: smoke\nexperiments: [forgetting_separation]\nmethods: [ce, gapt]\nseeds: [0]\n")
    bin_dir = os.path.dirname(sys.executable)
    make = [
        "make",
        "-s",
        "-o",
        f"{bin_dir}/.installed",
        "smoke",
        f"BIN={bin_dir}",
        f"SMOKE={tmp_path}/.smoke",
        f"SMOKE_CONFIG={config}",
        "KEEP=1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = [
        subprocess.Popen(make, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    folders = sorted((tmp_path / ".smoke").iterdir())
    assert len(folders) == 2 and all(
        f"smoke DAG passed; its outputs are in {f}" in "".join(outputs) for f in folders
    )
    for folder in folders:
        assert (folder / "results" / "smoke" / "CLAIMS.md").is_file()
        # the DAG ends by naming what it wrote
        assert f"The smoke scale is done. Its results are in {folder}/results/smoke/:" in "".join(outputs)


def test_a_run_that_names_an_undeclared_data_set_fails_the_plan_naming_the_declared_ones(tmp_path):
    spec = yaml.safe_load((REPO / "experiments" / "fineweb_pretrain" / "config.yaml").read_text())
    spec["scales"]["smoke"]["config"]["task"]["dataset"] = "fineweb_typo"
    (tmp_path / "fineweb_pretrain").mkdir()
    (tmp_path / "fineweb_pretrain" / "config.yaml").write_text(yaml.safe_dump(spec))
    config = {**defaults(), "scale": "smoke", "experiments": ["fineweb_pretrain"]}
    with pytest.raises(ConfigError) as error:
        Plan({**config, "experiments_dir": str(tmp_path)}).check()
    declared = ", ".join(sorted(spec["datasets"]))
    assert f"data set 'fineweb_typo' is not in fineweb_pretrain's datasets: {declared}" in str(error.value)


def test_the_plan_refuses_ranks_sharing_a_gpu_and_jobs_larger_than_the_machine():
    base = {"scale": "gpu1", "experiments": ["arithmetic_ood"], "gpus_per_run": 1}
    base["experiments_dir"] = str(REPO / "experiments")
    Plan(resolve_global_config({**base, "gpus": 1})).check()  # one GPU, one job at a time: fine
    with pytest.raises(ConfigError, match="gpus_per_run 1 is more than the 0 GPUs the config gives"):
        Plan(resolve_global_config({**base, "gpus": 0})).check()
    with pytest.raises(
        ConfigError, match="nproc_per_run 2 is more than gpus_per_run 1, so ranks would share"
    ):
        Plan(resolve_global_config({**base, "nproc_per_run": 2})).check()
    Plan(resolve_global_config({**base, "nproc_per_run": 2, "gpus_per_run": 0})).check()  # CPU ranks (gloo)


@pytest.mark.slow
def test_a_part_built_alone_adds_its_claims_to_the_parts_already_built(tmp_path):
    """make replicate PART=forgetting_separation where the scale already holds arithmetic_ood's
    results: the DAG trains and aggregates experiment 3 alone, and its claims rule reads arithmetic's
    committed tables as they are, never making them again."""
    results = tmp_path / "results"
    built = results / "smoke" / "arithmetic_ood"
    built.mkdir(parents=True)
    for name in ("summary.csv", "runs.csv", "phases.csv", "alignment.csv"):
        (built / name).write_text("")
    paths = {"runs_dir": str(tmp_path / "runs"), "results_dir": str(results)}
    part = Plan(resolve_global_config({"scale": "smoke", "experiments": ["forgetting_separation"], **paths}))
    assert part.published() == []
    assert part.claims_experiments() == ["arithmetic_ood", "forgetting_separation"]
    kept = [str(built / name) for name in ("summary.csv", "runs.csv", "phases.csv", "alignment.csv")]
    assert [i for i in part.claims_inputs() if "arithmetic_ood" in i] == kept
    whole = Plan(resolve_global_config({"scale": "smoke", **paths}))
    assert whole.published() == ["arithmetic_ood"]  # what crosscheck checks; the others are pending
    assert whole.claims_experiments() == ["fineweb_pretrain", "arithmetic_ood", "forgetting_separation"]
    config = ["--configfile", "config/smoke.yaml", "--config", *(f"{k}={v}" for k, v in paths.items())]
    jobs = dry_run(*config, "experiments=[forgetting_separation]")
    assert jobs["aggregate"] == 1 and jobs["claims"] == 1 and "figures_arithmetic_ood" not in jobs
    assert jobs["train"] == len(part.runs("forgetting_separation"))
