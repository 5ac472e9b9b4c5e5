"""A scale's study (scales.<scale>.study): the scales it derives, the DAG's plan of it, its statistics
(paired changes per arm, the log-linear fit and where it crosses zero) and its outputs."""

import json
import math
import subprocess
import sys

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from replication.config.report import load_report_spec
from replication.config.run import load_experiment, resolve_run_config, write_run_config
from replication.dag.plan import STUDY_FILES, STUDY_PART_FILES, Plan
from replication.dag.schema import defaults
from replication.reporting import study as study_module
from replication.reporting.study import (
    METRICS,
    _crossing,
    _settings_finding,
    dose_table,
    loglinear_fit,
    scaling_table,
    sensitivity_table,
    settings_table,
    size_blocks,
)
from replication.runtime.record import RunId
from replication.science.errors import ConfigError

from .conftest import REPO

FINEWEB = REPO / "experiments" / "fineweb_pretrain" / "config.yaml"
ARITHMETIC = REPO / "experiments" / "arithmetic_ood" / "config.yaml"


def test_a_study_derives_one_scale_per_arm_whose_runs_differ_from_the_scales_only_there():
    spec = load_experiment(FINEWEB)
    assert spec.study_arms("cpu")["w64"] == "cpu_study_w64"
    base, small = (resolve_run_config(spec, s, "gapt", 1).to_dict() for s in ("cpu", "cpu_study_w64"))
    assert small["model"] == {**base["model"], "d_model": 64, "n_head": 1, "head_dim": 64}  # the same depth
    assert {k: v for k, v in small.items() if k not in ("model", "scale")} == {
        k: v for k, v in base.items() if k not in ("model", "scale")
    }
    # a knob wins over every layer, the scale's method layer included, and touches one method only
    knob = resolve_run_config(spec, "cpu_study_patience_x0_5", "gapt", 0).to_dict()
    assert (knob["gapt"]["patience_memorize"], knob["gapt"]["patience_compress"]) == (18, 18)
    assert {k: v for k, v in knob["gapt"].items() if not k.startswith("patience")} == {
        k: v for k, v in base["gapt"].items() if not k.startswith("patience")
    }
    assert resolve_run_config(spec, "cpu_study_lambda_10", "gapt_joint", 0).objective.lambda_mbe == 10.0
    assert list(spec.scales["cpu_study_lambda_10"].methods) == ["gapt_joint"]
    with pytest.raises(
        ConfigError, match="cpu_study_lambda_10, an arm of scales.cpu.study, runs only \\['gapt_joint'\\]"
    ):
        resolve_run_config(spec, "cpu_study_lambda_10", "gapt", 0)
    assert spec.scales["cpu_study_w64"].seeds == [0, 1, 2]


def test_a_setting_arm_changes_the_scales_config_for_its_methods_only():
    spec = load_experiment(ARITHMETIC)
    assert spec.study_arms("cpu") == {
        "steps_x4": "cpu_study_steps_x4",
        "wide_steps_x2": "cpu_study_wide_steps_x2",
    }
    base, wide = (resolve_run_config(spec, s, "ce", 2).to_dict() for s in ("cpu", "cpu_study_wide_steps_x2"))
    assert wide["model"] == {**base["model"], "d_model": 192, "n_head": 6, "head_dim": 32}
    assert wide["train"] == {**base["train"], "steps": 1400, "eval_every": 100, "checkpoint_every": 200}
    assert wide["task"] == {**base["task"], "train_examples": 2_000_000}
    assert wide["gapt"] == {**base["gapt"], "patience_memorize": 200, "patience_compress": 200}
    assert {k: v for k, v in wide.items() if k not in ("model", "train", "task", "gapt", "scale")} == {
        k: v for k, v in base.items() if k not in ("model", "train", "task", "gapt", "scale")
    }
    assert list(spec.scales["cpu_study_steps_x4"].methods) == ["ce"]
    with pytest.raises(ConfigError, match="runs only \\['ce'\\]"):
        resolve_run_config(spec, "cpu_study_steps_x4", "gapt", 0)
    assert not spec.scales["cpu"].study.has_reference and spec.scales["smoke"].study.has_reference is False


