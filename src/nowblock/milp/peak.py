"""The peak term: the least peak a plan can have, and the LP that prices the peak on the mean.

The peak rows (``charging + other load <= peak`` in every slot) tie every slot together and make
HiGHS's LP up to a few hundred times slower than the model without them
(docs/bench_optimize.md). :func:`nowblock.milp.solve.solve_formulation` therefore solves the
model without the peak term first and then, depending on how far that solution's peak is from
the critical peak (:func:`critical_peak_kw`), either the whole LP warm-started from its basis
(:func:`nowblock.milp.highs_fast.extend_basis`) or the LP of :func:`mean_peak_matrix`
(Lagrange's relaxation of the peak rows), whose optimum is a proven bound and whose solution is
made a real plan.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nowblock.milp.formulation import Formulation


def plan_peak_kw(form: Formulation, x: np.ndarray) -> float:
    """The highest base load plus charging power [kW] of a dense plan ``x`` [A]."""
    return float((np.asarray(form.base_kw, dtype=float) + form.kw_per_a @ x).max(initial=0.0))


def critical_peak_kw(form: Formulation, energy_kwh: np.ndarray) -> tuple[float, int]:
    """The least peak power [kW] any plan can have that gives every car ``energy_kwh`` [kWh], and
    the number of first slots that decide it: for every first ``k`` slots, the energy cars cannot
    get after them, spread over them, plus their mean base load; the largest over ``k`` (Yao,
    Demers and Shenker's critical interval, from the start of the horizon)."""
    if form.n_slots == 0:
        return 0.0, 0
    kwh = form.energy_per_a_kwh
    energy = np.asarray(energy_kwh, dtype=float)
    later = np.cumsum((form.upper_a * kwh)[:, ::-1], axis=1)[:, ::-1]  # the most a car can get from slot k on
    must = np.maximum(energy[:, None] - np.c_[later[:, 1:], np.zeros(form.n_cars)], 0.0).sum(axis=0)
    base = np.asarray(form.base_kw, dtype=float)
    level = must / np.cumsum(form.slot_h) + np.cumsum(base) / np.arange(1, form.n_slots + 1)
    k = int(np.argmax(level))
    return float(level[k]), k + 1


def mean_peak_matrix(form: Formulation, mf0, first_slots: int):
    """The model without its peak term (``mf0``, the matrix of ``form`` with
    ``peak_eur_per_kw=0``) with ``peak_eur_per_kw`` charged on the mean power of the first
    ``first_slots`` slots instead of the peak: Lagrange's relaxation of the peak rows with their
    multipliers spread evenly over those slots. Returns the matrix and the constant [EUR] to add
    to its optimum (the base load's share of that mean). Its LP optimum plus the constant is a
    proven lower bound on every plan (the peak is at least the mean); over the critical interval
    (:func:`critical_peak_kw`) it equalled the whole LP's bound on every cell of the instance
    matrix tried (docs/bench_optimize.md). Only the costs differ from ``mf0``: an optimal basis of
    ``mf0`` stays primal feasible for it."""
    car, slot = form.cells
    k = max(int(first_slots), 1)
    c = float(form.options.peak_eur_per_kw)
    cost = mf0.cost.copy()
    cur = mf0.cols["current_a"]
    cost[cur] += np.where(slot < k, c / k * form.kw_per_a[car], 0.0)
    return dataclasses.replace(mf0, cost=cost), c * float(np.mean(np.asarray(form.base_kw, dtype=float)[:k]))


#: The whole LP starts from the basis of the LP without the peak term when that LP's peak is at
#: most this many times the critical peak (and costs vary in time, :func:`warm_start_pays`):
#: 0.03 s against 1.4 s cold at a ratio of 1.03 (200 cars, tree, 288 slots, base load), 0.18 s
#: against 0.44 s at 1.34; at 2.3-2.6 (no base load) 1.5-2.3 times slower than cold
#: (docs/bench_optimize.md).
WARM_PEAK_RATIO = 1.5


def warm_start_pays(form: Formulation, x: np.ndarray, critical_kw: float) -> bool:
    """Whether the whole LP should start from the basis of the LP without the peak term, whose
    solution is ``x`` [A] (dense), given the critical peak [kW] of its energy: its peak within
    :data:`WARM_PEAK_RATIO` of the critical one, and the energy price or the base load changing
    over the horizon. Without that, every slot costs the same to the LP without the peak term,
    its optimal vertex puts energy in time arbitrarily, and its basis was a poor start even with
    its peak near the critical one (1000 cars, tree, 15 %, no load: 6.3 s from it against 0.84 s
    cold, ratio 1.3)."""
    if critical_kw > 0 and plan_peak_kw(form, x) > WARM_PEAK_RATIO * critical_kw:
        return False
    price = np.atleast_1d(np.asarray(form.price_eur_per_kwh, dtype=float))
    base = np.atleast_1d(np.asarray(form.base_kw, dtype=float))
    return bool((price.size and np.ptp(price) > 0) or (base.size and np.ptp(base) > 0))
