"""The web console: sites and their inventory, approvals and deadlines, the gates' decisions,
ledger status, training runs, releases and licences, and the reports, by role.

``onshore console`` serves it (:func:`~onshore.console.app.serve`); ``onshore console users``
manages who may sign in (:mod:`~onshore.console.auth`). Reads of another country's rows go
through that site's gate (:mod:`~onshore.console.access`).
"""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.console.app import create_app, serve
    from onshore.console.auth import Role, User, UserStore

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "create_app": "app",
        "serve": "app",
        "Role": "auth",
        "User": "auth",
        "UserStore": "auth",
    },
)

__all__ = ["Role", "User", "UserStore", "create_app", "serve"]
