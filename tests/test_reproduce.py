"""A run is its config: the by-hand commands of docs/running.md train the run the DAG trains, the
thread count included, and a committed run comes back bit for bit on a CPU like the one that made it."""

import csv
import gzip
import json

import pytest
import torch
import yaml

from replication.runtime.record import CONFIG_NAME, device_description
from replication.training import configure
from replication.training import train as loop

from .conftest import REPO

FORGETTING = REPO / "experiments" / "forgetting_separation" / "config.yaml"
COMMITTED = REPO / "results" / "cpu" / "forgetting_separation"


def configure_run(out, *extra, scale="cpu", method="gapt", seed=0):
    """Configure into the run folder ``out``; the config's path."""
    argv = [str(FORGETTING), "--scale", scale, "--method", method, "--seed", str(seed), "--out", f"{out}/"]
    assert configure.main([*argv, *extra]) == 0
    return out / CONFIG_NAME


def test_the_by_hand_config_is_the_dags_and_threads_are_part_of_it(tmp_path):
    """The DAG configures with its job's threads (--threads 1 --dag --force); the documented by-hand
    command, with none, writes the same file. Another thread count is another run."""
    dag = configure_run(tmp_path / "runs" / "run", "--threads", "1", "--dag", "--force")
    by_hand = configure_run(tmp_path / "scratch")
    assert dag.read_bytes() == by_hand.read_bytes()
    assert yaml.safe_load(by_hand.read_text())["train"]["threads"] == 1
    two = configure_run(tmp_path / "two", "--threads", "2")
    assert yaml.safe_load(two.read_text())["train"]["threads"] == 2
    assert loop.load_run_config(two).digest() != loop.load_run_config(by_hand).digest()


def test_a_run_trains_with_its_configs_threads_and_the_command_line_cannot_change_them(tmp_path, capsys):
    config_path = configure_run(tmp_path / "run", "--threads", "2", scale="smoke")
    seen = []
    real = loop.Trainer.run

    def spy(self):
        seen.append(torch.get_num_threads())
        return real(self)

    loop.Trainer.run = spy
    try:
        assert loop.main([str(config_path), "--progress", "lines", "--threads", "1"]) == 2
        assert "--threads 1, but" in capsys.readouterr().err and not seen
        assert loop.main([str(config_path), "--progress", "lines"]) == 0
    finally:
        loop.Trainer.run = real
        torch.set_num_threads(1)
    assert seen == [2]
    summary = json.loads((config_path.parent / "summary.json").read_text())
    assert summary["provenance"]["torch_threads"] == 2


