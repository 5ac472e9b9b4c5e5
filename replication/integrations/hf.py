"""GAPT in the Hugging Face ``Trainer`` (``pip install -e '.[hf]'``): any causal LM, any data.

    from replication.integrations.hf import GAPTTrainer

    trainer = GAPTTrainer(
        model=model,                      # e.g. GPT2LMHeadModel; its decoder blocks are found
        args=TrainingArguments(..., gradient_accumulation_steps=2),
        train_dataset=dataset,
        gapt_method="gapt",               # or gapt_joint, ce_mbe, ce
        gapt_controller=GaptConfig(patience_memorize=125, patience_compress=125),
    )
    trainer.train()                       # or train(resume_from_checkpoint=True)

``GAPTTrainer`` is a ``Trainer`` whose training loss is ``replication.integrations.dropin.GAPT``'s: a
micro-batch of the Trainer's gradient accumulation is one of GAPT's micro-batches (gapt's odd ones
regularize one block and end the forward pass after it), and each optimizer step ends with the
controller's update. The main loss is the Trainer's own (``compute_loss``: label smoothing and a
``compute_loss_func`` apply). A step whose loss is not finite has its gradients dropped before the
optimizer step, as the suite skips it (with fp16, the gradient scaler skips it), and
``gapt_max_nonfinite_in_row`` such steps in a row stop training. What it adds to the Trainer:
- logs, averaged over the steps since the last log: ``gapt/compress`` (the fraction of them in
  compress), ``gapt/ce`` (the main loss alone; the Trainer's ``loss`` is what was back-propagated,
  MBE included on MBE micro-batches), ``gapt/mbe`` (the mean detached MBE of every block),
  ``gapt/mbe_monitored`` (of the blocks the controller watches), and the counts
  ``gapt/phase_changes`` and ``gapt/nonfinite_steps`` so far;
- checkpoints: ``gapt_state.json`` (the controller) in every ``checkpoint-N`` folder, written before
  the Trainer's own files, read back by ``train(resume_from_checkpoint=...)``, so a resumed run
  continues the phase.
Evaluation runs the model as it is: GAPT only shapes the training loss. One process, one device:
data-parallel training (several processes or GPUs) and ``model_init`` are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from replication.config.base import ConfigError, ObjectiveConfig
from replication.integrations.dropin import GAPT, StepReport
from replication.science.errors import NonFiniteLossError
from replication.science.gapt import GaptConfig, Phase

STATE_NAME = "gapt_state.json"


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's repeated blocks (GPT-2's ``transformer.h``, Llama's ``model.layers``, ...): the
    ``ModuleList`` as long as ``config.num_hidden_layers``, or the longest one where the config does
    not say. Pass ``gapt_blocks`` to choose others (a mixture-of-experts or multimodal model may hold
    longer lists)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    matching = [m for m in lists if len(m) == n_layers]
    if matching:
        return matching[0]
    if not lists:
        raise ConfigError(f"{type(model).__name__} has no ModuleList of blocks: pass gapt_blocks")
    return max(lists, key=len)


class _GAPTCallback(TrainerCallback):
    """Ends GAPT's step before each optimizer step."""

    def __init__(self, trainer: GAPTTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._end_gapt_step()


class GAPTTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with GAPT (module docstring)."""

    def __init__(
        self,
        *args: Any,
        gapt_method: str = "gapt",
        gapt_blocks: nn.ModuleList | list[nn.Module] | None = None,
        gapt_objective: ObjectiveConfig | None = None,
        gapt_controller: GaptConfig | None = None,
        gapt_max_nonfinite_in_row: int = 10,
        **kwargs: Any,
    ):
        if kwargs.get("model_init") is not None:
            raise ConfigError("GAPTTrainer hooks the blocks of one model: pass model=, not model_init=")
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1 or self.args.n_gpu > 1:
            raise ConfigError(
                "GAPTTrainer runs on one process and one device: GAPT's MBE micro-batches end the forward "
                "pass early, which data-parallel wrappers do not expect (set CUDA_VISIBLE_DEVICES to one GPU)"
            )
        blocks = decoder_blocks(self.model) if gapt_blocks is None else gapt_blocks
        self.gapt = GAPT(
            blocks,
            method=gapt_method,
            micro_batches=self.args.gradient_accumulation_steps,
            objective=gapt_objective,
            controller=gapt_controller,
        )
        self.gapt_reports: list[StepReport] = []
        self.gapt_max_nonfinite_in_row = gapt_max_nonfinite_in_row
        self._micro = 0
        self._nonfinite_in_row = 0
        self._logged_reports = 0
        # GAPT's loss is a mean per micro-batch: the Trainer divides it by the accumulation steps
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.add_callback(_GAPTCallback(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the model's own loss
            return super().compute_loss(model, inputs, return_outputs=return_outputs)
        with self.gapt.micro_batch(self.state.global_step, self._micro) as mb:
            mb.main_loss = super().compute_loss(model, inputs)
        self._micro += 1
        return (mb.objective, None) if return_outputs else mb.objective

    def _end_gapt_step(self) -> None:
        report = self.gapt.end_step()
        self._micro = 0
        self.gapt_reports.append(report)
        if report.finite:
            self._nonfinite_in_row = 0
            return
        self._nonfinite_in_row += 1
        if self._nonfinite_in_row >= self.gapt_max_nonfinite_in_row:
            raise NonFiniteLossError(
                f"the main loss was non-finite in {self._nonfinite_in_row} steps in a row (last at step "
                f"{report.step}); those updates were skipped and training stops here. Lower the learning "
                "rate or check the data."
            )
        if self.accelerator.scaler is None:  # the suite skips such a step: no gradient reaches the optimizer
            self.model.zero_grad(set_to_none=True)
        # with fp16's gradient scaler, the non-finite gradients make the scaler skip the step itself

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        fresh = self.gapt_reports[self._logged_reports :]
        if "loss" in logs and fresh:  # a training log: the steps since the last one
            self._logged_reports = len(self.gapt_reports)
            finite = [r for r in fresh if r.finite]
            monitored = self.gapt.plan.monitored

            def mean(values: list[float]) -> float:
                return sum(values) / len(values) if values else float("nan")

            logs["gapt/compress"] = mean([1.0 if r.phase is Phase.COMPRESS else 0.0 for r in fresh])
            logs["gapt/ce"] = mean([r.main_loss for r in finite])
            logs["gapt/mbe"] = mean([r.mbe for r in finite])
            logs["gapt/mbe_monitored"] = mean([mean([r.mbe_by_layer[i] for i in monitored]) for r in finite])
            logs["gapt/phase_changes"] = len(self.gapt.controller.transitions) if self.gapt.controller else 0
            logs["gapt/nonfinite_steps"] = sum(not r.finite for r in self.gapt_reports)
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        # the controller first, so that no checkpoint folder exists without it
        if self.args.should_save:
            folder = (
                Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            folder.mkdir(parents=True, exist_ok=True)
            (folder / STATE_NAME).write_text(json.dumps(self.gapt.state_dict()))
        super()._save_checkpoint(model, trial)

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
