"""Fault injection, end to end: each test does to a tiny run what a user, a cluster or a disk does,
through the command lines, and pins what happens (docs/troubleshooting.md).

Every error is short (at most two lines after the progress lines, no traceback) and names the way
out; nothing already computed is lost.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from replication.config.run import write_run_config
from replication.runtime.record import (
    CHECKPOINT_NAME,
    LOCK_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    RunLock,
    read_metrics,
)
from replication.training import configure
from replication.training import train as loop

from .conftest import REPO, tiny_config

TIMING_KEYS = {"time", "step_time", "at", "provenance"}


def comparable(records):
    return [
        {k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records if r.get("event") != "resume"
    ]


def error_lines(err: str) -> list[str]:
    """The lines of a failed command from its first error line on; there is no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(("error:", "interrupted:")))
    return lines[first:]


def write(config, folder):
    path = folder / "config.yaml"
    write_run_config(config, path)
    return path


def run_main(argv, capsys):
    code = loop.main([*map(str, argv), "--progress", "lines"])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run every resumed one is compared with."""
    folder = tmp_path_factory.mktemp("whole")
    assert (
        loop.main(
            [str(write(tiny_config("gapt", train={"checkpoint_every": 4}), folder)), "--progress", "lines"]
        )
        == 0
    )
    return read_metrics(folder / "metrics.jsonl")


def _signal_at(monkeypatch, *, evaluation_at=None, step=None, signum=signal.SIGTERM):
    """Deliver a real signal to this process when the final evaluation (or a training step) starts."""
    if evaluation_at is not None:
        real = loop.Trainer._evaluate

        def evaluate(self, done):
            if done == evaluation_at:
                os.kill(os.getpid(), signum)
            return real(self, done)

        monkeypatch.setattr(loop.Trainer, "_evaluate", evaluate)
    if step is not None:
        real_step = loop.accumulate_gradients

        def accumulate(*args, **kwargs):
            if kwargs["step"] == step:
                os.kill(os.getpid(), signum)
            return real_step(*args, **kwargs)

        monkeypatch.setattr(loop, "accumulate_gradients", accumulate)


# -- interrupts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_final_evaluation_resumes_into_it(tmp_path, monkeypatch, capsys, whole, signum):
    config = write(tiny_config("gapt", train={"checkpoint_every": 4}), tmp_path)
    _signal_at(monkeypatch, evaluation_at=30, signum=signum)
    code, err = run_main([config], capsys)
    assert code == 130
    assert error_lines(err) == [
        f"interrupted: stopped by signal {signum} during the final evaluation; the checkpoint in {tmp_path} "
        "resumes into it when the same command runs again"
    ]
    assert not (tmp_path / "summary.json").exists()
    monkeypatch.undo()
    code, err = run_main([config], capsys)
    assert code == 0, err
    assert f"{tmp_path}: resuming from the final evaluation (resume 1)" in err
    assert "[step" not in err  # no training step ran again
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == comparable(whole)
    assert json.loads((tmp_path / "summary.json").read_text())["resumes"] == 1
    assert not (tmp_path / CHECKPOINT_NAME).exists() and not (tmp_path / PREVIOUS_CHECKPOINT_NAME).exists()


def test_a_signal_during_the_last_step_checkpoints_it_and_resumes_into_the_evaluation(
    tmp_path, monkeypatch, capsys, whole
):
    config = write(tiny_config("gapt", train={"checkpoint_every": 4}), tmp_path)
    _signal_at(monkeypatch, step=29)
    code, err = run_main([config], capsys)
    assert code == 130
    assert error_lines(err)[0].startswith("interrupted: stopped by signal 15 after step 30;")
    monkeypatch.undo()
    code, err = run_main([config], capsys)
    assert code == 0 and "resuming from the final evaluation" in err
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == comparable(whole)


def test_a_signal_mid_run_says_where_it_resumes(tmp_path, monkeypatch, capsys, whole):
    config = write(tiny_config("gapt", train={"checkpoint_every": 4}), tmp_path)
    _signal_at(monkeypatch, step=12)
    assert run_main([config], capsys)[0] == 130
    monkeypatch.undo()
    code, err = run_main([config], capsys)
    assert code == 0 and f"{tmp_path}: resuming from step 13 of 30 (resume 1)" in err
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == comparable(whole)


# -- two writers -----------------------------------------------------------------------------------


def _python(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
    )


@pytest.mark.slow
def test_two_trainers_of_one_folder_one_trains_the_other_refuses(tmp_path):
    """The second trainer starts while the first trains: the first's final evaluation (several
    seconds) is made long enough to outlast the second's start-up (about 1 s, more under load)."""
    config = write(
        tiny_config("ce", train={"steps": 6, "eval_every": 0}, task={"val_batches": 2400}), tmp_path
    )
    command = ["-m", "replication.training.train", str(config), "--threads", "1", "--progress", "lines"]
    first = _python(*command)
    deadline = time.time() + 60
    while (
        time.time() < deadline and not (tmp_path / CHECKPOINT_NAME).exists()
    ):  # it is in its final evaluation
        time.sleep(0.02)
    second = _python(*command)
    code, err = second.wait(timeout=120), second.stderr.read().decode()
    assert first.poll() is None, (
        "the first trainer finished before the second started: make its evaluation longer"
    )
    assert code == 2, err
    (line,) = error_lines(err)
    assert line.startswith(f"error: {tmp_path} is being trained by another process (pid {first.pid} on ")
    assert line.endswith("wait for it to finish, or stop it, then run this command again")
    assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    # the folder is whole: one start, each step once, a summary, and no lock left behind
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(6))
    assert [r.get("event") for r in records if r["kind"] == "event"] == ["start"]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"
    assert not (tmp_path / LOCK_NAME).exists()
    # a third, after the first finished, finds the summary
    third = _python(*command)
    assert third.wait(timeout=120) == 0 and b"already finished" in third.stderr.read()


