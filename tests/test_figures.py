"""What the figures show a reader: named metrics in the units of the scale's data, methods that stay
apart in greyscale, stage ends where the runs changed stage, compress phases wide enough to see, and the
interval the tables state (a median's where the claim is a median; cut at 0 where nothing is negative)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from replication.config.report import FigureSpec, fill_units, load_report_spec, token_unit  # noqa: E402
from replication.reporting import aggregate, figures  # noqa: E402
from replication.reporting.stats import median_interval, t_interval  # noqa: E402
from replication.science.methods import METHOD_NAMES  # noqa: E402

from .conftest import REPO  # noqa: E402

EXPERIMENTS = sorted(p.parent.name for p in (REPO / "experiments").glob("*/config.yaml"))


def _lightness(color: str) -> float:
    """CIE L* (0 black, 100 white) of an sRGB colour: what a greyscale print keeps of it."""
    linear = [
        c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in matplotlib.colors.to_rgb(color)
    ]
    y = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return 116 * y ** (1 / 3) - 16 if y > 0.008856 else 903.3 * y


def test_every_two_methods_differ_in_greyscale_by_lightness_or_line_style():
    assert set(figures.METHOD_STYLE) == set(METHOD_NAMES)
    for i, a in enumerate(METHOD_NAMES):
        for b in METHOD_NAMES[i + 1 :]:
            (color_a, style_a, marker_a), (color_b, style_b, marker_b) = (
                figures.METHOD_STYLE[a],
                figures.METHOD_STYLE[b],
            )
            assert marker_a != marker_b, (a, b)
            assert style_a != style_b or abs(_lightness(color_a) - _lightness(color_b)) > 20, (a, b)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_metric_a_figure_draws_has_a_readers_name(experiment):
    spec = load_report_spec(REPO / "experiments" / experiment / "config.yaml")
    drawn = [
        m for f in spec.figures for m in [*f.metrics, *([f.metric] if f.metric else []), *f.prefixes[:1]]
    ]
    assert drawn and not [m for m in drawn if m not in spec.labels]


def _curves(stages):
    """curves.csv.gz rows of two runs evaluated every 10 steps, their stages by step."""
    rows = []
    for seed in (0, 1):
        for step in range(0, 70, 10):
            stage = stages(step)
            rows += [
                {
                    "method": "gapt",
                    "seed": seed,
                    "kind": "eval",
                    "step": step,
                    "tokens": step,
                    "stage": stage,
                    "metric": m,
                    "layer": None,
                    "value": step / 10 + seed,
                }
                for m in ("val/ce", "val/mbe")
            ]
    return pd.DataFrame(rows)


def test_a_stage_ends_at_the_last_evaluation_of_its_stage():
    # the forgetting task's evaluation at the end of a stage names that stage (it ran its steps)
    frame = _curves(lambda step: "mix" if step <= 30 else "finetune")
    assert figures.stage_ends(frame) == [(30, "mix", "finetune")]
    assert figures.stage_ends(_curves(lambda step: None)) == []
    assert figures.stage_ends(frame.drop(columns="stage")) == []


def test_aggregate_keeps_the_stage_a_record_names():
    records = [
        {"kind": "eval", "step": 0, "stage": "mix", "val/ce": 1.0},
        {"kind": "eval", "step": 5, "val/ce": 0.5},
    ]
    rows = aggregate._curve_rows({"method": "ce", "seed": 0}, records, steps=5)
    assert [(r["step"], r["stage"]) for r in rows] == [(0, "mix"), (5, None)]


def _phases():
    rows = [{"method": "ce", "seed": s, "phase": "memorize", "start_step": 0, "end_step": 60} for s in (0, 1)]
    rows += [
        {"method": "ce_mbe", "seed": s, "phase": "compress", "start_step": 0, "end_step": 60} for s in (0, 1)
    ]
    rows += [
        {"method": "gapt", "seed": 0, "phase": p, "start_step": a, "end_step": b}
        for p, a, b in (("memorize", 0, 20), ("compress", 20, 21), ("memorize", 21, 60))
    ]
    rows += [{"method": "gapt", "seed": 1, "phase": "memorize", "start_step": 0, "end_step": 60}]
    return pd.DataFrame(rows)


def test_only_runs_that_changed_phase_get_a_strip_and_a_one_step_phase_is_drawn_wide_enough_to_see():
    phases = _phases()
    assert figures.gated_methods(phases) == ["gapt"]
    fig, ax = plt.subplots()
    figures._phase_strip(ax, phases, ["gapt"], x_max=6000.0)
    [bars] = [c for c in ax.collections if c.get_paths()]  # seed 1 never compressed
    [(x0, _), (x1, _)] = [bars.get_paths()[0].vertices.min(axis=0), bars.get_paths()[0].vertices.max(axis=0)]
    assert x0 == 20 and x1 - x0 == pytest.approx(figures.MIN_PHASE_WIDTH * 6000.0)  # 24 steps, not 1
    plt.close(fig)


def test_curves_overlay_the_methods_name_the_panels_and_mark_the_stage_end(tmp_path, monkeypatch):
    frame = _curves(lambda step: "mix" if step <= 30 else "finetune")
    frame = pd.concat([frame, frame.assign(method="ce"), frame.assign(method="gapt_joint")])
    drawn = {}
    monkeypatch.setattr(
        figures, "_save", lambda fig, results, stem, title: drawn.setdefault(stem, fig) and []
    )
    spec = FigureSpec(kind="curves", file="c", metrics=["val/ce", "val/mbe"])
    figures.curves(spec, frame, _phases(), tmp_path, {"val/ce": "validation CE (nats/token)"})
    panels = drawn["c"].axes
    assert [ax.get_title() for ax in panels[:2]] == ["validation CE (nats/token)", "val/mbe"]
    assert panels[2].get_title(loc="left") == "compress phases, one row per seed"  # the strip, gapt only
    for ax in panels:
        assert any(tuple(line.get_xdata()) == (30, 30) for line in ax.lines)  # the end of the mix stage
    # the methods in one panel, each with its own colour and line style
    means = [line for line in panels[0].lines if len(line.get_xdata()) == 7]
    drawn_styles = {
        (matplotlib.colors.to_hex(line.get_color()), line.get_linestyle() == "-") for line in means
    }
    assert drawn_styles == {
        (matplotlib.colors.to_hex(figures.METHOD_STYLE[m][0]), figures.METHOD_STYLE[m][1] == "-")
        for m in ("ce", "gapt", "gapt_joint")
    }  # gapt_joint dashed
    plt.close(drawn["c"])


def test_a_share_is_drawn_with_its_interval_cut_at_0_and_1(tmp_path, monkeypatch):
    rows = [
        {"method": method, "seed": seed, "metric": f"final/id/exact_match/digits_{d}", "value": value}
        for method in ("ce", "gapt")
        for d in (1, 2)
        for seed, value in enumerate([0.0, 0.0, 1.0])
    ]
    drawn = {}
    monkeypatch.setattr(
        figures, "_save", lambda fig, results, stem, title: drawn.setdefault(stem, fig) and []
    )
    spec = FigureSpec(kind="by_digits", file="d", prefixes=["final/id/exact_match/digits_"])
    figures.by_digits(spec, pd.DataFrame(rows), tmp_path)
    ax = drawn["d"].axes[0]
    vertical = [
        line for line in ax.lines if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
    ]
    bars = [line.get_ydata() for line in vertical]
    assert len(bars) == 4  # one per method and digit count
    for low, high in bars:  # the t interval of 0, 0, 1 is -1.10 to 1.77
        assert (low, high) == (0.0, 1.0)
    assert figures.share_errorbar([0.2, 0.3, 0.4]) == pytest.approx(figures.t_errorbar([0.2, 0.3, 0.4]))
    plt.close(drawn["d"])


def _drawn(monkeypatch):
    """The figures drawn, by file stem, instead of saved."""
    drawn = {}
    monkeypatch.setattr(
        figures, "_save", lambda fig, results, stem, title: drawn.setdefault(stem, fig) and []
    )
    return drawn


def _bars(ax):
    """(low, high) of every vertical error bar of a point plot, left to right."""
    lines = [
        line for line in ax.lines if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
    ]
    return [tuple(line.get_ydata()) for line in sorted(lines, key=lambda line: line.get_xdata()[0])]


def test_a_heavy_tailed_metric_is_drawn_as_its_median_with_the_sign_tests_interval(tmp_path, monkeypatch):
    values = [0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 3.0, 40.0]  # ten seeds, one far out
    rows = [
        {"method": method, "seed": seed, "metric": metric, "value": value}
        for method in ("ce", "gapt")
        for metric in ("mix/mbe", "forgetting/interference")
        for seed, value in enumerate(values)
    ]
    drawn = _drawn(monkeypatch)
    spec = FigureSpec(
        kind="by_method",
        file="s",
        metrics=["mix/mbe", "forgetting/interference"],
        medians=["forgetting/interference"],
    )
    figures.by_method(spec, pd.DataFrame(rows), tmp_path)
    mean_panel, median_panel = drawn["s"].axes[:2]
    median = median_interval(values)
    assert median.low is not None
    [points] = [line for line in median_panel.lines if line.get_marker() == "D"]
    assert list(points.get_ydata()) == [median.mean, median.mean]
    assert _bars(median_panel) == [(median.low, median.high)] * 2
    mean = t_interval(values)  # its interval passes below 0, which no value does: cut there
    [points] = [line for line in mean_panel.lines if line.get_marker() == "D"]
    assert list(points.get_ydata()) == pytest.approx([mean.mean] * 2)
    assert mean.low < 0 and _bars(mean_panel) == [(0.0, pytest.approx(mean.high))] * 2
    plt.close(drawn["s"])
    with pytest.raises(figures.ConfigError, match="medians"):
        figures.by_method(spec.model_copy(update={"medians": ["val/other"]}), pd.DataFrame(rows), tmp_path)


def test_a_paired_difference_is_drawn_against_the_baseline_run_of_the_same_seed(tmp_path, monkeypatch):
    ce = [0.4, 0.1, 0.3, 0.2, 0.9, 0.5, 0.6, 0.2, 0.3, 0.7]
    gapt = [0.3, 0.2, 0.1, 0.2, 0.5, 0.6, 0.1, 0.1, 0.4, 0.2]  # lower medians per method than per seed
    rows = [
        {"method": method, "seed": seed, "metric": "forgetting/interference", "value": value}
        for method, values in (("ce", ce), ("gapt", gapt))
        for seed, value in enumerate(values)
    ]
    drawn = _drawn(monkeypatch)
    spec = FigureSpec(
        kind="by_method",
        file="d",
        metrics=["forgetting/interference"],
        medians=["forgetting/interference"],
        differences=["forgetting/interference"],
    )
    shuffled = rows[:10] + rows[10:][::-1]  # the runs in another seed order than their baselines
    figures.by_method(spec, pd.DataFrame(shuffled), tmp_path)
    [ax] = drawn["d"].axes[:1]
    paired = median_interval([g - c for g, c in zip(gapt, ce)])
    [points] = [line for line in ax.lines if line.get_marker() == "D"]
    assert list(points.get_ydata()) == pytest.approx([paired.mean]) and _bars(ax) == [
        (pytest.approx(paired.low), pytest.approx(paired.high))
    ]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["gapt"]
    assert "minus ce's" in ax.get_title().replace("\n", " ")
    plt.close(drawn["d"])


def _band_bottom(ax) -> float:
    return min(c.get_paths()[0].vertices[:, 1].min() for c in ax.collections if c.get_paths())


def test_the_band_of_a_quantity_that_cannot_be_negative_is_cut_at_0_and_a_cosines_is_not(
    tmp_path, monkeypatch
):
    frame = _curves(lambda step: None)  # two seeds a step apart: the t band of their mean passes 0
    frame = pd.concat(
        [frame, frame[frame.metric == "val/ce"].assign(metric="val/diff", value=frame.value - 1)]
    )
    drawn = _drawn(monkeypatch)
    spec = FigureSpec(kind="curves", file="c", metrics=["val/mbe", "val/diff"])
    figures.curves(spec, frame, _phases().iloc[:0], tmp_path)
    mbe, difference = drawn["c"].axes[:2]
    assert _band_bottom(mbe) == 0.0  # every value >= 0
    assert _band_bottom(difference) < -1  # a value below 0: the t interval whole
    layers = frame[frame.metric == "val/mbe"].assign(
        metric="val/mbe_by_layer", layer=1.0, value=lambda f: f.seed
    )
    figures.mbe_by_layer(
        FigureSpec(kind="mbe_by_layer", file="m", metric="val/mbe_by_layer"), layers, tmp_path
    )
    assert _band_bottom(drawn["m"].axes[0]) == 0.0
    alignment = pd.DataFrame(
        [
            {"method": "ce", "seed": seed, "step": step, "layer": 1, "cos": 0.1 + seed, "noise_cos": 0.5}
            for seed in (0, 1)
            for step in (0, 10)
        ]
    )
    figures.rq1_alignment(FigureSpec(kind="rq1_alignment", file="a"), alignment, tmp_path)
    assert _band_bottom(drawn["a"].axes[0]) < -1  # a cosine can be negative: never cut
    for fig in drawn.values():
        plt.close(fig)
    assert figures.floor_errorbar([0.0, 0.0, 1.0]) == (
        0.0,
        pytest.approx(figures.t_errorbar([0.0, 0.0, 1.0])[1]),
    )


def test_a_token_is_a_byte_where_the_scales_data_set_is_tokenized_as_bytes(monkeypatch):
    spec = load_report_spec(REPO / "experiments" / "fineweb_pretrain" / "config.yaml")
    units = {
        scale: fill_units(spec.labels["val/ce"], spec, scale) for scale in ("smoke", "cpu", "gpu1", "paper")
    }
    assert units == {
        "smoke": "validation CE (nats/byte)",
        "cpu": "validation CE (nats/byte)",
        "gpu1": "validation CE (nats/token)",
        "paper": "validation CE (nats/token)",
    }
    assert token_unit(spec, "cpu_study_w32") == "byte"  # a study's arm reads its scale's data
    with pytest.raises(figures.ConfigError, match="no scale 'nano'"):
        token_unit(spec, "nano")
    # the figures of results/cpu/fineweb_pretrain say so, the scale read from the folder
    if not (REPO / "results" / "cpu" / "fineweb_pretrain" / "curves.csv.gz").is_file():
        return  # its part of the cpu scale has not run yet (make replicate PART=fineweb_pretrain)
    drawn = _drawn(monkeypatch)
    curves_only = spec.model_copy(update={"figures": [f for f in spec.figures if f.kind == "curves"]})
    figures.draw(curves_only, REPO / "results" / "cpu" / "fineweb_pretrain")
    titles = [ax.get_title() for ax in drawn["curves"].axes]
    assert "validation CE (nats/byte)" in titles and not any("{token}" in t for t in titles)
    plt.close(drawn["curves"])
