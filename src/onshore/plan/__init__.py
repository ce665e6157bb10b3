"""The carmaker's decision, computed: transfer the data out, train where it lies, a hybrid, or
a model per market (:mod:`.build`), each site's part asked of its own gate (the ``plan`` read,
:mod:`onshore.reads.plan`), and the decision memo (:mod:`.memo`)."""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.plan.build import PLANS_DIR, PlanOptions, latest_plan, make_plan, plan_sites
    from onshore.plan.memo import memo_report, write_memo

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "PLANS_DIR": "build",
        "PlanOptions": "build",
        "latest_plan": "build",
        "make_plan": "build",
        "plan_sites": "build",
        "memo_report": "memo",
        "write_memo": "memo",
    },
)

__all__ = [
    "PLANS_DIR",
    "PlanOptions",
    "latest_plan",
    "make_plan",
    "memo_report",
    "plan_sites",
    "write_memo",
]
