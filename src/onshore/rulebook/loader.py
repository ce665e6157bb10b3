"""Reading rulebooks: YAML with line numbers, validation, built-ins, users' files and overrides.

Every way a file can be wrong becomes a :class:`Problem` naming the file, the line and the
reason; loading raises :class:`RulebookError` with the first, ``lint`` lists them all.

A user's file either stands alone (a whole rulebook) or starts with ``extends: cn``: then it
holds only what differs from the built-in ``cn`` rulebook. Entries (rules, memberships,
mechanisms, country sets, obligations, restrictions) replace the built-in entry with the same id
or add a new one; ``remove: [id, ...]`` drops entries; it must give its own ``version``.

A rulebook's ``boundary`` (a GeoJSON file, see :mod:`onshore.rulebook.territory`) is a path
relative to the file that names it (text given without a file: to the current folder), or
``builtin:territory/cn.geojson`` for one shipped in the package's ``builtin`` folder, as the
built-in rulebooks name theirs (so a copy of one keeps working). A file that ``extends`` a
built-in keeps the built-in's boundary unless it names its own. The boundary is read when the
rulebook is, so a missing or malformed file is an error on the ``boundary`` line.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from onshore.rulebook.categories import CATEGORIES, DEID_STATES
from onshore.rulebook.model import Rulebook
from onshore.rulebook.problems import Problem, RulebookError, RulebookNotFound
from onshore.rulebook.territory import Boundary
from onshore.settings import Project

__all__ = [
    "BUILTIN_NAMES",
    "Rulebooks",
    "builtin",
    "builtin_rulebooks",
    "check_text",
    "load_file",
    "load_rulebooks",
    "load_text",
    "project_rulebooks",
    "resolve",
]

BUILTIN_NAMES: Final = ("cn", "eu", "us")
"""Names of the rulebooks that ship with onshore."""

Key = tuple[str | int, ...]
"""Path of a value in the file: ``("rules", "cn.pi_exempt", "count", "when", 0)``."""

_ENTRY_SECTIONS: Final = (
    "country_sets",
    "mechanisms",
    "rules",
    "obligations",
    "software_restrictions",
)
"""Top-level mappings whose keys are entry ids (``classes`` and its ``members`` too)."""

_SECTION_NOUN: Final = {
    "country_sets": "country set",
    "mechanisms": "mechanism",
    "rules": "rule id",
    "obligations": "obligation id",
    "software_restrictions": "restriction id",
    "classes": "class",
    "members": "membership id",
}


_MAX_NODES: Final = 200_000
"""A rulebook has a few thousand values; this many means aliases run wild."""


class _TooLarge(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


@dataclass
class _Parsed:
    """A file read into plain data, with where each value came from."""

    data: Any
    lines: dict[Key, tuple[str, int]]
    problems: list[Problem] = field(default_factory=list)

    def where(self, key: Key) -> tuple[str, int | None]:
        """File and line of ``key``, or of its nearest enclosing value."""
        for end in range(len(key), -1, -1):
            found = self.lines.get(key[:end])
            if found is not None:
                return found
        return ("", None)

    def problem(self, key: Key, message: str, severity: str = "error") -> Problem:
        file, line = self.where(key)
        return Problem(
            file=file,
            line=line,
            where=".".join(str(k) for k in key),
            message=message,
            severity="warning" if severity == "warning" else "error",
        )


def _read_yaml(text: str, file: str) -> _Parsed:
    """Plain data from YAML text, keeping the line of every key and item. Duplicate keys (which
    YAML loaders usually let the last one win) are errors here: a second rule with the same id
    must not silently replace the first."""
    parsed = _Parsed(data=None, lines={(): (file, 1)})
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = exc.problem or "syntax error"
        if exc.context and exc.context_mark is not None:
            reason = f"{reason} ({exc.context} from line {exc.context_mark.line + 1})"
        parsed.problems.append(Problem(file, line, "", f"not valid YAML: {reason}"))
        return parsed
    except yaml.YAMLError as exc:
        parsed.problems.append(Problem(file, None, "", f"not valid YAML: {exc}"))
        return parsed
    finally:
        loader.dispose()
    if root is None:
        parsed.problems.append(Problem(file, 1, "", "the file is empty"))
        return parsed

    def line_of(node: yaml.Node) -> int:
        return int(node.start_mark.line) + 1

    budget = [_MAX_NODES]

    def walk(node: yaml.Node, key: Key) -> Any:
        budget[0] -= 1
        if budget[0] < 0:  # aliases can make a small file expand without end
            raise _TooLarge(line_of(node))
        parsed.lines.setdefault(key, (file, line_of(node)))
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                name = walk(key_node, (*key, "<key>"))
                if not isinstance(name, str):
                    name = str(name)
                if name == "<<":
                    parsed.problems.append(
                        Problem(
                            file,
                            line_of(key_node),
                            _dotted(key),
                            "YAML merge keys ('<<') are not supported: write the entry out",
                        )
                    )
                    continue
                if name in out:
                    noun = _SECTION_NOUN.get(str(key[-1]) if key else "", "key")
                    first = parsed.lines[(*key, name)][1]
                    parsed.problems.append(
                        Problem(
                            file,
                            line_of(key_node),
                            _dotted((*key, name)),
                            f"duplicate {noun} {name!r} (first at line {first})",
                        )
                    )
                    continue
                parsed.lines[(*key, name)] = (file, line_of(key_node))
                out[name] = walk(value_node, (*key, name))
            parsed.lines.pop((*key, "<key>"), None)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, (*key, i)) for i, item in enumerate(node.value)]
        try:
            return loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            reason = getattr(exc, "problem", None) or str(exc)
            parsed.problems.append(
                Problem(file, line_of(node), _dotted(key), f"bad value {node.value!r}: {reason}")
            )
            return None

    try:
        parsed.data = walk(root, ())
    except _TooLarge as exc:
        parsed.data = None
        parsed.problems.append(
            Problem(file, exc.line, "", f"more than {_MAX_NODES:,} values (aliases expanded)")
        )
        return parsed
    if not isinstance(parsed.data, dict):
        parsed.problems.append(Problem(file, 1, "", "a rulebook is a mapping of sections"))
    return parsed


def _dotted(key: Key) -> str:
    return ".".join(str(k) for k in key if k != "<key>")


def _inject_ids(parsed: _Parsed) -> None:
    """Entries are keyed by id in the file; the models carry the id too."""
    data = parsed.data

    def stamp(section: Any, key: Key) -> None:
        if not isinstance(section, dict):
            return
        for entry_id, body in section.items():
            if not isinstance(body, dict):
                continue
            given = body.get("id")
            if given is not None and given != entry_id:
                parsed.problems.append(
                    parsed.problem(
                        (*key, entry_id, "id"),
                        f"id {given!r} differs from its key {entry_id!r}: drop the 'id' line",
                    )
                )
            body["id"] = entry_id
            here = parsed.lines.get((*key, entry_id))
            if here is not None:
                parsed.lines.setdefault((*key, entry_id, "id"), here)

    for section in (*_ENTRY_SECTIONS, "classes"):
        stamp(data.get(section), (section,))
    classes = data.get("classes")
    if isinstance(classes, dict):
        for class_id, body in classes.items():
            if isinstance(body, dict):
                stamp(body.get("members"), ("classes", class_id, "members"))


def _builtin_text(name: str) -> str:
    return (
        resources.files("onshore.rulebook")
        .joinpath("builtin", f"{name}.yaml")
        .read_text(encoding="utf-8")
    )


def _builtin_folder() -> Path:
    """The package's ``builtin`` folder, where the built-in rulebooks' boundaries are."""
    return Path(str(resources.files("onshore.rulebook").joinpath("builtin")))


@cache
def _builtin_parsed(name: str) -> _Parsed:
    parsed = _read_yaml(_builtin_text(name), f"builtin:{name}")
    if not parsed.problems:
        _inject_ids(parsed)
    return parsed


def _replace(parsed: _Parsed, key: Key, value: Any, source: _Parsed) -> None:
    """Put ``value`` (from ``source`` at ``key``) into ``parsed`` at ``key``, with its lines."""
    for old in [k for k in parsed.lines if k[: len(key)] == key]:
        del parsed.lines[old]
    for new, where in source.lines.items():
        if new[: len(key)] == key:
            parsed.lines[new] = where
    target = parsed.data
    for part in key[:-1]:
        target = target[part]
    target[key[-1]] = copy.deepcopy(value)


def _extend(overlay: _Parsed) -> _Parsed:
    """The built-in named by ``extends`` with ``overlay`` applied."""
    data = overlay.data
    base_name = data.get("extends")
    if base_name not in BUILTIN_NAMES:
        overlay.problems.append(
            overlay.problem(
                ("extends",),
                f"'extends' names a built-in rulebook: one of {', '.join(BUILTIN_NAMES)}",
            )
        )
        return overlay
    if "version" not in data:
        overlay.problems.append(
            overlay.problem(
                ("extends",),
                "a rulebook that extends another needs its own 'version', "
                "so decisions say which rules they used",
            )
        )
    base = _builtin_parsed(base_name)
    merged = _Parsed(copy.deepcopy(base.data), dict(base.lines), list(overlay.problems))
    merged.lines[()] = overlay.lines[()]
    for name, value in data.items():
        if name in ("extends", "remove"):
            continue
        if name in _ENTRY_SECTIONS and isinstance(value, dict):
            merged.data.setdefault(name, {})
            for entry_id, body in value.items():
                _replace(merged, (name, entry_id), body, overlay)
        elif name == "classes" and isinstance(value, dict):
            merged.data.setdefault("classes", {})
            for class_id, body in value.items():
                existing = merged.data["classes"].get(class_id)
                if isinstance(existing, dict) and isinstance(body, dict):
                    for field_name, field_value in body.items():
                        if field_name == "members" and isinstance(field_value, dict):
                            existing.setdefault("members", {})
                            for member_id, member in field_value.items():
                                _replace(
                                    merged,
                                    ("classes", class_id, "members", member_id),
                                    member,
                                    overlay,
                                )
                        else:
                            _replace(
                                merged, ("classes", class_id, field_name), field_value, overlay
                            )
                else:
                    _replace(merged, ("classes", class_id), body, overlay)
        else:
            _replace(merged, (name,), value, overlay)

    removals = data.get("remove", [])
    if not isinstance(removals, list):
        merged.problems.append(overlay.problem(("remove",), "'remove' is a list of ids"))
        removals = []
    for i, entry_id in enumerate(removals):
        found = [key for key in _entry_keys(merged.data) if key[-1] == entry_id]
        if not found:
            merged.problems.append(
                overlay.problem(
                    ("remove", i), f"cannot remove {entry_id!r}: no such entry in {base_name!r}"
                )
            )
        for key in found:
            target = merged.data
            for part in key[:-1]:
                target = target[part]
            del target[key[-1]]
            for old in [k for k in merged.lines if k[: len(key)] == key]:
                del merged.lines[old]
    return merged


def _entry_keys(data: Any) -> Iterator[Key]:
    if not isinstance(data, dict):
        return
    for section in _ENTRY_SECTIONS:
        body = data.get(section)
        if isinstance(body, dict):
            for entry_id in body:
                yield (section, entry_id)
    classes = data.get("classes")
    if isinstance(classes, dict):
        for class_id, body in classes.items():
            yield ("classes", class_id)
            if isinstance(body, dict) and isinstance(body.get("members"), dict):
                for member_id in body["members"]:
                    yield ("classes", class_id, "members", member_id)


def _pydantic_problems(parsed: _Parsed, exc: ValidationError) -> list[Problem]:
    out = []
    errors = exc.errors()
    for error in errors:
        key: Key = tuple(error["loc"])
        if error["type"] == "too_short" and any(
            len(other["loc"]) > len(key) and tuple(other["loc"][: len(key)]) == key
            for other in errors
        ):
            continue  # an item was refused: that is the problem, not the length left over
        out.append(parsed.problem(_strip_key_marker(key), _message(error, key)))
    return out


def _strip_key_marker(key: Key) -> Key:
    return key[:-1] if key and key[-1] == "[key]" else key


def _message(error: ErrorDetails, key: Key) -> str:
    kind = error["type"]
    field_name = str(key[-1]) if key else "file"
    given = error.get("input")
    msg = error["msg"].removeprefix("Value error, ")
    if key and key[-1] == "[key]":
        noun = _SECTION_NOUN.get(str(key[-3]) if len(key) >= 3 else "", "key")
        return f"bad {noun} {key[-2]!r}: {msg[:1].lower()}{msg[1:]}"
    if kind == "missing":
        return f"missing {field_name!r}"
    if kind == "extra_forbidden":
        return f"unknown field {field_name!r}"
    if kind == "value_error":
        return msg
    if kind in ("string_type", "int_parsing", "float_parsing") and field_name == "version":
        return f'{msg} (got {given!r}): quote it, e.g. version: "2026.1"'
    if isinstance(given, dict | list):
        return msg
    if isinstance(given, bool):
        return f"{msg} (got {given!r}: YAML reads NO, no, yes, on, off as booleans; quote it)"
    return f"{msg} (got {given!r})"


def _semantic_problems(parsed: _Parsed, book: Rulebook) -> list[Problem]:
    """What a schema cannot see: references to classes, sets and mechanisms that do not exist,
    outcomes without mechanisms, ids used twice in different sections."""
    out: list[Problem] = []

    def need_class(key: Key, names: Iterable[str]) -> None:
        for i, name in enumerate(names):
            if name not in book.classes:
                out.append(
                    parsed.problem(
                        (*key, i),
                        f"unknown legal class {name!r}; this rulebook has: "
                        f"{', '.join(book.classes)}",
                    )
                )

    def need_countries(key: Key, refs: Iterable[str]) -> None:
        for i, ref in enumerate(refs):
            if ref.islower() and ref not in book.country_sets:
                known = ", ".join(book.country_sets) or "none"
                out.append(
                    parsed.problem((*key, i), f"unknown country set {ref!r}; defined: {known}")
                )

    def need_mechanism(key: Key, ids: Iterable[str]) -> None:
        for i, mechanism in enumerate(ids):
            if mechanism not in book.mechanisms:
                out.append(
                    parsed.problem(
                        (*key, i),
                        f"mechanism {mechanism!r} is not declared under 'mechanisms:' "
                        "(its validity and renewal terms are needed)",
                    )
                )

    seen: dict[str, Key] = {}
    key: Key
    for key in sorted(_entry_keys(parsed.data), key=lambda k: parsed.where(k)[1] or 0):
        if key[0] in ("classes", "country_sets", "mechanisms") and len(key) == 2:
            continue
        entry_id = str(key[-1])
        if entry_id in seen:
            line = parsed.where(seen[entry_id])[1]
            out.append(parsed.problem(key, f"duplicate id {entry_id!r} (also at line {line})"))
        seen[entry_id] = key

    for rule in book.rules.values():
        key = ("rules", rule.id)
        need_class((*key, "applies_to", "classes"), rule.applies_to.classes)
        need_class((*key, "applies_to", "not_classes"), rule.applies_to.not_classes)
        need_countries((*key, "destination", "in"), rule.destination.within)
        need_countries((*key, "destination", "not_in"), rule.destination.not_in)
        if rule.recipient is not None:
            need_countries((*key, "recipient", "tied_to"), rule.recipient.tied_to)
        if rule.count is not None:
            need_class((*key, "count", "of"), rule.count.of)
        if rule.outcome == "require":
            if not rule.mechanisms:
                out.append(
                    parsed.problem(
                        (*key, "outcome"),
                        "outcome 'require' needs 'mechanisms': the ones any of which satisfies it",
                    )
                )
            need_mechanism((*key, "mechanisms"), rule.mechanisms)
        elif rule.mechanisms:
            out.append(
                parsed.problem(
                    (*key, "mechanisms"),
                    f"outcome {rule.outcome!r} takes no mechanisms (only 'require' does)",
                )
            )
    for terms in book.mechanisms.values():
        need_mechanism(("mechanisms", terms.id, "satisfies"), terms.satisfies)
    for restriction in book.software_restrictions.values():
        key = ("software_restrictions", restriction.id)
        need_countries((*key, "developers_tied_to"), restriction.developers_tied_to)
        need_countries((*key, "markets"), restriction.markets)
    return out


def _warnings(parsed: _Parsed, book: Rulebook) -> list[Problem]:
    """What ``lint`` points out without refusing the file."""
    out: list[Problem] = []
    entries: list[tuple[Key, str, str]] = []
    for legal in book.classes.values():
        for m in legal.members.values():
            entries.append((("classes", legal.id, "members", m.id), m.confidence, m.source))
    for name, section in (
        ("country_sets", book.country_sets),
        ("mechanisms", book.mechanisms),
        ("rules", book.rules),
        ("obligations", book.obligations),
        ("software_restrictions", book.software_restrictions),
    ):
        for entry_id, entry in section.items():
            entries.append(((name, entry_id), entry.confidence, entry.source))
    for key, confidence, source in entries:
        if confidence == "unchecked":
            out.append(
                parsed.problem(
                    key,
                    f"unchecked, rests on {source}: have a lawyer read it",
                    "warning",
                )
            )
    if book.boundary is None:
        out.append(
            parsed.problem(
                ("territory",),
                "no 'boundary': ingest cannot check that clips were recorded in the territory "
                "and takes each upload's recorded_in on trust; name a GeoJSON file of the "
                "territory's area (as the built-in rulebooks do)",
                "warning",
            )
        )
    for rule in book.rules.values():
        if rule.count is not None and not _satisfiable(rule.count.when):
            out.append(
                parsed.problem(
                    ("rules", rule.id, "count", "when"),
                    f"no count can satisfy {rule.count.describe()}: the rule never matches",
                    "warning",
                )
            )
    for category in CATEGORIES:
        for state in DEID_STATES:
            classes = book.classify(category, state, None)
            if not any(
                r.destination.scope != "domestic" and r.applies_to.selects(category, state, classes)
                for r in book.rules.values()
            ):
                out.append(
                    parsed.problem(
                        ("rules",),
                        f"no rule applies to {category} ({state}) sent abroad: "
                        "every such transfer is denied by default",
                        "warning",
                    )
                )
    return out


def _satisfiable(comparisons: Sequence[Any]) -> bool:
    low, high = 0, None
    for c in comparisons:
        match c.op:
            case ">=":
                low = max(low, c.value)
            case ">":
                low = max(low, c.value + 1)
            case "<":
                high = c.value - 1 if high is None else min(high, c.value - 1)
            case "<=":
                high = c.value if high is None else min(high, c.value)
    return high is None or low <= high


def _boundary_file(parsed: _Parsed, book: Rulebook, problems: list[Problem]) -> Path | None:
    """The boundary file ``book`` names, read once to check it: ``builtin:`` and a path in the
    package's ``builtin`` folder, or a path from the folder of the file whose ``boundary`` line
    it is. A file that is missing or malformed is an error on that line, added to
    ``problems``."""
    if book.boundary is None:
        return None
    file = parsed.where(("boundary",))[0]
    if book.boundary.startswith("builtin:"):
        path = _builtin_folder() / book.boundary.removeprefix("builtin:")
    elif file.startswith("builtin:"):
        path = _builtin_folder() / book.boundary
    else:
        path = Path(file).parent / book.boundary
    try:
        Boundary.load(path)
    except RulebookError as exc:
        problems.append(parsed.problem(("boundary",), exc.message))
        return None
    return path.resolve()


def _build(parsed: _Parsed, *, with_warnings: bool) -> tuple[Rulebook | None, list[Problem]]:
    if parsed.problems and parsed.data is None:
        return None, parsed.problems
    if not isinstance(parsed.data, dict):
        return None, parsed.problems
    problems = list(parsed.problems)
    try:
        book = Rulebook.model_validate(parsed.data)
    except ValidationError as exc:
        return None, problems + _pydantic_problems(parsed, exc)
    problems += _semantic_problems(parsed, book)
    boundary = _boundary_file(parsed, book, problems)
    if any(p.severity == "error" for p in problems):
        return None, problems
    book._file = parsed.lines[()][0]
    book._boundary_file = boundary
    book._lines = {str(key[-1]): parsed.where(key) for key in _entry_keys(parsed.data)}
    if with_warnings:
        problems += _warnings(parsed, book)
    return book, problems


def _parse(text: str, file: str) -> _Parsed:
    parsed = _read_yaml(text, file)
    if parsed.problems or not isinstance(parsed.data, dict):
        return parsed
    _inject_ids(parsed)
    if "extends" in parsed.data:
        return _extend(parsed)
    if "remove" in parsed.data:
        parsed.problems.append(parsed.problem(("remove",), "'remove' needs 'extends'"))
    return parsed


def check_text(
    text: str, file: str = "<text>", *, warnings: bool = True
) -> tuple[Rulebook | None, list[Problem]]:
    """Validate rulebook YAML: the rulebook (``None`` if it has errors) and every problem found,
    errors and (with ``warnings``) what ``lint`` warns about."""
    return _build(_parse(text, file), with_warnings=warnings)


def load_text(text: str, file: str = "<text>") -> Rulebook:
    """A rulebook from YAML text. Raises :class:`RulebookError` naming file, line and reason."""
    book, problems = check_text(text, file, warnings=False)
    if book is None:
        raise RulebookError.from_problems(tuple(problems))
    return book


def load_file(path: Path) -> Rulebook:
    """A rulebook from a YAML file. Raises :class:`RulebookError` (file, line, reason), or
    :class:`RulebookNotFound` if there is no such file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulebookNotFound(
            f"{path}: no such rulebook file", hint="check the path in onshore.toml [rulebooks]"
        ) from None
    except UnicodeDecodeError as exc:
        raise RulebookError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    return load_text(text, str(path))


