import base64
import json
import math
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from replication.config.plan import content_hash, load_plan
from replication.config.report import load_report_spec
from replication.config.run import ExperimentSpec, resolve_run_config, write_run_config
from replication.reporting import aggregate, claims, figures, report
from replication.reporting.stats import (
    at_least,
    fisher_combined,
    holm,
    median_interval,
    paired_change,
    paired_values,
    sign_test,
    t_interval,
    verdict,
)
from replication.runtime.record import RunId
from replication.science.errors import ConfigError

from .conftest import REPO, TINY

SEEDS = [0, 1, 2, 3]
CE = {0: 3.0, 1: 3.1, 2: 3.2, 3: 3.3}
GAPT_CE_RATIO = {0: 0.979, 1: 0.981, 2: 0.98, 3: 0.9795}
EXPERIMENT = {
    "experiment": "demo",
    "paper": {
        "table": [
            {"key": "final/val/ce", "label": "final CE", "paper": {"ce": 3.30, "gapt": 3.14}},
            {"key": "final/val/mbe", "label": "MBE"},
            {"key": "phase_changes", "label": "phase changes"},
        ],
    },
    "figures": [
        {
            "kind": "curves",
            "file": "curves",
            "metrics": ["train/ce", "val/ce"],
            "title": "Curves",
            "caption": "Training and validation CE of *every* seed.",
        },
        {"kind": "mbe_by_layer", "file": "mbe_by_layer", "metric": "val/mbe_by_layer"},
        {"kind": "rq1_alignment", "file": "rq1"},
        {"kind": "by_digits", "file": "digits", "prefixes": ["final/ood/exact_match/digits_"]},
        {"kind": "by_method", "file": "phases", "metrics": ["phase_changes", "final/val/mbe"]},
    ],
    "defaults": {key: TINY[key] for key in ("task", "model", "optim", "train")},
    "methods": {"ce": {}, "gapt": {}},
    "scales": {"smoke": {"seeds": SEEDS}, "cpu": {"seeds": SEEDS, "description": "a small model"}},
}
COMMIT = "abc1234"  # the commit every fake run records
# the demo's analysis plan: C2 reproduced, C3 opposite, C9 inconclusive (primary); C7 met (descriptive)
PLAN = {
    "experiment": "demo",
    "claims": [
        {
            "id": "C2",
            "kind": "primary",
            "claim": "CE drops",
            "metric": "final/val/ce",
            "statistic": "relative",
            "paper_value": "-4.8 %",
            "paper": -0.048,
            "sesoi": 0.01,
            "figure": "curves.png",
        },
        {
            "id": "C3",
            "kind": "primary",
            "claim": "MBE drops",
            "metric": "final/val/mbe",
            "statistic": "relative",
            "paper_value": "-50 %",
            "sesoi": 0.01,
        },
        {
            "id": "C9",
            "kind": "primary",
            "claim": "noise",
            "metric": "final/val/noisy",
            "statistic": "relative",
            "direction": "increase",
            "paper_value": "+1 %",
            "paper": 0.01,
            "sesoi": 0.02,
        },
        {
            "id": "C7",
            "kind": "descriptive",
            "claim": "phases alternate",
            "statistic": "runs_at_least",
            "metric": "phase_changes",
            "threshold": 2,
            "paper_value": ">= 2",
        },
    ],
}


def write_plan(folder, plan=PLAN, commit=COMMIT):
    """plan.yaml beside an experiment's config, with a deviation covering the fake runs' commit
    (which no git repository holds)."""
    deviation = {"runs_commit": commit, "plan_sha256": content_hash(plan), "what": "test runs"}
    (folder / "plan.yaml").write_text(yaml.safe_dump({**plan, "deviations": [deviation]}))


