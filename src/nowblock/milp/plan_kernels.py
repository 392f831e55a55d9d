"""Numba kernels that turn a relaxed solution into a real plan (see :mod:`nowblock.milp.rounding`).

Every kernel works on a dense plan ``y`` (cars x slots) [A] in whole pilot steps and keeps its
bookkeeping exact as it goes: ``delivered`` [kWh] per car, ``slack`` [A] per limit row and slot
(``h - G @ y``) and ``power_room`` [kW] per slot (the power cap less base load and charging).
The limit rows reach a car through ``g_start``/``g_row``/``g_val`` (the columns of ``G``:
car ``i``'s rows are ``g_row[g_start[i]:g_start[i + 1]]``) and a row's cars through
``r_start``/``r_car``/``r_val`` (the rows of ``G``). Coefficients may be negative (unbalance
rows), so adding current is checked on positive entries and taking it away on negative ones.

A cell is usable when ``up[i, t] > 0``; a car is on at ``on_a[i]`` (its minimum current rounded
up to a step) or more, never between 0 and ``on_a``. Each kernel has a plain-Python reference in
``tests/test_milp_rounding.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nowblock.milp.kernels import argsort_stable


@njit(cache=True)
def _fuse_room(i, t, g_start, g_row, g_val, slack, kw, power_room, n_fuse_rows, tol):
    """:func:`room_a` over the first ``n_fuse_rows`` rows only (the fuse rows; the unbalance rows
    come after them) and the power cap [A]."""
    room = np.inf
    for p in range(g_start[i], g_start[i + 1]):
        r = g_row[p]
        g = g_val[p]
        if r < n_fuse_rows and g > 0:
            q = (slack[r, t] + tol) / g
            if q < room:
                room = q
    if kw[i] > 0:
        q = (power_room[t] + tol) / kw[i]
        if q < room:
            room = q
    return room


@njit(cache=True)
def room_a(i, t, g_start, g_row, g_val, slack, kw, power_room, tol):
    """How much current [A] car ``i`` can add in slot ``t`` before a limit row (positive
    coefficients) or the power cap binds."""
    return _fuse_room(i, t, g_start, g_row, g_val, slack, kw, power_room, slack.shape[0], tol)


@njit(cache=True)
def can_lower(i, t, amount, g_start, g_row, g_val, slack, tol):
    """Whether car ``i`` can take ``amount`` [A] off in slot ``t`` (rows where it counts
    negatively, the unbalance rows, lose room)."""
    for p in range(g_start[i], g_start[i + 1]):
        g = g_val[p]
        if g < 0 and -g * amount > slack[g_row[p], t] + tol:
            return False
    return True


@njit(cache=True)
def lower_room(i, t, g_start, g_row, g_val, slack, step, tol):
    """The most [A], in whole steps of ``step``, car ``i`` can take off in slot ``t``: rows where
    it counts negatively (the unbalance rows) lose room (inf when it has none)."""
    room = np.inf
    for p in range(g_start[i], g_start[i + 1]):
        g = g_val[p]
        if g < 0:
            room = min(room, _steps_down((slack[g_row[p], t] + tol) / -g, step))
    return room


@njit(cache=True)
def change(i, t, amount, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room):
    """Add ``amount`` [A] (negative: take it off) to car ``i`` in slot ``t``, bookkeeping included
    (a cell taken to within 1e-9 A of 0 is 0: steps subtracted in floating point leave dust)."""
    y[i, t] += amount
    if abs(y[i, t]) < 1e-9:
        amount -= y[i, t]
        y[i, t] = 0.0
    delivered[i] += amount * kwh[i, t]
    for p in range(g_start[i], g_start[i + 1]):
        slack[g_row[p], t] -= g_val[p] * amount
    power_room[t] -= kw[i] * amount


@njit(cache=True)
def _steps_down(v, step):
    return np.floor(v / step + 1e-9) * step


@njit(cache=True)
def place_guided(y, delivered, target, ceiling, x, kwh, up, on_a, order, g_start, g_row, g_val, slack, kw,
                 power_room, n_fuse_rows, step, tol):
    """Place the relaxed solution ``x`` [A], car by car in ``order``: first each cell floored to a
    step (dropped if below ``on_a``), as far as the fuse rows and the power cap allow, then one
    more step (or ``on_a``) on the car's own cells that lost the most to the floor, until the
    car has its ``target`` [kWh]. A car placed early keeps its room: the cars with the least time
    get the rounding's spare steps. Only fuse rows (the first ``n_fuse_rows``) are checked: the
    unbalance rows need every phase placed first (:func:`lower_to_fit`, :func:`round_up`)."""
    n, T = y.shape
    frac = np.empty(T)
    for j in range(order.shape[0]):
        i = order[j]
        for t in range(T):
            v = min(_steps_down(x[i, t], step), up[i, t])
            if v < on_a[i] - tol or v <= 0.0:
                continue
            room = _fuse_room(i, t, g_start, g_row, g_val, slack, kw, power_room, n_fuse_rows, tol)
            v = min(v, _steps_down(room, step), _steps_down((ceiling[i] - delivered[i]) / kwh[i, t], step))
            if v < on_a[i] - tol or v <= 0.0:
                continue
            change(i, t, v, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
        for t in range(T):
            d = x[i, t] - y[i, t]
            frac[t] = -d if d > 1e-7 else 1.0
        ts = argsort_stable(frac)
        for q in range(T):
            t = ts[q]
            if frac[t] >= 0.0 or target[i] - delivered[i] <= 1e-9:
                break
            add = step if y[i, t] > 0.0 else on_a[i]
            if y[i, t] + add > up[i, t] + tol:
                continue
            if _fuse_room(i, t, g_start, g_row, g_val, slack, kw, power_room, n_fuse_rows, tol) >= add:
                change(i, t, add, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)


@njit(cache=True)
def round_up(y, delivered, target, x, kwh, up, on_a, cand_car, cand_slot, g_start, g_row, g_val, slack, kw,
             power_room, step, tol):
    """Give back what the floor took: each candidate cell (in the order given: the largest loss
    first) whose car is below its ``target`` [kWh] and whose relaxed value ``x`` is above the
    plan takes one more step (an off cell: ``on_a``), where every row and the power cap keep room.
    Run it again while it adds: a step on a light phase can make room for one on a heavy phase
    under an unbalance limit. Returns the number of steps added."""
    added = 0
    for q in range(cand_car.shape[0]):
        i = cand_car[q]
        t = cand_slot[q]
        if target[i] - delivered[i] <= 1e-9 or x[i, t] - y[i, t] <= 1e-7:
            continue
        add = step if y[i, t] > 0.0 else on_a[i]
        if y[i, t] + add > up[i, t] + tol:
            continue
        if room_a(i, t, g_start, g_row, g_val, slack, kw, power_room, tol) >= add:
            change(i, t, add, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
            added += 1
    return added


@njit(cache=True)
def lower_to_fit(y, delivered, kwh, on_a, r_start, r_car, r_val, g_start, g_row, g_val, slack, kw, power_room,
                 step, tol):
    """Lower cars until every row of every slot holds: on a broken row, the car with the most
    current among those that load it is lowered one step (to 0 from ``on_a``), again and again.
    Returns the number of cells changed. Lowering never breaks a fuse row; an unbalance row it
    loosens on one side it may tighten on another, which the same loop then repairs (it ends:
    every change lowers a current)."""
    n_rows, T = slack.shape
    changed = 0
    for t in range(T):
        for _ in range(1 << 30):
            worst = -1
            for r in range(n_rows):
                if slack[r, t] < -tol:
                    worst = r
                    break
            if worst < 0:
                break
            best, best_a = -1, 0.0
            for p in range(r_start[worst], r_start[worst + 1]):
                i = r_car[p]
                if r_val[p] > 0 and y[i, t] > best_a:
                    best, best_a = i, y[i, t]
            if best < 0:  # nothing to lower on this row: the base load alone breaks it
                break
            cut = step if y[best, t] - step >= on_a[best] - tol else y[best, t]
            change(best, t, -cut, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
            changed += 1
    return changed


@njit(cache=True)
def _give(i, t, rest, y, delivered, kwh, up, on_a, g_start, g_row, g_val, slack, kw, power_room, step, tol):
    """Raise car ``i`` in slot ``t`` towards what it lacks, ``rest`` [kWh]: whole steps, its
    maximum, every row and the power cap; an off cell goes to ``on_a`` or more, or stays off.
    Returns the current added [A] (0: none)."""
    want = np.ceil(rest / kwh[i, t] / step - 1e-9) * step
    room = min(up[i, t] - y[i, t], room_a(i, t, g_start, g_row, g_val, slack, kw, power_room, tol))
    add = min(want, _steps_down(room, step))
    if y[i, t] == 0.0 and add < on_a[i] - tol:
        add = on_a[i]
    if add <= 0.0 or add > room + 1e-9:
        return 0.0
    change(i, t, add, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
    return add


@njit(cache=True)
def fill(y, delivered, target, kwh, up, on_a, order, slot_order, g_start, g_row, g_val, slack, kw, power_room,
         step, tol):
    """Give cars in ``order`` what they still lack of ``target`` [kWh], trying slots in
    ``slot_order``: an on cell is raised, an off cell switched on at ``on_a`` or more, by whole
    steps and only where every row and the power cap keep room. Returns the current added [A]."""
    n, T = y.shape
    added = 0.0
    for j in range(order.shape[0]):
        i = order[j]
        if target[i] - delivered[i] <= 1e-9:
            continue
        for q in range(T):
            t = slot_order[q]
            rest = target[i] - delivered[i]
            if rest <= 1e-9:
                break
            if kwh[i, t] <= 0.0 or up[i, t] < y[i, t] + step - tol or up[i, t] < on_a[i] - tol:
                continue
            added += _give(i, t, rest, y, delivered, kwh, up, on_a, g_start, g_row, g_val, slack, kw, power_room,
                           step, tol)
    return added


@njit(cache=True)
def trim(y, delivered, target, kwh, on_a, slot_order, g_start, g_row, g_val, slack, kw, power_room, step, tol):
    """Take back what cars got beyond ``target`` [kWh], latest in ``slot_order`` first, by whole
    steps, never below ``on_a`` unless the whole cell goes, never below the target, and no more
    than the rows where a car counts negatively (unbalance) have room for. Passes repeat while
    one changes something (at most four): taking a step off one car gives room to another."""
    n, T = y.shape
    for _ in range(4):
        changed = False
        for i in range(n):
            if delivered[i] - target[i] <= 1e-9:
                continue
            for q in range(T - 1, -1, -1):
                t = slot_order[q]
                if y[i, t] <= 0.0 or kwh[i, t] <= 0.0:
                    continue
                excess = delivered[i] - target[i]
                k = min(_steps_down(excess / kwh[i, t], step), lower_room(i, t, g_start, g_row, g_val, slack, step, tol))
                if k <= 0.0:
                    continue
                if y[i, t] - k < on_a[i] - tol:
                    k = y[i, t] if y[i, t] <= k + tol else _steps_down(y[i, t] - on_a[i], step)
                if k <= 0.0 or not can_lower(i, t, k, g_start, g_row, g_val, slack, tol):
                    continue
                change(i, t, -k, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
                changed = True
        if not changed:
            break


@njit(cache=True)
def shave_peak(y, delivered, target, ceiling, kwh, up, on_a, price, g_start, g_row, g_val, slack, kw, neg_power,
               step, tol, max_moves):
    """Lower the plan's highest power [kW] by moving single steps of cars out of the peak slot
    into slots of their own that are on, no dearer, lower in power by more than the step, with
    room on every row, and without leaving the car below its ``target`` or above its ``ceiling``
    [kWh]. ``neg_power`` is
    minus each slot's base load plus charging [kW] (kept up to date, as a power room under a cap
    of 0 would be). Stops when the peak slot has no such move. Returns the number of moves."""
    n, T = y.shape
    no_cap = np.full(T, np.inf)
    moves = 0
    while moves < max_moves:
        tp = 0
        for t in range(1, T):
            if neg_power[t] < neg_power[tp]:
                tp = t
        peak = -neg_power[tp]
        by_power = argsort_stable(-neg_power)
        moved = False
        for i in range(n):
            if y[i, tp] <= 0.0 or y[i, tp] - step < on_a[i] - tol:
                continue
            d_kw = kw[i] * step
            if d_kw <= 0.0 or not can_lower(i, tp, step, g_start, g_row, g_val, slack, tol):
                continue
            for q in range(T):
                t = by_power[q]
                if -neg_power[t] + d_kw > peak - d_kw - 1e-9:
                    break
                if y[i, t] < on_a[i] - tol or y[i, t] + step > up[i, t] + tol or price[t] > price[tp] + 1e-12:
                    continue
                moved_kwh = step * (kwh[i, t] - kwh[i, tp])
                if delivered[i] + moved_kwh < target[i] - 1e-9 or delivered[i] + moved_kwh > ceiling[i] + 1e-9:
                    continue
                if room_a(i, t, g_start, g_row, g_val, slack, kw, no_cap, tol) < step:
                    continue
                change(i, tp, -step, y, delivered, kwh, g_start, g_row, g_val, slack, kw, neg_power)
                change(i, t, step, y, delivered, kwh, g_start, g_row, g_val, slack, kw, neg_power)
                moved = True
                moves += 1
                break
            if moved:
                break
        if not moved:
            break
    return moves


@njit(cache=True)
def front_load(y, delivered, target, ceiling, kwh, up, on_a, order, price, g_start, g_row, g_val, slack, kw,
               power_room, step, tol):
    """Move each car's energy to its earliest slots that cost no more, as far as every row and
    the power cap (``power_room``, the plan's own peak) allow: energy now is worth more than
    energy promised later when the next arrivals are unknown. A car keeps at least its
    ``target`` and at most its ``ceiling`` [kWh]; cells stay 0 or at least ``on_a``. Returns the current moved [A]."""
    n, T = y.shape
    moved = 0.0
    for j in range(order.shape[0]):
        i = order[j]
        a, b = 0, T - 1
        while a < b:
            if y[i, b] <= 0.0 or kwh[i, b] <= 0.0:
                b -= 1
                continue
            if kwh[i, a] <= 0.0 or up[i, a] < max(y[i, a] + step, on_a[i]) - tol or price[a] > price[b] + 1e-12:
                a += 1
                continue
            room = min(up[i, a] - y[i, a], room_a(i, a, g_start, g_row, g_val, slack, kw, power_room, tol))
            # what may leave b: all of it, or down to on_a
            whole = y[i, b]
            part = _steps_down(y[i, b] - on_a[i], step)
            m = min(_steps_down(room, step), whole)
            if m < whole - tol:
                m = min(m, part)
            if y[i, a] == 0.0 and m < on_a[i] - tol:
                a += 1
                continue
            if m <= 0.0:
                a += 1
                continue
            moved_kwh = m * (kwh[i, a] - kwh[i, b])
            if delivered[i] + moved_kwh < target[i] - 1e-9 or delivered[i] + moved_kwh > ceiling[i] + 1e-9:
                a += 1
                continue
            if not can_lower(i, b, m, g_start, g_row, g_val, slack, tol):
                b -= 1
                continue
            change(i, b, -m, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
            change(i, a, m, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
            moved += m
    return moved


@njit(cache=True)
def broken_slots(y, up, on_a, g_start, g_row, g_val, h, tol):
    """Per slot, whether the plan breaks a row of ``G @ y <= h``, a maximum, or "0 or >= on_a"
    (the final re-check, computed from scratch)."""
    n, T = y.shape
    n_rows = h.shape[0]
    bad = np.zeros(T, dtype=np.bool_)
    load = np.zeros(n_rows)
    for t in range(T):
        load[:] = 0.0
        for i in range(n):
            v = y[i, t]
            if v == 0.0:
                continue
            if v < on_a[i] - tol or v > up[i, t] + tol or v < 0.0:
                bad[t] = True
            for p in range(g_start[i], g_start[i + 1]):
                load[g_row[p]] += g_val[p] * v
        for r in range(n_rows):
            if load[r] > h[r, t] + tol:
                bad[t] = True
    return bad


@njit(cache=True)
def fill_balanced(y, delivered, target, cap_kwh, kwh, up, on_a, order, slot_order, g_start, g_row, g_val, r_start,
                  r_car, r_val, slack, kw, power_room, n_fuse_rows, step, tol):
    """:func:`fill` for cars that an unbalance row blocks: car ``i`` on the heavy phase may take
    ``add`` [A] in slot ``t`` if cars on the light phases take enough more in the same slot: up to
    each one's ``cap_kwh`` [kWh] (its need: a full car stops drawing, so current beyond it would
    balance nothing), or beyond it when the same step can leave another slot of the partner's
    without breaking a row there (its energy stays). Tries are all-or-nothing.
    Returns the current added to the blocked cars [A]."""
    n, T = y.shape
    added = 0.0
    n_rows = slack.shape[0]
    need_r = np.zeros(n_rows)
    raised_car = np.empty(8 * n + 8, dtype=np.int64)
    raised_slot = np.empty(8 * n + 8, dtype=np.int64)
    raised_a = np.empty(8 * n + 8)
    for j in range(order.shape[0]):
        i = order[j]
        for q in range(T):
            t = slot_order[q]
            rest = target[i] - delivered[i]
            if rest <= 1e-9:
                break
            if kwh[i, t] <= 0.0 or up[i, t] < y[i, t] + step - tol or up[i, t] < on_a[i] - tol:
                continue
            want = np.ceil(rest / kwh[i, t] / step - 1e-9) * step
            add = step if y[i, t] > 0.0 else on_a[i]
            add = max(add, min(want, _steps_down(up[i, t] - y[i, t], step)))
            if y[i, t] == 0.0 and add < on_a[i] - tol:
                add = on_a[i]
            if y[i, t] + add > up[i, t] + tol:
                continue
            # The fuse rows and the power cap must hold by themselves; what the unbalance rows lack
            # is asked of the light phases.
            if _fuse_room(i, t, g_start, g_row, g_val, slack, kw, power_room, n_fuse_rows, tol) < add:
                continue
            blocked = False
            for p in range(g_start[i], g_start[i + 1]):
                r = g_row[p]
                need_r[r] = 0.0
                if r >= n_fuse_rows and g_val[p] > 0 and g_val[p] * add > slack[r, t] + tol:
                    need_r[r] = g_val[p] * add - slack[r, t]
                    blocked = True
            if not blocked:
                continue
            m = 0
            ok = True
            for p in range(g_start[i], g_start[i + 1]):
                r = g_row[p]
                if need_r[r] <= tol:
                    continue
                for s in range(r_start[r], r_start[r + 1]):
                    if need_r[r] <= tol:
                        break
                    k = r_car[s]
                    if r_val[s] >= 0 or k == i or kwh[k, t] <= 0.0:
                        continue
                    inc = step if y[k, t] > 0.0 else on_a[k]
                    while need_r[r] > tol and y[k, t] + inc <= up[k, t] + tol and m + 2 <= raised_car.shape[0] \
                            and room_a(k, t, g_start, g_row, g_val, slack, kw, power_room, tol) >= inc:
                        # Within the energy row's ceiling, or moved here from another slot of the
                        # partner's where lowering it breaks nothing (its energy stays).
                        from_t = -1
                        if delivered[k] + inc * kwh[k, t] > cap_kwh[k] + 1e-9:
                            for u in range(T):
                                # Its energy neither falls (kwh[u] <= kwh[t]) nor passes its
                                # ceiling (slot lengths differ: the move can add a little).
                                if u != t and y[k, u] - inc >= on_a[k] - tol and kwh[k, u] <= kwh[k, t] + 1e-12 \
                                        and delivered[k] + inc * (kwh[k, t] - kwh[k, u]) <= cap_kwh[k] + 1e-9 \
                                        and can_lower(k, u, inc, g_start, g_row, g_val, slack, tol):
                                    from_t = u
                                    break
                            if from_t < 0:
                                break
                        change(k, t, inc, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
                        raised_car[m] = k
                        raised_slot[m] = t
                        raised_a[m] = inc
                        m += 1
                        if from_t >= 0:
                            change(k, from_t, -inc, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
                            raised_car[m] = k
                            raised_slot[m] = from_t
                            raised_a[m] = -inc
                            m += 1
                        need_r[r] -= -r_val[s] * inc
                        inc = step
                    if m + 2 > raised_car.shape[0]:
                        break
                if need_r[r] > tol:
                    ok = False
                    break
            if ok and room_a(i, t, g_start, g_row, g_val, slack, kw, power_room, tol) >= add:
                change(i, t, add, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
                added += add
            else:
                for u in range(m - 1, -1, -1):
                    change(raised_car[u], raised_slot[u], -raised_a[u], y, delivered, kwh, g_start, g_row, g_val,
                           slack, kw, power_room)
    return added


@njit(cache=True)
def pass_on_excess(y, delivered, need, weight, kwh, up, on_a, g_start, g_row, g_val, slack, kw, power_room, step,
                   tol):
    """Where a car gets more than its ``need`` [kWh] (whole steps round up) in a slot whose rows
    another car still short of its need shares, hand one step over: the first car's excess is
    wasted, the second's shortfall [kWh] is priced. A hand-over is made when the weighted
    shortfall it removes is larger than the one it makes (``weight`` per car) and every row keeps
    room. Returns the number of steps handed over."""
    n, T = y.shape
    short = np.empty(n, dtype=np.int64)
    moved = 0
    for a in range(n):
        if delivered[a] - need[a] <= 1e-9:
            continue
        for t in range(T):
            if y[a, t] <= 0.0 or kwh[a, t] <= 0.0:
                continue
            cut = step if y[a, t] - step >= on_a[a] - tol else y[a, t]
            excess = delivered[a] - need[a]
            if excess <= 1e-9:
                break
            loss = weight[a] * max(cut * kwh[a, t] - excess, 0.0)
            if not can_lower(a, t, cut, g_start, g_row, g_val, slack, tol):
                continue
            m = 0
            for b in range(n):
                if b != a and need[b] - delivered[b] > 1e-9 and y[b, t] > 0.0 and y[b, t] + step <= up[b, t] + tol:
                    short[m] = b
                    m += 1
            for q in range(m):
                b = short[q]
                gain = weight[b] * min(step * kwh[b, t], need[b] - delivered[b])
                if gain <= loss + 1e-12:
                    continue
                change(a, t, -cut, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
                if room_a(b, t, g_start, g_row, g_val, slack, kw, power_room, tol) >= step:
                    change(b, t, step, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
                    moved += 1
                    break
                change(a, t, cut, y, delivered, kwh, g_start, g_row, g_val, slack, kw, power_room)
    return moved


@njit(cache=True)
def fill_least_laxity(y, delivered, target, kwh, up, on_a, g_start, g_row, g_val, slack, kw, power_room, step, tol):
    """Slot by slot from the first, give the cars still below ``target`` [kWh] current [A] in
    order of least laxity (the slots a car has left minus the slots it still needs at its
    maximum), each as much as it needs, its maximum and every row and the power cap allow, in
    whole steps and 0 or at least ``on_a``. Least laxity first meets deadlines under a power cap
    where earliest-deadline-first, greedy per car, runs out of room (a car that needs its
    maximum for hours goes first in time). Returns the current added [A]."""
    n, T = y.shape
    added = 0.0
    left = np.zeros(n)  # usable slots from t on
    for i in range(n):
        for t in range(T):
            if up[i, t] > 0.0 and kwh[i, t] > 0.0:
                left[i] += 1.0
    lax = np.empty(n)
    for t in range(T):
        m = 0
        for i in range(n):
            if up[i, t] > 0.0 and kwh[i, t] > 0.0:
                rest = target[i] - delivered[i]
                lax[i] = left[i] - rest / (up[i, t] * kwh[i, t]) if rest > 1e-9 else np.inf
                left[i] -= 1.0
                m += 1
            else:
                lax[i] = np.inf
        if m == 0:
            continue
        cars = argsort_stable(lax)
        for j in range(n):
            i = cars[j]
            if not lax[i] < np.inf:
                break
            rest = target[i] - delivered[i]
            if rest <= 1e-9 or up[i, t] < y[i, t] + step - tol:
                continue
            added += _give(i, t, rest, y, delivered, kwh, up, on_a, g_start, g_row, g_val, slack, kw, power_room,
                           step, tol)
    return added
