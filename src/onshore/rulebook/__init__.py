"""Rulebooks: what each jurisdiction's law calls the data, and what it requires to move it.

One vocabulary of data categories (:mod:`onshore.rulebook.categories`) shared by every
jurisdiction; one versioned YAML rulebook per jurisdiction mapping those categories to its legal
classes, thresholds, counting windows, destinations, purposes and mechanisms, each rule citing its
source and confidence (:mod:`~onshore.rulebook.model`); built-in ``cn``, ``eu`` and ``us``
rulebooks and users' own files (:mod:`~onshore.rulebook.loader`); each territory's boundary on
the map, against which ingest checks where clips were driven (:mod:`~onshore.rulebook.territory`);
``lint`` and ``diff``; and :func:`evaluate`, which tells the gate which rules match a transfer and
what they require.
"""

from onshore.rulebook.categories import (
    APPROVAL_MECHANISMS,
    CATEGORIES,
    DEID_STATES,
    MECHANISMS,
    PROHIBITED,
    PURPOSES,
    CategoryId,
    DeidState,
    MechanismId,
)
from onshore.rulebook.diff import Change, FieldChange, RulebookDiff, diff
from onshore.rulebook.evaluate import (
    DataItem,
    Decision,
    Evaluation,
    ItemClasses,
    PastTransfer,
    Recipient,
    Requirement,
    RuleMatch,
    TransferRequest,
    WindowCount,
    evaluate,
    restricted_software,
)
from onshore.rulebook.lint import LintReport, lint_builtin, lint_file, lint_text
from onshore.rulebook.loader import (
    BUILTIN_NAMES,
    Rulebooks,
    builtin,
    builtin_rulebooks,
    check_text,
    load_file,
    load_rulebooks,
    load_text,
)
from onshore.rulebook.model import (
    Comparison,
    Count,
    LegalClass,
    MechanismTerms,
    Membership,
    Obligation,
    Rule,
    Rulebook,
    SoftwareRestriction,
)
from onshore.rulebook.periods import shift_months, shift_working_days, window_start
from onshore.rulebook.problems import Problem, RulebookError, RulebookNotFound
from onshore.rulebook.territory import Boundary, Outside

__all__ = [
    "APPROVAL_MECHANISMS",
    "BUILTIN_NAMES",
    "CATEGORIES",
    "DEID_STATES",
    "MECHANISMS",
    "PROHIBITED",
    "PURPOSES",
    "Boundary",
    "CategoryId",
    "Change",
    "Comparison",
    "Count",
    "DataItem",
    "Decision",
    "DeidState",
    "Evaluation",
    "FieldChange",
    "ItemClasses",
    "LegalClass",
    "LintReport",
    "MechanismId",
    "MechanismTerms",
    "Membership",
    "Obligation",
    "Outside",
    "PastTransfer",
    "Problem",
    "Recipient",
    "Requirement",
    "Rule",
    "RuleMatch",
    "Rulebook",
    "RulebookDiff",
    "RulebookError",
    "RulebookNotFound",
    "Rulebooks",
    "SoftwareRestriction",
    "TransferRequest",
    "WindowCount",
    "builtin",
    "builtin_rulebooks",
    "check_text",
    "diff",
    "evaluate",
    "lint_builtin",
    "lint_file",
    "lint_text",
    "load_file",
    "load_rulebooks",
    "load_text",
    "restricted_software",
    "shift_months",
    "shift_working_days",
    "window_start",
]
