"""An experiment's analysis plan: ``experiments/<name>/plan.yaml`` (docs/SPEC.md section 8).

The plan fixes, before the numbers of a scale are read, how each claim is judged: its kind (a
primary claim, a manipulation check or a descriptive condition), its statistic, the paper's value in
the statistic's units, the smallest effect of interest, and the precondition without which it cannot
be tested. The primary claims of one experiment form one family, corrected together by Holm's method;
manipulation checks and descriptive conditions are read on their own (met / not met) and do not enter
the family. ``content_hash`` is the plan's fingerprint: the SHA-256 of everything but its
``deviations``, which list the runs judged by a plan other than the one they were made under
(``replication.reporting.preregistration`` checks them).

    rq1: {burn_in_steps: 1, detrend: linear}   # RQ1's cycle analysis (replication.reporting.rq1)
    preconditions:
      ce_learns_id: {text: ..., metric: final/id/exact_match, method: ce, at_least: 0.9}
    claims:
      - {id: C2, kind: primary, claim: ..., metric: final/val/ce, statistic: relative, method: gapt,
         paper_value: "-4.8 %", paper: -0.048, sesoi: 0.01}
    deviations:
      - {runs_commit: 70e10f9c..., plan_sha256: ..., what: ...}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from replication.config.base import PositiveFloat, StrictModel, format_validation_error, load_yaml
from replication.science.errors import ConfigError
from replication.science.methods import BASELINE

PLAN_NAME = "plan.yaml"  # beside the experiment's config.yaml
# statistics of replication.reporting.stats, by what they compare: two methods paired by seed, one
# method's runs against a threshold, or (RQ1) a permutation test of serial dependence
PAIRED = ("relative", "difference", "robust_difference")
THRESHOLD = ("runs_at_least", "robust_at_least")


class Precondition(StrictModel):
    """What must hold before a claim can be tested: every seed of ``method`` reaches ``at_least`` in
    ``metric``. Where it fails the claim is *not testable* at that scale and leaves its family."""

    text: str  # for a reader: what it asks and why
    metric: str
    method: str = BASELINE
    at_least: float


class ClaimPlan(StrictModel):
    """One row of CLAIMS.md.

    statistic, by the quantity ``metric`` is (``replication.reporting.stats``):
    - "relative" (positive): the geometric mean of the paired ratio ``method`` / ``baseline``;
    - "difference" (the baseline can be near 0): the mean paired difference;
    - "robust_difference" (heavy-tailed): the median paired difference with the sign test;
    - "runs_at_least": how many of ``method``'s runs reach ``threshold`` (met when all do);
    - "robust_at_least": the median of ``method``'s values against ``threshold``, sign test;
    - "persistence": RQ1's permutation test of the cosine's serial dependence
      (``replication.reporting.rq1``), with the runs test on its signs beside it.
    ``direction`` is the claimed side of a paired change; a persistence or threshold test claims an
    increase (``runs_at_least`` has no side: every run meets its threshold or not).
    ``paper`` is the paper's value in the statistic's units (a relative change as a fraction), where
    the paper gives one in them; ``sesoi`` the smallest effect of interest in the same units, which a
    primary claim that is not significant is tested for equivalence against. ``context`` names
    summary metrics of ``method`` whose mean over runs is printed beside the estimate.
    """

    id: str
    kind: Literal["primary", "manipulation", "descriptive"]
    claim: str
    metric: str
    statistic: Literal[
        "relative", "difference", "robust_difference", "runs_at_least", "robust_at_least", "persistence"
    ]
    method: str = "gapt"
    baseline: str = BASELINE
    direction: Literal["decrease", "increase"] = "decrease"
    threshold: float | None = None
    paper_value: str  # as the paper states it, e.g. "-4.8 %"
    paper: float | None = None
    sesoi: PositiveFloat | None = None
    precondition: str | None = None
    context: list[str] = []
    figure: str | None = None  # a file under results/<scale>/<experiment>/

    @model_validator(mode="after")
    def _fields_fit_the_statistic(self) -> ClaimPlan:
        if self.statistic in THRESHOLD and self.threshold is None:
            raise ValueError(f"claim {self.id}: statistic {self.statistic} needs a threshold")
        if self.kind == "primary" and self.statistic in PAIRED and self.sesoi is None:
            raise ValueError(
                f"claim {self.id}: a primary claim needs its smallest effect of interest (sesoi)"
            )
        if self.statistic == "persistence" and self.kind != "primary":
            raise ValueError(f"claim {self.id}: RQ1's persistence test is the primary claim C1")
        if self.statistic in ("persistence", "robust_at_least") and self.direction != "increase":
            raise ValueError(
                f"claim {self.id}: statistic {self.statistic} claims an increase (more persistence than "
                "chance, a median above the threshold): set direction: increase"
            )
        return self


class RQ1Plan(StrictModel):
    """How RQ1's cycle statistics read a run's cosines: points before ``burn_in_steps`` are dropped
    (the cosine at step 0 is 0 by construction, no measurement), and each block's series is detrended
    (``linear``: minus its least-squares line) before the persistence test."""

    burn_in_steps: int = Field(1, ge=0)
    detrend: Literal["linear", "none"] = "linear"


class Deviation(StrictModel):
    """Runs judged by this plan although they were made under another one (or before any): named by
    their commit, with the plan fingerprint the deviation was written against (a later change of the
    plan needs a deviation of its own) and what differs."""

    runs_commit: str = Field(min_length=7)
    plan_sha256: str = Field(min_length=64, max_length=64)
    what: str


class AnalysisPlan(StrictModel):
    experiment: str
    rq1: RQ1Plan = RQ1Plan()
    preconditions: dict[str, Precondition] = {}
    claims: list[ClaimPlan]
    deviations: list[Deviation] = []

    @model_validator(mode="after")
    def _claims_are_unique_and_name_declared_preconditions(self) -> AnalysisPlan:
        ids = [c.id for c in self.claims]
        if len(ids) != len(set(ids)):
            raise ValueError(f"claim ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
        for claim in self.claims:
            if claim.precondition is not None and claim.precondition not in self.preconditions:
                raise ValueError(
                    f"claim {claim.id} needs precondition {claim.precondition!r}, which preconditions: "
                    f"does not declare (it declares {sorted(self.preconditions)})"
                )
        return self

    def of_kind(self, kind: str) -> list[ClaimPlan]:
        return [c for c in self.claims if c.kind == kind]


def content_hash(raw: dict[str, Any]) -> str:
    """SHA-256 of the plan's content without its deviations, as canonical JSON: formatting and
    comments do not change it, any value does."""
    content = {k: v for k, v in raw.items() if k != "deviations"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def plan_path(experiment_config: str | Path) -> Path:
    return Path(experiment_config).parent / PLAN_NAME


def mismatches(plan: AnalysisPlan, experiment: str, methods: list[str], figures: list[str]) -> list[str]:
    """What the plan names that its experiment file does not have: another experiment, a method it
    does not run, a figure it does not draw."""
    found = (
        [] if plan.experiment == experiment else [f"the plan is of {plan.experiment!r}, not {experiment!r}"]
    )
    for claim in plan.claims:
        needs = [claim.method, claim.baseline]
        needs += [plan.preconditions[claim.precondition].method] if claim.precondition else []
        found += [
            f"claim {claim.id} names method {m!r}, which the experiment does not run"
            for m in needs
            if m not in methods
        ]
        if claim.figure is not None and claim.figure not in figures:
            found.append(
                f"claim {claim.id} points at {claim.figure}, which the experiment's figures: do not draw"
            )
    return list(dict.fromkeys(found))


def load_plan(path: str | Path, spec: Any = None) -> tuple[AnalysisPlan, str]:
    """The plan and its content hash; a missing or invalid plan is a ConfigError naming the file. With
    the experiment's ``ReportSpec``, a plan naming what the experiment lacks is one too."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: every experiment states its analysis plan beside its config.yaml "
            "(docs/SPEC.md section 8)"
        )
    raw = load_yaml(path)
    try:
        plan = AnalysisPlan.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, str(path), AnalysisPlan)) from None
    if spec is not None:
        drawn = [f"{figure.file}.png" for figure in spec.figures]
        found = mismatches(plan, spec.experiment, list(spec.methods), drawn)
        if found:
            raise ConfigError(f"{path}: " + "; ".join(found))
    return plan, content_hash(raw)
