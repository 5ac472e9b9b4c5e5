"""The ``ce`` pre-train a stage starts from under the paper's protocol (``start: ce_pretrain``).

In the author's forgetting protocol the pre-training is done once per seed, with plain ``ce``, and
every method is fine-tuned from that one checkpoint with a fresh optimizer. Here each run computes
that checkpoint itself, by training the same seed's model with ``ce`` through the stages before:
the same batches, the same optimizer and the same step code as the ``ce`` run of the seed, so the
weights are bit for bit those the ``ce`` run holds at the end of those stages (a test pins this), and
a run stays a function of its config alone. The cost is the pre-train's steps once more per run,
seconds at experiment 3's size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from replication.config.run import RunConfig
from replication.models import build_model
from replication.runtime.precision import Autocast
from replication.science.errors import ConfigError
from replication.science.gapt import Phase
from replication.science.methods import BASELINE, METHODS
from replication.tasks.base import Task
from replication.training.objectives import accumulate_gradients, plan_layers
from replication.training.optim import Optimizers


def ce_pretrain(config: RunConfig, task: Task, steps: int, autocast: Autocast) -> dict[str, Tensor]:
    """The model state the ``ce`` run of ``config``'s seed holds after ``steps`` optimizer steps."""
    if config.train.compile:
        raise ConfigError(
            "a stage that starts from the ce pre-train runs uncompiled: set train.compile: false"
        )
    ce = METHODS[BASELINE]
    with torch.random.fork_rng(devices=[]):  # the run's own generators are left as they are
        model = build_model(config.model).to(task.device)
    task.init_model(model)
    plan = plan_layers(config.objective, ce, model.n_blocks)
    optimizers = Optimizers(config.optim, model, config.train.steps)
    for step in range(steps):
        optimizers.set_step(step)
        result = accumulate_gradients(
            model,
            task,
            ce,
            config.objective,
            plan,
            step=step,
            phase=Phase.MEMORIZE,
            micro_batches=range(config.train.grad_accum),
            window=model.attention_window(step / config.train.steps),
            autocast=autocast,
            blocks=[],
        )
        if result.finite:  # as the ce run: a step with a non-finite loss is skipped
            optimizers.step()
        optimizers.zero_grad()
    return model.state_dict()
