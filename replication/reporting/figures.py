"""Figures of one experiment, drawn from its tidy CSVs alone (PNG and PDF).

    python -m replication.reporting.figures experiments/NAME/config.yaml --results results/SCALE/NAME

draws every figure the experiment's ``figures:`` section lists (see ``config.FigureSpec``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from replication import cli  # noqa: E402
from replication.config import ConfigError  # noqa: E402
from replication.methods import METHOD_NAMES  # noqa: E402
from replication.reporting.spec import FigureSpec, ReportSpec, load_report_spec  # noqa: E402
from replication.reporting.stats import t_errorbar  # noqa: E402

METHOD_ORDER = list(METHOD_NAMES)  # the registry's order, and each method's colour by its place in it
COMPRESS_MAX_GREY = 0.3  # background grey when every seed compresses (a share of black)


def _methods(frame: pd.DataFrame) -> list[str]:
    present = set(frame.method)
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def method_palette(methods: list[str]) -> dict[str, tuple]:
    colors = sns.color_palette("colorblind", n_colors=max(len(METHOD_ORDER), len(methods)))
    return {m: colors[METHOD_ORDER.index(m) if m in METHOD_ORDER else i] for i, m in enumerate(methods)}


def _save(fig: plt.Figure, results: Path, stem: str, title: str) -> list[Path]:
    if title:
        fig.suptitle(title)
    if not fig.get_layout_engine():
        fig.tight_layout()
    paths = [results / f"{stem}.png", results / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def compress_fraction(phases: pd.DataFrame, method: str, n_steps: int) -> np.ndarray:
    """For every step, the fraction of the method's seeds that were in the compress phase."""
    rows = phases[phases.method == method]
    count = np.zeros(n_steps)
    for row in rows[rows.phase == "compress"].itertuples():
        count[int(row.start_step) : int(row.end_step)] += 1
    return count / max(rows.seed.nunique(), 1)


def _shade_compress(ax: plt.Axes, phases: pd.DataFrame, method: str) -> None:
    """Grey background, darker where more seeds were compressing at that step (white: none)."""
    if phases.empty:
        return
    n_steps = int(phases.end_step.max())
    fraction = compress_fraction(phases, method, n_steps)
    if not fraction.any():
        return
    ax.imshow(fraction[None, :], extent=(0, n_steps, 0, 1), transform=ax.get_xaxis_transform(), aspect="auto",
              cmap="Greys", vmin=0.0, vmax=1.0 / COMPRESS_MAX_GREY, interpolation="nearest", zorder=0)  # fmt: skip


def _robust_limits(values: pd.Series) -> tuple[float, float]:
    lo, hi = values.quantile([0.005, 0.995])
    margin = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
    return lo - margin, hi + margin


def curves(spec: FigureSpec, curves_df: pd.DataFrame, phases: pd.DataFrame, results: Path) -> list[Path]:
    data = curves_df[curves_df.metric.isin(spec.metrics) & curves_df.layer.isna()]
    if data.empty:
        raise ConfigError(f"figure {spec.file}: curves.csv has none of the metrics {spec.metrics}")
    methods = _methods(data)
    metrics = [m for m in spec.metrics if m in set(data.metric)]
    palette = method_palette(methods)
    fig, axes = plt.subplots(len(metrics), len(methods), figsize=(3.2 * len(methods), 2.4 * len(metrics)),
                             sharex=True, sharey="row", squeeze=False)  # fmt: skip
    after_start = data[data.step >= 0.05 * data.step.max()]  # the first steps' values would set the scale
    for i, metric in enumerate(metrics):
        axes[i, 0].set_ylim(*_robust_limits(after_start[after_start.metric == metric].value))
        for j, method in enumerate(methods):
            ax = axes[i, j]
            _shade_compress(ax, phases, method)
            panel = data[(data.metric == metric) & (data.method == method)]
            for _, seed_rows in panel.groupby("seed"):
                ax.plot(seed_rows.step, seed_rows.value, color=palette[method], alpha=0.25, lw=0.8)
            mean = panel.groupby("step").value.mean()
            ax.plot(mean.index, mean.values, color=palette[method], lw=1.8)
            if i == 0:
                ax.set_title(method)
            if j == 0:
                ax.set_ylabel(metric)
            if i == len(metrics) - 1:
                ax.set_xlabel("optimizer step")
    fig.text(0.99, 0.005, "grey: share of seeds in the compress phase at each step; thin: seeds, thick: mean; "
             "y axes span the 0.5-99.5 % quantiles after the first 5 % of steps",
             ha="right", va="bottom", fontsize=7, color="0.35")  # fmt: skip
    return _save(fig, results, spec.file, spec.title)


