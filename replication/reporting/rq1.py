"""RQ1 statistics: does plain CE training alternate between memorization and compression?

The alignment logger (``replication.training.alignment``) records, every k optimizer steps of a ``ce`` run,
the cosine between the CE gradient and the gradient of each middle layer's MBE, and a noise
baseline: the cosine between the CE gradients of two different micro-batches. A positive cosine
means that a CE descent step also lowers that layer's MBE (compression); a negative one, that it
raises it (memorization). docs/SPEC.md section 4 asks for:

- the fractions of logged points with cosine > 0 and < 0 (pooled over layers and points);
- the number of sign changes of an exponentially smoothed series, s_t = beta s_(t-1) + (1 - beta) x_t
  with s_0 = x_0, counted per layer and averaged over layers. beta = exp(-k / tau) for points k
  optimizer steps apart and a time constant of tau optimizer steps (docs/SPEC.md leaves the smoothing
  open; tau = 100 at the paper's 1750 steps, 0.8 of the GAPT patience, scaled with the run
  length like the patiences), so beta is 0.905 at the paper's k = 10;
- the same count on the noise baseline series: were the CE gradient of one micro-batch dominated by
  mini-batch noise, the cosine between the CE gradients of two micro-batches would hover around
  zero and change sign as well.

Also reported, as context for the counts: the count expected with the same cosines in random order
(no temporal structure; mean over seeded permutations). Cycles show as fewer smoothed sign changes
than that, yet at least a few.

The test of persistence (claim C1) is a permutation test of serial dependence: each block's
(unsmoothed) cosine series is detrended by its least-squares line over the logged points, and the
statistic is the lag-1 autocorrelation of the residuals, averaged over blocks. Its null distribution
comes from reordering the residuals at random, the same order for every block so that the blocks'
dependence on each other is kept. Phases that persist over several logged points raise the
autocorrelation above the shuffled values (``rq1/autocorr_p_persistent``, one-sided,
(1 + #{shuffled >= observed}) / (1 + permutations)); a series that flips more often than chance
lowers it (``rq1/autocorr_p_alternating``). Detrending keeps a slow monotone drift of the cosine,
which is no cycle, from passing as persistence; a curved drift can still pass, which is why the
cycles also need the sign changes of C1b. The noise baseline is reported, but no verdict rests on
it: at small scale the two CE gradients agree so well that it never changes sign.

Beside it, the runs test on the signs, which is what "phases" asks literally: the statistic is the
number of sign changes of each block's (unsmoothed) cosine, averaged over blocks, against the same
cosines reordered by the same shared permutations; fewer changes than in random order is persistence
(``rq1/sign_runs_p_persistent``). Which points count and whether the series are detrended is the
experiment's analysis plan (``replication.config.plan.RQ1Plan``): points before its burn-in are
dropped first (the cosine at step 0 is 0 by construction).

The statistics are computed from the alignment records of a run (metrics.jsonl) or, identically,
from the rows of ``alignment.csv`` that aggregation writes (``frame_statistics``), so that the claims
can be judged again from the committed CSVs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import signal

from replication.config.plan import RQ1Plan
from replication.config.report import DEFAULT_TIME_CONSTANT

PERMUTATIONS = 200  # for the expected sign-change count
TEST_PERMUTATIONS = 999  # for the permutation test


@dataclass(frozen=True)
class AlignmentSeries:
    steps: np.ndarray  # (n,) optimizer step of each logged point
    layers: list[int]  # the block index of each column of ``cos``
    cos: np.ndarray  # (n, n_layers) cos(grad CE, grad MBE_l); NaN where a gradient was zero
    noise: np.ndarray  # (n,) cos(grad CE on micro-batch 0, grad CE on micro-batch 1)


def alignment_series(records: list[dict[str, Any]]) -> AlignmentSeries | None:
    """The alignment records of a run's metrics.jsonl as arrays; None when there are none."""
    points = sorted((r for r in records if r.get("kind") == "alignment"), key=lambda r: r["step"])
    if not points:
        return None
    layers = list(points[0]["align/layers"])
    if any(list(p["align/layers"]) != layers for p in points):
        raise ValueError("alignment records disagree on the layers they cover")

    def number(value: Any) -> float:
        return np.nan if value is None else float(value)

    cos = np.array([[number(c) for c in p["align/cos"]] for p in points], dtype=np.float64)
    noise = np.array([number(p["align/noise_cos"]) for p in points], dtype=np.float64)
    return AlignmentSeries(np.array([p["step"] for p in points]), layers, cos.reshape(len(points), -1), noise)


