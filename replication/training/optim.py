"""Optimizers and the learning-rate schedule (docs/SPEC.md section 5 for the modded model)."""

from __future__ import annotations

from typing import Any

import torch

from replication.config.base import AdamConfig, AdamWConfig, MuonAdamConfig, OptimConfig, ScheduleConfig
from replication.models import ReplicationModel


def lr_multiplier(step: int, total_steps: int, schedule: ScheduleConfig) -> float:
    """Linear warm-up, then flat for stable_fraction of all steps, then linear to final_multiplier."""
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    stable_end = schedule.stable_fraction * total_steps
    if step < stable_end or total_steps <= stable_end:
        return 1.0
    frac = min((step - stable_end) / (total_steps - stable_end), 1.0)
    return 1.0 - frac * (1.0 - schedule.final_multiplier)


class Optimizers:
    """The optimizers of one run, stepped together, with the schedule applied per step."""

    def __init__(self, config: OptimConfig, model: ReplicationModel, total_steps: int):
        self.config = config
        self.total_steps = total_steps
        self.optimizers: list[torch.optim.Optimizer] = build_optimizers(config, model)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["base_lr"] = group["lr"]

    def set_step(self, step: int) -> dict[str, float]:
        """Apply the schedule for ``step``; returns the learning rates by group name."""
        mult = lr_multiplier(step, self.total_steps, self.config.schedule)
        rates = {}
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * mult
                rates[group["name"]] = group["lr"]
        if isinstance(self.config, MuonAdamConfig):
            cfg = self.config
            frac = min(step / max(cfg.muon_momentum_warmup_steps, 1), 1.0)
            momentum = (1 - frac) * cfg.muon_momentum_start + frac * cfg.muon_momentum_end
            for group in self.optimizers[0].param_groups:
                group["momentum"] = momentum
        return rates

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)


def build_optimizers(config: OptimConfig, model: ReplicationModel) -> list[torch.optim.Optimizer]:
    groups = model.param_groups()
    covered = sum(len(ps) for ps in groups.values())
    if covered != len([p for p in model.parameters() if p.requires_grad]):
        raise ValueError(f"{type(model).__name__}.param_groups() does not cover every parameter exactly once")
    if isinstance(config, MuonAdamConfig):
        if set(groups) != {"matrix", "embed", "head", "scalar"}:
            raise ValueError(f"muon_adam needs the modded model's parameter groups, got {sorted(groups)}")
        muon = torch.optim.Muon(
            [{"params": groups["matrix"], "name": "muon"}],
            lr=config.muon_lr,
            momentum=config.muon_momentum_start,
            weight_decay=0.0,
        )
        adam = torch.optim.Adam(
            [
                {"params": groups["head"], "lr": config.head_lr, "name": "head"},
                {"params": groups["embed"], "lr": config.embed_lr, "name": "embed"},
                {"params": groups["scalar"], "lr": config.scalar_lr, "name": "scalar"},
            ],
            betas=config.adam_betas,
            eps=config.adam_eps,
            weight_decay=0.0,
        )
        return [muon, adam]
    if isinstance(config, AdamWConfig):
        param_groups = [
            {"params": ps, "weight_decay": config.weight_decay if name == "decay" else 0.0, "name": name}
            for name, ps in groups.items()
        ]
        return [torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas, eps=config.eps)]
    if isinstance(config, AdamConfig):
        param_groups = [{"params": ps, "name": name} for name, ps in groups.items()]
        return [torch.optim.Adam(param_groups, lr=config.lr, betas=config.betas, eps=config.eps)]
    raise ValueError(f"unknown optimizer {config!r}")
