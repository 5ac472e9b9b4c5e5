"""A plain GPT-2 (learned positions, LayerNorm, GELU, tied head), for robustness runs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from replication.config.base import GPT2ModelConfig
from replication.models.base import ModelOutput, ReplicationModel


class Block(nn.Module):
    def __init__(self, cfg: GPT2ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.attn_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.mlp_proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x))))


class GPT2(ReplicationModel):
    def __init__(self, cfg: GPT2ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2's scaled init of the residual projections
            for proj in (block.attn_proj, block.mlp_proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: Tensor, *, docs: Tensor | None = None, window: int | None = None, upto: int | None = None
    ) -> ModelOutput:
        """idx (B, T); docs and window are accepted and ignored (plain causal attention)."""
        if idx.size(1) > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {idx.size(1)} exceeds max_seq_len {self.cfg.max_seq_len}")
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        hidden = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            hidden.append(x)
            if upto is not None and i + 1 >= upto:
                return ModelOutput(None, hidden)
        logits = F.linear(self.ln_f(x), self.wte.weight).float()  # tied head
        return ModelOutput(logits, hidden)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2 and not n.startswith("wpe")]
        ids = {id(p) for p in decay}
        return {"decay": decay, "no_decay": [p for p in self.parameters() if id(p) not in ids]}
