"""Numba kernels of the planning step: the array work around the solver.

Plain ndarrays in, plain ndarrays out, no pandas. Each kernel replaced a few dozen numpy calls
of 10-50 us that, run right after a HiGHS solve, were most of a small block's step outside
HiGHS (docs/bench_optimize.md, fourth pass); their outputs equal the numpy code they replaced
bit for bit except where a docstring says otherwise. Limit rows are ``g @ current_a <= h``
(see :func:`nowblock.milp.schedule.limit_rows`); ``g`` may hold negative entries
(unbalance rows), so every check looks at every row.

Compiling all of them takes ~10 s on a machine's first run (then numba's on-disk cache, ~0.5 s
per process): :meth:`nowblock.milp.MilpPolicy.warm_up` does it before a controller serves. The
kernels that make a relaxed solution a real plan are in :mod:`nowblock.milp.plan_kernels`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_BIG = 1.7976931348623157e308  # np.finfo(float).max: what np.nan_to_num makes of inf


@njit(cache=True)
def argsort_stable(key):
    """Indices that sort ``key`` ascending, ties in input order (``np.argsort(kind="stable")``).

    A bottom-up merge sort written out: numba's own mergesort argsort took ~1.8 s to compile
    (measured), this one ~0.5 s, and the kernels below are compiled on a machine's first step.
    """
    n = key.shape[0]
    idx = np.arange(n)
    tmp = np.empty(n, dtype=np.int64)
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if key[idx[j]] < key[idx[i]]:
                    tmp[k] = idx[j]
                    j += 1
                else:
                    tmp[k] = idx[i]
                    i += 1
                k += 1
            while i < mid:
                tmp[k] = idx[i]
                i += 1
                k += 1
            while j < hi:
                tmp[k] = idx[j]
                j += 1
                k += 1
        idx, tmp = tmp, idx
        width *= 2
    return idx


@njit(cache=True)
def csc_feasible(a_start, a_index, a_value, v, col_lo, col_hi, row_lo, row_hi, tol):
    """Whether column values ``v`` keep every bound and row of the CSC matrix within ``tol``
    (rows relative to ``1 + |finite row_hi|``); a NaN value is never feasible."""
    n_col = v.shape[0]
    # Tests written as "not inside", so that a NaN fails (it never compares inside).
    for j in range(n_col):
        if not (v[j] >= col_lo[j] - tol and v[j] <= col_hi[j] + tol):
            return False
    r = np.zeros(row_lo.shape[0])
    for j in range(n_col):
        vj = v[j]
        if vj != 0.0:  # NaN too
            for p in range(a_start[j], a_start[j + 1]):
                r[a_index[p]] += a_value[p] * vj
    for i in range(r.shape[0]):
        hi = row_hi[i]
        scale = 1.0 + (abs(hi) if np.isfinite(hi) else 0.0)
        if not (r[i] >= row_lo[i] - tol * scale and r[i] <= hi + tol * scale):
            return False
    return True


@njit(cache=True)
def top_up_now(x, order, g, slack, hi, lo, kw, budget_kw, step):
    """In place on setpoints ``x`` [A]: cars in ``order`` are raised, one after the other, to
    the most every row's ``slack`` [A], their maximum ``hi`` and the power ``budget_kw`` [kW]
    allow, in whole ``step`` and 0 or at least ``lo`` (``hi`` and ``lo`` as
    :func:`numpy.nan_to_num` makes them)."""
    n_rows = g.shape[0]
    big = _BIG
    for j in range(order.shape[0]):
        i = order[j]
        hi_i = 0.0 if hi[i] != hi[i] else min(max(hi[i], -big), big)
        lo_i = 0.0 if lo[i] != lo[i] else min(max(lo[i], -big), big)
        room = np.inf
        for r in range(n_rows):
            if g[r, i] > 1e-12:
                q = slack[r] / g[r, i]
                if q < room:
                    room = q
        if kw[i] > 0:
            room = min(room, budget_kw / kw[i])
        new = np.floor(min(hi_i, x[i] + max(room, 0.0)) / step + 1e-9) * step
        if new < lo_i - 1e-9 or new <= x[i] + 1e-9:
            continue
        for r in range(n_rows):
            slack[r] -= g[r, i] * (new - x[i])
        budget_kw -= kw[i] * (new - x[i])
        x[i] = new


@njit(cache=True)
def limit_row_entries(pr, pc, coef, cell_start, cell_count, slot, ub, room, n_slots, tol, positive_only):
    """The limit rows worth stating: for every nonzero (row ``pr``, car ``pc``) of a row matrix
    (fuse-phase incidence, or phase differences for unbalance), every cell of the car in its
    slot. A (row, slot) is kept only when its cells at their upper bounds ``ub`` [A] could
    exceed its room ``room`` [A] (flat row * T + slot); with ``positive_only`` only positive
    coefficients count towards that worst case.

    Returns the kept keys in increasing order, each as (row, slot), and per entry in (pair, cell)
    order: new row number, cell, coefficient.
    """
    n_keys = room.shape[0]
    load_max = np.zeros(n_keys)
    n_entries = 0
    for p in range(pr.shape[0]):
        base = pr[p] * n_slots
        for k in range(cell_start[pc[p]], cell_start[pc[p]] + cell_count[pc[p]]):
            w = coef[p]
            if positive_only and w < 0:
                w = 0.0
            load_max[base + slot[k]] += w * ub[k]
            n_entries += 1
    remap = np.full(n_keys, -1, dtype=np.int64)
    n_keep = 0
    for key in range(n_keys):
        if load_max[key] > room[key] + tol:
            remap[key] = n_keep
            n_keep += 1
    keep_key = np.empty(n_keep, dtype=np.int64)
    label = np.empty((n_keep, 2), dtype=np.int64)
    for key in range(n_keys):
        if remap[key] >= 0:
            keep_key[remap[key]] = key
            label[remap[key], 0] = key // n_slots
            label[remap[key], 1] = key % n_slots
    rows = np.empty(n_entries, dtype=np.int64)
    cells = np.empty(n_entries, dtype=np.int64)
    vals = np.empty(n_entries)
    m = 0
    for p in range(pr.shape[0]):
        base = pr[p] * n_slots
        for k in range(cell_start[pc[p]], cell_start[pc[p]] + cell_count[pc[p]]):
            row = remap[base + slot[k]]
            if row >= 0:
                rows[m] = row
                cells[m] = k
                vals[m] = coef[p]
                m += 1
    return keep_key, label, rows[:m], cells[:m], vals[:m]


@njit(cache=True)
def coo_to_csc(r, c, v, n_col):
    """Column-major arrays for HiGHS from COO triplets: entries of a column keep their input
    order (a stable counting sort on the column)."""
    a_start = np.zeros(n_col + 1, dtype=np.int32)
    for e in range(c.shape[0]):
        a_start[c[e] + 1] += 1
    for j in range(n_col):
        a_start[j + 1] += a_start[j]
    nxt = a_start[:-1].astype(np.int64)
    a_index = np.empty(c.shape[0], dtype=np.int32)
    a_value = np.empty(c.shape[0])
    for e in range(c.shape[0]):
        q = nxt[c[e]]
        a_index[q] = r[e]
        a_value[q] = v[e]
        nxt[c[e]] = q + 1
    return a_start, a_index, a_value


@njit(cache=True)
def _nan_min(a, b):
    """``np.minimum`` of two scalars: NaN if either is NaN."""
    if a != a or b != b:
        return np.nan
    return a if a <= b else b


@njit(cache=True)
def snapshot_plan_arrays(left_h, max_a, cp_max_a, min_a, phases, meas_a, offered_a, remaining_kwh, dt_h, control_h,
                         urgency_h, departure_margin_h, voltage_v, use_ratio, taper_kwh=0.0, taper_share=1.0):
    """Per car and slot, what a receding-horizon plan knows (see ``from_snapshot``).

    ``left_h`` [h] to departure (inf: unknown, plugged in all horizon), slot lengths ``dt_h``
    [h], the control step ``control_h`` [h]. Returns the plugged-in fraction (n, T), the
    upper bound (n, T) [A] before time-window caps, the draw ratio, the shortfall weight, the
    energy still wanted [kWh] (NaN stays NaN: the caller fills it with what the car can take),
    the energy per ampere offered (n, T) [kWh/A] and the (car, slot) of every cell a car can
    charge in (``Formulation.cells`` without caps).

    The last ``taper_kwh`` [kWh] of a car's known remaining energy is planned at ``taper_share``
    of its maximum draw: after the first slot, the slots of its last hours before its (margin)
    departure that this energy takes at that draw are capped at ``taper_share / draw ratio`` of
    its maximum (never below its minimum). A battery's taper near full cannot be observed on
    OCPP 1.6; a plan that leaves a car's whole charge to its last hours loses the taper's part.
    The first slot is never capped: it is offered now, and a car not yet tapering draws it.
    """
    n = left_h.shape[0]
    T = dt_h.shape[0]
    offs_h = np.empty(T)
    acc = 0.0
    for t in range(T):
        offs_h[t] = acc
        acc += dt_h[t]
    end_h = offs_h[T - 1] + dt_h[T - 1]
    first_min_h = min(control_h, dt_h[0])
    plugged = np.zeros((n, T))
    upper = np.zeros((n, T))
    ratio = np.ones(n)
    urgency = np.empty(n)
    need = np.empty(n)
    for i in range(n):
        left = left_h[i] if np.isfinite(left_h[i]) else end_h
        urgency[i] = 1.0 + urgency_h / max(left, control_h)
        margin = min(departure_margin_h, 0.25 * left)
        if margin < 0.0:
            margin = 0.0
        dep = max(left - margin, first_min_h)
        hi = _nan_min(cp_max_a[i], max_a[i])
        for t in range(T):
            f = (min(dep, offs_h[t] + dt_h[t]) - offs_h[t]) / dt_h[t]
            f = min(max(f, 0.0), 1.0)
            if t > 0:
                f = 1.0 if f >= 1 - 1e-9 else 0.0
            plugged[i, t] = f
            if f > 0:
                upper[i, t] = hi
        upper[i, 0] = _nan_min(upper[i, 0], max_a[i])
        if use_ratio and np.isfinite(meas_a[i]) and meas_a[i] > 0 and offered_a[i] > 0:
            ratio[i] = min(max(meas_a[i] / offered_a[i], 0.2), 1.0)
        one_slot_kwh = min_a[i] * phases[i] * voltage_v / 1000.0 * dt_h[0] * ratio[i]
        e = remaining_kwh[i]
        # A car already drawing less than offered (``ratio``) is planned at that draw, so the tail's
        # draw is the lower of the two; a NaN maximum or energy compares false and skips this.
        tail_draw = min(ratio[i], taper_share)
        tail_kw = hi * phases[i] * voltage_v / 1000.0 * tail_draw
        if taper_kwh > 0.0 and tail_draw < ratio[i] and e > 0.0 and tail_kw > 0.0:
            start = dep - min(taper_kwh, e) / tail_kw
            cap = max(hi * tail_draw / ratio[i], min(min_a[i], hi))
            for t in range(1, T):
                if plugged[i, t] > 0 and offs_h[t] + dt_h[t] > start + 1e-9:
                    upper[i, t] = min(upper[i, t], cap)
        need[i] = one_slot_kwh if (e > 1e-3 and e < one_slot_kwh) else e
    # Energy per ampere offered, as Formulation.energy_per_a_kwh computes it (same operations).
    energy = np.empty((n, T))
    n_cells = 0
    for i in range(n):
        kw_ratio = phases[i] * voltage_v / 1000.0 * ratio[i]
        for t in range(T):
            energy[i, t] = kw_ratio * dt_h[t] * plugged[i, t]
            u = upper[i, t]
            if plugged[i, t] > 0 and u > 0 and u >= min_a[i] - 1e-9:
                n_cells += 1
    cell_car = np.empty(n_cells, dtype=np.int64)
    cell_slot = np.empty(n_cells, dtype=np.int64)
    k = 0
    for i in range(n):
        for t in range(T):
            u = upper[i, t]
            if plugged[i, t] > 0 and u > 0 and u >= min_a[i] - 1e-9:
                cell_car[k] = i
                cell_slot[k] = t
                k += 1
    return plugged, upper, ratio, urgency, need, energy, cell_car, cell_slot


@njit(cache=True)
def sample_steps(t_ns, v, ticks_ns, slot_ns, n_sub, check):
    """Values (T, n_sub) of a step-wise series (sorted times ``t_ns`` [ns], values ``v``; the
    last value carried forward, the first one before it) at ``n_sub`` evenly spaced instants
    in each slot starting at ``ticks_ns`` [ns] and ``slot_ns`` [ns] long, and each slot's
    largest sample.

    With ``check``, returns an empty (0, n_sub) array when the series has a NaN or its times
    are not strictly increasing: the caller cleans it and asks again.
    """
    last = t_ns.shape[0] - 1
    for q in range(last + 1):
        if check and (v[q] != v[q] or (q > 0 and t_ns[q] <= t_ns[q - 1])):
            return np.empty((0, n_sub)), np.empty(0)
    T = ticks_ns.shape[0]
    out = np.empty((T, n_sub))
    top = np.full(T, -np.inf)
    pos = -1  # the last knot at or before the instant: walked forward while instants increase
    prev_at = ticks_ns[0] if T else 0
    for t in range(T):
        for j in range(n_sub):
            at = ticks_ns[t] + np.int64(j / n_sub * slot_ns[t])
            if at < prev_at:  # slots out of order: walk again from the start
                pos = -1
            while pos < last and t_ns[pos + 1] <= at:
                pos += 1
            prev_at = at
            val = v[max(pos, 0)]
            out[t, j] = val
            if val > top[t] or val != val:  # NaN wins, as in numpy's max
                top[t] = val
    return out, top


@njit(cache=True)
def change_pairs(car, slot, prev_cell_a, n_change):
    """Cells with a setpoint-change pair inside the first ``n_change`` slots (at most the
    horizon), in cell order: against a predecessor (same car, previous slot); in slot 0 against
    the setpoint applied now (``prev_cell_a`` finite); else against 0 A when the car has no cell
    in the previous slot (it arrives, or a cap held it at 0) and, a second pair on the same cell,
    when it has none in the next slot inside the window (it leaves, or is held at 0 there): the
    plan's frame shows 0 A there, so the setpoint moves by the whole current.
    Returns the cells, whether each has a predecessor, and each pair's right-hand side [A]."""
    K = car.shape[0]
    kind = np.zeros(K, dtype=np.int64)  # 1: predecessor, 2: setpoint now, 3: from 0 A; +4: drop to 0 A
    m = 0
    for k in range(K):
        s = slot[k]
        same = k > 0 and car[k] == car[k - 1] and s == slot[k - 1] + 1 and s < n_change
        if same:
            kind[k] = 1
        elif s == 0 and np.isfinite(prev_cell_a[k]):
            kind[k] = 2
        elif 0 < s < n_change:
            kind[k] = 3
        nxt = k + 1 < K and car[k + 1] == car[k] and slot[k + 1] == s + 1
        if s + 1 < n_change and not nxt:
            kind[k] += 4
        m += (kind[k] % 4 > 0) + (kind[k] >= 4)
    pair = np.empty(m, dtype=np.int64)
    has_prev = np.zeros(m, dtype=np.bool_)
    rhs = np.zeros(m)
    m = 0
    for k in range(K):
        first = kind[k] % 4
        if first > 0:
            pair[m] = k
            has_prev[m] = first == 1
            if first == 2:
                rhs[m] = prev_cell_a[k]
            m += 1
        if kind[k] >= 4:
            pair[m] = k
            m += 1
    return pair, has_prev, rhs


