"""The GAPT phase controller: a plain state machine over (main loss, MBE), no tensors.

Updated once per optimizer step with that step's training main loss L (CE, or L1 for the MLP task)
and the training MBE of the regularized layers; it returns the phase of the *next* step.
docs/SPEC.md section 3.1 names the rule sets, chosen by ``GaptConfig.rules``: ``RULES`` holds one
class per rule set, which keeps the state only that rule set reads; ``PhaseController`` keeps the
phase, the transitions and the input smoothing they share. Each rule set reproduces, on every finite
input, the phase controller of one version of the author's code (GitHub user fangyuan-ksgk); where
that code and docs/SPEC.md disagree, the code is followed and the difference is stated below.

``paper`` (default): class ``GatedPhaseTransition`` of ``src/sorl.py`` in ``fangyuan-ksgk/minimind``
    (the compact implementation that cites the paper; read at commit 07dd1e2).
    Every update: dE = E_min - L, then E_min <- min(E_min, L); at E_min = +inf, dE = +inf is progress.
    Memorize: s_m <- 0 if dE > delta_ce else s_m + 1; at s_m >= p_m switch to compress with
    s_c <- 0 and E_min, M_min <- +inf.
    Compress: if E_min is finite and L > E_min * (1 + tau), switch to memorize (a CE spike), s_m <- 0.
    Otherwise dM = M_min - M, M_min <- min(M_min, M), s_c <- 0 if dM > delta_mbe else s_c + 1; at
    s_c >= p_c switch to memorize, s_m <- 0. M is the mean over the monitored layers; M_min is only
    read and updated in compress. ``sorl.py`` has one threshold for dE and dM; here they are
    ``delta_ce`` and ``delta_mbe`` (equal values give that code exactly).

``v1_code``: class ``RRScheduler`` of ``src/utils.py`` in ``fangyuan-ksgk/mod_gpt``, the older,
    two-phase version of the paper's time (its constructor ends with ``mbe_patience=125,
    mbe_min_delta=0.002``; no inner phase, no ``ib_target``), method ``_switch_phase``.
    Every update, in both phases, before any transition:
      CE gain g_E = max(0, E_min - L); progress iff g_E > delta_ce and g_E is finite (so the first
      update after E_min is reset is no progress). Spike iff L >= E_min * (1 + tau), tested before
      E_min <- min(E_min, L).
      MBE gain g_M = max(0, max_l (M_min,l - M_l)) over the monitored layers; progress iff
      g_M > delta_mbe and g_M is finite (while any layer's minimum is +inf, no progress). Then
      M_min,l <- min(M_min,l, M_l) for every layer.
      s_m <- 0 on CE progress else s_m + 1; s_c <- 0 on MBE progress else s_c + 1.
    Compress, s_c >= p_c or a spike: switch to memorize, s_m <- 0, every M_min,l <- +inf.
    Memorize, s_m >= p_m: switch to compress, s_c <- 0, E_min <- +inf.
    Only the counter of the phase being entered is reset: the code resets no other, as docs/SPEC.md
    also says. The counter of the phase being left keeps counting and is never read before it is
    reset on its next entry, so resetting both would give the same phases and only other logged
    counter values. ``M_min`` (logged) is the mean of the per-layer minima. The code's spike factor
    is a literal 1.1; here 1 + tau (equal at the default tau = 0.1).

``v1_code_newer``: the newer ``RRScheduler`` of the same file (the version whose constructor
    ``train_pcgrad.py`` calls, with ``ib_target``, ``include_inner_cycle`` and ``inv_mbe_patience``
    arguments; read at commit 016eca4), with its default flags (``ib_target=True``,
    ``include_inner_cycle=False``). It computes MBE progress, and updates the MBE minima, only in
    an inner phase those flags never enter: MBE progress is never detected, s_c grows by one on every
    update, and ``M_min`` stays +inf. Everything else is ``v1_code``. So a compress phase lasts
    exactly p_c updates unless CE spikes.

``relative``: class ``GatedPhaseTransition`` of ``src/gapt.py`` in ``fangyuan-ksgk/mod_gpt`` (the later
    code, percentage thresholds; read at commits 069adbf and e43c887, whose rules are the same).
    gain(min, x) = (min - x) / max(|min|, 1e-6), and gain = 0 when min = +inf or |min| < 1e-9 (so
    the first update is no progress and no spike). Every update, in both phases: g_E = gain(E_min, L),
    g_M = gain(M_min, M), then E_min <- min(E_min, L) and M_min <- min(M_min, M); neither minimum is
    ever reset. Memorize: s_m <- 0 if g_E > relative_tol else s_m + 1; at s_m >= p_m: s_m <- 0,
    switch to compress. Compress: if g_E < -tau: s_c <- 0, switch to memorize (a CE spike); else
    s_c <- 0 if g_M > relative_tol else s_c + 1, and at s_c >= p_c: s_c <- 0, switch to memorize.
    The counter reset is that of the phase being *left*. The code has one plateau threshold per
    input; here ``relative_tol`` serves both. The later code used p_m = 125, p_c = 75:
    ``GaptConfig.preset("relative")`` gives those defaults.

Details the author's code does not fix, and the choice made here (each pinned by a test):
- M of ``paper`` and ``relative`` is the mean over the monitored layers; ``v1_code`` and
  ``v1_code_newer`` watch each layer (layers are matched by position; a change in their number
  restarts every per-layer minimum at +inf).
- A non-finite loss or MBE value changes no state but ``n_nonfinite`` (and ``n_updates``), and the
  phase stays as it was. ``src/gapt.py`` skips such a step too; ``sorl.py`` and ``RRScheduler`` have
  no such guard (there a NaN would still advance the counters), a deliberate departure here.
- ``n_updates`` counts every call, so the step of a transition event is the optimizer step index
  when the loop calls ``update`` once per step from step 0.

Beyond the paper, ``smoothing`` (default 0: off) feeds every rule set an exponential moving average
of its inputs, bias-corrected as in Adam: x_hat_t = m_t / (1 - beta^t), m_t = beta m_(t-1) +
(1 - beta) x_t, per input (CE and each layer's MBE). The paper's thresholds were set for steps of a
million tokens; a small-scale run's per-step loss is far noisier, and its noise alone would cross
the 10 % spike tolerance and the progress thresholds. Averaging over about (1 + beta) / (1 - beta)
steps stands in for the larger batch without changing what the thresholds mean.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

INF = math.inf


class Phase(str, Enum):
    MEMORIZE = "memorize"  # main loss only
    COMPRESS = "compress"  # main loss + MBE objective


Reason = Literal["ce_plateau", "mbe_plateau", "ce_spike"]


@dataclass(frozen=True)
class Transition:
    step: int
    from_phase: Phase
    to_phase: Phase
    reason: Reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "from": self.from_phase.value,
            "to": self.to_phase.value,
            "reason": self.reason,
        }


Switch = tuple[Phase, Reason]  # what a rule set's update returns when the phase changes: to what, and why


# -- rule sets ---------------------------------------------------------------------------------


@dataclass
class Rules:
    """One rule set: the state it keeps between updates (its fields, which its ``state_dict`` holds),
    and ``update``, which changes that state and says when the phase changes.

    Every rule set keeps the counters s_m and s_c and the CE minimum E_min, and reads out ``m_min``,
    the MBE minimum the controller logs. ``preset``: the defaults of the code that introduced the rule
    set, over GaptConfig's (``GaptConfig.preset``).
    """

    name: ClassVar[str]
    preset: ClassVar[dict[str, Any]] = {}

    s_m: int = 0
    s_c: int = 0
    e_min: float = INF

    def update(self, config: GaptConfig, phase: Phase, ce: float, mbe: list[float]) -> Switch | None:
        """One update with finite inputs (main loss, the MBE of each monitored layer) in ``phase``;
        the phase to switch to and why, or None to stay."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Rules:
        """The rules whose ``state_dict`` is among the keys of state."""
        return cls(**{f.name: copy.deepcopy(state[f.name]) for f in fields(cls)})


