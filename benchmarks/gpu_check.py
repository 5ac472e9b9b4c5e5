"""python -m benchmarks.gpu_check [--tiny] [--out results/benchmarks] [--budget-s 600] [--skip STAGE ...]

The GPU path's acceptance run in one command (`make gpu-check`): what the CPU tests cannot show, on one
CUDA device, within a budget of 10 minutes and with no network. Its stages run in this order, the most
important first; a stage the budget left cannot carry (its estimate: ESTIMATE_S, dag_estimate_s) is skipped,
saying so:

1. ``preflight``: the driver and CUDA versions, torch's wheel (``torch.__version__``,
   ``torch.version.cuda``), the device and its memory, and what Triton compiles with: a C compiler (cc
   or gcc on PATH) and Python's headers (Python.h). Without a device, a compiler or the headers the
   check fails at once with one line saying what is missing, and every later stage is skipped.
2. ``methods``: every method (ce, ce_mbe, gapt, gapt_joint) trains the paper's modded model at its
   paper shape (12 blocks, width 768, 6 heads of 128, vocabulary 50304; 32,768 tokens per micro-batch,
   or with ``--seq-len`` another length; on an out-of-memory error ce halves it until it fits, down to
   4096) for a few dozen steps through the real ``replication.training.train.Trainer`` with
   ``train.dtype: bfloat16`` and ``train.compile: true``, on the synthetic task (no data files). Each
   method gets the same tokens per step; the gated methods are held in their compress phase from step
   3 on (the costly phase, as benchmarks.steps measures it), so the step-time ratios state what
   compression costs. Per method: median step time after ``--warmup`` steps, tokens/s, MFU
   (ce-equivalent: the FLOPs of a full forward and backward per token, although gapt's MBE
   micro-batches stop early and skip the head, so its MFU overstates the work it does), the ratio to
   ce, peak device memory, compile time (the warm-up steps' time minus as many steady steps), and the
   number of graphs dynamo traced and recompiled, with ``fail_on_recompile_limit_hit`` on: a run that
   reaches dynamo's recompile limit fails, as does one with a non-finite loss.
3. ``sigterm_resume``: ce at that shape with RQ1's gradient-alignment record on (``alignment.every``),
   trained as the DAG trains it, by ``python -m replication.training.train RUN/config.yaml`` in a
   subprocess. Once it has logged a few steps it gets SIGTERM twice, 50 ms apart (a scheduler and its
   launcher both signal): it must exit with a checkpoint and no summary. The same command again must
   resume (a ``resume`` event in metrics.jsonl at the step the first stopped after), finish
   (summary.json) and leave alignment records. Pass or fail, with both processes' times.
4. ``arithmetic_paper``: the arithmetic experiment's ``paper`` scale (32,768-token rows, bf16,
   ``train.compile``), shortened to a few steps and evaluations on few examples (ARITHMETIC_SHORT):
   gapt through the Trainer, evaluations with their greedy decoding included, the recompile limit an
   error; its graphs and recompiles are reported and bounded as in stage 2.
5. ``two_ranks``: ``torchrun --standalone --nproc-per-node 2`` of a short gapt run with both ranks on
   the one GPU (CUDA_VISIBLE_DEVICES), against the same run in one process: the phases must agree,
   and the training and validation CE within TWO_RANK_RTOL. Processes that share a GPU wrap around the
   visible ones and reduce through gloo, since NCCL refuses two ranks on one device
   (replication.runtime.distributed.backend_for); the DAG itself never puts two ranks on one GPU.
6. ``pytest_gpu``: ``pytest -m gpu`` (the tests that need a CUDA device), its pass/fail counts.
7. ``mini_dag``: a two-seed mini-DAG of the arithmetic and forgetting experiments at their gpu1 scale,
   shortened (``MINI_DAG_SHORT``): Snakemake through the documented profile (profiles/local-gpu), in a
   scratch folder, from configure to CLAIMS.md; forgetting's runs are CPU jobs beside the GPU ones.
   Shortening needs more than ``--config`` gives (the global config names no step counts), so a
   scratch copy of the experiment configs is written and ``experiments_dir`` points at it. A DAG the
   budget cuts short is reported as such, not as a failure.

Targets printed beside the numbers: gapt and gapt_joint step time <= 1.05 x ce; ce >= 40 % MFU.
A missed target is reported, not an error, and so is a stage or method the budget (or ``--skip``) left
out; a failed stage (in stage 2: an exception, a non-finite loss, the recompile limit, more graphs than
``GRAPH_BOUND``) makes the check exit 1 once every stage has run, and keeps the scratch folder.
``make gpu-check`` installs first (pip, so the network, unless the environment is current); on a
machine without network run ``python -m benchmarks.gpu_check`` in the installed environment.

``--tiny`` runs every stage's code on CPU at a tiny shape (6 blocks of width 32, 2 x 128 tokens per
micro-batch, bf16 autocast; compiled per block with dynamo's ``eager`` backend in process, uncompiled in
the subprocesses of stages 3 and 5, whose two ranks use gloo) in about a minute: the pre-flight reports
what it finds without failing, stage 6 is skipped (the gpu tests need a device) and the mini-DAG is a
Snakemake dry run through the same profile. It writes to ``--out`` like the GPU run, so point it at a
scratch folder. Results: ``<out>/gpu.json`` with provenance (benchmarks.common.write_result).
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from tabulate import tabulate

from benchmarks.common import write_result
from replication.config.base import deep_merge
from replication.config.run import RunConfig, resolve_run_config, validate_run_config, write_run_config
from replication.runtime.record import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, SUMMARY_NAME, read_metrics
from replication.science.methods import BASE_METHODS, METHODS
from replication.training.toolchain import cxx_compiler

GATED = tuple(m for m in BASE_METHODS if METHODS[m].gated)  # the methods the controller drives

REPO = Path(__file__).resolve().parent.parent
FINEWEB = REPO / "experiments" / "fineweb_pretrain" / "config.yaml"
ARITHMETIC = REPO / "experiments" / "arithmetic_ood" / "config.yaml"
SECTION = "gpu"
STAGES = (
    "preflight",
    "methods",
    "sigterm_resume",
    "arithmetic_paper",
    "two_ranks",
    "pytest_gpu",
    "mini_dag",
)  # in the order they run

# dense bf16 peak (TFLOP/s, no sparsity) by device name; the first entry whose key is in the name wins
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
)
TARGET_RATIO = 1.05  # gapt and gapt_joint step time over ce's
TARGET_MFU = 0.40  # ce
# dynamo graphs per run: the 6 of tests/test_compile.py (the first block, the other blocks and the head,
# each with and without gradients), the compiled block-mask builder's (one per grad mode, on a GPU
# only), and room for a graph break inductor may add; a graph per gapt layer would exceed it
GRAPH_BOUND = 12
MIN_SEQ_LEN = 4096  # the out-of-memory fallback halves the sequence down to this
DAG_MEMORY_MARGIN = 1.5  # a gpu1 arithmetic job's memory over the compiled ce run's, scaled to its tokens

# Seconds a stage needs on an H100, estimated from its parts (not yet timed on one): each subprocess
# trainer starts Python and torch (~10 s), draws its synthetic tokens (~0.4 s per 32,768 on one core)
# and compiles 12 blocks, which inductor's on-disk cache from stage 2 shortens to some 30 s.
# sigterm_resume: two trainers; arithmetic_paper: one compile in process and three evaluations;
# two_ranks: torchrun's two and one alone; pytest_gpu: the tiny model compiled by inductor per method.
ESTIMATE_S = {"sigterm_resume": 150.0, "arithmetic_paper": 90.0, "two_ranks": 150.0, "pytest_gpu": 150.0}
TINY_ESTIMATE_S = {"sigterm_resume": 10.0, "arithmetic_paper": 5.0, "two_ranks": 15.0, "mini_dag": 3.0}


def dag_estimate_s(slots: int) -> float:
    """Budget the mini-DAG needs: 8 short arithmetic runs of about 35 s each (start-up, 6 steps, 3
    evaluations), ``slots`` at a time, forgetting's 8 CPU runs beside them, and about 60 s of
    configuring, aggregating and drawing two experiments."""
    return 60.0 + 35.0 * math.ceil(8 / max(1, slots))


# the gated methods enter compress after 2 steps and stay: no CE progress counts, no spike ends it
FORCE_COMPRESS = {"delta_ce": 100.0, "spike_tol": 100.0, "patience_memorize": 2, "patience_compress": 10**6}

GPU_SHAPE = {
    "seq_len": 32768,
    "micro_batch_size": 1,
    "grad_accum": 2,
    "steps": 30,
    "warmup": 10,
    "mean_doc_length": 1024,
}
TINY_SHAPE = {
    "seq_len": 128,
    "micro_batch_size": 2,
    "grad_accum": 2,
    "steps": 6,
    "warmup": 4,
    "mean_doc_length": 24,
}
TINY_MODEL = {
    "vocab_size": 64,
    "n_layer": 6,
    "d_model": 32,
    "n_head": 2,
    "head_dim": 16,
    "window_start": 32,
    "window_end": 128,
    "window_multiple": 32,
}
# stage 3: the interrupted run's steps, RQ1's cadence (every 10 steps in the paper's ce runs), and the
# training records logged before the two SIGTERMs; the tiny run's steps are short, so it has more
RESUME = {"steps": 10, "alignment_every": 2, "signal_after": 3}
TINY_RESUME = {"steps": 40, "alignment_every": 2, "signal_after": 3}
SIGNAL_GAP_S = 0.05  # between the two SIGTERMs
ARITHMETIC_WARMUP = 4  # of stage 4's 6 steps, left out of its step time
# stage 4: the paper scale of arithmetic_ood, shortened: 6 steps of 2 micro-batches (gapt compresses
# from step 3, FORCE_COMPRESS), evaluations at 0, 3 and 6 on 64 examples per split and 4 greedy
# decodes per operand length (1-6 digits); 100,000 training examples hold the rows of 6 steps
ARITHMETIC_SHORT = {
    "task": {"train_examples": 100000, "val_examples": 64, "exact_match_per_digits": 4, "decode_batch": 64},
    "train": {"steps": 6, "grad_accum": 2, "eval_every": 3, "checkpoint_every": 0},
    "gapt": FORCE_COMPRESS,
}
ARITHMETIC_FINAL = (
    "final/ood/answer_ce",
    "final/id/answer_ce",
    "final/ood/exact_match",
    "final/id/exact_match",
)
ARITHMETIC_TINY = {
    "model": TINY_MODEL,
    "task": {
        "seq_len": 128,
        "micro_batch_size": 2,
        "train_examples": 2000,
        "val_examples": 16,
        "eval_batch_rows": 2,  # as micro_batch_size, as at the paper scale (1 and 1)
        "exact_match_per_digits": 1,
    },
    "train": {"device": "cpu", "eval_at_start": False},  # evaluations at 3 and 6: decoding is slow on CPU
}
# stage 5: 6 steps of gapt, compressing from step 3. The first step's CE comes from the same weights and
# micro-batches in both runs, each micro-batch through the same kernels, and differs only in the
# float64 sum of the loss over ranks: 1e-4. Later steps start from weights that differ by the fp32
# summation order of the gradients (an all-reduce mean against accumulation in one process), which
# bf16 autocast (unit roundoff 2^-8, 0.4 %) and Muon's bf16 Newton-Schulz iteration amplify step by
# step: 2e-2 (5 bf16 roundoffs; the CPU test, tests/test_distributed.py, allows 2e-2 in fp32 after 40
# steps) for the last training step and the final validation CE. A rank that trained on the wrong
# micro-batches or skipped the gradient all-reduce would differ at once or phase by phase.
TWO_RANK_STEPS = 6
TWO_RANK_RTOL = {"first": 1e-4, "final": 2e-2}


# -- configs -----------------------------------------------------------------------------------


def run_config(
    method: str,
    *,
    tiny: bool,
    seq_len: int,
    micro_batch_size: int,
    grad_accum: int,
    steps: int,
    mean_doc_length: int,
    device: str | None = None,
) -> RunConfig:
    """The FineWeb experiment's gpu1 run of ``method`` (the paper's model, bf16, compiled) on the
    synthetic task, with checkpoints and evaluations only where the loop insists (the last step's
    checkpoint, the final evaluation on one batch). ``tiny``: the TINY_MODEL, on the CPU unless
    ``device`` says otherwise."""
    base = resolve_run_config(FINEWEB, "gpu1", method, 0).to_dict()
    model = deep_merge(base["model"], TINY_MODEL if tiny else {})
    task = {
        "name": "synthetic",
        "vocab_size": model["vocab_size"],
        "seq_len": seq_len,
        "micro_batch_size": micro_batch_size,
        "mean_doc_length": mean_doc_length,
        "val_batches": 1,
    }
    train = deep_merge(
        base["train"],
        {
            "steps": steps,
            "grad_accum": grad_accum,
            "eval_every": 0,
            "eval_at_start": False,
            "checkpoint_every": 0,
            "device": device or ("cpu" if tiny else "cuda"),
            "dtype": "bfloat16",
            "compile": True,
        },
    )
    gapt = deep_merge(base["gapt"], FORCE_COMPRESS)
    data = {**base, "model": model, "task": task, "train": train, "gapt": gapt, "alignment": {"every": 0}}
    return validate_run_config(data, source=f"gpu_check/{method}")


def with_changes(config: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """``config`` with ``changes`` merged into its sections, validated again."""
    return validate_run_config(deep_merge(config.to_dict(), changes), source=f"gpu_check/{config.method}")


def trainer_config(method: str, tiny: bool, shape: dict, steps: int, changes: dict[str, Any]) -> RunConfig:
    """run_config's run at ``shape`` for ``steps`` with ``changes``, for a trainer in a subprocess, which
    compiles with inductor: the tiny check's runs are not compiled (an eager backend is in-process only)."""
    config = run_config(method, tiny=tiny, **{**_shape_args(shape), "steps": steps})
    return with_changes(config, deep_merge({"train": {"compile": False}} if tiny else {}, changes))


