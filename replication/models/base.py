"""The interface every model implements: its output and the hidden state of every block
(docs/SPEC.md section 2)."""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, nn


class ModelOutput(NamedTuple):
    output: Tensor | None  # logits (B, T, V) or predictions (B, out); None when stopped early (upto)
    hidden: list[Tensor]  # residual-stream output of each block that ran, each (B, S, D)


class ReplicationModel(nn.Module):
    """What the loop relies on: ``blocks`` (one entry per hidden state), parameter groups for the
    optimizers, and an attention window schedule (None for models without one)."""

    blocks: nn.ModuleList

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def attention_window(self, progress: float) -> int | None:
        return None

    def compile_blocks(self, **options: Any) -> None:
        """``torch.compile`` every block in place, as torchtitan compiles repeated transformer blocks.

        The loop around the blocks stays eager, so the Python arguments that change between calls
        (gapt's ``upto``, which ends a forward pass after the block it regularizes) never reach a
        compiled frame: one graph serves every block and every ``upto``, where compiling the whole
        model traces one graph per ``upto`` and passes dynamo's recompile limit within one compress
        phase of a 12-block model. Parameter names, and so state dicts and checkpoints, do not change.
        """
        for block in self.blocks:
            block.compile(**options)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups; every trainable parameter appears in exactly one."""
        raise NotImplementedError
