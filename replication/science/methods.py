"""The method registry: every method this project trains, in one place.

A method is a name for two facts: whether the GAPT controller gates compression (``gated``), and
which compression objective the compress phase uses (``compression``; the objectives themselves are
in ``replication.training.objectives``). Two kinds of method name a variant of another:

- a *matched-dose control* (``matches``) compresses exactly as many steps as the gated method's run
  of the same seed, at times no controller chose: that run's phases moved by a shift drawn per seed
  within each segment of the run (``replication.science.schedule``). Gated vs matched is the one
  comparison in which the dose of compression is equal and only its timing, the gating, differs.
- a *smoothed* gate (``smoothed``) is a gated method whose controller reads an exponential average of
  its inputs (``gapt.smoothing`` > 0, set by the experiment): the arm whose phases outlast the
  per-step noise of a small batch.

Everything that names methods reads them from here: the run
config (``RunConfig.method``, through ``MethodName``), the experiment files (their ``methods:``), the
DAG's method wildcard and its global config (``replication.dag.schema``), and the figures' order and
colours. Adding a method is one entry below, plus what its compression objective needs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from replication.science.errors import ConfigError
from replication.science.gapt import Phase

Compression = Literal["none", "alternate", "joint"]


class Method(BaseModel):
    """A registry entry; an unknown compression or key is an error when the registry is built."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    gated: bool  # a PhaseController decides the phase; otherwise the phase is fixed (or scheduled)
    compression: Compression
    matches: str | None = None  # a matched-dose control of this gated method: its phases come from a schedule
    smoothed: bool = False  # the controller's inputs must be smoothed (gapt.smoothing > 0)

    @property
    def fixed_phase(self) -> Phase:
        return Phase.MEMORIZE if self.compression == "none" else Phase.COMPRESS


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(name="ce", gated=False, compression="none"),
        Method(name="ce_mbe", gated=False, compression="joint"),
        Method(name="gapt", gated=True, compression="alternate"),
        Method(name="gapt_joint", gated=True, compression="joint"),
        Method(name="gapt_smoothed", gated=True, compression="alternate", smoothed=True),
        Method(name="gapt_matched", gated=False, compression="alternate", matches="gapt"),
        Method(name="gapt_joint_matched", gated=False, compression="joint", matches="gapt_joint"),
        Method(name="gapt_smoothed_matched", gated=False, compression="alternate", matches="gapt_smoothed"),
    )
}
# the methods whose steps differ: a matched-dose control steps as its gated method does, a smoothed gate
# as the unsmoothed one (what step benchmarks and the GPU check measure, and the drop-in offers)
BASE_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS.values() if not m.matches and not m.smoothed)
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)  # in the registry's order, which tables and figures keep
MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]  # what a config may name: the registry's names
BASELINE = "ce"  # the method every paired change is measured against


def _check_registry() -> None:
    for m in METHODS.values():
        target = METHODS.get(m.matches) if m.matches else None
        if m.matches and (
            target is None or not target.gated or m.gated or target.compression != m.compression
        ):
            raise ConfigError(
                f"method {m.name} matches {m.matches}: a control is ungated and matches a gated "
                "method of its compression"
            )
        if m.smoothed and not m.gated:
            raise ConfigError(f"method {m.name} is smoothed but not gated")


_check_registry()


def default_layers(n_blocks: int, kind: Literal["alternate", "joint"]) -> list[int]:
    """The paper's middle layers, 0-based: alternate 2 .. L-3, joint 1 .. L-2 (of L blocks)."""
    layers = list(range(2, n_blocks - 2)) if kind == "alternate" else list(range(1, n_blocks - 1))
    if not layers:
        raise ConfigError(
            f"a model of {n_blocks} blocks has no middle layers for the {kind} objective; "
            f"set objective.{kind}_layers explicitly"
        )
    return layers
