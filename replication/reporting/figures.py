"""Figures of one experiment, drawn from its tidy CSVs alone (PNG and PDF).

    python -m replication.reporting.figures experiments/NAME/config.yaml --results results/SCALE/NAME

draws every figure the experiment's ``figures:`` section lists (see ``config.FigureSpec``), each
label's ``{token}`` in the unit of the scale's data (``fill_units``: "byte" where the data set is
tokenized as bytes). The figures of a scale's study (``study_*``) are drawn by
``replication.reporting.study``, in the same styles.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from replication.config.base import ConfigError  # noqa: E402
from replication.config.report import FigureSpec, ReportSpec, fill_units, load_report_spec  # noqa: E402
from replication.dag.plan import TABLES  # noqa: E402
from replication.reporting.stats import median_interval, t_errorbar  # noqa: E402
from replication.runtime import cli  # noqa: E402
from replication.science.methods import BASELINE, METHOD_NAMES  # noqa: E402

METHOD_ORDER = list(METHOD_NAMES)  # the registry's order
# (colour, line style, marker) per method: Okabe-Ito colours whose lightness differs where the line
# style does not, so that the methods stay apart in greyscale too. In the registry's order: ce black,
# ce_mbe sky blue dotted, gapt vermillion, gapt_joint blue dashed, gapt_smoothed orange dashed; a
# matched-dose control takes its gated method's colour with a line style of its own
STYLES = [
    ("#000000", "-", "o"),  # ce
    ("#56B4E9", ":", "s"),  # ce_mbe
    ("#D55E00", "-", "D"),  # gapt
    ("#0072B2", "--", "^"),  # gapt_joint
    ("#E69F00", "--", "v"),  # gapt_smoothed
    ("#D55E00", "-.", "X"),  # gapt_matched
    ("#0072B2", ":", "P"),  # gapt_joint_matched
    ("#E69F00", "-..", "*"),  # gapt_smoothed_matched
]
METHOD_STYLE = dict(zip(METHOD_NAMES, STYLES, strict=True))
# each style's dash pattern (seaborn's form; matplotlib's is (0, pattern)); "" is a solid line
DASHES = {"-": "", ":": (1, 1.5), "--": (4, 2), "-.": (4, 1.5, 1, 1.5), "-..": (4, 1.5, 1, 1.5, 1, 1.5)}
PAGE_WIDTH = 7.0  # inches: a two-column paper's text width; one column is about half
MIN_PHASE_WIDTH = 0.004  # of the step axis: the narrowest compress phase drawn (a 1-step phase stays visible)


def _methods(frame: pd.DataFrame) -> list[str]:
    present = set(frame.method)
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def method_palette(methods: list[str]) -> dict[str, Any]:
    extra = iter(sns.color_palette("colorblind", n_colors=len(methods) + 8)[4:])
    return {m: METHOD_STYLE[m][0] if m in METHOD_STYLE else next(extra) for m in methods}


def method_linestyle(method: str) -> str | tuple:
    """The method's line style as matplotlib takes it."""
    style = METHOD_STYLE[method][1] if method in METHOD_STYLE else "-"
    return style if style in ("-", "--", ":", "-.") else (0, DASHES[style])


def method_dashes(methods: list[str]) -> dict[str, Any]:
    return {m: DASHES[METHOD_STYLE[m][1] if m in METHOD_STYLE else "-"] for m in methods}


def method_markers(methods: list[str]) -> dict[str, str]:
    return {m: METHOD_STYLE[m][2] if m in METHOD_STYLE else "o" for m in methods}


def label(labels: dict[str, str], metric: str) -> str:
    """A metric's name for a reader (the experiment file's ``labels``), its key where it has none."""
    return labels.get(metric, metric)


