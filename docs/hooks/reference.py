"""MkDocs hook: the configuration and CLI reference pages, generated from the code at build time.

- ``reference/configuration.md`` from the typed settings in ``src/onshore/settings.py``: every
  settings class (a pydantic model), its fields with their types, defaults, constraints and
  attribute docstrings (the string literal after each annotated assignment), read with
  :mod:`ast`, so the page is what the file says without running it.
- ``reference/cli.md`` from the ``onshore`` Typer app: every command and group, its help, usage,
  arguments and options (with their defaults), walked through the click command Typer builds.

Neither page is in ``docs/``: both are added to the build's files here (``on_files``), so they
cannot go stale. ``mkdocs serve`` rebuilds them when the settings or the CLI change.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.livereload import LiveReloadServer
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "src" / "onshore" / "settings.py"
CLI = ROOT / "src" / "onshore" / "cli"

CONFIGURATION_PAGE = "reference/configuration.md"
CLI_PAGE = "reference/cli.md"

# The base classes a settings class derives from (directly or through another settings class).
_MODEL_BASES = {"BaseModel", "_Model"}
# How `_parse` in settings.py maps onshore.toml onto the root `Settings`: its scalar keys sit
# under [project], and [deidentify.profiles.NAME] fills `deidentify_profiles`; every other
# field is the table of its own name.
_ROOT_TABLES = {"deidentify_profiles": "[deidentify.profiles.<name>]"}
_ROOT_SCALARS = "[project]"
# The placeholder for the key of a table of tables (`[sites.<id>]`).
_KEY_NAMES = {"sites": "<id>", "types": '"<message type>"'}
_CONSTRAINTS = {
    "gt": "> {}",
    "ge": ">= {}",
    "lt": "< {}",
    "le": "<= {}",
    "min_length": "at least {} long",
    "max_length": "at most {} long",
    "pattern": "matches {}",
    "strict": "strict",
}


# --- Markdown helpers -------------------------------------------------------------------------

_CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")
_RST_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|exc):`~?\.?([^`]+)`")


def _markdown(text: str, *, cell: bool = False) -> str:
    """Docstring text (reStructuredText roles and literals) as Markdown: roles and ``literals``
    become code spans; outside code spans, characters Markdown would read as HTML or emphasis
    (and in a table ``cell``, as a column separator) are escaped."""
    text = _RST_ROLE.sub(r"`\1`", text)
    parts = _CODE_SPAN.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a code span
            if part.startswith("``") and "`" not in part[2:-2]:
                part = f"`{part[2:-2]}`"
            out.append(part)
        else:
            out.append(
                part.replace("&", "&amp;")
                .replace("<", "&lt;")
                .replace(">", "&gt;")
                # A lone `*` would start emphasis.
                .replace("*", r"\*")
                .replace("|", r"\|" if cell else "|")
            )
    return "".join(out)


def _paragraphs(text: str) -> str:
    """Docstring text as Markdown paragraphs: each prose paragraph on one line, list
    paragraphs kept line by line."""
    blocks = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        lines = block.splitlines()
        if lines and lines[0].lstrip().startswith(("- ", "* ")):
            blocks.append("\n".join(_markdown(line) for line in lines))
        elif block.strip():
            blocks.append(_markdown(" ".join(line.strip() for line in lines)))
    return "\n\n".join(blocks)


def _one_line(text: str) -> str:
    """Text for a table cell: one line, its pipes no column separators."""
    return _markdown(" ".join(inspect.cleandoc(text).split()), cell=True)


def _code(text: str) -> str:
    """``text`` as a code span (Python-Markdown's tables leave pipes in code spans alone)."""
    ticks = "``" if "`" in text else "`"
    pad = " " if ticks == "``" else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


# --- The configuration reference ------------------------------------------------------------


class _Field:
    def __init__(self, node: ast.AnnAssign, doc: str | None) -> None:
        assert isinstance(node.target, ast.Name)
        self.name = node.target.id
        self.annotation = node.annotation
        self.value = node.value
        self.doc = doc

    def names(self) -> set[str]:
        """Every name the field's type mentions."""
        return {n.id for n in ast.walk(self.annotation) if isinstance(n, ast.Name)}

    def default(self, models: dict[str, _Model]) -> str:
        value = self.value
        if value is None:
            return "required"
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            if value.func.id == "Field":
                return self._field_default(value)
            if value.func.id in models and not value.args and not value.keywords:
                return f"its defaults ([{value.func.id}](#{value.func.id.lower()}))"
        return _code(_shown(value))

    @staticmethod
    def _field_default(call: ast.Call) -> str:
        if call.args and not (
            isinstance(call.args[0], ast.Constant) and call.args[0].value is Ellipsis
        ):
            return _code(_shown(call.args[0]))
        for keyword in call.keywords:
            if keyword.arg == "default":
                return _code(_shown(keyword.value))
            if keyword.arg == "default_factory":
                factory = keyword.value
                if isinstance(factory, ast.Name) and factory.id in ("dict", "list", "set"):
                    return _code({"dict": "{}", "list": "[]", "set": "set()"}[factory.id])
                if isinstance(factory, ast.Lambda):
                    return _code(_shown(factory.body))
                return _code(f"{ast.unparse(factory)}()")
        return "required"

    def constraints(self) -> list[str]:
        value = self.value
        if not (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "Field"
        ):
            return []
        out = []
        for keyword in value.keywords:
            if keyword.arg == "strict" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is True
            ):
                continue
            if keyword.arg in _CONSTRAINTS:
                out.append(_CONSTRAINTS[keyword.arg].format(_shown(keyword.value)))
        return out


