"""python -m benchmarks [SECTION ...] [--out results/benchmarks]

Sections: cpu_step, gapt_overhead, loop_efficiency, mbe_kernel, data_prep, evaluation, smoke_dag,
step_costs
(default: all); bf16_parity (about 30 minutes of real cpu-scale runs) only when named.
Each prints a table and writes results/benchmarks/<section>.json with its provenance. Run it on a
quiet machine: the ratios compare variants measured side by side, but other load still adds noise.
The GPU path has a command of its own: python -m benchmarks.gpu_check (make gpu-check), writing gpu.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from benchmarks.common import write_result


def _print_overhead(result: dict) -> None:
    rows = [
        [m, f"{s * 1000:.1f}", f"{result['ratio_to_ce'][m]:.3f}"]
        for m, s in result["seconds_per_step"].items()
    ]
    print(
        f"\nGAPT overhead, {result['shape']} shape ({result['tokens_per_step']} tokens/step; "
        f"target {result['target']})"
    )
    print(tabulate(rows, headers=["method", "ms / step", "ratio to ce"], tablefmt="github"))


def run_section(name: str, out: Path) -> None:
    if name == "gapt_overhead":
        from benchmarks.steps import gapt_overhead

        # 15 rounds: at the GPT-2-small shape 5 left a noise floor of about +-5 % (ce_mbe at 0.98 of ce)
        results = {shape: gapt_overhead(shape, rounds=15) for shape in ("cpu", "gpt2_small")}
        for result in results.values():
            _print_overhead(result)
        write_result(out, name, {"shapes": results})
    elif name == "loop_efficiency":
        from benchmarks.steps import loop_efficiency

        result = loop_efficiency()
        print(
            f"\nLoop efficiency ({result['shape']} shape, {result['dtype']}"
            f"{', compiled' if result['compile'] else ''}; "
            f"target {result['target']})"
        )
        every = result["block_mbe_every"]
        rows = [
            [
                f"replication.training.train (every block's MBE every {every} steps)",
                *[f"{x:.2f}" for x in result["replication_steps_per_s"]],
            ],
            [
                "replication.training.train, RQ1 every 5 steps",
                *[f"{x:.2f}" for x in result["replication_with_rq1_steps_per_s"]],
            ],
            ["minimal loop", *[f"{x:.2f}" for x in result["minimal_steps_per_s"]]],
        ]
        print(
            tabulate(
                rows,
                headers=["steps/s", *[f"round {i + 1}" for i in range(len(rows[0]) - 1)]],
                tablefmt="github",
            )
        )
        print(
            f"ratio (median of the rounds' paired ratios): {result['ratio']:.3f}; "
            f"with RQ1: {result['rq1_ratio']:.3f}"
        )
        block = result["block_mbe"]
        print(
            f"a step with the monitored blocks' MBE {block['monitored']} alone: "
            f"{1000 * block['seconds_per_step']['monitored blocks']:.0f} ms, with every block's: "
            f"{1000 * block['seconds_per_step']['every block']:.0f} ms "
            f"(ratio {block['monitored_over_every']:.3f})"
        )
        write_result(out, name, result)
    elif name == "mbe_kernel":
        from benchmarks.mbe_kernel import mbe_kernel

        result = mbe_kernel()
        rows = [
            [
                r["patch"],
                r["width"],
                f"{r['seconds']['chosen'] * 1e3:.2f}",
                f"{r['seconds']['rows_gram'] * 1e3:.2f}",
                f"{r['seconds']['eigenvalues'] * 1e3:.2f}",
                f"{r['chosen_over_rows_gram']:.2f}",
                f"{r['chosen_over_eigenvalues']:.2f}",
            ]
            for r in result["rows"]
        ]
        print(f"\nMBE kernel (ms per call over ~8 MB of activations; target {result['target']})")
        print(
            tabulate(
                rows,
                headers=[
                    "patch",
                    "width",
                    "chosen",
                    "n x n Gram",
                    "eigenvalues",
                    "chosen / n x n",
                    "chosen / eig",
                ],
                tablefmt="github",
            )
        )
        write_result(out, name, result)
    elif name == "data_prep":
        from benchmarks.data_prep import data_prep

        result = data_prep()
        print(f"\nData preparation, GPT-2 BPE, tokens/s (target {result['target']})")
        rows = [
            [
                name,
                f"{r['tokens']:,}",
                f"{r['replication.tasks.fineweb.prepare']:,.0f}",
                f"{r['tiktoken encode_ordinary_batch']:,.0f}",
                f"{r['read_then_encode']:,.0f}",
                f"{r['ratio']:.3f}",
                f"{r['ratio_to_read_then_encode']:.3f}",
            ]
            for name, r in result["inputs"].items()
        ]
        print(
            tabulate(
                rows,
                headers=[
                    "input",
                    "tokens",
                    "replication.tasks.fineweb.prepare",
                    "tiktoken batch encoder",
                    "read, then encode",
                    "ratio to tiktoken",
                    "ratio to read, then encode",
                ],
                tablefmt="github",
            )
        )
        write_result(out, name, result)
    elif name == "evaluation":
        from benchmarks.steps import evaluation

        result = evaluation()
        print(
            f"\nEvaluation pass against the forward pass alone ({result['shape']} shape; "
            f"target {result['target']})"
        )
        print(
            tabulate(
                [
                    [
                        "wall time (s)",
                        f"{result['forward_seconds']:.3f}",
                        f"{result['full_seconds']:.3f}",
                        f"{result['time_ratio']:.3f}",
                    ],
                    [
                        "peak RSS (MB)",
                        f"{result['forward_peak_rss_bytes'] / 2**20:.0f}",
                        f"{result['full_peak_rss_bytes'] / 2**20:.0f}",
                        f"{result['memory_ratio']:.3f}",
                    ],
                ],
                headers=["", "forward only", "CE + every block's MBE", "ratio"],
                tablefmt="github",
            )
        )
        write_result(out, name, result)
    elif name == "smoke_dag":
        from benchmarks.smoke_dag import smoke_dag

        result = smoke_dag()
        print(f"\nSmoke DAG ({result['runs']} runs on {result['cores']} cores; target {result['target']})")
        print(
            f"wall {result['dag_wall_seconds']:.1f} s, "
            f"{result['training_loop_seconds_total']:.1f} s in training "
            f"loops, orchestration {100 * result['orchestration_share']:.0f} %"
        )
        write_result(out, name, result)
    elif name == "cpu_step":
        from benchmarks.steps import cpu_step

        result = cpu_step()
        peak = result["matmul_peak_flops"]
        print(
            f"\nThe cpu-scale step ({result['tokens_per_step']} tokens, {result['threads']} threads; "
            f"matmul peak {peak['float32'] / 1e9:.0f} GFLOP/s float32, "
            f"{peak['bfloat16'] / 1e9:.0f} bf16; target {result['target']})"
        )

        def cell(value, spec):
            return "" if value is None else format(value, spec)

        rows = [
            [
                name,
                f"{r['seconds_per_step'] * 1000:.1f}",
                f"{r['speedup_over_float32_eager']:.2f}",
                f"{100 * r['mfu']:.0f} %",
                cell(r["compile_seconds_cold"], ".1f"),
                cell(r["payback_steps_cold"], ".0f"),
                cell(r["compile_seconds_warm"], ".1f"),
                cell(r["payback_steps_warm"], ".0f"),
            ]
            for name, r in result["variants"].items()
        ]
        print(
            tabulate(
                rows,
                headers=[
                    "variant",
                    "ms / step",
                    "x float32 eager",
                    "MFU (own dtype's peak)",
                    "compile s (cold)",
                    "payback steps",
                    "compile s (warm)",
                    "payback steps",
                ],
                tablefmt="github",
            )
        )
        write_result(out, name, result)
    elif name == "bf16_parity":
        from benchmarks.parity import bf16_parity

        result = bf16_parity()
        print(f"\nbf16 parity, {result['experiment']} at {result['scale']} scale, seeds {result['seeds']}")
        rows = [
            [
                r["method"],
                r["metric"],
                f"{statistics.mean(r['float32']):.4f}",
                f"{statistics.mean(r['bfloat16']):.4f}",
                f"{r['paired_difference']:+.4f} [{r['interval'][0]:+.4f}, {r['interval'][1]:+.4f}]",
                f"{r['float32_seed_sd']:.4f}",
                "yes" if r["agrees"] else "no",
            ]
            for r in result["rows"]
        ]
        print(
            tabulate(
                rows,
                headers=[
                    "method",
                    "metric",
                    "float32",
                    "bf16",
                    "bf16 - float32 (95 % t)",
                    "float32 seed sd",
                    "agrees",
                ],
                tablefmt="github",
            )
        )
        for metric, effect in result["gapt_joint_vs_ce"].items():
            print(
                f"gapt_joint vs ce, {metric}: float32 {effect['float32']['text']}; "
                f"bf16 {effect['bfloat16']['text']}"
            )
        write_result(out, name, result)
    elif name == "step_costs":
        from benchmarks.steps import step_costs

        result = step_costs()
        ce, ckpt = result["cross_entropy"], result["checkpoint"]
        print(f"\nCross-entropy and its backward over {ce['shape']} float32 logits (CPU)")
        print(
            tabulate(
                [[k, f"{1000 * v:.0f}"] for k, v in ce["seconds"].items()],
                headers=["loss", "ms"],
                tablefmt="github",
            )
        )
        print(
            f"compiled / eager: {ce['compiled_over_eager']:.2f}; "
            f"loss differs by {ce['loss_difference']:.1e}, "
            f"gradient by at most {ce['max_gradient_difference']:.1e}"
        )
        print(
            f"\nA checkpoint of the {ckpt['shape']} model ({ckpt['bytes'] / 1e9:.2f} GB) "
            "holds the step up for"
        )
        print(
            tabulate(
                [[k, f"{v:.3f}"] for k, v in ckpt["seconds_holding_the_step"].items()],
                headers=["written", "seconds"],
                tablefmt="github",
            )
        )
        write_result(out, name, result)
    else:
        raise SystemExit(f"unknown section {name!r}; choose from {SECTIONS + LONG_SECTIONS}")


SECTIONS = [
    "cpu_step",
    "gapt_overhead",
    "loop_efficiency",
    "mbe_kernel",
    "data_prep",
    "evaluation",
    "smoke_dag",
    "step_costs",
]
LONG_SECTIONS = ["bf16_parity"]  # trains real runs (about 30 minutes): only when named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", default=SECTIONS, help=f"any of {SECTIONS + LONG_SECTIONS}")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the in-process sections")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for section in args.sections:
        run_section(section, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
