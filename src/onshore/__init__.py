"""onshore: one driving model trained on every region's fleet data, each region's data kept where
its law says it must stay."""

from onshore.errors import OnshoreError

__all__ = ["OnshoreError", "__version__"]

__version__ = "0.1.0"
