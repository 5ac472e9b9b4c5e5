"""The method registry: every method this project trains, in one place.

A method is a name for two facts: whether the GAPT controller gates compression (``gated``), and
which compression objective the compress phase uses (``compression``; the objectives themselves are
in ``replication.training.objectives``). Everything that names methods reads them from here: the run
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
    gated: bool  # a PhaseController decides the phase; otherwise the phase is fixed
    compression: Compression

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
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)  # in the registry's order, which tables and figures keep
MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]  # what a config may name: the registry's names
BASELINE = "ce"  # the method every paired change is measured against


def default_layers(n_blocks: int, kind: Literal["alternate", "joint"]) -> list[int]:
    """The paper's middle layers, 0-based: alternate 2 .. L-3, joint 1 .. L-2 (of L blocks)."""
    layers = list(range(2, n_blocks - 2)) if kind == "alternate" else list(range(1, n_blocks - 1))
    if not layers:
        raise ConfigError(
            f"a model of {n_blocks} blocks has no middle layers for the {kind} objective; "
            f"set objective.{kind}_layers explicitly"
        )
    return layers