def test_a_lock_left_by_a_killed_trainer_is_taken_over(tmp_path, capsys, whole):
    config = write(tiny_config("gapt", train={"checkpoint_every": 4}), tmp_path)
    holder = _python(
        "-c",
        f"from replication.runtime.record import RunLock; lock = RunLock({str(tmp_path)!r}); lock.acquire(); "
        "print('held', flush=True); import time; time.sleep(600)",
    )
    assert holder.stdout.readline().strip() == b"held"
    code, err = run_main([config], capsys)
    assert code == 2 and f"is being trained by another process (pid {holder.pid} on " in error_lines(err)[0]
    holder.kill()  # SIGKILL: no clean-up runs, train.lock stays behind
    holder.wait()
    assert (tmp_path / LOCK_NAME).exists()
    code, err = run_main([config], capsys)
    assert code == 0, err
    assert f"{tmp_path}: taking over the lock left by pid {holder.pid} on " in err
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == comparable(whole)


def test_a_file_system_without_locks_gets_a_warning_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    code, err = run_main([write(tiny_config("ce", train={"steps": 2}), tmp_path)], capsys)
    assert code == 0
    assert (
        f"warning: {tmp_path}: the file system cannot lock files (No locks available); "
        "nothing stops a second trainer" in err
    )


def test_a_lock_is_released_when_the_run_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "accumulate_gradients", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        loop.train(tiny_config("ce"), tmp_path, show_progress=False)
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path) as lock:  # free again, and nothing was taken over
        assert lock.took_over is None


# -- damaged files -------------------------------------------------------------------------------


def killed_at(folder, step, monkeypatch):
    """The tiny gapt run, checkpointed every 4 steps, killed (no clean-up) when step ``step`` starts."""
    real = loop.accumulate_gradients

    def dies(*args, **kwargs):
        if kwargs["step"] == step:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "accumulate_gradients", dies)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_config("gapt", train={"checkpoint_every": 4}), folder, show_progress=False)
    monkeypatch.undo()


