"""The lint gate of `make test`: ruff's checks and formatting over the tree, and Snakemake's own lint of
the DAG. The one Snakemake lint left is per-rule software environments: every job runs in the one
environment Snakemake itself runs in (`make install`), which the project pins instead."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

ACCEPTED_SNAKEMAKE_LINTS = {"Specify a conda environment or container for each rule."}


def _ruff() -> list[str]:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: `pip install -e '.[test]'` installs the pinned release")
    return [found]


def test_ruff_finds_nothing_to_fix():
    done = subprocess.run([*_ruff(), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_tree_is_formatted():
    done = subprocess.run(
        [*_ruff(), "format", "--check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, "run `ruff format .`:\n" + done.stdout[-4000:]


def snakemake_lints(text: str) -> list[str]:
    """The distinct lints of ``snakemake --lint``'s text output, by their one-line titles."""
    return sorted({m.group(1) for m in re.finditer(r"^    \* (.+?):?$", text, re.M)})


def test_the_lint_reader_sees_every_lint():
    text = (
        "Lints for rule a (line 1, Snakefile):\n"
        "    * Specify a conda environment or container for each rule.:\n"
        "      This way, the used software ...\n"
        "    * Shell command directly uses variable PYTHON from outside of the rule:\n"
        "      It is recommended ...\n"
    )
    assert snakemake_lints(text) == [
        "Shell command directly uses variable PYTHON from outside of the rule",
        "Specify a conda environment or container for each rule.",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_snakemake_lint_finds_only_per_rule_environments(scale, tmp_path):
    command = [sys.executable, "-m", "snakemake", "--lint", "--configfile", f"config/{scale}.yaml"]
    command += ["--config", f"runs_dir={tmp_path}/runs", f"results_dir={tmp_path}/results"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    lints = snakemake_lints(done.stdout + done.stderr)
    assert lints, done.stderr[-3000:]  # the accepted lint is always there: the linter ran
    assert set(lints) <= ACCEPTED_SNAKEMAKE_LINTS, done.stdout[-4000:] + done.stderr[-2000:]