@dataclass
class PaperRules(Rules):
    """``paper``: minimind src/sorl.py, GatedPhaseTransition.step."""

    name = "paper"
    m_min: float = INF

    def update(self, config: GaptConfig, phase: Phase, ce: float, mbe: list[float]) -> Switch | None:
        ce_progress = self.e_min - ce > config.delta_ce  # +inf minimum: progress
        self.e_min = min(self.e_min, ce)
        if phase is Phase.MEMORIZE:
            self.s_m = 0 if ce_progress else self.s_m + 1
            if self.s_m < config.patience_memorize:
                return None
            self.s_c = 0
            self.e_min = self.m_min = INF
            return Phase.COMPRESS, "ce_plateau"
        if math.isfinite(self.e_min) and ce > self.e_min * (1.0 + config.spike_tol):
            self.s_m = 0
            return Phase.MEMORIZE, "ce_spike"
        mean = sum(mbe) / len(mbe)
        mbe_progress = self.m_min - mean > config.delta_mbe
        self.m_min = min(self.m_min, mean)
        self.s_c = 0 if mbe_progress else self.s_c + 1
        if self.s_c < config.patience_compress:
            return None
        self.s_m = 0
        return Phase.MEMORIZE, "mbe_plateau"


@dataclass
class RelativeRules(Rules):
    """``relative``: mod_gpt src/gapt.py, GatedPhaseTransition.step: minima updated on every call,
    never reset."""

    name = "relative"
    preset = {"patience_compress": 75}
    m_min: float = INF

    @staticmethod
    def gain(minimum: float, current: float) -> float:
        """Fractional improvement on the minimum; 0 while the minimum is +inf or about 0."""
        if minimum == INF or abs(minimum) < 1e-9:
            return 0.0
        return (minimum - current) / max(abs(minimum), 1e-6)

    def update(self, config: GaptConfig, phase: Phase, ce: float, mbe: list[float]) -> Switch | None:
        mean = sum(mbe) / len(mbe)
        gain_ce = self.gain(self.e_min, ce)
        gain_mbe = self.gain(self.m_min, mean)
        self.e_min = min(self.e_min, ce)
        self.m_min = min(self.m_min, mean)
        if phase is Phase.MEMORIZE:
            self.s_m = 0 if gain_ce > config.relative_tol else self.s_m + 1
            if self.s_m >= config.patience_memorize:
                self.s_m = 0
                return Phase.COMPRESS, "ce_plateau"
        elif gain_ce < -config.spike_tol:
            self.s_c = 0
            return Phase.MEMORIZE, "ce_spike"
        else:
            self.s_c = 0 if gain_mbe > config.relative_tol else self.s_c + 1
            if self.s_c >= config.patience_compress:
                self.s_c = 0
                return Phase.MEMORIZE, "mbe_plateau"
        return None


