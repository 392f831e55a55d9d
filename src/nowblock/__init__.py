"""nowblock: share a city block's grid connection among its EV charging points.

The public API (see README.md): :class:`Site`, :class:`Scenario`, :func:`simulate`,
:func:`optimize`, the seam (:class:`BlockSnapshot`, :class:`Policy`, :func:`make_safe`).
Every name below is imported on first use (PEP 562), so ``import nowblock.forecast`` (or any
other subpackage) does not pay for the rest; the solver, the forecaster and OCPP are only
imported when used.

The package is layered, one folder a layer, imports pointing down only (checked by the
import-linter contract in pyproject.toml)::

    cli                   command line: simulate, serve, demo, study
    api                   the HTTP API of serve: live state, operator inputs, stream, metrics
    control | studies     the live loop: controller, live snapshot, dispatch waves, fail-safe |
                          studies: many blocks x policies on Ray, one table
    sim                   the simulator, battery model, simulated OCPP chargers
    loop                  one control step, shared by simulated and live: snapshot building,
                          needs estimation, reservations, policy call with fallback
    policies              every policy by name
    optimize              the MILP (one formulation, HiGHS fast path, Pyomo model)
    baselines | forecast  heuristics | base load, needs and arrival forecasts
    ocpp | store          the protocol only | persistence (SQLite, PostgreSQL)
    seam                  BlockSnapshot, Policy, make_safe
    block                 site, sessions, scenario, synthetic blocks
"""

from __future__ import annotations

import importlib

from nowblock import _compat

__version__ = "0.2.0.dev0"

_LAZY = {
    "BlockSnapshot": ("nowblock.seam", "BlockSnapshot"),
    "Policy": ("nowblock.seam", "Policy"),
    "make_safe": ("nowblock.seam", "make_safe"),
    "Scenario": ("nowblock.block.scenario", "Scenario"),
    "ScenarioError": ("nowblock.block.scenario", "ScenarioError"),
    "SessionsError": ("nowblock.block.sessions", "SessionsError"),
    "validate_sessions": ("nowblock.block.sessions", "validate_sessions"),
    "ChargePoint": ("nowblock.block.site", "ChargePoint"),
    "Fuse": ("nowblock.block.site", "Fuse"),
    "Site": ("nowblock.block.site", "Site"),
    "SiteError": ("nowblock.block.site", "SiteError"),
    "simulate": ("nowblock.sim.simulator", "simulate"),
    "SimulationResult": ("nowblock.sim.simulator", "SimulationResult"),
    "study": ("nowblock.studies.runner", "study"),
    "Study": ("nowblock.studies.spec", "Study"),
    "optimize": ("nowblock.milp", "optimize"),
    "Schedule": ("nowblock.milp", "Schedule"),
    "get_policy": ("nowblock.policies", "get_policy"),
}

__all__ = [
    "BlockSnapshot", "ChargePoint", "Fuse", "Policy", "Scenario", "ScenarioError",
    "SessionsError", "Site", "SiteError", "make_safe", "validate_sessions",
    "simulate", "SimulationResult", "study", "Study", "optimize", "Schedule", "get_policy",
]

_compat.install()


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    # `import nowblock; nowblock.sim.simulate` works without importing the subpackage first
    try:
        return importlib.import_module(f"nowblock.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"nowblock.{name}":
            raise
    raise AttributeError(f"module 'nowblock' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
