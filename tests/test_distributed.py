"""Two CPU processes with the gloo backend behave as one run with twice the batch."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from replication.config.run import write_run_config
from replication.runtime.record import CHECKPOINT_NAME, load_checkpoint, read_metrics

from .conftest import REPO, tiny_config

CONFIG = dict(
    train={"steps": 40, "eval_every": 20, "checkpoint_every": 0},
    gapt={"delta_ce": 0.05, "patience_memorize": 3, "patience_compress": 3},
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from replication.training.train import Trainer

    trainer = Trainer(tiny_config("gapt", **CONFIG), run_dir, show_progress=False)
    trainer.run()
    torch.save(
        {
            "weights": trainer.model.state_dict(),
            "transitions": trainer.controller.state_dict()["transitions"],
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights_and_phases(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["transitions"] == rank1["transitions"] and len(rank0["transitions"]) >= 1
    for name, tensor in rank0["weights"].items():
        assert torch.equal(tensor, rank1["weights"][name]), name
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["kind"] == "eval" and records[-1]["step"] == 40
    # the two ranks split each step's micro-batches: the same run as one process doing both
    from replication.training.train import train

    train(tiny_config("gapt", **CONFIG), tmp_path / "alone", show_progress=False)
    alone = read_metrics(tmp_path / "alone" / "metrics.jsonl")
    first = [next(r for r in rs if r["kind"] == "train") for rs in (records, alone)]
    assert first[0]["train/ce"] == pytest.approx(first[1]["train/ce"], rel=1e-6)
    assert first[0]["train/mbe_by_layer"] == pytest.approx(first[1]["train/mbe_by_layer"], rel=1e-5)
    assert records[-1]["val/ce"] == pytest.approx(alone[-1]["val/ce"], rel=2e-2)
    assert [r["tokens"] for r in records if r["kind"] == "train"][0] == 2 * 4 * 32  # micro-batches x batch


RQ1_CONFIG = dict(
    train={"steps": 3, "grad_accum": 4, "eval_every": 0, "checkpoint_every": 0},
    alignment={"every": 2, "layers": [1, 2, 3]},
)


def _ce_worker(rank: int, world: int, port: int, run_dir: str, overrides: dict) -> None:
    """One rank of a tiny ce run with ``overrides``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    from replication.training.train import Trainer

    Trainer(tiny_config("ce", **overrides), run_dir, show_progress=False).run()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_share_rq1s_layers_and_each_layer_is_the_record_of_its_own_micro_batch(tmp_path):
    """Under torchrun each process takes its share of RQ1's layers on its own first micro-batch (no
    process waits while one runs every layer's backward): rank 0's layers and the noise baseline are
    the one-process record's, rank 1's are the record the separate pass takes on micro-batches 2
    and 3 of the same step."""
    from replication.training.alignment import gradient_alignment
    from replication.training.train import Trainer, train

    mp.spawn(_ce_worker, args=(2, free_port(), str(tmp_path / "two"), RQ1_CONFIG), nprocs=2, join=True)
    two = [r for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if r["kind"] == "alignment"]
    train(tiny_config("ce", **RQ1_CONFIG), tmp_path / "one", show_progress=False)
    one = [r for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if r["kind"] == "alignment"]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 2]
    # step 2 (step 0's cosines are 0: the head starts at zero); two processes sum the gradients in
    # another order, so the weights after two steps differ in the sixth digit
    at = two[1]
    assert at["align/layers"] == [1, 2, 3] and at["align/micro_by_layer"] == [0, 2, 0]
    for key in ("align/noise_cos", "align/norm_ce", "align/ce"):
        assert at[key] == pytest.approx(one[1][key], rel=1e-4), key
    for j in (0, 2):  # layers 1 and 3: rank 0, micro-batch 0
        assert at["align/cos"][j] == pytest.approx(one[1]["align/cos"][j], abs=1e-5)
        assert at["align/mbe"][j] == pytest.approx(one[1]["align/mbe"][j], rel=1e-5)
        blocks, alone = at["align/cos_by_block"][j], one[1]["align/cos_by_block"][j]
        assert [c is None for c in blocks] == [c is None for c in alone]  # blocks above the layer: none
        assert [c for c in blocks if c is not None] == pytest.approx(
            [c for c in alone if c is not None], abs=1e-4
        )

    # layer 2, taken by rank 1 on micro-batch 2: the separate pass on micro-batches 2 and 3 of step 2
    config = tiny_config("ce", **{**RQ1_CONFIG, "alignment": {"every": 0}})
    trainer = Trainer(config, tmp_path / "check", show_progress=False)
    for step in (0, 1):
        trainer._train_step(step, lambda: 0.0)
    batch = trainer.task.train_batch
    trainer.task.train_batch = lambda step, micro: batch(step, micro + 2)
    window = trainer.model.attention_window(2 / config.train.steps)
    check = gradient_alignment(trainer.model, trainer.task, step=2, layers=[2], window=window)
    assert at["align/cos"][1] == pytest.approx(check["align/cos"][0], abs=1e-5)
    # float32 sums in another order: 1.0e-4 apart on one CPU
    assert at["align/norm_mbe"][1] == pytest.approx(check["align/norm_mbe"][0], rel=1e-3)
    assert at["align/mbe"][1] == pytest.approx(check["align/mbe"][0], rel=1e-5)
    assert at["align/cos"][1] != pytest.approx(one[1]["align/cos"][1], abs=1e-3)  # another batch's