def arithmetic_config(tiny: bool) -> RunConfig:
    """Stage 4's run: gapt at arithmetic_ood's paper scale, shortened (ARITHMETIC_SHORT); ``tiny``: the
    TINY_MODEL on 128-token rows on the CPU."""
    data = deep_merge(resolve_run_config(ARITHMETIC, "paper", "gapt", 0).to_dict(), ARITHMETIC_SHORT)
    return validate_run_config(
        deep_merge(data, ARITHMETIC_TINY if tiny else {}), source="gpu_check/arithmetic"
    )


# -- FLOPs -------------------------------------------------------------------------------------


def mean_context(seq_len: int, window: int) -> float:
    """Keys a query attends to on average under the causal sliding window (documents aside):
    the mean over positions t of min(t + 1, window)."""
    w = min(window, seq_len)
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that enter a matrix product: every 2-D weight but the embedding table (a lookup)."""
    embed = {id(p) for p in model.embed.parameters()} if hasattr(model, "embed") else set()
    return sum(p.numel() for p in model.parameters() if p.ndim >= 2 and id(p) not in embed)


def flops_per_token(n_matmul: int, n_layer: int, attn_width: int, context: float) -> float:
    """Model FLOPs of one training token (forward and backward) = 6 N + 12 L (H Dh) C.

    N: parameters of the matrix products (block weights and head; the embedding is a lookup), 2 FLOPs
    per parameter forward and 4 backward. Attention: per block, q k^T and the weighted sum of v cost
    2 (H Dh) C each forward, three times that with backward, where C = ``mean_context`` of the
    causal sliding window, i.e. only the keys the mask keeps (FlexAttention skips the rest; document
    boundaries, which depend on the data, are not subtracted). PaLM's accounting (appendix B) with C
    in place of the sequence length."""
    return 6.0 * n_matmul + 12.0 * n_layer * attn_width * context


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no table entry for a CPU; pass --peak-tflops for an MFU"
    name = torch.cuda.get_device_name(device)
    if "MIG" in name:
        return (
            None,
            f"{name!r} is a MIG slice, whose share of the peak the table does not know; pass --peak-tflops",
        )
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"dense bf16 peak of {key} (table in benchmarks/gpu_check.py)"
    return None, f"{name!r} is not in the table; pass --peak-tflops for an MFU"


# -- one method ------------------------------------------------------------------------------


@contextmanager
def compile_backend(backend: str | None) -> Iterator[str]:
    """The backend replication.training.train compiles with, for the duration (``eager`` under --tiny)."""
    import replication.training.train as loop

    previous = getattr(loop, "COMPILE_BACKEND", None)
    if backend is None or previous is None:
        yield previous or "inductor (torch.compile's default)"
        return
    loop.COMPILE_BACKEND = backend
    try:
        yield backend
    finally:
        loop.COMPILE_BACKEND = previous


@contextmanager
def fresh_dynamo() -> Iterator[dict[str, Any]]:
    """Dynamo from a clean slate, with the recompile limit an error where torch has that option;
    yields a dict that holds the run's graph counts afterwards."""
    import torch._dynamo
    from torch._dynamo.utils import counters, guard_failures

    torch._dynamo.reset()
    counters.clear()
    guard_failures.clear()
    stats: dict[str, Any] = {}
    config = torch._dynamo.config
    strict = hasattr(config, "fail_on_recompile_limit_hit")
    try:
        with config.patch(fail_on_recompile_limit_hit=True) if strict else _nothing():
            yield stats
    finally:
        from torch._dynamo import convert_frame

        # compilations per frame (code object) since the reset: every one after a frame's first is a recompile
        per_frame = dict(getattr(convert_frame, "FRAME_COMPILE_COUNTER", {}))
        reasons = [reason for failures in guard_failures.values() for reason in failures]
        stats.update(
            {
                "unique_graphs": int(counters["stats"]["unique_graphs"]),
                "frames": len(per_frame),
                "recompiles": sum(max(0, n - 1) for n in per_frame.values()),
                "graph_breaks": int(sum(counters["graph_break"].values())),
                "guard_failures": [r.splitlines()[0][:300] for r in reasons[:8]],
                "recompile_limit": int(config.recompile_limit),
                "fail_on_recompile_limit_hit": strict,
            }
        )
        torch._dynamo.reset()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