@dataclass
class RRSchedulerRules(Rules):
    """mod_gpt src/utils.py, RRScheduler._switch_phase, without MBE progress: both counters advance
    on every update in both phases, and the rule sets below differ only in what MBE progress is."""

    @property
    def m_min(self) -> float:
        return INF

    def update_mbe(self, config: GaptConfig, mbe: list[float]) -> bool:
        """Update the MBE minima with this step's MBE; whether it made progress."""
        return False

    def restart_mbe(self) -> None:
        """Entering memorize: forget the MBE minima."""

    def update(self, config: GaptConfig, phase: Phase, ce: float, mbe: list[float]) -> Switch | None:
        ce_gain = max(0.0, self.e_min - ce)  # +inf while E_min is +inf: never progress
        ce_progress = ce_gain > config.delta_ce and ce_gain != INF
        spike = ce >= self.e_min * (1.0 + config.spike_tol)  # before E_min is updated
        self.e_min = min(self.e_min, ce)
        self.s_m = 0 if ce_progress else self.s_m + 1
        self.s_c = 0 if self.update_mbe(config, mbe) else self.s_c + 1
        if phase is Phase.COMPRESS:
            if spike or self.s_c >= config.patience_compress:
                self.s_m = 0
                self.restart_mbe()
                return Phase.MEMORIZE, "ce_spike" if spike else "mbe_plateau"
        elif self.s_m >= config.patience_memorize:
            self.s_c = 0
            self.e_min = INF
            return Phase.COMPRESS, "ce_plateau"
        return None


