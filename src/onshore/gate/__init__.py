"""The gate: the only way anything leaves a site.

:func:`decide` (or a :class:`Gate` for many decisions) matches a transfer against the origin's
rulebook and the approvals on file and returns a :class:`Decision`: allowed or denied, the rules,
the reasons, the approval used, the rulebook versions. Default deny. :mod:`~onshore.gate.approvals`
keeps each site's approvals (:class:`ApprovalRegistry`) and the deadlines their rulebook implies.
"""

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