def fake_run(folder, method, seed):
    """A run folder as the loop writes it, with metric values chosen so every verdict is known."""
    folder.mkdir(parents=True)
    config = resolve_run_config(ExperimentSpec.model_validate(EXPERIMENT), "cpu", method, seed)
    write_run_config(config, folder / "config.yaml")
    gapt = method == "gapt"
    ce = CE[seed] * (GAPT_CE_RATIO[seed] if gapt else 1.0)  # about -2 % on every seed
    mbe = 1.0 * ((1.10, 1.12, 1.08, 1.11)[seed] if gapt else 1.0)  # +8..12 %: the opposite of the claim
    noisy = 2.0 * ((1.05, 0.95, 1.03, 0.96)[seed] if gapt else 1.0)  # straddles zero
    phase_changes = (3, 4, 3, 4)[seed] if gapt else 0
    metrics = {"final/val/ce": ce, "final/val/mbe": mbe, "final/val/noisy": noisy}
    metrics.update({f"final/ood/exact_match/digits_{d}": 1.0 / d for d in (4, 5, 6)})
    summary = {
        "metrics": metrics,
        "phase_changes": phase_changes,
        "compress_steps": 5 if gapt else 0,
        "steps": 20,
        "tokens": 640,
        "wall_time_s": 1.5,
        "world_size": 1,
        "provenance": {"git_commit": COMMIT, "git_dirty": False},
        "config_digest": config.digest(),
        "config": config.to_dict(),
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    records = []
    for step in range(20):
        phase = "compress" if gapt and 5 <= step < 10 else "memorize"
        records.append(
            {
                "kind": "train",
                "step": step,
                "tokens": 32 * (step + 1),
                "phase": phase,
                "train/ce": 4 - step / 10,
                "train/mbe_by_layer": [1.0, 2.0],
                "lr": {"muon": 0.05},
                "time": step,
            }
        )
        if step % 10 == 0:
            records.append(
                {
                    "kind": "eval",
                    "step": step,
                    "tokens": 32 * step,
                    "val/ce": 4 - step / 10,
                    "val/mbe_by_layer": [1.0 + seed / 10, 2.0],
                }
            )
            if method == "ce":
                records.append(
                    {
                        "kind": "alignment",
                        "step": step,
                        "align/layers": [0, 1],
                        "align/cos": [0.1, -0.2],
                        "align/norm_mbe": [1.0, 2.0],
                        "align/norm_ce": 3.0,
                        "align/noise_cos": 0.05,
                    }
                )
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


@pytest.fixture
def results(tmp_path):
    (tmp_path / "experiments" / "demo").mkdir(parents=True)
    config = tmp_path / "experiments" / "demo" / "config.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT))
    write_plan(config.parent)
    for method in ("ce", "gapt"):
        for seed in SEEDS:
            fake_run(RunId("demo", "cpu", method, seed).folder(tmp_path / "runs"), method, seed)
    out = tmp_path / "results" / "cpu" / "demo"
    assert (
        aggregate.main([str(config), "--scale", "cpu", "--runs", str(tmp_path / "runs"), "--out", str(out)])
        == 0
    )
    return config, out


def _report_args(tmp_path):
    """The report command of the cpu scale over tmp_path's results and experiments."""
    results, experiments = str(tmp_path / "results"), str(tmp_path / "experiments")
    return ["--scale", "cpu", "--results", results, "--experiments-dir", experiments]


def test_aggregation_refuses_a_summary_of_another_config(results, tmp_path, capsys):
    """A run folder whose config.yaml changed after its summary was written (say, a method edited by
    hand) is not aggregated: the error names the folder and the keys that differ."""
    config, out = results
    folder = tmp_path / "runs" / "demo" / "cpu" / "gapt" / "seed2"
    run_config = folder / "config.yaml"
    run_config.write_text(run_config.read_text().replace("\n  steps: 30\n", "\n  steps: 8\n"))
    argv = [str(config), "--scale", "cpu", "--runs", str(tmp_path / "runs"), "--out", str(out)]
    assert aggregate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"{folder}/summary.json was written by a run of another config (train.steps: 30 -> 8)" in err
    assert len(err.splitlines()) == 1


def test_t_interval_matches_scipy():
    values = [0.1, -0.3, 0.25, 0.05, 0.2]
    est = t_interval(values)
    low, high = scipy_stats.t.interval(
        0.95, df=4, loc=pd.Series(values).mean(), scale=scipy_stats.sem(values)
    )
    assert (est.low, est.high, est.n) == (pytest.approx(low), pytest.approx(high), 5)
    assert est.p == pytest.approx(scipy_stats.ttest_1samp(values, 0.0).pvalue)
    assert t_interval(values, null=0.3).p == pytest.approx(scipy_stats.ttest_1samp(values, 0.3).pvalue)
    assert t_interval([1.0]).low is None and t_interval([]).n == 0
    assert t_interval([1.0, math.nan, 3.0]).n == 2


def test_paired_changes_use_only_seeds_both_methods_have():
    assert paired_values({0: 1.1, 1: 2.0, 5: 9.0}, {0: 1.0, 1: 2.5, 2: 3.0}) == [(1.1, 1.0), (2.0, 2.5)]
    assert paired_change({0: 1.1, 1: 2.0, 5: 9.0}, {0: 1.0, 1: 2.5, 2: 3.0}, "difference").n == 2


def test_a_relative_change_is_the_geometric_mean_ratio_and_never_passes_minus_100_percent():
    method, baseline = {0: 0.004, 1: 0.02, 2: 0.001}, {0: 1.0, 1: 1.1, 2: 0.9}  # a collapse to near zero
    logs = t_interval([math.log(method[s] / baseline[s]) for s in range(3)])
    est = paired_change(method, baseline, "relative")
    # exp(mean log ratio) - 1, and the log ratio's t interval mapped back the same way
    assert est.mean == pytest.approx(math.expm1(logs.mean))
    assert (est.low, est.high) == (pytest.approx(math.expm1(logs.low)), pytest.approx(math.expm1(logs.high)))
    assert -1 < est.low < est.mean < est.high and est.p == pytest.approx(logs.p)
    plain = t_interval([(method[s] - baseline[s]) / baseline[s] for s in range(3)])
    assert plain.low < -1  # the t interval of the plain relative changes would pass -100 %
    assert est.format().startswith("-99.") and "%" in est.format()
    with pytest.raises(ValueError, match="positive"):
        paired_change({0: 0.0, 1: 1.0}, {0: 1.0, 1: 1.0}, "relative")


def test_a_difference_is_the_t_interval_of_the_paired_differences():
    method, baseline = {0: 0.5, 1: 0.7, 2: 0.2}, {0: 0.001, 1: 0.002, 2: 0.0}
    est = paired_change(method, baseline, "difference")
    ref = t_interval([0.499, 0.698, 0.2])
    assert (est.mean, est.low, est.high, est.p) == (
        pytest.approx(ref.mean),
        pytest.approx(ref.low),
        pytest.approx(ref.high),
        pytest.approx(ref.p),
    )
    assert est.format().startswith("Δ +0.466 [")


def test_the_robust_interval_is_the_sign_tests_order_statistics():
    rng = np.random.default_rng(1)
    x = rng.standard_cauchy(30) + 1.0
    est = median_interval(x)
    ordered = np.sort(x)
    # n = 30: P(Binomial(30, 1/2) <= 9) = 0.0214 <= 0.025 < P(... <= 10): the 10th and 21st values
    assert (est.low, est.high) == (ordered[9], ordered[20]) and est.mean == pytest.approx(np.median(x))
    assert est.p == pytest.approx(scipy_stats.binomtest(int(np.sum(x > 0)), 30, 0.5).pvalue)
    assert (
        median_interval(x[:5]).low is None and median_interval(x[:6]).low == np.sort(x[:6])[0]
    )  # 6 seeds at least
    heavy = paired_change(dict(enumerate(x)), dict.fromkeys(range(30), 0.0), "robust_difference")
    assert (heavy.low, heavy.high, heavy.kind) == (ordered[9], ordered[20], "robust_difference")


def test_a_count_interval_cannot_go_negative_and_the_verdict_reads_the_p_value():
    est = at_least([0, 1, 0, 3], threshold=2)
    assert est.low == 0.0 and t_interval([0, 1, 0, 3]).low < 0  # cut at 0, the t interval is not
    assert est.p == pytest.approx(scipy_stats.ttest_1samp([0, 1, 0, 3], 2).pvalue)
    assert verdict(at_least([3, 4, 3, 4], 2), "increase") == "reproduced"
    assert verdict(at_least([0, 1, 0, 1], 2), "increase") == "opposite"
    assert verdict(at_least([1, 4, 0, 5], 2), "increase") == "inconclusive"


def test_verdicts():
    down = paired_change({0: 0.95, 1: 0.96, 2: 0.94}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert verdict(down, "decrease") == "reproduced" and verdict(down, "increase") == "opposite"
    assert verdict(down, "decrease", p=0.2) == "inconclusive"  # an adjusted p-value decides instead
    assert verdict(t_interval([-0.05, 0.04, 0.01]), "decrease") == "inconclusive"
    assert verdict(t_interval([-0.05]), "decrease") == "inconclusive"  # one seed is never a verdict


def test_seeds_with_no_spread_leave_the_decision_to_the_sign_test():
    # three identical counts are not a certainty: p = 2 / 2^3, no interval; six are enough
    three = at_least([3, 3, 3], threshold=2)
    assert (three.low, three.p) == (None, pytest.approx(0.25)) and verdict(
        three, "increase"
    ) == "inconclusive"
    six = at_least([3] * 6, threshold=2)
    assert six.p == pytest.approx(2 / 64) and verdict(six, "increase") == "reproduced"
    assert verdict(at_least([2, 2, 2, 2], threshold=2), "increase") == "inconclusive"  # at the threshold


def test_the_sign_test_counts_ties_against_rejection_and_agrees_with_the_interval():
    # 3 ties with the null and 7 above: the interval [0, 6] holds 0, so the test must not reject
    est = median_interval([0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
    assert est.low == 0 and est.p == pytest.approx(2 * scipy_stats.binom.cdf(3, 10, 0.5))
    assert verdict(est, "increase") == "inconclusive"
    assert median_interval([0] * 11 + [1] * 9).p == 1.0
    rng = np.random.default_rng(0)
    for _ in range(500):  # with ties or without: the interval excludes the null exactly when p < 0.05
        x = rng.integers(-3, 6, int(rng.integers(6, 40))).astype(float)
        e = median_interval(x)
        assert (e.low > 0 or e.high < 0) == (e.p < 0.05)


def test_holm_adjusts_in_step_down_order():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, then a running maximum: 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.01]) == [
        pytest.approx(0.5),
        None,
        pytest.approx(0.02),
    ]  # None: not in the family
    assert holm([0.4, 0.9]) == pytest.approx([0.8, 0.9])


def test_aggregate_writes_tidy_tables(results):
    _, out = results
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.columns) == {"experiment", "scale", "method", "seed", "metric", "value"}
    gapt_ce = summary[(summary.method == "gapt") & (summary.metric == "final/val/ce")].sort_values("seed")
    assert list(gapt_ce.value) == pytest.approx([GAPT_CE_RATIO[s] * CE[s] for s in SEEDS])
    assert set(summary[summary.metric == "phase_changes"].value) == {0, 3, 4}
    phases = pd.read_csv(out / "phases.csv")
    gapt0 = phases[(phases.method == "gapt") & (phases.seed == 0)]
    assert list(zip(gapt0.phase, gapt0.start_step, gapt0.end_step)) == [
        ("memorize", 0, 5),
        ("compress", 5, 10),
        ("memorize", 10, 20),
    ]
    # gzip with no time stamp in its header (bytes 4-7), so that the same curves give the same file
    head = (out / "curves.csv.gz").read_bytes()[:8]
    assert head[:2] == b"\x1f\x8b" and head[4:] == bytes(4)
    curves = pd.read_csv(out / "curves.csv.gz")
    per_layer = curves[(curves.metric == "val/mbe_by_layer") & (curves.method == "ce") & (curves.seed == 2)]
    assert sorted(per_layer.layer.unique()) == [0, 1] and per_layer[per_layer.layer == 0].value.iloc[
        0
    ] == pytest.approx(1.2)
    assert "lr" not in set(curves.metric)
    alignment = pd.read_csv(out / "alignment.csv")
    assert set(alignment.method) == {"ce"} and len(alignment) == 4 * 2 * 2  # seeds x evaluations x layers
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 8 and set(runs.git_commit) == {COMMIT}


def test_table_puts_the_paper_beside_ours_and_the_paired_change(results):
    table = (results[1] / "table.md").read_text()
    assert "ce 3.3, gapt 3.14" in table  # the paper's values
    logs = t_interval([math.log(r) for r in GAPT_CE_RATIO.values()])  # the geometric mean ratio, mapped back
    mean, low, high = (100 * math.expm1(v) for v in (logs.mean, logs.low, logs.high))
    expected = f"{mean:+.1f} % [{low:+.1f}, {high:+.1f}] (n=4)"
    assert expected == "-2.0 % [-2.1, -1.9] (n=4)" and expected in table
    assert "| Δ +3.5 [+2.58, +4.42] (n=4) |" in table  # ce's 0 phase changes have no ratio: the difference
    assert "-4.8 %" in table and "a small model" in table and "abc123" in table


def test_aggregate_names_missing_runs(tmp_path, capsys, results):
    config, _ = results
    assert (
        aggregate.main(
            [
                str(config),
                "--scale",
                "cpu",
                "--runs",
                str(tmp_path / "runs"),
                "--out",
                str(tmp_path / "o"),
                "--seeds",
                "0",
                "7",
            ]
        )
        == 2
    )
    assert "gapt/seed7/summary.json" in capsys.readouterr().err


def test_every_figure_kind_is_drawn(results):
    config, out = results
    written = figures.draw(load_report_spec(config), out)
    assert {p.name for p in written} == {
        f"{s}.{e}" for s in ("curves", "mbe_by_layer", "rq1", "digits", "phases") for e in ("png", "pdf")
    }
    assert all(p.stat().st_size > 5000 for p in written)


def test_figures_draw_the_t_interval_of_the_tables(results, monkeypatch):
    config, out = results
    drawn = {}
    monkeypatch.setattr(
        figures, "_save", lambda fig, results, stem, title: drawn.setdefault(stem, fig) and []
    )
    spec = load_report_spec(config)
    figures.draw(spec.model_copy(update={"figures": [f for f in spec.figures if f.kind == "by_method"]}), out)
    summary = pd.read_csv(out / "summary.csv")
    gapt = summary[(summary.method == "gapt") & (summary.metric == "final/val/mbe")].value
    est = t_interval(list(gapt))
    bars = [tuple(line.get_ydata()) for line in drawn["phases"].axes[1].lines if len(line.get_ydata()) == 2]
    assert any(bar == (pytest.approx(est.low), pytest.approx(est.high)) for bar in bars), bars


def test_a_figure_without_its_data_is_a_clear_error(results):
    config, out = results
    spec = load_report_spec(config).model_copy(
        update={"figures": [figures.FigureSpec(kind="curves", file="x", metrics=["val/nothing"])]}
    )
    with pytest.raises(figures.ConfigError, match="curves.csv.gz has none of the metrics"):
        figures.draw(spec, out)


def test_the_html_report_shows_every_table_and_gives_every_figure_its_own_caption(results, tmp_path, capsys):
    config, out = results
    figures.draw(load_report_spec(config), out)
    assert (
        claims.main(
            [
                str(config),
                "--scale",
                "cpu",
                "--results",
                str(out.parent),
                "--out",
                str(out.parent / "CLAIMS.md"),
            ]
        )
        == 0
    )
    (out / "rq1.png").unlink()
    assert report.main(_report_args(tmp_path)) == 0
    page = (tmp_path / "results" / "cpu" / "report.html").read_text()
    # CLAIMS.md and table.md are rendered into the page, not linked
    tables = sum(line.startswith("|-") for line in (out / "table.md").read_text().splitlines())
    # CLAIMS.md: the plans, then one table per kind of claim
    assert tables == 2 and page.count("<table>") == 4 + tables and "<td>reproduced</td>" in page
    assert (
        "<strong>Figure 1. Curves.</strong> Training and validation CE of <em>every</em> seed." in page
    )  # its own caption
    assert '<figure id="demo-curves"><img alt="Curves" src="data:image/png;base64,' in page
    assert (
        'href="#demo-curves"' in page and "demo/curves.png)" not in page
    )  # a claim's figure link stays in the page
    assert page.count("<figure") == 4 and "missing: " + str(out / "rq1.png") in page
    err = capsys.readouterr().err
    assert f"missing: {out / 'rq1.png'}" in err and "1 experiments, 4 figures" in err
    elsewhere = tmp_path / "a" / "b" / "page.html"  # the PDF links still lead to the figures
    assert report.main([*_report_args(tmp_path), "--out", str(elsewhere)]) == 0
    pdf = re.search(r'<a href="([^"#]+curves\.pdf)">PDF</a>', elsewhere.read_text()).group(1)
    assert (elsewhere.parent / pdf).resolve() == (out / "curves.pdf").resolve()
    assert report.main(["--scale", "gpu1", "--results", str(tmp_path / "results")]) == 2
    assert "make replicate SCALE=gpu1" in capsys.readouterr().err


def test_every_figure_of_every_experiment_has_a_title_and_a_caption():
    from .conftest import REPO

    for path in sorted((REPO / "experiments").glob("*/config.yaml")):
        for figure in load_report_spec(path).figures:
            assert figure.title and len(figure.caption) > 80, (path.parent.name, figure.file)


# -- edges of the statistics that a mutation run found untested ------------------------------------


def test_two_seeds_give_an_interval_and_one_gives_none():
    two = t_interval([1.0, 3.0], null=0.5)
    assert (two.low, two.high) == (
        pytest.approx(2 - 12.706 * 1.0, abs=1e-3),
        pytest.approx(2 + 12.706, abs=1e-3),
    )
    assert two.p == pytest.approx(scipy_stats.ttest_1samp([1.0, 3.0], 0.5).pvalue) and two.null == 0.5
    one = t_interval([2.0], null=0.5)
    assert (one.mean, one.low, one.p, one.n, one.null) == (2.0, None, None, 1, 0.5)
    empty = t_interval([], null=0.5)
    assert math.isnan(empty.mean) and empty.n == 0 and empty.null == 0.5 and empty.format() == "n/a"
    assert t_interval([2.0, 2.0, 2.0], null=1.0).p == pytest.approx(0.25)  # no spread: the sign test
    assert sign_test([1.0]) is None and sign_test([1.0, 2.0]) == pytest.approx(0.5)


def test_the_sign_test_counts_ties_once_whichever_side_is_smaller():
    # 1 above, 7 below, 2 ties: p = 2 P(B(10) <= 1 + 2)
    x = [-5, -4, -3, -2, -1, -6, -7, 0, 0, 1]
    assert sign_test(x) == pytest.approx(2 * scipy_stats.binom.cdf(3, 10, 0.5))
    assert sign_test([v + 1.0 for v in x], null=1.0) == pytest.approx(sign_test(x))  # against another null
    est = median_interval([v + 1.0 for v in x], null=1.0)
    assert (est.null, est.kind, est.n) == (1.0, "robust", 10)
    empty = median_interval([], null=2.0)
    assert math.isnan(empty.mean) and (empty.n, empty.null, empty.kind, empty.low) == (0, 2.0, "robust", None)


def test_paired_values_drop_a_seed_missing_or_non_finite_on_either_side():
    assert paired_values({0: math.nan, 1: 1.0, 2: 4.0, 3: None}, {0: 1.0, 1: 2.0, 2: math.inf, 3: 1.0}) == [
        (1.0, 2.0)
    ]
    with pytest.raises(ValueError, match="positive"):
        paired_change({0: 1.0, 1: 1.0}, {0: 0.0, 1: 1.0}, "relative")  # a zero baseline has no ratio
    one = paired_change({0: 2.0}, {0: 1.0}, "relative")
    assert (one.mean, one.low, one.high, one.n) == (
        pytest.approx(1.0),
        None,
        None,
        1,
    ) and one.format() == "+100.0 % (n=1)"
    with pytest.raises(ValueError, match="unknown change 'ratio'"):
        paired_change({0: 2.0}, {0: 1.0}, "ratio")


def test_at_least_names_its_kind_uses_the_median_when_robust_and_cuts_only_non_negative_data():
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 9.0]
    robust = at_least(values, 1.0, robust=True)
    reference = median_interval(values, null=1.0)
    assert (robust.kind, robust.mean, robust.low, robust.high, robust.p) == (
        "robust_at_least",
        reference.mean,
        reference.low,
        reference.high,
        reference.p,
    )
    assert at_least(values, 1.0).kind == "at_least" and at_least(values, 1.0).null == 1.0
    signed = at_least([-1.0, 0.0, 3.0], 0.0)  # a negative value: the quantity can be negative, no cut
    assert signed.low == pytest.approx(t_interval([-1.0, 0.0, 3.0]).low) and signed.low < 0
    assert at_least([0.0, 0.5, 4.0], 0.0).low == 0.0