@njit(cache=True)
def _put(r, c, v, e, row, col, val):
    """Write one COO entry at position ``e``; returns the next position."""
    r[e] = row
    c[e] = col
    v[e] = val
    return e + 1


@njit(cache=True)
def _emit(r, c, v, e, row0, rows, cols, vals):
    """Write COO entries (``row0 + rows``, ``cols``, ``vals``) from position ``e``; returns the next."""
    for q in range(rows.shape[0]):
        e = _put(r, c, v, e, row0 + rows[q], cols[q], vals[q])
    return e


@njit(cache=True)
def standard_form(col_start, n_col, row_start, n_row, cells, bcell, terms, changes, fuse, unb, extra):
    """The MILP's columns, rows and CSC entries in the layout of :class:`nowblock.milp.matrix.Layout`.

    ``col_start`` holds the first column of each block of ``COLUMN_BLOCKS`` (currents, on/off,
    shortfall, worst fraction, peak, change up, change down) and ``row_start`` the first row of
    each family of ``ROW_BLOCKS`` (energy, fuse, unbalance, on_upper, on_lower, fair, peak,
    change), both computed once by the layout; a block's size is the next start minus its own.
    ``cells``, ``terms``, ``changes``, ``fuse`` and ``unb`` are the named tuples of
    :mod:`nowblock.milp.matrix` (``unb.cell`` holds column indices: the light side of an
    unbalance row is a useful-current column); ``extra`` more entries with whole-matrix row and
    column indices (the useful-current rows), written last. Inside a family, a column's entries
    come in increasing row order (so a stable sort on the column gives CSC).
    """
    car, slot, ub, kwh = cells.car, cells.slot, cells.upper_a, cells.kwh_per_a
    K = car.shape[0]
    need = terms.need_kwh
    n = need.shape[0]
    price = terms.price_eur_per_kwh
    T = price.shape[0]
    B = bcell.shape[0]
    pair, has_prev, rhs = changes.cell, changes.has_prev, changes.rhs_a
    P = pair.shape[0]
    on0, sh0, wf, pk, up0, dn0 = col_start[1], col_start[2], col_start[3], col_start[4], col_start[5], col_start[6]
    use_fair = col_start[4] > col_start[3]
    use_peak = col_start[5] > col_start[4]
    cost = np.zeros(n_col)
    col_lo = np.zeros(n_col)
    col_hi = np.full(n_col, np.inf)
    integ = np.zeros(n_col, dtype=np.int32)
    for k in range(K):
        col_hi[k] = ub[k]
        cost[k] = (price[slot[k]] + terms.energy_eur_per_kwh) * kwh[k]
    for j in range(B):
        col_hi[on0 + j] = 1.0
        integ[on0 + j] = 1
    for i in range(n):
        col_hi[sh0 + i] = need[i]
        cost[sh0 + i] = terms.shortfall_eur_per_kwh[i]
    if use_fair:
        col_hi[wf] = 1.0
        cost[wf] = terms.fair_eur
    if use_peak:
        cost[pk] = terms.peak_eur_per_kw
    for j in range(P):
        cost[up0 + j] = terms.change_eur_per_a
        cost[dn0 + j] = terms.change_eur_per_a

    r_energy, r_fuse, r_unb, r_onu, r_onl, r_fair, r_peak, r_change = (
        row_start[0], row_start[1], row_start[2], row_start[3], row_start[4], row_start[5], row_start[6],
        row_start[7])
    n_prev = 0
    for j in range(P):
        if has_prev[j]:
            n_prev += 1
    n_fair = r_peak - r_fair
    n_nz = (K + n + fuse.row.shape[0] + unb.row.shape[0] + 4 * B + 2 * n_fair + (K + T if use_peak else 0)
            + 3 * P + n_prev + extra.row.shape[0])
    row_lo = np.full(n_row, -np.inf)
    row_hi = np.full(n_row, np.inf)
    r = np.empty(n_nz, dtype=np.int64)
    c = np.empty(n_nz, dtype=np.int64)
    v = np.empty(n_nz)
    e = 0
    # Energy: need <= delivered + shortfall <= the ceiling (need + one slot at the least setpoint).
    for i in range(n):
        row_lo[r_energy + i] = need[i]
        row_hi[r_energy + i] = terms.energy_hi_kwh[i]
    for k in range(K):
        e = _put(r, c, v, e, r_energy + car[k], k, kwh[k])
    for i in range(n):
        e = _put(r, c, v, e, r_energy + i, sh0 + i, 1.0)
    for j in range(fuse.hi_a.shape[0]):
        row_hi[r_fuse + j] = fuse.hi_a[j]
    e = _emit(r, c, v, e, r_fuse, fuse.row, fuse.cell, fuse.value)
    for j in range(unb.hi_a.shape[0]):
        row_hi[r_unb + j] = unb.hi_a[j]
    e = _emit(r, c, v, e, r_unb, unb.row, unb.cell, unb.value)
    # On/off: current <= upper * on, then current >= min * on.
    for j in range(B):
        row_hi[r_onu + j] = 0.0
        row_lo[r_onl + j] = 0.0
    for side in range(2):
        ro = r_onu if side == 0 else r_onl
        coef = ub if side == 0 else cells.min_a
        for j in range(B):
            e = _put(r, c, v, e, ro + j, bcell[j], 1.0)
        for j in range(B):
            e = _put(r, c, v, e, ro + j, on0 + j, -coef[bcell[j]])
    # Max-min fair: shortfall_i / need_i <= worst fraction.
    if use_fair:
        j = 0
        for i in range(n):
            if need[i] > 1e-9:
                row_hi[r_fair + j] = 0.0
                e = _put(r, c, v, e, r_fair + j, sh0 + i, 1.0 / need[i])
                j += 1
        for j in range(n_fair):
            e = _put(r, c, v, e, r_fair + j, wf, -1.0)
    # Peak: charging power + other load <= peak in every slot.
    if use_peak:
        for t in range(T):
            row_hi[r_peak + t] = -terms.base_kw[t]
        for k in range(K):
            e = _put(r, c, v, e, r_peak + slot[k], k, cells.kw_per_a[k])
        for t in range(T):
            e = _put(r, c, v, e, r_peak + t, pk, -1.0)
    # Setpoint changes: current[k] - current[k-1] - up + down = 0 (or = the setpoint now).
    for j in range(P):
        row_lo[r_change + j] = rhs[j]
        row_hi[r_change + j] = rhs[j]
    for j in range(P):
        e = _put(r, c, v, e, r_change + j, pair[j], 1.0)
    for j in range(P):
        if has_prev[j]:
            e = _put(r, c, v, e, r_change + j, pair[j] - 1, -1.0)
    for j in range(P):
        e = _put(r, c, v, e, r_change + j, up0 + j, -1.0)
    for j in range(P):
        e = _put(r, c, v, e, r_change + j, dn0 + j, 1.0)
    e = _emit(r, c, v, e, 0, extra.row, extra.cell, extra.value)
    a_start, a_index, a_value = coo_to_csc(r, c, v, n_col)
    return cost, col_lo, col_hi, integ, row_lo, row_hi, a_start, a_index, a_value