def test_a_study_of_settings_names_the_metrics_they_report_and_runs_ce_where_it_sets_a_bar(tmp_path):
    text = ARITHMETIC.read_text()
    line = "      settings_metrics: *arithmetic_study_metrics\n"
    assert line in text
    bad = tmp_path / "config.yaml"
    bad.write_text(text.replace(line, "", 1))
    with pytest.raises(ConfigError, match="a study with settings names the metrics they report"):
        load_experiment(bad)
    bad.write_text(
        text.replace(line, "      settings_metrics: {early_stop/ood/answer_ce: early-stopped}\n", 1)
    )
    with pytest.raises(ConfigError, match="at least one a final/ metric"):
        load_experiment(bad)
    bad.write_text(
        text.replace(
            '          methods: [ce, gapt]\n          about: "40 steps"',
            '          methods: [gapt]\n          about: "40 steps"',
            1,
        )
    )
    with pytest.raises(
        ConfigError, match="baseline_learns needs ce in every setting arm; \\['longer'\\] do not run it"
    ):
        load_experiment(bad)


def test_a_settings_change_is_a_difference_where_a_value_is_not_positive():
    spec = load_report_spec(ARITHMETIC)
    metric = "final/ood/answer_ce"
    values = {
        ("longer", "ce", 0): {metric: 0.0, "final/id/answer_ce": 1.0},
        ("longer", "ce", 1): {metric: 0.5, "final/id/answer_ce": 1.0},
        ("longer", "gapt", 0): {metric: 0.25, "final/id/answer_ce": 1.0},
        ("longer", "gapt", 1): {metric: 1.0, "final/id/answer_ce": 1.0},
    }
    table = settings_table(_settings_frame(values), spec, "smoke").set_index(["method", "metric"])
    row = table.loc[("gapt", metric)]
    assert row.change_kind == "difference" and row.change == pytest.approx(0.375)  # (0.25 + 0.5) / 2


def test_arm_names_are_unique_across_sizes_knobs_and_settings(tmp_path):
    text = FINEWEB.read_text()
    assert "      knobs:\n" in text
    twice = (
        "      settings:\n        w16: {methods: [ce], about: twice, config: {}}\n"
        "      settings_metrics: {final/val/ce: CE}\n      knobs:\n"
    )
    bad = tmp_path / "config.yaml"
    bad.write_text(text.replace("      knobs:\n", twice, 1))
    with pytest.raises(
        ConfigError, match="arm names must differ across sizes, knobs and settings: \\['w16'\\]"
    ):
        load_experiment(bad)


def test_a_study_naming_a_method_the_experiment_lacks_is_a_config_error(tmp_path):
    text = FINEWEB.read_text().replace(
        "knobs:\n        patience_x2: {method: gapt,", "knobs:\n        patience_x2: {method: gapt_x,"
    )
    bad = tmp_path / "config.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="study names methods the experiment lacks: \\['gapt_x'\\]"):
        load_experiment(bad)


def test_the_plan_of_a_study_is_its_arms_runs_and_the_scales_own_runs_it_compares_with(tmp_path):
    plan = Plan({**defaults(), "scale": "smoke", "runs_dir": str(tmp_path)}).check()
    assert plan.studies() == ["fineweb_pretrain", "arithmetic_ood"]
    runs = {r.path for r in plan.study_runs("fineweb_pretrain")}
    assert runs == {
        f"fineweb_pretrain/smoke_study_w16/{m}/seed{s}" for m in ("ce", "gapt") for s in (0, 1)
    } | {f"fineweb_pretrain/smoke_study_patience_x2/gapt/seed{s}" for s in (0, 1)}
    assert {r.path for r in plan.study_reference_runs("fineweb_pretrain")} == {
        f"fineweb_pretrain/smoke/{m}/seed{s}" for m in ("ce", "gapt") for s in (0, 1)
    }
    assert len(plan.study_inputs("fineweb_pretrain")) == 10
    assert plan.run_datasets["fineweb_pretrain/smoke_study_w16/ce/seed0"] == "fineweb_sample_bytes"
    names = [o.rsplit("/", 1)[1] for o in plan.study_outputs("fineweb_pretrain")]
    assert set(names) == set(STUDY_FILES) | set(STUDY_PART_FILES["sizes"]) | set(STUDY_PART_FILES["knobs"])
    assert len(names) == len(set(names))  # the dose figure, of sizes and knobs alike, once
    # a study of settings alone compares each arm with its own ce: no reference runs, settings' files only
    assert plan.study_reference_runs("arithmetic_ood") == []
    assert {r.path for r in plan.study_runs("arithmetic_ood")} == {
        f"arithmetic_ood/smoke_study_longer/{m}/seed{s}" for m in ("ce", "gapt") for s in (0, 1)
    }
    names = [o.rsplit("/", 1)[1] for o in plan.study_outputs("arithmetic_ood")]
    assert set(names) == set(STUDY_FILES) | set(STUDY_PART_FILES["settings"])


