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

from replication.config.base import ModelConfig
from replication.config.run import TASK_CONFIGS, RunConfig
from replication.dag import schema
from replication.models import MODELS, build_model
from replication.reporting import figures
from replication.science.methods import METHOD_NAMES
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
            elif (
                isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("replication")
            ):
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
    with pytest.raises(
        pytest.fail.Exception, match="import cycle: replication.a -> replication.b -> replication.a"
    ):
        test_the_import_graph_has_no_cycle()
    with pytest.raises(AssertionError, match="replication.b imports replication.a"):
        test_no_module_imports_the_package_inside_a_function()


def _entry_points() -> set[str]:
    """Modules run as ``python -m``: the edges, which may read files and the whole run config."""
    return {_module_name(p) for p in PACKAGE.rglob("*.py") if 'if __name__ == "__main__":' in p.read_text()}


# ARCHITECTURE.md's layers, top to bottom: the folders of the package. A module imports from its own
# folder or the ones above it.
LAYERS = ["science", "config", "runtime", "models", "tasks", "training", "integrations", "dag", "reporting"]


def test_the_layers_are_the_folders():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert folders == sorted(LAYERS)
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]  # no module outside a layer


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package's docstring
        return -1
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} belongs to no layer of ARCHITECTURE.md")
    return LAYERS.index(parts[1])


TASK_INTERFACE = ("replication.tasks.base", "replication.tasks.lm", "replication.tasks.evaluation")


def _task_rank(module: str) -> int | None:
    """Inside tasks/: the interface (0) above the task packages (1) above the registry (2)."""
    if module in TASK_INTERFACE:
        return 0
    if module == "replication.tasks.registry":
        return 2
    return 1 if _task_package(module) is not None else None


def _task_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "tasks" else None


def _layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imported in graph.items():
        for target in imported:
            if _layer(target) > _layer(module):
                bad.append(f"{module} ({LAYERS[_layer(module)]}) imports {target} ({LAYERS[_layer(target)]})")
            own, other = _task_package(module), _task_package(target)
            if other is not None and own is not None and own != other:
                bad.append(f"{module} (task {own}) imports {target} (task {other})")
            rank, target_rank = _task_rank(module), _task_rank(target)
            if rank is not None and target_rank is not None and target_rank > rank:
                bad.append(f"{module} imports {target}, below it inside tasks/")
    return sorted(bad)


def test_every_import_points_up_the_layers():
    assert _layer_violations(_graph()) == []


def test_the_layer_check_finds_an_import_down_the_layers_and_across_tasks():
    graph = {
        "replication.config.run": {"replication.tasks.registry"},
        "replication.training.train": {"replication.reporting.stats"},
        "replication.tasks.fineweb.task": {"replication.tasks.arithmetic.data", "replication.tasks.base"},
        "replication.tasks.base": {"replication.tasks.fineweb.task"},
        "replication.tasks.arithmetic.task": {"replication.tasks.registry", "replication.tasks.lm"},
        "replication.tasks.registry": {"replication.tasks.arithmetic.task", "replication.tasks.base"},
    }
    assert _layer_violations(graph) == [
        "replication.config.run (config) imports replication.tasks.registry (tasks)",
        "replication.tasks.arithmetic.task imports replication.tasks.registry, below it inside tasks/",
        "replication.tasks.base imports replication.tasks.fineweb.task, below it inside tasks/",
        "replication.tasks.fineweb.task (task fineweb) imports replication.tasks.arithmetic.data "
        "(task arithmetic)",
        "replication.training.train (training) imports replication.reporting.stats (reporting)",
    ]


# -- one method registry ------------------------------------------------------------------------


def test_every_reader_of_method_names_reads_the_registry():
    assert typing.get_args(RunConfig.model_fields["method"].annotation) == METHOD_NAMES
    assert schema.GlobalConfig.model_fields["methods"].annotation == list[typing.Literal[METHOD_NAMES]] | None
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
    allowed = {
        "replication/science/methods.py",
        "replication/integrations/dropin.py",
        "replication/integrations/hf.py",
        "replication/config/report.py",
    }
    spelled = {
        str(path.relative_to(REPO))
        for path in sorted(PACKAGE.rglob("*.py"))
        if _string_constants(path) & {"ce_mbe", "gapt_joint"}
    }
    assert spelled - allowed == set()
    assert "replication/science/methods.py" in spelled


def test_every_task_config_has_a_task_and_every_model_config_a_model():
    assert set(TASKS) == set(TASK_CONFIGS.values())
    model_configs = typing.get_args(typing.get_args(ModelConfig)[0])
    assert len(model_configs) == 3 and set(MODELS) == set(model_configs)
    with pytest.raises(TypeError, match="no model is registered for the config section dict"):
        build_model({"name": "gpt2"})


# -- the package on its own ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_wheel_installed_on_its_own_imports_every_module_and_runs(tmp_path):
    """Build the wheel, install it (without dependencies: they come from this environment) into a
    folder of its own, and from a folder outside the repository import every module, load the DAG's
    schema, and configure and train a run of an experiment file copied out of the repository."""
    source = tmp_path / "source"  # the files git would commit, so that no earlier build/ folder helps
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = wheels.glob("gapt_replication-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
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
        "skip = {'replication.integrations.hf'}  # the optional transformers integration\n"
        "for name in names:\n"
        "    if name not in skip:\n"
        "        importlib.import_module(name)\n"
        "from replication.dag import schema\n"
        "assert schema.defaults()['experiments'], 'the DAG config states its defaults'\n"
        "print(len(names))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", script], cwd=away, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) >= 57  # every module was found in the wheel
    for command in (
        [
            "replication.training.configure",
            str(experiment),
            "--scale",
            "tiny",
            "--method",
            "ce",
            "--seed",
            "0",
            "--out",
            "run/",
        ],
        ["replication.training.train", "run/config.yaml", "--progress", "lines"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", *command], cwd=away, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert (away / "run" / "summary.json").is_file()


def test_resolving_configs_and_planning_the_dag_never_import_torch():
    """configure runs once per run and the Snakefile imports the planner on every start: both stay free
    of torch's seconds of import."""
    script = "import sys, replication.training.configure, replication.dag.plan; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
