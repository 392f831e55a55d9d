"""Calling a policy: its answer checked, and its failure answered by the fallback.

The simulator (:meth:`nowblock.loop.step.ControlStep.run`) and the live loop
(:mod:`nowblock.control.deciding`) both ask a policy through :func:`call_policy`, so a policy
that raises, or answers something that is not setpoints for the cars it was asked about, is
replaced by the same baseline in both.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from nowblock.seam import BlockSnapshot, Policy, aligned_current_a
from nowblock.seam.policy import Decision, decide

# The step module's logger, as before these functions moved here: operators' log filters keep working.
log = logging.getLogger("nowblock.loop.step")


class PolicyAnswerError(ValueError):
    """A policy's answer that names no setpoint for the cars it was asked about."""


def check_answer(index: pd.Index, current_a) -> None:
    """Raise :class:`PolicyAnswerError` (or ``ValueError``) for an answer that is not setpoints
    for the cars in ``index`` (their session ids): None, an array of another length, a Series
    with a repeated id, or a Series/dict none of whose ids is one of them (answered by
    charge_point_id, say). Such answers read as "every car off" or stopped a simulation; the
    caller treats them as a failed policy (its fallback answers the step)."""
    if current_a is None:
        raise PolicyAnswerError("answered None instead of setpoints [A] by session_id")
    if isinstance(current_a, dict):
        current_a = pd.Series(current_a, dtype=object)
    if isinstance(current_a, pd.Series):
        if current_a.index.has_duplicates:
            raise PolicyAnswerError(f"answered a session id more than once: "
                                    f"{list(current_a.index[current_a.index.duplicated()][:3])}")
        if len(index) and len(current_a) and not current_a.index.isin(index).any():
            raise PolicyAnswerError(f"none of the {len(current_a)} ids it answered (first {current_a.index[0]!r}) "
                                    f"is a plugged-in car's session_id (first {index[0]!r})")
        return
    aligned_current_a(index, current_a)  # raises for an array of the wrong length


_reported: set = set()  # (policy, error) already logged with its traceback


def call_policy(policy: Policy, fallback: Policy, snapshot: BlockSnapshot) -> tuple[Decision, str, str]:
    """The policy's decision for ``snapshot``, or the fallback's when the policy raises or its
    answer is no setpoints for these cars (:func:`check_answer`).

    Returns
    -------
    decision : Decision
    name : str
        The name of the policy that decided.
    status : str
        "ok", "empty" (no car), or "failed: <error>".
    """
    if len(snapshot.cars) == 0:
        return Decision(pd.Series(np.zeros(0), index=snapshot.cars.index, name="current_a")), policy.name, "empty"
    try:
        decision = decide(policy, snapshot)
        check_answer(snapshot.cars.index, decision.current_a)
        return decision, policy.name, "ok"
    except Exception as exc:  # noqa: BLE001 - any policy trouble must still leave safe setpoints
        key = (policy.name, type(exc).__name__, str(exc)[:200])
        if key not in _reported and len(_reported) < 1000:  # the traceback once, not every step
            _reported.add(key)
            log.exception("policy %s failed; falling back to %s", policy.name, fallback.name)
        else:
            log.debug("policy %s failed again (%r); falling back to %s", policy.name, exc, fallback.name)
        return decide(fallback, snapshot), fallback.name, f"failed: {exc!r}"


def bypasses_safety(policy) -> bool:
    """True only for nowblock's own reference policy without the safety net (``uncontrolled``).

    A policy of one's own with an attribute ``safe = False`` (a "safe mode" flag of its own,
    say) skipped the safety net in the simulator; it is now warned about and made safe.
    """
    from nowblock.baselines.heuristics import HeuristicPolicy

    if getattr(policy, "safe", True) is not False:
        return False
    if isinstance(policy, HeuristicPolicy):
        return True
    if policy.name not in _reported:
        _reported.add(policy.name)
        log.warning("policy %s has safe=False: only nowblock's uncontrolled reference bypasses the safety net; "
                    "its answers are made safe", policy.name)
    return False
