"""nowblock: share a city block's grid connection among its EV charging points.

The public API (see README.md): :class:`Site`, :class:`Scenario`, :func:`simulate`,
:func:`optimize`. Every name below is imported on first use (PEP 562), so
``import nowblock.forecast`` (or any other subpackage) does not pay for the rest; the solver,
the forecaster and OCPP are only imported when used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "BlockSnapshot": ("nowblock.interface", "BlockSnapshot"),
    "Policy": ("nowblock.interface", "Policy"),
    "make_safe": ("nowblock.interface", "make_safe"),
    "Scenario": ("nowblock.scenario", "Scenario"),
    "ScenarioError": ("nowblock.scenario", "ScenarioError"),
    "SessionsError": ("nowblock.sessions", "SessionsError"),
    "validate_sessions": ("nowblock.sessions", "validate_sessions"),
    "ChargePoint": ("nowblock.site", "ChargePoint"),
    "Fuse": ("nowblock.site", "Fuse"),
    "Site": ("nowblock.site", "Site"),
    "SiteError": ("nowblock.site", "SiteError"),
    "simulate": ("nowblock.sim.simulator", "simulate"),
    "SimulationResult": ("nowblock.sim.simulator", "SimulationResult"),
    "optimize": ("nowblock.optimize", "optimize"),
    "Schedule": ("nowblock.optimize", "Schedule"),
}

__all__ = [
    "BlockSnapshot", "ChargePoint", "Fuse", "Policy", "Scenario", "ScenarioError",
    "SessionsError", "Site", "SiteError", "make_safe", "validate_sessions",
    "simulate", "SimulationResult", "optimize", "Schedule",
]


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    # `import nowblock; nowblock.site.Site` worked while the submodules were imported eagerly
    try:
        return importlib.import_module(f"nowblock.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"nowblock.{name}":
            raise
    raise AttributeError(f"module 'nowblock' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
