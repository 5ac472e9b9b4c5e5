"""Were a scale's runs judged by the analysis plan they were made under? (docs/SPEC.md section 8)

A plan is fixed before the numbers are read; changing it after seeing them is a deviation, and a
deviation must be said. For every commit that ``runs.csv`` records, the plan of that commit
(``git show COMMIT:experiments/NAME/plan.yaml``) must have the current plan's content hash, or the
current plan must list the commit under ``deviations`` with its current hash and what differs. A
deviation written against an older plan does not cover a later change. Runs trained outside a git
clone name no commit, so nothing can vouch for their plan: they are refused.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from replication.config.plan import AnalysisPlan, content_hash
from replication.runtime.record import SOURCE_ROOT
from replication.science.errors import DataError


def plan_at_commit(plan_file: Path, experiment: str, commit: str) -> str | None:
    """The content hash of the plan as committed at ``commit``: ``plan_file``'s own history where it
    lies in a git checkout, else (a copy outside one) ``experiments/<experiment>/plan.yaml`` of the
    suite's checkout. None where git cannot show it (no such file then, an unknown commit, no git);
    a committed plan that is not a YAML mapping hashes as its text, so it differs from any plan."""
    inside = plan_file.resolve().is_relative_to(SOURCE_ROOT.resolve())
    where, name = (
        (plan_file.parent, f"{commit}:./{plan_file.name}")
        if inside or _in_git(plan_file.parent)
        else (SOURCE_ROOT, f"{commit}:experiments/{experiment}/{plan_file.name}")
    )
    try:
        shown = subprocess.run(
            ["git", "-C", str(where), "show", name], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    if shown.returncode != 0:
        return None
    try:
        raw = yaml.safe_load(shown.stdout)
    except yaml.YAMLError:
        raw = None
    if not isinstance(raw, dict):
        return hashlib.sha256(shown.stdout.encode()).hexdigest()
    return content_hash(raw)


def _in_git(folder: Path) -> bool:
    try:
        found = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--is-inside-work-tree"], capture_output=True, check=False
        )
    except OSError:
        return False
    return found.returncode == 0


def run_commits(runs_csv: Path) -> list[str]:
    """The commits that runs.csv records, in order of first appearance ('' for a run without one)."""
    try:
        runs = pd.read_csv(runs_csv, dtype={"git_commit": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{runs_csv} is empty: make it again with the DAG's aggregate rule") from None
    if "git_commit" not in runs:
        raise DataError(f"{runs_csv} has no column git_commit: make it again with the DAG's aggregate rule")
    return list(dict.fromkeys(runs.git_commit.astype(str)))


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
        then = plan_at_commit(plan_file, plan.experiment, commit)
        if then == plan_hash:
            continue
        what = (
            f"{plan_file} changed since the runs at commit {commit[:12]} (a deviation written against "
            f"{listed[0].plan_sha256[:12]} does not cover the plan as it is now)"
            if listed
            else f"{plan_file} at commit {commit[:12]}, where the runs were made, "
            + (
                "is absent or git cannot show it (a shallow clone, or no git checkout here?)"
                if then is None
                else "differs from the plan now"
            )
        )
        found.append(
            f"{plan.experiment}: {what}; judge the runs by the plan they were made under, or list the change "
            f"under deviations: with runs_commit {commit[:12]}, plan_sha256 {plan_hash} and what differs"
        )
    return found