ONE_VALIDATION_BATCH = dict(
    task={"val_batches": 1}, train={"steps": 2, "grad_accum": 2, "eval_every": 0, "checkpoint_every": 0}
)


@pytest.mark.slow
def test_a_rank_without_a_validation_batch_still_takes_part_in_the_evaluation(tmp_path):
    """One validation batch, two processes: the second holds none, and the evaluation is the one
    process's evaluation of that batch."""
    from replication.training.train import train

    mp.spawn(
        _ce_worker, args=(2, free_port(), str(tmp_path / "two"), ONE_VALIDATION_BATCH), nprocs=2, join=True
    )
    train(tiny_config("ce", **ONE_VALIDATION_BATCH), tmp_path / "one", show_progress=False)
    two, one = (
        [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["kind"] == "eval"]
        for name in ("two", "one")
    )
    assert two[0]["val/ce"] == pytest.approx(one[0]["val/ce"], rel=1e-6)
    assert two[0]["val/mbe_by_layer"] == pytest.approx(one[0]["val/mbe_by_layer"], rel=1e-6)


def test_processes_that_share_a_gpu_wrap_around_the_visible_ones_and_use_gloo(monkeypatch):
    from replication.runtime import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.select_device("cuda") == torch.device("cuda", 0)
    cuda = torch.device("cuda", 0)
    assert distributed.backend_for(cuda, local_world_size=2, visible_gpus=1) == "gloo"  # NCCL refuses
    assert distributed.backend_for(cuda, local_world_size=8, visible_gpus=8) == "nccl"
    assert distributed.backend_for(torch.device("cpu"), local_world_size=2, visible_gpus=0) == "gloo"


@pytest.mark.slow
def test_torchrun_launches_the_same_command(tmp_path):
    config_path = tmp_path / "config.yaml"
    write_run_config(
        tiny_config("ce", train={"steps": 6, "eval_every": 0, "checkpoint_every": 0}), config_path
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "replication.training.train",
        str(config_path),
        "--progress",
        "lines",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert summary["tokens"] == 6 * 2 * 4 * 32  # steps x micro-batches (1 per rank) x sequences x length


# -- a stop request to one process ------------------------------------------------------------------

STOP_CONFIG = dict(CONFIG, train={"steps": 8, "eval_every": 4, "checkpoint_every": 0})
TIMING_KEYS = {"time", "step_time", "at", "provenance"}


def _comparable(records):
    kept = [r for r in records if r.get("event") != "resume"]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in kept]


