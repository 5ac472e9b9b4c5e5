"""The GAPT phase controller: a plain state machine over (main loss, MBE), no tensors.

Updated once per optimizer step with that step's training main loss L (CE, or L1 for the MLP task)
and the training MBE of the regularized layers; it returns the phase of the *next* step.
PAPER.md section 3.1 defines three rule sets, chosen by ``GaptConfig.rules``:

``paper`` (default; the author's compact implementation that cites the paper)
    Every update: dE = E_min - L, then E_min <- min(E_min, L).
    Memorize: s_m <- 0 if dE > delta_ce else s_m + 1; at s_m >= p_m switch to compress with
    s_c <- 0 and E_min, M_min <- +inf.
    Compress: if L > E_min * (1 + tau) switch to memorize (a CE spike), s_m <- 0. Otherwise
    dM = M_min - M, M_min <- min(M_min, M), s_c <- 0 if dM > delta_mbe else s_c + 1; at
    s_c >= p_c switch to memorize, s_m <- 0. M is the mean over the monitored layers.

``v1_code`` (the scheduler of the author's code at the time of v1)
    Both counters advance on every update in both phases. The spike test L >= (1 + tau) E_min runs
    before E_min is updated. MBE progress means that any monitored layer beat its own running
    minimum by more than delta_mbe. Memorize -> compress resets E_min; compress -> memorize clears
    the per-layer MBE minima.

``relative`` (the author's later code)
    The ``paper`` structure with relative progress, (min - current) / |min| > relative_tol for both
    CE and MBE, and running minima that are never reset. The later code used p_m = 125, p_c = 75:
    ``GaptConfig.preset("relative")`` gives those defaults.

Details PAPER.md leaves open, and the choice made here (each pinned by a test):
- The spike test of ``paper`` and ``relative`` compares L with E_min *after* the update of rule 1.
  This flags exactly the same steps as testing against E_min before the update (a spiking L never
  lowers the minimum), so the order only matters for the ``>=`` of ``v1_code``.
- ``paper`` and ``relative`` update M_min only in compress (rule 3 is the only place it appears);
  E_min is updated in both phases.
- ``v1_code`` resets no counter on a transition: the minima resets make the next update count as
  progress, which restarts the counter of the phase whose minimum was reset. The other counter
  carries over, so a compress phase entered after a memorize phase in which MBE never improved ends
  after one update unless that update improves a layer's MBE.
- ``relative`` resets the counters on entering a phase, as ``paper`` does.
- A non-finite loss or MBE value changes no state but ``n_nonfinite`` (and ``n_updates``), and the
  phase stays as it was.
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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

RULE_SETS = ("paper", "v1_code", "relative")
INF = math.inf


class Phase(str, Enum):
    MEMORIZE = "memorize"  # main loss only
    COMPRESS = "compress"  # main loss + MBE objective


@dataclass(frozen=True)
class GaptConfig:
    """Hyper-parameters of the controller (PAPER.md section 3.1; paper-scale defaults)."""

    rules: str = "paper"
    delta_ce: float = 0.01  # absolute CE progress threshold (paper, v1_code)
    delta_mbe: float = 0.002  # absolute MBE progress threshold (paper, v1_code)
    spike_tol: float = 0.10  # tau: a CE more than this fraction above its minimum is a spike
    patience_memorize: int = 125  # p_m, optimizer steps
    patience_compress: int = 125  # p_c, optimizer steps
    relative_tol: float = 0.01  # relative progress threshold for CE and MBE (relative)
    smoothing: float = 0.0  # EMA coefficient of the inputs; 0 feeds each step's raw values (the paper)

    def __post_init__(self) -> None:
        if self.rules not in RULE_SETS:
            raise ValueError(f"unknown GAPT rule set {self.rules!r}; choose one of {RULE_SETS}")
        if self.patience_memorize < 1 or self.patience_compress < 1:
            raise ValueError("GAPT patiences must be >= 1")
        if self.spike_tol < 0 or self.relative_tol < 0:
            raise ValueError("GAPT tolerances must be >= 0")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"GAPT smoothing is an EMA coefficient in [0, 1), got {self.smoothing}")

    @classmethod
    def preset(cls, rules: str, **overrides: Any) -> GaptConfig:
        """Defaults of the code that introduced each rule set, with overrides on top."""
        base = cls(rules=rules)
        if rules == "relative":
            base = replace(base, patience_compress=75)
        return replace(base, **overrides)


@dataclass(frozen=True)
class Transition:
    step: int
    from_phase: Phase
    to_phase: Phase
    reason: str  # "ce_plateau", "mbe_plateau" or "ce_spike"

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "from": self.from_phase.value, "to": self.to_phase.value, "reason": self.reason}


@dataclass
class PhaseController:
    """GAPT state machine. ``update`` once per optimizer step; read the counters and minima freely."""

    config: GaptConfig = field(default_factory=GaptConfig)
    phase: Phase = Phase.MEMORIZE
    s_m: int = 0
    s_c: int = 0
    e_min: float = INF
    m_min: float = INF
    m_min_by_layer: list[float] = field(default_factory=list)
    n_updates: int = 0
    n_nonfinite: int = 0
    transitions: list[Transition] = field(default_factory=list)
    ema: list[float] = field(default_factory=list)  # smoothing state: [ce, mbe of each layer]
    n_smoothed: int = 0
    last_input: list[float] = field(default_factory=list)  # what the rules saw last: [ce, mbe...]

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
        if self.config.rules == "v1_code":
            self._update_v1_code(step, ce, values)
        else:
            self._update_paper_or_relative(step, ce, sum(values) / len(values))
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

    # -- rule sets -----------------------------------------------------------------------------
    def _progress(self, minimum: float, current: float, absolute_threshold: float) -> bool:
        if self.config.rules == "relative":
            if minimum == INF:
                return True
            return (minimum - current) / max(abs(minimum), 1e-12) > self.config.relative_tol
        return minimum - current > absolute_threshold

    def _update_paper_or_relative(self, step: int, ce: float, mbe: float) -> None:
        cfg = self.config
        ce_progress = self._progress(self.e_min, ce, cfg.delta_ce)
        self.e_min = min(self.e_min, ce)
        if self.phase is Phase.MEMORIZE:
            self.s_m = 0 if ce_progress else self.s_m + 1
            if self.s_m >= cfg.patience_memorize:
                self._switch(step, Phase.COMPRESS, "ce_plateau")
                self.s_c = 0
                if cfg.rules == "paper":
                    self.e_min = self.m_min = INF
            return
        if math.isfinite(self.e_min) and ce > self.e_min * (1.0 + cfg.spike_tol):
            self._switch(step, Phase.MEMORIZE, "ce_spike")
            self.s_m = 0
            return
        mbe_progress = self._progress(self.m_min, mbe, cfg.delta_mbe)
        self.m_min = min(self.m_min, mbe)
        self.s_c = 0 if mbe_progress else self.s_c + 1
        if self.s_c >= cfg.patience_compress:
            self._switch(step, Phase.MEMORIZE, "mbe_plateau")
            self.s_m = 0

    def _update_v1_code(self, step: int, ce: float, values: list[float]) -> None:
        cfg = self.config
        spike = math.isfinite(self.e_min) and ce >= (1.0 + cfg.spike_tol) * self.e_min
        ce_progress = self.e_min - ce > cfg.delta_ce
        self.e_min = min(self.e_min, ce)
        self.s_m = 0 if ce_progress else self.s_m + 1

        if len(self.m_min_by_layer) != len(values):
            self.m_min_by_layer = [INF] * len(values)
        mbe_progress = any(lo - m > cfg.delta_mbe for lo, m in zip(self.m_min_by_layer, values))
        self.m_min_by_layer = [min(lo, m) for lo, m in zip(self.m_min_by_layer, values)]
        self.m_min = sum(self.m_min_by_layer) / len(self.m_min_by_layer)
        self.s_c = 0 if mbe_progress else self.s_c + 1

        if self.phase is Phase.MEMORIZE:
            if self.s_m >= cfg.patience_memorize:
                self._switch(step, Phase.COMPRESS, "ce_plateau")
                self.e_min = INF
        elif spike or self.s_c >= cfg.patience_compress:
            self._switch(step, Phase.MEMORIZE, "ce_spike" if spike else "mbe_plateau")
            self.m_min_by_layer = [INF] * len(values)
            self.m_min = INF

    def _switch(self, step: int, to: Phase, reason: str) -> None:
        self.transitions.append(Transition(step, self.phase, to, reason))
        self.phase = to

    # -- reading and persistence ---------------------------------------------------------------
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
        return {
            "config": asdict(self.config),
            "phase": self.phase.value,
            "s_m": self.s_m,
            "s_c": self.s_c,
            "e_min": self.e_min,
            "m_min": self.m_min,
            "m_min_by_layer": list(self.m_min_by_layer),
            "n_updates": self.n_updates,
            "n_nonfinite": self.n_nonfinite,
            "transitions": [t.as_dict() for t in self.transitions],
            "ema": list(self.ema),
            "n_smoothed": self.n_smoothed,
            "last_input": list(self.last_input),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = GaptConfig(**state["config"])
        if saved != self.config:
            raise ValueError(f"controller state was saved with {saved}, this controller has {self.config}")
        self.phase = Phase(state["phase"])
        self.s_m, self.s_c = int(state["s_m"]), int(state["s_c"])
        self.e_min, self.m_min = float(state["e_min"]), float(state["m_min"])
        self.m_min_by_layer = [float(x) for x in state["m_min_by_layer"]]
        self.n_updates, self.n_nonfinite = int(state["n_updates"]), int(state["n_nonfinite"])
        self.transitions = [
            Transition(t["step"], Phase(t["from"]), Phase(t["to"]), t["reason"]) for t in state["transitions"]
        ]
        self.ema = [float(x) for x in state["ema"]]
        self.n_smoothed = int(state["n_smoothed"])
        self.last_input = [float(x) for x in state["last_input"]]
