"""The MILP allocator: one formulation, a direct HiGHS fast path and a Pyomo model.

- :func:`optimize` plans a sessions frame over a horizon and returns a :class:`Schedule`.
- :class:`MilpPolicy` is the receding-horizon policy behind ``simulate(..., policy="milp")``.
- :func:`solve_offline` is the perfect-foresight yardstick over a whole scenario.
- :func:`with_expected_arrivals` adds an arrivals forecast as soft demand (issue 4).
- :func:`build_pyomo_model` gives the same model as a Pyomo ``ConcreteModel`` to extend.
"""

import sys
import types

from nowblock.optimize.formulation import Formulation, OptimizeOptions, from_sessions, from_snapshot
from nowblock.optimize.schedule import Schedule
from nowblock.optimize.solve import optimize, solve_formulation


def __getattr__(name: str):
    # Pyomo, the policy and the offline solve load on first use (Pyomo import costs ~1 s).
    import importlib

    where = {"MilpPolicy": "nowblock.optimize.policy", "solve_offline": "nowblock.optimize.offline",
             "build_pyomo_model": "nowblock.optimize.pyomo_model", "solve_pyomo": "nowblock.optimize.pyomo_model",
             "with_expected_arrivals": "nowblock.optimize.arrivals"}
    if name in where:
        return getattr(importlib.import_module(where[name]), name)
    raise AttributeError(f"module 'nowblock.optimize' has no attribute {name!r}")


__all__ = ["Formulation", "MilpPolicy", "OptimizeOptions", "Schedule", "build_pyomo_model", "from_sessions",
           "from_snapshot", "optimize", "solve_formulation", "solve_offline", "solve_pyomo", "with_expected_arrivals"]


class _CallableModule(types.ModuleType):
    """Lets ``nowblock.optimize(...)`` call :func:`optimize`: once this package is imported,
    ``nowblock.optimize`` names the package, not the function the contract promises."""

    def __call__(self, *args, **kwargs):
        return optimize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
