"""Experiment 3: conflicting memories and catastrophic forgetting (docs/SPEC.md section 7).

A seed draws everything: the base MLP's weights theta_0, a teacher shift Delta-theta and the data.

- Inputs in R^d (d = model.in_dim): group A from p1, each coordinate N(1, s^2) on the first d // 2
  coordinates and N(0, s^2) on the rest; group B from p2, the reverse (s = ``input_std``).
- Targets: group A is labelled by f(theta_0 + Delta-theta), group B by f(theta_0 - Delta-theta), so
  the two groups ask the same network for conflicting changes of its weights.
- Delta-theta, per parameter tensor: a weight matrix gets a product of two Gaussian factors of rank
  min(``shift_rank``, rows, columns), a bias a Gaussian direction; each is rescaled to
  ||theta_0 tensor|| x U(``shift_scale``) x ``shift_magnitude``.
- The student starts at theta_0 (``init_model``); the main loss is L1; MBE is taken on the hidden
  ReLU layer, whose B samples form one sequence, so a patch is P consecutive samples.

A run is a list of ``stages``, each training for some steps on the mix of some groups (half of
every micro-batch from each). One stage on both groups is protocol (A), separation; a mix stage
followed by a stage on group A alone is protocol (B), forgetting, and gives protocol (A)'s numbers
at the end of its first stage. The fine-tuning stage starts either from the run's own state
(``start: previous``, the ``own_pretrain`` protocol: each method pre-trains with itself) or from the
seed's ``ce`` pre-train with a fresh optimizer (``start: ce_pretrain``, the paper's protocol:
``replication.training.pretrain``). ``summarize`` reads both protocols from the evaluations at the
stage ends and at the fresh start.
"""

from __future__ import annotations

import bisect
import itertools
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from replication.config.base import MLPModelConfig
from replication.config.forgetting import GROUPS, Config
from replication.models import ReplicationModel, build_model
from replication.runtime.precision import Autocast
from replication.science.mbe import patch_mbe
from replication.tasks import base
from replication.tasks.base import Batch, derive_seed
from replication.tasks.evaluation import mbe_kwargs
from replication.tasks.forgetting.separation import (
    interference,
    separation_ratio,
    specialized_fraction,
)

# -- the data: pure functions of a generator ---------------------------------------------------------


def sample_inputs(group: str, n: int, dim: int, std: float, generator: torch.Generator) -> Tensor:
    """n inputs of group ``group``: (n, dim), float32. Group a ~ p1 (mean 1 on the first dim // 2
    coordinates, 0 on the rest), group b ~ p2 (the reverse); every coordinate has std ``std``."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; groups are {GROUPS}")
    mean = torch.zeros(dim)
    half = dim // 2
    if group == "a":
        mean[:half] = 1.0
    else:
        mean[half:] = 1.0
    return mean + std * torch.randn(n, dim, generator=generator)


def base_parameters(model_config: MLPModelConfig, seed: int) -> dict[str, Tensor]:
    """theta_0: the freshly initialised base MLP (torch's default init) under ``seed``, by name.

    Drawn from a forked global RNG, so neither the caller's RNG state nor its model are touched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_config)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def teacher_shift(
    theta0: dict[str, Tensor],
    generator: torch.Generator,
    rank: int = 3,
    scale: tuple[float, float] = (0.5, 5.0),
    magnitude: float = 1.0,
) -> dict[str, Tensor]:
    """Delta-theta for every tensor of theta0, by name, each of its tensor's shape.

    A matrix (r, c) gets U V with U (r, k), V (k, c) standard Gaussian, k = min(rank, r, c); a
    vector gets a standard Gaussian direction. Each is rescaled to norm
    ||theta0 tensor|| x u x magnitude with u ~ U(scale), drawn per tensor.
    """
    lo, hi = scale
    shift = {}
    for name, param in theta0.items():
        if param.dim() == 2:
            k = min(rank, *param.shape)
            u = torch.randn(param.shape[0], k, generator=generator)
            v = torch.randn(k, param.shape[1], generator=generator)
            direction = u @ v
        elif param.dim() == 1:
            direction = torch.randn(param.shape, generator=generator)
        else:
            raise ValueError(f"teacher_shift takes matrices and vectors; {name} is {tuple(param.shape)}")
        factor = lo + (hi - lo) * torch.rand((), generator=generator).item()
        shift[name] = direction / direction.norm() * param.norm() * factor * magnitude
    return shift