def test_verdict_needs_two_seeds_and_holm_caps_at_one():
    single = replace(t_interval([5.0, 6.0]), n=1)
    assert verdict(single, "increase", p=0.001) == "inconclusive"
    assert verdict(t_interval([5.0, 6.0, 7.0]), "increase", p=0.049) == "reproduced"
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert fisher_combined([0.01, None, math.nan]) == pytest.approx(0.01) and fisher_combined([None]) is None


def test_every_kind_formats_as_the_tables_print_it():
    assert (
        paired_change({0: 1.2, 1: 1.1, 2: 1.3}, {0: 1.0, 1: 1.0, 2: 1.0}, "difference")
        .format()
        .startswith("Δ +0.2 [")
    )
    x = {i: float(v) for i, v in enumerate([1, 2, 3, 4, 5, 6, 7])}
    robust = paired_change(x, dict.fromkeys(x, 0.0), "robust_difference").format()
    assert robust == "median +4 [+1, +7] (n=7)"
    assert at_least([1.0, 2.0, 3.0], 0.0).format() == "2 [0, 4.48] (n=3)"


def test_the_remaining_edges_a_second_mutation_pass_found():
    # the interval of a relative change is printed from both of its ends, each x 100
    est = paired_change({0: 3.0, 1: 2.5, 2: 4.0}, {0: 1.0, 1: 1.0, 2: 1.0}, "relative")
    assert est.format() == f"{100 * est.mean:+.1f} % [{100 * est.low:+.1f}, {100 * est.high:+.1f}] (n=3)"
    assert (
        paired_change({0: 1.5}, {0: 1.0}, "difference").format() == "Δ +0.5 (n=1)"
    )  # no interval, no brackets
    # no spread: the sign test against the estimate's own null, which the estimate keeps
    assert (
        t_interval([2.0, 2.0, 2.0], null=1.0).null == 1.0 and t_interval([2.0, 2.0, 2.0], null=2.0).p == 1.0
    )
    assert median_interval([3.0, 1.0, 2.0, 4.0, 5.0, 6.0], null=1.0).p == pytest.approx(
        sign_test([2.0, 0.0, 1.0, 3.0, 4.0, 5.0])
    )
    one = median_interval([5.0])
    assert (one.mean, one.n, one.low, one.p) == (5.0, 1, None, None)
    # two seeds can decide (t with 1 degree of freedom)
    two = t_interval([5.0, 5.1])
    assert two.p < 0.05 and verdict(two, "increase") == "reproduced"


