"""The import graph runs one way along the data flow.

Each package of onshore has a place in the order in which data moves through it (the
architecture page, docs/architecture.md, says what each does). A module may import from its
own package and from packages placed before it, never from one placed after: an import from a
later stage into an earlier one is a loop in the design (the stage that comes first cannot be
understood, tested or deployed without the one that builds on it), and it fails this test with
the file, the line and the two places.

Imports inside functions count, since they run; imports under ``if TYPE_CHECKING:`` do not,
since only the type checker reads them (the error tree names a gate decision and a licence
check in its signatures, and nothing is imported for that at run time).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import onshore

SOURCE: Final = Path(onshore.__file__).parent

ORDER: Final = (
    # foundations: errors, whole-file writes, a check's outcome, settings, lazy imports, processes
    "errors",
    "files",
    "checks",
    "_lazy",
    "settings",
    "processes",
    # the law every later stage reads
    "rulebook",
    # a site, what a clip is, the vehicles that record them, and a site's store
    "sites",
    "clips",
    "fleet",
    "store",
    # each party's signed ledger, its identity and the messages between parties
    "ledger",
    "parties",
    # data in, understood and made safe to share
    "ingest",
    "classify",
    "deidentify",
    # data crossing a border: the one gate, and the transfers it lets through
    "gate",
    "transfer",
    # learning from the data where it lies, and what is made of it
    "forecast",
    "federation",
    "release",
    "reports",
    "rights",
    # what parties and people ask of the sites, and the plan made from the answers
    "reads",
    "plan",
    # the front ends: a party's service, the console, the commands, and `import onshore`
    "service",
    "console",
    "lab",
    "demo",
    "cli",
    "__main__",
    "__init__",
)


@dataclass(frozen=True, slots=True)
class Import:
    module: str
    """The importing module, dotted."""
    line: int
    target: str
    """The imported module (or package attribute), dotted."""


def stage(name: str) -> str:
    """The top-level package or module of onshore that dotted ``name`` is in."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path = SOURCE) -> str:
    """The dotted name of the module at ``path`` in the package at ``root``."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:``."""
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                nodes.update(id(n) for n in ast.walk(child))
    return nodes


def imports(path: Path, root: Path = SOURCE) -> list[Import]:
    """The imports of onshore's own modules in ``path`` (in the package at ``root``) that run."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = type_checking_only(tree)
    found: list[Import] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # `from onshore import reads` imports the package onshore.reads
            if source == "onshore":
                targets = [f"onshore.{alias.name}" for alias in node.names]
            else:
                targets = [source]
        else:
            continue
        found += [Import(module, node.lineno, t) for t in targets if t.split(".")[0] == "onshore"]
    return found


def all_imports() -> list[Import]:
    return [i for path in sorted(SOURCE.rglob("*.py")) for i in imports(path)]


def backward(found: list[Import]) -> list[str]:
    """Each import of a later stage into an earlier one, said as a person would fix it."""
    wrong = []
    for i in found:
        source, target = stage(i.module), stage(i.target)
        if source not in ORDER or target not in ORDER:
            continue  # test_every_package_has_its_place_in_the_order says which
        if source != target and ORDER.index(target) > ORDER.index(source):
            wrong.append(
                f"{i.module}:{i.line} imports {i.target}: {source!r} comes before "
                f"{target!r} in the data flow, so it must not build on it"
            )
    return wrong


def test_every_package_has_its_place_in_the_order() -> None:
    found = {stage(module_name(path)) for path in SOURCE.rglob("*.py")}
    assert sorted(found - set(ORDER)) == [], "place these in ORDER (and the architecture page)"
    assert sorted(set(ORDER) - found) == [], "these in ORDER are gone: take them out"


def test_no_module_imports_from_a_later_stage() -> None:
    assert backward(all_imports()) == []


def test_an_import_from_a_later_stage_is_caught(tmp_path: Path) -> None:
    # The check itself: the import that classification once made of de-identification, an
    # import inside a function, and one the type checker alone reads.
    package = tmp_path / "onshore" / "classify"
    package.mkdir(parents=True)
    path = package / "labels.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "from onshore.store.site import SiteStore\n"
        "from onshore.deidentify.video import FrameScan\n"
        "if TYPE_CHECKING:\n"
        "    from onshore.gate import Decision\n"
        "def f():\n"
        "    from onshore import reports\n"
        "    from .scan import scan_frames\n"
    )
    found = imports(path, tmp_path / "onshore")
    assert [(i.line, i.target) for i in found] == [
        (2, "onshore.store.site"),
        (3, "onshore.deidentify.video"),
        (7, "onshore.reports"),
        (8, "onshore.classify.scan"),
    ]
    assert backward(found) == [
        "onshore.classify.labels:3 imports onshore.deidentify.video: 'classify' comes before "
        "'deidentify' in the data flow, so it must not build on it",
        "onshore.classify.labels:7 imports onshore.reports: 'classify' comes before "
        "'reports' in the data flow, so it must not build on it",
    ]