@njit(cache=True)
def complete_columns(n_col, x, car, slot, kwh_cell, kw_cell, need, base_kw, binary_cell, sh0, wf, pk, change_cell,
                     change_has_prev, change_rhs, up0, dn0, tol):
    """Every column's value for cell currents ``x`` [A] (currents first in the column order):
    on/off, shortfall [kWh] per car, worst fraction (column ``wf``, -1: none), peak [kW]
    (``pk``, -1: none) and the change pairs, each at its cheapest feasible value."""
    n = need.shape[0]
    T = base_kw.shape[0]
    v = np.zeros(n_col)
    K = x.shape[0]
    e = np.zeros(n)
    power = np.zeros(T)
    for k in range(K):
        v[k] = x[k]
        e[car[k]] += kwh_cell[k] * x[k]
        power[slot[k]] += kw_cell[k] * x[k]
    for j in range(binary_cell.shape[0]):
        v[K + j] = 1.0 if x[binary_cell[j]] > tol else 0.0
    worst = 0.0
    for i in range(n):
        s = min(max(need[i] - e[i], 0.0), need[i])
        v[sh0 + i] = s
        if need[i] > 1e-9 and s / need[i] > worst:
            worst = s / need[i]
    if wf >= 0:
        v[wf] = worst
    if pk >= 0:
        m = -np.inf
        for t in range(T):
            if power[t] + base_kw[t] > m:
                m = power[t] + base_kw[t]
        v[pk] = m
    for j in range(change_cell.shape[0]):
        c = change_cell[j]
        d = x[c] - (x[c - 1] if change_has_prev[j] else change_rhs[j])
        v[up0 + j] = max(d, 0.0)
        v[dn0 + j] = max(-d, 0.0)
    return v