@dataclass
class V1CodeNewerRules(RRSchedulerRules):
    """``v1_code_newer``: the newer RRScheduler with its default flags, which never detect MBE
    progress and never set an MBE minimum."""

    name = "v1_code_newer"


@dataclass
class V1CodeRules(RRSchedulerRules):
    """``v1_code``: the older RRScheduler, with progress on the MBE of any one layer."""

    name = "v1_code"
    m_min_by_layer: list[float] = field(default_factory=list)

    @property
    def m_min(self) -> float:
        """The mean of the per-layer minima (+inf before the first update)."""
        by_layer = self.m_min_by_layer
        return sum(by_layer) / len(by_layer) if by_layer else INF

    def update_mbe(self, config: GaptConfig, mbe: list[float]) -> bool:
        if len(self.m_min_by_layer) != len(mbe):
            self.m_min_by_layer = [INF] * len(mbe)
        gain = max([0.0] + [lo - m for lo, m in zip(self.m_min_by_layer, mbe)])
        self.m_min_by_layer = [min(lo, m) for lo, m in zip(self.m_min_by_layer, mbe)]
        return gain > config.delta_mbe and gain != INF

    def restart_mbe(self) -> None:
        self.m_min_by_layer = [INF] * len(self.m_min_by_layer)


RULES: dict[str, type[Rules]] = {
    r.name: r for r in (PaperRules, V1CodeRules, V1CodeNewerRules, RelativeRules)
}
RuleSetName = Literal[tuple(RULES)]  # type: ignore[valid-type]  # the registry's names, in its order

Threshold = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # finite, >= 0
Patience = Annotated[int, Field(ge=1)]  # optimizer steps


