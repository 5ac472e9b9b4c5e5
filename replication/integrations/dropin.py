"""GAPT in any PyTorch training loop: the MBE of the blocks you name, the phase controller, and the
loss to back-propagate for the current phase.

    from replication.integrations.dropin import GAPT

    gapt = GAPT(model.transformer.h, method="gapt", micro_batches=2)   # hooks on the blocks' outputs
    for step, micro_batches in enumerate(loader):                        # the micro-batches of one step
        for micro, batch in enumerate(micro_batches):
            with gapt.micro_batch(step, micro) as mb:
                output = model(batch["input_ids"])      # an MBE micro-batch ends after its block
                mb.main_loss = loss_fn(output, batch)    # not reached on an MBE micro-batch
            mb.loss.backward()                           # already divided by micro_batches
        report = gapt.end_step()                         # the controller's update: report.phase, .mbe
        if report.finite:
            optimizer.step()
        optimizer.zero_grad()

It is the suite's algorithm, not a copy of it: a micro-batch's objective
(``objectives.micro_batch_objective``), its detached MBE of every block (``monitor.block_mbe``), the
step's sums (``objectives.StepAccumulator``), the controller and its update
(``gapt.PhaseController``, ``objectives.update_controller``) and MBE (``mbe.layer_mbe``) are the
functions ``replication.training.train`` runs, and ``tests/test_dropin.py`` trains one model both
ways and compares them bit for bit.

Methods (``method``): ``gapt`` (compress: odd micro-batches are MBE-only and regularize one block,
rotating once per step; they end the forward pass after that block by raising from its hook),
``gapt_joint`` (compress: main + lambda * mean MBE of the joint blocks), ``ce_mbe`` (always the joint
objective) and ``ce`` (never compresses; MBE is only measured). Blocks are numbered in the order
given. What a block may output, which blocks are regularized by default (``default_block_layers``)
and the knobs of ``ObjectiveConfig`` and ``GaptConfig`` (patiences, thresholds, smoothing) are in
``GAPT``'s docstring and in docs/gapt-in-your-code.md. A step whose loss is not finite is reported
(``report.finite``), not fed to the controller: skip its optimizer step, as the suite does.

One process: in a data-parallel loop, reduce the step's sums over processes (``step_sums``) and
pass them to ``end_step``, and construct with ``stop_early=False``: an MBE micro-batch that ends its
forward pass by raising skips what a ``DistributedDataParallel`` wrapper does after the forward, and
with it the gradient all-reduce (``replication.training.train`` reduces by hand instead).

Every block must run once per forward pass (no block object listed twice, no block applied twice),
and the output its hook sees must carry gradients. Reentrant activation checkpointing
(``use_reentrant=True``) runs the hooks without gradients; the output of a checkpointed block gains
them afterwards, but not one inside a region of several blocks, nor the block an MBE micro-batch
stops at: those are refused. Non-reentrant checkpointing (the default of Hugging Face models) is
fine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from replication.config.base import ConfigError, ObjectiveConfig
from replication.science.gapt import GaptConfig, Phase, PhaseController
from replication.science.methods import METHODS, default_layers
from replication.training.monitor import block_mbe
from replication.training.objectives import (
    StepAccumulator,
    StepResult,
    micro_batch_kind,
    micro_batch_objective,
    plan_layers,
    update_controller,
)


class _EndForward(Exception):  # noqa: N818 - a signal, not an error
    """Raised from the regularized block's hook: an MBE micro-batch needs nothing after it."""


def block_output(output: Any) -> Any:
    """The hidden state in a block's output, ``GAPT``'s default ``hidden_state``: the output itself,
    or the first element of a tuple or list (Hugging Face blocks return (hidden, ...))."""
    return output[0] if isinstance(output, (tuple, list)) else output


def default_block_layers(n_blocks: int, kind: Literal["alternate", "joint"]) -> list[int]:
    """The blocks an objective regularizes when ``ObjectiveConfig`` names none (0-based).

    The paper's middle blocks where the model has them (``methods.default_layers``, as the suite
    trains): ``alternate`` (gapt) 2 .. L-3, which needs at least 5 blocks, and ``joint`` (gapt_joint,
    ce_mbe) 1 .. L-2, which needs at least 3. A smaller model gets every block but the last, and a
    one-block model its one block. The last block is left out as the paper leaves out the blocks
    next to the output: the head reads its output directly, so compressing it works straight against
    the main loss. The first block stays in, because a model this small has nothing else to compress
    (the suite's one-block MLP of the forgetting experiment names block 0 for the same reason).
    """
    if n_blocks < 1:
        raise ConfigError("GAPT needs at least one block")
    try:
        return default_layers(n_blocks, kind)
    except ConfigError:
        return list(range(max(n_blocks - 1, 1)))