_BATCHES: dict[tuple, list] = {}


def replay_batches(trainer, pool: int = 4) -> None:
    """Serve the run's training batches from a pool drawn once: the synthetic task draws its tokens
    in a Python loop (about 0.4 s per 32,768 tokens on one core), slower than a step on the GPU."""
    task = trainer.task
    cfg = trainer.config
    if cfg.task.name != "synthetic":
        return
    key = (cfg.task.model_dump_json(), cfg.effective_data_seed, str(task.device))
    if key not in _BATCHES:
        _BATCHES[key] = [task.train_batch(i, 0) for i in range(pool)]
    batches = _BATCHES[key]
    task.train_batch = lambda step, micro: batches[(step * cfg.train.grad_accum + micro) % len(batches)]


def measure_method(
    config: RunConfig, warmup: int, scratch: Path, final_keys: tuple[str, ...] = ("final/val/ce",)
) -> dict[str, Any]:
    """Train one run of ``config`` with replication.training.train.Trainer and time its steps; the
    summary's ``final_keys`` must be finite."""
    from replication.training.train import Trainer

    device = torch.device(config.train.device)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()  # the previous method's cached blocks would count in this one's reserve
        torch.cuda.reset_peak_memory_stats(device)
    run_dir = scratch / config.method
    start = time.perf_counter()
    result: dict[str, Any] = {"status": "ok", "error": None}
    with fresh_dynamo() as graphs:
        try:
            trainer = Trainer(config, run_dir, show_progress=False)
            replay_batches(trainer)
            summary = trainer.run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as error:  # noqa: BLE001 - a failed method is reported, the others still run
            summary = None
            result.update(status="failed", error=f"{type(error).__name__}: {str(error).strip()[:2000]}")
        finally:
            trainer = None
            gc.collect()
    result["wall_s"] = time.perf_counter() - start
    result["graphs"] = graphs
    result["peak_memory_bytes"] = (
        int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    )
    # what the caching allocator held at its peak: a job beside it needs room for this, not the above
    result["peak_reserved_bytes"] = (
        int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    train = [r for r in records if r["kind"] == "train"]
    times = [r["time"] for r in train]
    durations = [b - a for a, b in zip([0.0, *times], times)]
    losses = [r["train/ce"] for r in train]
    result["train_ce"] = losses
    result["phases"] = [r["phase"] for r in train]
    result["windows"] = [r["window"] for r in train]
    result["step_seconds"] = durations
    result["steps_done"] = len(train)
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    if summary is not None:
        result["final"] = {key: summary["metrics"].get(key) for key in final_keys}
        finite = finite and summary["nonfinite_steps"] == 0
        finite = finite and all(v is not None and math.isfinite(v) for v in result["final"].values())
    result["losses_finite"] = finite
    steady = durations[warmup:]
    if steady:
        median = statistics.median(steady)
        result["step_time_s"] = median
        result["compile_time_s"] = max(0.0, sum(durations[:warmup]) - warmup * median)
        result["steady_windows"] = result["windows"][warmup:]
        result["steady_phases"] = sorted(set(result["phases"][warmup:]))
    if result["status"] == "ok" and not finite:
        result.update(status="failed", error="a non-finite training or validation loss")
    if result["status"] == "ok" and graphs["unique_graphs"] > GRAPH_BOUND:
        result.update(
            status="failed", error=f"{graphs['unique_graphs']} dynamo graphs, more than {GRAPH_BOUND}"
        )
    if result["status"] == "ok" and not steady:
        result.update(status="failed", error=f"no steps after the {warmup} warm-up steps to time")
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _is_out_of_memory(result: dict[str, Any]) -> bool:
    return result["status"] == "failed" and "OutOfMemoryError" in (result["error"] or "")


# -- stage 1: pre-flight -----------------------------------------------------------------------


def preflight(tiny: bool) -> dict[str, Any]:
    """What the GPU path stands on. A missing device, C compiler or Python.h fails the check (under
    ``--tiny``, which needs none of them, they are only reported)."""
    include = Path(sysconfig.get_paths()["include"])
    compiler = next((path for path in map(shutil.which, ("cc", "gcc")) if path), None)
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "c_compiler": compiler,
        "cxx_compiler": cxx_compiler(),  # inductor's own, which the Trainer checks too
        "python_h": str(include / "Python.h") if (include / "Python.h").is_file() else None,
    }
    problems = []
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        driver = getattr(torch._C, "_cuda_getDriverVersion", lambda: 0)()  # e.g. 12040
        info.update(
            device=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda_driver_api=f"{driver // 1000}.{driver % 1000 // 10}" if driver else None,
            driver=_nvidia_smi("driver_version"),
        )
    else:
        problems.append("no CUDA device (--tiny runs the check on CPU at a tiny shape)")
    if compiler is None:
        problems.append(
            "no C compiler (cc or gcc on PATH): Triton compiles its kernels' launchers with one; install "
            "one (Debian: apt install gcc)"
        )
    if info["cxx_compiler"] is None:
        problems.append("no C++ compiler ($CXX, c++, g++, clang++): inductor needs one (apt install g++)")
    if info["python_h"] is None:
        problems.append(
            f"no Python.h in {include}: Triton needs Python's headers (Debian: apt install python3-dev)"
        )
    failed = bool(problems) and not tiny
    summary = (
        f"torch {info['torch']} (CUDA {info['torch_cuda']}), driver {info.get('driver')}, "
        f"{info.get('device', 'no CUDA device')} {info.get('memory_gib', '-')} GiB, cc {compiler}"
    )
    return {
        **info,
        "status": "failed" if failed else "ok",
        "reason": "; ".join(problems) or None,
        "summary": summary,
    }


