"""onshore: one driving model trained on every region's fleet data, each region's data kept where
its law says it must stay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onshore.errors import OnshoreError

if TYPE_CHECKING:
    from onshore.release.load import load_model

__all__ = ["OnshoreError", "__version__", "load_model"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # load_model needs torch; importing it on first use keeps 'import onshore' (and every CLI
    # command that does not load a model) fast.
    if name == "load_model":
        from onshore.release.load import load_model

        return load_model
    raise AttributeError(f"module 'onshore' has no attribute {name!r}")
