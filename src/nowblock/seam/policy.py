"""The policy protocol: what every allocation strategy, heuristic or MILP, implements.

A policy answers a :class:`~nowblock.seam.snapshot.BlockSnapshot` with setpoints
(``schedule``). A policy that plans ahead may also implement ``decide`` and return a typed
:class:`Decision` with its whole plan; :func:`decide` asks any policy for one.
"""

from __future__ import annotations

import difflib
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


def check_policy(policy, what: str = "policy"):
    """``policy`` if it meets the protocol, checked before a run.

    What :func:`decide` calls is a callable ``decide`` or ``schedule``; results and logs name
    the policy by its ``name``. A misspelt method (``shedule``) ran every step on the fallback
    (114 of 114 steps with cars in an outside test) with the results labelled with the policy's
    own name, and an object without ``name`` stopped with a bare AttributeError.

    Parameters
    ----------
    policy : object
        The policy object given.
    what : str
        The argument's name, first in the message (``"policy"``, ``"fallback"``).

    Returns
    -------
    object
        ``policy`` itself.

    Raises
    ------
    TypeError
        A class instead of an instance, an object without a callable ``schedule`` or
        ``decide``, or without a non-empty str ``name``; the message names the protocol and a
        close spelling of a method the object has.
    """
    protocol = ("the nowblock.seam.Policy protocol (docs/howto/own-policy.md): a str `name` and a "
                "`schedule(snapshot)` method, or `decide(snapshot)`")
    kind = type(policy).__name__
    if isinstance(policy, type):
        raise TypeError(f"{what}: got the class {policy.__name__}, not a policy object: pass an instance "
                        f"({policy.__name__}(...)); {protocol}")
    lacks = []
    if not any(callable(getattr(policy, m, None)) for m in ("schedule", "decide")):
        own = [a for a in dir(policy) if not a.startswith("__")]
        near = difflib.get_close_matches("schedule", own, n=1, cutoff=0.75) or difflib.get_close_matches(
            "decide", own, n=1, cutoff=0.75)
        lacks.append("no callable `schedule` or `decide`" + (f" (it has {near[0]!r}: misspelt?)" if near else ""))
    name = getattr(policy, "name", None)
    if not (isinstance(name, str) and name.strip()):
        lacks.append("no `name`" if name is None else f"`name` {name!r} is not a non-empty str")
    if lacks:
        raise TypeError(f"{what}: a {kind} object is not a policy: {'; '.join(lacks)}; expected {protocol}")
    return policy


def decide(policy: Policy, snapshot: BlockSnapshot) -> Decision:
    """``policy.decide(snapshot)`` where the policy has it, else its ``schedule`` as a Decision."""
    own = getattr(policy, "decide", None)
    if callable(own):
        return own(snapshot)
    return Decision(policy.schedule(snapshot))
