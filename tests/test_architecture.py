"""The package's shape (ARCHITECTURE.md): layers, no import cycles, one method registry, and a wheel
that works on its own."""

import ast
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from replication.methods import METHOD_NAMES
from replication.reporting import figures, workflow
from replication.runconfig import TASK_CONFIGS, RunConfig
from replication.tasks.registry import TASKS

from .conftest import REPO

PACKAGE = REPO / "replication"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(replication module imported, whether the import is inside a function) for every import that
    runs (not those under ``if TYPE_CHECKING:``)."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, inner) for a in child.names if a.name.startswith("replication"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("replication"):
                for alias in child.names:  # `from replication.reporting import aggregate` names a module
                    full = f"{child.module}.{alias.name}"
                    found.append((full if _module_file(full) else child.module, inner))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[_module_name(path)] = {name for name, _ in _imports(path) if _module_file(name)}
    return graph


def test_no_module_imports_the_package_inside_a_function():
    hidden = [
        f"{_module_name(path)} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, inside in _imports(path)
        if inside
    ]
    assert not hidden, hidden


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])


def test_the_detector_finds_a_cycle_and_a_hidden_import(tmp_path, monkeypatch):
    fake = tmp_path / "replication"
    fake.mkdir()
    (fake / "a.py").write_text("from replication.b import x\n")
    (fake / "b.py").write_text("def f():\n    from replication.a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(pytest.fail.Exception, match="import cycle: replication.a -> replication.b -> replication.a"):
        test_the_import_graph_has_no_cycle()
    with pytest.raises(AssertionError, match="replication.b imports replication.a"):
        test_no_module_imports_the_package_inside_a_function()


def _entry_points() -> set[str]:
    """Modules run as ``python -m``: the edges, which may read files and the whole run config."""
    return {_module_name(p) for p in PACKAGE.rglob("*.py") if 'if __name__ == "__main__":' in p.read_text()}


# ARCHITECTURE.md's layers, top to bottom: a module imports from its own layer or the ones above
LAYERS = [
    ("core", ("replication.errors", "replication.gapt", "replication.methods", "replication.mbe")),
    ("config", ("replication.config",)),
    ("machinery", ("replication.precision", "replication.distributed", "replication.progress", "replication.runio",
                   "replication.cli", "replication.launch")),
    ("models", ("replication.models",)),
    ("task interface", ("replication.tasks.base", "replication.tasks.lm", "replication.evaluation")),
    ("tasks", ("replication.tasks.arithmetic", "replication.tasks.fineweb", "replication.tasks.forgetting",
               "replication.tasks.synthetic")),
    ("run", ("replication.runconfig", "replication.tasks.registry", "replication.objectives", "replication.alignment",
             "replication.optim", "replication.train", "replication.configure", "replication.trainserver")),
    ("integrations", ("replication.dropin", "replication.hf")),
    ("reporting", ("replication.reporting",)),
]  # fmt: skip


def _layer(module: str) -> int:
    if module in ("replication", "replication.tasks"):  # package docstrings
        return -1
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer of ARCHITECTURE.md")


def _layer_violations(graph: dict[str, set[str]], entry_points: set[str]) -> list[str]:
    run = next(i for i, (name, _) in enumerate(LAYERS) if name == "run")
    bad = []
    for module, imported in graph.items():
        for target in imported:
            below = _layer(target) > _layer(module)
            allowed = module in entry_points and _layer(target) <= run  # a command may resolve a run config
            if below and not allowed:
                bad.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})")
    return sorted(bad)


def test_every_import_points_up_the_layers():
    entry_points = _entry_points()
    assert {"replication.train", "replication.tasks.fineweb.prepare", "replication.reporting.aggregate"} <= entry_points
    assert _layer_violations(_graph(), entry_points) == []


