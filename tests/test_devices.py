"""replication.dag.devices: each training job gets GPUs of its own, and no more jobs run on the GPUs
than there are, however many jobs the DAG starts. Without a GPU: the devices are ids, the locks real."""

import os
import subprocess
import sys
import time

import pytest

from .conftest import REPO

RECORD = (
    "import os, sys, time; log = open(sys.argv[1], 'a'); d = os.environ['CUDA_VISIBLE_DEVICES'];"
    "log.write(f'start {d} {time.time()} {os.getpid()}\\n'); log.flush(); time.sleep(0.4);"
    "log.write(f'end {d} {time.time()} {os.getpid()}\\n')"
)


def _wrapped(tmp_path, needed, *extra, env=None, command=None):
    machine = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    env = {
        **machine,
        "PYTHONPATH": str(REPO),
        "REPLICATION_GPU_LOCKS": str(tmp_path / "locks"),
        **(env or {}),
    }
    command = command or [sys.executable, "-c", RECORD, str(tmp_path / "log")]
    argv = [sys.executable, "-m", "replication.dag.devices", str(needed), *extra, "--", *command]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_jobs_that_need_two_of_three_gpus_run_one_at_a_time_each_on_its_own_devices(tmp_path):
    jobs = [_wrapped(tmp_path, 2, "--of", "3") for _ in range(4)]
    for job in jobs:
        assert job.wait(timeout=60) == 0, job.stderr.read()
    events = [line.split() for line in (tmp_path / "log").read_text().splitlines()]
    spans = {}
    for kind, devices, at, pid in events:
        spans.setdefault(pid, {"devices": set(devices.split(",")), "pid": int(pid)})[kind] = float(at)
    assert len(spans) == 4 and all(len(s["devices"]) == 2 for s in spans.values())
    assert all(s["devices"] <= {"0", "1", "2"} for s in spans.values())
    ordered = sorted(spans.values(), key=lambda s: s["start"])
    for a, b in zip(ordered, ordered[1:]):  # two pairs of three GPUs always share one: never together
        assert b["start"] >= a["end"]
    # the job is the wrapper's own process (exec): a signal to the job reaches the trainer
    assert {s["pid"] for s in spans.values()} == {job.pid for job in jobs}
    assert any("waiting for 2 of 3 GPUs" in job.stderr.read() for job in jobs)


def test_jobs_of_one_gpu_each_share_the_machine_side_by_side(tmp_path):
    jobs = [_wrapped(tmp_path, 1, "--of", "2") for _ in range(2)]
    for job in jobs:
        assert job.wait(timeout=60) == 0
    starts = [
        line.split() for line in (tmp_path / "log").read_text().splitlines() if line.startswith("start")
    ]
    assert sorted(s[1] for s in starts) == ["0", "1"]  # each its own GPU, at once


def test_a_job_without_gpus_sees_none_and_a_cluster_job_keeps_its_schedulers(tmp_path):
    show = [sys.executable, "-c", "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"]
    none = _wrapped(tmp_path, 0, command=show, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert none.communicate(timeout=30)[0].strip() == "''"
    slurm = _wrapped(tmp_path, 8, command=show, env={"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "4,5"})
    assert slurm.communicate(timeout=30)[0].strip() == "'4,5'"
    named = _wrapped(tmp_path, 1, command=show, env={"CUDA_VISIBLE_DEVICES": "5,7"})
    assert named.communicate(timeout=30)[0].strip() == "'5'"  # one of the devices this machine names


def test_a_job_that_needs_more_gpus_than_the_machine_has_is_an_error_not_a_wait(tmp_path):
    job = _wrapped(tmp_path, 4, "--of", "3")
    _, err = job.communicate(timeout=30)
    assert job.returncode == 2
    assert err.startswith(
        "error: the job needs 4 GPUs and this machine offers 3 (the global config's gpus: 3)"
    )


@pytest.mark.parametrize("needed", [1, 2])
def test_the_devices_are_free_again_once_the_job_ends(tmp_path, needed):
    start = time.time()
    for _ in range(2):
        assert _wrapped(tmp_path, needed, "--of", "2").wait(timeout=60) == 0
    assert time.time() - start < 10  # no wait for locks a finished job held


def test_small_jobs_may_share_a_gpu_in_as_many_slots_as_the_config_gives(tmp_path):
    """jobs_per_gpu: 2 lets two one-GPU jobs run together on the only GPU, and a third waits."""
    jobs = [_wrapped(tmp_path, 1, "--of", "1", "--per-gpu", "2") for _ in range(3)]
    for job in jobs:
        assert job.wait(timeout=60) == 0
    events = sorted(
        (float(at), kind)
        for kind, _, at, _ in (line.split() for line in (tmp_path / "log").read_text().splitlines())
    )
    running, most = 0, 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2 and all(line.split()[1] == "0" for line in (tmp_path / "log").read_text().splitlines())