class GaptConfig(BaseModel):
    """Hyper-parameters of the controller (docs/SPEC.md section 3.1; paper-scale defaults). Frozen; an
    unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: RuleSetName = "paper"
    delta_ce: Threshold = 0.01  # absolute CE progress threshold (paper, v1_code, v1_code_newer)
    delta_mbe: Threshold = 0.002  # absolute MBE progress threshold (paper, v1_code)
    # tau: a CE more than this fraction above its minimum is a spike (v1_code, v1_code_newer: at least)
    spike_tol: Threshold = 0.10
    patience_memorize: Patience = 125  # p_m
    patience_compress: Patience = 125  # p_c
    relative_tol: Threshold = 0.01  # relative progress threshold for CE and MBE (relative)
    # EMA coefficient of the inputs; 0 feeds each step's raw values (the paper)
    smoothing: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.0

    @classmethod
    def preset(cls, rules: str, **overrides: Any) -> GaptConfig:
        """The defaults of the code that introduced the rule set (its ``Rules.preset``), overrides on top."""
        introduced = RULES[rules].preset if rules in RULES else {}
        return cls(rules=rules, **{**introduced, **overrides})


# -- the controller ----------------------------------------------------------------------------


@dataclass
class PhaseController:
    """GAPT state machine. ``update`` once per optimizer step; read the counters and minima freely."""

    config: GaptConfig = field(default_factory=GaptConfig)
    phase: Phase = Phase.MEMORIZE
    n_updates: int = 0
    n_nonfinite: int = 0
    transitions: list[Transition] = field(default_factory=list)
    ema: list[float] = field(default_factory=list)  # smoothing state: [ce, mbe of each layer]
    n_smoothed: int = 0
    last_input: list[float] = field(default_factory=list)  # what the rules saw last: [ce, mbe...]
    rules: Rules = field(init=False)  # the state of the config's rule set

    def __post_init__(self) -> None:
        self.rules = RULES[self.config.rules]()

    def update(self, ce: float, mbe: float | Sequence[float]) -> Phase:
        """Feed one step's training main loss and MBE (a mean, or one value per monitored layer)."""
        step = self.n_updates
        self.n_updates += 1
        values = [float(mbe)] if isinstance(mbe, (int, float)) else [float(m) for m in mbe]
        ce = float(ce)
        if not values or not math.isfinite(ce) or not all(math.isfinite(m) for m in values):
            self.n_nonfinite += 1
            return self.phase
        ce, values = self._smooth(ce, values)
        self.last_input = [ce, *values]
        switch = self.rules.update(self.config, self.phase, ce, values)
        if switch is not None:
            to, reason = switch
            self.transitions.append(Transition(step, self.phase, to, reason))
            self.phase = to
        return self.phase

    def _smooth(self, ce: float, values: list[float]) -> tuple[float, list[float]]:
        beta = self.config.smoothing
        if beta == 0.0:
            return ce, values
        raw = [ce, *values]
        if len(self.ema) != len(raw):
            self.ema, self.n_smoothed = [0.0] * len(raw), 0
        self.n_smoothed += 1
        self.ema = [beta * m + (1.0 - beta) * x for m, x in zip(self.ema, raw)]
        correction = 1.0 - beta**self.n_smoothed
        smoothed = [m / correction for m in self.ema]
        return smoothed[0], smoothed[1:]

    # -- reading and persistence ---------------------------------------------------------------
    @property
    def s_m(self) -> int:
        return self.rules.s_m

    @s_m.setter
    def s_m(self, value: int) -> None:
        self.rules.s_m = value

    @property
    def s_c(self) -> int:
        return self.rules.s_c

    @s_c.setter
    def s_c(self, value: int) -> None:
        self.rules.s_c = value

    @property
    def e_min(self) -> float:
        return self.rules.e_min

    @property
    def m_min(self) -> float:
        return self.rules.m_min

    @property
    def n_phase_changes(self) -> int:
        return len(self.transitions)

    def snapshot(self) -> dict[str, Any]:
        """What the loop logs every step (infinite minima as None, so the JSON stays standard)."""

        def finite_or_none(x: float) -> float | None:
            return x if math.isfinite(x) else None

        snapshot = {
            "phase": self.phase.value,
            "s_m": self.s_m,
            "s_c": self.s_c,
            "e_min": finite_or_none(self.e_min),
            "m_min": finite_or_none(self.m_min),
        }
        if self.config.smoothing and self.last_input:  # the smoothed values the rules saw
            snapshot["ce_input"] = self.last_input[0]
            snapshot["mbe_input"] = sum(self.last_input[1:]) / len(self.last_input[1:])
        return snapshot

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable; the rule set's state sits beside the controller's, under its own keys."""
        return {
            "config": self.config.model_dump(),
            "phase": self.phase.value,
            **self.rules.state_dict(),
            "n_updates": self.n_updates,
            "n_nonfinite": self.n_nonfinite,
            "transitions": [t.as_dict() for t in self.transitions],
            "ema": list(self.ema),
            "n_smoothed": self.n_smoothed,
            "last_input": list(self.last_input),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = GaptConfig.model_validate(state["config"])
        if saved != self.config:
            raise ValueError(
                f"controller state was saved with {saved!r}, this controller has {self.config!r}"
            )
        self.phase = Phase(state["phase"])
        self.rules = RULES[self.config.rules].from_state(state)
        self.n_updates, self.n_nonfinite = int(state["n_updates"]), int(state["n_nonfinite"])
        self.transitions = [
            Transition(t["step"], Phase(t["from"]), Phase(t["to"]), t["reason"]) for t in state["transitions"]
        ]
        self.ema = [float(x) for x in state["ema"]]
        self.n_smoothed = int(state["n_smoothed"])
        self.last_input = [float(x) for x in state["last_input"]]