def _save(fig: plt.Figure, results: Path, stem: str, title: str) -> list[Path]:
    """PNG and PDF of ``fig``, cropped to what it draws: a constrained layout can leave an axis label
    outside the page (its margins are set before the tick labels widen), and the crop keeps it."""
    if title:
        fig.suptitle(
            textwrap.fill(title, int(11 * fig.get_figwidth())), fontsize=10
        )  # ~11 characters an inch
    if not fig.get_layout_engine():
        fig.tight_layout()
    paths = [results / f"{stem}.png", results / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=200, bbox_inches="tight", pad_inches=0.04)
    plt.close(fig)
    return paths


def gated_methods(phases: pd.DataFrame) -> list[str]:
    """The methods whose runs changed phase: those a phase strip is drawn for (``ce`` never compresses
    and ``ce_mbe`` always does, which the captions say)."""
    if phases.empty:
        return []
    both = phases.groupby("method").phase.nunique()
    return [m for m in _methods(phases) if both.get(m, 0) > 1]


def _phase_strip(ax: plt.Axes, phases: pd.DataFrame, methods: list[str], x_max: float) -> None:
    """One row per seed of each method, its compress phases as bars in the method's colour, each at
    least MIN_PHASE_WIDTH of the axis wide."""
    palette, row, ticks = method_palette(methods), 0, []
    min_width = MIN_PHASE_WIDTH * x_max
    for method in methods:
        rows = phases[phases.method == method]
        seeds = sorted(rows.seed.unique())
        for i, seed in enumerate(seeds):
            spans = [
                (r.start_step, max(r.end_step - r.start_step, min_width))
                for r in rows[(rows.seed == seed) & (rows.phase == "compress")].itertuples()
            ]
            ax.broken_barh(spans, (row + i + 0.1, 0.8), color=palette[method], lw=0)
        ticks.append((row + len(seeds) / 2, method))
        row += len(seeds) + 1
    ax.set_ylim(row - 1, 0)
    ax.set_yticks([t for t, _ in ticks], [m for _, m in ticks], fontsize=7)
    ax.grid(False)
    ax.set_xlim(0, x_max)
    ax.set_title("compress phases, one row per seed", fontsize=8, loc="left")


def stage_ends(curves_df: pd.DataFrame) -> list[tuple[float, str, str]]:
    """(step, stage, next stage) where a staged run's evaluations change stage (the ends of all but the
    last stage; each is an evaluation step, which the task's config ensures)."""
    if "stage" not in curves_df or curves_df.stage.isna().all():
        return []
    evals = curves_df[(curves_df.kind == "eval") & curves_df.stage.notna()]
    ends = set()
    for _, run in (
        evals.drop_duplicates(["method", "seed", "step"]).sort_values("step").groupby(["method", "seed"])
    ):
        stages, steps = list(run.stage), list(run.step)
        ends |= {
            (steps[i], stages[i], stages[i + 1]) for i in range(len(steps) - 1) if stages[i] != stages[i + 1]
        }
    return sorted(ends)


def _robust_limits(values: pd.Series) -> tuple[float, float]:
    lo, hi = values.quantile([0.005, 0.995])
    margin = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
    return lo - margin, hi + margin


def floor_errorbar(values: Sequence[float]) -> tuple[float, float]:
    """``t_errorbar`` cut at 0: the interval of a quantity that cannot be negative (CE, MBE, L1, a
    count) drawn within the values it can take, as ``stats.at_least`` states it."""
    low, high = t_errorbar(values)
    return (max(low, 0.0), high)


def share_errorbar(values: Sequence[float]) -> tuple[float, float]:
    """``t_errorbar`` cut at 0 and 1: the interval of a share drawn within the values a share can take
    (three seeds of 0, 0 and 1 give a t interval of -1.1 to 1.8)."""
    low, high = floor_errorbar(values)
    return (low, min(high, 1.0))


def median_errorbar(values: Sequence[float]) -> tuple[float, float]:
    """The median's order-statistic interval of ``stats.median_interval`` (the sign test's, which the
    claims state for a heavy-tailed metric) as seaborn's ``errorbar`` callable; the point itself where no
    interval exists (fewer than 6 seeds)."""
    estimate = median_interval(list(values))
    return (estimate.mean, estimate.mean) if estimate.low is None else (estimate.low, estimate.high)