def test_configure_says_what_it_wrote_and_refuses_to_replace_another_config(tmp_path, capsys):
    path = configure_run(tmp_path / "run")
    assert "wrote forgetting_separation cpu gapt seed 0 (digest" in capsys.readouterr().err
    mtime = path.stat().st_mtime_ns
    configure_run(tmp_path / "run")
    assert "already this config" in capsys.readouterr().err and path.stat().st_mtime_ns == mtime
    argv = [
        str(FORGETTING),
        "--scale",
        "cpu",
        "--method",
        "gapt",
        "--seed",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    assert configure.main(argv) == 2
    err = capsys.readouterr().err
    assert "holds another config (seed: 0 -> 1" in err and "--force" in err
    assert yaml.safe_load(path.read_text())["seed"] == 0
    assert configure.main([*argv, "--force"]) == 0 and yaml.safe_load(path.read_text())["seed"] == 1


def test_a_config_written_before_train_threads_existed_is_the_same_run(tmp_path, capsys):
    """A run folder configured before a field was added holds a file without it: the same run, left
    untouched, as training's own comparison (config.run.config_mismatch) takes it."""
    path = configure_run(tmp_path / "run")
    old = yaml.safe_load(path.read_text())
    del old["train"]["threads"]
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    capsys.readouterr()
    configure_run(tmp_path / "run")
    assert "already this config" in capsys.readouterr().err
    assert "threads" not in yaml.safe_load(path.read_text())["train"]


def test_configure_keeps_by_hand_runs_out_of_the_dags_runs_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(configure, "DAG_RUNS", tmp_path / "runs")
    argv = [str(FORGETTING), "--scale", "cpu", "--method", "gapt", "--seed", "0"]
    assert configure.main([*argv, "--out", f"{tmp_path / 'runs' / 'x'}/"]) == 2
    err = capsys.readouterr().err
    assert "the DAG's runs folder" in err and "--out scratch/gapt-seed0/" in err
    assert not (tmp_path / "runs").exists()
    assert configure.main([*argv, "--out", f"{tmp_path / 'runs' / 'x'}/", "--dag"]) == 0
    # the runs folder of the directory the DAG runs from, for an installed copy of the package
    monkeypatch.setattr(configure, "DAG_RUNS", tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    assert configure.main([*argv, "--out", "runs/y/"]) == 2
    assert "the DAG's runs folder" in capsys.readouterr().err


def _committed(experiment: str, name: str, method: str, seed: int) -> list[dict]:
    path = REPO / "results" / "cpu" / experiment / name
    if not path.is_file():  # a scale built one part at a time (make replicate PART=...)
        pytest.skip(
            f"{path.parent} holds no results yet: the part of the cpu scale that makes them has not run"
        )
    with (gzip.open if name.endswith(".gz") else open)(path, "rt") as handle:
        return [r for r in csv.DictReader(handle) if r["method"] == method and r["seed"] == str(seed)]


def _skip_unless_this_cpu_made(run: dict) -> None:
    """Skip, saying why, unless this machine runs the kernels the committed run ran: its recorded CPU
    model, instruction set and torch. Runs made before runs.csv recorded the CPU match no machine."""
    here = device_description(torch.device("cpu"))
    wanted = {
        "cpu_model": run.get("cpu_model") or None,
        "cpu_capability": run.get("cpu_capability") or None,
        "torch": run["torch"],
    }
    have = {
        "cpu_model": here["cpu_model"],
        "cpu_capability": here["cpu_capability"],
        "torch": torch.__version__,
    }
    if wanted != have:
        pytest.skip(
            f"the committed run was made with {wanted} and this machine has {have}: float32 results are "
            "bit-identical only where the same kernels run (docs/running.md, 'One run by hand')"
        )


@pytest.mark.slow
def test_a_committed_run_comes_back_bit_for_bit_on_the_kind_of_cpu_that_made_it(tmp_path):
    """The by-hand command of docs/running.md against the committed forgetting run (gapt, seed 0): every
    summary metric equal to its last digit, where this machine runs the kernels the committed run ran
    (the thread count is the config's)."""
    (run,) = _committed("forgetting_separation", "runs.csv", "gapt", 0)
    assert run["torch_threads"] == "1"  # what the by-hand command's config sets
    _skip_unless_this_cpu_made(run)
    committed = {
        r["metric"]: r["value"] for r in _committed("forgetting_separation", "summary.csv", "gapt", 0)
    }
    config_path = configure_run(tmp_path / "run")
    assert loop.main([str(config_path), "--progress", "lines"]) == 0
    summary = json.loads((config_path.parent / "summary.json").read_text())
    counts = ("phase_changes", "compress_steps", "nonfinite_steps", "tokens", "steps")  # not the times
    ours = {**summary["metrics"], **{key: summary[key] for key in counts if key in summary}}
    # the run's own numbers; those aggregate derives from other runs (alleviation vs ce) are not its
    got = {key: float(ours[key]) for key in committed if key in ours}  # a double's repr reads back exactly
    assert len(got) >= 30 and got == {key: float(committed[key]) for key in got}


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, steps", [("arithmetic_ood", 36), ("fineweb_pretrain", 11)], ids=["arithmetic", "fineweb"]
)
def test_the_first_steps_of_a_committed_run_come_back_on_the_kind_of_cpu_that_made_it(
    tmp_path, experiment, steps
):
    """A whole multiplication or FineWeb run takes minutes: its first ``steps`` steps, trained from the
    run's own config and stopped as a stop request stops it, give the committed curves' training
    records (curves.csv.gz, 7 significant digits) and the first evaluation."""
    from replication.config.run import resolve_run_config
    from replication.training.stop import TrainingInterrupted

    (run,) = _committed(experiment, "runs.csv", "gapt", 0)
    assert run["torch_threads"] == "1"
    _skip_unless_this_cpu_made(run)
    wanted = {
        (r["kind"], int(r["step"]), r["metric"]): r["value"]
        for r in _committed(experiment, "curves.csv.gz", "gapt", 0)
        if not r["layer"] and (r["kind"] == "eval" and r["step"] == "0" or int(r["step"]) < steps)
    }
    config = resolve_run_config(REPO / "experiments" / experiment / "config.yaml", "cpu", "gapt", 0)
    data = tmp_path / "data"
    if experiment == "fineweb_pretrain":
        from replication.tasks.fineweb.prepare import main as prepare

        dataset = config.task.dataset
        argv = [str(REPO / "experiments" / experiment / "config.yaml"), "--dataset", dataset]
        assert prepare([*argv, "--out", str(data / dataset), "--root", str(REPO)]) == 0
    trainer = loop.Trainer(config, tmp_path / "run", data_root=data, show_progress=False)
    done = iter(range(1, steps + 1))
    trainer.stop.stops_after_step = lambda: next(done) == steps
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    records = [
        r for r in loop.read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] in ("train", "eval")
    ]
    got = {
        (r["kind"], r["step"], key): f"{value:.7g}"
        for r in records
        for key, value in r.items()
        if (r["kind"], r["step"], key) in wanted and isinstance(value, float)
    }
    assert len(got) >= 5 and got == {key: wanted[key] for key in got}
