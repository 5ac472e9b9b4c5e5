"""Train a small GPT-2 with GAPT through the Hugging Face Trainer, on the FineWeb sample that ships
with this repository, and print each phase change as it happens.

    pip install -e '.[hf]'
    python examples/gapt_hf.py [--steps 300] [--out /tmp/gapt-hf] [--threads 1]

A randomly initialized 6-block GPT-2 (width 64) reads the sample as UTF-8 bytes in rows of 128
tokens; 2 micro-batches of 8 rows make a step. The controller's patiences are short (10 steps) so
that a short run shows several cycles (25 phase changes in 300 steps); the paper's are 125 steps of
a million tokens each. It runs torch on one CPU thread (``--threads``): where the cores are shared
with other work, torch's default of one thread per core can make a model this small many times
slower. 300 steps take about 50 s of CPU time (measured: 75 and 82 s of wall time on a busy shared
two-core machine).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments

from gapt import GaptConfig
from gapt.hf import GAPTTrainer

SAMPLE = (
    Path(__file__).resolve().parent.parent
    / "experiments"
    / "fineweb_pretrain"
    / "sample"
    / "fineweb_sample.jsonl.gz"
)
SEQ = 128
SEPARATOR = 256  # between documents; bytes are 0..255


def byte_rows(n_rows: int) -> list[dict[str, torch.Tensor]]:
    tokens: list[int] = []
    with gzip.open(SAMPLE, "rt") as handle:
        for line in handle:
            tokens += [*json.loads(line)["text"].encode(), SEPARATOR]
            if len(tokens) >= n_rows * SEQ:
                break
    rows = torch.tensor(tokens[: n_rows * SEQ]).view(-1, SEQ)
    return [{"input_ids": row, "labels": row} for row in rows]


class PrintPhaseChanges(TrainerCallback):
    def __init__(self, trainer: GAPTTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        report = self.trainer.gapt_reports[-1]
        for change in report.phase_changes:
            print(
                f"step {change['step']:4d}: {change['from']} -> {change['to']} ({change['reason']}); "
                f"CE {report.main_loss:.3f}, MBE {report.mbe:.3f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="/tmp/gapt-hf")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=SEPARATOR + 1,
        n_positions=SEQ,
        n_embd=64,
        n_layer=6,
        n_head=4,
        bos_token_id=SEPARATOR,
        eos_token_id=SEPARATOR,
    )
    training = TrainingArguments(
        output_dir=args.out,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        max_steps=args.steps,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = GAPTTrainer(
        model=GPT2LMHeadModel(config),
        args=training,
        train_dataset=byte_rows(4000),
        gapt_method="gapt",
        gapt_controller=GaptConfig(delta_ce=0.02, patience_memorize=10, patience_compress=10, smoothing=0.9),
    )
    trainer.add_callback(PrintPhaseChanges(trainer))
    trainer.train()
    reports = trainer.gapt_reports
    compress = sum(r.phase.value == "compress" for r in reports)
    print(
        f"{len(reports)} steps, {compress} in compress, "
        f"{len(trainer.gapt.controller.transitions)} phase changes; "
        f"final CE {reports[-1].main_loss:.3f}, MBE {reports[-1].mbe:.3f}"
    )


if __name__ == "__main__":
    main()