def mean_errorbar(values: pd.Series) -> Callable[[Sequence[float]], tuple[float, float]]:
    """The errorbar callable of a mean over ``values`` (all that one panel draws): ``floor_errorbar`` where
    none is negative, a quantity that cannot be; else ``t_errorbar`` (a cosine, a difference)."""
    return floor_errorbar if (values >= 0).all() else t_errorbar


def curves(
    spec: FigureSpec,
    curves_df: pd.DataFrame,
    phases: pd.DataFrame,
    results: Path,
    labels: dict[str, str] | None = None,
) -> list[Path]:
    """One panel per metric, the methods overlaid (mean over seeds, 95 % t band), stage ends dashed,
    and a strip of every gated run's compress phases below."""
    labels = labels or {}
    data = curves_df[curves_df.metric.isin(spec.metrics) & curves_df.layer.isna()]
    if data.empty:
        raise ConfigError(f"figure {spec.file}: curves.csv.gz has none of the metrics {spec.metrics}")
    methods = _methods(data)
    metrics = [m for m in spec.metrics if m in set(data.metric)]
    gated = gated_methods(phases[phases.method.isin(methods)]) if not phases.empty else []
    ends = stage_ends(curves_df)
    cols = len(metrics) if len(metrics) <= 3 else 2
    rows = -(-len(metrics) // cols)
    strip_rows = sum(phases[phases.method == m].seed.nunique() + 1 for m in gated)
    strip_height = 0.35 + min(0.07 * strip_rows, 1.2) if gated else 0
    fig = plt.figure(figsize=(PAGE_WIDTH, 2.2 * rows + strip_height + 0.5), layout="constrained")
    grid = fig.add_gridspec(
        rows + bool(gated), cols, height_ratios=[2.2] * rows + ([strip_height] if gated else [])
    )
    x_max = float(data.step.max())
    after_start = data[data.step >= 0.05 * x_max]  # the first steps' values would set the scale
    axes = []
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(grid[i // cols, i % cols], sharex=axes[0] if axes else None)
        axes.append(ax)
        panel = data[data.metric == metric]
        sns.lineplot(
            panel,
            x="step",
            y="value",
            hue="method",
            hue_order=methods,
            palette=method_palette(methods),
            style="method",
            style_order=methods,
            dashes=method_dashes(methods),
            errorbar=mean_errorbar(panel.value),
            err_kws={"alpha": 0.12, "lw": 0},
            lw=1.4,
            ax=ax,
            legend=i == 0,
        )
        ax.set_ylim(*_robust_limits(after_start[after_start.metric == metric].value))
        ax.set_title(textwrap.fill(label(labels, metric), 34), fontsize=8)
        ax.set_ylabel("")
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
        for step, before, after in ends:
            ax.axvline(step, color="0.25", lw=0.9, ls=(0, (4, 2)), zorder=1)
            if i == 0:
                ax.annotate(
                    f"{before} | {after}",
                    (step, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, -2),
                    textcoords="offset points",
                    ha="center",
                    va="top",
                    fontsize=7,
                    color="0.25",
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"},
                )
    axes[0].set_xlim(0, x_max)
    legend = axes[0].get_legend()
    if legend is not None:
        legend.remove()
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(
            handles,
            names,
            loc="outside lower center",
            ncols=len(methods),
            frameon=False,
            fontsize=8,
            title="mean over seeds, band: 95 % t interval (cut at 0 where no value is negative)",
            title_fontsize=7,
        )
    if gated:
        strip = fig.add_subplot(grid[rows, :], sharex=axes[0])
        _phase_strip(strip, phases, gated, x_max)
        strip.set_xlabel("")
        strip.tick_params(labelsize=7)
        for step, _, _ in ends:
            strip.axvline(step, color="0.25", lw=0.9, ls=(0, (4, 2)))
    return _save(fig, results, spec.file, spec.title)


def mbe_by_layer(
    spec: FigureSpec, curves_df: pd.DataFrame, results: Path, labels: dict[str, str] | None = None
) -> list[Path]:
    data = curves_df[(curves_df.metric == spec.metric) & curves_df.layer.notna()]
    if data.empty:
        raise ConfigError(f"figure {spec.file}: curves.csv.gz has no per-layer metric {spec.metric!r}")
    last = data[data.step == data.groupby(["method", "seed"]).step.transform("max")]
    methods = _methods(last)
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH / 2 + 0.4, 2.9), layout="constrained")
    sns.lineplot(
        last,
        x="layer",
        y="value",
        hue="method",
        hue_order=methods,
        palette=method_palette(methods),
        style="method",
        style_order=methods,
        dashes=method_dashes(methods),
        markers=method_markers(methods),
        errorbar=mean_errorbar(last.value),
        ax=ax,
    )
    ax.legend(frameon=False, fontsize=7)
    ax.set_xlabel("block")
    ax.set_ylabel(textwrap.fill(label(labels or {}, spec.metric), 34) + ",\nlast evaluation", fontsize=8)
    ax.set_xticks(sorted(last.layer.unique().astype(int)))
    return _save(fig, results, spec.file, spec.title)


def rq1_alignment(spec: FigureSpec, alignment: pd.DataFrame, results: Path) -> list[Path]:
    """Per block, the cosine of the CE and MBE gradients against the step beside the CE-CE noise baseline:
    the mean over seeds with its t band, never cut (a cosine can be negative)."""
    if alignment.empty:
        raise ConfigError(f"figure {spec.file}: alignment.csv is empty (no run logged gradient alignment)")
    layers = sorted(alignment.layer.unique())
    cols = min(4, len(layers))
    rows = int(np.ceil(len(layers) / cols))
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(PAGE_WIDTH, 1.9 * rows + 0.9),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    noise = alignment.drop_duplicates(["method", "seed", "step"])
    for ax, layer in zip(axes.flat, layers):
        panel = alignment[alignment.layer == layer]
        sns.lineplot(
            noise,
            x="step",
            y="noise_cos",
            color="0.55",
            errorbar=t_errorbar,
            ax=ax,
            label="CE-CE noise baseline",
            ls=(0, (4, 2)),
        )
        sns.lineplot(
            panel,
            x="step",
            y="cos",
            color=METHOD_STYLE["ce"][0],
            errorbar=t_errorbar,
            ax=ax,
            label="cos(∇CE, ∇MBE)",
        )
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_title(f"block {int(layer)}", fontsize=8)
        ax.set_ylabel("cosine", fontsize=8)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.get_legend().remove()
    for ax in list(axes.flat)[len(layers) :]:
        ax.set_visible(False)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="outside lower center",
        ncols=2,
        fontsize=8,
        frameon=False,
        title="mean over seeds, band: 95 % t interval",
        title_fontsize=7,
    )
    return _save(fig, results, spec.file, spec.title)


