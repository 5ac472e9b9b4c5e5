"""The 10 -> 50 -> 1 ReLU network of experiment 3 (docs/SPEC.md section 7)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from replication.config.base import MLPModelConfig
from replication.models.base import ModelOutput, ReplicationModel


class HiddenLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(x))


class MLP(ReplicationModel):
    def __init__(self, cfg: MLPModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList([HiddenLayer(cfg.in_dim, cfg.hidden_dim)])
        self.out = nn.Linear(cfg.hidden_dim, cfg.out_dim)

    def forward(
        self, x: Tensor, *, docs: Tensor | None = None, window: int | None = None, upto: int | None = None
    ) -> ModelOutput:
        """x (B, in_dim) -> predictions (B, out_dim). The hidden ReLU layer is returned as one
        sequence of B samples, (1, B, hidden), so that an MBE patch is P consecutive samples."""
        h = self.blocks[0](x)  # (B, hidden)
        hidden = [h.unsqueeze(0)]
        if upto is not None:
            return ModelOutput(None, hidden)
        return ModelOutput(self.out(h), hidden)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"all": list(self.parameters())}