def smoothing_factor(steps: np.ndarray, time_constant: float) -> float:
    """beta = exp(-k / tau) for the median spacing k of the logged steps."""
    spacing = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    return float(np.exp(-spacing / time_constant))


def exponential_smoothing(values: np.ndarray, beta: float) -> np.ndarray:
    """s_0 = x_0, s_t = beta s_(t-1) + (1 - beta) x_t over the finite values, in order."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    smoothed = np.empty_like(values)
    state = values[0] if values.size else 0.0
    for i, value in enumerate(values):
        state = beta * state + (1.0 - beta) * value
        smoothed[i] = state
    return smoothed


def sign_changes(values: np.ndarray) -> int:
    """How often consecutive non-zero values differ in sign (zeros are skipped)."""
    signs = np.sign(np.asarray(values, dtype=np.float64))
    signs = signs[signs != 0]
    return int(np.count_nonzero(signs[1:] != signs[:-1]))


def smoothed_sign_changes(values: np.ndarray, beta: float) -> int:
    return sign_changes(exponential_smoothing(values, beta))


def shuffled_sign_changes(
    values: np.ndarray, beta: float, rng: np.random.Generator, n: int = PERMUTATIONS
) -> float:
    """Mean smoothed sign changes of the same finite values in random orders."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return 0.0
    return float(np.mean([smoothed_sign_changes(rng.permutation(values), beta) for _ in range(n)]))


