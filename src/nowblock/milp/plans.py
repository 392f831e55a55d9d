"""The real plans of one call: the best so far, real plans from relaxed currents, polishing.

:func:`nowblock.milp.solve.solve_formulation` makes real plans from every relaxation it solves
(:func:`real_plan`), keeps the best by objective (:class:`Best`) and, before any MILP stage,
polishes it (:func:`polish`: the best plan rounded again as if it were a relaxation, while that
lowers the objective).
"""

from __future__ import annotations

import numpy as np

from nowblock.milp.formulation import Formulation, rows_times
from nowblock.milp.matrix import plan_objective
from nowblock.milp.peak import plan_peak_kw
from nowblock.milp.rounding import Plan, make_plan, pilot_bounds, unbalance_drawn


class Best:
    """The best real plan so far, by objective, with how it was found."""

    def __init__(self) -> None:
        self.plan: Plan | None = None
        self.objective = np.inf
        self.method = ""

    def offer(self, plan: Plan, objective: float, method: str, *, wins_ties: bool = False) -> None:
        """Keep ``plan`` if its objective [EUR] is lower (or equal, with ``wins_ties``)."""
        tol = 1e-9 * max(1.0, abs(self.objective)) if np.isfinite(self.objective) else 0.0
        if plan is not None and (objective < self.objective - tol or (wins_ties and objective <= self.objective + tol)):
            self.plan, self.objective, self.method = plan, objective, method


def real_plan(form: Formulation, mf, x: np.ndarray, caps=None, until: float | None = None) -> tuple[Plan, float]:
    """The best of real plans made from relaxed currents ``x`` [A], with its objective [EUR]: one
    for each power cap in ``caps`` [kW] (default: the relaxation's own peak, kept while it can
    be, and none: the steps stay in the slots the relaxation chose, worth it when prices differ
    by more than the peak costs; measured both ways on the instance matrix,
    docs/bench_optimize.md). ``until``: the call's deadline (``time.perf_counter()`` [s]), after
    which the rounding's slow repairs take shortcuts (:func:`~nowblock.milp.rounding.make_plan`'s
    ``shave_until``)."""
    best, best_obj = None, np.inf
    for peak in (plan_peak_kw(form, x), np.inf) if caps is None else caps:
        plan = make_plan(form, x, peak_kw=peak, shave_until=until)
        obj = plan_objective(form, mf, plan.current_a)
        if obj < best_obj - 1e-12:
            best, best_obj = plan, obj
    return best, best_obj


def as_plan(form: Formulation, x: np.ndarray, tol: float = 1e-6) -> Plan | None:
    """Currents ``x`` (n, T) [A] as they are, if they already are a real plan: whole pilot steps,
    0 or from the least setpoint to the most a car may be offered, every fuse phase kept, the
    unbalance rows with the light side at what cars really draw, no car beyond its energy
    ceiling (:attr:`Formulation.ceiling_kwh`); else None. A MILP solved with binaries on every
    slot gives such a plan, and rounding it again (:func:`real_plan`) moved its steps and lost
    what it had found (an outside test's blocks: the MILP at the optimum, 26.00 EUR, rounded to
    27.65; -0.417 rounded to -0.253)."""
    step = float(form.options.current_step_a)
    x = np.asarray(x, dtype=float)
    y = np.round(x / step) * step
    y[np.abs(y) < tol] = 0.0
    if y.size == 0 or np.abs(y - x).max() > tol:
        return None
    up, on_a = pilot_bounds(form)
    if (y < 0).any() or (y > up + tol).any() or ((y > 0) & (y < on_a[:, None] - tol)).any():
        return None
    lim = form.limits
    nf = lim.n_fuse_rows
    if (rows_times(lim.g[:nf], y) > lim.h[:nf] + tol).any():
        return None
    unb = unbalance_drawn(form, y)
    if unb is not None and (unb > lim.h[nf:] + tol).any():
        return None
    energy = (y * form.energy_per_a_kwh).sum(axis=1)
    need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
    if (energy > np.maximum(form.ceiling_kwh, need) + 1e-9).any():
        return None
    return Plan(current_a=y, energy_kwh=energy)


def polish(form: Formulation, mf, plan: Plan, objective: float, rounds: int, time_ok,
           until: float | None = None) -> tuple[Plan, float, int]:
    """Round a real ``plan`` again (:func:`real_plan`, its currents taken as a relaxation) while
    that lowers its ``objective`` [EUR], at most ``rounds`` times and while ``time_ok()``;
    returns the best plan, its objective and the rounds that improved it. A second rounding
    sees where the first left room (a car short of its need next to a step the real-draw
    unbalance repair freed) and places the steps again from there, under the plan's own peak
    (the same objectives as with a second, uncapped rounding on four cells, once lower, at half
    the time). Measured on the instance
    matrix's unbalance cells: 1718.2 -> 1697.3 -> 1690.6 EUR (200 cars, tree, 35 %, 15 min,
    bound 1638.4), 2093.7 -> 2084.2 -> 2080.2 -> 2077.2 (200 cars, flat, 15 %, 5 min, load);
    the MILP stage that came next until now (HiGHS from this plan as its incumbent) returned
    that very incumbent on every such cell tried, so its whole gain had been this rounding
    (docs/bench_optimize.md). ``until``: as in :func:`real_plan`."""
    improved = 0
    for _ in range(rounds):
        if not time_ok():
            break
        new, new_obj = real_plan(form, mf, plan.current_a, caps=(plan_peak_kw(form, plan.current_a),), until=until)
        if not new_obj < objective - 1e-9 * max(1.0, abs(objective)):
            break
        plan, objective, improved = new, new_obj, improved + 1
    return plan, objective, improved


def certified(objective: float, bound: float, o) -> bool:
    """Whether ``bound`` [EUR] proves ``objective`` [EUR] within ``o.mip_rel_gap`` or
    ``o.mip_abs_gap`` [EUR] (``o``: :class:`~nowblock.milp.options.OptimizeOptions`)."""
    return bool(np.isfinite(bound)) and (relative_gap(objective, bound) <= o.mip_rel_gap
                                         or objective - bound <= o.mip_abs_gap)


def relative_gap(objective: float, bound: float) -> float:
    """``(objective - bound) / |objective|`` (both [EUR]), at least 0; infinite without both."""
    if not np.isfinite(bound) or not np.isfinite(objective):
        return float("inf")
    return max(objective - bound, 0.0) / max(abs(objective), 1e-9)