def _nvidia_smi(field: str) -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout.strip() else None


# -- subprocess trainers (stages 3 and 5) ------------------------------------------------------


def trainer_env(tiny: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if tiny:
        env["OMP_NUM_THREADS"] = "1"
    return env


def trainer_command(config_path: Path, tiny: bool, launcher: tuple[str, ...] = ()) -> list[str]:
    """``python -m replication.training.train RUN/config.yaml`` as the DAG runs it (under ``launcher``)."""
    command = [*(launcher or (sys.executable,)), "-m", "replication.training.train", str(config_path)]
    return command + ["--progress", "lines", *(["--threads", "1"] if tiny else [])]


def _output(path: Path) -> dict[str, str]:
    """A subprocess's log: its error line (``_error_line``) and its last 2000 characters."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return {"error_line": _error_line(text), "output_tail": text[-2000:]}


def _error_line(text: str) -> str:
    """A trainer's first error line (replication.runtime.cli's ``error:``), else the last line naming
    an Error, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "interrupted:"))][:1]
    return (errors or [line for line in lines if "Error" in line][-1:] or lines[-1:] or ["(no output)"])[0][
        :500
    ]


def _train_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_NAME
    return [r for r in read_metrics(path) if r["kind"] == "train"] if path.exists() else []


# -- stage 3: SIGTERM, then resume -------------------------------------------------------------


def interrupt_run(command: list[str], run_dir: Path, env: dict, signal_after: int, deadline: float) -> dict:
    """Start the trainer; once it has logged ``signal_after`` training steps, SIGTERM it twice,
    SIGNAL_GAP_S apart, and wait for it to exit."""
    metrics = run_dir / METRICS_NAME
    start = time.perf_counter()
    with open(run_dir / "interrupted.log", "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            logged = 0
            while proc.poll() is None and time.perf_counter() < deadline and logged < signal_after:
                time.sleep(0.01)
                logged = metrics.read_text().count('"kind": "train"') if metrics.exists() else 0
            signalled_at = time.perf_counter() - start
            if proc.poll() is None and logged >= signal_after:
                proc.send_signal(signal.SIGTERM)
                time.sleep(SIGNAL_GAP_S)
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        "returncode": proc.returncode,
        "wall_s": time.perf_counter() - start,
        "signalled_after_s": signalled_at if logged >= signal_after else None,
        "steps_at_signal": logged,
        "steps_at_exit": len(_train_records(run_dir)),
        "checkpoint": (run_dir / CHECKPOINT_NAME).exists(),
        "summary": (run_dir / SUMMARY_NAME).exists(),
        **_output(run_dir / "interrupted.log"),
    }


def sigterm_resume(run_dir: Path, config: RunConfig, signal_after: int, budget_s: float, tiny: bool) -> dict:
    """Stage 3: the trainer as a subprocess, SIGTERM twice after ``signal_after`` logged steps, then the
    same command again, which must resume and finish with alignment records."""
    deadline = time.perf_counter() + budget_s
    path = run_dir / CONFIG_NAME
    write_run_config(config, path)
    command, env = trainer_command(path, tiny), trainer_env(tiny)
    first = interrupt_run(command, run_dir, env, signal_after, deadline)
    result: dict[str, Any] = {"steps": config.train.steps, "alignment_every": config.alignment.every}
    result["interrupted"] = first
    checks = {
        "the signals reached a running trainer": first["signalled_after_s"] is not None,
        "the first run exited on them with a checkpoint and no summary": first["returncode"] != 0
        and first["checkpoint"]
        and not first["summary"],
    }
    if all(checks.values()):
        start = time.perf_counter()
        with open(run_dir / "resumed.log", "w") as log:
            done = subprocess.run(
                command,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=max(1.0, deadline - time.perf_counter()),
            )
        records = read_metrics(run_dir / METRICS_NAME)
        resumes = [r["step"] for r in records if r.get("event") == "resume"]
        alignment = [r["step"] for r in records if r["kind"] == "alignment"]
        result["resumed"] = {
            "returncode": done.returncode,
            "wall_s": time.perf_counter() - start,
            "resumed_at": resumes,
            "steps": len([r for r in records if r["kind"] == "train"]),
            "alignment_steps": alignment,
            **_output(run_dir / "resumed.log"),
        }
        checks.update(
            {
                "the same command resumed from the step it stopped after": resumes
                == [first["steps_at_exit"]],
                "the resumed run finished with summary.json": done.returncode == 0
                and (run_dir / SUMMARY_NAME).exists(),
                "the run logged every step once": result["resumed"]["steps"] == config.train.steps,
                "RQ1's alignment records are in metrics.jsonl": bool(alignment),
            }
        )
    result["checks"] = checks
    missed = [name for name, ok in checks.items() if not ok]
    if missed:
        error = result.get("resumed", first)["error_line"]
        return {**result, "status": "failed", "reason": f"not so: {missed[0]} ({error})"}
    resumed = result["resumed"]
    result["summary"] = (
        f"SIGTERM x 2 after {first['steps_at_signal']} steps ({first['signalled_after_s']:.0f} s), "
        f"stopped after {first['steps_at_exit']}, exit {first['returncode']} in {first['wall_s']:.0f} s; "
        f"resumed, finished in {resumed['wall_s']:.0f} s; RQ1 records: {len(resumed['alignment_steps'])}"
    )
    return {**result, "status": "ok", "reason": None}


# -- stage 4: the arithmetic experiment's paper path -------------------------------------------


