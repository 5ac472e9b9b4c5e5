"""Statistics of seeds: means, t intervals, paired relative changes and claim verdicts (PAPER.md 8)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """Mean of n values with a two-sided t interval (None when n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def format(self, digits: int = 3) -> str:
        """'mean [low, high] (n=k)' with significant digits."""
        if self.n == 0:
            return "n/a"
        if self.low is None or self.high is None:
            return f"{self.mean:.{digits}g} (n={self.n})"
        return f"{self.mean:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}] (n={self.n})"

    def format_percent(self) -> str:
        """A relative change as signed percent: '-4.8 % [-6.1, -3.5] (n=3)'."""
        if self.n == 0:
            return "n/a"
        if self.low is None or self.high is None:
            return f"{100 * self.mean:+.1f} % (n={self.n})"
        return f"{100 * self.mean:+.1f} % [{100 * self.low:+.1f}, {100 * self.high:+.1f}] (n={self.n})"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and t interval of finite values; the interval needs at least two of them."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, None, None, 0)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, None, None, n)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
    return Estimate(mean, mean - half, mean + half, n)


def paired_relative_changes(method: dict[int, float], baseline: dict[int, float]) -> list[float]:
    """Per-seed (method - baseline) / |baseline| over the seeds both have, in seed order."""
    changes = []
    for seed in sorted(set(method) & set(baseline)):
        m, b = method[seed], baseline[seed]
        if m is None or b is None or not (math.isfinite(m) and math.isfinite(b)) or b == 0:
            continue
        changes.append((m - b) / abs(b))
    return changes


def verdict_relative(estimate: Estimate, direction: str) -> str:
    """reproduced / opposite / inconclusive for a claimed 'decrease' or 'increase'."""
    if estimate.low is None or estimate.high is None:
        return "inconclusive"
    claimed_below = direction == "decrease"
    if (estimate.high < 0) if claimed_below else (estimate.low > 0):
        return "reproduced"
    if (estimate.low > 0) if claimed_below else (estimate.high < 0):
        return "opposite"
    return "inconclusive"


def verdict_at_least(estimate: Estimate, threshold: float) -> str:
    if estimate.low is None or estimate.high is None:
        return "inconclusive"
    if estimate.low >= threshold:
        return "reproduced"
    if estimate.high < threshold:
        return "opposite"
    return "inconclusive"