def test_the_loglinear_fit_is_least_squares_with_its_t_band_and_finds_where_it_crosses_zero():
    rng = np.random.default_rng(0)
    x = np.array([5.0, 5.5, 6.0, 6.5])  # one point per size
    y = 0.02 * (x - 5.8) + rng.normal(0, 0.002, len(x))  # crosses zero near 10^5.8 parameters
    fit = loglinear_fit(x, y)
    assert fit["n"] == 4
    reference = scipy_stats.linregress(x, y)
    t = scipy_stats.t.ppf(0.975, len(x) - 2)
    assert fit["slope"] == pytest.approx(reference.slope) and fit["intercept"] == pytest.approx(
        reference.intercept
    )
    assert fit["slope_high"] - fit["slope"] == pytest.approx(t * reference.stderr)
    assert fit["zero_at_log10_parameters"] == pytest.approx(-reference.intercept / reference.slope)
    # the band at x: t s sqrt(1/n + (x - mean)^2 / Sxx); at the fit's crossing it holds zero
    residual = y - (reference.intercept + reference.slope * x)
    s = math.sqrt(residual @ residual / (len(x) - 2))
    assert fit["s"] == pytest.approx(s) and fit["sxx"] == pytest.approx(((x - x.mean()) ** 2).sum())
    lo, hi = fit["band_holds_zero_from_log10"], fit["band_holds_zero_to_log10"]
    assert 5.0 < lo < fit["zero_at_log10_parameters"] < hi < 6.5
    for edge in (lo, hi):  # where the band's edge touches zero: |line| = t s sqrt(1/n + (x - mean)^2 / Sxx)
        line = abs(reference.intercept + reference.slope * edge)
        half = t * s * math.sqrt(1 / len(x) + (edge - x.mean()) ** 2 / fit["sxx"])
        assert line == pytest.approx(half, abs=2e-4)
    assert loglinear_fit(np.array([6.0, 6.0, 6.0]), np.array([0.1, 0.2, 0.3])) == {"n": 3}  # one size: no fit
    assert loglinear_fit(np.array([6.0]), np.array([0.1])) == {"n": 1}


def test_the_loglinear_fit_reports_no_crossing_outside_the_sizes_run():
    x = np.array([5.0, 5.5, 6.0, 6.5])
    y = 0.02 * (x - 7.0) + np.array([0.001, -0.002, 0.002, -0.001])  # the line crosses zero near 10^7
    fit = loglinear_fit(x, y)
    assert -fit["intercept"] / fit["slope"] > 6.5 and fit["zero_at_log10_parameters"] is None
    assert fit["band_holds_zero_from_log10"] is None and fit["band_holds_zero_to_log10"] is None
    assert _crossing(fit).endswith(
        "; the fitted line has no crossing within the sizes run, and its 95 % band excludes zero over all "
        "the sizes run"
    )
    # where the band holds zero up to the largest size, it says so, and not beyond
    wide = loglinear_fit(x, 0.02 * (x - 7.0) + np.array([0.004, -0.008, 0.008, -0.004]))
    assert wide["zero_at_log10_parameters"] is None and wide["band_holds_zero_to_log10"] == 6.5
    assert 5.0 < wide["band_holds_zero_from_log10"] < 6.5
    assert _crossing(wide).endswith(
        f"holds zero only from {10 ** wide['band_holds_zero_from_log10']:.3g} parameters to the largest size"
    )


def test_a_fit_over_two_sizes_has_a_slope_and_no_interval():
    fit = loglinear_fit(np.array([5.0, 6.0]), np.array([0.03, 0.01]))
    assert fit["n"] == 2 and fit["slope"] == pytest.approx(-0.02) and fit["intercept"] == pytest.approx(0.13)
    assert all(math.isnan(fit[k]) for k in ("slope_low", "slope_high", "slope_p"))
    assert fit["zero_at_log10_parameters"] is None and fit["band_holds_zero_from_log10"] is None
    assert _crossing(fit) == (
        "-2.0 % per tenfold in parameters (n=2 sizes: no interval exists, a t interval of the slope needs "
        "three); the fitted line has no crossing within the sizes run"
    )
    crossing = loglinear_fit(np.array([5.0, 6.0]), np.array([0.01, -0.01]))
    assert crossing["zero_at_log10_parameters"] == pytest.approx(5.5)


PARAMETERS = {"reference": 1_650_000, "w16": 800, "w32": 94_000, "w64": 336_000, "w96": 725_000}


def _frame(values):
    """study.csv rows from {(arm, method, seed): (ce, mbe)}; parameters by arm."""
    rows = []
    for (arm, method, seed), (ce, mbe) in values.items():
        for metric, value in (("final/val/ce", ce), ("final/val/mbe", mbe)):
            rows.append(
                {
                    "arm": arm,
                    "method": method,
                    "seed": seed,
                    "parameters": PARAMETERS.get(arm, 1_650_000),
                    "metric": metric,
                    "value": value,
                }
            )
    return pd.DataFrame(rows)


