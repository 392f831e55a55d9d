"""The policy protocol: what every allocation strategy, heuristic or MILP, implements.

A policy answers a :class:`~nowblock.seam.snapshot.BlockSnapshot` with setpoints
(``schedule``). A policy that plans ahead may also implement ``decide`` and return a typed
:class:`Decision` with its whole plan; :func:`decide` asks any policy for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import pandas as pd

from nowblock.seam.snapshot import BlockSnapshot


@runtime_checkable
class Policy(Protocol):
    """Anything with a ``name`` and ``schedule(snapshot) -> current_a per session_id``."""

    name: str

    def schedule(self, snapshot: BlockSnapshot) -> pd.Series:
        """Setpoints [A] per phase for every car in ``snapshot.cars``, indexed by session_id."""
        ...


@dataclass(frozen=True)
class Decision:
    """A policy's answer for one snapshot.

    Attributes
    ----------
    current_a : pandas.Series
        [A per phase] Setpoints for now, by session_id.
    plan_a : pandas.DataFrame or None
        [A per phase] The plan over the policy's horizon (index slot start UTC, columns
        session_id; the first row is ``current_a``), or None for a policy that plans one step.
    status : str
        The policy's own word on how it got there (for the MILP: "optimal", "time_limit",
        "fallback", ...); "ok" for a heuristic.
    detail : str
        Free text for the operator (solver status, why a fallback ran).
    """

    current_a: pd.Series
    plan_a: pd.DataFrame | None = None
    status: str = "ok"
    detail: str = ""


def decide(policy: Policy, snapshot: BlockSnapshot) -> Decision:
    """``policy.decide(snapshot)`` where the policy has it, else its ``schedule`` as a Decision."""
    own = getattr(policy, "decide", None)
    if callable(own):
        return own(snapshot)
    return Decision(policy.schedule(snapshot))