class _Model:
    def __init__(self, node: ast.ClassDef) -> None:
        self.name = node.name
        self.doc = ast.get_docstring(node) or ""
        self.fields: list[_Field] = []
        body = node.body
        for i, statement in enumerate(body):
            if not (
                isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
            ):
                continue
            if statement.target.id.startswith("_") or statement.target.id == "model_config":
                continue
            following = body[i + 1] if i + 1 < len(body) else None
            doc = None
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                doc = following.value.value
            self.fields.append(_Field(statement, doc))


def _shown(node: ast.expr) -> str:
    """An expression as the code says it, with its value where that differs (``1 << 30``)."""
    source = ast.unparse(node)
    try:
        value = eval(compile(ast.Expression(node), "<default>", "eval"), {"__builtins__": {}})
    except Exception:
        return source
    if isinstance(value, str | list) and source.startswith(("'", '"', "[")):
        try:
            return json.dumps(value)  # as TOML writes it
        except TypeError:
            return source
    if isinstance(value, int | float) and not isinstance(value, bool) and repr(value) != source:
        return f"{source} = {value!r}"
    return source


def _settings_module(path: Path) -> tuple[str, dict[str, _Model], dict[str, tuple[str, str]]]:
    """The module docstring, its settings classes in source order, and its type aliases
    (name: (definition, docstring))."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    models: dict[str, _Model] = {}
    aliases: dict[str, tuple[str, str]] = {}
    bases = set(_MODEL_BASES)
    body = tree.body
    for i, node in enumerate(body):
        if isinstance(node, ast.ClassDef):
            names = {b.id for b in node.bases if isinstance(b, ast.Name)}
            if names & bases:
                bases.add(node.name)
                if not node.name.startswith("_"):
                    models[node.name] = _Model(node)
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Subscript)
        ):
            following = body[i + 1] if i + 1 < len(body) else None
            doc = ""
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                doc = following.value.value
            aliases[node.targets[0].id] = (ast.unparse(node.value), doc)
    return ast.get_docstring(tree) or "", models, aliases


def _tables(models: dict[str, _Model], root: str) -> dict[str, str]:
    """Where each settings class sits in onshore.toml, from the root class down, in the order
    a reader meets them (depth first, in field order)."""
    where: dict[str, str] = {root: "onshore.toml"}

    def visit(model: _Model, table: str | None) -> None:
        for field in model.fields:
            for name in sorted(field.names() & set(models)):
                if name in where:
                    continue
                key = field.name
                path = f"[{key}]" if table is None else f"{table[:-1]}.{key}]"
                if isinstance(field.annotation, ast.Subscript) and ast.unparse(
                    field.annotation.value
                ) in ("dict", "Mapping"):
                    path = f"{path[:-1]}.{_KEY_NAMES.get(key, '<name>')}]"
                where[name] = path
                visit(models[name], path)

    visit(models[root], None)
    return where


def _root_key(field: _Field, models: dict[str, _Model], tables: dict[str, str]) -> str:
    if field.name in _ROOT_TABLES:
        return _ROOT_TABLES[field.name]
    for name in sorted(field.names() & set(models)):
        return tables[name]
    return f"{_ROOT_SCALARS} {field.name}"


def configuration_reference(path: Path = SETTINGS) -> str:
    """The configuration reference page, from the settings module at ``path``."""
    module_doc, models, aliases = _settings_module(path)
    root = "Settings"
    tables = _tables(models, root)
    order = list(tables) + [name for name in models if name not in tables]
    relative = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    lines = [
        "# Configuration reference",
        "",
        "!!! note",
        f"    Generated from `{relative}` when the site is built (`docs/hooks/reference.py`):",
        "    edit the settings' docstrings there, not this page.",
        "",
        _paragraphs(module_doc),
        "",
        "The settings classes, from the whole file down, each with the table of `onshore.toml`",
        "it is read from. `<id>` stands for a site's id.",
        "",
    ]
    for name in order:
        lines.append(f"- [{name}](#{name.lower()}): `{tables.get(name, '-')}`")
    lines += ["", "Each class's keys sit in its table; a table may also be written inline, as"]
    lines += ["`compute = { workers = 8 }` inside `[sites.<id>]`."]
    lines.append("")
    for name in order:
        model = models[name]
        lines += [f"## {name}", ""]
        if name in tables and name != root:
            lines += [f"In `onshore.toml`: `{tables[name]}`", ""]
        if model.doc:
            lines += [_paragraphs(model.doc), ""]
        if not model.fields:
            continue
        lines += ["| Key | Type | Default | Description |", "|---|---|---|---|"]
        for field in model.fields:
            key = _code(_root_key(field, models, tables) if name == root else field.name)
            kind = _code(ast.unparse(field.annotation))
            linked = sorted(field.names() & (set(models) | set(aliases)))
            if linked:
                kind += " (" + ", ".join(f"[{n}](#{n.lower()})" for n in linked) + ")"
            limits = field.constraints()
            if limits:
                kind += "; " + ", ".join(_one_line(c) for c in limits)
            doc = _one_line(field.doc) if field.doc else ""
            lines.append(f"| {key} | {kind} | {field.default(models)} | {doc} |")
        lines.append("")
    used = set().union(*(f.names() for m in models.values() for f in m.fields))
    shown = [name for name in aliases if name in used]
    if shown:
        lines += ["## Value types", "", "The named types the fields above use.", ""]
        for name in shown:
            definition, doc = aliases[name]
            lines += [f"### {name}", "", f"`{definition}`", ""]
            if doc:
                lines += [_paragraphs(doc), ""]
    return "\n".join(lines).rstrip() + "\n"


# --- The CLI reference ------------------------------------------------------------------------


def _help(text: str | None) -> str:
    if not text:
        return ""
    # click's \b marks a paragraph it must not rewrap; Markdown has no use for it.
    text = "\n".join(line for line in text.splitlines() if line.strip() != "\b")
    return _paragraphs(text)


def _commands(
    command: click.Command, ctx: click.Context
) -> Iterator[tuple[click.Command, click.Context, int]]:
    """Every visible command under ``command``, depth first, with its context and depth."""
    if not isinstance(command, click.Group):
        return
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        sub_ctx = click.Context(sub, info_name=name, parent=ctx)
        yield sub, sub_ctx, ctx.command_path.count(" ") + 1
        yield from _commands(sub, sub_ctx)


def _anchor(ctx: click.Context) -> str:
    return ctx.command_path.replace(" ", "-")


def _command_section(command: click.Command, ctx: click.Context, depth: int) -> list[str]:
    heading = "#" * min(depth + 1, 4)
    lines = [f"{heading} {ctx.command_path} {{#{_anchor(ctx)}}}", ""]
    if command.deprecated:
        lines += ["*Deprecated.*", ""]
    described = _help(command.help)
    if described:
        lines += [described, ""]
    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    lines += ["```", usage, "```", ""]
    arguments: list[str] = []
    options: list[str] = []
    for param in command.get_params(ctx):
        if param.name == "help" or "--help" in getattr(param, "opts", []):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, text = record
        # Typer escapes brackets for rich ("\[default: 5]").
        text = text.replace("\\[", "[")
        item = f"- {_code(names)}"
        if text:
            item += f": {_one_line(text)}"
        (arguments if param.param_type_name == "argument" else options).append(item)
    if arguments:
        lines += ["**Arguments**", "", *arguments, ""]
    if options:
        lines += ["**Options**", "", *options, ""]
    if isinstance(command, click.Group):
        subs = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
        lines += ["**Commands**", ""]
        for name, sub in subs:
            if sub is None or sub.hidden:
                continue
            path = f"{ctx.command_path}-{name}".replace(" ", "-")
            short = _one_line(sub.get_short_help_str(limit=200))
            lines.append(f"- [{name}](#{path}): {short}")
        lines.append("")
    if command.epilog:
        lines += [_help(command.epilog), ""]
    return lines


def cli_reference() -> str:
    """The CLI reference page, from the ``onshore`` Typer app."""
    import importlib
    import sys
    import warnings

    # Under `mkdocs serve` the hook runs again after an edit: import the CLI afresh.
    for name in [n for n in sys.modules if n == "onshore.cli" or n.startswith("onshore.cli.")]:
        del sys.modules[name]
    with warnings.catch_warnings():
        # typer 0.20 (which Flower pins) imports click helpers click 8.3 deprecates, as
        # pyproject.toml's pytest settings say.
        warnings.simplefilter("ignore", DeprecationWarning)
        import typer

        app = importlib.import_module("onshore.cli.app").app

    root = typer.main.get_command(app)
    ctx = click.Context(root, info_name="onshore")
    lines = [
        "# CLI reference",
        "",
        "!!! note",
        "    Generated from the `onshore` Typer app (`src/onshore/cli/`) when the site is",
        "    built (`docs/hooks/reference.py`): edit the commands' docstrings and option help",
        "    there, not this page. `onshore COMMAND --help` prints the same.",
        "",
        _help(root.help),
        "",
        "```",
        " ".join(["onshore", *root.collect_usage_pieces(ctx)]),
        "```",
        "",
        "Every command takes `--json`; those that work on a project take `--project DIR`",
        "(see [Running it by hand](../index.md#running-it-by-hand)). The commands:",
        "",
    ]
    commands = list(_commands(root, ctx))
    for command, sub_ctx, depth in commands:
        indent = "    " * (depth - 1)
        name = sub_ctx.command_path.removeprefix("onshore ")
        short = _one_line(command.get_short_help_str(limit=120))
        lines.append(f"{indent}- [{name}](#{_anchor(sub_ctx)}): {short}")
    lines.append("")
    for command, sub_ctx, depth in commands:
        lines += _command_section(command, sub_ctx, depth)
    return "\n".join(lines).rstrip() + "\n"


# --- MkDocs events ----------------------------------------------------------------------------


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    """Add the generated pages to the build."""
    for uri, content in (
        (CONFIGURATION_PAGE, configuration_reference()),
        (CLI_PAGE, cli_reference()),
    ):
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=content))
    return files


def on_serve(server: LiveReloadServer, *, config: MkDocsConfig, builder: Any) -> LiveReloadServer:
    """Under ``mkdocs serve``, rebuild when the settings or the CLI change."""
    server.watch(str(SETTINGS))
    server.watch(str(CLI))
    return server
