"""From a relaxed solution to a real plan: every slot in pilot steps, "0 or >= min", every limit kept.

:func:`make_plan` is the step between a solver's continuous currents and what a charger accepts.
It is also the whole method when there is no solver answer (``x`` all zero: a greedy, earliest
deadline first, and under a power cap placed slot by slot least laxity first). In order (kernels in :mod:`nowblock.milp.plan_kernels`):

1. **Guided placement**, car by car, earliest departure first (``sharing="fair"``: the car with
   the smallest share of its need first): the car's own relaxed currents floored to a step (a
   current below the minimum dropped), then one more step on the cells that lost the most, until
   the car has what the relaxation gave it (its *target*, at most its need). Fuse rows and the
   relaxation's own peak power are checked; a car placed early keeps its room, so the cars with
   the least time get the rounding's spare steps.
2. **Unbalance repair**: where a phase-unbalance row broke (phases were floored by different
   amounts), the most loaded car on the heavy phase is lowered a step at a time.
3. **Fill and trim** under the relaxation's peak: cars still below target take steps in the
   cheapest (then earliest) slots with room; energy beyond a target is taken back from the
   dearest slots. If a car still misses its target, the power cap rises half a step of the
   strongest car at a time and the cheapest, least loaded slots fill first.
4. **More where there is room**: a car short of its *need* takes whatever room is left (a kWh of
   shortfall costs more than any peak the model prices).
5. **Peak shaving**: single steps move out of the highest slot into on-cells of the same car in
   slots no dearer and lower by more than the step.
6. **Hand-over**: a step a car gets beyond its need goes to a car short of its need in the same
   slot, where that lowers the weighted shortfall.
7. **Front-loading** (``early_eur_per_kwh > 0``): each car's energy moves to its earliest slots
   that cost no more, under the plan's own peak.
8. **Unbalance with the real draws** (:func:`keep_unbalance_drawn`): the light side of an
   unbalance row counts only what its cars draw (a full car draws nothing); where that breaks
   a row, cars on the heavy side are lowered a step at a time, first those that lose no energy.
9. **Blocked cars served** (:func:`serve_unbalance_blocked`; not in the plan from nothing, the
   fallback when time is short): a car short of its need whose next step breaks an unbalance
   row gets it where a light-phase car can move a step into that slot, or a heavy-phase car a
   step out of it, each from or to another slot of its own.
10. **Fuse rooms shared** (:func:`serve_fuse_blocked`; not in the plan from nothing either): a car
   short of its need that a fuse row blocks by less than its next step (a phase with 1-5 A left
   and a 6 A minimum) gets it where a car on that row can give the missing amperes in the slot
   and take them back in a slot of its own, where the short car gives up the same (a swap) or
   the row has room (a shift).
11. **Re-check** from scratch: every row of every slot, every maximum, "0 or >= min"; a slot that
   fails (none should) is repaired by the shared safety net :func:`nowblock.seam.make_safe`.

Every stage keeps the plan feasible for every row it checks; the energy a car gets only changes
towards its target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nowblock.milp.formulation import Formulation, rows_times

_TOL = 1e-9


@dataclass(frozen=True, eq=False)
class Plan:
    """A real plan: ``current_a`` (n, T) [A] in pilot steps, ``energy_kwh`` per car [kWh] it
    delivers, ``missing_kwh`` [kWh] what cars got less than their targets (the relaxation's
    energy) in total, and ``repaired_slots``, the slots the safety net had to repair (0 in normal
    use)."""

    current_a: np.ndarray
    energy_kwh: np.ndarray
    missing_kwh: float = 0.0
    repaired_slots: int = 0


def pilot_bounds(form: Formulation) -> tuple[np.ndarray, np.ndarray]:
    """Per cell the most a plan may offer [A] (the upper bound floored to a step; 0 where the car
    cannot charge or its maximum is below its minimum) and per car the least nonzero setpoint
    [A] (:attr:`Formulation.min_on_a`)."""
    lo = np.asarray(form.min_current_a, dtype=float)
    on_a = form.min_on_a
    up = form.floor_to_step(form.upper_a)
    up = np.where((form.energy_per_a_kwh > 0) & (up >= on_a[:, None] - _TOL) & (form.upper_a >= lo[:, None] - 1e-9),
                  up, 0.0)
    return up, on_a


def shortfall_weights(form: Formulation) -> np.ndarray:
    """Per car what a kWh it misses weighs (its priority times its shortfall weight), shape (n,)."""
    w = np.asarray(form.priority, dtype=float) * (1.0 if form.shortfall_weight is None
                                                 else np.asarray(form.shortfall_weight, dtype=float))
    return np.broadcast_to(w, (form.n_cars,)).astype(float)


def due_target_kwh(form: Formulation) -> np.ndarray | None:
    """Per car the part of its need [kWh] due by the horizon's end (:attr:`Formulation.due_kwh`,
    at most the need), or None when the whole need of every car is due."""
    if form.due_kwh is None:
        return None
    need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
    return np.clip(np.nan_to_num(np.asarray(form.due_kwh, dtype=float)), 0.0, need)


def car_order(form: Formulation, target_kwh: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """The order cars are served in: cars with something due by the horizon's end before cars
    with nothing due (:func:`due_target_kwh`), then earliest last usable slot first, then the
    heavier shortfall weight, then the smaller share of the due part already targeted [kWh/kWh],
    then the smaller share of the whole need; ``sharing="fair"`` puts the shares first (after
    the due/nothing-due split). Without ``form.due_kwh`` every car's whole need is due."""
    T = form.n_slots
    last = np.where(usable.any(axis=1), T - 1 - np.argmax(usable[:, ::-1], axis=1), T)
    weight = shortfall_weights(form)
    need = np.maximum(form.need_kwh, 0.0)
    share = np.where(need > 1e-9, target_kwh / np.maximum(need, 1e-9), 1.0)
    due = due_target_kwh(form)
    if due is None:
        later, share_due = np.zeros(len(need), dtype=bool), share
    else:
        # A car with nothing due ranks by its whole need, behind every car with something due.
        later = (due <= 1e-9) & (need > 1e-9)
        share_due = np.where(due > 1e-9, np.minimum(target_kwh, due) / np.maximum(due, 1e-9), share)
    if form.options.sharing == "fair":
        return np.lexsort((-weight, last, share, share_due, later)).astype(np.int64)
    return np.lexsort((share, share_due, -weight, last, later)).astype(np.int64)


