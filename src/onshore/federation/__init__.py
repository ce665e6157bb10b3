"""Federated training of the driving model with Flower, governed at both ends.

- :mod:`~onshore.federation.options`: what a run trains and how.
- :mod:`~onshore.federation.site`: the ClientApp's handlers and the site's outbound mod (checks,
  gate, ledger, signature on everything that leaves).
- :mod:`~onshore.federation.coordinator`: the governed strategies (refusals, FedNova).
- :mod:`~onshore.federation.apps`: the Flower apps; :mod:`~onshore.federation.run`: the
  simulation on one machine.
"""

from typing import TYPE_CHECKING

from onshore._lazy import lazy

if TYPE_CHECKING:
    from onshore.federation.options import STRATEGIES, FederatedOptions
    from onshore.federation.run import run_federated

# Imported when first used (see onshore._lazy): importing one module of the package does
# not bring all the others.
__getattr__, __dir__ = lazy(
    __name__,
    {
        "STRATEGIES": "options",
        "FederatedOptions": "options",
        "run_federated": "run",
    },
)

__all__ = ["STRATEGIES", "FederatedOptions", "run_federated"]
