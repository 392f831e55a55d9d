"""Numba kernels of the planning step: the greedy loops around the solver.

Plain ndarrays in, plain ndarrays out. Each kernel replaced a per-slot numpy loop of 10-50 us
calls whose fixed cost was most of the step's time outside HiGHS on small blocks
(docs/bench_optimize.md, fourth pass). Limit rows are ``g @ current_a <= h`` (see
:func:`nowblock.optimize.schedule.limit_rows`); ``g`` may hold negative entries (unbalance
rows), so every check looks at every row.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _raise_prefix(load, room, g, cars, inc, tol):
    """How many of ``cars`` (in order) can take ``inc`` [A] more, one after the other, before a
    row of ``load + g[:, cars] @ inc <= room + tol`` first fails (a prefix: stops at the first)."""
    n_rows = load.shape[0]
    cur = load.copy()
    for j in range(cars.shape[0]):
        c = cars[j]
        ok = True
        for r in range(n_rows):
            cur[r] += g[r, c] * inc[j]
            if cur[r] > room[r] + tol:
                ok = False
        if not ok:
            return j
    return cars.shape[0]


@njit(cache=True)
def _slot_load(g, x_cells, car, slot, t_of_interest, n_slots):
    """Load [A] of every row in the slots flagged in ``t_of_interest`` from cell currents."""
    n_rows = g.shape[0]
    load = np.zeros((n_rows, n_slots))
    for k in range(x_cells.shape[0]):
        t = slot[k]
        if t_of_interest[t] and x_cells[k] != 0.0:
            c = car[k]
            for r in range(n_rows):
                load[r, t] += g[r, c] * x_cells[k]
    return load


@njit(cache=True)
def repair_stray_cells(x, lo, binary, car, slot, g, h, tol):
    """In place on cell currents ``x`` [A]: every binary cell strictly between 0 and its minimum
    ``lo`` goes to 0, then back up to ``lo`` where every row keeps room, slot by slot, the
    largest original values first (stopping a slot at its first car that does not fit)."""
    n_cells = x.shape[0]
    n_slots = h.shape[1]
    is_stray = np.zeros(n_cells, dtype=np.bool_)
    touched = np.zeros(n_slots, dtype=np.bool_)
    was = x.copy()
    n_stray = 0
    for k in range(n_cells):
        if binary[k] and x[k] > tol and x[k] < lo[k] - tol:
            is_stray[k] = True
            touched[slot[k]] = True
            x[k] = 0.0
            n_stray += 1
    if n_stray == 0:
        return 0
    load = _slot_load(g, x, car, slot, touched, n_slots)
    for t in range(n_slots):
        if not touched[t]:
            continue
        m = 0
        for k in range(n_cells):
            if is_stray[k] and slot[k] == t:
                m += 1
        ks = np.empty(m, dtype=np.int64)
        key = np.empty(m)
        m = 0
        for k in range(n_cells):
            if is_stray[k] and slot[k] == t:
                ks[m] = k
                key[m] = -was[k]
                m += 1
        ks = ks[np.argsort(key, kind="mergesort")]
        cars = car[ks]
        inc = lo[ks]
        n_ok = _raise_prefix(load[:, t], h[:, t], g, cars, inc, tol)
        for j in range(n_ok):
            x[ks[j]] = lo[ks[j]]
    return n_stray


@njit(cache=True)
def top_up_rounded(x, lost, up, min_a, g, h, step, n_slots_top, tol):
    """In place on a rounded dense plan ``x`` (n, T) [A]: in each of the first ``n_slots_top``
    slots, cars that lost more than 5 % of a step to rounding get one step back (or their
    minimum), the largest loss first, while every row keeps room (a prefix, as above)."""
    n, T = x.shape
    n_rows = g.shape[0]
    for t in range(min(n_slots_top, T)):
        m = 0
        for i in range(n):
            if lost[i, t] > 0.05 * step and x[i, t] + step <= up[i, t] + tol:
                m += 1
        if m == 0:
            continue
        cand = np.empty(m, dtype=np.int64)
        key = np.empty(m)
        m = 0
        for i in range(n):
            if lost[i, t] > 0.05 * step and x[i, t] + step <= up[i, t] + tol:
                cand[m] = i
                key[m] = -lost[i, t]
                m += 1
        cand = cand[np.argsort(key, kind="mergesort")]
        inc = np.empty(m)
        for j in range(m):
            new = x[cand[j], t] + step
            if new < min_a[cand[j]] - tol:
                new = min_a[cand[j]]
            inc[j] = new - x[cand[j], t]
        load = np.zeros(n_rows)
        for i in range(n):
            if x[i, t] != 0.0:
                for r in range(n_rows):
                    load[r] += g[r, i] * x[i, t]
        n_ok = _raise_prefix(load, h[:, t], g, cand, inc, tol)
        for j in range(n_ok):
            x[cand[j], t] += inc[j]


@njit(cache=True)
def csc_feasible(a_start, a_index, a_value, v, col_lo, col_hi, row_lo, row_hi, tol):
    """Whether column values ``v`` keep every bound and row of the CSC matrix within ``tol``
    (rows relative to ``1 + |finite row_hi|``)."""
    n_col = v.shape[0]
    for j in range(n_col):
        if v[j] < col_lo[j] - tol or v[j] > col_hi[j] + tol:
            return False
    r = np.zeros(row_lo.shape[0])
    for j in range(n_col):
        vj = v[j]
        if vj != 0.0:
            for p in range(a_start[j], a_start[j + 1]):
                r[a_index[p]] += a_value[p] * vj
    for i in range(r.shape[0]):
        hi = row_hi[i]
        scale = 1.0 + (abs(hi) if np.isfinite(hi) else 0.0)
        if r[i] < row_lo[i] - tol * scale or r[i] > hi + tol * scale:
            return False
    return True


@njit(cache=True)
def top_up_now(x, order, g, slack, hi, lo, kw, budget_kw, step):
    """In place on setpoints ``x`` [A]: cars in ``order`` are raised, one after the other, to
    the most every row's ``slack`` [A], their maximum ``hi`` and the power ``budget_kw`` [kW]
    allow, in whole ``step`` and 0 or at least ``lo``."""
    n_rows = g.shape[0]
    for j in range(order.shape[0]):
        i = order[j]
        room = np.inf
        for r in range(n_rows):
            if g[r, i] > 1e-12:
                q = slack[r] / g[r, i]
                if q < room:
                    room = q
        if kw[i] > 0:
            room = min(room, budget_kw / kw[i])
        new = np.floor(min(hi[i], x[i] + max(room, 0.0)) / step + 1e-9) * step
        if new < lo[i] - 1e-9 or new <= x[i] + 1e-9:
            continue
        for r in range(n_rows):
            slack[r] -= g[r, i] * (new - x[i])
        budget_kw -= kw[i] * (new - x[i])
        x[i] = new
