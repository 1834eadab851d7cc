"""The house rules of docs/architecture.md, checked on the source: dependencies run one way
(``launch.py -> {editing, generators3d, training} -> suite``), counting imports inside functions too, and no module
imports itself back through others (no cycles)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.common import ROOT

PACKAGES = ("suite", "editing", "generators3d", "training", "app")
# {launch.py, app} -> {editing, generators3d, training} -> suite: the app is a second composition root
ALLOWED = {"suite": set(), "editing": {"suite"}, "generators3d": {"suite"}, "training": {"suite"},
           "app": {"suite", "editing", "generators3d", "training"},
           "launch": {"suite", "editing", "generators3d", "training", "app"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = {"launch": ROOT / "launch.py"}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            files[_module_name(path)] = path
    return files


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the project that ``name`` imports, at module level or inside a function."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:  # the longest prefix that is one of our modules
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    files = _sources()
    known = set(files)
    return {name: _imports(name, path, known) for name, path in files.items()}


def test_dependencies_run_one_way():
    bad = []
    for mod, deps in _graph().items():
        pkg = mod.split(".")[0]
        for dep in deps:
            other = dep.split(".")[0]
            if other != pkg and other not in ALLOWED[pkg]:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports against the rule launch.py -> {editing, generators3d, training} -> suite: " + ", ".join(bad)


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ importing its own submodules is not a cycle of jobs; leave those edges out.
    graph = {m: {d for d in deps if not (d.startswith(m + ".") and (ROOT / m.replace(".", "/")).is_dir())}
             for m, deps in graph.items()}
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_rule_catches_a_hidden_import(tmp_path, monkeypatch):
    """The checker sees an import inside a function (the way a dependency hides)."""
    path = tmp_path / "x.py"
    path.write_text("def f():\n    from editing import edit_photo\n    return edit_photo\n")
    assert _imports("suite.x", path, {"suite.x", "editing"}) == {"editing"}


def test_help_imports_no_torch():
    """``launch.py --help`` and every subcommand's ``--help`` stay light: torch is never imported."""
    for argv in ([], ["generate"], ["edit"], ["3d"], ["train"], ["app"], ["eval"]):
        code = (f"import sys, runpy; sys.argv = ['launch.py', *{argv!r}, '--help']\n"
                "try:\n    runpy.run_path('launch.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.stdout.strip().endswith("NO-TORCH"), (argv, r.stdout[-300:], r.stderr[-500:])


def test_no_preset_name_is_compared_outside_the_table():
    """Which models a preset means and what it can do lives in ``suite.presets.PRESET_TABLE``; a package keeps at
    most one table of its own sizes keyed by the name (issue 21). No code compares a preset's name anywhere else."""
    import re

    from suite.presets import PRESET_NAMES

    names = "|".join(PRESET_NAMES)
    compared = re.compile(rf"""(==|!=|\bin|\bnot in)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    tables = {ROOT / "suite" / "presets.py"}
    found = []
    for path in [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))] + [ROOT / "launch.py"]:
        if path in tables:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if compared.search(code):
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


def test_runs_split_between_processes_get_their_state_from_one_place():
    """``suite.batch.process_state`` gives the barriers their long wait and checks that every launched process
    joined; a ``PartialState(...)`` made elsewhere had torch's 10-minute wait (NCCL), which ended long 3D batches."""
    made = [f"{p.relative_to(ROOT)}:{i}" for p in _sources().values() if p != ROOT / "suite" / "batch.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if "PartialState(" in line.split("#")[0]]
    assert not made, made
    users = [p for p in _sources().values() if "process_state(" in p.read_text()]
    assert {str(p.relative_to(ROOT)) for p in users} >= {"suite/generate_cli.py", "generators3d/cli.py",
                                                          "training/evaluate.py"}