def by_digits(
    spec: FigureSpec, summary: pd.DataFrame, results: Path, labels: dict[str, str] | None = None
) -> list[Path]:
    """Shares (exact match) per operand digit count: the mean of the seeds with its t interval cut at
    0 and 1, and each seed as a dot."""
    frames = []
    for prefix in spec.prefixes:
        pattern = re.compile(re.escape(prefix) + r"(\d+)$")
        rows = summary[summary.metric.str.match(pattern)].copy()
        rows["digits"] = rows.metric.str.extract(pattern, expand=False).astype(int)
        rows["split"] = prefix
        frames.append(rows)
    data = pd.concat(frames) if frames else pd.DataFrame()
    if data.empty:
        raise ConfigError(f"figure {spec.file}: summary.csv has no metric starting with {spec.prefixes}")
    methods = _methods(data)
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH * 0.75, 3.0), layout="constrained")
    sns.pointplot(
        data,
        x="digits",
        y="value",
        hue="method",
        hue_order=methods,
        palette=method_palette(methods),
        markers=[method_markers(methods)[m] for m in methods],
        linestyles="none",
        errorbar=share_errorbar,
        dodge=0.8 * (len(methods) - 1) / len(methods),
        ax=ax,
    )  # the strip plot's offsets: 0.8 wide
    sns.stripplot(
        data,
        x="digits",
        y="value",
        hue="method",
        hue_order=methods,
        palette=method_palette(methods),
        dodge=True,
        jitter=0.03,
        alpha=0.35,
        size=3,
        legend=False,
        ax=ax,
    )
    ax.legend(
        frameon=False, fontsize=7, title="mean, 95 % t interval cut at 0 and 1; dots: seeds", title_fontsize=7
    )
    ax.set_xlabel("operand digits")
    ax.set_ylabel(label(labels or {}, spec.prefixes[0]) if spec.prefixes else "", fontsize=8)
    return _save(fig, results, spec.file, spec.title)