def _describe(value: Any) -> str:
    """What a block returned, in words, for an error message."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(_describe(v) for v in value[:3]) + (", ..." if len(value) > 3 else "")
        return f"a {type(value).__name__} of {len(value)} ({items})"
    return f"a {type(value).__name__}"


@dataclass
class MicroBatch:
    """One micro-batch inside ``GAPT.micro_batch``: set ``main_loss`` in the block (a main or joint
    micro-batch); after it, ``loss`` is what to back-propagate."""

    kind: str  # "main", "joint" or "mbe"
    layer: int | None  # the block an MBE micro-batch regularizes
    main_loss: Tensor | None = None
    objective: Tensor | None = field(default=None, init=False)  # the micro-batch's loss, undivided
    loss: Tensor | None = field(default=None, init=False)  # objective / micro_batches


@dataclass(frozen=True)
class StepReport:
    """What ``GAPT.end_step`` tells the loop about the step that ended."""

    step: int
    phase: Phase  # the phase the step ran in
    next_phase: Phase
    finite: bool  # False: skip the optimizer step
    main_loss: float  # mean over the main and joint micro-batches
    mbe_by_layer: list[float]  # detached MBE of every block, mean over those micro-batches
    phase_changes: list[dict[str, Any]]  # the controller's transitions at this step

    @property
    def mbe(self) -> float:
        return sum(self.mbe_by_layer) / len(self.mbe_by_layer) if self.mbe_by_layer else float("nan")


class GAPT:
    """GAPT (or a baseline) around the blocks of any model; the module docstring shows the loop.

    ``blocks``: the modules whose outputs GAPT reads, in the order the forward pass runs them (a
    ``ModuleList`` of transformer blocks, the ``Linear + ReLU`` layers of an MLP, ...), at least one.

    **What a block may output.** GAPT reads each block's output through ``hidden_state``, a function
    of the output (default ``block_output``: the output itself, or the first element of a tuple or
    list, as Hugging Face blocks return), and takes two shapes of the tensor it gets:

    - (B, S, D): B sequences of S positions of width D. An MBE patch is P consecutive positions of
      one sequence, so S must be a multiple of P (``ObjectiveConfig.patch_size``, default 8).
    - (B, D): a batch of B vectors, such as an MLP's hidden layer. It is read as one sequence of B
      samples, (1, B, D): a patch is P consecutive rows of the batch, so B must be a multiple of P.
      The suite measures the forgetting experiment's MLP the same way. (Read as (B, 1, D), every
      patch would hold one row, whose MBE is always 0.) Draw the batch's rows in random order, so
      that a patch is P independent samples.

    Anything else (another number of dimensions, a dict, a tuple whose first element is not the
    hidden state) is refused with an error naming the block and what it returned. Pass
    ``hidden_state`` to pick or reshape the tensor, e.g. ``lambda out: out["hidden"]``, or, for a
    feature map (B, C, H, W), ``lambda out: out.flatten(2).transpose(1, 2)`` (H * W positions of C
    channels).

    **Which blocks are regularized.** ``ObjectiveConfig.alternate_layers`` (method gapt, one block
    per MBE micro-batch, rotating) and ``joint_layers`` (gapt_joint, ce_mbe: their mean MBE), indices
    into ``blocks``; what they name always wins. Left at None, ``default_block_layers`` chooses: the
    paper's middle blocks (alternate 2 .. L-3 of L blocks, from 5 blocks; joint 1 .. L-2, from 3
    blocks), and in a model too small for them every block but the last (a one-block model: its block).
    ``gapt.plan`` holds the choice (``plan.alternate``, ``plan.joint``; ``plan.monitored``: the blocks
    whose MBE the controller watches).

    **Knobs** (``objective=ObjectiveConfig(...)``, ``controller=GaptConfig(...)``). The controller's
    defaults are the paper's, whose steps were about a million tokens each; its patiences count
    optimizer steps (``end_step`` calls).

    - ``GaptConfig.patience_memorize`` (125): memorize ends, and compress begins, after this many
      steps in a row in which the main loss did not beat its lowest value so far by more than
      ``delta_ce``. No phase change can come before this many steps: a 50-step run with the default
      stays in memorize throughout.
    - ``GaptConfig.patience_compress`` (125): compress ends after this many steps in a row in which
      the MBE (the mean over ``plan.monitored``) did not beat its lowest value of this compress phase
      by more than ``delta_mbe``.
    - ``GaptConfig.delta_ce`` (0.01): what counts as progress of the main loss, absolute, in the
      loss's own units (nats for cross-entropy). For a loss of another scale (an MSE, a sum), set it
      to a small fraction of how much the loss falls.
    - ``GaptConfig.delta_mbe`` (0.002): what counts as progress of the MBE, absolute, in nats (the MBE
      of a patch of P rows lies between 0 and log P, 2.08 for P = 8).
    - ``GaptConfig.spike_tol`` (0.10): in compress, a main loss more than this fraction above its
      lowest value since compress began ends compress at once (reason ``ce_spike``).
    - ``GaptConfig.smoothing`` (0.0, off): the controller reads an exponential moving average of the
      main loss and the MBE with this coefficient beta, over about (1 + beta) / (1 - beta) steps
      (0.9: 19 steps). A small batch gives a noisy loss whose noise alone crosses the thresholds; 0.9
      steadies it. Keep the patiences longer than that window.
    - ``GaptConfig.rules`` ("paper"): the rule set; ``GaptConfig.preset(name)`` gives each its own
      defaults (``relative``: patience_compress 75, relative thresholds ``relative_tol``).
    - ``ObjectiveConfig.lambda_mbe`` (20.0): the weight of the mean MBE in the joint objective
      (gapt_joint, ce_mbe). gapt's MBE micro-batches back-propagate the MBE with weight 1: its
      strength is that every odd micro-batch of a compress step is one.
    - ``ObjectiveConfig.patch_size`` (8): rows per MBE patch (see the shapes above).

    Scale the patiences with the run: the paper used 125 steps in runs of 875 (arithmetic) and 1,750
    (FineWeb) steps, 7 to 14 % of the run, so that a run goes through a few cycles. A run of 400 steps
    would take patiences of about 30 to 60.

    ``micro_batches``: the micro-batches of one optimizer step (gapt needs at least 2: the odd ones
    are its MBE micro-batches); ``mb.loss`` is already divided by it. ``stop_early=False`` runs an MBE
    micro-batch's forward pass to the end instead of stopping after its block (for data-parallel
    wrappers; see the module docstring).
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        *,
        method: str = "gapt",
        micro_batches: int = 1,
        objective: ObjectiveConfig | None = None,
        controller: GaptConfig | None = None,
        hidden_state: Callable[[Any], Any] = block_output,
        stop_early: bool = True,
    ):
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
        self.method = METHODS[method]
        if self.method.matches:
            raise ConfigError(
                f"{method} is a matched-dose control, whose compress steps come from a gated run of the "
                "suite (replication.science.schedule): the drop-in offers "
                + ", ".join(m for m in METHODS if not METHODS[m].matches)
            )
        if self.method.compression == "alternate" and micro_batches < 2:
            raise ConfigError(
                f"method {method} alternates main-loss and MBE micro-batches: micro_batches must be >= 2"
            )
        self.blocks = list(blocks)
        if not self.blocks:
            raise ConfigError("blocks is empty: name at least one block whose output GAPT reads")
        if len({id(block) for block in self.blocks}) != len(self.blocks):
            raise ConfigError("a block appears twice in blocks: every block must be a module of its own")
        self.stop_early = stop_early
        self.micro_batches = micro_batches
        self.objective = objective or ObjectiveConfig()
        # the layers the objective leaves at None, chosen here so that small models get some too
        chosen = {
            f"{kind}_layers": default_block_layers(len(self.blocks), kind)
            for kind in ("alternate", "joint")
            if getattr(self.objective, f"{kind}_layers") is None
        }
        self.plan = plan_layers(self.objective.model_copy(update=chosen), self.method, len(self.blocks))
        self.controller = PhaseController(controller or GaptConfig()) if self.method.gated else None
        self.hidden_state = hidden_state
        self.step_index = 0
        self._sums: StepAccumulator | None = None
        self._captured: dict[int, Tensor] | None = None
        self._end_after: int | None = None
        self._handles = [block.register_forward_hook(self._hook(i)) for i, block in enumerate(self.blocks)]

    # -- state ---------------------------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        return self.controller.phase if self.controller is not None else self.method.fixed_phase

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable: the controller and the step counter."""
        return {
            "controller": self.controller.state_dict() if self.controller else None,
            "step": self.step_index,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.controller is not None:
            self.controller.load_state_dict(state["controller"])
        self.step_index = int(state["step"])

    def remove(self) -> None:
        """Remove the hooks: the model runs as if GAPT had never been attached."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- hooks ---------------------------------------------------------------------------------
    def _hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._captured is None:  # outside a micro-batch (evaluation, generation): nothing
                return
            if index in self._captured:
                raise RuntimeError(
                    f"block {index} ran twice in one micro-batch: GAPT needs each block once per forward "
                    "pass (one forward pass per `with gapt.micro_batch(...)`, no block applied twice)"
                )
            self._captured[index] = self._as_sequences(index, module, output)
            if index == self._end_after and self.stop_early:
                raise _EndForward

        return hook

    def _as_sequences(self, index: int, module: nn.Module, output: Any) -> Tensor:
        """The block's hidden state as (B, S, D), S a multiple of the patch size (class docstring)."""
        name = f"block {index} ({type(module).__name__})"
        hidden = self.hidden_state(output)
        if not isinstance(hidden, Tensor):
            raise TypeError(
                f"{name} returned {_describe(output)}, and hidden_state gave {_describe(hidden)}: GAPT "
                "needs a tensor of shape (B, S, D) or (B, D); pass hidden_state=<a function of the block's "
                "output that returns it>"
            )
        if hidden.dim() not in (2, 3):
            raise ValueError(
                f"{name} gave a hidden state of shape {tuple(hidden.shape)}: GAPT reads (B, S, D) "
                "(sequences) or (B, D) (a batch of vectors); pass hidden_state=<a function of the block's "
                "output that returns one of them>, e.g. lambda out: out.flatten(2).transpose(1, 2) for "
                "(B, C, H, W)"
            )
        patch = self.objective.patch_size
        length, what = (hidden.shape[1], "sequence length") if hidden.dim() == 3 else (len(hidden), "batch")
        if length % patch:
            raise ValueError(
                f"{name} gave a hidden state of shape {tuple(hidden.shape)}: its {what} {length} is not a "
                f"multiple of the MBE patch size {patch} (ObjectiveConfig.patch_size); change one of them"
            )
        return hidden.unsqueeze(0) if hidden.dim() == 2 else hidden  # a batch of vectors: one sequence

    # -- a step ----------------------------------------------------------------------------------
    @contextmanager
    def micro_batch(self, step: int, micro: int) -> Iterator[MicroBatch]:
        """Run one micro-batch's forward pass inside: the blocks' outputs are collected, and an MBE
        micro-batch ends after its block. ``step`` counts optimizer steps from 0 (it rotates gapt's
        block), ``micro`` the step's micro-batches from 0 (odd ones are gapt's MBE micro-batches)."""
        kind = micro_batch_kind(self.method, self.phase, micro)
        layer = self.plan.alternate[step % len(self.plan.alternate)] if kind == "mbe" else None
        mb = MicroBatch(kind, layer)
        self._captured, self._end_after = {}, layer
        try:
            yield mb
        except _EndForward:
            pass
        finally:
            captured, self._captured, self._end_after = self._captured, None, None
        needed = len(self.blocks) if layer is None else layer + 1
        if len(captured) < needed:
            raise RuntimeError(
                f"{len(captured)} of the {needed} blocks ran inside the micro-batch: run the model's forward "
                "pass in the `with gapt.micro_batch(...)` block"
            )
        if kind != "mbe" and mb.main_loss is None:
            raise RuntimeError("set mb.main_loss inside the `with gapt.micro_batch(...)` block")
        hidden = [captured[i] for i in range(needed)]
        regularized = [layer] if kind == "mbe" else self.plan.joint if kind == "joint" else []
        if torch.is_grad_enabled() and any(not hidden[i].requires_grad for i in regularized):
            raise RuntimeError(
                "a regularized block's output carries no gradient: reentrant activation checkpointing runs "
                "the blocks' hooks without gradients; use use_reentrant=False"
            )
        losses = micro_batch_objective(kind, hidden, mb.main_loss, self.objective, self.plan, step)
        every_layer = block_mbe(hidden, losses, self.objective.mbe_options())
        if self._sums is None:  # on the blocks' device: a block may hold no parameters (a ReLU)
            self._sums = StepAccumulator(hidden[0].device)
        self._sums.add(losses.loss, losses.main, every_layer)
        mb.objective = losses.loss
        mb.loss = mb.objective / self.micro_batches

    def end_step(self, result: StepResult | None = None) -> StepReport:
        """The step's sums go to the controller, which decides the next step's phase. ``result``:
        the step's sums reduced over processes, where several share it (default: this process's)."""
        if result is None:
            if self._sums is None:
                raise RuntimeError("end_step() before any micro_batch() of the step")
            result = self._sums.result()
        self._sums = None
        phase = self.phase
        changes = update_controller(self.controller, result, self.plan.monitored) if self.controller else []
        report = StepReport(
            self.step_index,
            phase,
            self.phase,
            result.finite,
            result.main_loss,
            result.mbe_by_layer,
            [c.as_dict() for c in changes],
        )
        self.step_index += 1
        return report

    def step_sums(self) -> StepResult:
        """This process's sums of the step so far (to reduce over processes before ``end_step``)."""
        if self._sums is None:
            raise RuntimeError("no micro-batch of this step has run")
        return self._sums.result()


__all__ = [
    "GAPT",
    "GaptConfig",
    "MicroBatch",
    "ObjectiveConfig",
    "StepReport",
    "block_output",
    "default_block_layers",
]
