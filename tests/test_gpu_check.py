"""`make gpu-check` (benchmarks/gpu_check.py): its tiny CPU run, its mini-DAG's plan, and on a CUDA
device a few compiled bf16 steps of every method."""

import json
import math
import subprocess
import time

import pytest
import torch

from benchmarks import gpu_check
from replication.science.methods import METHOD_NAMES

from .conftest import REPO

METHOD_KEYS = {
    "status",
    "error",
    "wall_s",
    "graphs",
    "peak_memory_bytes",
    "train_ce",
    "step_seconds",
    "losses_finite",
    "final_val_ce",
    "step_time_s",
    "compile_time_s",
    "tokens_per_s",
    "flops_per_token",
    "mfu",
    "ratio_to_ce",
}
GRAPH_KEYS = {
    "unique_graphs",
    "frames",
    "recompiles",
    "graph_breaks",
    "recompile_limit",
    "fail_on_recompile_limit_hit",
}


@pytest.mark.slow
def test_the_tiny_check_trains_every_method_and_writes_gpu_json(tmp_path, capsys):
    assert gpu_check.main(["--tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["section"] == "gpu" and "provenance" in result and result["mode"] == "tiny (CPU)"
    assert {
        "shape",
        "n_params",
        "n_matmul_params",
        "flops_per_token_formula",
        "peak_tflops",
        "targets",
        "verdict",
        "mini_dag",
        "budget_s",
        "elapsed_s",
    } <= set(result)
    shape = result["shape"]
    assert shape["dtype"] == "bfloat16" and shape["compile"] and shape["compile_backend"] == "eager"
    assert list(result["methods"]) == list(METHOD_NAMES)
    for name, method in result["methods"].items():
        assert method["status"] == "ok", (name, method["error"])
        assert METHOD_KEYS <= set(method) and GRAPH_KEYS <= set(method["graphs"]), name
        assert len(method["train_ce"]) == shape["steps"] and method["losses_finite"], name
        assert all(math.isfinite(x) for x in method["train_ce"]) and math.isfinite(method["final_val_ce"]), (
            name
        )
        assert (
            method["step_time_s"] > 0 and method["tokens_per_s"] > 0 and method["mfu"] is None
        )  # no CPU peak
        assert 1 <= method["graphs"]["unique_graphs"] <= gpu_check.GRAPH_BOUND, name
        assert method["graphs"]["fail_on_recompile_limit_hit"]  # torch 2.13 has the option
        if name in ("gapt", "gapt_joint"):  # the timed steps are the compress phase's
            assert method["steady_phases"] == ["compress"], name
    assert result["methods"]["ce"]["ratio_to_ce"] == 1.0
    assert result["verdict"]["runs_ok"] and result["verdict"]["ce_mfu_within_target"] is None
    assert result["mini_dag"]["status"] == "skipped" and result["mini_dag"]["runs"] == 8
    assert "graphs/recompiles" in capsys.readouterr().out


def test_flops_per_token_counts_matmuls_and_the_windowed_attention():
    assert gpu_check.mean_context(4, 10) == pytest.approx((1 + 2 + 3 + 4) / 4)  # window beyond the sequence
    assert gpu_check.mean_context(4, 2) == pytest.approx((1 + 2 + 2 + 2) / 4)
    # the paper's model: 12 blocks of 12 d^2 matmul weights and the 50304 x 768 head
    config = gpu_check.run_config(
        "ce", tiny=False, seq_len=32768, micro_batch_size=1, grad_accum=2, steps=30, mean_doc_length=1024
    )
    from replication.models import build_model

    n = gpu_check.matmul_params(build_model(config.model))
    assert n == 12 * 12 * 768**2 + 50304 * 768
    assert gpu_check.flops_per_token(n, 12, 768, 1000.0) == 6 * n + 12 * 12 * 768 * 1000.0


@pytest.mark.slow
def test_the_mini_dag_is_a_valid_snakemake_plan(tmp_path):
    """The command the GPU run executes, as a dry run: 8 training jobs on the shortened gpu1 scale."""
    info = gpu_check.check_mini_dag_plan(tmp_path)
    assert info["runs"] == 8 and info["steps"] == gpu_check.MINI_DAG_GPU1["train"]["steps"]
    snakemake, _ = gpu_check.mini_dag_commands(tmp_path)
    done = subprocess.run([*snakemake, "-n"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = dict(
        line.split()[:2]
        for line in done.stdout.splitlines()
        if line.split()[:1] in (["train"], ["train_gpu"], ["claims"])
    )
    assert jobs == {"train_gpu": "8", "claims": "1"}, done.stdout[-3000:]  # multiplication needs a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("method", list(METHOD_NAMES))
def test_compiled_bf16_steps_of_every_method_on_cuda(tmp_path, method):
    """A few steps of the tiny model on the GPU with inductor and bf16: finite, a bounded number of
    graphs, the recompile limit an error."""
    config = gpu_check.run_config(
        method,
        tiny=True,
        device="cuda",
        seq_len=256,
        micro_batch_size=2,
        grad_accum=2,
        steps=5,
        mean_doc_length=64,
    )
    assert config.train.compile and config.train.dtype == "bfloat16"
    result = gpu_check.measure_method(config, warmup=4, scratch=tmp_path)
    assert result["status"] == "ok", result["error"]
    assert result["losses_finite"] and result["steps_done"] == 5
    assert result["graphs"]["unique_graphs"] <= gpu_check.GRAPH_BOUND
    assert result["peak_memory_bytes"] > 0 and torch.cuda.is_available()


@pytest.mark.slow
def test_a_mini_dag_past_its_budget_is_stopped_and_says_so(tmp_path):
    start = time.perf_counter()
    result = gpu_check.arithmetic_mini_dag(tmp_path, budget_s=2.0)
    assert result["status"] == "timed_out" and "did not finish within the 2 s" in result["reason"]
    assert time.perf_counter() - start < 30