def mbe_by_layer(spec: FigureSpec, curves_df: pd.DataFrame, results: Path) -> list[Path]:
    data = curves_df[(curves_df.metric == spec.metric) & curves_df.layer.notna()]
    if data.empty:
        raise ConfigError(f"figure {spec.file}: curves.csv has no per-layer metric {spec.metric!r}")
    last = data[data.step == data.groupby(["method", "seed"]).step.transform("max")]
    methods = _methods(last)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sns.lineplot(last, x="layer", y="value", hue="method", hue_order=methods, palette=method_palette(methods),
                 errorbar=t_errorbar, marker="o", ax=ax)  # fmt: skip
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel("block")
    ax.set_ylabel(f"{spec.metric} (last evaluation)")
    ax.set_xticks(sorted(last.layer.unique().astype(int)))
    return _save(fig, results, spec.file, spec.title)


def rq1_alignment(spec: FigureSpec, alignment: pd.DataFrame, results: Path) -> list[Path]:
    if alignment.empty:
        raise ConfigError(f"figure {spec.file}: alignment.csv is empty (no run logged gradient alignment)")
    layers = sorted(alignment.layer.unique())
    cols = min(4, len(layers))
    rows = int(np.ceil(len(layers) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), sharex=True, sharey=True, squeeze=False)
    noise = alignment.drop_duplicates(["method", "seed", "step"])
    for ax, layer in zip(axes.flat, layers):
        panel = alignment[alignment.layer == layer]
        sns.lineplot(noise, x="step", y="noise_cos", color="0.6", errorbar=t_errorbar, ax=ax, label="noise baseline")
        sns.lineplot(panel, x="step", y="cos", color="tab:blue", errorbar=t_errorbar, ax=ax, label="cos(∇CE, ∇MBE)")
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_title(f"block {int(layer)}")
        ax.set_ylabel("cosine")
        ax.get_legend().remove()
    for ax in list(axes.flat)[len(layers):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    if spec.title:
        fig.suptitle(spec.title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, results, spec.file, "")


def by_digits(spec: FigureSpec, summary: pd.DataFrame, results: Path) -> list[Path]:
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
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sns.pointplot(data, x="digits", y="value", hue="method", hue_order=methods, palette=method_palette(methods),
                  errorbar=t_errorbar, dodge=0.4, ax=ax)  # fmt: skip
    sns.stripplot(data, x="digits", y="value", hue="method", hue_order=methods, palette=method_palette(methods),
                  dodge=True, alpha=0.35, size=3, legend=False, ax=ax)  # fmt: skip
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel("operand digits")
    ax.set_ylabel("exact match")
    return _save(fig, results, spec.file, spec.title)


def by_method(spec: FigureSpec, summary: pd.DataFrame, results: Path) -> list[Path]:
    data = summary[summary.metric.isin(spec.metrics)]
    if data.empty:
        raise ConfigError(f"figure {spec.file}: summary.csv has none of {spec.metrics}")
    methods = _methods(data)
    metrics = [m for m in spec.metrics if m in set(data.metric)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        panel = data[data.metric == metric]
        sns.stripplot(panel, x="method", y="value", order=methods, hue="method", hue_order=methods,
                      palette=method_palette(methods), alpha=0.45, size=4, legend=False, ax=ax)  # fmt: skip
        sns.pointplot(panel, x="method", y="value", order=methods, color="k", errorbar=t_errorbar,
                      linestyle="none", markers="D", markersize=4, ax=ax)  # fmt: skip
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=30)
    fig.text(0.99, 0.005, "dots: seeds; black: mean with its 95 % t interval", ha="right", va="bottom", fontsize=7, color="0.35")
    return _save(fig, results, spec.file, spec.title)


def draw(spec: ReportSpec, results: Path) -> list[Path]:
    sns.set_theme(style="whitegrid", context="paper")

    def read(name: str) -> pd.DataFrame:
        return pd.read_csv(results / f"{name}.csv")

    written = []
    for figure in spec.figures:
        if figure.kind == "curves":
            written += curves(figure, read("curves"), read("phases"), results)
        elif figure.kind == "mbe_by_layer":
            written += mbe_by_layer(figure, read("curves"), results)
        elif figure.kind == "rq1_alignment":
            written += rq1_alignment(figure, read("alignment"), results)
        elif figure.kind == "by_digits":
            written += by_digits(figure, read("summary"), results)
        else:
            written += by_method(figure, read("summary"), results)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("replication.reporting.figures", __doc__)
    parser.add_argument("experiment", type=Path, help="experiments/NAME/config.yaml")
    parser.add_argument("--results", type=Path, required=True, help="results/SCALE/NAME, holding the CSVs")
    return cli.run(_main, parser.parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    draw(load_report_spec(args.experiment), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