def test_each_arm_is_paired_with_ce_of_its_own_size_and_each_knob_with_the_scales_ce():
    spec = load_report_spec(FINEWEB)
    ce_ref, ce_small = {0: 2.0, 1: 2.1, 2: 1.9}, {0: 2.5, 1: 2.6, 2: 2.4}
    values = {}
    for seed in range(3):
        values[("reference", "ce", seed)] = (ce_ref[seed], 1.0)
        values[("reference", "gapt", seed)] = (ce_ref[seed] * 1.04, 0.5)
        values[("reference", "gapt_joint", seed)] = (ce_ref[seed] * 1.08, 0.2)
        values[("w64", "ce", seed)] = (ce_small[seed], 1.0)
        values[("w64", "gapt", seed)] = (ce_small[seed] * (1.01 + 0.01 * seed), 0.6)
        values[("patience_x2", "gapt", seed)] = (ce_ref[seed] * (0.96 + 0.01 * seed), 0.8)
        values[("lambda_10", "gapt_joint", seed)] = (ce_ref[seed] * 1.02, 0.4)
    scaling, fits = scaling_table(_frame(values), spec, "cpu")
    ce_rows = scaling[scaling.metric == "final/val/ce"].set_index("arm")
    assert ce_rows.loc["reference", "change_percent"] == pytest.approx(4.0)
    logs = [math.log(1.01), math.log(1.02), math.log(1.03)]  # w64 against w64's own ce, seed by seed
    assert ce_rows.loc["w64", "change_percent"] == pytest.approx(100 * math.expm1(sum(logs) / 3))
    # two sizes: the line through their changes, and no interval
    fit = fits["gapt final/val/ce"]
    two_points = (math.log(1.04) - sum(logs) / 3) / (math.log10(1_650_000) - math.log10(336_000))
    assert fit["n"] == 2 and fit["slope"] == pytest.approx(two_points) and math.isnan(fit["slope_low"])
    sensitivity = sensitivity_table(_frame(values), spec, "cpu").set_index(["method", "arm"])
    patience = [math.log(0.96), math.log(0.97), math.log(0.98)]
    assert sensitivity.loc[("gapt", "patience_x2"), "ce_change_percent"] == pytest.approx(
        100 * math.expm1(sum(patience) / 3)
    )
    assert sensitivity.loc[("gapt", "patience_x2"), "gapt_lowers_ce"]  # its interval lies below zero
    assert sensitivity.loc[("gapt", "reference"), "mbe_change_percent"] == pytest.approx(-50.0)
    assert sensitivity.loc[("gapt_joint", "lambda_10"), "ce_change_percent"] == pytest.approx(2.0)
    assert not sensitivity.loc[("gapt_joint", "lambda_10"), "gapt_lowers_ce"]


def test_the_scaling_fit_has_one_point_per_size_the_mean_log_ratio_scaling_csv_reports():
    spec = load_report_spec(FINEWEB)
    factors = {
        "w32": [1.01, 1.02, 1.06],
        "w64": [1.03, 1.02, 1.04],
        "w96": [1.0, 1.05, 1.03],
        "reference": [1.04, 1.05, 1.02],
    }
    values = {}
    for arm, per_seed in factors.items():
        for seed, factor in enumerate(per_seed):
            values[(arm, "ce", seed)] = (2.0 + 0.1 * seed, 1.0)
            values[(arm, "gapt", seed)] = ((2.0 + 0.1 * seed) * factor, 0.5)
    scaling, fits = scaling_table(_frame(values), spec, "cpu")
    x = np.log10([PARAMETERS[arm] for arm in factors])
    y = [np.mean(np.log(per_seed)) for per_seed in factors.values()]
    reference = scipy_stats.linregress(x, y)
    fit = fits["gapt final/val/ce"]
    assert fit["n"] == 4  # sizes, not 12 seeds
    assert (fit["slope"], fit["intercept"], fit["slope_p"]) == pytest.approx(
        (reference.slope, reference.intercept, reference.pvalue)
    )
    half = scipy_stats.t.ppf(0.975, 2) * reference.stderr  # n - 2 = 2 degrees of freedom
    assert (fit["slope_low"], fit["slope_high"]) == pytest.approx(
        (reference.slope - half, reference.slope + half)
    )
    ce = scaling[scaling.metric == "final/val/ce"].set_index("arm")
    assert list(np.log1p(ce.loc[list(factors), "change_percent"] / 100)) == pytest.approx(y)


