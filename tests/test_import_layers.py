"""The import layers of docs/architecture.md, enforced: every `toolkit` import in the package (top
level or inside a function) is read with `ast` and checked against the layer table below.

A module may import its own unit and any unit of a lower rank; a few units are further restricted
(the manifest layer is pure, experiments see only their context, the store never reaches up).
`KNOWN` lists the violations that remain from before the rule existed, each with the issue that
removes it: the test fails on any new violation and on a listed one that has gone (so the list
only shrinks)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "toolkit"

# The unit of a module is its first name under `toolkit` (`toolkit.store.gather` -> `store`).
RANK: dict[str, int] = {
    "cli": 9,
    "submit": 8,
    "report": 8,
    "launch": 7,
    "worker": 6,
    "worker_exit": 6,
    "figures": 6,
    "report_html": 6,
    "context": 5,
    "plan": 5,
    "campaign": 5,
    "experiments": 4,
    "manifest": 3,
    "models": 3,
    "store": 3,
    "numerics": 1,
    "pdftext": 1,
    "errors": 0,
    "faults": 0,
    "progress": 0,
    "__init__": 0,
}

# Units that may import less than their rank allows: the only `toolkit` units each may use.
RESTRICTED: dict[str, set[str]] = {
    # pure: YAML to checked values; reads the registry's declarations and packaged model names
    "manifest": {"errors", "experiments", "models"},
    # an experiment sees its typed context; shared math is in numerics
    "experiments": {"errors", "faults", "numerics", "pdftext", "progress", "context"},
    # the only writer of HDF5 never reaches up
    "store": {"errors", "faults", "__init__"},
    "numerics": {"errors"},
}

# The two upward imports the design wants: validation reads the registry's declarations, and an
# experiment's `run` is typed with its context.
UPWARD: set[tuple[str, str]] = {("manifest", "experiments"), ("experiments", "context")}

# module -> imported module, left from before the rule; each is removed by the issue named.
KNOWN: dict[tuple[str, str], str] = {}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_submodule(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every `toolkit...` module that `path` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "toolkit":
                found.update(
                    f"toolkit.{alias.name}" if _is_submodule(alias.name) else "toolkit" for alias in node.names
                )
            elif node.module.startswith("toolkit."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "toolkit")
    return found


def _allowed(source: str, target: str) -> bool:
    src, dst = _unit(source), _unit(target)
    if src == dst:
        return True
    if src in RESTRICTED and dst not in RESTRICTED[src]:
        return False
    return RANK[dst] <= RANK[src] or (src, dst) in UPWARD


def violations() -> set[tuple[str, str]]:
    """All (module, imported module) pairs that break the layer table."""
    bad: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        for target in _imports(path):
            if not _allowed(source, target):
                bad.add((source, target))
    return bad


def test_every_unit_has_a_rank():
    units = {_unit(_module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert units - set(RANK) == set(), "add the new unit to RANK here and to docs/architecture.md"


def test_no_import_breaks_the_layers():
    new = violations() - set(KNOWN)
    assert new == set(), "imports that break docs/architecture.md's layers:\n" + "\n".join(
        f"  {src} imports {dst}" for src, dst in sorted(new)
    )


def test_known_violations_are_still_real():
    gone = set(KNOWN) - violations()
    assert gone == set(), f"remove these from KNOWN, they no longer occur: {sorted(gone)}"


def test_the_rule_catches_a_forbidden_import(tmp_path):
    """The checker itself: a manifest module importing the launch layer is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from toolkit.launch.container import find_runtime\n")
    assert _imports(probe) == {"toolkit.launch.container"}
    assert not _allowed("toolkit.manifest.checker", "toolkit.launch.container")
    assert not _allowed("toolkit.store.gather", "toolkit.experiments")
    assert not _allowed("toolkit.experiments.exp4.generate", "toolkit.models.loading")
    assert _allowed("toolkit.worker", "toolkit.experiments")
    assert _allowed("toolkit.experiments.exp2.lipschitz", "toolkit.numerics.jacobian")
    assert _allowed("toolkit.experiments.exp2.lipschitz", "toolkit.context")
    assert not _allowed("toolkit.numerics.forward", "toolkit.context")
