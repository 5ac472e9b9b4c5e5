"""GAPT in the Hugging Face ``Trainer`` (``pip install -e '.[hf]'``): any causal LM, any data.

    from replication.hf import GAPTTrainer

    trainer = GAPTTrainer(
        model=model,                      # e.g. GPT2LMHeadModel; its decoder blocks are found
        args=TrainingArguments(..., gradient_accumulation_steps=2),
        train_dataset=dataset,
        gapt_method="gapt",               # or gapt_joint, ce_mbe, ce
        gapt_controller=GaptConfig(patience_memorize=125, patience_compress=125),
    )
    trainer.train()                       # or train(resume_from_checkpoint=True)

``GAPTTrainer`` is a ``Trainer`` whose training loss is ``replication.dropin.GAPT``'s: a micro-batch
of the Trainer's gradient accumulation is one of GAPT's micro-batches (gapt's odd ones regularize
one block and end the forward pass after it), and each optimizer step ends with the controller's
update. A step whose loss is not finite has its gradients dropped before the optimizer step, as
the suite skips it. What it adds to the Trainer:
- logs: ``gapt/compress`` (1 in compress, 0 in memorize: the phase of the step logged),
  ``gapt/mbe`` (mean detached MBE of the blocks) and ``gapt/ce`` (the main loss alone; the
  Trainer's ``loss`` is what was back-propagated, MBE included on MBE micro-batches), and
  ``gapt/phase_changes`` (so far);
- checkpoints: ``gapt_state.json`` (the controller) in every ``checkpoint-N`` folder, read back by
  ``train(resume_from_checkpoint=...)``, so a resumed run continues the phase it was in.
Evaluation runs the model as it is: GAPT only shapes the training loss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from replication.config import ConfigError, ObjectiveConfig
from replication.dropin import GAPT, StepReport
from replication.gapt import GaptConfig, Phase

STATE_NAME = "gapt_state.json"


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's repeated blocks: its longest ``ModuleList`` (GPT-2's ``transformer.h``, Llama's
    ``model.layers``, ...). Pass ``gapt_blocks`` to choose others."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        raise ConfigError(f"{type(model).__name__} has no ModuleList of blocks: pass gapt_blocks")
    return max(lists, key=len)


class _GAPTCallback(TrainerCallback):
    """Ends GAPT's step before each optimizer step, and saves its state with each checkpoint."""

    def __init__(self, trainer: GAPTTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._end_gapt_step()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            (folder / STATE_NAME).write_text(json.dumps(self.trainer.gapt.state_dict()))


class GAPTTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with GAPT (module docstring)."""

    def __init__(
        self,
        *args: Any,
        gapt_method: str = "gapt",
        gapt_blocks: nn.ModuleList | list[nn.Module] | None = None,
        gapt_objective: ObjectiveConfig | None = None,
        gapt_controller: GaptConfig | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        blocks = decoder_blocks(self.model) if gapt_blocks is None else gapt_blocks
        self.gapt = GAPT(blocks, method=gapt_method, micro_batches=self.args.gradient_accumulation_steps,
                         objective=gapt_objective, controller=gapt_controller)  # fmt: skip
        self.gapt_reports: list[StepReport] = []
        self._micro = 0
        # GAPT's loss is a mean per micro-batch: the Trainer divides it by the accumulation steps
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.add_callback(_GAPTCallback(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the model's own loss
            return super().compute_loss(model, inputs, return_outputs=return_outputs)
        with self.gapt.micro_batch(self.state.global_step, self._micro) as mb:
            outputs = model(**inputs)
            mb.main_loss = outputs["loss"]
        self._micro += 1
        return (mb.objective, None) if return_outputs else mb.objective

    def _end_gapt_step(self) -> None:
        report = self.gapt.end_step()
        self._micro = 0
        self.gapt_reports.append(report)
        if not report.finite:  # the suite skips such a step: no gradient reaches the optimizer
            self.model.zero_grad(set_to_none=True)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.gapt_reports:  # a training log: the step it reports on
            report = self.gapt_reports[-1]
            logs["gapt/compress"] = 1.0 if report.phase is Phase.COMPRESS else 0.0
            logs["gapt/mbe"] = report.mbe
            logs["gapt/ce"] = report.main_loss
            logs["gapt/phase_changes"] = len(self.gapt.controller.transitions) if self.gapt.controller else 0
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ConfigError(f"no checkpoint in {self.args.output_dir} to resume from")
        if resume_from_checkpoint:
            path = Path(resume_from_checkpoint) / STATE_NAME
            if not path.is_file():
                raise ConfigError(f"{path} is missing: that checkpoint was not written by a GAPTTrainer")
            self.gapt.load_state_dict(json.loads(path.read_text()))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
