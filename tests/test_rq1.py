import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from replication.config.plan import RQ1Plan
from replication.reporting.rq1 import (
    TEST_PERMUTATIONS,
    alignment_series,
    cycle_statistics,
    exponential_smoothing,
    frame_statistics,
    lag1_autocorrelation,
    persistence_test,
    sign_changes,
    smoothed_sign_changes,
    smoothing_factor,
)


def alignment_records(cos_by_layer, noise, every=10):
    """metrics.jsonl records as the alignment logger writes them, plus unrelated records."""
    records = [{"kind": "event", "event": "start", "step": 0}]
    for i, (row, n) in enumerate(zip(np.asarray(cos_by_layer).T, noise)):
        records.append({"kind": "train", "step": i * every})
        records.append(
            {
                "kind": "alignment",
                "step": i * every,
                "align/layers": [2, 3],
                "align/cos": [None if math.isnan(c) else float(c) for c in row],
                "align/noise_cos": float(n),
            }
        )
    return records


def square_wave(n_points, half_period, amplitude=0.2, noise=0.05, seed=0):
    """A cosine that stays on one side for half_period points, then flips: a cycle."""
    rng = np.random.default_rng(seed)
    signs = np.where((np.arange(n_points) // half_period) % 2 == 0, 1.0, -1.0)
    return amplitude * signs + noise * rng.standard_normal(n_points)


def test_exponential_smoothing_starts_at_the_first_value_and_follows_the_recursion():
    smoothed = exponential_smoothing(np.array([1.0, -1.0, -1.0]), beta=0.5)
    np.testing.assert_allclose(smoothed, [1.0, 0.0, -0.5])


def test_sign_changes_skip_zeros_and_nans_are_dropped_before_smoothing():
    assert sign_changes(np.array([1.0, 0.0, 1.0, -2.0, 0.0, -1.0, 3.0])) == 2
    assert smoothed_sign_changes(np.array([1.0, np.nan, -1.0]), beta=0.0) == 1


def test_smoothing_factor_is_exp_of_minus_spacing_over_time_constant():
    assert smoothing_factor(np.array([0, 10, 20, 30]), time_constant=100.0) == pytest.approx(math.exp(-0.1))


def test_smoothing_removes_point_noise_but_keeps_a_cycle():
    noisy = square_wave(200, half_period=40, noise=0.3)
    assert sign_changes(noisy) > 20  # raw signs flip constantly
    assert smoothed_sign_changes(noisy, beta=0.9) == 4  # the wave flips 4 times in 200 points


def test_cycle_statistics_of_a_cycling_run():
    wave = square_wave(100, half_period=20)  # 4 flips
    cos = np.stack([wave, wave[::-1]])  # two layers
    stats = cycle_statistics(
        alignment_records(cos, noise=np.full(100, 0.3)), time_constant=100.0, plan=RQ1Plan(burn_in_steps=0)
    )
    assert stats["rq1/points"] == 100
    assert stats["rq1/frac_positive"] == pytest.approx(np.mean(cos > 0))
    assert stats["rq1/frac_negative"] == pytest.approx(np.mean(cos < 0))
    assert stats["rq1/min_sign_fraction"] == pytest.approx(min(np.mean(cos > 0), np.mean(cos < 0)))
    assert stats["rq1/sign_changes"] == 4 and stats["rq1/noise_sign_changes"] == 0
    # the cycle persists over 20 points: far more lag-1 autocorrelation than in any random order
    assert stats["rq1/autocorr"] > 0.8 and abs(stats["rq1/autocorr_shuffled"]) < 0.05
    assert stats["rq1/autocorr_p_persistent"] == pytest.approx(
        1 / 1000
    )  # the smallest a 999-permutation test gives
    assert stats["rq1/autocorr_p_alternating"] == 1.0
    assert stats["rq1/shuffled_sign_changes"] > 2 * stats["rq1/sign_changes"]  # the order carries the cycle
    assert stats["rq1/noise_cos_mean"] == pytest.approx(0.3)
    assert stats["rq1/smoothing_beta"] == pytest.approx(math.exp(-0.1))


def test_a_run_aligned_one_way_throughout_shows_no_cycle():
    cos = np.abs(square_wave(60, half_period=10)) + 0.01
    stats = cycle_statistics(alignment_records(np.stack([cos, cos]), noise=np.full(60, 0.5)))
    assert stats["rq1/frac_negative"] == 0 and stats["rq1/min_sign_fraction"] == 0
    assert stats["rq1/sign_changes"] == 0


def test_missing_cosines_are_skipped():
    cos = np.array([[0.1, np.nan, -0.1, -0.2], [0.1, 0.2, np.nan, -0.1]])
    stats = cycle_statistics(
        alignment_records(cos, noise=[0.5, 0.4, 0.5, 0.3]), time_constant=1e-6, plan=RQ1Plan(burn_in_steps=0)
    )
    assert stats["rq1/frac_positive"] == pytest.approx(3 / 6) and stats["rq1/sign_changes"] == 1


def test_records_without_alignment_give_no_statistics():
    assert cycle_statistics([{"kind": "train", "step": 0}]) == {}
    assert alignment_series([]) is None


def test_lag1_autocorrelation_is_the_textbook_formula_per_column():
    x = np.array([[1.0, 4.0], [3.0, -1.0], [2.0, 2.0], [6.0, 0.5]])
    for j in range(2):
        c = x[:, j] - x[:, j].mean()
        assert lag1_autocorrelation(x)[j] == pytest.approx((c[1:] * c[:-1]).sum() / (c * c).sum())
    assert lag1_autocorrelation(np.ones((5, 1)))[0] == 0.0  # a constant series: no dependence, no NaN


def test_permutation_p_values_are_exact_counts_over_one_shared_order_of_the_blocks():
    trend = np.linspace(0, 0.3, 40)[:, None]
    cos = np.stack([square_wave(40, half_period=5, seed=s) for s in range(3)], axis=1) + trend
    t = np.arange(40)
    residuals = np.column_stack([cos[:, j] - np.polyval(np.polyfit(t, cos[:, j], 1), t) for j in range(3)])
    rng = np.random.default_rng(3)
    result = persistence_test(cos, np.random.default_rng(3), n=50)
    # one permutation of the time points per draw, applied to every block alike
    shuffled = np.array([lag1_autocorrelation(residuals[rng.permutation(40)]).mean() for _ in range(50)])
    observed = lag1_autocorrelation(residuals).mean()  # the autocorrelation after the linear trend is removed
    assert result["rq1/autocorr"] == pytest.approx(observed)
    assert result["rq1/autocorr_shuffled"] == pytest.approx(shuffled.mean())
    assert result["rq1/autocorr_p_persistent"] == pytest.approx((1 + np.sum(shuffled >= observed)) / 51)
    assert result["rq1/autocorr_p_alternating"] == pytest.approx((1 + np.sum(shuffled <= observed)) / 51)
    assert persistence_test(cos[:3], rng) is None  # too few points for a test


# The level of the permutation tests. Under the null (no serial dependence) a correct test rejects
# with probability at most LEVEL: with PERMUTATIONS = 99, p = (1 + #{shuffled at least as extreme}) /
# 100 is at most 0.05 for at most 5 of the 100 equally likely ranks of the observed statistic. The
# rejections in TRIALS independent trials are then Binomial(TRIALS, <= LEVEL), and a correct test
# leaves the bounds below with probability under 2e-6 whatever its random stream; a wrong null
# leaves them for good.
LEVEL, TRIALS, PERMUTATIONS = 0.05, 500, 99
LOW, HIGH = scipy_stats.binom.ppf(1e-6, TRIALS, LEVEL), scipy_stats.binom.isf(1e-6, TRIALS, LEVEL)
TESTS = ("rq1/autocorr_p_persistent", "rq1/sign_runs_p_persistent")


def _rejections(series, seed: int) -> dict[str, int]:
    """How often each test rejects at LEVEL over TRIALS series drawn by ``series(rng)``."""
    rng = np.random.default_rng(seed)
    found = dict.fromkeys(TESTS, 0)
    for _ in range(TRIALS):
        result = persistence_test(series(rng), rng, n=PERMUTATIONS)
        for key in TESTS:
            found[key] += result[key] <= LEVEL
    return found


def co_moving(rng, points: int = 60, blocks: int = 8, spread: float = 0.2):
    """Blocks that move together (one shared value a point, as the real cosines at a step), with no
    serial dependence: every point independent of the others."""
    return rng.standard_normal((points, 1)) + spread * rng.standard_normal((points, blocks))


def test_the_null_keeps_its_level_on_blocks_that_move_together():
    """A null that shuffled each block on its own would average out the blocks' common movement,
    shrinking the spread of the shuffled mean and rejecting far more often than LEVEL (about 19 % on
    8 co-moving blocks); one shared order keeps the movement in the null."""
    assert 2 * scipy_stats.binom.cdf(HIGH, TRIALS, 0.19) < 1e-6  # such a null cannot pass
    for key, count in _rejections(co_moving, seed=0).items():
        assert LOW <= count <= HIGH, (key, count, (LOW, HIGH))


def test_the_null_keeps_its_level_on_independent_blocks_and_detects_a_shared_persistence():
    for key, count in _rejections(lambda rng: rng.standard_normal((60, 3)), seed=1).items():
        assert LOW <= count <= HIGH, (key, count, (LOW, HIGH))

    def persistent(rng):  # each block's sign holds for 6 points at a time, at a random phase
        phase = rng.integers(12)
        signs = np.where(((np.arange(60) + phase) // 6) % 2 == 0, 1.0, -1.0)[:, None]
        return 0.3 * signs + 0.5 * rng.standard_normal((60, 3))

    found = _rejections(persistent, seed=2)
    assert all(count > TRIALS / 2 for count in found.values()), found  # a test with power, not a constant


def test_strict_alternation_is_the_opposite_of_persistence():
    rng = np.random.default_rng(0)
    flipping = np.tile([0.2, -0.2], 30).reshape(-1, 1) + 0.01 * rng.standard_normal((60, 1))
    result = persistence_test(flipping, rng)
    assert result["rq1/autocorr"] < -0.9 and result["rq1/autocorr_p_alternating"] == pytest.approx(
        1 / (1 + TEST_PERMUTATIONS)
    )
    assert result["rq1/autocorr_p_persistent"] == 1.0


def test_a_cosine_that_only_drifts_is_not_persistence():
    # one sign all along, falling from 1 to 0.2: no cycle, and no persistence once the line is removed
    rng = np.random.default_rng(5)
    drift = np.linspace(1.0, 0.2, 80)[:, None] + 0.05 * rng.standard_normal((80, 2))
    result = persistence_test(drift, rng)
    assert lag1_autocorrelation(drift).mean() > 0.8  # without detrending it would look persistent
    assert result["rq1/autocorr_p_persistent"] > 0.05 and abs(result["rq1/autocorr"]) < 0.3


def test_the_burn_in_drops_the_points_before_it():
    cos = np.stack([square_wave(40, 5, seed=1), square_wave(40, 5, seed=2)])
    records = alignment_records(cos, noise=np.full(40, 0.3))
    kept = cycle_statistics(records, time_constant=50.0, plan=RQ1Plan(burn_in_steps=25))
    later = [r for r in records if r.get("step", 0) >= 25 or r["kind"] != "alignment"]
    assert kept["rq1/points"] == 37  # steps 30 .. 390
    assert kept == cycle_statistics(later, time_constant=50.0, plan=RQ1Plan(burn_in_steps=0))


def test_the_runs_test_counts_sign_changes_against_the_same_shared_permutations():
    rng = np.random.default_rng(5)
    cos = rng.standard_normal((30, 3))
    result = persistence_test(cos, np.random.default_rng(3), n=50)
    replay = np.random.default_rng(3)
    orders = [replay.permutation(30) for _ in range(50)]
    changes = lambda x: np.mean([sign_changes(x[:, j]) for j in range(3)])  # noqa: E731
    shuffled = np.array([changes(cos[order]) for order in orders])
    observed = changes(cos)
    assert result["rq1/sign_runs"] == observed
    assert result["rq1/sign_runs_shuffled"] == pytest.approx(shuffled.mean())
    assert result["rq1/sign_runs_p_persistent"] == pytest.approx((1 + np.sum(shuffled <= observed)) / 51)
    assert result["rq1/sign_runs_p_alternating"] == pytest.approx((1 + np.sum(shuffled >= observed)) / 51)
    # a square wave keeps its sign for 5 points at a time: far fewer changes than in random order
    wave = np.stack([square_wave(60, 5, noise=0.01, seed=s) for s in range(3)], axis=1)
    assert persistence_test(wave, np.random.default_rng(0))["rq1/sign_runs_p_persistent"] < 0.01


def test_without_detrending_a_drift_passes_as_persistence():
    drift = np.linspace(-1, 1, 50)[:, None] + 0.05 * np.random.default_rng(0).standard_normal((50, 2))
    assert (
        persistence_test(drift, np.random.default_rng(1), detrend="none")["rq1/autocorr_p_persistent"] < 0.01
    )
    assert persistence_test(drift, np.random.default_rng(1))["rq1/autocorr_p_persistent"] > 0.05


def test_the_csv_rows_give_the_statistics_of_the_records_they_were_written_from():
    cos = np.stack([square_wave(30, 4, seed=3), square_wave(30, 6, seed=4)])
    records = alignment_records(cos, noise=np.linspace(0.1, 0.4, 30))
    rows = [
        {
            "method": "ce",
            "seed": 7,
            "step": r["step"],
            "layer": layer,
            "cos": c,
            "noise_cos": r["align/noise_cos"],
        }
        for r in records
        if r["kind"] == "alignment"
        for layer, c in zip(r["align/layers"], r["align/cos"])
    ]
    frame = frame_statistics(pd.DataFrame(rows), time_constant=40.0, plan=RQ1Plan())
    expected = cycle_statistics(records, time_constant=40.0, seed=7, plan=RQ1Plan())
    assert dict(zip(frame.metric, frame.value)) == pytest.approx(expected)
    assert set(frame.seed) == {7} and set(frame.method) == {"ce"}
