"""Were a scale's runs judged by the analysis plan they were made under? (docs/SPEC.md section 8)

A plan is fixed before the numbers are read; changing it after seeing them is a deviation, and a
deviation must be said. For every commit that ``runs.csv`` records, the plan of that commit
(``git show COMMIT:experiments/NAME/plan.yaml``) must have the current plan's content hash, or the
current plan must list the commit under ``deviations`` with its current hash and what differs. A
deviation written against an older plan does not cover a later change. Runs trained outside a git
clone name no commit, so nothing can vouch for their plan: they are refused.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import yaml

from replication.config.plan import AnalysisPlan, content_hash


def plan_at_commit(plan_file: Path, commit: str) -> str | None:
    """The content hash of ``plan_file`` as committed at ``commit``; None where git cannot show it
    (no such file then, an unknown commit, no git)."""
    try:
        shown = subprocess.run(
            ["git", "-C", str(plan_file.parent), "show", f"{commit}:./{plan_file.name}"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    if shown.returncode != 0:
        return None
    return content_hash(yaml.safe_load(shown.stdout) or {})


def run_commits(runs_csv: Path) -> list[str]:
    """The commits that runs.csv records, in order of first appearance ('' for a run without one)."""
    runs = pd.read_csv(runs_csv, dtype={"git_commit": str}, keep_default_na=False)
    return list(dict.fromkeys(runs.get("git_commit", pd.Series(dtype=str)).astype(str)))


def problems(plan: AnalysisPlan, plan_hash: str, plan_file: Path, commits: list[str]) -> list[str]:
    """One line per commit whose runs this plan may not judge, naming the way out."""
    found = []
    for commit in commits:
        if not commit:
            found.append(
                f"{plan.experiment}: runs trained outside a git clone name no commit, so no plan can be "
                "shown to predate them; train them again from a clone"
            )
            continue
        listed = [d for d in plan.deviations if commit.startswith(d.runs_commit)]
        if any(d.plan_sha256 == plan_hash for d in listed):
            continue
        then = plan_at_commit(plan_file, commit)
        if then == plan_hash:
            continue
        what = (
            f"{plan_file} changed since the runs at commit {commit[:12]} (a deviation written against "
            f"{listed[0].plan_sha256[:12]} does not cover the plan as it is now)"
            if listed
            else f"{plan_file} at commit {commit[:12]}, where the runs were made, "
            + (
                "is absent or cannot be read (a shallow clone?)"
                if then is None
                else "differs from the plan now"
            )
        )
        found.append(
            f"{plan.experiment}: {what}; judge the runs by the plan they were made under, or list the change "
            f"under deviations: with runs_commit {commit[:12]}, plan_sha256 {plan_hash} and what differs"
        )
    return found
