"""The house plan's separations, read from the source: no import loop, featurizers import nothing from
causalvar, the engine knows no task, only the adapters know model families.

``python tests/test_layering.py`` prints the graph of causalvar's and featurizers' modules."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("causalvar", "featurizers")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (at any depth of the file, lazy imports included)."""
    modules = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among module-level imports' targets (a package importing its own submodules is
    not a cycle: ``__init__`` files re-export)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if dep.startswith(node + ".") or node.startswith(dep + "."):  # package and its submodules
                continue
            if state.get(dep) == "open":
                found.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_loop():
    assert _cycles(import_graph()) == []


def test_featurizers_import_nothing_from_causalvar():
    graph = import_graph()
    assert {m: sorted(d) for m, d in graph.items() if m.startswith("featurizers") and
            any(x.startswith("causalvar") for x in d)} == {}


def test_the_engine_knows_no_task_and_only_adapters_know_model_families():
    graph = import_graph()
    assert not {d for d in graph["causalvar.engine"] if d in ("causalvar.task", "causalvar.tasks") or
                d.startswith("causalvar.tasks.")}
    family_words = ("transformers", "transformer_lens")
    for path in (ROOT / "causalvar").rglob("*.py"):
        if "models" in path.parts or path.name == "pyvene_bridge.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in family_words for n in names), (path, names)


if __name__ == "__main__":
    for module, deps in sorted(import_graph().items()):
        print(f"{module:32s} -> {', '.join(sorted(deps)) or '-'}")
