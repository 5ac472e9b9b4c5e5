"""Optimizers and the learning-rate schedule (docs/SPEC.md section 5 for the modded model)."""

from __future__ import annotations

import math
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


def newton_schulz(
    update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """torch.optim.Muon's orthogonalization of ``update`` (its quintic Newton-Schulz iteration), in ``dtype``
    (torch's is bfloat16)."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon, but on a CPU its Newton-Schulz iteration runs in ``cpu_dtype`` (float32).

    The difference is named *float32 Newton-Schulz on CPU*. A CPU without bfloat16 arithmetic (AVX2)
    emulates bfloat16 matmuls about 40x slower than float32 ones, which made torch's iteration three
    quarters of a cpu-scale FineWeb step on such a machine; float32 is the more exact of the two, and the
    iteration approximates the orthogonal factor in either precision. With the iteration in bfloat16 (on a
    GPU, or ``cpu_dtype=torch.bfloat16``) a step runs torch's operations in torch's order, and on a CPU it
    equals torch's to the last bit (tests/test_optim.py). torch's
    "original" learning-rate adjustment, sqrt(max(1, rows / columns)), is the only one.
    """

    def __init__(self, params: Any, cpu_dtype: torch.dtype = torch.float32, **kwargs: Any):
        super().__init__(params, **kwargs)
        if self.defaults["adjust_lr_fn"] not in (None, "original"):
            raise ValueError("this Muon has torch's 'original' learning-rate adjustment only")
        self.cpu_dtype = cpu_dtype

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        if closure is not None:
            raise ValueError("Muon.step takes no closure")
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                dtype = self.cpu_dtype if p.device.type == "cpu" else torch.bfloat16
                update = newton_schulz(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype
                )
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * math.sqrt(max(1, p.size(0) / p.size(1))))


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
        muon = Muon(
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