def arithmetic_paper(config: RunConfig, warmup: int, scratch: Path) -> dict[str, Any]:
    """Stage 4: measure_method on the shortened paper-scale arithmetic run (recompiles fatal)."""
    result = measure_method(config, warmup, scratch, final_keys=ARITHMETIC_FINAL)
    result["reason"] = result.pop("error")
    graphs = result["graphs"]
    result["summary"] = (
        f"{result['steps_done']} steps, {graphs['unique_graphs']} graphs, {graphs['recompiles']} recompiles; "
        + ", ".join(
            f"{k.split('/', 1)[1]} {v:.3g}" for k, v in result.get("final", {}).items() if v is not None
        )
    )
    return result


# -- stage 5: two ranks on the one device ------------------------------------------------------


def compare_runs(ranks: list[dict[str, Any]], alone: list[dict[str, Any]]) -> dict[str, Any]:
    """The 2-rank run's metrics against the 1-process run's, within TWO_RANK_RTOL."""
    train = [[r for r in records if r["kind"] == "train"] for records in (ranks, alone)]
    evals = [[r for r in records if r["kind"] == "eval"] for records in (ranks, alone)]

    def rel(a: float, b: float) -> float:
        return abs(a - b) / max(abs(b), 1e-12)

    same_steps = len(train[0]) == len(train[1]) > 0 and all(evals)
    if not same_steps:
        return {
            "ok": False,
            "reason": f"training steps {len(train[0])} and {len(train[1])}, or no evaluation",
        }
    first = rel(train[0][0]["train/ce"], train[1][0]["train/ce"])
    final = max(
        rel(train[0][-1]["train/ce"], train[1][-1]["train/ce"]),
        rel(evals[0][-1]["val/ce"], evals[1][-1]["val/ce"]),
    )
    phases = [[r["phase"] for r in t] for t in train]
    checks = {
        "phases": phases[0] == phases[1],
        "first step's CE": first <= TWO_RANK_RTOL["first"],
        "final CE": final <= TWO_RANK_RTOL["final"],
    }
    missed = [name for name, ok in checks.items() if not ok]
    return {
        "ok": not missed,
        "reason": f"the runs differ in: {', '.join(missed)}" if missed else None,
        "first_rel_diff": first,
        "final_rel_diff": final,
        "train_ce": [[r["train/ce"] for r in t] for t in train],
        "final_val_ce": [e[-1]["val/ce"] for e in evals],
        "phases": phases,
        "rtol": TWO_RANK_RTOL,
    }


def two_ranks(scratch: Path, config: RunConfig, budget_s: float, tiny: bool) -> dict[str, Any]:
    """Stage 5: torchrun with 2 processes on the one device against 1 process, the same config."""
    deadline = time.perf_counter() + budget_s
    env = trainer_env(tiny)
    cuda = config.train.device == "cuda"
    if cuda:  # both ranks see only the device the check measures
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    result: dict[str, Any] = {"steps": config.train.steps, "runs": {}}
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    for name, launcher in (("two_ranks", torchrun), ("one_process", ())):
        run_dir = scratch / name
        write_run_config(config, run_dir / CONFIG_NAME)
        start = time.perf_counter()
        with open(scratch / f"{name}.log", "w") as log:
            done = subprocess.run(
                trainer_command(run_dir / CONFIG_NAME, tiny, launcher),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=max(1.0, deadline - time.perf_counter()),
            )
        result["runs"][name] = {"returncode": done.returncode, "wall_s": time.perf_counter() - start}
        if done.returncode != 0:
            result["runs"][name].update(_output(scratch / f"{name}.log"))
            return {
                **result,
                "status": "failed",
                "reason": f"{name} exited {done.returncode}: {result['runs'][name]['error_line']}",
            }
    comparison = compare_runs(
        *(read_metrics(scratch / n / METRICS_NAME) for n in ("two_ranks", "one_process"))
    )
    result["comparison"] = comparison
    if not comparison["ok"]:
        return {**result, "status": "failed", "reason": comparison["reason"]}
    result["summary"] = (
        f"two ranks on one device; CE relative difference {comparison['first_rel_diff']:.1e} "
        "at the first step, "
        f"{comparison['final_rel_diff']:.1e} at the end (tolerances {TWO_RANK_RTOL['first']:g}, "
        f"{TWO_RANK_RTOL['final']:g}); phases agree"
    )
    return {**result, "status": "ok", "reason": None}


# -- stage 6: pytest -m gpu --------------------------------------------------------------------


def pytest_counts(output: str) -> dict[str, int]:
    """The counts of pytest's summary line ('3 passed, 1 failed, 2 skipped in 9.1s')."""
    found = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b", output)
    return {("errors" if word.startswith("error") else word): int(n) for n, word in found}


def pytest_gpu(budget_s: float, args: tuple[str, ...] = ("-m", "gpu")) -> dict[str, Any]:
    """Stage 6: ``pytest -m gpu`` in a subprocess; ok when it exits 0 having passed at least one test."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, budget_s))
    except subprocess.TimeoutExpired:
        return {"status": "timed_out", "reason": f"pytest did not finish within the {budget_s:.0f} s left"}
    last = [line for line in done.stdout.splitlines() if line.strip()][-1:]
    counts = pytest_counts(last[0] if last else "")
    result = {"command": " ".join(command[1:]), "returncode": done.returncode, "counts": counts}
    result["summary"] = ", ".join(f"{n} {word}" for word, n in counts.items())
    if done.returncode != 0 or not counts.get("passed"):
        failures = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        result.update(failures=failures[:20], output_tail=done.stdout[-3000:] + done.stderr[-1000:])
        return {**result, "status": "failed", "reason": f"pytest exit {done.returncode}: {result['summary']}"}
    return {**result, "status": "ok", "reason": None}


# -- stage 7: the mini-DAG ---------------------------------------------------------------------

MINI_DAG_SEEDS = [0, 1]
MINI_DAG_MAX_SLOTS = 2  # training jobs at once on the one GPU, at most; fewer where memory is short
PROFILE = "profiles/local-gpu"  # the profile docs/running.md gives for a GPU machine
# the gpu1 scales, shortened. arithmetic_ood: 6 steps, evaluations at 3 and 6 on few examples; the
# model, batch shape (8 x 16 rows x 2048 tokens), precision and attention are gpu1's.
# forgetting_separation (CPU jobs, the paper's own size at gpu1): 60 mix and 30 fine-tuning steps,
# evaluations every 30, patiences x 90 / 2000 of its own
MINI_DAG_SHORT = {
    "arithmetic_ood": {
        "task": {
            "train_examples": 20000,
            "val_examples": 64,
            "exact_match_per_digits": 8,
            "decode_batch": 64,
        },
        "train": {"steps": 6, "eval_every": 3, "checkpoint_every": 3},
        "gapt": {"delta_ce": 0.1, "patience_memorize": 2, "patience_compress": 2},
    },
    "forgetting_separation": {
        "task": {
            "stages": [
                {"name": "mix", "steps": 60, "groups": ["a", "b"]},
                {"name": "finetune", "steps": 30, "groups": ["a"]},
            ]
        },
        "train": {"steps": 90, "eval_every": 30},
        "gapt": {"patience_memorize": 6, "patience_compress": 3},
    },
}


def write_mini_dag_experiments(folder: Path) -> Path:
    """A scratch copy of experiments/*/config.yaml and plan.yaml in which the gpu1 scales of the
    experiments of MINI_DAG_SHORT are shortened; returns the folder to pass as ``experiments_dir``."""
    for source in sorted((REPO / "experiments").glob("*/*.yaml")):
        target = folder / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    for experiment, short in MINI_DAG_SHORT.items():
        path = folder / experiment / "config.yaml"
        spec = yaml.safe_load(path.read_text())
        gpu1 = spec["scales"]["gpu1"] = copy.deepcopy(spec["scales"]["gpu1"])  # may be a YAML alias
        gpu1["config"] = deep_merge(gpu1.get("config", {}), short)
        gpu1["description"] = "gpu_check's mini-DAG: " + gpu1.get("description", "")
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def mini_dag_overrides(scratch: Path, slots: int = 1) -> list[str]:
    """The mini-DAG's global config over gpu1.yaml: ``slots`` of its small runs share the one GPU
    (``jobs_per_gpu``, replication.dag.devices), each with two threads."""
    paths = {key: scratch / key.split("_")[0] for key in ("runs_dir", "results_dir", "logs_dir", "data_dir")}
    return [
        f"experiments=[{','.join(MINI_DAG_SHORT)}]",
        f"seeds=[{','.join(map(str, MINI_DAG_SEEDS))}]",
        f"experiments_dir={scratch / 'experiments'}",
        "threads_per_run=2",
        f"jobs_per_gpu={slots}",
        *[f"{key}={value}" for key, value in paths.items()],
    ]


