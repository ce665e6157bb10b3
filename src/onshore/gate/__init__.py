"""The gate: the only way anything leaves a site.

:func:`decide` (or a :class:`Gate` for many decisions) matches a transfer against the origin's
rulebook and the approvals on file and returns a :class:`Decision`: allowed or denied, the rules,
the reasons, the approval used, the rulebook versions. Default deny. :mod:`~onshore.gate.approvals`
keeps each site's approvals (:class:`ApprovalRegistry`) and the deadlines their rulebook implies.
"""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.gate.approvals import (
        WARN_DAYS,
        Approval,
        ApprovalRegistry,
        ApprovalStatus,
        Status,
        approval_status,
        check_approval,
        effective_valid_until,
    )
    from onshore.gate.engine import (
        Decision,
        Gate,
        GateRequest,
        HistoryProvider,
        RuleRef,
        decide,
        parse_request,
    )

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "WARN_DAYS": "approvals",
        "Approval": "approvals",
        "ApprovalRegistry": "approvals",
        "ApprovalStatus": "approvals",
        "Status": "approvals",
        "approval_status": "approvals",
        "check_approval": "approvals",
        "effective_valid_until": "approvals",
        "Decision": "engine",
        "Gate": "engine",
        "GateRequest": "engine",
        "HistoryProvider": "engine",
        "RuleRef": "engine",
        "decide": "engine",
        "parse_request": "engine",
    },
)

__all__ = [
    "WARN_DAYS",
    "Approval",
    "ApprovalRegistry",
    "ApprovalStatus",
    "Decision",
    "Gate",
    "GateRequest",
    "HistoryProvider",
    "RuleRef",
    "Status",
    "approval_status",
    "check_approval",
    "decide",
    "effective_valid_until",
    "parse_request",
]
