"""The power analysis behind experiment 3's seed count at the cpu scale (its plan.yaml).

    python -m benchmarks.power [--seeds 1000 1020] [--runs scratch/pilot] [--out results/benchmarks]

trains a pilot of experiment 3 at the cpu scale on seeds the experiment never uses (1000-1019 by
default; every method, the paper's protocol, 2 processes, about 15 minutes on 2 cores), then asks how
many seeds each primary interference claim needs. Interference is judged by the sign test of the
paired differences (method minus baseline, same seed). For each comparison the pilot's differences,
centred on their median and moved to the smallest effect of interest (-0.075, the plan's sesoi), are
resampled n at a time (an exact 0, a tie, stays 0 and the sign test drops it); the power at n is the
share of 4000 resamples whose two-sided sign test rejects at alpha = 0.05 / 14, the strictest level
Holm's procedure applies to the 14 primary claims. Writes power_forgetting.json: per comparison, the
power at each n tried, the smallest n reaching 0.8, and the share of moved differences below 0 with
its Clopper-Pearson interval: with 20 pilot seeds that share, and so the n it needs, is known only
roughly. Separation (a relative change with a t interval) needs far fewer seeds and is not the limit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from benchmarks.common import write_result
from replication.config.run import load_experiment

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "forgetting_separation" / "config.yaml"
METHODS = list(load_experiment(EXPERIMENT).methods)  # gated methods before their controls
# the primary interference claims of the plan: (method, baseline)
COMPARISONS = [
    ("gapt", "ce"),
    ("gapt_joint", "ce"),
    ("gapt_smoothed", "ce"),
    ("gapt", "ce_mbe"),
    ("gapt", "gapt_matched"),
    ("gapt_joint", "gapt_joint_matched"),
    ("gapt_smoothed", "gapt_smoothed_matched"),
]
SESOI, ALPHA, TARGET, DRAWS = 0.075, 0.05 / 14, 0.8, 4000
SIZES = (30, 60, 80, 100, 120, 150, 200, 300)


def train_pilot(seeds: range, runs: Path) -> None:
    """Every method of every pilot seed, gated runs before their controls; two processes."""
    code = f"""
import sys
from pathlib import Path
from replication.config.run import resolve_run_config, validate_run_config
from replication.science.methods import METHODS
from replication.training.configure import matched_schedule
from replication.training.train import train
runs, experiment = Path(sys.argv[1]), sys.argv[2]
for seed in map(int, sys.argv[3:]):
    for method in {METHODS!r}:
        config = resolve_run_config(experiment, "cpu", method, seed)
        if METHODS[method].matches:
            schedule = matched_schedule(config, runs / METHODS[method].matches / f"seed{{seed}}")
            config = validate_run_config({{**config.to_dict(), "schedule": schedule.model_dump(mode="json")}})
        train(config, runs / method / f"seed{{seed}}", show_progress=False)
"""
    halves = [list(seeds)[0::2], list(seeds)[1::2]]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(runs), str(EXPERIMENT), *map(str, half)],
            stderr=subprocess.DEVNULL,
        )
        for half in halves
    ]
    if any(w.wait() for w in workers):
        raise SystemExit("a pilot run failed: run it alone to see why")


def interference(runs: Path, method: str, seeds: range) -> np.ndarray:
    return np.array(
        [
            json.loads((runs / method / f"seed{s}" / "summary.json").read_text())["metrics"][
                "forgetting/interference"
            ]
            for s in seeds
        ]
    )


def power(differences: np.ndarray, n: int, rng: np.random.Generator) -> float:
    """The sign test's power at n seeds, resampling the pilot's differences moved to -SESOI; a pilot
    difference of exactly 0 (a method that never compressed where it mattered, so identical to its
    baseline) stays a tie, which the sign test drops."""
    moved = np.where(differences == 0, 0.0, differences - np.median(differences) - SESOI)
    draws = rng.choice(moved, size=(DRAWS, n))
    below, nonzero = (draws < 0).sum(axis=1), (draws != 0).sum(axis=1)
    return float(
        np.mean(
            [m > 0 and stats.binomtest(int(k), int(m), 0.5).pvalue < ALPHA for k, m in zip(below, nonzero)]
        )
    )


def share_below(differences: np.ndarray) -> tuple[float, float, float]:
    """The share of the moved pilot differences below 0 among the non-ties, with its Clopper-Pearson
    95 % interval: 20 pilot seeds know it only to about +-0.2, and the seeds needed with it."""
    moved = differences[differences != 0] - np.median(differences) - SESOI
    k, m = int((moved < 0).sum()), len(moved)
    interval = stats.binomtest(k, m).proportion_ci(method="exact")
    return k / m, interval.low, interval.high


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.power", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs=2, type=int, default=[1000, 1020], metavar=("FIRST", "END"))
    parser.add_argument("--runs", type=Path, default=Path("scratch/pilot"))
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args(argv)
    seeds = range(*args.seeds)
    train_pilot(seeds, args.runs)
    rng = np.random.default_rng(0)
    result: dict = {
        "pilot_seeds": [seeds.start, seeds.stop],
        "sesoi": SESOI,
        "alpha": ALPHA,
        "comparisons": {},
    }
    for method, baseline in COMPARISONS:
        d = interference(args.runs, method, seeds) - interference(args.runs, baseline, seeds)
        by_n = {n: power(d, n, rng) for n in SIZES}
        enough = next((n for n, p in by_n.items() if p >= TARGET), None)
        share, low, high = share_below(d)
        result["comparisons"][f"{method} vs {baseline}"] = {
            "pilot_median": float(np.median(d)),
            "pilot_ties": int((d == 0).sum()),
            "share_below": [share, low, high],
            "pilot_iqr": float(np.subtract(*np.percentile(d, [75, 25]))),
            "power": by_n,
            "n_for_80_percent": enough,
        }
        print(
            f"{method} vs {baseline}: median {np.median(d):+.4f}, share below {share:.2f} "
            f"[{low:.2f}, {high:.2f}], n for 80 % power: {enough or '> 300'}"
        )
    write_result(args.out, "power_forgetting", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
