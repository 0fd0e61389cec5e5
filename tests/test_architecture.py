"""The layout the README promises: no import circle, data flowing one way, small files."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("pipeline", "data", "geometry", "hierarchy", "kpconvx", "ckconv", "pointtransformer")
#: who may import whom (entry point -> pipeline -> models -> operations -> I/O)
ALLOWED = {"data": {"data"}, "geometry": {"geometry", "data"}, "ckconv": {"ckconv"},
           "hierarchy": {"hierarchy", "geometry", "data"},
           "kpconvx": {"kpconvx", "hierarchy", "geometry", "data"},
           "pointtransformer": {"pointtransformer", "hierarchy", "geometry", "data"}, "pipeline": set(PACKAGES)}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports (any depth, TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def test_no_import_circle_and_one_way_flow():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    for m, deps in graph.items():
        for d in deps:
            assert d.split(".")[0] in ALLOWED[m.split(".")[0]], f"{m} imports {d}"
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_registration_happens_in_one_module():
    """Steps and models are registered by importing pipeline.components, nowhere else."""
    for path in list((REPO / "pipeline").rglob("*.py")) + [REPO / "run.py"]:
        text = path.read_text(encoding="utf-8")
        if path.name not in ("components.py", "cli.py"):
            assert "(registers" not in text, path


def test_no_source_file_over_500_lines():
    files = [p for pkg in PACKAGES + ("benchmarks",) for p in (REPO / pkg).rglob("*.py")] + [REPO / "run.py"]
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_registration_cannot_be_skipped():
    """A spec loads (its step and model types known) without anyone importing pipeline.components:
    the registries import it on the first lookup."""
    import subprocess
    import sys

    code = ("from pipeline.spec import load_spec; s = load_spec('specs/ign_point_transformer_cpu.yaml').spec; "
            "print(type(s.steps[0].model.network).component_type)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "point_transformer", res.stderr