@pytest.mark.slow
def test_make_study_at_smoke_scale_writes_every_output(tmp_path):
    paths = [f"{k}={tmp_path}/{k.split('_')[0]}" for k in ("runs_dir", "results_dir", "logs_dir", "data_dir")]
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "2",
        "--configfile",
        "config/smoke.yaml",
        "--config",
        *paths,
        "--quiet",
        "rules",
        "--",
        "study",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "results" / "smoke" / "study" / "fineweb_pretrain"
    for name in [*STUDY_FILES, *STUDY_PART_FILES["sizes"], *STUDY_PART_FILES["knobs"]]:
        assert (out / name).stat().st_size > 0, name
    study = pd.read_csv(out / "study.csv")
    assert (
        set(study.arm) == {"reference", "w16", "patience_x2"}
        and study.parameters.min() < study.parameters.max()
    )
    readme = (out / "README.md").read_text()
    assert "## Finding" in readme and "per tenfold in parameters" in readme and "## Cost" in readme
    arithmetic = tmp_path / "results" / "smoke" / "study" / "arithmetic_ood"
    for name in [*STUDY_FILES, *STUDY_PART_FILES["settings"]]:
        assert (arithmetic / name).stat().st_size > 0, name
    assert not (arithmetic / "scaling.csv").exists() and not (arithmetic / "sensitivity.csv").exists()
    settings = pd.read_csv(arithmetic / "settings.csv")
    assert set(zip(settings.method, settings.metric)) >= {
        ("gapt", "final/ood/answer_ce"),
        ("ce", "final/id/answer_ce"),
    }
    curves = pd.read_csv(arithmetic / "settings_curves.csv")
    assert set(curves.metric) == {"ood/answer_ce", "id/answer_ce", "ood/mbe"} and curves.step.max() == 40
    assert "`ce` reaches a held-out ID answer CE (nats) of" in (arithmetic / "README.md").read_text()


def _settings_frame(values):
    """study.csv rows from {(arm, method, seed): {metric: value}}."""
    return pd.DataFrame(
        [
            {"arm": arm, "method": method, "seed": seed, "parameters": 1, "metric": metric, "value": v}
            for (arm, method, seed), metrics in values.items()
            for metric, v in metrics.items()
        ]
    )


def test_a_setting_pairs_each_method_with_its_own_ce_and_counts_the_seeds_under_the_bar():
    spec = load_report_spec(ARITHMETIC)  # smoke: one setting, "longer", running ce and gapt on seeds 0 and 1
    ood, bar = "final/ood/answer_ce", "final/id/answer_ce"
    values = {
        ("longer", "ce", 0): {ood: 4.0, bar: 0.05},
        ("longer", "ce", 1): {ood: 5.0, bar: 0.1},  # on the bar is not below it
        ("longer", "gapt", 0): {ood: 3.0, bar: 0.5},
        ("longer", "gapt", 1): {ood: 4.5, bar: 0.01},
        ("reference", "ce", 0): {ood: 1.0, bar: 0.01},  # another arm's ce: never the baseline here
        ("reference", "ce", 1): {ood: 1.0, bar: 0.01},
    }
    table = settings_table(_settings_frame(values), spec, "smoke").set_index(["method", "metric"])
    change = 100 * math.expm1((math.log(3.0 / 4.0) + math.log(4.5 / 5.0)) / 2)
    assert table.loc[("gapt", ood), "change"] == pytest.approx(change)
    assert table.loc[("gapt", ood), "change_kind"] == "relative"
    level = scipy_stats.t.interval(0.95, 1, loc=4.5, scale=scipy_stats.sem([4.0, 5.0]))
    assert (table.loc[("ce", ood), "low"], table.loc[("ce", ood), "high"]) == pytest.approx(level)
    assert table.loc[("ce", bar), "seeds_below_bar"] == 1 and pd.isna(
        table.loc[("gapt", bar), "seeds_below_bar"]
    )
    assert pd.isna(table.loc[("ce", ood), "change"])
    study = spec.scales["smoke"].study
    sentence, overall = _settings_finding(study, table.reset_index())
    assert "(1 of 2 seeds below 0.1): it does not clear the bar, so the comparison that follows" in sentence
    assert (
        f"by {change:+.1f} %" in sentence
        and overall == "No setting of this study brings `ce` below the bar in every seed."
    )
    values[("longer", "ce", 1)] = {ood: 5.0, bar: 0.09}
    sentence, overall = _settings_finding(study, settings_table(_settings_frame(values), spec, "smoke"))
    assert "(2 of 2 seeds below 0.1): it clears the bar;" in sentence and overall.endswith(
        "every seed with: 40 steps."
    )


