"""replication.launch and replication.trainserver: a run forked from the warm server is the run that
``python -m replication.train`` trains, with its streams, exit code and signals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from replication.launch import SERVER_ENV, TrainServer
from replication.runconfig import write_run_config
from replication.runio import CHECKPOINT_NAME, LOCK_NAME, read_metrics

from .conftest import REPO, tiny_config

pytestmark = pytest.mark.slow


def write(config, folder):
    folder.mkdir(parents=True, exist_ok=True)
    write_run_config(config, folder / "config.yaml")
    return folder / "config.yaml"


def comparable(records):
    """A run's records without what differs between any two runs (times, the command)."""
    return [{k: v for k, v in r.items() if k not in ("time", "step_time", "at", "provenance")} for r in records]


@pytest.fixture
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    started = TrainServer(sys.executable, folder / "server.log")
    assert started.start()
    yield started
    started.stop()


def launch(config, *extra, server=None, module="replication.launch", **kwargs):
    env = {k: v for k, v in os.environ.items() if k != SERVER_ENV}
    env["PYTHONPATH"] = str(REPO)
    if server is not None:
        env[SERVER_ENV] = server
    command = [sys.executable, "-m", module, str(config), "--threads", "1", "--progress", "lines", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for_step(process, step):
    for line in process.stderr:  # progress lines go to stderr
        if line.startswith(f"[step {step}/"):
            return
    raise AssertionError(f"the run ended before step {step}: {process.stderr.read()}")


def test_a_run_forked_from_the_server_is_the_run_train_trains(tmp_path, server):
    config = tiny_config("gapt", train={"steps": 12, "eval_every": 4})
    forked, alone = write(config, tmp_path / "forked"), write(config, tmp_path / "alone")
    job = launch(forked, server=server.path)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    assert "[step 12/12]" in err and "note:" not in err  # its stderr came back, and no fallback
    by_hand = launch(alone, module="replication.train")
    assert by_hand.wait(timeout=120) == 0
    assert comparable(read_metrics(forked.parent / "metrics.jsonl")) == comparable(read_metrics(alone.parent / "metrics.jsonl"))
    summary = json.loads((forked.parent / "summary.json").read_text())
    assert summary["provenance"]["command"].endswith(f"-m replication.launch {forked} --threads 1 --progress lines")
    log = server.log.read_text()
    assert f": {forked} --threads 1" in log and "exit 0" in log  # the server trained it


def test_errors_and_exit_codes_are_those_of_train(tmp_path, server):
    missing = tmp_path / "nowhere" / "config.yaml"
    results = {}
    for name, module, address in (("forked", "replication.launch", server.path), ("alone", "replication.train", None)):
        job = launch(missing, server=address, module=module)
        out, err = job.communicate(timeout=60)
        results[name] = (job.returncode, err)
    assert results["forked"] == results["alone"] and results["forked"][0] == 2
    job = launch(missing, "--threads", "0", server=server.path)  # argparse's usage error
    assert job.wait(timeout=60) == 2 and "must be at least 1" in job.stderr.read()


def test_a_signal_to_the_job_stops_its_run_which_checkpoints(tmp_path, server):
    config = write(tiny_config("ce", train={"steps": 400, "eval_every": 0}), tmp_path)
    job = launch(config, server=server.path)
    wait_for_step(job, 20)  # the first progress line
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) == 130
    assert "stopped by signal 15" in job.stderr.read()
    assert (tmp_path / CHECKPOINT_NAME).exists() and not (tmp_path / LOCK_NAME).exists()


def test_a_killed_job_has_its_run_stopped(tmp_path, server):
    config = write(tiny_config("ce", train={"steps": 400, "eval_every": 0}), tmp_path)
    job = launch(config, server=server.path)
    wait_for_step(job, 20)  # the first progress line
    job.kill()  # no forwarding: the server sees the job's end of the socket close
    job.wait()
    deadline = time.time() + 60
    while time.time() < deadline and (tmp_path / LOCK_NAME).exists():
        time.sleep(0.1)
    assert not (tmp_path / LOCK_NAME).exists() and (tmp_path / CHECKPOINT_NAME).exists()
    assert "its requester is gone; stopping the run" in server.log.read_text()


