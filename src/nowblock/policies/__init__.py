"""Every policy by name: the baseline heuristics and the receding-horizon MILP.

:func:`get_policy` is the one registry the simulator, the live loop and the command line use.
It sits above both kinds of policy (:mod:`nowblock.baselines`, :mod:`nowblock.milp`), so
neither has to know the other's registry. The baselines' strategy functions are re-exported
here for code written against ``nowblock.policies`` before they moved.
"""

from __future__ import annotations

from nowblock.baselines.heuristics import (  # noqa: F401 - re-exported (see the docstring)
    STRATEGIES,
    HeuristicPolicy,
    baseline_policy,
    edf_a,
    edf_order,
    equal_share_a,
    laxity_h,
    llf_a,
    llf_order,
    need_current_a,
    offer_bounds_a,
    round_robin_order,
    uncontrolled_a,
)
from nowblock.seam import Policy
from nowblock.seam.policy import check_policy

#: Names :func:`get_policy` knows.
POLICY_NAMES = (*STRATEGIES, "milp")


def get_policy(name: str | Policy, **kwargs) -> Policy:
    """The policy called ``name``.

    Parameters
    ----------
    name : str or Policy
        "uncontrolled", "equal", "edf", "llf", "round_robin" or "milp" (case-insensitive); a policy object is
        returned unchanged once :func:`~nowblock.seam.policy.check_policy` accepts it.
    **kwargs
        Options of the MILP policy (:class:`nowblock.milp.MilpPolicy`); the baselines take none.

    Returns
    -------
    Policy
        A fresh policy object (the MILP keeps its previous plan between calls).

    Raises
    ------
    TypeError
        An object that does not meet the policy protocol (no callable ``schedule`` or
        ``decide``, or no str ``name``), or options for a baseline.
    ValueError
        An unknown name.
    """
    if not isinstance(name, str):
        return check_policy(name)
    key = name.strip().lower()
    if key == "milp":
        from nowblock.milp import MilpPolicy  # lazy: pyomo and highspy load on first use

        return MilpPolicy(**kwargs)
    if key not in STRATEGIES:
        raise ValueError(f"policy: unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
    if kwargs:
        raise TypeError(f"policy {key!r} takes no options, got {sorted(kwargs)}")
    return baseline_policy(key)