# -- derived statistics declared in the experiment file ------------------------------------------


def test_a_scale_overrides_the_declared_reporting_and_a_mistyped_key_is_named(tmp_path):
    text = (REPO / "experiments/fineweb_pretrain/config.yaml").read_text()
    spec = load_report_spec(REPO / "experiments/fineweb_pretrain/config.yaml")
    assert spec.reporting.rq1.time_constant == 100
    assert spec.reporting_for("smoke").rq1.time_constant == 5
    assert spec.reporting_for("cpu").rq1.time_constant == 29
    assert spec.reporting_for("paper").rq1.time_constant == 100
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("rq1: {time_constant: 29}", "rq1: {time_constnt: 29}"))
    with pytest.raises(
        ConfigError,
        match=r"scales.cpu.reporting: unknown key 'rq1.time_constnt' \(did you mean 'time_constant'\?\)",
    ):
        load_report_spec(path)
    path.write_text(text.replace("reporting:\n  rq1: {time_constant: 100}", "reporting:\n  rq2: {}"))
    with pytest.raises(ConfigError, match=r"unknown key 'reporting.rq2' \(did you mean 'rq1'\?\)"):
        load_report_spec(path)


def test_the_analysis_adds_exactly_the_declared_statistics_from_the_csvs(results):
    """RQ1's statistics are derived from alignment.csv where the experiment file declares them (burn-in
    and detrending as the plan says), and each gated run's median compress-phase length from
    phases.csv; summary.csv itself holds only what the runs wrote."""
    config, out = results
    frames = aggregate.read_tables(out)
    assert not frames["summary"].metric.str.startswith("rq1/").any()
    spec, (plan, _) = load_report_spec(config), load_plan(config.parent / "plan.yaml")
    declared = spec.model_copy(
        update={"reporting": spec.reporting.model_validate({"rq1": {"time_constant": 29}})}
    )
    rows = aggregate.analysis_summary(declared, "cpu", plan, frames)
    rq1 = rows[rows.metric.str.startswith("rq1/")]
    assert set(rq1.method) == {"ce"} and set(rq1.seed) == set(SEEDS)
    # the fake ce runs log alignment at steps 0 and 10: the burn-in of 1 step leaves one point
    assert set(rq1[rq1.metric == "rq1/points"].value) == {1.0}
    no_burn_in = plan.model_copy(update={"rq1": plan.rq1.model_copy(update={"burn_in_steps": 0})})
    both = aggregate.analysis_summary(declared, "cpu", no_burn_in, frames)
    assert set(both[both.metric == "rq1/points"].value) == {2.0}
    assert not aggregate.analysis_summary(spec, "cpu", plan, frames).metric.str.startswith("rq1/").any()
    lengths = rows[rows.metric == "phases/compress_median_steps"]
    assert set(lengths.method) == {"gapt"} and set(lengths.value) == {5.0}  # steps 5 .. 9 of every gapt run


