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


def _parts_imported_by(path):
    """``(part, {other parts it imports})`` of the source file at ``path``: parts are the
    package's top-level modules/folders; imports inside functions included."""
    rel = os.path.relpath(path, PACKAGE).split(os.sep)
    part = rel[0][:-3] if len(rel) == 1 else rel[0]
    package = rel[:-1]
    others = set()
    for node in ast.walk(ast.parse(open(path).read())):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            module = base + (node.module.split(".") if node.module else [])
            targets = [module + [a.name] if not node.module else module for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("res2net_ms."):
            targets = [node.module.split(".")[1:]]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names
                       if a.name.startswith("res2net_ms.")]
        others.update(t[0] for t in targets if t and t[0] not in (part, "__init__"))
    return part, others


def _imports_by_part():
    """``{part: {parts it imports}}`` for the package's parts."""
    graph = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                part, others = _parts_imported_by(os.path.join(root, name))
                if others:
                    graph.setdefault(part, set()).update(others)
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
    assert graph.get("fileio", set()) == set(), "fileio must import nothing else of ours"
    assert graph.get("loss_scale", set()) == set(), "loss_scale must import nothing of ours"
    assert graph.get("models", set()) <= {"fileio"}, \
        "models/ may import fileio (the cache folder) and nothing else of ours"
    assert graph["convert"] <= {"models", "ckpt", "fileio", "process"}
    assert "engine" not in graph["config"] and "convert" not in graph["config"]
    assert graph["hub"] <= {"models", "convert", "ckpt", "fileio", "process"}
    assert graph["factory"] <= {"models", "convert", "hub"}
    assert graph["run_state"] <= {"ckpt", "fileio"}
    assert graph["weights"] <= {"convert", "hub", "run_state"}
    assert "engine" not in graph["inference"]


# The parts of det/ that build, train, evaluate or run a detector from files: they may import
# the converter, the hub, the weights and the inference tools. The network parts below them
# (heads, ops, losses, the registry, COCO I/O) stand on the models and the data alone, and
# the training step on the loss scale it shares with classification's.
DET_ENTRY_POINTS = {"factory", "cli", "evaluate", "__main__", "demo", "trainer"}
DET_NETWORK_MAY_IMPORT = {"models", "data", "fileio", "process", "lazy", "loss_scale"}


def test_det_network_parts_point_down():
    folder = os.path.join(PACKAGE, "det")
    for name in sorted(os.listdir(folder)):
        module = name[:-3]
        if name.endswith(".py") and module not in DET_ENTRY_POINTS:
            _, others = _parts_imported_by(os.path.join(folder, name))
            assert others <= DET_NETWORK_MAY_IMPORT, (
                f"det/{name} imports {sorted(others - DET_NETWORK_MAY_IMPORT)}: only "
                f"{', '.join(sorted(DET_ENTRY_POINTS))} may import above models and data")


def modules_loaded_by(code, modules):
    """Which of ``modules`` a fresh interpreter has imported once it ran ``code`` (in the
    repository): what this process imported would hide it."""
    script = f"import sys\n{code}\nprint(sorted(m for m in {tuple(modules)!r} if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return ast.literal_eval(run.stdout.strip().splitlines()[-1])


def test_importing_a_network_part_leaves_the_converter_and_hub_out():
    """The package's factories are imported on first use, not by ``import res2net_ms...``."""
    assert modules_loaded_by("import res2net_ms.det.fpn", (
        "res2net_ms.convert", "res2net_ms.hub", "res2net_ms.factory",
        "res2net_ms.det.factory")) == []


@pytest.mark.parametrize("kind", sorted(zoo_table.TABLES))
def test_readme_tables_are_generated_from_the_registries(kind):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert zoo_table.TABLES[kind]() in readme, (
        f"README {kind} table differs from the registry: run "
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
