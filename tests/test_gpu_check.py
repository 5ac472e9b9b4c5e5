"""`make gpu-check` (benchmarks/gpu_check.py): its tiny CPU run through every stage, each stage's
failure and skip, and on a CUDA device a few compiled bf16 steps of every method."""

import json
import math
import time

import pytest
import torch

from benchmarks import gpu_check
from replication.science.methods import BASE_METHODS

METHOD_KEYS = {
    "status",
    "error",
    "wall_s",
    "graphs",
    "peak_memory_bytes",
    "train_ce",
    "step_seconds",
    "losses_finite",
    "final",
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


@pytest.fixture(autouse=True)
def _scratch_in_tmp_path(tmp_path, monkeypatch):
    """The check's scratch folder (kept when a stage fails) inside the test's own folder."""
    monkeypatch.setattr(gpu_check.tempfile, "tempdir", str(tmp_path))


@pytest.mark.slow
def test_the_tiny_check_runs_every_stage_and_writes_gpu_json(tmp_path, capsys):
    code = gpu_check.main(["--tiny", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu.json").read_text())
    failed = {
        name: stage["reason"] for name, stage in result["stages"].items() if stage["status"] == "failed"
    }
    assert code == 0 and not failed, failed
    assert result["section"] == "gpu" and "provenance" in result and result["mode"] == "tiny (CPU)"
    assert {
        "shape",
        "n_params",
        "n_matmul_params",
        "flops_per_token_formula",
        "peak_tflops",
        "targets",
        "verdict",
        "stages",
        "budget_s",
        "elapsed_s",
    } <= set(result)
    assert result["budget_s"] == 600
    shape = result["shape"]
    assert shape["dtype"] == "bfloat16" and shape["compile"] and shape["compile_backend"] == "eager"
    # stage 2: every method
    assert list(result["methods"]) == list(BASE_METHODS)
    for name, method in result["methods"].items():
        assert method["status"] == "ok", (name, method["error"])
        assert METHOD_KEYS <= set(method) and GRAPH_KEYS <= set(method["graphs"]), name
        assert len(method["train_ce"]) == shape["steps"] and method["losses_finite"], name
        assert all(math.isfinite(x) for x in method["train_ce"]), name
        assert math.isfinite(method["final"]["final/val/ce"]), name
        assert (
            method["step_time_s"] > 0 and method["tokens_per_s"] > 0 and method["mfu"] is None
        )  # no CPU peak
        assert 1 <= method["graphs"]["unique_graphs"] <= gpu_check.GRAPH_BOUND, name
        assert method["graphs"]["fail_on_recompile_limit_hit"]  # torch 2.13 has the option
        if name in ("gapt", "gapt_joint"):  # the timed steps are the compress phase's
            assert method["steady_phases"] == ["compress"], name
    assert result["methods"]["ce"]["ratio_to_ce"] == 1.0
    assert result["verdict"]["runs_ok"] and result["verdict"]["ce_mfu_within_target"] is None
    stages = result["stages"]
    assert list(stages) == list(gpu_check.STAGES) and result["verdict"]["failed_stages"] == []
    # stage 1: what it found, no CUDA no failure under --tiny
    pre = stages["preflight"]
    assert pre["status"] == "ok" and pre["torch"] == torch.__version__ and "torch_cuda" in pre
    assert torch.cuda.is_available() or "no CUDA device" in pre["reason"]
    # stage 3: SIGTERM twice, a checkpoint, a resume at the step it stopped after, RQ1 records
    resume = stages["sigterm_resume"]
    assert resume["status"] == "ok" and all(resume["checks"].values()), resume
    first = resume["interrupted"]
    assert first["returncode"] in (130, -15)  # -15: the second SIGTERM came once the checkpoint was written
    assert gpu_check.TINY_RESUME["signal_after"] <= first["steps_at_signal"] <= first["steps_at_exit"]
    assert first["steps_at_exit"] < gpu_check.TINY_RESUME["steps"]
    assert (
        resume["resumed"]["resumed_at"] == [first["steps_at_exit"]] and resume["resumed"]["alignment_steps"]
    )
    # stage 4: the arithmetic paper path, evaluation and decoding included, recompiles bounded
    arithmetic = stages["arithmetic_paper"]
    assert arithmetic["status"] == "ok", arithmetic["reason"]
    assert arithmetic["steps_done"] == 6 and set(arithmetic["final"]) == set(gpu_check.ARITHMETIC_FINAL)
    assert arithmetic["graphs"]["unique_graphs"] <= gpu_check.GRAPH_BOUND
    # stage 5: two gloo ranks agree with one process
    ranks = stages["two_ranks"]
    assert ranks["status"] == "ok", ranks["reason"]
    assert ranks["comparison"]["phases"][0][-1] == "compress"
    assert ranks["comparison"]["first_rel_diff"] <= gpu_check.TWO_RANK_RTOL["first"]
    assert len(ranks["comparison"]["train_ce"][0]) == gpu_check.TWO_RANK_STEPS
    # stage 6 needs a device; stage 7 is Snakemake's plan through the profile, both experiments
    assert stages["pytest_gpu"]["status"] == "skipped" and "--tiny" in stages["pytest_gpu"]["reason"]
    dag = stages["mini_dag"]
    assert dag["status"] == "ok" and dag["dry_run"] and "--profile profiles/local-gpu" in dag["command"]
    assert dag["runs"] == {"arithmetic_ood": 12, "forgetting_separation": 16}  # every method, controls too
    assert dag["steps"] == {"arithmetic_ood": 6, "forgetting_separation": 90}
    # forgetting's runs are CPU jobs (train), arithmetic's GPU jobs (train_gpu)
    assert dag["planned_jobs"] == {"train": 16, "train_gpu": 12, "claims": 1}
    out = capsys.readouterr().out
    assert "graphs/recompiles" in out and all(f"| {name} " in out for name in gpu_check.STAGES)


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


@pytest.mark.gpu
@pytest.mark.parametrize("method", BASE_METHODS)
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
    result = gpu_check.mini_dag(tmp_path, budget_s=2.0)
    assert result["status"] == "timed_out" and "did not finish within the 2 s" in result["reason"]
    assert time.perf_counter() - start < 30


# -- a stage's failure or skip -----------------------------------------------------------------


def test_the_preflight_fails_at_once_without_a_c_compiler(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    assert gpu_check.preflight(tiny=True)["status"] == "ok"  # the tiny check compiles nothing
    assert gpu_check.main(["--out", str(tmp_path), "--budget-s", "600"]) == 1
    stages = json.loads((tmp_path / "gpu.json").read_text())["stages"]
    assert stages["preflight"]["status"] == "failed" and "no C compiler" in stages["preflight"]["reason"]
    later = [stage for name, stage in stages.items() if name != "preflight"]
    assert all(s["status"] == "skipped" and s["reason"] == "the pre-flight failed" for s in later), stages
    line = next(
        x for x in capsys.readouterr().out.splitlines() if x.startswith("gpu_check: pre-flight failed")
    )
    assert "no C compiler (cc or gcc on PATH)" in line


def test_a_stage_the_budget_cannot_carry_is_skipped_and_said_so(tmp_path, capsys):
    ran = []
    assert gpu_check.run_stage("x", 10.0, lambda: 5.0, lambda: ran.append(1) or {"status": "ok"}) == {
        "status": "skipped",
        "reason": "5 s of the budget left, the stage needs about 10 s",
    }
    assert (
        not ran and gpu_check.run_stage("x", 10.0, lambda: 11.0, lambda: {"status": "ok"})["status"] == "ok"
    )
    assert gpu_check.main(["--tiny", "--skip", "methods", "--budget-s", "1", "--out", str(tmp_path)]) == 0
    stages = json.loads((tmp_path / "gpu.json").read_text())["stages"]
    for name in ("sigterm_resume", "arithmetic_paper", "two_ranks", "mini_dag"):
        assert stages[name]["status"] == "skipped" and "of the budget left" in stages[name]["reason"], name
    out = capsys.readouterr().out
    assert "gpu_check: sigterm_resume skipped: " in out and "| mini_dag " in out


def test_a_failed_stage_fails_the_check_once_the_others_ran(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the trainer crashed")

    ran = []
    monkeypatch.setattr(gpu_check, "sigterm_resume", broken)
    monkeypatch.setattr(gpu_check, "arithmetic_paper", lambda *a: ran.append(1) or {"status": "ok"})
    argv = ["--tiny", "--skip", "methods", "two_ranks", "mini_dag", "--out", str(tmp_path)]
    assert gpu_check.main(argv) == 1
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["stages"]["sigterm_resume"] == {
        "status": "failed",
        "reason": "RuntimeError: the trainer crashed",
        "wall_s": pytest.approx(0.0, abs=1.0),
    }
    assert ran and result["stages"]["arithmetic_paper"]["status"] == "ok"  # the next stage still ran
    assert result["verdict"]["failed_stages"] == ["sigterm_resume"]


@pytest.mark.slow
def test_the_sigterm_stage_fails_when_the_run_does_not_resume(tmp_path, monkeypatch):
    """The checkpoint lost after the interruption: the same command trains afresh, finishes, and logs
    no resume event, which the stage must call a failure."""
    real = gpu_check.interrupt_run

    def losing_the_checkpoint(command, run_dir, *args):
        result = real(command, run_dir, *args)
        for path in run_dir.glob("checkpoint*.pt"):
            path.unlink()
        return result

    monkeypatch.setattr(gpu_check, "interrupt_run", losing_the_checkpoint)
    resume = gpu_check.TINY_RESUME
    config = gpu_check.trainer_config(
        "ce", True, gpu_check.TINY_SHAPE, resume["steps"], {"alignment": {"every": resume["alignment_every"]}}
    )
    result = gpu_check.sigterm_resume(tmp_path, config, resume["signal_after"], 120.0, tiny=True)
    assert result["interrupted"]["returncode"] in (130, -15) and result["resumed"]["returncode"] == 0
    assert result["status"] == "failed" and result["resumed"]["resumed_at"] == []
    assert result["reason"].startswith("not so: the same command resumed from the step it stopped after")


def _records(ce: list[float], phases: list[str], val: float) -> list[dict]:
    train = [
        {"kind": "train", "step": i, "train/ce": x, "phase": p} for i, (x, p) in enumerate(zip(ce, phases))
    ]
    return [*train, {"kind": "eval", "step": len(ce), "val/ce": val}]


def test_two_runs_agree_only_within_the_bf16_tolerance():
    phases = ["memorize", "memorize", "compress"]
    alone = _records([4.0, 3.5, 3.0], phases, 3.1)
    assert gpu_check.compare_runs(_records([4.0, 3.52, 3.03], phases, 3.12), alone)["ok"]
    for ranks, what in (
        (_records([4.01, 3.5, 3.0], phases, 3.1), "first step's CE"),  # 2.5e-3 at the first step
        (_records([4.0, 3.5, 3.1], phases, 3.1), "final CE"),  # 3.3 % at the last
        (_records([4.0, 3.5, 3.0], phases, 3.2), "final CE"),
        (_records([4.0, 3.5, 3.0], ["memorize"] * 3, 3.1), "phases"),
    ):
        comparison = gpu_check.compare_runs(ranks, alone)
        assert not comparison["ok"] and comparison["reason"] == f"the runs differ in: {what}"
    assert not gpu_check.compare_runs(_records([4.0, 3.5], phases, 3.1), alone)["ok"]  # a step short


def test_the_pytest_stage_counts_what_passed_and_failed(tmp_path):
    tests = tmp_path / "test_some.py"
    tests.write_text(
        "import pytest\n\ndef test_a():\n    pass\n\ndef test_b():\n    assert False\n\n"
        "def test_c():\n    pytest.skip('no')\n"
    )
    result = gpu_check.pytest_gpu(120.0, args=(str(tests),))
    assert result["status"] == "failed" and result["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert len(result["failures"]) == 1 and result["failures"][0].startswith("FAILED ")
    assert "test_some.py::test_b" in result["failures"][0]
    tests.write_text("def test_a():\n    pass\n")
    assert gpu_check.pytest_gpu(120.0, args=(str(tests),))["counts"] == {"passed": 1}
