"""nowblock: share a city block's grid connection among its EV charging points.

The public API (see README.md): :class:`Site`, :class:`Scenario`, :func:`simulate`,
:func:`optimize`. Heavy parts (the solver, the forecaster, OCPP) are imported on first use.
"""

from nowblock.interface import BlockSnapshot, Policy, make_safe
from nowblock.scenario import Scenario, ScenarioError
from nowblock.sessions import SessionsError, validate_sessions
from nowblock.site import ChargePoint, Fuse, Site, SiteError

__version__ = "0.1.0"

_LAZY = {
    "simulate": ("nowblock.sim.simulator", "simulate"),
    "SimulationResult": ("nowblock.sim.simulator", "SimulationResult"),
    "optimize": ("nowblock.optimize", "optimize"),
    "Schedule": ("nowblock.optimize", "Schedule"),
}

__all__ = [
    "BlockSnapshot", "ChargePoint", "Fuse", "Policy", "Scenario", "ScenarioError",
    "SessionsError", "Site", "SiteError", "make_safe", "validate_sessions", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'nowblock' has no attribute {name!r}")
