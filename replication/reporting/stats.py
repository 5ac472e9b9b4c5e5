"""Statistics of seeds: paired changes with intervals fit to the quantity, verdicts, multiplicity
(docs/SPEC.md section 8).

Every comparison is paired: seed s of a method against seed s of its baseline (same data, same
initialization). What is estimated depends on the quantity:

- ``relative`` (a positive quantity: CE, MBE, separation ratio): the per-seed log ratio
  log(method / baseline), its mean with a t interval, mapped back as exp(.) - 1. The result is the
  geometric-mean relative change, and its interval can never pass -100 %.
- ``difference`` (a quantity whose baseline can be near zero, where a ratio means nothing): the
  per-seed difference method - baseline, its mean with a t interval.
- ``robust_difference`` (heavy-tailed paired quantities: interference, alleviation %): the per-seed
  difference, its median with the distribution-free order-statistic interval of the sign test
  (coverage >= 95 % whatever the distribution; none exists below 6 seeds) and the exact sign test,
  ties with the null counted against rejection.
- ``at_least`` (one method's values against a threshold, e.g. alleviation % against 0): the mean with
  a t interval, cut at 0 when no value is negative (a count, a fraction: cutting keeps the coverage);
  ``robust_at_least`` the same with the median and the sign test. The test is of a mean (median)
  above the threshold: values sitting exactly at it read inconclusive. A condition every run must
  meet is ``runs_at_least``: how many runs reach the threshold, not their mean.
- ``equivalence``: two one-sided tests (TOST) of whether a paired effect lies within a smallest
  effect of interest.

Each estimate carries a two-sided p-value against its null (0 change, or the threshold) from the
test the interval inverts, so an interval that excludes the null and p < 0.05 are the same event.
Seeds with no spread at all leave the t test undefined; the sign test decides then (all n values
on one side: p = 2 / 2^n), and no interval is printed.
A verdict is *reproduced* when p < 0.05 with the estimate on the claimed side, *opposite* when
p < 0.05 on the other side, *inconclusive* otherwise (and always with fewer than two seeds).
``holm`` adjusts a family of p-values (Holm 1979) for the multiplicity-corrected verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
CHANGES = ("relative", "difference", "robust_difference")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval (None when it cannot be formed), n and a two-sided p-value
    against ``null``. ``kind`` says how it was made (one of the module docstring's names)."""

    mean: float  # the point estimate: a mean, a geometric-mean relative change, or a median
    low: float | None
    high: float | None
    n: int
    p: float | None = None
    null: float = 0.0
    kind: str = "mean"

    @property
    def percent(self) -> bool:
        return self.kind == "relative"

    def format(self, digits: int = 3) -> str:
        """'mean [low, high] (n=k)'; a relative change as signed percent; a median says so."""
        if self.n == 0:
            return "n/a"
        if self.percent:
            body = f"{100 * self.mean:+.1f} %"
            interval = "" if self.low is None else f" [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"
        else:
            sign = "+" if self.kind in ("difference", "robust_difference") else ""
            body = f"{self.mean:{sign}.{digits}g}"
            interval = (
                "" if self.low is None else f" [{self.low:{sign}.{digits}g}, {self.high:{sign}.{digits}g}]"
            )
        prefix = "median " if self.kind.startswith("robust") else ("Δ " if self.kind == "difference" else "")
        return f"{prefix}{body}{interval} (n={self.n})"


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def t_interval(values: Sequence[float | None], confidence: float = CONFIDENCE, null: float = 0.0) -> Estimate:
    """Mean and t interval of the finite values, with the one-sample t test against ``null``.

    Values with no spread at all (every seed the same) leave the t statistic undefined: no interval,
    and the sign test's p-value (``sign_test``), so that 3 identical seeds are not a certainty."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, None, None, 0, None, null)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, None, None, n, None, null)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
    if sem == 0:
        return Estimate(mean, None, None, n, sign_test(x, null), null)
    p = float(2 * stats.t.sf(abs(mean - null) / sem, df=n - 1))
    return Estimate(mean, mean - half, mean + half, n, p, null)


def sign_test(values: Sequence[float], null: float = 0.0) -> float | None:
    """Two-sided exact sign test of the median against ``null``, ties counted against rejection:
    p = 2 P(Binomial(n, 1/2) <= min(#above, #below) + #ties), at most 1. It rejects at level alpha
    exactly when the order-statistic interval of ``median_interval`` excludes ``null``."""
    x = _finite(values)
    n = len(x)
    if n < 2:
        return None
    ties = int(np.sum(x == null))
    smaller = min(int(np.sum(x > null)), int(np.sum(x < null))) + ties
    return float(min(1.0, 2 * stats.binom.cdf(smaller, n, 0.5)))


def median_interval(
    values: Sequence[float | None], confidence: float = CONFIDENCE, null: float = 0.0
) -> Estimate:
    """Median with the order-statistic interval [x_(k), x_(n-k+1)] of the sign test (distribution-free,
    coverage 1 - 2 P(Binomial(n, 1/2) <= k - 1) >= ``confidence``) and ``sign_test`` against ``null``.
    No interval exists for n < 6 at 95 %."""
    x = np.sort(_finite(values))
    n = len(x)
    if n == 0:
        return Estimate(math.nan, None, None, 0, None, null, "robust")
    median = float(np.median(x))
    k = 0
    while k + 1 <= n // 2 and stats.binom.cdf(k, n, 0.5) <= (1 - confidence) / 2:
        k += 1  # after the loop: the largest k with P(B <= k - 1) <= alpha / 2
    low, high = (float(x[k - 1]), float(x[n - k])) if k >= 1 else (None, None)
    return Estimate(median, low, high, n, sign_test(x, null), null, "robust")


def paired_values(method: dict[int, float], baseline: dict[int, float]) -> list[tuple[float, float]]:
    """(method, baseline) of every seed both have with finite values, in seed order."""
    pairs = []
    for seed in sorted(set(method) & set(baseline)):
        m, b = method[seed], baseline[seed]
        if m is not None and b is not None and math.isfinite(m) and math.isfinite(b):
            pairs.append((float(m), float(b)))
    return pairs


def paired_change(method: dict[int, float], baseline: dict[int, float], how: str = "relative") -> Estimate:
    """The paired change of ``method`` against ``baseline``, as the module docstring defines ``how``.

    ``relative`` needs every paired value to be positive; otherwise ValueError (name the quantity's
    change ``difference`` instead)."""
    pairs = paired_values(method, baseline)
    if how == "relative":
        if any(m <= 0 or b <= 0 for m, b in pairs):
            raise ValueError("a relative change needs positive values on both sides; use a difference")
        logs = t_interval([math.log(m / b) for m, b in pairs])
        back = lambda v: None if v is None else math.expm1(v)  # noqa: E731
        return replace(
            logs,
            mean=math.expm1(logs.mean) if logs.n else math.nan,
            low=back(logs.low),
            high=back(logs.high),
            kind="relative",
        )
    differences = [m - b for m, b in pairs]
    if how == "difference":
        return replace(t_interval(differences), kind="difference")
    if how == "robust_difference":
        return replace(median_interval(differences), kind="robust_difference")
    raise ValueError(f"unknown change {how!r}; one of {CHANGES}")


def at_least(values: Sequence[float | None], threshold: float, robust: bool = False) -> Estimate:
    """Values of one method against a threshold: mean and t interval, or median and sign-test
    interval; the interval is cut at 0 when no value is negative (a count, a fraction)."""
    estimate = median_interval(values, null=threshold) if robust else t_interval(values, null=threshold)
    if estimate.low is not None and estimate.low < 0 <= min(_finite(values), default=0.0):
        estimate = replace(estimate, low=0.0)
    return replace(estimate, kind="robust_at_least" if robust else "at_least")


def per_seed_effects(method: dict[int, float], baseline: dict[int, float], how: str) -> list[float]:
    """The per-seed values ``paired_change`` summarizes: log ratios for ``relative``, differences
    otherwise."""
    pairs = paired_values(method, baseline)
    if how == "relative":
        return [math.log(m / b) for m, b in pairs]
    return [m - b for m, b in pairs]


def equivalence(effects: Sequence[float], sesoi: float, how: str) -> float | None:
    """The p-value of two one-sided tests (TOST) that the paired effect lies within the smallest
    effect of interest: -sesoi < effect < +sesoi (a relative change: log(1 - sesoi) < mean log ratio
    < log(1 + sesoi)). Each side is scipy's one-sided t test (``robust_difference``: the exact sign
    test, ties counted against rejection, as for seeds with no spread); the larger p decides. None below
    2 seeds."""
    x = _finite(effects)
    if len(x) < 2:
        return None
    low, high = (math.log1p(-sesoi), math.log1p(sesoi)) if how == "relative" else (-sesoi, sesoi)
    if how == "robust_difference" or float(x.std(ddof=1)) == 0:  # no spread: the sign tests, as t_interval
        above = stats.binomtest(int(np.sum(x > low)), len(x), 0.5, alternative="greater").pvalue
        below = stats.binomtest(int(np.sum(x < high)), len(x), 0.5, alternative="greater").pvalue
    else:
        above = stats.ttest_1samp(x, low, alternative="greater").pvalue
        below = stats.ttest_1samp(x, high, alternative="less").pvalue
    return float(max(above, below))


def runs_at_least(values: Sequence[float | None], threshold: float) -> tuple[int, int]:
    """(how many of the finite values reach ``threshold``, how many there are): a per-run condition."""
    x = _finite(values)
    return int(np.sum(x >= threshold)), len(x)


def verdict(estimate: Estimate, direction: str, p: float | None = None, alpha: float = ALPHA) -> str:
    """reproduced / opposite / inconclusive for a claimed 'decrease' or 'increase' of the estimate
    against its null (for a threshold claim, 'increase': at least the threshold). ``p`` replaces the
    estimate's own p-value (a multiplicity-adjusted one)."""
    p = estimate.p if p is None else p
    if p is None or not math.isfinite(p) or p >= alpha or estimate.n < 2 or estimate.mean == estimate.null:
        return "inconclusive"
    above = estimate.mean > estimate.null
    return "reproduced" if above == (direction == "increase") else "opposite"


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of one family, in the input order (None stays None and is
    not counted in the family)."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def fisher_combined(pvalues: Sequence[float]) -> float | None:
    """Fisher's combination of independent p-values (one per seed): scipy.stats.combine_pvalues."""
    finite = [p for p in pvalues if p is not None and math.isfinite(p)]
    if not finite:
        return None
    return float(stats.combine_pvalues(finite, method="fisher").pvalue)


def t_errorbar(values: Sequence[float]) -> tuple[float, float]:
    """The mean's 95 % t interval as seaborn's ``errorbar`` callable (the point itself for n < 2 or no
    spread): figures draw the t interval of ``t_interval``, not seaborn's bootstrap."""
    estimate = t_interval(list(values))
    if estimate.low is None:
        return (estimate.mean, estimate.mean)
    return (estimate.low, estimate.high)