@cache
def builtin(name: str) -> Rulebook:
    """The built-in rulebook ``cn``, ``eu`` or ``us``."""
    if name not in BUILTIN_NAMES:
        raise RulebookNotFound(
            f"no built-in rulebook {name!r}", hint=f"built-in: {', '.join(BUILTIN_NAMES)}"
        )
    book, problems = _build(_builtin_parsed(name), with_warnings=False)
    if book is None:  # a packaging bug; the test suite loads every built-in
        raise RulebookError.from_problems(tuple(problems))
    return book


class Rulebooks(Mapping[str, Rulebook]):
    """The rulebooks in force, by key (``cn``, ``eu``, ``us``, a user's own). Territories must
    not overlap, and entry ids must be unique across them, so a decision's rule ids are
    unambiguous."""

    def __init__(self, books: Iterable[Rulebook]) -> None:
        self._books: dict[str, Rulebook] = {}
        owner: dict[str, Rulebook] = {}
        ids: dict[str, Rulebook] = {}
        for book in books:
            if book.key in self._books:
                raise RulebookError(
                    f"{book.file}: a second rulebook for jurisdiction {book.jurisdiction} "
                    f"(the first is {self._books[book.key].file})",
                    hint="to replace a built-in, list the file under [rulebooks.overrides]",
                )
            for country in book.territory:
                if country in owner:
                    raise RulebookError(
                        f"{book.file}: territory {country} is already governed by the "
                        f"{owner[country].key} rulebook ({owner[country].file})"
                    )
                owner[country] = book
            for entry_id in book.entry_ids():
                if entry_id in book.mechanisms:
                    continue
                if entry_id in ids:
                    file, line = book.location(entry_id) or (book.file, None)
                    where = f"{file}:{line}" if line is not None else file
                    raise RulebookError(
                        f"{where}: id {entry_id!r} is already used by the "
                        f"{ids[entry_id].key} rulebook",
                        hint=f"prefix ids with the jurisdiction, e.g. {book.key}.{entry_id}",
                    )
                ids[entry_id] = book
            self._books[book.key] = book
        self._owner = owner

    def __getitem__(self, key: str) -> Rulebook:
        try:
            return self._books[key]
        except KeyError:
            raise RulebookNotFound(
                f"no rulebook {key!r}", hint=f"loaded: {', '.join(self._books) or 'none'}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._books)

    def __len__(self) -> int:
        return len(self._books)

    def for_origin(self, origin: str) -> Rulebook:
        """The rulebook governing data that originates in ``origin`` (a jurisdiction such as
        ``EU`` or a country code in some rulebook's territory). Raises :class:`RulebookNotFound`."""
        book = self._owner.get(origin)
        if book is None:
            book = next((b for b in self._books.values() if b.jurisdiction == origin), None)
        if book is None:
            covered = ", ".join(sorted(self._owner))
            raise RulebookNotFound(
                f"no rulebook governs data from {origin!r}",
                hint=f"rulebooks cover: {covered}; add a rulebook file for {origin}",
            )
        return book

    @property
    def versions(self) -> dict[str, str]:
        """Every rulebook's version, by key."""
        return {key: book.version for key, book in self._books.items()}


@cache
def builtin_rulebooks() -> Rulebooks:
    """The built-in ``cn``, ``eu`` and ``us`` rulebooks."""
    return Rulebooks(builtin(name) for name in BUILTIN_NAMES)


def load_rulebooks(
    overrides: Mapping[str, Path] | None = None, extra: Sequence[Path] = ()
) -> Rulebooks:
    """The built-in rulebooks, each replaced by the file ``overrides`` names for it (a whole
    rulebook, or one that ``extends`` the built-in), plus the rulebooks in ``extra`` (other
    jurisdictions). Raises :class:`RulebookError` for an invalid file or a clash (two rulebooks
    for one jurisdiction or one country), :class:`RulebookNotFound` for a missing file or an
    override of a rulebook that is not built in."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(BUILTIN_NAMES))
    if unknown:
        raise RulebookNotFound(
            f"cannot override {', '.join(map(repr, unknown))}: not a built-in rulebook",
            hint=f"built-in: {', '.join(BUILTIN_NAMES)}; add other jurisdictions as extra files",
        )
    books: list[Rulebook] = []
    for name in BUILTIN_NAMES:
        if name in overrides:
            book = load_file(overrides[name])
            if book.key != name:
                raise RulebookError(
                    f"{overrides[name]}: overrides the {name!r} rulebook but its jurisdiction "
                    f"is {book.jurisdiction}",
                    hint=f"set jurisdiction: {name.upper()} or list the file as an extra rulebook",
                )
            books.append(book)
        else:
            books.append(builtin(name))
    books.extend(load_file(path) for path in extra)
    return Rulebooks(books)


def project_rulebooks(project: Project) -> Rulebooks:
    """The rulebooks a project uses: the built-ins with the overrides and extra files its
    ``onshore.toml`` names under ``[rulebooks]`` (paths relative to the project folder).
    Raises :class:`RulebookNotFound` naming a site whose jurisdiction no rulebook governs."""
    conf = project.settings.rulebooks
    overrides: dict[str, Path] = {
        name: project.root / path for name, path in conf.overrides.items()
    }
    extra = [project.root / path for path in conf.extra]
    books = load_rulebooks(overrides, extra)
    for site in project.settings.sites.values():
        try:
            books.for_origin(site.jurisdiction)
        except RulebookNotFound as exc:
            raise RulebookNotFound(
                f"{project.config_path}: [sites.{site.id}] jurisdiction {site.jurisdiction}: "
                "no rulebook in force governs it",
                hint=f"{exc.hint}, listed under [rulebooks] extra",
            ) from None
    return books


def resolve(ref: str, books: Rulebooks | None = None) -> Rulebook:
    """A rulebook named on the command line: a file path, ``builtin:cn``, or a key (``cn``) of
    ``books`` (default: the built-ins)."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_file(path)
    if ref.startswith("builtin:"):
        return builtin(ref.removeprefix("builtin:"))
    return (books if books is not None else builtin_rulebooks())[ref]