def test_the_layer_check_finds_an_import_down_the_layers():
    graph = {"replication.tasks.fineweb.task": {"replication.runconfig"}, "replication.train": {"replication.reporting.stats"},
             "replication.tasks.fineweb.prepare": {"replication.runconfig"}}  # fmt: skip
    assert _layer_violations(graph, {"replication.tasks.fineweb.prepare", "replication.train"}) == [
        "replication.tasks.fineweb.task (tasks) imports replication.runconfig (run)",
        "replication.train (run) imports replication.reporting.stats (reporting)",
    ]


# -- one method registry ------------------------------------------------------------------------


def test_every_reader_of_method_names_reads_the_registry():
    assert typing.get_args(RunConfig.model_fields["method"].annotation) == METHOD_NAMES
    assert workflow.schema()["properties"]["methods"]["items"]["enum"] == list(METHOD_NAMES)
    assert figures.METHOD_ORDER == list(METHOD_NAMES)
    assert 'method="|".join(METHOD_NAMES)' in (REPO / "Snakefile").read_text()


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


def test_method_names_are_written_in_code_only_by_the_registry():
    # a method's name is data in experiment files; in code only methods.py (and a default argument
    # naming the method the drop-in API and its example use) spells one out
    allowed = {"replication/methods.py", "replication/dropin.py", "replication/hf.py", "replication/reporting/spec.py"}
    spelled = {
        str(path.relative_to(REPO))
        for path in sorted(PACKAGE.rglob("*.py"))
        if _string_constants(path) & {"ce_mbe", "gapt_joint"}
    }
    assert spelled - allowed == set()
    assert "replication/methods.py" in spelled


def test_every_task_config_has_a_task():
    assert set(TASK_CONFIGS) == set(TASKS)


# -- the package on its own ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_wheel_installed_on_its_own_imports_every_module_and_runs(tmp_path):
    """Build the wheel, install it (without dependencies: they come from this environment) into a
    folder of its own, and from a folder outside the repository import every module, load the DAG's
    schema, and configure and train a run of an experiment file copied out of the repository."""
    source = tmp_path / "source"  # the files git would commit, so that no earlier build/ folder helps
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, check=True,
        capture_output=True, text=True,
    ).stdout.split("\n")  # fmt: skip
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("replication-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    away = tmp_path / "away"
    away.mkdir()
    experiment = away / "experiment.yaml"
    experiment.write_text(
        "experiment: tiny\n"
        "defaults:\n"
        "  task: {name: synthetic, seq_len: 16, micro_batch_size: 2}\n"
        "  model: {name: gpt2, vocab_size: 32, n_layer: 2, d_model: 16, n_head: 2, max_seq_len: 16}\n"
        "  optim: {name: adamw}\n"
        "  train: {steps: 3, device: cpu, checkpoint_every: 0}\n"
        "methods: {ce: {}}\n"
        "scales: {tiny: {seeds: [0]}}\n"
    )
    script = (
        "import importlib, pkgutil, sys, replication\n"
        f"assert replication.__file__.startswith({str(site)!r}), replication.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(replication.__path__, 'replication.')]\n"
        "skip = {'replication.hf'}  # the optional transformers integration\n"
        "for name in names:\n"
        "    if name not in skip:\n"
        "        importlib.import_module(name)\n"
        "from replication.reporting import workflow\n"
        "assert workflow.defaults()['experiments'], 'the schema ships with the package'\n"
        "print(len(names))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", script], cwd=away, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) >= 57  # every module was found in the wheel
    for command in (
        ["replication.configure", str(experiment), "--scale", "tiny", "--method", "ce", "--seed", "0", "--out", "run/"],
        ["replication.train", "run/config.yaml", "--progress", "lines"],
    ):
        done = subprocess.run([sys.executable, "-m", *command], cwd=away, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    assert (away / "run" / "summary.json").is_file()


def test_resolving_configs_planning_the_dag_and_launching_a_run_never_import_torch():
    """configure runs once per run, the Snakefile imports the planner and the server's launcher on
    every start, and replication.launch starts every CPU training job: all stay free of torch's two
    seconds of import (what a job costs before it does anything)."""
    script = ("import sys, replication.configure, replication.reporting.workflow, replication.launch; "
              "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