def by_method(
    spec: FigureSpec, summary: pd.DataFrame, results: Path, labels: dict[str, str] | None = None
) -> list[Path]:
    """One panel per metric: each method's seeds as dots, and in black their mean with its t interval or,
    for the figure's ``medians``, their median with the order-statistic interval the claims state."""
    data = summary[summary.metric.isin(spec.metrics)]
    if data.empty:
        raise ConfigError(f"figure {spec.file}: summary.csv has none of {spec.metrics}")
    if set(spec.medians + spec.differences) - set(spec.metrics):
        raise ConfigError(f"figure {spec.file}: medians and differences must be among its metrics")
    methods = _methods(data)
    metrics = [m for m in spec.metrics if m in set(data.metric)]
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(PAGE_WIDTH, 2.5 * rows + 0.5), squeeze=False, layout="constrained"
    )
    for ax, metric in zip(axes.flat, metrics):
        panel, order = data[data.metric == metric], methods
        if metric in spec.differences:  # each seed against the ce run of the same seed
            baseline = panel[panel.method == BASELINE].set_index("seed").value
            panel = panel[panel.method != BASELINE]
            panel = panel.assign(value=panel.value - panel.seed.map(baseline))
            panel, order = panel.dropna(subset=["value"]), [m for m in methods if m != BASELINE]
            ax.axhline(0, color="0.3", lw=0.8)
        sns.stripplot(
            panel,
            x="method",
            y="value",
            order=order,
            hue="method",
            hue_order=methods,
            palette=method_palette(methods),
            alpha=0.45,
            size=3.5,
            legend=False,
            ax=ax,
        )
        median = metric in spec.medians
        sns.pointplot(
            panel,
            x="method",
            y="value",
            order=order,
            color="k",
            estimator="median" if median else "mean",
            errorbar=median_errorbar if median else mean_errorbar(panel.value),
            linestyle="none",
            markers="D",
            markersize=4,
            ax=ax,
        )
        against = f" minus {BASELINE}'s, same seed" if metric in spec.differences else ""
        ax.set_title(textwrap.fill(label(labels or {}, metric) + against, 34), fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel("median, 95 % sign-test interval" if median else "mean, 95 % t interval", fontsize=7)
        ax.tick_params(axis="x", rotation=30, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    return _save(fig, results, spec.file, spec.title)


# -- a scale's study (replication.reporting.study) ----------------------------------------------------


def _change_with_interval(
    ax: plt.Axes, x: Any, rows: pd.DataFrame, marker: str, color: Any, method: str
) -> None:
    """A study's change (%) at x, with its 95 % interval as error bars (none where it has none)."""
    ax.errorbar(
        x,
        rows.change_percent,
        yerr=[
            rows.change_percent - rows.low_percent.fillna(rows.change_percent),
            rows.high_percent.fillna(rows.change_percent) - rows.change_percent,
        ],
        fmt=marker,
        capsize=3,
        color=color,
        label=f"{method} (mean, 95 % interval)",
    )


def study_scaling(
    table: pd.DataFrame,
    fits: dict[str, dict],
    labels: dict[str, str],
    results: Path,
) -> list[Path]:
    """One panel per metric (``labels``: metric -> name): each method's change against ce per model
    size with its 95 % interval, and the log-linear fit of ``fits`` with its 95 % band (from three
    sizes on) from the smallest size to the largest, never beyond."""
    metrics = list(labels)
    fig, axes = plt.subplots(1, len(metrics), figsize=(PAGE_WIDTH, 2.9), constrained_layout=True)
    methods = list(table.method.unique())
    palette, markers = method_palette(methods), method_markers(methods)
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        for method in methods:
            rows = table[(table.method == method) & (table.metric == metric)]
            color = palette[method]
            _change_with_interval(ax, rows.parameters, rows, markers[method], color, method)
            fit = fits.get(f"{method} {metric}", {})
            if "slope" in fit:
                grid = np.linspace(fit["x_min"], fit["x_max"], 100)
                mean = fit["intercept"] + fit["slope"] * grid
                ax.plot(10**grid, 100 * np.expm1(mean), lw=1, color=color, label="log-linear fit, 95 % band")
                if fit["n"] > 2:
                    half = (
                        fit["t"] * fit["s"] * np.sqrt(1 / fit["n"] + (grid - fit["x_mean"]) ** 2 / fit["sxx"])
                    )
                    low, high = 100 * np.expm1(mean - half), 100 * np.expm1(mean + half)
                    ax.fill_between(10**grid, low, high, alpha=0.2, color=color)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("parameters")
        ax.set_ylabel(f"{labels[metric]}: change vs ce (%)", fontsize=8)
    handles, names = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(names), frameon=False, fontsize=7)
    return _save(fig, results, "scaling", "")


def study_sensitivity(table: pd.DataFrame, results: Path) -> list[Path]:
    """One row per knob arm and method default: the change against ce of validation CE and MBE."""
    if table.empty:  # a study of model size alone
        table = pd.DataFrame(
            columns=["method", "arm", "knob", "value"]
            + [f"{m}_{k}_percent" for m in ("ce", "mbe") for k in ("change", "low", "high")]
        )
    fig, axes = plt.subplots(
        1, 2, figsize=(PAGE_WIDTH, 0.45 * max(len(table), 2) + 1.0), sharey=True, constrained_layout=True
    )
    labels = [
        f"{r.method}: {r.knob} {r.value}" if r.arm != "reference" else f"{r.method}: default"
        for r in table.itertuples()
    ]
    y = np.arange(len(table))[::-1]
    methods = list(table.method.unique())
    palette, markers = method_palette(methods), method_markers(methods)
    for ax, short, name in ((axes[0], "ce", "validation CE"), (axes[1], "mbe", "validation MBE")):
        mean = table[f"{short}_change_percent"]
        low = mean - table[f"{short}_low_percent"].fillna(mean)
        high = table[f"{short}_high_percent"].fillna(mean) - mean
        for method in methods:  # each method in its own colour and marker
            rows = (table.method == method).to_numpy()
            ax.errorbar(
                mean[rows],
                y[rows],
                xerr=[low[rows], high[rows]],
                fmt=markers[method],
                capsize=3,
                color=palette[method],
            )
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"{name}:\nchange vs ce (%)", fontsize=8)
    axes[0].set_yticks(y, labels, fontsize=8)
    return _save(fig, results, "sensitivity", "")