def make_plan(form: Formulation, x_a: np.ndarray | None = None, *, peak_kw: float = np.inf,
              target_kwh: np.ndarray | None = None, front_load: bool | None = None,
              shave_until: float | None = None, raise_until: float | None = None) -> Plan:
    """Turn a relaxed dense plan ``x_a`` (n, T) [A] into a real one (module docstring).

    Parameters
    ----------
    form : Formulation
    x_a : ndarray, optional
        The relaxed currents [A]; None (or zeros): plan from nothing, earliest deadline first.
    peak_kw : float
        The relaxation's peak power [kW] (base load plus charging), the cap the plan keeps to
        while it can; inf: no cap.
    target_kwh : ndarray, optional
        Energy [kWh] each car should get; default what ``x_a`` gives it, at most its need (with
        no ``x_a``: its need).
    front_load : bool, optional
        Move energy to earlier slots that cost no more (default: ``early_eur_per_kwh > 0``).
    shave_until : float, optional
        ``time.perf_counter()`` value [s] after which peak shaving stops (it only lowers the peak,
        so any prefix of its moves is a plan), the cap is no longer raised half a step at a time
        (what the targets still miss is then placed without the cap, as after the last raise)
        and the unbalance repair mends rows in whole moves (:func:`keep_unbalance_drawn`);
        default: no time bound.
    raise_until : float, optional
        ``time.perf_counter()`` value [s] after which the cap is no longer raised, if before
        ``shave_until`` (default: ``shave_until``): a caller that must keep time for the
        fills after the raises, which cannot stop, ends them earlier without cutting the
        peak shaving short.

    Returns
    -------
    Plan
    """
    from nowblock.milp import plan_kernels as pk

    n, T = form.n_cars, form.n_slots
    step = float(form.options.current_step_a)
    kwh = np.ascontiguousarray(form.energy_per_a_kwh, dtype=float)
    need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
    up, on_a = pilot_bounds(form)
    ceiling = np.maximum(form.ceiling_kwh, need)
    x = np.zeros((n, T)) if x_a is None else np.nan_to_num(np.asarray(x_a, dtype=float), posinf=0.0, neginf=0.0)
    if target_kwh is None:
        target = need.copy() if x_a is None else np.minimum((np.clip(x, 0.0, None) * kwh).sum(axis=1), need)
    else:
        target = np.minimum(np.asarray(target_kwh, dtype=float), need)
    lim = form.limits
    g_start, g_row, g_val = lim.by_car
    r_start, r_car, r_val = lim.by_row
    y = np.zeros((n, T))
    delivered = np.zeros(n)
    slack = lim.h.copy()
    kw = np.asarray(form.kw_per_a, dtype=float)
    base = np.asarray(form.base_kw, dtype=float)
    cap = float(peak_kw) + 1e-6 if np.isfinite(peak_kw) else np.inf
    power_room = cap - base
    order = car_order(form, target, up > 0)
    price = np.asarray(form.price_eur_per_kwh, dtype=float)
    by_cost = np.lexsort((np.arange(T), price)).astype(np.int64)

    rows = (g_start, g_row, g_val, slack, kw)
    if x_a is None and np.isfinite(cap):
        # From nothing under a cap: slot by slot, least laxity first.
        pk.fill_least_laxity(y, delivered, target, kwh, up, on_a, *rows, power_room, step, _TOL)
    if x_a is not None:
        pk.place_guided(y, delivered, target, ceiling, _light_phase_up(form, x, step), kwh, up, on_a, order, *rows,
                        power_room, lim.n_fuse_rows, step, _TOL)
        # Cells still below their relaxed value, the largest loss first (ties: the car served
        # first), for round-ups that check every row once the unbalance rows hold.
        lost = x - y
        cand_car, cand_slot = np.nonzero(lost > 1e-7)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        pick = np.lexsort((rank[cand_car], -lost[cand_car, cand_slot]))
        cand_car, cand_slot = cand_car[pick].astype(np.int64), cand_slot[pick].astype(np.int64)
        pk.lower_to_fit(y, delivered, kwh, on_a, r_start, r_car, r_val, *rows, power_room, step, _TOL)
        for _ in range(8):
            if not pk.round_up(y, delivered, target, x, kwh, up, on_a, cand_car, cand_slot, *rows, power_room,
                               step, _TOL):
                break

    due = due_target_kwh(form)
    if due is not None:
        # What is due by the horizon's end first: the fills below take each car to its whole
        # target in turn, and a car's later part would take room a due car needs.
        pk.fill(y, delivered, np.minimum(target, due), kwh, up, on_a, order, by_cost, *rows, power_room, step, _TOL)
    # Fill and trim under the cap; raise the cap while someone misses the target.
    d_kw = step * float(kw.max(initial=0.0))
    slot_order = by_cost
    idle = 0  # rounds of the loop below that added nothing
    no_cap = np.full(T, np.inf)
    for _ in range(64):
        added = 0.0
        for _ in range(4):  # again while it adds: a light phase raised can make room on a heavy one
            more = pk.fill(y, delivered, target, kwh, up, on_a, order, slot_order, *rows, power_room, step, _TOL)
            added += more
            if more <= 0:
                break
        pk.trim(y, delivered, target, kwh, on_a, by_cost, *rows, power_room, step, _TOL)
        if not np.isfinite(cap) or (target - delivered <= 1e-9).all() or d_kw <= 0:
            break
        stop = shave_until if raise_until is None else raise_until
        if stop is not None and time.perf_counter() >= stop:
            # Past the call's deadline the raises end and the fill below places the rest without
            # the cap: the least-laxity plan under the critical peak of a call short of time ran
            # all 64 raises (114 fills, 0.7 s at 2,000 cars x 96 slots) and the call returned at
            # 1.8-2.5 x its 0.8 s limit.
            break
        if added <= 0:
            # Raise the cap only while it is what stops a fill: where every step left breaks a
            # row (an unbalance row, typically) nothing would be added without the cap either,
            # and the loop ran all 64 rounds for nothing (200 cars x 288 slots with unbalance
            # rows: 214 fills, a quarter of the call). A fill that adds nothing uncapped adds
            # nothing under any cap, so the plan is the same. Asked after 1, 2, 4, ... idle
            # rounds: where the cap does bind, asking every round doubled the fills (the
            # least-laxity plan under the critical peak: 137 fills, 0.24 of its 0.33 s).
            idle += 1
            if idle & (idle - 1) == 0 and pk.fill(y.copy(), delivered.copy(), target, kwh, up, on_a, order, slot_order,
                                                  g_start, g_row, g_val, slack.copy(), kw, no_cap, step, _TOL) <= 0:
                break
            power_room += 0.5 * d_kw
            slot_order = np.lexsort((np.arange(T), base + kw @ y, price)).astype(np.int64)
    pk.fill(y, delivered, target, kwh, up, on_a, order, slot_order, *rows, no_cap, step, _TOL)
    # Beyond the relaxation's targets, up to the due part, then up to the need, wherever there is room.
    if (need - delivered > 1e-9).any():
        if due is not None:
            pk.fill(y, delivered, due, kwh, up, on_a, order, by_cost, *rows, no_cap, step, _TOL)
        pk.fill(y, delivered, need, kwh, up, on_a, order, by_cost, *rows, no_cap, step, _TOL)
    if lim.g.shape[0] > lim.n_fuse_rows and (need - delivered > 1e-9).any():
        # Unbalance-blocked cars: the light phases take more in the same slot, up to their need
        # (a full car stops drawing: current beyond its need would balance nothing), or move a
        # step there from another slot of theirs.
        for _ in range(4):
            if not pk.fill_balanced(y, delivered, need, need, kwh, up, on_a, order, by_cost, g_start, g_row,
                                    g_val, r_start, r_car, r_val, slack, kw, no_cap, lim.n_fuse_rows, step, _TOL):
                break
    keep = np.maximum(np.minimum(delivered, need), target)
    neg_power = -(base + kw @ y)
    if T > 1:
        moves = 20 * T
        # In chunks against a deadline: the greedy plan for a call short of time spent 0.77 of its
        # 0.81 s here (1,000 cars x 288 slots), and the call returned at 2.8 x its limit.
        chunk = moves if shave_until is None else max(64, T)
        while moves > 0 and (shave_until is None or time.perf_counter() < shave_until):
            k = min(chunk, moves)
            done = pk.shave_peak(y, delivered, keep, ceiling, kwh, up, on_a, price, *rows, neg_power, step, _TOL, k)
            moves -= done
            if done < k:
                break
    if front_load if front_load is not None else form.options.early_eur_per_kwh > 0:
        room = float(np.max(-neg_power, initial=0.0)) + 1e-6 + neg_power
        pk.front_load(y, delivered, keep, ceiling, kwh, up, on_a, order, price, *rows, room, step, _TOL)

    # What the moves above freed, for cars still short of their need; then the steps some cars
    # get beyond their need, where a car short of its need could use them.
    if (need - delivered > 1e-9).any():
        if due is not None:
            pk.fill(y, delivered, due, kwh, up, on_a, order, by_cost, *rows, no_cap, step, _TOL)
        pk.fill(y, delivered, need, kwh, up, on_a, order, by_cost, *rows, no_cap, step, _TOL)
        weight = shortfall_weights(form)
        if due is not None:
            # A kWh is worth what the model prices it at: a car past its due part (or one giving up
            # a step of the part it could get after the horizon) after_horizon_weight times its
            # weight; else a car whose whole need is due gave a step to one with nothing due.
            weight = np.where((delivered < due - 1e-9) | (need - due <= 1e-9), weight,
                              weight * float(form.options.after_horizon_weight))
        pk.pass_on_excess(y, delivered, need, weight, kwh, up, on_a, *rows, no_cap, step, _TOL)
    y = np.round(y / step) * step  # whole steps exactly (sums of steps drift in floating point)
    if keep_unbalance_drawn(form, y, on_a, shave_until):
        # The cars lowered may find room in other slots: fill up to the need, repair again, and
        # keep the result while it lowers the weighted shortfall (a fill can overshoot a light-
        # side car's need and so break a row with real draws again: hence the comparison).
        weight = shortfall_weights(form)
        later_w = weight * float(form.options.after_horizon_weight)
        due_or_need = need if due is None else due

        def short(z):
            # Priced as the model prices it: the due part at the car's weight, the rest at
            # after_horizon_weight times it.
            miss = np.maximum(need - (z * kwh).sum(axis=1), 0.0)
            later = np.minimum(miss, need - due_or_need)
            return float((weight * (miss - later) + later_w * later).sum())

        for _ in range(3):
            if short(y) <= 1e-9:
                break
            z = y.copy()
            d_z = (z * kwh).sum(axis=1)
            s_z = lim.h - rows_times(lim.g, z)
            if due is not None:
                pk.fill(z, d_z, due, kwh, up, on_a, order, by_cost, g_start, g_row, g_val, s_z, kw, no_cap, step,
                        _TOL)
            pk.fill(z, d_z, need, kwh, up, on_a, order, by_cost, g_start, g_row, g_val, s_z, kw, no_cap, step, _TOL)
            z = np.round(z / step) * step
            keep_unbalance_drawn(form, z, on_a, shave_until)
            if short(z) >= short(y) - 1e-9:
                break
            y = z
    # Not for the plan from nothing: it is the fallback when time is short, and the moves cost
    # 0.25 s of its 1.7 s at 2,000 cars x 288 slots (a call limited to 1.65 s returned in 1.9 s).
    if x_a is not None and serve_unbalance_blocked(form, y):
        y = np.round(y / step) * step
    if x_a is not None and serve_fuse_blocked(form, y, shave_until):
        y = np.round(y / step) * step
    y, repaired = _recheck(form, y, up, on_a)
    energy = (y * kwh).sum(axis=1)
    return Plan(current_a=y, energy_kwh=energy, missing_kwh=float(np.maximum(target - energy, 0.0).sum()),
                repaired_slots=repaired)