def test_the_html_report_shows_the_scales_study_after_the_experiments(results, tmp_path, capsys):
    config, out = results
    study = out.parent / "study" / "demo"
    study.mkdir(parents=True)
    (study / "README.md").write_text(
        "# Why the demo does what it does (cpu scale, demo)\n\n## Model size\n\n"
        "| method | parameters | change vs ce [95 %] | n |\n| --- | --- | --- | --- |\n"
        "| gapt | 94,229 | +2.4 % [+1.7, +3.1] | 3 |\n\n"
        "![scaling](scaling.png)\n\n![knobs](sensitivity.png)\n"
    )
    (study / "scaling.png").write_bytes(b"\x89PNG scaling")
    assert report.main(_report_args(tmp_path)) == 0
    page = (tmp_path / "results" / "cpu" / "report.html").read_text()
    section = page[page.index('<section id="study-demo">') :]
    assert page.index('<section id="demo">') < page.index(
        '<section id="study-demo">'
    )  # after the experiments
    assert "<h2>Why the demo does what it does (cpu scale, demo)</h2>" in section  # one level below the title
    assert "<td>+2.4 % [+1.7, +3.1]</td>" in section and '<a href="#study-demo">study: demo</a>' in page
    data = base64.b64encode(b"\x89PNG scaling").decode("ascii")
    assert f'<img alt="scaling" src="data:image/png;base64,{data}">' in section  # embedded, not linked
    assert f"missing: {study / 'sensitivity.png'}" in section and "(sensitivity.png)" not in section
    err = capsys.readouterr().err
    assert f"missing: {study / 'sensitivity.png'}" in err and "1 studies" in err
    (study / "README.md").unlink()  # a scale without a study: no section, no link
    assert report.main(_report_args(tmp_path)) == 0
    page = (tmp_path / "results" / "cpu" / "report.html").read_text()
    assert "study-demo" not in page and "0 studies" in capsys.readouterr().err
