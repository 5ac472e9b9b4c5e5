"""The reporting sections of an experiment file: its table, figures and derived statistics.

``ReportSpec`` is ``replication.config.run.ExperimentSpec`` with its ``paper``, ``figures`` and
``reporting`` sections validated; every reporting command loads experiments through
``load_report_spec``. The ``reporting`` section declares the statistics aggregation derives from
the runs (``replication.reporting.aggregate``), so that what an experiment reports is read from its
file, not looked up in its task's code:

    reporting:
      rq1: {time_constant: 100}   # RQ1's cycle statistics (replication.reporting.rq1) of every run
                                  # that logged gradient alignment, into summary.csv as rq1/...
      paired:                     # metrics that pair each run with the baseline run of its seed
        - {metric: forgetting/alleviation_percent, kind: alleviation_percent,
           before: forgetting/l1_before, after: forgetting/l1_after}

A scale may override it under ``scales.<scale>.reporting`` (deep-merged, as run configs are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ValidationError, model_validator

from replication.config.base import PositiveFloat, StrictModel, deep_merge, format_validation_error, load_yaml
from replication.config.run import ExperimentSpec
from replication.science.errors import ConfigError
from replication.science.methods import BASELINE

DEFAULT_TIME_CONSTANT = 100.0  # optimizer steps (paper scale), of RQ1's sign-count smoothing


class TableMetric(StrictModel):
    """One row of an experiment's table.md: a metric of summary.csv, per method."""

    # a key of summary.json's "metrics", a statistic the reporting section declares (rq1/..., a paired
    # metric), or a top-level field of summary.json such as "phase_changes"
    key: str
    label: str
    paper: dict[str, float | str] = {}  # the paper's value per method, where it gives one
    # how the change against ce is stated (replication.reporting.stats): "relative" needs positive values and
    # falls back to "difference" where some are not
    change: Literal["relative", "difference", "robust_difference"] = "relative"


class FigureSpec(StrictModel):
    """One figure of an experiment, drawn from its CSVs alone (``replication.reporting.figures``).

    kinds: ``curves`` (the curves.csv.gz ``metrics`` against step, one panel per metric with the methods
    overlaid, stage ends marked, and a strip of the gated runs' compress phases), ``mbe_by_layer``
    (the per-layer eval ``metric`` at the last evaluation),
    ``rq1_alignment`` (alignment.csv: cosine against step per layer with the noise baseline),
    ``by_digits`` (summary metrics ``<prefix><digits>`` for every ``prefixes`` entry, taken to be
    shares in [0, 1]: their intervals are cut at 0 and 1),
    ``by_method`` (summary ``metrics`` per method: the seeds, and their mean with its t interval or, for
    the ``medians``, their median with its order-statistic interval; the ``differences`` as each
    seed's difference from its ``ce`` run).
    """

    kind: Literal["curves", "mbe_by_layer", "rq1_alignment", "by_digits", "by_method"]
    file: str  # file stem: <file>.png and <file>.pdf under results/<scale>/<experiment>/
    title: str = ""
    metrics: list[str] = []
    metric: str | None = None
    prefixes: list[str] = []
    # of a by_method figure's ``metrics``, those drawn as the median with the sign test's order-statistic
    # interval (``stats.median_interval``), as the claims judge a heavy-tailed metric
    medians: list[str] = []
    # of a by_method figure's ``metrics``, those drawn as each seed's difference from the ``ce`` run of
    # the same seed (``ce`` itself not drawn), as a claim of a paired difference judges them
    differences: list[str] = []
    caption: str = ""


class PaperSpec(StrictModel):
    """The paper's numbers beside ours in table.md; the claims are the analysis plan's
    (``replication.config.plan``)."""

    table: list[TableMetric] = []


class RQ1Spec(StrictModel):
    """RQ1's cycle statistics of each run that logged gradient alignment (``replication.reporting.rq1``)."""

    time_constant: PositiveFloat = DEFAULT_TIME_CONSTANT  # optimizer steps, of the sign-count smoothing


class PairedMetricSpec(StrictModel):
    """A metric of each run computed from its own summary and that of the baseline run of its seed.

    kind ``alleviation_percent``: the share of the baseline's forgetting that the run avoids,
    ``100 (after_baseline - after) / (after_baseline - before_baseline)``
    (``replication.tasks.forgetting.separation.alleviation_percent``; 0 for the baseline itself).
    """

    metric: str  # the name of the new metric in summary.csv
    kind: Literal["alleviation_percent"]
    before: str  # summary metrics it is computed from
    after: str
    baseline: str = BASELINE


class ReportingSpec(StrictModel):
    rq1: RQ1Spec | None = None
    paired: list[PairedMetricSpec] = []


class ReportSpec(ExperimentSpec):
    """An experiment file with its reporting sections validated."""

    paper: PaperSpec = PaperSpec()  # the paper's numbers, for tables and claims
    figures: list[FigureSpec] = []
    # a reader's name, with its unit, of each metric the figures draw (a raw key where none is given)
    labels: dict[str, str] = {}
    reporting: ReportingSpec = ReportingSpec()

    def reporting_for(self, scale: str) -> ReportingSpec:
        """The reporting section with ``scales.<scale>.reporting`` merged over it."""
        override = self.scales[scale].reporting if scale in self.scales else {}
        if not override:
            return self.reporting
        return ReportingSpec.model_validate(deep_merge(self.reporting.model_dump(), override))

    @model_validator(mode="after")
    def _scale_reporting_is_valid(self) -> ReportSpec:
        for scale in self.scales:
            try:
                self.reporting_for(scale)
            except ValidationError as error:
                lines = format_validation_error(error, "", ReportingSpec).splitlines()[1:]
                raise ValueError(
                    "; ".join(f"scales.{scale}.reporting: {line.strip()}" for line in lines)
                ) from None
        return self


def token_unit(spec: ExperimentSpec, scale: str) -> str:
    """What one token of a scale's data is: "byte" where the ``datasets:`` entry its ``task.dataset``
    names is tokenized as bytes (a CE is then in nats per byte), else "token"."""
    if scale not in spec.scales:
        raise ConfigError(
            f"experiment {spec.experiment} has no scale {scale!r}; it has {sorted(spec.scales)}"
        )
    task = deep_merge(spec.defaults.get("task", {}), spec.scales[scale].config.get("task", {}))
    dataset = spec.datasets.get(task.get("dataset"), {})
    return "byte" if dataset.get("tokenizer") == "bytes" else "token"


def fill_units(text: str, spec: ExperimentSpec, scale: str) -> str:
    """A label written once for every scale, its ``{token}`` made the scale's unit (``token_unit``):
    "validation CE (nats/{token})" reads nats/byte at a scale of bytes, nats/token at one of GPT-2 tokens."""
    return text.replace("{token}", token_unit(spec, scale))


def load_report_spec(path: str | Path) -> ReportSpec:
    try:
        return ReportSpec.model_validate(load_yaml(path))
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, str(path), ReportSpec)) from None