def _light_phase_up(form: Formulation, x: np.ndarray, step: float) -> np.ndarray:
    """``x`` [A] with the cells of cars on the light phase of a binding unbalance row rounded up
    to a step: phase totals are whole steps in any plan, and where the relaxation holds the heavy
    phase exactly ``max_unbalance_a`` above the light one, flooring both phases would take the
    difference out of the heavy phase's cars (measured: 0.1-1.5 % of the energy on the matrix's
    unbalance cells). The energy a light-phase car gets too much is trimmed later where it can be."""
    lim = form.limits
    if lim.g.shape[0] == lim.n_fuse_rows or not len(x):
        return x
    u = lim.h[lim.n_fuse_rows, 0]
    root = lim.g[0:3]
    load = rows_times(root, x)  # (3, T) charging current per grid phase of the root [A]
    light = load <= load.max(axis=0, keepdims=True) - u + 1e-6  # (3, T): the light side of a binding row
    only = (root > 0) & (root.sum(axis=0, keepdims=True) == 1)  # (3, n): single-phase cars by phase
    up_cells = rows_times(only.T, light) > 0  # (n, T)
    if not up_cells.any():
        return x
    return np.where(up_cells & (x > 1e-7), np.ceil(x / step - 1e-7) * step, x)


def drawn_dense(form: Formulation, y: np.ndarray) -> np.ndarray:
    """(n, T) current [A] each car really draws under plan ``y`` [A]: its setpoint until it has
    its need, in slot order, then only the rest (:func:`nowblock.milp.matrix.drawn_current_a`)."""
    kwh = np.asarray(form.energy_per_a_kwh, dtype=float)
    need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
    return _drawn_rows(np.asarray(y, dtype=float), kwh, need)


