"""A package's attributes imported on first use: importing a package, or one light module of
it, then costs only what that module needs. ``onshore.release.records`` (which ``onshore ledger
verify`` reads) no longer brings torch and Opacus with ``onshore.release.create``; every CLI
command starts seconds sooner."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy"]


def lazy(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each of ``names`` (an attribute, and the
    submodule of ``package`` that defines it) is imported when it is first asked for, then
    kept on the package."""

    def attribute(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def listing() -> list[str]:
        return sorted({*names, *vars(sys.modules[package])})

    return attribute, listing