def check_mini_dag_plan(scratch: Path) -> dict[str, Any]:
    """Resolve the mini-DAG's global config and every run config, as the Snakefile does first."""
    from replication.dag.plan import Plan
    from replication.dag.schema import resolve_global_config

    write_mini_dag_experiments(scratch / "experiments")
    raw = yaml.safe_load((REPO / "config" / "gpu1.yaml").read_text())
    for item in mini_dag_overrides(scratch):
        key, _, value = item.partition("=")
        raw[key] = yaml.safe_load(value)
    plan = Plan(resolve_global_config(raw)).check()
    runs = {e: plan.runs(e) for e in MINI_DAG_SHORT}
    steps = {
        e: resolve_run_config(plan.specs[e], r[0].scale, r[0].method, r[0].seed).train.steps
        for e, r in runs.items()
    }
    gpu_jobs = {e: plan.job(e, "gpus_per_run") > 0 for e in MINI_DAG_SHORT}
    return {
        "runs": {e: len(r) for e, r in runs.items()},
        "steps": steps,
        "jobs": {
            "train": sum(len(r) for e, r in runs.items() if not gpu_jobs[e]),
            "train_gpu": sum(len(r) for e, r in runs.items() if gpu_jobs[e]),
            "claims": 1,
        },
        "outputs": len(plan.final_outputs()),
    }


