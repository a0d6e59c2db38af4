"""The house rules that keep the package readable: layers that only point down, one file
writer, a README generated from the registry, a quiet but honest exit."""
import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO
from res2net_ms import zoo_table

PACKAGE = os.path.join(REPO, "res2net_ms")


def _imports_by_part():
    """``{part: {parts it imports}}`` for the package's parts (top-level modules/folders),
    imports inside functions included."""
    graph = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, PACKAGE).split(os.sep)
            part = rel[0][:-3] if len(rel) == 1 else rel[0]
            package = rel[:-1]
            for node in ast.walk(ast.parse(open(path).read())):
                targets = []
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = package[:len(package) - node.level + 1]
                    module = base + (node.module.split(".") if node.module else [])
                    targets = [module + [a.name] if not node.module else module
                               for a in node.names]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                        "res2net_ms."):
                    targets = [node.module.split(".")[1:]]
                elif isinstance(node, ast.Import):
                    targets = [a.name.split(".")[1:] for a in node.names
                               if a.name.startswith("res2net_ms.")]
                for target in targets:
                    if target:
                        other = target[0]
                        if other != part and other != "__init__":
                            graph.setdefault(part, set()).add(other)
    return graph


def test_no_import_cycle_between_parts():
    graph = _imports_by_part()
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for node in list(graph):
        if node not in state:
            visit(node, [])


def test_layers_point_down():
    graph = _imports_by_part()
    assert graph.get("models", set()) == set(), "models/ must import nothing else of ours"
    assert graph["convert"] <= {"models", "ckpt", "fileio", "process"}
    assert "engine" not in graph["config"] and "convert" not in graph["config"]
    assert graph["hub"] <= {"models", "convert", "ckpt", "fileio", "process"}
    assert graph["factory"] <= {"models", "convert", "hub"}
    assert graph["run_state"] <= {"ckpt", "fileio"}
    assert graph["weights"] <= {"convert", "hub", "run_state"}
    assert "engine" not in graph["inference"]


def test_readme_table_is_generated_from_the_registry():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert zoo_table.model_table() in readme, (
        "README model table differs from the registry: run "
        "python -m res2net_ms.zoo_table --write README.md")
    assert zoo_table.replace_table(readme) == readme


def test_exit_silences_only_cell_del_noise():
    code = ("import sys\n"
            "from res2net_ms.process import exit_process\n"
            "class Cell:\n"
            "    def __del__(self):\n"
            "        raise RuntimeError('cell noise')\n"
            "class Other:\n"
            "    def __del__(self):\n"
            "        raise RuntimeError('a real problem')\n"
            "a, b = Cell(), Other()\n"
            "exit_process(0)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 0
    assert "cell noise" not in run.stderr
    assert "a real problem" in run.stderr