def test_the_study_figures_draw_each_method_in_its_own_style(tmp_path, monkeypatch):
    import matplotlib.colors

    from replication.reporting import figures
    from replication.reporting.figures import METHOD_STYLE

    figs = []
    monkeypatch.setattr(figures.plt, "close", figs.append)
    row = {
        f"{m}_{k}_percent": v
        for m in ("ce", "mbe")
        for k, v in (("change", 3.0), ("low", 1.0), ("high", 5.0))
    }
    table = pd.DataFrame(
        [
            {"method": "gapt", "arm": "reference", "knob": "default", "value": "", **row},
            {"method": "gapt", "arm": "tol", "knob": "spike tolerance", "value": "0.2", **row},
            {"method": "gapt_joint", "arm": "reference", "knob": "default", "value": "", **row},
        ]
    )
    figures.study_sensitivity(table, tmp_path)
    [fig] = figs
    for ax in fig.axes:
        drawn = {
            (matplotlib.colors.to_hex(c.lines[0].get_color()), c.lines[0].get_marker()): len(
                c.lines[0].get_ydata()
            )
            for c in ax.containers
        }
        assert drawn == {
            (matplotlib.colors.to_hex(METHOD_STYLE[m][0]), METHOD_STYLE[m][2]): n
            for m, n in (("gapt", 2), ("gapt_joint", 1))
        }
    assert (tmp_path / "sensitivity.png").is_file()
    monkeypatch.undo()
    figures.plt.close(fig)


def test_the_scaling_fit_and_its_band_are_drawn_over_the_sizes_run_only(tmp_path, monkeypatch):
    import matplotlib.collections

    from replication.reporting import figures

    figs = []
    monkeypatch.setattr(figures.plt, "close", figs.append)
    sizes = {"w32": 1e5, "w64": 3e5, "reference": 1.6e6}
    table = pd.DataFrame(
        [
            {"arm": arm, "parameters": n, "method": "gapt", "metric": metric, "change_percent": 2.0}
            | {"low_percent": 1.0, "high_percent": 3.0}
            for metric in METRICS
            for arm, n in sizes.items()
        ]
    )
    fit = loglinear_fit(np.log10(list(sizes.values())), np.array([0.02, 0.025, 0.021]))
    two = loglinear_fit(np.log10([1e5, 3e5]), np.array([0.02, 0.025]))  # no band
    fits = {"gapt final/val/ce": fit, "gapt final/val/mbe": two}
    figures.study_scaling(table, fits, METRICS, tmp_path)
    [fig] = figs
    for ax, end in zip(fig.axes, (1.6e6, 3e5)):
        [line] = [line for line in ax.lines if len(line.get_xdata()) > 10]  # the fit
        assert (min(line.get_xdata()), max(line.get_xdata())) == pytest.approx((1e5, end))
        bands = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
        spans = [
            (c.get_paths()[0].vertices[:, 0].min(), c.get_paths()[0].vertices[:, 0].max()) for c in bands
        ]
        assert spans == ([pytest.approx((1e5, 1.6e6))] if end == 1.6e6 else [])
    monkeypatch.undo()
    figures.plt.close(fig)


def test_the_dose_figure_sets_each_arms_ce_change_against_its_mean_compress_share(tmp_path, monkeypatch):
    from replication.reporting import figures
    from replication.reporting.figures import METHOD_STYLE

    spec = load_report_spec(FINEWEB)  # smoke: sizes w16 and the scale's own, the knob patience_x2, seeds 0-1
    values, shares = {}, {("reference", "gapt"): 0.25, ("w16", "gapt"): 0.5, ("patience_x2", "gapt"): 0.75}
    for seed in range(2):
        for arm in ("reference", "w16"):
            values[(arm, "ce", seed)] = (2.0, 1.0)
        values[("reference", "gapt", seed)] = (2.0 * 1.02, 0.5)
        values[("w16", "gapt", seed)] = (2.0 * 1.04, 0.5)
        values[("patience_x2", "gapt", seed)] = (2.0 * 0.99, 0.5)
    frame = _frame(values)
    share_rows = [
        {
            "arm": arm,
            "method": method,
            "seed": seed,
            "metric": "compress_share",
            "value": share + 0.1 * (seed - 0.5),
        }
        for (arm, method), share in shares.items()
        for seed in range(2)
    ]
    frame = pd.concat([frame, pd.DataFrame(share_rows)], ignore_index=True)
    scaling, _ = scaling_table(frame, spec, "smoke")
    sensitivity = sensitivity_table(frame, spec, "smoke")
    assert scaling.set_index(["arm", "metric"]).loc[
        ("w16", "final/val/ce"), "compress_share"
    ] == pytest.approx(0.5)
    assert sensitivity.set_index("arm").compress_share.to_dict() == pytest.approx(
        {"reference": 0.25, "patience_x2": 0.75}
    )
    table = dose_table(scaling, sensitivity)  # the scale's own model once, though both tables hold it
    assert sorted(table.arm) == ["patience_x2", "reference", "w16"]
    figs = []
    monkeypatch.setattr(figures.plt, "close", figs.append)
    figures.study_dose(table, tmp_path)
    [fig] = figs
    [ax] = fig.axes
    [points] = ax.containers
    drawn = dict(zip(points.lines[0].get_xdata(), points.lines[0].get_ydata()))
    assert drawn == pytest.approx({0.25: 2.0, 0.5: 4.0, 0.75: -1.0})
    assert (matplotlib.colors.to_hex(points.lines[0].get_color()), points.lines[0].get_marker()) == (
        matplotlib.colors.to_hex(METHOD_STYLE["gapt"][0]),
        METHOD_STYLE["gapt"][2],
    )
    assert {t.get_text(): t.xy for t in ax.texts} == {
        "reference": pytest.approx((0.25, 2.0)),
        "w16": pytest.approx((0.5, 4.0)),
        "patience_x2": pytest.approx((0.75, -1.0)),
    }
    assert (tmp_path / "dose.png").is_file() and (tmp_path / "dose.pdf").is_file()
    monkeypatch.undo()
    figures.plt.close(fig)