def test_stopping_the_server_lets_a_running_run_finish(tmp_path, server):
    config = write(tiny_config("ce", train={"steps": 60, "eval_every": 0}), tmp_path)
    job = launch(config, server=server.path)
    wait_for_step(job, 3)  # the first progress line
    server.stop()
    assert job.wait(timeout=120) == 0 and (tmp_path / "summary.json").exists()
    assert not server.folder.exists() and os.environ.get(SERVER_ENV) != server.path


def test_with_no_server_answering_a_job_trains_on_its_own(tmp_path):
    config = write(tiny_config("ce", train={"steps": 3}), tmp_path)
    job = launch(config, server=str(tmp_path / "no-socket"))
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    assert f"note: no training server answers at {tmp_path / 'no-socket'}; training in a process of its own" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert " -m replication.train " in summary["provenance"]["command"]  # it became train itself


def test_a_server_that_dies_under_a_run_stops_it_and_the_job_fails_once_the_folder_is_free(tmp_path, server):
    config = write(tiny_config("ce", train={"steps": 400, "eval_every": 0}), tmp_path)
    job = launch(config, server=server.path)
    wait_for_step(job, 20)
    server.process.kill()  # SIGKILL: the server runs no clean-up; its child learns of it from the kernel
    code, err = job.wait(timeout=60), job.stderr.read()
    assert code == 1 and "ended during the run" in err and "resumes from the last checkpoint" in err
    assert not (tmp_path / LOCK_NAME).exists() and (tmp_path / CHECKPOINT_NAME).exists()  # stopped, checkpointed


def test_a_signal_sent_before_the_run_starts_still_stops_it(tmp_path, tmp_path_factory):
    # the request waits while a new server imports torch; the job's SIGTERM is held until the
    # server names the run, then reaches it however early in the child it lands
    folder = tmp_path_factory.mktemp("fresh")
    fresh = TrainServer(sys.executable, folder / "server.log")
    assert fresh.start()
    try:
        config = write(tiny_config("ce", train={"steps": 400, "eval_every": 0}), tmp_path)
        job = launch(config, server=fresh.path)
        time.sleep(0.5)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=120) in (130, 128 + signal.SIGTERM)
        assert not (tmp_path / "summary.json").exists()
    finally:
        fresh.stop()


def test_a_signal_the_job_ignores_the_run_ignores(tmp_path, server):
    config = write(tiny_config("ce", train={"steps": 200, "eval_every": 0}), tmp_path)
    job = launch(config, server=server.path, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # nohup
    wait_for_step(job, 10)
    job.send_signal(signal.SIGHUP)
    assert job.wait(timeout=120) == 0 and (tmp_path / "summary.json").exists()


def test_a_request_the_server_cannot_read_is_refused_and_the_server_goes_on(tmp_path, server):
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
        bad.connect(server.path)
        bad.sendall(b"\x00\x00\x00\x05hello")  # no standard streams, no JSON
        try:
            assert bad.recv(100) == b""  # closed without a run
        except ConnectionResetError:  # closed with the rest of the request unread
            pass
    config = write(tiny_config("ce", train={"steps": 3}), tmp_path)
    job = launch(config, server=server.path)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0 and "note:" not in err, err
    assert "refused a request" in server.log.read_text()


def test_a_server_that_closes_before_starting_the_run_leaves_it_to_the_job(tmp_path):
    import socket
    import threading

    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    threading.Thread(target=lambda: listener.accept()[0].close(), daemon=True).start()
    config = write(tiny_config("ce", train={"steps": 3}), tmp_path / "run")
    job = launch(config, server=path)
    out, err = job.communicate(timeout=120)
    listener.close()
    assert job.returncode == 0, err
    assert "note: no training server answers" in err and (tmp_path / "run" / "summary.json").exists()