def _drawn_rows(y, kwh, need):
    e = y * kwh
    before = np.cumsum(e, axis=-1) - e
    rest = np.maximum(np.asarray(need)[..., None] - before, 0.0)
    return np.where(kwh > 0, np.minimum(y, rest / np.where(kwh > 0, kwh, 1.0)), y)


def unbalance_drawn(form: Formulation, y: np.ndarray) -> np.ndarray | None:
    """The unbalance rows' left-hand sides [A] (rows x slots) under plan ``y`` [A], the light side
    counted with what its cars draw (:func:`drawn_dense`), the heavy side with their setpoints
    (a car may draw all it is offered); None without an unbalance limit."""
    lim = form.limits
    nf = lim.n_fuse_rows
    if lim.g.shape[0] == nf:
        return None
    return _unbalance_lhs(lim.g[nf:], y, drawn_dense(form, y))


def _unbalance_lhs(g: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Unbalance rows ``g`` times the plan: the heavy side (positive coefficients) at setpoints
    ``y`` [A], the light side at draws ``d`` [A]; (rows x slots) [A]."""
    return rows_times(np.clip(g, 0.0, None), y) + rows_times(np.clip(g, None, 0.0), d)


def keep_unbalance_drawn(form: Formulation, y: np.ndarray, on_a: np.ndarray, stop_at: float | None = None) -> int:
    """Make plan ``y`` [A] (changed in place) keep every unbalance row with the light side at
    what its cars really draw: while a row breaks, the car on its heavy side that loses the least
    energy (then the highest setpoint) is lowered one pilot step (to 0 below its least setpoint
    ``on_a``). Lowering never breaks a fuse row, and only raises what a car draws later. The
    model's bound counts no overshoot on the light side (:func:`nowblock.milp.matrix.build_matrix`),
    so it holds for every plan that passes here. Returns the number of steps taken.

    After ``stop_at`` (a ``time.perf_counter()`` value [s]) a broken row is mended in one move,
    the heavy car lowered by all of the row's excess (in pilot steps) and no light car raised: one
    step at a time, 120 cars x 288 slots at 0.1 A under a 0 A limit took 15-37 s here, and a call
    limited to 20 s returned after 31-76 s (an outside test)."""
    lim = form.limits
    nf = lim.n_fuse_rows
    if lim.g.shape[0] == nf or not y.size:
        return 0
    step = float(form.options.current_step_a)
    g = lim.g[nf:]
    pos, neg = np.clip(g, 0.0, None), np.clip(g, None, 0.0)
    h = lim.h[nf:]
    kwh = np.asarray(form.energy_per_a_kwh, dtype=float)
    need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
    d = _drawn_rows(y, kwh, need)
    over = _unbalance_lhs(g, y, d) - h
    gf = lim.g[:nf]
    fuse_over = rows_times(gf, y) - lim.h[:nf]
    up = pilot_bounds(form)[0]
    steps = 0
    # Each pass moves a car a pilot step (or to/from its least setpoint): raises are bounded by
    # sum(up), lowerings by what was there plus what was raised. One pass per cell, the bound
    # until now, left rows broken at 0.1 A steps (a 4-car block with 3.9 A to take off a phase:
    # its plan cost less than the model's bound, tests/test_optimize.py).
    passes = int(np.ceil(3.0 * float(np.sum(up)) / step)) + int(y.size) if step > 0 else int(y.size)

    def move(i: int, t: int, dy: float) -> None:
        """Car ``i``'s setpoint in slot ``t`` changed by ``dy`` [A], its draws and both rows' excess kept."""
        y[i, t] += dy
        fuse_over[:, t] += gf[:, i] * dy
        d_old = d[i].copy()
        d[i] = _drawn_rows(y[i], kwh[i], need[i])
        over[:, t] += pos[:, i] * dy
        over[:] += neg[:, i:i + 1] * (d[i] - d_old)[None, :]

    hurry = False
    for k in range(passes):
        r, t = np.unravel_index(int(np.argmax(over)), over.shape)
        if over[r, t] <= 1e-6:
            break
        if stop_at is not None and not hurry and k % 32 == 0:
            hurry = time.perf_counter() > stop_at
        if not hurry and _raise_light(y, d, over, fuse_over, r, t, g, gf, kwh, need, up, on_a, step):
            steps += 1
            continue
        # One step down; in a hurry the whole excess (the row's coefficient is 1 for a car on it).
        down = step if not hurry or step <= 0 else max(step, np.ceil(over[r, t] / step - 1e-9) * step)
        cand = np.nonzero((pos[r] > 0) & (y[:, t] > 0))[0]
        new = y[cand, t] - down
        new = np.where(new < on_a[cand] - 1e-9, 0.0, new)
        loss = d[cand, t] - np.minimum(d[cand, t], new)
        i = int(cand[np.lexsort((-y[cand, t], loss))[0]])
        move(i, t, float(np.where(y[i, t] - down < on_a[i] - 1e-9, 0.0, y[i, t] - down) - y[i, t]))
        steps += 1
    # Should the passes run out with a row still broken (not seen in any test or benchmark),
    # heavy cars are switched off until every row holds: a heavy car switched off draws no less
    # later (more, if anything), so no row gets worse, and all off holds every row.
    while over.max(initial=0.0) > 1e-6:
        r, t = np.unravel_index(int(np.argmax(over)), over.shape)
        i = int(np.nonzero((pos[r] > 0) & (y[:, t] > 0))[0][0])
        move(i, t, -float(y[i, t]))
        steps += 1
    return steps


def serve_unbalance_blocked(form: Formulation, y: np.ndarray, max_tries: int | None = None) -> int:
    """Give cars short of their need the steps an unbalance row blocks, by moving a step of a
    light-phase car into the slot (from a slot of its own worth no more energy) or a step of a
    heavy-phase car out of it (:func:`nowblock.milp.balance_kernels.serve_blocked`); plan ``y``
    [A] changes in place. Every unbalance row keeps the light side at what its cars draw, every
    fuse row holds, no slot's power (base load and charging) rises above the plan's peak, no
    car's energy up to its need falls and none passes its energy ceiling
    (:attr:`Formulation.ceiling_kwh`).

    The LP balances the phases with fractional currents; rounding each car to whole steps on its
    own loses that where a full light-phase car's energy sits in a slot the heavy phase does not
    need (measured on the instance matrix: 50 cars, tree, fuse at 70 %, 15 min: 0.14 kWh short
    over four cars before, none after; docs/bench_optimize.md). ``max_tries`` bounds the moves
    tried (default 40 per car and slot of the cars short, at most 200,000). Returns the number
    of moves made."""
    from nowblock.milp import balance_kernels as bk

    lim = form.limits
    nf = lim.n_fuse_rows
    if lim.g.shape[0] == nf or not y.size:
        return 0
    kwh = np.ascontiguousarray(form.energy_per_a_kwh, dtype=float)
    need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
    weight = shortfall_weights(form)
    short = need - (y * kwh).sum(axis=1)
    cars = np.nonzero(short > 1e-9)[0]
    if not len(cars):
        return 0
    order = cars[np.argsort(-(weight[cars] * short[cars]), kind="stable")].astype(np.int64)
    kw = np.asarray(form.kw_per_a, dtype=float)
    power = np.asarray(form.base_kw, dtype=float) + kw @ y
    power_room = np.ascontiguousarray(float(power.max()) - power)
    d = np.ascontiguousarray(_drawn_rows(y, kwh, need))
    over = np.ascontiguousarray(_unbalance_lhs(lim.g[nf:], y, d) - lim.h[nf:])
    fslack = np.ascontiguousarray(lim.h[:nf] - rows_times(lim.g[:nf], y))
    if max_tries is None:
        max_tries = min(40 * len(cars) * form.n_slots, 200_000)
    g_start, g_row, g_val = lim.by_car
    r_start, r_car, r_val = lim.by_row
    up, on_a = pilot_bounds(form)
    ceiling = np.maximum(np.asarray(form.ceiling_kwh, dtype=float), need)
    made, _ = bk.serve_blocked(y, d, over, fslack, power_room, order, kwh, need, ceiling, kw, up,
                               np.asarray(on_a, dtype=float), g_start, g_row, g_val, r_start, r_car, r_val, nf,
                               float(form.options.current_step_a), 1e-9, int(max_tries))
    return int(made)


def serve_fuse_blocked(form: Formulation, y: np.ndarray, until: float | None = None,
                       max_work: int | None = None) -> int:
    """Give cars short of their need the steps a fuse row blocks by less than their next step,
    by moving other cars' steps on that row out of the slot into slots of their own
    (:func:`nowblock.milp.balance_kernels.serve_fuse_blocked`); plan ``y`` [A] changes in
    place. Every fuse row and every unbalance row (the light side at what its cars draw) holds,
    no car's energy up to its need falls, none passes its energy ceiling
    (:attr:`Formulation.ceiling_kwh`); the plan's peak may rise, as in the fills up to the
    need (a kWh short costs more than any peak the model prices).

    A fuse phase whose room is not a whole number of 6 A setpoints (a base load under it, or
    rooms floored to whole amperes) strands 1-5 A in many slots where a car short of its need
    is off; the LP fills them with fractions. Measured on the instance matrix (50 cars, tree,
    fuse at 15 %, 5 min, base load): the plan 6.94 kWh below the plain LP, all on the grid
    fuse's L3 row, one single-phase car 36.02 vs 31.05 kWh (docs/benchmarks.md, issue 15).

    Two passes, cars in order of their weighted shortfall, in chunks, with
    ``time.perf_counter()`` checked against ``until`` [s] between chunks: swaps only (the short
    car gives up in a slot of its own what its partner gives it; cheap: on that cell 0.9918 ->
    0.9952 of the plain LP's energy with 0.3 M slots looked at, where shifts and swaps together
    reached 0.9944), then shifts and swaps on what is left. ``max_work`` bounds the candidate
    slots looked at over both, a move tried counted as a slot per slot of the horizon (default
    30 per cell of ``y``, at most 5,000,000: 5-15 ms at 50 cars x 288 slots, about 0.05 s at
    the cap). Returns the steps given."""
    from nowblock.milp import balance_kernels as bk

    lim = form.limits
    nf = lim.n_fuse_rows
    if nf == 0 or not y.size:
        return 0
    kwh = np.ascontiguousarray(form.energy_per_a_kwh, dtype=float)
    need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
    if not (need - (y * kwh).sum(axis=1) > 1e-9).any():
        return 0
    fslack = np.ascontiguousarray(lim.h[:nf] - rows_times(lim.g[:nf], y))
    if (fslack < -1e-6).any():
        return 0  # not a plan to build on (the re-check after it mends such slots)
    weight = shortfall_weights(form)
    d = np.ascontiguousarray(_drawn_rows(y, kwh, need))
    over = np.ascontiguousarray(_unbalance_lhs(lim.g[nf:], y, d) - lim.h[nf:])
    power_room = np.full(form.n_slots, np.inf)
    price = np.asarray(form.price_eur_per_kwh, dtype=float)
    by_cost = np.lexsort((np.arange(form.n_slots), price)).astype(np.int64)
    kw = np.asarray(form.kw_per_a, dtype=float)
    g_start, g_row, g_val = lim.by_car
    r_start, r_car, r_val = lim.by_row
    up, on_a = pilot_bounds(form)
    on_a = np.asarray(on_a, dtype=float)
    ceiling = np.maximum(np.asarray(form.ceiling_kwh, dtype=float), need)
    step = float(form.options.current_step_a)
    work = min(30 * y.size, 5_000_000) if max_work is None else int(max_work)
    made = 0
    for shift in (False, True):
        short = need - (y * kwh).sum(axis=1)
        cars = np.nonzero(short > 1e-9)[0]
        order = cars[np.argsort(-(weight[cars] * short[cars]), kind="stable")].astype(np.int64)
        for k in range(0, len(order), 8):
            if (until is not None and time.perf_counter() >= until) or work <= 0:
                return made
            m, used = bk.serve_fuse_blocked(y, d, over, fslack, power_room, order[k:k + 8], by_cost, kwh, need,
                                            ceiling, kw, up, on_a, g_start, g_row, g_val, r_start, r_car, r_val, nf,
                                            step, 1e-9, int(work), shift=shift)
            made += int(m)
            work -= int(used)
    return made


def _raise_light(y, d, over, fuse_over, r, t, g, gf, kwh, need, up, on_a, step) -> bool:
    """Mend broken unbalance row ``r`` in slot ``t`` from its light side: a car there that
    still needs the energy (so it draws all of it) takes one more step (or its least setpoint)
    in ``t``; where a fuse row of ``t`` has no room for it, a car on the heavy side gives up a
    step in the same slot (a swap: the fuses keep their load, the phases come a step closer
    each way). Kept only if every fuse row of ``t`` holds and no unbalance row gets worse.
    Lowering the heavy side alone loses energy; this keeps it. Updates ``y``, ``d``, ``over``,
    ``fuse_over`` in place; True if a car was raised."""
    light = np.nonzero(g[r] < 0)[0]
    add = np.where(y[light, t] > 0, step, on_a[light])
    ok = (y[light, t] + add <= up[light, t] + 1e-9) & (up[light, t] > 0)
    ok &= (y[light] * kwh[light]).sum(axis=1) + add * kwh[light, t] <= need[light] + 1e-9
    if not ok.any():
        return False
    heavy = np.nonzero((g[r] > 0) & (y[:, t] > 0))[0]
    low = y[heavy, t] - step
    low = np.where(low < on_a[heavy] - 1e-9, 0.0, low) - y[heavy, t]  # the (negative) change [A]
    # Heavy cars that then draw the least less (a full one: nothing), small changes first.
    loss = d[heavy, t] - np.minimum(d[heavy, t], y[heavy, t] + low)
    heavy, low = heavy[np.lexsort((-low, loss))][:8], low[np.lexsort((-low, loss))][:8]
    lim_over = np.maximum(over[:, t], 1e-6)
    for j in np.nonzero(ok)[0][:8]:
        i, a = int(light[j]), float(add[j])
        for h, dh in [(-1, 0.0)] + list(zip(heavy.tolist(), low.tolist())):
            f_new = fuse_over[:, t] + gf[:, i] * a + (gf[:, h] * dh if h >= 0 else 0.0)
            if (f_new > 1e-6).any():
                continue
            new = over[:, t] + g[:, i] * a
            if h >= 0:
                dd = _drawn_rows(np.where(np.arange(y.shape[1]) == t, y[h] + dh, y[h]), kwh[h], need[h]) - d[h]
                new_all = over + np.clip(g[:, h:h + 1], None, 0.0) * dd[None, :]
                new = new_all[:, t] + g[:, i] * a + np.clip(g[:, h], 0.0, None) * dh
                if (np.delete(new_all, t, axis=1) > np.maximum(np.delete(over, t, axis=1), 1e-6)).any():
                    continue
            if (new > lim_over).any() or new[r] >= over[r, t] - 1e-9:
                continue
            y[i, t] += a
            d[i, t] += a  # it still needs it: all of it is drawn, and nothing later changes
            if h >= 0:
                y[h, t] += dh
                over += np.clip(g[:, h:h + 1], None, 0.0) * dd[None, :]
                d[h] += dd
            over[:, t] = new
            fuse_over[:, t] = f_new
            return True
    return False


def _recheck(form: Formulation, y: np.ndarray, up: np.ndarray, on_a: np.ndarray) -> tuple[np.ndarray, int]:
    """Every row of every slot, every maximum, "0 or >= min", from scratch; a slot that fails is
    repaired by :func:`nowblock.seam.make_safe` (the count is returned)."""
    from nowblock.milp.plan_kernels import broken_slots

    lim = form.limits
    g_start, g_row, g_val = lim.by_car
    bad = np.nonzero(broken_slots(y, up, on_a, g_start, g_row, g_val, lim.h, 1e-6))[0]
    if not len(bad):
        return y, 0
    from nowblock.milp.adapters import slot_snapshot
    from nowblock.seam import make_safe

    pos = pd.Index(form.session_ids)
    for t in bad:
        snap = slot_snapshot(form, int(t), np.zeros(form.n_cars))
        idx = pos.get_indexer(snap.cars.index)
        safe = make_safe(snap, pd.Series(y[idx, t], index=snap.cars.index))
        y[:, t] = 0.0
        y[idx, t] = safe.to_numpy(float)
    return y, len(bad)


def round_to_steps(form: Formulation, raw_a: np.ndarray) -> tuple[np.ndarray, int]:
    """A dense (n, T) plan [A] (any numbers, even past the limits) made real: :func:`make_plan`
    with the plan's own energies as targets and no power cap. Returns the plan and the number
    of slots the safety net had to repair."""
    p = make_plan(form, raw_a, front_load=False)
    return p.current_a, p.repaired_slots