def test_a_size_study_is_at_the_depth_of_the_scales_model(tmp_path):
    text = FINEWEB.read_text()
    line = "w16: {n_layer: 6, d_model: 16"
    assert line in text
    bad = tmp_path / "config.yaml"
    bad.write_text(text.replace(line, "w16: {n_layer: 8, d_model: 16", 1))
    spec = load_report_spec(bad)
    assert size_blocks(spec, "smoke") == {"reference": 6, "w16": 8}
    with pytest.raises(
        ConfigError,
        match="the sizes of scales.smoke.study differ in depth \\(blocks: reference: 6, w16: 8\\): give "
        "every size the scale's depth, 6 blocks",
    ):
        study_module.write_study(spec, "smoke", tmp_path / "runs", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    load = load_report_spec  # the experiments' own size studies are each at one depth
    assert set(size_blocks(load(FINEWEB), "cpu").values()) == {8} and set(
        size_blocks(load(FINEWEB), "smoke").values()
    ) == {6}


def _fake_run(runs, spec, scale, method, seed, metrics, evals=(), **summary):
    """A finished run folder as the loop writes it: config.yaml, metrics.jsonl, and summary.json with
    the run's n_params; evals are the evaluation records, by step."""
    config = resolve_run_config(spec, scale, method, seed)
    folder = RunId(spec.experiment, scale, method, seed).folder(runs)
    write_run_config(config, folder / "config.yaml")
    records = [{"kind": "train", "step": s, "phase": "memorize", "train/ce": 3.0} for s in range(4)]
    records += [{"kind": "eval", "step": step, **values} for step, values in evals]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "metrics": metrics,
        "steps": 4,
        "phase_changes": 2,
        "compress_steps": 0,
        "wall_time_s": 60.0,
        "provenance": {"git_commit": "0123456789abcdef"},
        "config": config.to_dict(),
        "config_digest": config.digest(),
        **summary,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _write_study(config, runs, out):
    argv = [str(config), "--scale", "smoke", "--runs", str(runs), "--out", str(out)]
    return study_module.main(argv)


def _redraw_from_csv(config, out):
    """Redraws a study from its own CSVs (no runs): every table, the README and every figure (PNG) come
    back byte for byte."""
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".csv", ".md", ".png")}
    for name in files:
        if name.endswith(".png"):
            (out / name).unlink()
    assert study_module.main([str(config), "--scale", "smoke", "--out", str(out), "--from-csv"]) == 0
    assert any(name.endswith(".png") for name in files)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".csv", ".md", ".png")} == files


