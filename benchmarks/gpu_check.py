"""python -m benchmarks.gpu_check [--tiny] [--out results/benchmarks] [--budget-s 480]

The GPU path in one command (`make gpu-check`), within a budget of 8 minutes and with no network:

1. Every method (ce, ce_mbe, gapt, gapt_joint) trains the paper's modded model at its paper shape
   (12 blocks, width 768, 6 heads of 128, vocabulary 50304; 32,768 tokens per micro-batch, or with
   ``--seq-len`` another length; on an out-of-memory error ce halves it until it fits, down to 4096)
   for a few dozen steps through the real ``replication.training.train.Trainer`` with ``train.dtype:
   bfloat16`` and ``train.compile: true``, on the synthetic task (no data files). Each method gets
   the same tokens per step; the gated methods are held in their compress phase from step 3 on (the
   costly phase, as benchmarks.steps measures it), so the step-time ratios state what compression
   costs. Per method: median step time after ``--warmup`` steps, tokens/s, MFU (ce-equivalent: the
   FLOPs of a full forward and backward per token, although gapt's MBE micro-batches stop early and
   skip the head, so its MFU overstates the work it does), the ratio to ce,
   peak device memory, compile time (the warm-up steps' time minus as many steady steps), and the
   number of graphs dynamo traced and recompiled, with ``fail_on_recompile_limit_hit`` on: a run
   that reaches dynamo's recompile limit fails, as does one with a non-finite loss.
2. With the budget left, a two-seed mini-DAG of the arithmetic experiment at a shortened gpu1 scale
   (``arithmetic_mini_dag``): Snakemake in a scratch folder, from configure to CLAIMS.md, proving
   that the DAG runs on a GPU. Shortening needs more than ``--config`` gives (the global config
   names no step counts), so the function writes a scratch copy of the experiment configs whose
   gpu1 scale has fewer steps and examples, and points ``experiments_dir`` at it. It is skipped,
   saying so, when the budget left cannot carry it, and one the budget cuts short is reported as
   such, not as a failure.

Targets printed beside the numbers: gapt and gapt_joint step time <= 1.05 x ce; ce >= 40 % MFU.
A missed target is reported, not an error, and so is a method the budget left out; a failed run (an
exception, a non-finite loss, the recompile limit, more graphs than ``GRAPH_BOUND``) or a failed
mini-DAG exits 1. ``make gpu-check`` installs first (pip, so the network, unless the environment is
current); on a machine without network run ``python -m benchmarks.gpu_check`` in the installed
environment. The first compile needs a C compiler and Python's headers (Triton).

``--tiny`` runs the same code on CPU at a tiny shape (6 blocks of width 32, 2 x 128 tokens per
micro-batch, bf16 autocast, compiled per block with dynamo's ``eager`` backend) in seconds, and
only validates the mini-DAG's plan; it writes to ``--out`` like the GPU run, so point it at a
scratch folder. Results: ``<out>/gpu.json`` with provenance (benchmarks.common.write_result).
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from tabulate import tabulate

from benchmarks.common import write_result
from replication.config.base import deep_merge
from replication.config.run import RunConfig, resolve_run_config, validate_run_config
from replication.science.methods import METHOD_NAMES, METHODS

GATED = tuple(m for m in METHOD_NAMES if METHODS[m].gated)  # the methods the controller drives

REPO = Path(__file__).resolve().parent.parent
FINEWEB = REPO / "experiments" / "fineweb_pretrain" / "config.yaml"
SECTION = "gpu"

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


def dag_estimate_s(slots: int) -> float:
    """Budget the mini-DAG needs: 8 short runs of about 35 s each (start-up, 6 steps, 3 evaluations),
    ``slots`` at a time, and about 40 s of configuring, aggregating and drawing."""
    return 40.0 + 35.0 * math.ceil(8 / max(1, slots))


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
    key = (cfg.task.model_dump_json(), cfg.effective_data_seed, str(task.device))
    if key not in _BATCHES:
        _BATCHES[key] = [task.train_batch(i, 0) for i in range(pool)]
    batches = _BATCHES[key]
    task.train_batch = lambda step, micro: batches[(step * cfg.train.grad_accum + micro) % len(batches)]


def measure_method(config: RunConfig, warmup: int, scratch: Path) -> dict[str, Any]:
    """Train one run of ``config`` with replication.training.train.Trainer and time its steps."""
    from replication.runtime.record import read_metrics
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
        final = summary["metrics"].get("final/val/ce")
        result["final_val_ce"] = final
        finite = finite and summary["nonfinite_steps"] == 0 and final is not None and math.isfinite(final)
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


# -- the mini-DAG ------------------------------------------------------------------------------

MINI_DAG_SEEDS = [0, 1]
MINI_DAG_MAX_SLOTS = 2  # training jobs at once on the one GPU, at most; fewer where memory is short
# the gpu1 scale of arithmetic_ood, shortened: 6 steps, evaluations at 3 and 6 on few examples; the
# model, batch shape (8 x 16 rows x 2048 tokens), precision and attention are gpu1's
MINI_DAG_GPU1 = {
    "task": {"train_examples": 20000, "val_examples": 64, "exact_match_per_digits": 8, "decode_batch": 64},
    "train": {"steps": 6, "eval_every": 3, "checkpoint_every": 3},
    "gapt": {"delta_ce": 0.1, "patience_memorize": 2, "patience_compress": 2},
}


def write_mini_dag_experiments(folder: Path) -> Path:
    """A scratch copy of experiments/*/config.yaml and plan.yaml in which arithmetic_ood's gpu1 scale
    is shortened (MINI_DAG_GPU1); returns the folder to pass as ``experiments_dir``."""
    for source in sorted((REPO / "experiments").glob("*/*.yaml")):
        target = folder / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    path = folder / "arithmetic_ood" / "config.yaml"
    spec = yaml.safe_load(path.read_text())
    gpu1 = spec["scales"]["gpu1"]
    gpu1["config"] = deep_merge(gpu1.get("config", {}), MINI_DAG_GPU1)
    gpu1["description"] = "gpu_check's mini-DAG: " + gpu1.get("description", "")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def mini_dag_overrides(scratch: Path, slots: int = 1) -> list[str]:
    """The mini-DAG's global config over gpu1.yaml: ``slots`` of its small runs share the one GPU
    (``jobs_per_gpu``, replication.dag.devices), each with two threads."""
    paths = {key: scratch / key.split("_")[0] for key in ("runs_dir", "results_dir", "logs_dir", "data_dir")}
    return [
        "experiments=[arithmetic_ood]",
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
    runs = plan.runs("arithmetic_ood")
    configs = [resolve_run_config(plan.specs["arithmetic_ood"], r.scale, r.method, r.seed) for r in runs]
    return {"runs": len(runs), "steps": configs[0].train.steps, "outputs": len(plan.final_outputs())}


def mini_dag_slots(run_peak_bytes: int | None) -> int:
    """Training jobs the GPU holds at once: a gpu1 arithmetic run has the paper's model and 16 x 2048 =
    32,768 tokens per micro-batch, so ce's measured peak at 32,768 tokens stands in for its memory."""
    if not torch.cuda.is_available() or not run_peak_bytes:
        return 1
    total = torch.cuda.get_device_properties(0).total_memory
    return max(1, min(MINI_DAG_MAX_SLOTS, int(0.9 * total // run_peak_bytes)))


def mini_dag_commands(scratch: Path, slots: int = 1) -> tuple[list[str], list[str]]:
    """The Snakemake command of the mini-DAG (run from the repository root) and the check of its outputs."""
    overrides = mini_dag_overrides(scratch, slots)
    snakemake = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(os.cpu_count() or 1),
        "--resources",
        f"gpu={slots}",
        "--keep-going",
        "--configfile",
        "config/gpu1.yaml",
        "--config",
        *overrides,
        "--quiet",
        "rules",
    ]
    check = [sys.executable, "-m", "replication.dag.plan", "config/gpu1.yaml", *overrides]
    return snakemake, check


def arithmetic_mini_dag(scratch: Path, budget_s: float, slots: int = 1) -> dict[str, Any]:
    """Snakemake runs arithmetic_ood at the shortened gpu1 scale, 2 seeds x 4 methods, ``slots``
    training jobs at a time, in ``scratch`` (its own runs, results, logs and experiment configs), then
    checks that every final output exists. At ``budget_s`` Snakemake and its jobs are stopped."""
    scratch.mkdir(parents=True, exist_ok=True)
    planned = check_mini_dag_plan(scratch)
    snakemake, check = mini_dag_commands(scratch, slots)
    result: dict[str, Any] = {
        **planned,
        "slots": slots,
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
    outputs = subprocess.run(check, cwd=REPO, capture_output=True, text=True)
    result["outputs_check"] = (outputs.stdout + outputs.stderr).strip()
    if dag.returncode == 0 and outputs.returncode == 0:
        result["status"] = "ok"
    else:
        result.update(
            status="failed",
            reason=f"snakemake exit {dag.returncode}, output check exit "
            f"{outputs.returncode}; logs in {scratch}/logs",
            output_tail=output[-3000:],
        )
    return result


# -- the whole check ---------------------------------------------------------------------------


def gpu_check(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    tiny = args.tiny
    shape = dict(TINY_SHAPE if tiny else GPU_SHAPE)
    for key in ("seq_len", "grad_accum", "steps", "warmup"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    if shape["steps"] <= shape["warmup"]:
        raise SystemExit(f"--steps ({shape['steps']}) must exceed --warmup ({shape['warmup']})")
    if not tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the GPU check needs one (--tiny runs it on CPU at a tiny shape)")
    device = torch.device("cpu" if tiny else "cuda")
    peak, peak_source = peak_tflops(device, args.peak_tflops)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    methods: dict[str, dict[str, Any]] = {}
    seq_fallback_from = None
    config = None
    with compile_backend("eager" if tiny else None) as backend:
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
                config = run_config(
                    method,
                    tiny=tiny,
                    seq_len=shape["seq_len"],
                    micro_batch_size=shape["micro_batch_size"],
                    grad_accum=shape["grad_accum"],
                    steps=shape["steps"],
                    mean_doc_length=shape["mean_doc_length"],
                )
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

    if tiny:
        mini_dag = {
            "status": "skipped",
            "reason": "--tiny: the plan is only validated",
            **check_mini_dag_plan(scratch),
        }
    elif args.skip_dag:
        mini_dag = {"status": "skipped", "reason": "--skip-dag"}
    else:
        ce_peak = methods.get("ce", {}).get("peak_reserved_bytes")
        # activations, most of the memory, grow with the tokens of a micro-batch: 32,768 in a gpu1 run,
        # which runs uncompiled (SDPA): more activations than the compiled run measured, hence the margin
        scale = DAG_MEMORY_MARGIN * max(1.0, 32768 / (shape["seq_len"] * shape["micro_batch_size"]))
        slots = mini_dag_slots(ce_peak and int(ce_peak * scale))
        needed = dag_estimate_s(slots)
        if left() < needed:
            mini_dag = {
                "status": "skipped",
                "reason": f"{left():.0f} s of the budget left, the mini-DAG needs about "
                f"{needed:.0f} s at {slots} job(s) at once; run it by hand: see arithmetic_mini_dag in "
                "benchmarks/gpu_check.py",
            }
        else:
            print(
                f"gpu_check: the arithmetic mini-DAG, {slots} job(s) at once, "
                f"{left():.0f} s of the budget left",
                flush=True,
            )
            mini_dag = arithmetic_mini_dag(scratch / "dag", left() - 10.0, slots)
    if mini_dag["status"] == "skipped":
        print(f"gpu_check: mini-DAG skipped: {mini_dag['reason']}", flush=True)
    if mini_dag["status"] == "timed_out":
        print(f"gpu_check: the mini-DAG did not finish in the budget: {mini_dag['reason']}", flush=True)
    # a DAG the budget cut short proves nothing either way: only a failed one fails the check
    verdict["mini_dag_ok"] = mini_dag["status"] in ("ok", "skipped", "timed_out")
    if args.keep_scratch or not verdict["mini_dag_ok"]:  # a failed DAG keeps its runs and logs
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
        },
        "methods": methods,
        "verdict": verdict,
        "mini_dag": mini_dag,
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
    dag = result["mini_dag"]
    print(
        f"mini-DAG: {dag['status']}"
        + (f" ({dag['reason']})" if dag.get("reason") else "")
        + (f" in {dag['wall_s']:.0f} s" if "wall_s" in dag else "")
    )
    print(f"elapsed {result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "--tiny", action="store_true", help="CPU, tiny shape, eager compile backend; no mini-DAG"
    )
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"), help="writes OUT/gpu.json")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per micro-batch row (GPU: 32768)")
    parser.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (>= 2 for gapt)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per method (GPU: 30)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of the timing (GPU: 10)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    parser.add_argument("--skip-dag", action="store_true", help="leave out the arithmetic mini-DAG")
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
    return 0 if result["verdict"]["runs_ok"] and result["verdict"]["mini_dag_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