def study_dose(table: pd.DataFrame, results: Path) -> list[Path]:
    """Each size and knob arm (``table``: method, arm, compress_share, change_percent, low_percent,
    high_percent): the change in validation CE against ce with its 95 % interval, against the mean
    share of the method's steps spent compressing there; each point named by its arm."""
    table = table.dropna(subset=["compress_share", "change_percent"])
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.2), constrained_layout=True)
    methods = list(table.method.unique())
    palette, markers = method_palette(methods), method_markers(methods)
    for method in methods:
        rows = table[table.method == method]
        _change_with_interval(ax, rows.compress_share, rows, markers[method], palette[method], method)
        for r in rows.itertuples():
            ax.annotate(
                r.arm,
                (r.compress_share, r.change_percent),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
            )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("share of the steps in the compress phase (mean over seeds)", fontsize=8)
    ax.set_ylabel("validation CE: change vs ce (%)", fontsize=8)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(
        handles, names, loc="outside lower center", ncols=max(len(names), 1), frameon=False, fontsize=7
    )
    return _save(fig, results, "dose", "")


def study_settings(
    curves: pd.DataFrame,
    settings: dict[str, str],
    labels: dict[str, str],
    bar: tuple[str, float] | None,
    results: Path,
) -> list[Path]:
    """One row per setting arm (``settings``: arm -> what it is), one column per evaluation metric
    (``labels``: metric -> name): each method's evaluations against the step (thin: seeds; thick: their
    mean), and dotted, the bar ``bar`` (metric, level) the baseline must get below."""
    arm_names, metrics = list(settings), list(labels)
    methods = _methods(curves)
    palette = method_palette(methods)
    fig, axes = plt.subplots(
        len(arm_names),
        len(metrics),
        figsize=(PAGE_WIDTH, 2.2 * len(arm_names) + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    handles = {}
    for i, arm in enumerate(arm_names):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            panel = curves[(curves.arm == arm) & (curves.metric == metric)]
            for method in methods:
                rows = panel[panel.method == method]
                if rows.empty:
                    continue
                for _, seed_rows in rows.groupby("seed"):
                    ax.plot(seed_rows.step, seed_rows.value, color=palette[method], alpha=0.3, lw=0.8)
                mean = rows.groupby("step").value.mean()
                (handles[method],) = ax.plot(
                    mean.index, mean.values, color=palette[method], lw=1.8, ls=method_linestyle(method)
                )
            if bar is not None and bar[0] == metric:
                handles[f"{BASELINE} must reach ({bar[1]:g})"] = ax.axhline(
                    bar[1], color="0.5", lw=1.0, ls=(0, (1, 2))
                )
            if not panel.empty and (panel.value > 0).all() and metric.rsplit("/", 1)[-1].endswith("ce"):
                ax.set_yscale("log")
                plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
                low, high = ax.get_ylim()  # minor ticks labelled too where the axis spans less than a decade
                ax.yaxis.set_major_formatter(plain)
                ax.yaxis.set_minor_formatter(plain if high / low < 10 else matplotlib.ticker.NullFormatter())
            ax.set_title(textwrap.fill(labels[metric], 30), fontsize=8)
            ax.set_xlabel("optimizer step", fontsize=8)
            ax.tick_params(which="both", labelsize=7)
        axes[i][0].set_ylabel(textwrap.fill(settings[arm], 24), fontsize=8)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=len(handles),
        frameon=False,
        fontsize=8,
    )
    return _save(fig, results, "settings", "")


def draw(spec: ReportSpec, results: Path, scale: str | None = None) -> list[Path]:
    """Every figure of ``spec`` from the CSVs in ``results``, the labels in the units of ``scale`` (by
    default the folder above ``results``: results/SCALE/NAME)."""
    sns.set_theme(style="whitegrid", context="paper")
    scale = scale or results.resolve().parent.name
    labels = {metric: fill_units(text, spec, scale) for metric, text in spec.labels.items()}

    def read(name: str) -> pd.DataFrame:
        return pd.read_csv(results / TABLES[name])

    written = []
    for figure in spec.figures:
        if figure.kind == "curves":
            written += curves(figure, read("curves"), read("phases"), results, labels)
        elif figure.kind == "mbe_by_layer":
            written += mbe_by_layer(figure, read("curves"), results, labels)
        elif figure.kind == "rq1_alignment":
            written += rq1_alignment(figure, read("alignment"), results)
        elif figure.kind == "by_digits":
            written += by_digits(figure, read("summary"), results, labels)
        else:
            written += by_method(figure, read("summary"), results, labels)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.reporting.figures", __doc__)
    parser.add_argument("experiment", type=Path, help="experiments/NAME/config.yaml")
    parser.add_argument("--results", type=Path, required=True, help="results/SCALE/NAME, holding the CSVs")
    parser.add_argument("--scale", help="the scale of the results (default: SCALE of --results)")
    return cli.run(_main, parser.parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    draw(load_report_spec(args.experiment), args.results, args.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
