"""The author's GPT: a modded-nanogpt GPT-2 small (docs/SPEC.md section 5).

Token embedding -> RMSNorm -> x0. Each block: x <- a*x + b*x0; x += Attn(norm(x)); x += MLP(norm(x)).
Attention has QK RMS-norm, RoPE, a value residual to the first block's values and a causal,
same-document, sliding-window mask. U-Net skips connect the first half of the blocks to the second
half in reverse order. Untied zero-init head, logits soft-capped at 30, float32 CE.
RMSNorm here has no weight, as in modded-nanogpt.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from replication.config.base import ModdedModelConfig
from replication.models.base import ModelOutput, ReplicationModel


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, H, Dh)
        t = torch.arange(x.size(1), device=x.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)  # (T, Dh/2)
        cos, sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1).type_as(x)


def attention_mask(docs: Tensor, window: int) -> Tensor:
    """Causal AND same-document AND (query - key < window): (B, T) document ids -> (B, 1, T, T)."""
    pos = torch.arange(docs.size(1), device=docs.device)
    delta = pos[:, None] - pos[None, :]
    allowed = (delta >= 0) & (delta < window)
    return (allowed[None] & (docs[:, :, None] == docs[:, None, :])).unsqueeze(1)


@cache
def _block_mask_builder(compiled: bool):
    """create_block_mask, compiled for a GPU: compiled, it builds the mask block by block instead of
    from a dense (T, T) tensor (8.6 GB of temporaries at 32 k tokens); on CPU compiling it costs
    more than it saves."""
    return torch.compile(create_block_mask) if compiled else create_block_mask


def flex_block_mask(docs: Tensor, window: int):
    """The BlockMask of ``attention_mask`` for FlexAttention. The window enters as a tensor: a
    Python int captured by ``mask_mod`` is a constant of the compiled blocks, traced again when the
    schedule first changes it (until dynamo makes it symbolic); a tensor is traced once. It is
    filled on the device (``torch.full``), not copied from the host, which would wait for the
    device at every forward pass."""
    window_tensor = torch.full((), window, device=docs.device)

    def mask_mod(b, h, q, k):
        return (q >= k) & (q - k < window_tensor) & (docs[b, q] == docs[b, k])

    batch, seq = docs.shape
    return _block_mask_builder(docs.is_cuda)(mask_mod, batch, None, seq, seq, device=docs.device)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModdedModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        inner = cfg.n_head * cfg.head_dim
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.proj = nn.Linear(inner, cfg.d_model, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.value_mix = nn.Parameter(torch.tensor(0.5))  # lambda of v <- (1 - lambda) v + lambda v1
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)

    def forward(self, x: Tensor, v1: Tensor | None, mask) -> tuple[Tensor, Tensor]:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim)
        k = self.k(x).view(B, T, self.n_head, self.head_dim)
        v = self.v(x).view(B, T, self.n_head, self.head_dim)
        if v1 is None:
            v1 = v  # the first block's values feed every later block
        v = (1 - self.value_mix) * v + self.value_mix * v1
        q, k = self.rotary(rms_norm(q)), self.rotary(rms_norm(k))
        q, k, vt = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        if isinstance(mask, Tensor):
            y = F.scaled_dot_product_attention(q, k, vt, attn_mask=mask)
        else:
            y = flex_attention(q, k, vt, block_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.proj(y), v1


class MLP(nn.Module):
    def __init__(self, cfg: ModdedModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModdedModelConfig):
        super().__init__()
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.x0_mix = nn.Parameter(torch.tensor([1.0, 0.0]))  # x <- a x + b x0

    def forward(self, x: Tensor, x0: Tensor, v1: Tensor | None, mask) -> tuple[Tensor, Tensor]:
        x = self.x0_mix[0] * x + self.x0_mix[1] * x0
        a, v1 = self.attn(rms_norm(x), v1, mask)
        x = x + a
        x = x + self.mlp(rms_norm(x))
        return x, v1


class ModdedGPT(ReplicationModel):
    def __init__(self, cfg: ModdedModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.n_encoder = cfg.n_layer // 2
        self.skip_weights = nn.Parameter(torch.ones(self.n_encoder))
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        nn.init.zeros_(self.head.weight)

    def attention_window(self, progress: float) -> int:
        """Sliding window for a point of training in [0, 1]: linear, rounded to the multiple."""
        cfg = self.cfg
        raw = cfg.window_start + (cfg.window_end - cfg.window_start) * min(max(progress, 0.0), 1.0)
        return max(cfg.window_multiple, cfg.window_multiple * round(raw / cfg.window_multiple))

    def _use_flex(self, device: torch.device) -> bool:
        return self.cfg.attention == "flex" or (self.cfg.attention == "auto" and device.type == "cuda")

    def forward(
        self, idx: Tensor, *, docs: Tensor | None = None, window: int | None = None, upto: int | None = None
    ) -> ModelOutput:
        """idx (B, T) tokens; docs (B, T) document ids (default: one document); window in tokens
        (default: no limit); upto: stop after that many blocks and return no logits."""
        if docs is None:
            docs = torch.zeros_like(idx)
        window = idx.size(1) if window is None else window
        mask = flex_block_mask(docs, window) if self._use_flex(idx.device) else attention_mask(docs, window)
        x = x0 = rms_norm(self.embed(idx))  # (B, T, D)
        v1 = None
        skips: list[Tensor] = []
        hidden: list[Tensor] = []
        n_blocks = len(self.blocks)
        for i, block in enumerate(self.blocks):
            decoder_index = i - (n_blocks - self.n_encoder)
            if decoder_index >= 0:
                x = x + self.skip_weights[decoder_index] * skips.pop()
            x, v1 = block(x, x0, v1, mask)
            if i < self.n_encoder:
                skips.append(x)
            hidden.append(x)
            if upto is not None and i + 1 >= upto:
                return ModelOutput(None, hidden)
        return ModelOutput(self._logits(x), hidden)

    def _logits(self, x: Tensor) -> Tensor:
        """Head and soft-cap, in float32: (B, T, D) -> (B, T, V)."""
        logits = self.head(rms_norm(x)).float()
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits / cap)

    def compile_blocks(self, **options) -> None:
        """The blocks, and the head with its soft-cap: compiled, the cast, scaling and tanh of the
        (B, T, V) logits fuse into one pass over them instead of four (6.6 GB each at 32 k tokens of
        a 50 k vocabulary)."""
        super().compile_blocks(**options)
        self._logits = torch.compile(self._logits, **options)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        matrices = [p for p in self.blocks.parameters() if p.ndim >= 2]
        scalars = [p for p in self.blocks.parameters() if p.ndim < 2] + [self.skip_weights]
        return {
            "matrix": matrices,
            "embed": [self.embed.weight],
            "head": [self.head.weight],
            "scalar": scalars,
        }
