"""The package layers, as a test over the import graph: which package may import which.

Imports are read from the source (every `import` and `from ... import`, also inside functions and
`TYPE_CHECKING` blocks), so a forbidden dependency fails here however it is written.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGINS = ("responder.collectors", "responder.mitigations", "responder.intake", "responder.sinks")

# (importer, imported, why it is forbidden)
FORBIDDEN = [
    ("responder.store", "responder.pipeline", "the store keeps state; it does not run the pipeline"),
    ("responder.store", "responder.sinks", "the store does not know who reads its events"),
    ("responder.store", "responder.mitigations", "guard policy lives in mitigations, the store answers queries"),
    ("responder.rules", "responder.mitigations", "rules name step types through responder.steps"),
    ("responder.rules", "responder.collectors", "rules name step types through responder.steps"),
    ("responder.collectors", "responder.rules", "collectors run rendered steps (responder.steps), not rules"),
    ("responder.sinks", "responder.pipeline", "sinks receive events (responder.events), not pipeline internals"),
    *((plugin, "responder.server", "plugins never reach into the HTTP server") for plugin in PLUGINS),
    ("responder.sinks", "responder.console", "sinks draw buttons from responder.buttons; the console handles presses"),
    ("responder.ui", "responder.server", "the server mounts the console, never the reverse"),
    ("responder.views", "responder.ui", "the incident view serves the CLI as well: it knows no HTML"),
    ("responder.store", "responder.views", "views read the store, not the other way round"),
]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path) -> dict[str, set[str]]:
    """Every module under root/responder and the modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "responder").rglob("*.py")):
        name = module_name(root, path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}
        graph[name] = found
    return graph


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(root: Path) -> list[str]:
    found = []
    for importer, imported in sorted(imports(root).items()):
        for source, target, why in FORBIDDEN:
            if within(importer, source):
                found += [f"{importer} imports {name}: {why}" for name in sorted(imported) if within(name, target)]
    return found


def test_no_forbidden_imports() -> None:
    assert violations(REPO) == []


def test_the_contract_catches_an_added_forbidden_import(tmp_path: Path) -> None:
    shutil.copytree(REPO / "responder", tmp_path / "responder", ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tmp_path) == []
    runner = tmp_path / "responder" / "collectors" / "runner.py"
    runner.write_text(runner.read_text() + "\n\ndef _late() -> None:\n    from responder.rules import engine  # noqa\n")
    store = tmp_path / "responder" / "store" / "queue.py"
    store.write_text(store.read_text().replace("from __future__ import annotations",
                                               "from __future__ import annotations\n\nfrom ..pipeline import worker"))
    assert violations(tmp_path) == [
        "responder.collectors.runner imports responder.rules: collectors run rendered steps (responder.steps),"
        " not rules",
        "responder.collectors.runner imports responder.rules.engine: collectors run rendered steps"
        " (responder.steps), not rules",
        "responder.store.queue imports responder.pipeline: the store keeps state; it does not run the pipeline",
        "responder.store.queue imports responder.pipeline.worker: the store keeps state; it does not run the"
        " pipeline",
    ]


def package_cycles(root: Path) -> list[tuple[str, str]]:
    """Pairs of packages under responder/ that depend on each other, directly or through other modules."""
    graph = imports(root)
    packages = sorted({name.split(".")[1] for name in graph
                       if name.count(".") >= 1 and (root / "responder" / name.split(".")[1]).is_dir()})

    def unit(module: str) -> str:
        # A package stands for all its modules; a top-level module (responder.config) for itself.
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[1] in packages else module

    edges: dict[str, set[str]] = {}
    for importer, imported in graph.items():
        edges.setdefault(unit(importer), set()).update(
            unit(name) for name in imported if within(name, "responder") and name != "responder")

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in edges.get(todo.pop(), set()) - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reach = {package: reachable(package) for package in packages}
    return [(a, b) for i, a in enumerate(packages) for b in packages[i + 1:] if b in reach[a] and a in reach[b]]


def test_no_two_packages_depend_on_each_other() -> None:
    assert package_cycles(REPO) == []


def test_the_cycle_check_catches_an_added_cycle(tmp_path: Path) -> None:
    shutil.copytree(REPO / "responder", tmp_path / "responder", ignore=shutil.ignore_patterns("__pycache__"))
    slack = tmp_path / "responder" / "sinks" / "slack_console.py"
    slack.write_text(slack.read_text() + "\n\ndef _late() -> None:\n    from responder.console import jobs  # noqa\n")
    assert package_cycles(tmp_path) == [("console", "sinks")]
