"""Two CPU processes with the gloo backend behave as one run with twice the batch."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from replication.config import write_run_config
from replication.runio import read_metrics

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
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    from replication.train import Trainer

    trainer = Trainer(tiny_config("gapt", **CONFIG), run_dir, show_progress=False)
    trainer.run()
    torch.save(
        {"weights": trainer.model.state_dict(), "transitions": trainer.controller.state_dict()["transitions"]},
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
    from replication.train import train

    train(tiny_config("gapt", **CONFIG), tmp_path / "alone", show_progress=False)
    alone = read_metrics(tmp_path / "alone" / "metrics.jsonl")
    first = [next(r for r in rs if r["kind"] == "train") for rs in (records, alone)]
    assert first[0]["train/ce"] == pytest.approx(first[1]["train/ce"], rel=1e-6)
    assert first[0]["train/mbe_by_layer"] == pytest.approx(first[1]["train/mbe_by_layer"], rel=1e-5)
    assert records[-1]["val/ce"] == pytest.approx(alone[-1]["val/ce"], rel=2e-2)
    assert [r["tokens"] for r in records if r["kind"] == "train"][0] == 2 * 4 * 32  # micro-batches x batch


@pytest.mark.slow
def test_torchrun_launches_the_same_command(tmp_path):
    config_path = tmp_path / "config.yaml"
    write_run_config(tiny_config("ce", train={"steps": 6, "eval_every": 0, "checkpoint_every": 0}), config_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "replication.train", str(config_path), "--progress", "lines"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert summary["tokens"] == 6 * 2 * 4 * 32  # steps x micro-batches (1 per rank) x sequences x length