def lag1_autocorrelation(values: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each column of (n, k) values: sum (x_t - m)(x_t+1 - m) / sum (x_t - m)^2."""
    x = np.asarray(values, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    denominator = np.square(centred).sum(axis=0)
    numerator = (centred[1:] * centred[:-1]).sum(axis=0)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _one_sided(observed: float, shuffled: np.ndarray) -> tuple[float, float]:
    """(1 + #{shuffled >= observed}) / (1 + n) and (1 + #{shuffled <= observed}) / (1 + n)."""
    n = len(shuffled)
    return float((1 + np.sum(shuffled >= observed)) / (1 + n)), float(
        (1 + np.sum(shuffled <= observed)) / (1 + n)
    )


def _mean_sign_changes(cos: np.ndarray) -> float:
    return float(np.mean([sign_changes(cos[:, j]) for j in range(cos.shape[1])]))


def persistence_test(
    cos: np.ndarray, rng: np.random.Generator, n: int = TEST_PERMUTATIONS, detrend: str = "linear"
) -> dict[str, float] | None:
    """The permutation tests of serial dependence on (points, blocks) cosines: the lag-1
    autocorrelation of the (detrended) series and, on the same permutations, the runs test on the
    signs of the series as logged. Rows with a non-finite value are dropped first. None with fewer
    than 4 complete points."""
    complete = cos[np.all(np.isfinite(cos), axis=1)]
    if len(complete) < 4:
        return None
    residuals = signal.detrend(complete, axis=0, type="linear") if detrend == "linear" else complete
    observed = float(lag1_autocorrelation(residuals).mean())
    observed_changes = _mean_sign_changes(complete)
    orders = [rng.permutation(len(complete)) for _ in range(n)]
    shuffled = np.array([lag1_autocorrelation(residuals[order]).mean() for order in orders])
    shuffled_changes = np.array([_mean_sign_changes(complete[order]) for order in orders])
    p_persistent, p_alternating = _one_sided(observed, shuffled)
    fewer, more = _one_sided(observed_changes, shuffled_changes)
    return {
        "rq1/autocorr": observed,  # of the detrended series
        "rq1/autocorr_shuffled": float(shuffled.mean()),
        "rq1/autocorr_p_persistent": p_persistent,
        "rq1/autocorr_p_alternating": p_alternating,
        "rq1/sign_runs": observed_changes,  # sign changes of the raw cosine, mean over blocks
        "rq1/sign_runs_shuffled": float(shuffled_changes.mean()),
        "rq1/sign_runs_p_persistent": more,  # fewer changes than in random order
        "rq1/sign_runs_p_alternating": fewer,
    }


def cycle_statistics(
    records: list[dict[str, Any]],
    *,
    time_constant: float = DEFAULT_TIME_CONSTANT,
    seed: int = 0,
    plan: RQ1Plan | None = None,
) -> dict[str, float]:
    """RQ1 headline numbers of one run, keys 'rq1/...'; empty when the run logged no alignment."""
    series = alignment_series(records)
    return (
        {} if series is None else series_statistics(series, time_constant=time_constant, seed=seed, plan=plan)
    )


def series_statistics(
    series: AlignmentSeries, *, time_constant: float, seed: int, plan: RQ1Plan | None = None
) -> dict[str, float]:
    """RQ1 headline numbers of one run's alignment series, after the plan's burn-in (default: RQ1Plan's)."""
    plan = plan or RQ1Plan()
    kept = series.steps >= plan.burn_in_steps
    series = AlignmentSeries(series.steps[kept], series.layers, series.cos[kept], series.noise[kept])
    if len(series.steps) == 0:
        return {}
    smoothing = smoothing_factor(series.steps, time_constant)
    cos = series.cos[np.isfinite(series.cos)]
    if cos.size == 0:
        return {"rq1/points": float(len(series.steps))}
    frac_positive = float(np.mean(cos > 0))
    frac_negative = float(np.mean(cos < 0))
    per_layer = [smoothed_sign_changes(series.cos[:, j], smoothing) for j in range(len(series.layers))]
    rng = np.random.default_rng(seed)
    shuffled = [shuffled_sign_changes(series.cos[:, j], smoothing, rng) for j in range(len(series.layers))]
    noise_changes = smoothed_sign_changes(series.noise, smoothing)
    noise = series.noise[np.isfinite(series.noise)]
    test = persistence_test(series.cos, np.random.default_rng([seed, 1]), detrend=plan.detrend) or {}
    return {
        **test,
        "rq1/points": float(len(series.steps)),
        "rq1/smoothing_beta": smoothing,
        "rq1/frac_positive": frac_positive,
        "rq1/frac_negative": frac_negative,
        "rq1/min_sign_fraction": min(frac_positive, frac_negative),
        "rq1/sign_changes": float(np.mean(per_layer)),
        "rq1/sign_changes_min_layer": float(np.min(per_layer)),
        "rq1/noise_sign_changes": float(noise_changes),
        "rq1/shuffled_sign_changes": float(np.mean(shuffled)),
        "rq1/abs_cos_mean": float(np.mean(np.abs(cos))),
        "rq1/noise_cos_mean": float(np.mean(noise)) if noise.size else float("nan"),
    }


def frame_statistics(alignment: pd.DataFrame, *, time_constant: float, plan: RQ1Plan) -> pd.DataFrame:
    """RQ1's statistics of every run in ``alignment.csv`` rows, as summary.csv rows (method, seed,
    metric, value); each run's permutations are seeded by its seed, as ``cycle_statistics``'s."""
    rows = []
    for (method, seed), run in alignment.groupby(["method", "seed"], sort=True):
        wide = run.pivot_table(index="step", columns="layer", values="cos", dropna=False, aggfunc="first")
        noise = run.groupby("step").noise_cos.first().reindex(wide.index)
        series = AlignmentSeries(
            wide.index.to_numpy(),
            [int(c) for c in wide.columns],
            wide.to_numpy(dtype=np.float64),
            noise.to_numpy(dtype=np.float64),
        )
        found = series_statistics(series, time_constant=time_constant, seed=int(seed), plan=plan)
        rows += [
            {"method": method, "seed": int(seed), "metric": k, "value": v}
            for k, v in found.items()
            if np.isfinite(v)
        ]
    return pd.DataFrame(rows, columns=["method", "seed", "metric", "value"])