def shifted(theta0: dict[str, Tensor], shift: dict[str, Tensor], sign: float) -> dict[str, Tensor]:
    """theta_0 + sign * Delta-theta, by name."""
    return {name: p + sign * shift[name] for name, p in theta0.items()}


def predict(model: ReplicationModel, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """f(params)(x): the model's output with its parameters replaced by ``params``."""
    with torch.no_grad():
        return torch.func.functional_call(model, params, (x,)).output


# -- the task -------------------------------------------------------------------------------------


class Task(base.Task):
    main_loss_name: ClassVar[str] = "l1"

    def __init__(self, config, device, rank=0, world_size=1, data_root=None):
        super().__init__(config, device, rank, world_size, data_root)
        cfg: Config = config.task
        self.cfg = cfg
        self.stage_ends = list(itertools.accumulate(s.steps for s in cfg.stages))
        seed = config.effective_data_seed
        self.theta0 = base_parameters(config.model, derive_seed("forgetting", seed, "theta0"))
        shift_rng = torch.Generator().manual_seed(derive_seed("forgetting", seed, "shift"))
        self.shift = teacher_shift(
            self.theta0, shift_rng, rank=cfg.shift_rank, scale=cfg.shift_scale, magnitude=cfg.shift_magnitude
        )
        teacher = build_model(config.model)
        input_rng = torch.Generator().manual_seed(derive_seed("forgetting", seed, "inputs"))
        n_train = cfg.train_per_group
        self.train_data: dict[str, tuple[Tensor, Tensor]] = {}
        self.val_data: dict[str, tuple[Tensor, Tensor]] = {}
        for group, sign in zip(GROUPS, (1.0, -1.0)):
            n = n_train + cfg.val_per_group
            x = sample_inputs(group, n, config.model.in_dim, cfg.input_std, input_rng)
            y = predict(teacher, shifted(self.theta0, self.shift, sign), x)
            self.train_data[group] = (x[:n_train].to(device), y[:n_train].to(device))
            self.val_data[group] = (x[n_train:].to(device), y[n_train:].to(device))

    # -- training -----------------------------------------------------------------------------------
    @property
    def units_per_micro_batch(self) -> int:
        return self.cfg.micro_batch_size

    def stage_index(self, step: int) -> int:
        """Index of the stage that optimizer step ``step`` (0-based) belongs to."""
        return min(bisect.bisect_right(self.stage_ends, step), len(self.stage_ends) - 1)

    def init_model(self, model: ReplicationModel) -> None:
        """The student starts at theta_0."""
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(self.theta0[name])

    def train_batch(self, step: int, micro: int) -> Batch:
        """micro_batch_size training examples of the step's stage, an equal share from each of its
        groups, drawn without replacement within a group; extras hold each row's group (0 = a,
        1 = b) and its index in that group's training set."""
        stage = self.cfg.stages[self.stage_index(step)]
        data_seed = self.config.effective_data_seed
        rng = torch.Generator().manual_seed(derive_seed("forgetting", data_seed, "batch", step, micro))
        per_group = self.cfg.micro_batch_size // len(stage.groups)
        xs, ys, group_ids, indices = [], [], [], []
        for group in stage.groups:
            index = torch.randperm(self.cfg.train_per_group, generator=rng)[:per_group]
            x, y = self.train_data[group]
            device_index = index.to(x.device)
            xs.append(x[device_index])
            ys.append(y[device_index])
            group_ids.append(torch.full((per_group,), GROUPS.index(group)))
            indices.append(index)
        x, y, group_id, index = torch.cat(xs), torch.cat(ys), torch.cat(group_ids), torch.cat(indices)
        if self.cfg.order == "shuffled":
            perm = torch.randperm(len(group_id), generator=rng)
            x, y, group_id, index = x[perm.to(x.device)], y[perm.to(x.device)], group_id[perm], index[perm]
        return Batch(inputs=x, targets=y, extras={"group": group_id, "index": index})

    def main_loss(self, output: Tensor, batch: Batch) -> Tensor:
        return F.l1_loss(output.float(), batch.targets.float())

    # -- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def hidden_and_l1(
        self, model: ReplicationModel, group: str, autocast: Autocast = nullcontext
    ) -> tuple[Tensor, float]:
        """The hidden ReLU layer on a group's validation set, (n, hidden), and the group's mean L1."""
        x, y = self.val_data[group]
        with autocast():
            out = self.forward(model, Batch(inputs=x, targets=y))
        hidden = out.hidden[0].flatten(0, 1).float()  # (1, n, hidden) -> (n, hidden)
        return hidden, F.l1_loss(out.output.float(), y.float()).item()

    def evaluate(
        self, model: ReplicationModel, *, step: int, window: int | None, autocast: Autocast = nullcontext
    ) -> dict[str, Any]:
        """Per-group validation L1 and hidden MBE, their means over the groups, and how apart the
        groups' hidden layers are. MBE uses the first floor(n / P) * P samples of each group, in
        patches of P (P = objective.patch_size), so no patch mixes the groups."""
        was_training = model.training
        model.eval()
        patch = self.config.objective.patch_size
        metrics: dict[str, Any] = {"stage": self.cfg.stages[self.stage_index(max(step - 1, 0))].name}
        hidden = {}
        for group in GROUPS:
            h, l1 = self.hidden_and_l1(model, group, autocast)
            hidden[group] = h
            usable = h[: len(h) - len(h) % patch]
            metrics[f"val/{group}/l1"] = l1
            metrics[f"val/{group}/mbe"] = patch_mbe(usable.unsqueeze(0), **mbe_kwargs(self)).item()
        model.train(was_training)
        metrics["val/l1"] = sum(metrics[f"val/{g}/l1"] for g in GROUPS) / len(GROUPS)
        metrics["val/mbe"] = sum(metrics[f"val/{g}/mbe"] for g in GROUPS) / len(GROUPS)
        h_a, h_b = hidden["a"], hidden["b"]
        metrics["val/separation_ratio"] = separation_ratio(h_a, h_b)
        threshold = self.cfg.specialization_threshold
        metrics["val/specialized_fraction"] = specialized_fraction(h_a, h_b, threshold)
        return metrics

    # -- the protocols' headline numbers ----------------------------------------------------------
    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The base summary, plus for every stage ``<stage>/<metric>`` (each scalar validation
        metric at the stage's last step, without its ``val/`` prefix) and ``<stage>/phase_changes``,
        plus ``pretrain/<metric>`` (the evaluation of the ce pre-train a ``start: ce_pretrain`` stage
        started from), plus, when the last stage drops exactly one group of the stage before it,
        protocol (B): ``forgetting/l1_before`` and ``forgetting/l1_after`` (that group's validation L1
        where fine-tuning started, the ce pre-train's under ``start: ce_pretrain``, else the end of the
        stage before; and at the end of the last stage) and ``forgetting/interference`` (after - before)."""
        summary = super().summarize(records)
        evals = {r["step"]: r for r in records if r["kind"] == "eval"}
        changes = [r["step"] for r in records if r.get("event") == "phase_change"]
        start = 0
        for stage, end in zip(self.cfg.stages, self.stage_ends):
            record = evals.get(end, {})
            for key, value in record.items():
                if key.startswith("val/") and base.is_scalar(value):
                    summary[f"{stage.name}/{key.removeprefix('val/')}"] = value
            summary[f"{stage.name}/phase_changes"] = sum(start <= s < end for s in changes)
            start = end
        starts = [r for r in records if r["kind"] == "stage_start"]
        for key, value in (starts[-1] if starts else {}).items():  # the ce pre-train a stage started from
            if key.startswith("val/") and base.is_scalar(value):
                summary[f"pretrain/{key.removeprefix('val/')}"] = value
        if len(self.cfg.stages) < 2:
            return summary
        before_stage, after_stage = self.cfg.stages[-2:]
        dropped = [g for g in before_stage.groups if g not in after_stage.groups]
        if len(dropped) == 1:
            # the state fine-tuning started from: the ce pre-train's, or the run's own at the stage's end
            start = "pretrain" if after_stage.start == "ce_pretrain" else before_stage.name
            before = summary.get(f"{start}/{dropped[0]}/l1")
            after = summary.get(f"{after_stage.name}/{dropped[0]}/l1")
            if before is not None and after is not None:  # a non-finite loss is logged as null
                summary["forgetting/l1_before"] = before
                summary["forgetting/l1_after"] = after
                summary["forgetting/interference"] = interference(before, after)
        return summary
