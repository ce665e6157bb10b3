"""The carmaker's decision, computed: transfer the data out, train where it lies, a hybrid, or
a model per market (:mod:`.build`), each site's part asked of its own gate (:mod:`.site`), and
the decision memo (:mod:`.memo`)."""

from onshore.plan.build import PLANS_DIR, PlanOptions, latest_plan, make_plan, plan_sites
from onshore.plan.memo import memo_report, write_memo

__all__ = [
    "PLANS_DIR",
    "PlanOptions",
    "latest_plan",
    "make_plan",
    "memo_report",
    "plan_sites",
    "write_memo",
]