def test_a_repeated_sigterm_keeps_the_checkpoint_and_only_a_second_ctrl_c_stops_at_once():
    """SLURM signals every process of a step and torchrun passes the signal on: a worker sees SIGTERM
    twice. That is still one request to checkpoint after the step; a second SIGINT means now."""
    from replication.training.stop import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM and stop.stops_after_step()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with StopRequest() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_sigterm_to_the_workers_and_then_torchrun_still_ends_in_a_checkpoint(tmp_path):
    """What SLURM does at a preemption or time limit: SIGTERM to every process of the job step (both
    workers, then torchrun, which passes it on once more). The workers agree on a step, checkpoint
    after it, and the same command resumes."""
    config_path = tmp_path / "config.yaml"
    write_run_config(
        tiny_config(  # steps of some 0.1 s, so that both signals land within one step
            "ce",
            task={"seq_len": 256, "micro_batch_size": 8},
            model={
                "d_model": 128,
                "head_dim": 64,
                "window_start": 128,
                "window_end": 256,
                "window_multiple": 128,
            },
            train={"steps": 60, "eval_every": 0, "checkpoint_every": 0},
        ),
        config_path,
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "replication.training.train", str(config_path), "--progress", "lines"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (
        not metrics.exists() or metrics.read_text().count('"kind": "train"') < 5
    ):
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    for pid in workers:
        os.kill(int(pid), signal.SIGTERM)
    time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and (tmp_path / CHECKPOINT_NAME).exists(), out[-3000:]
    stopped_at = load_checkpoint(tmp_path)["next_step"]
    assert 0 < stopped_at < 60 and not (tmp_path / "summary.json").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from step {stopped_at}" in done.stdout + done.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


def test_a_distributed_stop_request_lets_the_final_evaluation_finish():
    """at_once raises only in a single process: one process raising alone would leave the others
    blocked in the evaluation's all-reduces; a distributed run finishes the evaluation instead."""
    from replication.training.stop import StopRequest, TrainingInterrupted

    with StopRequest(distributed=True) as stop, stop.at_once("during the final evaluation"):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM and stop.pending() == 1.0
    assert stop.reason() == f"signal {int(signal.SIGTERM)}"
    with pytest.raises(TrainingInterrupted, match="stopped by signal 15 during"):
        with StopRequest() as alone, alone.at_once("during the final evaluation"):
            os.kill(os.getpid(), signal.SIGTERM)
    assert StopRequest().reason() == "a stop request to another process"


def _signal_after_reduce(trainer, at_step: int) -> None:
    """SIGTERM to this process right after step at_step's all-reduce: the other process has already
    counted this step's stop votes, so the request can only be agreed on at the next step."""
    train_step, reduce = trainer._train_step, trainer._reduce
    current = {}

    def step_hook(step, elapsed):
        current["step"] = step
        return train_step(step, elapsed)

    def reduce_hook(result):
        reduced = reduce(result)
        if current["step"] == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return reduced

    trainer._train_step, trainer._reduce = step_hook, reduce_hook


def _stop_worker(rank: int, world: int, port: int, run_dir: str, out_dir: str, signal_at: int | None) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from replication.training.train import Trainer, TrainingInterrupted

    trainer = Trainer(tiny_config("gapt", **STOP_CONFIG), run_dir, show_progress=False)
    if rank == 1 and signal_at is not None:
        _signal_after_reduce(trainer, signal_at)
    try:
        trainer.run()
        outcome = {"finished": True}
    except TrainingInterrupted as error:
        outcome = {"interrupted": str(error)}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(outcome))
    torch.distributed.destroy_process_group()
    # the outcome is written: leave without the interpreter's teardown, where gloo's threads can
    # abort the process ("terminate called without an active exception") under load
    os._exit(0)


def _two_processes(run_dir, out_dir, signal_at=None, timeout=120.0) -> list[dict]:
    """Run _stop_worker in two gloo processes; a process blocked in a collective fails the test
    (after timeout seconds) instead of hanging it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    context = mp.start_processes(
        _stop_worker,
        args=(2, free_port(), str(run_dir), str(out_dir), signal_at),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the processes did not end in {timeout:.0f} s: one is blocked in a collective")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_after_the_same_step_and_resumes(tmp_path):
    whole = _two_processes(tmp_path / "whole", tmp_path / "whole_out")
    assert whole == [{"finished": True}] * 2

    run = tmp_path / "run"
    # rank 1 alone gets SIGTERM during step index 2, after that step's all-reduce: both stop after
    # the next one (4 steps done), rank 0 with no signal of its own
    outcomes = _two_processes(run, tmp_path / "stopped", signal_at=2)
    messages = [outcome.get("interrupted", "") for outcome in outcomes]
    steps = [int(m) for message in messages for m in re.findall(r"after step (\d+);", message)]
    assert steps == [4, 4], outcomes
    assert messages[0].startswith("stopped by a stop request to another process after step 4;"), messages
    assert messages[1].startswith(f"stopped by signal {int(signal.SIGTERM)} after step 4;"), messages
    assert load_checkpoint(run)["next_step"] == 4
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train") == 3

    assert _two_processes(run, tmp_path / "resumed") == [{"finished": True}] * 2
    assert not (run / CHECKPOINT_NAME).exists()
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("event") == "resume"] == [4]
    assert _comparable(records) == _comparable(read_metrics(tmp_path / "whole" / "metrics.jsonl"))