@pytest.fixture
def two_checkpoints(tmp_path, monkeypatch):
    """A run killed at step 10 with checkpoints every 4 steps: checkpoint.pt (8), checkpoint.prev.pt (4)."""
    config = write(tiny_config("gapt", train={"checkpoint_every": 4}), tmp_path)
    killed_at(tmp_path, 10, monkeypatch)
    return config


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: b"\x80\x04not a checkpoint at all" * 100,
    "a plain pickle": lambda data: __import__("pickle").dumps({"model": 1}),
}


def test_a_checkpoint_of_something_else_is_named_as_such(two_checkpoints, capsys):
    import torch

    checkpoint = two_checkpoints.parent / CHECKPOINT_NAME
    torch.save({"model": {}, "next_step": 3}, checkpoint)
    code, err = run_main([two_checkpoints], capsys)
    assert code == 2
    assert error_lines(err)[0] == (
        f"error: {checkpoint} is not a checkpoint of this trainer "
        "(it lacks config_digest, optimizers, controller, task)."
    )


def test_a_fresh_start_drops_the_checkpoint_of_an_earlier_attempt(tmp_path, monkeypatch):
    """checkpoint.prev.pt left by an earlier attempt points into other metrics: a fresh start removes
    it, so it is never offered as a way out."""
    (tmp_path / PREVIOUS_CHECKPOINT_NAME).write_bytes(b"an earlier attempt's checkpoint")
    killed_at(tmp_path, 6, monkeypatch)
    assert (tmp_path / CHECKPOINT_NAME).exists() and not (tmp_path / PREVIOUS_CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_names_the_file_and_the_ways_out(two_checkpoints, capsys, whole, damage):
    folder = two_checkpoints.parent
    checkpoint, previous = folder / CHECKPOINT_NAME, folder / PREVIOUS_CHECKPOINT_NAME
    checkpoint.write_bytes(DAMAGE[damage](checkpoint.read_bytes()))
    code, err = run_main([two_checkpoints], capsys)
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 2 and lines[0].startswith(f"error: {checkpoint} ")
    # torch's reason, when it is long, ends with its first sentence, never inside a word
    assert lines[0].endswith(").") and "If ..." not in lines[0] and len(lines[0]) < len(str(folder)) + 200
    assert lines[1] == (
        f"  Ways out: resume from the previous checkpoint (step 4): mv {previous} {checkpoint}; "
        f"or delete {checkpoint} to train the run from the start"
    )
    # the first way out works and loses nothing: the run ends as the uninterrupted one
    previous.replace(checkpoint)
    code, err = run_main([two_checkpoints], capsys)
    assert code == 0 and "resuming from step 4 of 30" in err
    assert comparable(read_metrics(folder / "metrics.jsonl")) == comparable(whole)


def test_a_damaged_checkpoint_without_a_previous_one_offers_the_restart(two_checkpoints, capsys, whole):
    folder = two_checkpoints.parent
    (folder / PREVIOUS_CHECKPOINT_NAME).unlink()
    (folder / CHECKPOINT_NAME).write_bytes(b"")
    code, err = run_main([two_checkpoints], capsys)
    assert (
        code == 2
        and error_lines(err)[1]
        == f"  Ways out: delete {folder / CHECKPOINT_NAME} to train the run from the start"
    )
    (folder / CHECKPOINT_NAME).unlink()
    assert run_main([two_checkpoints], capsys)[0] == 0
    assert comparable(read_metrics(folder / "metrics.jsonl")) == comparable(whole)


def test_a_checkpoint_interrupted_while_written_leaves_the_last_complete_one(
    two_checkpoints, monkeypatch, capsys, whole
):
    """A kill (or a full disk) while checkpoint.pt is written: the temporary file is incomplete, and
    checkpoint.pt is still the last complete checkpoint."""
    import torch

    folder = two_checkpoints.parent
    real_save = torch.save

    def dies_half_way(state, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    code, err = run_main([two_checkpoints], capsys)
    (line,) = error_lines(err)
    assert code == 2 and line.startswith(
        f"error: cannot write {folder / CHECKPOINT_NAME}: no space left on device. Free space there"
    )
    assert line.endswith("a training run resumes from its last checkpoint")
    monkeypatch.setattr(torch, "save", real_save)
    code, err = run_main([two_checkpoints], capsys)
    assert code == 0 and "resuming from step 8 of 30" in err
    assert comparable(read_metrics(folder / "metrics.jsonl")) == comparable(whole)


@pytest.mark.parametrize("state", ["missing", "shorter"])
def test_a_checkpoint_without_its_metrics_is_a_short_error(two_checkpoints, capsys, state):
    metrics = two_checkpoints.parent / "metrics.jsonl"
    if state == "missing":
        metrics.unlink()
    else:
        metrics.write_text(metrics.read_text()[:100])
    code, err = run_main([two_checkpoints], capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith(
        f"error: {metrics} is {'missing' if state == 'missing' else 'shorter than the checkpoint'}"
    )
    assert line.endswith(
        f"to train the run from the start, delete everything in {metrics.parent} but config.yaml"
    )


def test_a_damaged_metrics_line_names_the_file_and_line(tmp_path, capsys):
    from replication.science.errors import RunFolderError

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 0}\n{"kind": "tra{"kind": "train", "step": 1}\n')
    with pytest.raises(
        RunFolderError, match=rf"{path}, line 2, is not a JSON record .*two processes wrote it at once"
    ):
        read_metrics(path)


# -- a folder of another config ------------------------------------------------------------------


def test_a_finished_folder_refuses_a_changed_config(tmp_path, capsys):
    config = write(tiny_config("ce", train={"steps": 4, "eval_every": 2}), tmp_path)
    assert run_main([config], capsys)[0] == 0
    summary = (tmp_path / "summary.json").read_text()
    write(tiny_config("ce_mbe", train={"steps": 8, "eval_every": 2}), tmp_path)
    code, err = run_main([config], capsys)
    assert code == 2
    assert error_lines(err) == [
        f"error: {tmp_path}/summary.json was written by a run of another config (method: ce -> ce_mbe; "
        f"train.steps: 4 -> 8); delete summary.json and any checkpoint*.pt in {tmp_path} to train this "
        "config there (metrics.jsonl is then rewritten)"
    ]
    assert (tmp_path / "summary.json").read_text() == summary  # nothing was overwritten
    # the same config again: the finished run is handed back, not retrained
    write(tiny_config("ce", train={"steps": 4, "eval_every": 2}), tmp_path)
    code, err = run_main([config], capsys)
    assert code == 0 and "already finished" in err
    # the way out the message names works
    (tmp_path / "summary.json").unlink()
    write(tiny_config("ce_mbe", train={"steps": 8, "eval_every": 2}), tmp_path)
    assert run_main([config], capsys)[0] == 0
    assert json.loads((tmp_path / "summary.json").read_text())["method"] == "ce_mbe"


def test_a_summary_is_compared_by_meaning_not_by_bytes(tmp_path, capsys):
    """A key the summary's config lacks (a field added to the code since) that the run config holds
    at its default is no difference; a summary from before summaries recorded their config is handed
    back with a warning."""
    config = write(tiny_config("ce", train={"steps": 4, "eval_every": 2}), tmp_path)
    assert run_main([config], capsys)[0] == 0
    path = tmp_path / "summary.json"
    summary = json.loads(path.read_text())
    del summary["config"]["train"]["keep_checkpoint"]  # a field at its default
    summary["config_digest"] = "0" * 16
    path.write_text(json.dumps(summary))
    code, err = run_main([config], capsys)
    assert code == 0 and "already finished" in err
    del summary["config"], summary["config_digest"]
    path.write_text(json.dumps(summary))
    code, err = run_main([config], capsys)
    assert (
        code == 0
        and f"warning: {path} records no config (written by an older version); it is not checked" in err
    )


def test_a_damaged_summary_names_the_file(tmp_path, capsys):
    config = write(tiny_config("ce", train={"steps": 4, "eval_every": 2}), tmp_path)
    assert run_main([config], capsys)[0] == 0
    (tmp_path / "summary.json").write_text('{"metrics": {"final/')
    code, err = run_main([config], capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith(f"error: {tmp_path}/summary.json is not valid JSON (") and line.endswith(
        "delete it to write it again"
    )


# -- nonsense values and wrong inputs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"train": {"steps": -5}}, "train.steps: Input should be greater than 0"),
        ({"train": {"steps": 0}}, "train.steps: Input should be greater than 0"),
        ({"objective": {"patch_size": 0}}, "objective.patch_size: Input should be greater than 0"),
        ({"optim": {"head_lr": float("nan")}}, "optim.head_lr: Input should be a finite number"),
        ({"optim": {"muon_lr": -0.05}}, "optim.muon_lr: Input should be greater than or equal to 0"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ],
)
def test_nonsense_values_are_a_short_error_naming_the_key(tmp_path, capsys, edit, message):
    data = tiny_config("ce").to_dict()
    for key, value in edit.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    code, err = run_main([path], capsys)
    assert code == 2
    lines = error_lines(err)
    assert lines == [f"error: invalid configuration ({path}):", f"  {message}"]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_configure_refuses_a_negative_seed_and_takes_a_folder_for_out(tmp_path, capsys):
    experiment = REPO / "experiments" / "arithmetic_ood" / "config.yaml"
    argv = [str(experiment), "--scale", "smoke", "--method", "ce"]
    assert configure.main([*argv, "--seed", "-1", "--out", str(tmp_path / "a/")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 2 and lines[1].startswith("  seed: Input should be greater than or equal to 0")
    assert configure.main([*argv, "--seed", "0", "--out", f"{tmp_path}/runs/c5/"]) == 0
    assert (tmp_path / "runs" / "c5" / "config.yaml").is_file()
    assert (
        configure.main([*argv, "--seed", "0", "--out", str(tmp_path / "runs" / "c5")]) == 0
    )  # an existing folder
    assert sorted(p.name for p in (tmp_path / "runs" / "c5").iterdir()) == ["config.yaml"]


def test_an_experiment_config_given_to_train_names_configure(capsys):
    experiment = REPO / "experiments" / "arithmetic_ood" / "config.yaml"
    code, err = run_main([experiment], capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert "is an experiment config" in line and "python -m replication.training.configure" in line


def test_a_mistyped_key_gets_a_hint_from_its_own_section_only(tmp_path, capsys):
    data = tiny_config("ce").to_dict()
    data["optim"]["lr"] = 0.01  # muon_adam has no lr: no hint may suggest one
    data["train"]["step"] = 3
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    code, err = run_main([path], capsys)
    assert code == 2
    lines = error_lines(err)
    assert "  unknown key 'train.step' (did you mean 'steps'?)" in lines
    (optim,) = [line for line in lines if "optim.lr" in line]
    assert "'lr'" not in optim.replace("'optim.lr'", "")


def test_missing_prepared_data_names_the_experiment_and_the_command(tmp_path, capsys):
    experiment = REPO / "experiments" / "fineweb_pretrain" / "config.yaml"
    out = tmp_path / "run"
    assert (
        configure.main(
            [str(experiment), "--scale", "smoke", "--method", "ce", "--seed", "0", "--out", f"{out}/"]
        )
        == 0
    )
    code, err = run_main([out / "config.yaml", "--data-root", tmp_path / "data"], capsys)
    assert code == 2
    (line,) = error_lines(err)
    dataset = yaml.safe_load((out / "config.yaml").read_text())["task"]["dataset"]
    assert (
        "python -m replication.tasks.fineweb.prepare experiments/fineweb_pretrain/config.yaml "
        f"--dataset {dataset} " in line
    )
    assert "NAME" not in line


def test_a_bug_is_two_lines_and_the_traceback_comes_on_request(tmp_path, monkeypatch, capsys):
    config = write(tiny_config("ce"), tmp_path)
    monkeypatch.setattr(loop, "accumulate_gradients", lambda *a, **k: {}["no such key"])
    code, err = run_main([config], capsys)
    assert code == 1
    assert error_lines(err) == [
        "error: unexpected KeyError: 'no such key'",
        "  this is a bug; rerun with --debug (or REPLICATION_DEBUG=1) for the traceback",
    ]
    for argv, env in (([str(config), "--debug"], None), ([str(config)], "1")):
        if env:
            monkeypatch.setenv("REPLICATION_DEBUG", env)
        assert loop.main(argv) == 1  # the same exit code, with the traceback
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.strip().endswith(
            "error: unexpected KeyError: 'no such key'"
        )


def test_out_of_device_memory_says_what_to_lower(tmp_path, monkeypatch, capsys):
    import torch

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore lines")

    monkeypatch.setattr(loop, "accumulate_gradients", out_of_memory)
    code, err = run_main([write(tiny_config("ce"), tmp_path)], capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith("error: out of memory on the device: lower task.micro_batch_size")


def test_a_yaml_typo_and_a_wrong_option_are_one_line(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("seed: 0\ntrain: {steps: 4\nmodel: x\n")
    code, err = run_main([path], capsys)
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith(f"error: {path} is not valid YAML at line 3, column 6")
    with pytest.raises(SystemExit) as exit_info:
        loop.main([str(path), "--threads", "two"])
    assert exit_info.value.code == 2
    assert "argument --threads: must be a whole number, got 'two'" in capsys.readouterr().err


def test_a_nonfinite_run_stops_with_a_short_message(tmp_path, monkeypatch, capsys):
    import math

    from replication.tasks.lm import LanguageTask

    real = LanguageTask.main_loss
    monkeypatch.setattr(LanguageTask, "main_loss", lambda self, out, batch: real(self, out, batch) * math.nan)
    config = write(tiny_config("ce", train={"max_nonfinite_in_row": 3}), tmp_path)
    code, err = run_main([config], capsys)
    assert code == 3
    (line,) = error_lines(err)
    assert "non-finite in 3 steps in a row" in line and "Lower the learning rate" in line
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_command_line_of_every_module_reports_a_missing_file_in_one_line(tmp_path, capsys):
    from replication.reporting import aggregate, claims, figures, report
    from replication.tasks.fineweb import prepare

    missing = str(tmp_path / "nothing.yaml")
    calls = {
        configure: [
            missing,
            "--scale",
            "smoke",
            "--method",
            "ce",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "x/"),
        ],
        loop: [missing],
        prepare: [missing, "--dataset", "d", "--out", str(tmp_path / "d")],
        aggregate: [missing, "--scale", "smoke", "--out", str(tmp_path / "r")],
        claims: [missing, "--scale", "smoke", "--results", str(tmp_path), "--out", str(tmp_path / "C.md")],
        figures: [missing, "--results", str(tmp_path)],
        report: ["--scale", "smoke", "--results", str(tmp_path / "none")],
    }
    for module, argv in calls.items():
        assert module.main(argv) == 2, module.__name__
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1, (module.__name__, lines)


def test_the_workflow_check_reports_a_bad_config_in_short(tmp_path, capsys):
    from replication.dag import plan as workflow

    path = tmp_path / "smoke.yaml"
    path.write_text("scale: smoke\nexperimentz: [arithmetic_ood]\n")
    assert workflow.check_outputs([str(path)]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert 1 <= len(lines) <= 2 and "experimentz" in lines[0]


def test_stop_requests_in_a_subprocess_during_the_final_evaluation(tmp_path):
    """The real thing once: SIGTERM to a trainer process while it evaluates after its last step."""
    config = write(
        tiny_config("ce", train={"steps": 6, "eval_every": 0}, task={"val_batches": 400}), tmp_path
    )
    proc = _python("-m", "replication.training.train", str(config), "--threads", "1", "--progress", "lines")
    checkpoint = tmp_path / CHECKPOINT_NAME
    deadline = time.time() + 60
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert error_lines(err.decode())[0].startswith(
        "interrupted: stopped by signal 15 during the final evaluation"
    )
    assert checkpoint.exists() and not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            OSError(30, "Read-only file system", "/runs/a/train.lock"),
            "cannot write /runs/a/train.lock: read-only file system. Make its folder writable, or write "
            "elsewhere (runs_dir= in the DAG's global config, --out by hand)",
        ),
        (
            OSError(13, "Permission denied", "/runs/a/checkpoint.pt"),  # reading it
            "cannot access /runs/a/checkpoint.pt: permission denied. Check its permissions",
        ),
        (OSError(2, "No such file or directory", "/x.yaml"), "/x.yaml: No such file or directory"),
    ],
)
def test_a_file_system_error_names_the_file_the_problem_and_the_way_out(error, expected):
    from replication.runtime.cli import os_error_message

    assert os_error_message(error).startswith(expected)


def test_a_refused_write_says_write_and_a_refused_read_says_access(tmp_path):
    from replication.runtime.cli import os_error_message
    from replication.runtime.record import naming

    target = tmp_path / "metrics.jsonl"
    with pytest.raises(OSError) as raised, naming(target):
        raise OSError(13, "Permission denied")
    assert os_error_message(raised.value).startswith(f"cannot write {target}: permission denied. Make")
    with pytest.raises(OSError) as raised, naming(target):
        raise PermissionError(13, "Permission denied", str(target))  # open() names its file itself
    assert os_error_message(raised.value).startswith(f"cannot write {target}")


def test_a_full_disk_while_metrics_are_written_names_metrics_jsonl(tmp_path, monkeypatch, capsys):
    """A write to an open file raises an OSError that names no file: the writer adds its own."""
    config = write(tiny_config("ce"), tmp_path)
    from replication.runtime import record

    real = record.MetricsWriter.write

    def full_at_step_3(self, entry):
        if entry.get("kind") == "train" and entry["step"] == 3:
            with record.naming(self.path):
                raise OSError(28, "No space left on device")
        return real(self, entry)

    monkeypatch.setattr(record.MetricsWriter, "write", full_at_step_3)
    code, err = run_main([config], capsys)
    (line,) = error_lines(err)
    assert code == 2 and line.startswith(f"error: cannot write {tmp_path / 'metrics.jsonl'}: no space left")


def test_a_long_reason_is_cut_at_a_word():
    from replication.runtime.record import _short_reason

    reason = _short_reason(ValueError("word " * 40 + "\nsecond line"))
    assert reason.endswith("word ...") and len(reason) <= 124
    assert len(_short_reason(ValueError("x" * 300))) == 124  # no space to cut at: cut at the limit
    assert _short_reason(ValueError("a file, e.g. the checkpoint, is damaged")) == (
        "a file, e.g. the checkpoint, is damaged"
    )
    assert _short_reason(ValueError("short\nmore")) == "short"
    zip_error = (
        "PytorchStreamReader failed reading zip archive: failed finding central directory. This is an "
        "internal miniz error. If you are seeing this, the file may be damaged."
    )
    assert _short_reason(RuntimeError(zip_error)) == (
        "PytorchStreamReader failed reading zip archive: failed finding central directory"
    )
