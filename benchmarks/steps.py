"""Training-step benchmarks: GAPT's overhead per step, the loop's efficiency, evaluation's cost.

Shapes: ``cpu`` is the FineWeb experiment's cpu-scale model and batch; ``gpt2_small`` is the paper's
162 M-parameter model with a reduced batch. Both run on the synthetic bigram task with the same
vocabulary and sequence shape, so no data preparation is needed and every method sees equal work.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import interleaved
from replication.config.base import deep_merge
from replication.config.run import RunConfig, resolve_run_config, validate_run_config
from replication.science.methods import BASE_METHODS
from replication.tasks.evaluation import evaluate_lm
from replication.training.objectives import accumulate_gradients
from replication.training.train import Trainer

REPO = Path(__file__).resolve().parent.parent
FINEWEB = REPO / "experiments" / "fineweb_pretrain" / "config.yaml"


def shape_config(shape: str, method: str = "ce", dtype: str = "float32", compile: bool = False) -> RunConfig:
    """A run config of the given shape on the synthetic task (no data files needed); float32 and
    eager unless ``dtype`` and ``compile`` say otherwise."""
    if shape == "cpu":
        base = resolve_run_config(FINEWEB, "cpu", method, 0).to_dict()
        task = base["task"]
        seq_len, batch = task["seq_len"], task["micro_batch_size"]
        grad_accum = max(base["train"]["grad_accum"], 2)
    elif shape == "gpt2_small":
        base = resolve_run_config(FINEWEB, "paper", method, 0).to_dict()
        seq_len, batch, grad_accum = 256, 1, 2
    else:
        raise ValueError(f"unknown shape {shape!r}")
    model = base["model"]
    synthetic = {
        "name": "synthetic",
        "vocab_size": model["vocab_size"],
        "seq_len": seq_len,
        "micro_batch_size": batch,
        "val_batches": 2,
    }
    train = deep_merge(
        base["train"],
        {
            "grad_accum": grad_accum,
            "device": "cpu",
            "dtype": dtype,
            "compile": compile,
            "checkpoint_every": 0,
        },
    )
    return validate_run_config({**base, "task": synthetic, "train": train, "alignment": {"every": 0}})


def optimizer_step(
    t: Trainer, counters: dict[str, int], key: str, blocks: list[int] | None = None
) -> Callable[[], None]:
    """One optimizer step of the trainer's method in its fixed phase (ce memorizes; the rest take
    their compress step) at the next step index ``counters[key]``, mid-schedule window; every block's
    detached MBE, or with ``blocks`` only theirs (and the regularized ones')."""

    def run() -> None:
        accumulate_gradients(
            t.model,
            t.task,
            t.method,
            t.config.objective,
            t.plan,
            step=counters[key],
            phase=t.method.fixed_phase,
            micro_batches=t.micro_batches,
            window=t.model.attention_window(0.5),
            autocast=t.autocast,
            blocks=blocks,
        )
        t.optimizers.step()
        t.optimizers.zero_grad()
        counters[key] += 1

    return run


def gapt_overhead(shape: str, rounds: int = 5) -> dict[str, Any]:
    """Seconds per optimizer step of each method (gated methods forced into compress) over ce."""
    trainers, steps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in BASE_METHODS:
            trainers[method] = Trainer(shape_config(shape, method), Path(tmp) / method, show_progress=False)
            steps[method] = 0

    def one_step(method: str):
        return optimizer_step(trainers[method], steps, method)

    for method in BASE_METHODS:  # warm-up: first steps allocate optimizer state
        one_step(method)()
    seconds = interleaved({m: one_step(m) for m in BASE_METHODS}, rounds=rounds)
    return {
        "shape": shape,
        "tokens_per_step": trainers["ce"].units_per_step,
        "seconds_per_step": seconds,
        "ratio_to_ce": {m: seconds[m] / seconds["ce"] for m in BASE_METHODS},
        "target": "<= 1.05",
    }


def _block_mbe_cost(config: RunConfig, rounds: int = 40) -> dict[str, float]:
    """Seconds per training step with every block's detached MBE and with the monitored blocks'
    alone (a step between ``train.block_mbe_every``), the two taking turns step by step."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(config, tmp, show_progress=False)
    counters = {"every block": 0, "monitored blocks": 0}
    variants = {
        "every block": optimizer_step(t, counters, "every block"),
        "monitored blocks": optimizer_step(t, counters, "monitored blocks", t.plan.monitored),
    }
    for run in variants.values():  # the first step allocates optimizer state and loads compiled blocks
        run()
    seconds = interleaved(variants, rounds=rounds)
    return {
        "seconds_per_step": seconds,
        "monitored_over_every": seconds["monitored blocks"] / seconds["every block"],
        "monitored": t.plan.monitored,
    }


def _minimal_loop(config: RunConfig, steps: int) -> float:
    """Steps per second of the plainest loop: same model, batches, optimizer and attention-window
    schedule as ``_replication_loop``'s run of steps + 1 steps, nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(config, tmp, show_progress=False)
    model, task, opt, autocast = t.model, t.task, t.optimizers, t.autocast
    start = None
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()  # the first step allocates optimizer state; leave it out
        window = model.attention_window(step / (steps + 1))
        for micro in range(config.train.grad_accum):
            batch = task.train_batch(step, micro)
            with autocast():
                out = task.forward(model, batch, window=window)
            logits = out.output.float().flatten(0, 1)
            (F.cross_entropy(logits, batch.targets.flatten()) / config.train.grad_accum).backward()
        opt.step()
        opt.zero_grad()
    return steps / (time.perf_counter() - start)


def _replication_loop(config: RunConfig, steps: int) -> float:
    """Steps per second of replication.training.train, from the times it logged (start-up and evals
    excluded)."""
    config = validate_run_config(
        deep_merge(config.to_dict(), {"train": {"steps": steps + 1, "eval_at_start": False}})
    )
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(config, tmp, show_progress=False).run()
        times = [
            json.loads(line)["time"]
            for line in open(Path(tmp) / "metrics.jsonl")
            if '"kind": "train"' in line
        ]
    return steps / (times[-1] - times[0])


def loop_efficiency(shape: str = "cpu", steps: int = 30, rounds: int = 7) -> dict[str, Any]:
    """replication.training.train's ce steps per second over the minimal loop's, rounds interleaved; and the
    same with RQ1's record every 5 steps (the cpu scale's cadence for ce), all as the cpu scale ships
    (its dtype, its block_mbe_every, and compiled where it compiles: both loops then run the same
    compiled blocks). Besides, what a step between ``train.block_mbe_every`` saves (``block_mbe``)."""
    shipped = resolve_run_config(FINEWEB, shape if shape == "cpu" else "paper", "ce", 0).train
    dtype, compiled = shipped.dtype, shipped.compile and shape == "cpu"
    config = shape_config(shape, "ce", dtype=dtype, compile=compiled)
    with_rq1 = validate_run_config(deep_merge(config.to_dict(), {"alignment": {"every": 5}}))
    ours, rq1, minimal = [], [], []
    for _ in range(rounds):
        ours.append(_replication_loop(config, steps))
        rq1.append(_replication_loop(with_rq1, steps))
        minimal.append(_minimal_loop(config, steps))

    def paired(variant: list[float]) -> float:
        """The median over rounds of the variant's speed over the minimal loop's in the same round:
        a drift of the machine's speed over the rounds cancels within each."""
        return statistics.median(v / m for v, m in zip(variant, minimal))

    return {
        "shape": shape,
        "dtype": dtype,
        "compile": compiled,
        "block_mbe_every": config.train.block_mbe_every,
        "steps_per_round": steps,
        "replication_steps_per_s": ours,
        "replication_with_rq1_steps_per_s": rq1,
        "minimal_steps_per_s": minimal,
        "ratio": paired(ours),
        "rq1_ratio": paired(rq1),
        "block_mbe": _block_mbe_cost(config),
        "statistic": "median over rounds of the paired ratio (variant / minimal loop, same round)",
        "target": ">= 0.98; with RQ1 >= 0.9",
        "target_met": {"ratio": paired(ours) >= 0.98, "rq1_ratio": paired(rq1) >= 0.9},
    }


def _evaluation_probe(shape: str, mode: str, batches: int) -> dict[str, float]:
    """One evaluation pass in this process; returns its wall time and the process's peak RSS."""
    torch.set_num_threads(1)
    config = shape_config(shape, "ce")
    config = validate_run_config(deep_merge(config.to_dict(), {"task": {"val_batches": batches}}))
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(config, tmp, show_progress=False)
    model, task = t.model, t.task
    val = task.validation_batches()
    window = model.attention_window(1.0)
    model.eval()
    start = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            for batch in val:
                task.forward(model, batch, window=window)
    else:
        evaluate_lm(model, task, val, window=window)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_bytes": _peak_rss_bytes()}


def _peak_rss_bytes() -> int:
    """This process's own peak resident memory. ru_maxrss would do on most systems, but Linux
    carries it over fork and exec, so a child would report its parent's peak; VmHWM belongs to the
    child's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def evaluation(shape: str = "cpu", batches: int = 16, rounds: int = 3) -> dict[str, Any]:
    """A full validation pass (CE + every block's MBE) against the forward pass alone, each in a fresh
    process so that peak memory is the pass's own."""
    results: dict[str, list[dict[str, float]]] = {"forward": [], "full": []}
    for _ in range(rounds):
        for mode in results:
            code = (
                "import json; from benchmarks.steps import _evaluation_probe as p; "
                f"print(json.dumps(p({shape!r}, {mode!r}, {batches})))"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
            )
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    fwd_time = min(r["seconds"] for r in results["forward"])
    full_time = min(r["seconds"] for r in results["full"])
    fwd_mem = min(r["peak_rss_bytes"] for r in results["forward"])
    full_mem = min(r["peak_rss_bytes"] for r in results["full"])
    return {
        "shape": shape,
        "batches": batches,
        "forward_seconds": fwd_time,
        "full_seconds": full_time,
        "time_ratio": full_time / fwd_time,
        "forward_peak_rss_bytes": fwd_mem,
        "full_peak_rss_bytes": full_mem,
        "memory_ratio": full_mem / fwd_mem,
        "target": "time <= 1.10",
    }


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul in this process (its threads): the machine's practical peak."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def step_flops(trainer: Trainer) -> float:
    """6 N T per optimizer step (forward and backward of every weight; attention's own FLOPs left out)."""
    n = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return 6.0 * n * trainer.units_per_step


def _first_step_in_a_new_process(method: str, dtype: str, compiled: bool) -> float:
    """Seconds of the first optimizer step of a cpu-shape run in a fresh interpreter, which inherits
    this process's TORCHINDUCTOR_CACHE_DIR (and threads)."""
    code = (
        "import json, tempfile, time, torch\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        "from benchmarks.steps import optimizer_step, shape_config\n"
        "from replication.training.train import Trainer\n"
        f"t = Trainer(shape_config('cpu', {method!r}, {dtype!r}, {compiled!r}), tempfile.mkdtemp(), "
        "show_progress=False)\n"
        "step = optimizer_step(t, {'first': 0}, 'first')\n"
        "start = time.perf_counter()\n"
        "step()\n"
        "print(json.dumps(time.perf_counter() - start))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def cpu_step(method: str = "ce", rounds: int = 7) -> dict[str, Any]:
    """The cpu-scale training step in float32 and bf16 autocast, eager and with per-block compile,
    measured side by side in this process: seconds per step, the ratio to float32 eager, and the
    share of the measured matmul peak of the step's dtype (MFU). Compiling's one-off cost is reported
    cold (an empty inductor cache: the first step's extra time over eager's first step) and warm (a
    second run of the same shapes in a new process, as every run after the first in a DAG that shares
    one cache), with the steps each takes to pay back against the same dtype's eager step."""
    variants = {
        "float32 eager": ("float32", False),
        "bf16 eager": ("bfloat16", False),
        "float32 compile": ("float32", True),
        "bf16 compile": ("bfloat16", True),
    }
    trainers, steps, first_step = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (dtype, compiled) in variants.items():
            trainers[name] = Trainer(
                shape_config("cpu", method, dtype, compiled),
                Path(tmp) / name.replace(" ", "_"),
                show_progress=False,
            )
            steps[name] = 0

    def one_step(name: str):
        return optimizer_step(trainers[name], steps, name)

    warm_first_step = {}
    cache = tempfile.TemporaryDirectory()
    saved_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name  # cold: no kernel compiled before this benchmark
    try:
        for name in variants:  # the first step allocates optimizer state and, compiled, compiles every block
            start = time.perf_counter()
            one_step(name)()
            first_step[name] = time.perf_counter() - start
        for name, (dtype, compiled) in variants.items():  # warm: a new run of the same shapes in a new
            # process, as every run after the first of a DAG that shares one cache (compiled first step
            # minus the same dtype's eager first step, both in fresh processes)
            if compiled:
                warm_first_step[name] = _first_step_in_a_new_process(
                    method, dtype, True
                ) - _first_step_in_a_new_process(method, dtype, False)
        seconds = interleaved({name: one_step(name) for name in variants}, rounds=rounds)
    finally:
        if saved_cache is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved_cache
        cache.cleanup()
    peak = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    flops = step_flops(trainers["float32 eager"])
    base = seconds["float32 eager"]
    rows = {}
    for name, (dtype, compiled) in variants.items():
        eager = seconds[("bf16" if dtype == "bfloat16" else "float32") + " eager"]
        eager_first = first_step[("bf16" if dtype == "bfloat16" else "float32") + " eager"]
        cold = first_step[name] - eager_first if compiled else None
        warm = warm_first_step[name] if compiled else None
        saved = eager - seconds[name]
        rows[name] = {
            "seconds_per_step": seconds[name],
            "speedup_over_float32_eager": base / seconds[name],
            "mfu": flops / seconds[name] / peak[dtype],
            "first_step_seconds": first_step[name],
            "compile_seconds_cold": cold,
            "compile_seconds_warm": warm,
            "payback_steps_cold": (cold / saved if saved > 0 else None) if compiled else None,
            "payback_steps_warm": (warm / saved if saved > 0 else None) if compiled else None,
        }
    return {
        "shape": "cpu",
        "method": method,
        "threads": torch.get_num_threads(),
        "tokens_per_step": trainers["float32 eager"].units_per_step,
        "flops_per_step": flops,
        "matmul_peak_flops": peak,
        "variants": rows,
        "target": "the shipped step >= 1.5 x float32 eager, at parity",
    }


def step_costs(tokens: int = 2048, vocab: int = 50304, rounds: int = 5) -> dict[str, Any]:
    """What two of the GPU path's remedies save, measured on CPU at scaled-down shapes.

    - ``cross_entropy``: the main loss and its backward over (1, ``tokens``, ``vocab``) float32
      logits, eager against compiled (``LanguageTask.compile_loss``): seconds, and the largest
      difference of the loss and of the gradient.
    - ``checkpoint``: the seconds a periodic checkpoint of the paper's model and its optimizer state
      holds up the training thread, written in the step against written in the background
      (``training.checkpoint.Checkpointer``: on a GPU the background write is the default).
    """
    from replication.tasks.lm import token_cross_entropy
    from replication.training.checkpoint import LoopState

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, tokens, vocab, generator=generator).requires_grad_()
    targets = torch.randint(0, vocab, (1, tokens), generator=generator)
    compiled = torch.compile(token_cross_entropy)

    def loss_and_grad(fn: Callable[[Tensor, Tensor], Tensor]) -> tuple[float, Tensor]:
        logits.grad = None
        loss = fn(logits, targets)
        loss.backward()
        return loss.item(), logits.grad

    start = time.perf_counter()
    compiled_loss, compiled_grad = loss_and_grad(compiled)
    compile_s = time.perf_counter() - start
    eager_loss, eager_grad = loss_and_grad(token_cross_entropy)
    loss_diff = abs(compiled_loss - eager_loss)
    grad_diff = (compiled_grad - eager_grad).abs().max().item()
    ce_seconds = interleaved(
        {"eager": lambda: loss_and_grad(token_cross_entropy), "compiled": lambda: loss_and_grad(compiled)},
        rounds=rounds,
    )

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(shape_config("gpt2_small", "ce"), Path(tmp), show_progress=False)
        optimizer_step(trainer, {"ce": 0}, "ce")()  # the optimizer state exists after a first step
        checkpoint = trainer.checkpoint
        trainer.writer.open(truncate_to=None)

        held: dict[str, list[float]] = {"in the step": [], "background": []}
        for round_ in range(rounds):
            for name in sorted(held, reverse=round_ % 2 == 1):
                checkpoint.background = name == "background"
                start = time.perf_counter()
                checkpoint.save(LoopState(next_step=1), wait=not checkpoint.background)
                held[name].append(time.perf_counter() - start)
                checkpoint.wait()  # the write goes on after the call: not the step's time
        held = {name: statistics.median(times) for name, times in held.items()}
        checkpoint.wait()
        size = (Path(tmp) / "checkpoint.pt").stat().st_size
        trainer.writer.close()
    return {
        "cross_entropy": {
            "shape": [1, tokens, vocab],
            "seconds": ce_seconds,
            "compiled_over_eager": ce_seconds["compiled"] / ce_seconds["eager"],
            "compile_s": compile_s,
            "loss_difference": loss_diff,
            "max_gradient_difference": grad_diff,
        },
        "checkpoint": {
            "shape": "gpt2_small",
            "bytes": size,
            "seconds_holding_the_step": held,
            "background_over_in_step": held["background"] / held["in the step"],
        },
        "statistic": "median over interleaved rounds",
    }
