import copy
from pathlib import Path

import pytest
import torch

from replication.config.base import deep_merge
from replication.config.run import RunConfig, validate_run_config
from replication.science.methods import METHODS

REPO = Path(__file__).resolve().parent.parent

TINY = {
    "experiment": "tiny",
    "scale": "test",
    "method": "ce",
    "seed": 0,
    "task": {"name": "synthetic", "vocab_size": 32, "seq_len": 32, "micro_batch_size": 4, "val_batches": 2},
    "model": {
        "name": "modded",
        "vocab_size": 32,
        "n_layer": 6,
        "d_model": 32,
        "n_head": 2,
        "head_dim": 16,
        "window_start": 16,
        "window_end": 32,
        "window_multiple": 16,
    },
    "optim": {"name": "muon_adam"},
    "train": {"steps": 30, "grad_accum": 2, "eval_every": 10, "checkpoint_every": 0},
    "gapt": {"patience_memorize": 4, "patience_compress": 4},
}


def tiny_config(method: str = "ce", **overrides) -> RunConfig:
    """A run of a few seconds: 6-block modded model on the synthetic bigram language."""
    data = deep_merge(copy.deepcopy(TINY), overrides)
    data["method"] = method
    registered = METHODS.get(method)  # a test may name an unknown one on purpose
    if registered and registered.smoothed and "smoothing" not in data["gapt"]:
        data["gapt"]["smoothing"] = 0.9
    if registered and registered.matches and "schedule" not in data:  # as if from a gated run
        data["schedule"] = {"source": "a test's schedule", "compress": [[6, 10], [16, 18]]}
    return validate_run_config(data)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # results are compared bit for bit within a test; pin the thread count for every test
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_runtest_setup(item):
    # the `gpu` marker (pyproject.toml) means: needs a CUDA device
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