def mini_dag_slots(run_peak_bytes: int | None) -> int:
    """Training jobs the GPU holds at once: a gpu1 arithmetic run has the paper's model and 16 x 2048 =
    32,768 tokens per micro-batch, so ce's measured peak at 32,768 tokens stands in for its memory."""
    if not torch.cuda.is_available() or not run_peak_bytes:
        return 1
    total = torch.cuda.get_device_properties(0).total_memory
    return max(1, min(MINI_DAG_MAX_SLOTS, int(0.9 * total // run_peak_bytes)))


def mini_dag_commands(scratch: Path, slots: int = 1) -> tuple[list[str], list[str]]:
    """The Snakemake command of the mini-DAG through PROFILE (run from the repository root) and the
    check of its outputs."""
    overrides = mini_dag_overrides(scratch, slots)
    snakemake = [sys.executable, "-m", "snakemake", "--profile", PROFILE, "--configfile", "config/gpu1.yaml"]
    snakemake += ["--config", *overrides, "--quiet", "rules"]
    check = [sys.executable, "-m", "replication.dag.plan", "config/gpu1.yaml", *overrides]
    return snakemake, check


def dag_jobs(output: str) -> dict[str, int]:
    """The job counts of the training and claims rules in Snakemake's job statistics."""
    rows = (line.split()[:2] for line in output.splitlines())
    return {
        row[0]: int(row[1]) for row in rows if len(row) == 2 and row[0] in ("train", "train_gpu", "claims")
    }


def mini_dag(scratch: Path, budget_s: float, slots: int = 1, dry_run: bool = False) -> dict[str, Any]:
    """Snakemake runs the experiments of MINI_DAG_SHORT at their shortened gpu1 scale, 2 seeds x 4
    methods each, ``slots`` GPU jobs at a time, in ``scratch`` (its own runs, results, logs and
    experiment configs), then checks that every final output exists; at ``budget_s`` Snakemake and its
    jobs are stopped. ``dry_run`` (--tiny): Snakemake's plan (-n), whose jobs must be those planned."""
    scratch.mkdir(parents=True, exist_ok=True)
    planned = check_mini_dag_plan(scratch)
    snakemake, check = mini_dag_commands(scratch, slots)
    if dry_run:
        snakemake.append("-n")
    result: dict[str, Any] = {
        **planned,
        "slots": slots,
        "dry_run": dry_run,
        "command": " ".join(snakemake),
        "scratch": str(scratch),
    }
    start = time.perf_counter()
    # a session of its own, so that a timeout stops the training jobs Snakemake started too
    dag = subprocess.Popen(
        snakemake,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = dag.communicate(timeout=max(1.0, budget_s))
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(dag.pid, sig)
            except ProcessLookupError:
                break
            try:
                dag.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        result.update(
            status="timed_out",
            wall_s=time.perf_counter() - start,
            reason=f"the DAG did not finish within the {budget_s:.0f} s left; its logs are in {scratch}/logs",
        )
        return result
    result["wall_s"] = time.perf_counter() - start
    if dry_run:
        result["planned_jobs"] = dag_jobs(output)
        ok = dag.returncode == 0 and result["planned_jobs"] == planned["jobs"]
        result.update(status="ok" if ok else "failed", summary=f"dry run: {result['planned_jobs']}")
        if not ok:
            result.update(
                reason=f"snakemake -n exit {dag.returncode}, jobs {result['planned_jobs']}, "
                f"expected {planned['jobs']}",
                output_tail=output[-3000:],
            )
        return result
    outputs = subprocess.run(check, cwd=REPO, capture_output=True, text=True)
    result["outputs_check"] = (outputs.stdout + outputs.stderr).strip()
    if dag.returncode == 0 and outputs.returncode == 0:
        result.update(
            status="ok",
            summary=f"{sum(planned['runs'].values())} runs to CLAIMS.md, {slots} GPU job(s) at once",
        )
    else:
        result.update(
            status="failed",
            reason=f"snakemake exit {dag.returncode}, output check exit "
            f"{outputs.returncode}; logs in {scratch}/logs",
            output_tail=output[-3000:],
        )
    return result


# -- the whole check ---------------------------------------------------------------------------


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def run_stage(name: str, needs_s: float, left: Callable[[], float], body: Callable[[], dict]) -> dict:
    """One stage, or a skip saying why when the budget left (``left()``) is below what it needs. An
    exception fails the stage, not the check: the stages after it still run."""
    if left() < needs_s:
        result = skipped(
            f"{max(0.0, left()):.0f} s of the budget left, the stage needs about {needs_s:.0f} s"
        )
    else:
        print(f"gpu_check: {name}, {left():.0f} s of the budget left", flush=True)
        start = time.perf_counter()
        try:
            result = body()
        except Exception as error:  # noqa: BLE001 - a failed stage is reported, the others still run
            result = {"status": "failed", "reason": f"{type(error).__name__}: {str(error).strip()[:2000]}"}
        result["wall_s"] = time.perf_counter() - start
    reason = result.get("reason")
    print(
        f"gpu_check: {name} {result['status']}" + (f": {reason.splitlines()[0]}" if reason else ""),
        flush=True,
    )
    return result


def train_methods(args: argparse.Namespace, shape: dict, left: Callable[[], float], scratch: Path) -> tuple:
    """Stage 2: every method of ``args.methods`` through measure_method, ce first; ``shape`` is
    updated when ce runs out of memory. Returns the results by method, the last config and the
    sequence length the fallback started from (None without one)."""
    methods: dict[str, dict[str, Any]] = {}
    seq_fallback_from = None
    config = None
    for method in args.methods:
        # the last method's time: the first carries the cold compile, which later ones find cached
        last = next((m["wall_s"] for m in reversed(methods.values()) if "wall_s" in m), 0.0)
        if last and left() < last:
            methods[method] = {
                "status": "skipped",
                "error": f"{left():.0f} s of the budget left, the last method took {last:.0f} s",
            }
            print(f"gpu_check: skipping {method}: {methods[method]['error']}", flush=True)
            continue
        while True:
            config = run_config(method, tiny=args.tiny, **_shape_args(shape))
            print(
                f"gpu_check: {method}, {shape['seq_len']} tokens x {shape['micro_batch_size']} rows x "
                f"{shape['grad_accum']} micro-batches, {shape['steps']} steps",
                flush=True,
            )
            result = measure_method(config, shape["warmup"], scratch)
            if (
                method == args.methods[0]
                and _is_out_of_memory(result)
                and shape["seq_len"] // 2 >= MIN_SEQ_LEN
            ):
                seq_fallback_from = seq_fallback_from or shape["seq_len"]
                shape["seq_len"] //= 2
                print(f"gpu_check: out of memory; retrying at {shape['seq_len']} tokens", flush=True)
                continue
            break
        methods[method] = result
        print(
            f"gpu_check: {method} {result['status']} in {result['wall_s']:.0f} s"
            + (f": {result['error'].splitlines()[0]}" if result["error"] else ""),
            flush=True,
        )
    return methods, config, seq_fallback_from


def gpu_check(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    tiny = args.tiny
    shape = dict(TINY_SHAPE if tiny else GPU_SHAPE)
    for key in ("seq_len", "grad_accum", "steps", "warmup"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    if shape["steps"] <= shape["warmup"]:
        raise SystemExit(f"--steps ({shape['steps']}) must exceed --warmup ({shape['warmup']})")

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    stages: dict[str, dict[str, Any]] = {"preflight": preflight(tiny)}
    pre = stages["preflight"]
    print(f"gpu_check: pre-flight: {pre['summary']}", flush=True)
    blocked = pre["status"] == "failed"
    if blocked:  # every later stage compiles or needs the device: nothing else runs
        print(f"gpu_check: pre-flight failed: {pre['reason']}", flush=True)
    elif pre["reason"]:
        print(f"gpu_check: pre-flight, not needed here: {pre['reason']}", flush=True)

    def reason_to_skip(name: str) -> str | None:
        if blocked:
            return "the pre-flight failed"
        if name in args.skip:
            return "--skip"
        return "--tiny: the gpu tests need a CUDA device" if tiny and name == "pytest_gpu" else None

    device = torch.device("cuda" if not tiny and torch.cuda.is_available() else "cpu")
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    methods: dict[str, dict[str, Any]] = {}
    seq_fallback_from = None
    config = None
    with compile_backend("eager" if tiny else None) as backend:
        if reason_to_skip("methods"):
            methods = {m: {"status": "skipped", "error": None} for m in args.methods}
        else:
            methods, config, seq_fallback_from = train_methods(args, shape, left, scratch)

        from replication.models import build_model

        model_cfg = (
            config.model if config is not None else run_config("ce", tiny=tiny, **_shape_args(shape)).model
        )
        with torch.device("meta"):  # shapes only
            model = build_model(model_cfg)
        n_params = sum(p.numel() for p in model.parameters())
        n_matmul = matmul_params(model)
        tokens_per_step = shape["seq_len"] * shape["micro_batch_size"] * shape["grad_accum"]
        ce_time = methods.get("ce", {}).get("step_time_s")
        for result in methods.values():
            if "step_time_s" not in result:
                continue
            context = statistics.mean(mean_context(shape["seq_len"], w) for w in result["steady_windows"])
            fpt = flops_per_token(n_matmul, model_cfg.n_layer, model_cfg.n_head * model_cfg.head_dim, context)
            result["tokens_per_s"] = tokens_per_step / result["step_time_s"]
            result["mean_attention_context"] = context
            result["flops_per_token"] = fpt
            result["mfu"] = fpt * result["tokens_per_s"] / (peak * 1e12) if peak else None
            result["ratio_to_ce"] = result["step_time_s"] / ce_time if ce_time else None

        verdict = {
            # a method the budget left out is not a failure; "complete" says whether every one ran
            "runs_ok": all(m["status"] in ("ok", "skipped") for m in methods.values()),
            "complete": all(m["status"] == "ok" for m in methods.values()),
            **{
                f"{m}_ratio_within_target": None
                if methods[m].get("ratio_to_ce") is None
                else methods[m]["ratio_to_ce"] <= TARGET_RATIO
                for m in GATED
                if m in methods
            },
        }
        ce_mfu = methods.get("ce", {}).get("mfu")
        verdict["ce_mfu_within_target"] = None if ce_mfu is None else ce_mfu >= TARGET_MFU
        statuses = [m["status"] for m in methods.values()]
        errors = [f"{name}: {m['error']}" for name, m in methods.items() if m.get("error")]
        status = "failed" if "failed" in statuses else "ok" if "ok" in statuses else "skipped"
        stages["methods"] = {
            "status": status,
            "reason": reason_to_skip("methods") or (errors[0] if errors else None),
            "summary": f"{statuses.count('ok')} of {len(statuses)} methods ok (the table above)",
            "wall_s": sum(m.get("wall_s", 0.0) for m in methods.values()),
        }

        # stages 3 to 6
        resume = TINY_RESUME if tiny else RESUME
        estimates = TINY_ESTIMATE_S if tiny else ESTIMATE_S
        alignment = {"alignment": {"every": resume["alignment_every"]}}
        # a validation batch per rank: a rank without one fails in replication.tasks.evaluation.evaluate_lm
        two_batches = {"task": {"val_batches": 2}}

        bodies: dict[str, Callable[[], dict[str, Any]]] = {
            "sigterm_resume": lambda: sigterm_resume(
                scratch / "resume",
                trainer_config("ce", tiny, shape, resume["steps"], alignment),
                resume["signal_after"],
                left() - 5.0,
                tiny,
            ),
            "arithmetic_paper": lambda: arithmetic_paper(
                arithmetic_config(tiny), ARITHMETIC_WARMUP, scratch / "arithmetic"
            ),
            "two_ranks": lambda: two_ranks(
                scratch / "two_ranks",
                trainer_config("gapt", tiny, shape, TWO_RANK_STEPS, two_batches),
                left() - 5.0,
                tiny,
            ),
            "pytest_gpu": lambda: pytest_gpu(left() - 5.0),
        }
        for name, body in bodies.items():
            why = reason_to_skip(name)
            stages[name] = skipped(why) if why else run_stage(name, estimates.get(name, 0.0), left, body)
            if why:
                print(f"gpu_check: {name} skipped: {why}", flush=True)

    # stage 7, the mini-DAG: GPU jobs share the device in as many slots as ce's memory allows
    ce_peak = methods.get("ce", {}).get("peak_reserved_bytes")
    # activations, most of the memory, grow with the tokens of a micro-batch: 32,768 in a gpu1 run,
    # which runs uncompiled (SDPA): more activations than the compiled run measured, hence the margin
    scale = DAG_MEMORY_MARGIN * max(1.0, 32768 / (shape["seq_len"] * shape["micro_batch_size"]))
    slots = mini_dag_slots(ce_peak and int(ce_peak * scale))
    why = reason_to_skip("mini_dag")
    needs = TINY_ESTIMATE_S["mini_dag"] if tiny else dag_estimate_s(slots)
    dag_body = lambda: mini_dag(scratch / "dag", left() - 10.0, slots, dry_run=tiny)  # noqa: E731
    stages["mini_dag"] = skipped(why) if why else run_stage("mini_dag", needs, left, dag_body)
    if stages["mini_dag"]["status"] == "skipped" and not why and not tiny:
        stages["mini_dag"]["reason"] += "; run it by hand: see mini_dag in benchmarks/gpu_check.py"

    # a stage the budget cut short (timed_out) proves nothing either way: only a failed one fails
    verdict["failed_stages"] = [name for name, stage in stages.items() if stage["status"] == "failed"]
    verdict["ok"] = not verdict["failed_stages"]
    if args.keep_scratch or not verdict["ok"]:  # a failed stage keeps its runs and logs
        print(f"gpu_check: the scratch folder is kept: {scratch}", flush=True)
    else:
        shutil.rmtree(scratch, ignore_errors=True)

    from replication.runtime.record import device_description, provenance

    return {
        "provenance": provenance(device),  # replaces write_result's, which describes the CPU
        "mode": "tiny (CPU)" if tiny else "gpu",
        "device": device_description(device),
        "shape": {
            **{k: getattr(model_cfg, k) for k in ("n_layer", "d_model", "n_head", "head_dim", "vocab_size")},
            "attention": model_cfg.attention,
            **shape,
            "tokens_per_step": tokens_per_step,
            "seq_len_fallback_from": seq_fallback_from,
            "dtype": "bfloat16",
            "compile": True,
            "compile_backend": backend,
        },
        "n_params": n_params,
        "n_matmul_params": n_matmul,
        "flops_per_token_formula": "6 N + 12 L (H Dh) C; N: matmul parameters (embedding excluded), "
        "C: mean keys per query under the causal sliding window (flops_per_token)",
        "peak_tflops": peak,
        "peak_source": peak_source,
        "targets": {
            "gapt_and_gapt_joint_step_time_over_ce": f"<= {TARGET_RATIO}",
            "ce_mfu": f">= {TARGET_MFU}",
            "graphs_per_run": f"<= {GRAPH_BOUND}",
            "two_ranks_ce_rtol": TWO_RANK_RTOL,
        },
        "methods": methods,
        "stages": stages,
        "verdict": verdict,
        "budget_s": args.budget_s,
        "elapsed_s": time.perf_counter() - start,
    }


def _shape_args(shape: dict[str, Any]) -> dict[str, Any]:
    return {k: shape[k] for k in ("seq_len", "micro_batch_size", "grad_accum", "steps", "mean_doc_length")}


def print_report(result: dict[str, Any]) -> None:
    shape = result["shape"]
    print(
        f"\nGPU check ({result['mode']}, {result['device']['device_name']}): "
        f"{result['n_params'] / 1e6:.1f} M parameters, {shape['tokens_per_step']} tokens per step "
        f"({shape['seq_len']} x {shape['micro_batch_size']} x {shape['grad_accum']}), bf16, "
        f"compiled ({shape['compile_backend']}); peak "
        f"{result['peak_tflops'] or '?'} TFLOP/s ({result['peak_source']})"
    )

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = []
    for name, m in result["methods"].items():
        graphs = m.get("graphs", {})
        rows.append(
            [
                name,
                m["status"],
                num(m.get("step_time_s") and m["step_time_s"] * 1e3, ".1f"),
                num(m.get("tokens_per_s"), ",.0f"),
                num(m.get("mfu") and 100 * m["mfu"], ".1f"),
                num(m.get("ratio_to_ce"), ".3f"),
                num(m.get("peak_memory_bytes") and m["peak_memory_bytes"] / 2**30, ".1f"),
                num(m.get("compile_time_s"), ".1f"),
                f"{graphs.get('unique_graphs', '-')}/{graphs.get('recompiles', '-')}",
                "yes" if m.get("losses_finite") else "no",
            ]
        )
    print(
        tabulate(
            rows,
            headers=[
                "method",
                "status",
                "ms / step",
                "tokens / s",
                "ce-eq. MFU %",
                "over ce",
                "peak GiB",
                "compile s",
                "graphs/recompiles",
                "finite",
            ],
            tablefmt="github",
        )
    )
    for name, m in result["methods"].items():
        if m.get("error"):
            print(f"  {name}: {m['error'].splitlines()[0]}")
    targets = result["targets"]
    verdict = result["verdict"]
    mfu_met = {True: "met", False: "not met", None: "not measured"}[verdict["ce_mfu_within_target"]]
    print(
        f"targets: gapt, gapt_joint step time {targets['gapt_and_gapt_joint_step_time_over_ce']} x ce "
        f"({', '.join(f'{k}: {v}' for k, v in verdict.items() if 'ratio' in k) or 'not measured'}); "
        f"ce MFU {targets['ce_mfu']} ({mfu_met})"
    )
    rows = []
    for name, stage in result["stages"].items():
        note = stage.get("reason") or stage.get("summary") or ""
        rows.append(
            [
                name,
                stage["status"],
                num(stage.get("wall_s"), ".0f"),
                note.splitlines()[0][:160] if note else "",
            ]
        )
    print(tabulate(rows, headers=["stage", "status", "s", "reason or result"], tablefmt="github"))
    print(f"elapsed {result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="every stage on CPU at a tiny shape (seconds to tens of seconds each)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"), help="writes OUT/gpu.json")
    parser.add_argument("--budget-s", type=float, default=600.0, help="wall-clock budget of the whole check")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per micro-batch row (GPU: 32768)")
    parser.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (>= 2 for gapt)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per method (GPU: 30)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of the timing (GPU: 10)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--methods", nargs="+", default=list(BASE_METHODS), choices=BASE_METHODS)
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=STAGES[1:],
        metavar="STAGE",
        help=f"leave out: {', '.join(STAGES[1:])}",
    )
    parser.add_argument(
        "--keep-scratch", action="store_true", help="keep the scratch folder (run folders, DAG)"
    )
    args = parser.parse_args(argv)
    if args.methods[0] != "ce" and "ce" in args.methods:
        args.methods = ["ce", *[m for m in args.methods if m != "ce"]]  # ratios are to ce: measure it first
    result = gpu_check(args)
    path = write_result(args.out, SECTION, copy.deepcopy(result))
    print_report(result)
    print(f"wrote {path}")
    return 0 if result["verdict"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