def test_a_study_reads_its_runs_and_their_parameters_from_the_summaries(tmp_path, capsys):
    spec, runs = load_experiment(FINEWEB), tmp_path / "runs"
    study = spec.scales["smoke"].study
    arms = {"reference": "smoke", **spec.study_arms("smoke")}
    n_params = {"reference": 5000, "w16": 800, "patience_x2": 5000}
    folders = {}
    for arm, methods in (("reference", ["ce", "gapt"]), ("w16", ["ce", "gapt"]), ("patience_x2", ["gapt"])):
        for method in methods:  # the scale's own ce_mbe and gapt_joint never ran: not compared with
            for seed in study.seeds:
                ce = 2.0 + 0.1 * seed + 0.05 * (method == "gapt")
                metrics = {"final/val/ce": ce, "final/val/mbe": 0.5, "final/val/other": 1.0}
                if (arm, seed) == ("patience_x2", 1):
                    del metrics["final/val/mbe"]  # a metric the run lacks has no row
                compress = (seed + 1 + {"w16": 2, "patience_x2": 1}.get(arm, 0)) * (method == "gapt")  # of 4
                folders[arm, method, seed] = _fake_run(
                    runs,
                    spec,
                    arms[arm],
                    method,
                    seed,
                    metrics,
                    n_params=n_params[arm],
                    compress_steps=compress,
                )
    out = tmp_path / "out"
    assert _write_study(FINEWEB, runs, out) == 0
    frame = pd.read_csv(out / "study.csv")
    assert frame.groupby("arm").parameters.unique().map(list).to_dict() == {
        k: [v] for k, v in n_params.items()
    }
    assert set(frame.commit) == {"0123456789ab"} and len(frame) == 10 * 6 - 1
    reported = [
        "final/val/ce",
        "final/val/mbe",
        "phase_changes",
        "compress_steps",
        "wall_time_s",
        "compress_share",
    ]
    assert list(frame[(frame.arm == "w16") & (frame.seed == 1) & (frame.method == "gapt")].metric) == reported
    assert list(frame[(frame.arm == "patience_x2") & (frame.seed == 1)].metric) == [
        reported[0],
        *reported[2:],
    ]
    share = frame[frame.metric == "compress_share"].set_index(["arm", "method", "seed"]).value
    assert share[("w16", "gapt", 1)] == 1.0 and share[("patience_x2", "gapt", 0)] == 0.5  # 4, 2 of 4 steps
    assert share[("reference", "ce", 0)] == 0.0
    scaling = pd.read_csv(out / "scaling.csv")
    assert list(scaling.parameters.unique()) == [800, 5000]
    assert list(scaling.compress_share) == [0.875, 0.375, 0.875, 0.375]  # w16 (3 + 4) / 8, then (1 + 2) / 8
    assert pd.read_csv(out / "sensitivity.csv").set_index("arm").compress_share.to_dict() == {
        "reference": 0.375,
        "patience_x2": 0.625,
    }
    readme = (out / "README.md").read_text()
    assert "(n=2 sizes: no interval exists, a t interval of the slope needs three)" in readme
    assert "\n![dose](dose.png)\n" in readme and (out / "dose.png").is_file()
    _redraw_from_csv(FINEWEB, out)
    # a summary without n_params: the run is trained again, its model never rebuilt here
    folder = folders["w16", "gapt", 1]
    summary = json.loads((folder / "summary.json").read_text())
    del summary["n_params"]
    (folder / "summary.json").write_text(json.dumps(summary))
    assert _write_study(FINEWEB, runs, out) == 2
    assert f"error: {folder}: summary.json records no n_params" in capsys.readouterr().err
    (folder / "summary.json").unlink()
    assert _write_study(FINEWEB, runs, out) == 2
    assert "1 run(s) of the study have no summary.json, e.g. " + str(folder) in capsys.readouterr().err


def test_the_settings_curves_hold_every_evaluation_in_the_order_of_the_studys_metrics(tmp_path):
    spec, runs = load_experiment(ARITHMETIC), tmp_path / "runs"
    scale = spec.study_arms("smoke")["longer"]
    evals = [  # keys in another order than settings_metrics; a per-layer list and other metrics besides
        (
            step,
            {"ood/mbe": 0.5, "ood/exact_match": 0.0, "id/answer_ce": 1 / step, "ood/answer_ce": 4.0 + step},
        )
        for step in (20, 40)
    ]
    metrics = {"final/ood/answer_ce": 5.0, "early_stop/ood/answer_ce": 4.5, "final/id/answer_ce": 0.05}
    for method in ("ce", "gapt"):
        for seed in (0, 1):
            _fake_run(runs, spec, scale, method, seed, {**metrics, "final/ood/mbe": 0.5}, evals, n_params=10)
    out = tmp_path / "out"
    assert _write_study(ARITHMETIC, runs, out) == 0
    curves = pd.read_csv(out / "settings_curves.csv")
    assert list(curves.columns) == ["arm", "method", "seed", "step", "metric", "value"]
    assert list(curves.itertuples(index=False, name=None)) == [
        ("longer", method, seed, step, metric, values[metric])
        for method in ("ce", "gapt")
        for seed in (0, 1)
        for step, values in evals
        for metric in ("ood/answer_ce", "id/answer_ce", "ood/mbe")
    ]
    assert (
        "`ce` reaches a held-out ID answer CE (nats) of 0.05 (2 of 2 seeds below 0.1)"
        in (out / "README.md").read_text()
    )
    _redraw_from_csv(ARITHMETIC, out)
