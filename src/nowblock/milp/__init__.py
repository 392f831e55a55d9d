"""The MILP allocator: one formulation, an LP stage made into a real plan, a MILP stage, Pyomo.

(``nowblock.optimize`` in 0.1; the package is called ``milp`` so that ``nowblock.optimize``
is always the function of the contract, never this package.)

- :func:`optimize` plans a sessions frame over a horizon and returns a :class:`Schedule`.
- :class:`MilpPolicy` is the receding-horizon policy behind ``simulate(..., policy="milp")``.
- :func:`solve_offline` is the perfect-foresight yardstick over a whole scenario.
- :func:`with_expected_arrivals` adds an arrivals forecast as soft demand (issue 4);
  :func:`with_expected_sessions` adds expected sessions, each at its own charging point.
- :func:`build_pyomo_model` gives the same model as a Pyomo ``ConcreteModel`` to extend.
"""

from nowblock.milp.adapters import from_sessions, from_snapshot
from nowblock.milp.formulation import Formulation
from nowblock.milp.options import OptimizeOptions
from nowblock.milp.schedule import Schedule
from nowblock.milp.solve import optimize, solve_formulation


def __getattr__(name: str):
    # Pyomo, the policy and the offline solve load on first use (Pyomo import costs ~1 s).
    import importlib

    where = {"MilpPolicy": "nowblock.milp.policy",
             "solve_offline": "nowblock.milp.offline", "build_pyomo_model": "nowblock.milp.pyomo_model",
             "solve_pyomo": "nowblock.milp.pyomo_model", "with_expected_arrivals": "nowblock.milp.arrivals",
             "with_expected_sessions": "nowblock.milp.arrivals"}
    if name in where:
        return getattr(importlib.import_module(where[name]), name)
    raise AttributeError(f"module 'nowblock.milp' has no attribute {name!r}")


__all__ = ["Formulation", "MilpPolicy", "OptimizeOptions", "Schedule", "build_pyomo_model",
           "from_sessions", "from_snapshot", "optimize", "solve_formulation", "solve_offline", "solve_pyomo",
           "with_expected_arrivals", "with_expected_sessions"]
