"""Numba kernels that serve cars an unbalance row (or a fuse row) blocks, by moving other cars' steps.

Where a site limits the unbalance between grid phases, a single-phase car on the heavy phase
can take more only if the light phases carry more in the same slot. The light side counts what
its cars really draw (a full car draws nothing more, :func:`nowblock.milp.rounding.drawn_dense`),
so raising a full light-phase car's setpoint balances nothing; moving one of its steps from a
slot where its phase is not needed into the blocked slot does. The LP does this with fractional
currents; a plan in whole steps needs the move spelt out. :func:`serve_blocked` tries, for each
car short of its need and each slot where one more step of it breaks an unbalance row:

- **light-side move**: a car on the light side of every broken row takes a step (its least
  setpoint, from 0) in the slot and gives the same back in another slot of its own that is worth
  no more energy; the blocked car takes its step;
- **heavy-side move**: a car on the heavy side gives a step up in the slot and takes it back in
  another slot of its own that is worth no less; the blocked car takes its step;
- a plain raise where, with the real draws, no row is broken.

Every move is checked against every fuse row and the power cap of the slots it touches and
against every unbalance row of every slot with the draws recomputed (a car's draws change in
every later slot when its energy passes its need); a move is kept only if no row gets worse than
it was (none that held breaks), no car's energy up to its need falls, no car passes its energy
ceiling and the blocked car's energy rises; partners' other slots are tried in time order, not
by price. A car a *fuse* row blocks by less than its next step (a phase with 1-5 A left, a 6 A
minimum) is served by :func:`serve_fuse_blocked` (session 38; session 27 had left it for later
since it changes plans on sites without an unbalance limit too), with the same checks
(:func:`try_moves`). Bookkeeping as in :mod:`nowblock.milp.plan_kernels`: ``fslack`` [A] is ``h - G @ y``
over the fuse rows, ``over`` [A] the unbalance rows' left-hand side less ``h`` (<= 0 where they
hold), ``d`` [A] what each car draws, ``power_room`` [kW] what the power cap leaves per slot.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nowblock.milp.kernels import argsort_stable


@njit(cache=True)
def drawn_row(y_c, kwh_c, need_c, out):
    """What one car draws [A] in each slot under setpoints ``y_c`` [A]: all of it until its
    ``need_c`` [kWh] is met, in slot order, then only the rest (written into ``out``)."""
    before = 0.0
    for s in range(y_c.shape[0]):
        if kwh_c[s] > 0.0:
            rest = need_c - before
            if rest < 0.0:
                rest = 0.0
            out[s] = min(y_c[s], rest / kwh_c[s])
        else:
            out[s] = y_c[s]
        before += y_c[s] * kwh_c[s]


@njit(cache=True)
def _energy(y_c, kwh_c):
    e = 0.0
    for s in range(y_c.shape[0]):
        e += y_c[s] * kwh_c[s]
    return e


@njit(cache=True)
def _served(y_c, kwh_c, need_c):
    return min(_energy(y_c, kwh_c), need_c)


@njit(cache=True)
def _book_fuses(cars, slots, amounts, m, sign, fslack, power_room, kw, g_start, g_row, g_val, n_fuse_rows):
    """The fuse rows' room [A] and the power cap's room [kW] after the ``m`` changes (``sign``
    1) or after taking them back (-1)."""
    for q in range(m):
        c, s, a = cars[q], slots[q], sign * amounts[q]
        for p in range(g_start[c], g_start[c + 1]):
            if g_row[p] < n_fuse_rows:
                fslack[g_row[p], s] -= g_val[p] * a
        power_room[s] -= kw[c] * a


@njit(cache=True)
def try_moves(cars, slots, amounts, m, y, d, over, fslack, power_room, kwh, need, ceiling, kw, up, on_a, g_start,
              g_row, g_val, n_fuse_rows, tol):
    """Apply the ``m`` changes (car, slot, amount [A]) to plan ``y`` if the plan stays valid
    (module docstring), no touched car's energy up to its need falls and none ends above its
    ``ceiling`` [kWh] unless it was there before (a step moved into a longer slot is worth
    more); returns True if applied (bookkeeping updated), else leaves everything as it was (the
    cells restored exactly, not by subtraction)."""
    n, T = y.shape
    before = np.empty(m)
    total = np.empty(m)
    old = np.empty(m)
    for q in range(m):
        c = cars[q]
        before[q] = _served(y[c], kwh[c], need[c])
        total[q] = _energy(y[c], kwh[c])
        old[q] = y[c, slots[q]]
    for q in range(m):
        y[cars[q], slots[q]] += amounts[q]
        if abs(y[cars[q], slots[q]]) < 1e-9:
            y[cars[q], slots[q]] = 0.0  # steps subtracted in floating point leave dust
    ok = True
    for q in range(m):
        c, s = cars[q], slots[q]
        v = y[c, s]
        if v < -tol or v > up[c, s] + tol or (v > tol and v < on_a[c] - tol):
            ok = False
    if ok:
        for q in range(m):
            c = cars[q]
            if _served(y[c], kwh[c], need[c]) < before[q] - 1e-9:
                ok = False
            if _energy(y[c], kwh[c]) > max(ceiling[c], total[q]) + 1e-9:
                ok = False
    # Fuse rows and the power cap of the touched slots.
    if ok:
        _book_fuses(cars, slots, amounts, m, 1.0, fslack, power_room, kw, g_start, g_row, g_val, n_fuse_rows)
        for q in range(m):
            c, s = cars[q], slots[q]
            for p in range(g_start[c], g_start[c + 1]):
                r = g_row[p]
                if r < n_fuse_rows and fslack[r, s] < -tol:
                    ok = False
            if power_room[s] < -1e-6:
                ok = False
        if not ok:
            _book_fuses(cars, slots, amounts, m, -1.0, fslack, power_room, kw, g_start, g_row, g_val, n_fuse_rows)
    if not ok:
        for q in range(m - 1, -1, -1):
            y[cars[q], slots[q]] = old[q]
        return False
    # The unbalance rows of every slot, with the touched cars' draws recomputed.
    new = over.copy()
    nd = np.empty((m, T))
    for q in range(m):
        c = cars[q]
        if not _first(cars, q):
            continue
        drawn_row(y[c], kwh[c], need[c], nd[q])
        for p in range(g_start[c], g_start[c + 1]):
            r = g_row[p]
            if r < n_fuse_rows:
                continue
            gv = g_val[p]
            if gv > 0:
                for qq in range(m):
                    if cars[qq] == c:
                        new[r - n_fuse_rows, slots[qq]] += gv * amounts[qq]
            else:
                for s in range(T):
                    new[r - n_fuse_rows, s] += gv * (nd[q, s] - d[c, s])
    for r in range(new.shape[0]):
        for s in range(T):
            if new[r, s] > max(over[r, s], 1e-6):
                ok = False
    if not ok:
        for q in range(m - 1, -1, -1):
            y[cars[q], slots[q]] = old[q]
        _book_fuses(cars, slots, amounts, m, -1.0, fslack, power_room, kw, g_start, g_row, g_val, n_fuse_rows)
        return False
    over[:, :] = new
    for q in range(m):
        if _first(cars, q):
            d[cars[q], :] = nd[q]
    return True


@njit(cache=True)
def _take_back(cars, slots, olds, m, y, d, over, fslack, power_room, kwh, need, kw, g_start, g_row, g_val,
               n_fuse_rows):
    """Undo ``m`` changes applied by :func:`try_moves`: each cell (car, slot) back to its value
    ``olds`` [A] from before them, the fuse rows, the power cap, the draws ``d`` and the
    unbalance rows ``over`` rebooked from the restored plan. Not a move to check: an unbalance
    row already over its limit before the changes may have come down with them, and going back
    up to where it was must not be refused (review rev3)."""
    T = y.shape[1]
    cur = np.empty(T)
    nd = np.empty(T)
    for q in range(m):
        c = cars[q]
        if not _first(cars, q):
            continue
        for s in range(T):
            cur[s] = y[c, s]
        for qq in range(m - 1, -1, -1):  # the last first: a cell changed twice ends at its first value
            if cars[qq] == c:
                a = olds[qq] - y[c, slots[qq]]
                for p in range(g_start[c], g_start[c + 1]):
                    if g_row[p] < n_fuse_rows:
                        fslack[g_row[p], slots[qq]] -= g_val[p] * a
                power_room[slots[qq]] -= kw[c] * a
                y[c, slots[qq]] = olds[qq]
        drawn_row(y[c], kwh[c], need[c], nd)
        for p in range(g_start[c], g_start[c + 1]):
            r = g_row[p]
            if r < n_fuse_rows:
                continue
            gv = g_val[p]
            for s in range(T):
                if gv > 0:
                    over[r - n_fuse_rows, s] += gv * (y[c, s] - cur[s])
                else:
                    over[r - n_fuse_rows, s] += gv * (nd[s] - d[c, s])
        for s in range(T):
            d[c, s] = nd[s]


@njit(cache=True)
def _first(cars, q):
    """Whether ``cars[q]`` is the first entry of its car among ``cars[:q + 1]``."""
    for qq in range(q):
        if cars[qq] == cars[q]:
            return False
    return True


@njit(cache=True)
def _coef(c, r, g_start, g_row, g_val):
    for p in range(g_start[c], g_start[c + 1]):
        if g_row[p] == r:
            return g_val[p]
    return 0.0


@njit(cache=True)
def _room_at(c, u, side, amount, d, over, g_start, g_row, g_val, n_fuse_rows):
    """Whether the unbalance rows of slot ``u`` have room for car ``c`` moving ``amount`` [A]
    there: into ``u`` (``side`` +1: the rows it loads) or out of ``u`` (-1: the rows it
    lightens lose what it drew there, at most ``amount``)."""
    for p in range(g_start[c], g_start[c + 1]):
        r = g_row[p]
        if r < n_fuse_rows or g_val[p] * side <= 0:
            continue
        change = g_val[p] * amount if side > 0 else -g_val[p] * min(amount, d[c, u])
        if over[r - n_fuse_rows, u] + change > 1e-6:
            return False
    return True


@njit(cache=True)
def _try_pair(c, from_slot, to_slot, amount, y, d, over, fslack, power_room, kwh, need, ceiling, kw, up, on_a, g_start,
              g_row, g_val, n_fuse_rows, tol, tries, cars, slots, amounts):
    """The blocked car's step (``cars[0]``, ``slots[0]``, ``amounts[0]``) with car ``c`` moving
    ``amount`` [A] from ``from_slot`` to ``to_slot``: :func:`try_moves` on the three changes
    (counted in ``tries[0]``)."""
    tries[0] += 1
    cars[1], slots[1], amounts[1] = c, from_slot, -amount
    cars[2], slots[2], amounts[2] = c, to_slot, amount
    return try_moves(cars, slots, amounts, 3, y, d, over, fslack, power_room, kwh, need, ceiling, kw, up, on_a,
                     g_start, g_row, g_val, n_fuse_rows, tol)


@njit(cache=True)
def _move_into(i, t, y, d, over, fslack, power_room, kwh, need, ceiling, kw, up, on_a, g_start, g_row, g_val, r_start,
               r_car, r_val, n_fuse_rows, step, tol, tries, max_tries, cars, slots, amounts, blocked, on_start,
               on_slot, max_partners):
    """One move that gives car ``i`` a step (its least setpoint, from 0) in slot ``t``; True if
    made. ``tries[0]`` counts the moves tried, ``tries[1]`` the slots looked at. A partner gives
    or takes its step back only in a slot where it was on when the pass began
    (``on_slot[on_start[k]:on_start[k + 1]]``; a slot since emptied is skipped); at most
    ``max_partners`` partners a side are looked at."""
    a = step if y[i, t] > 0.0 else on_a[i]
    if y[i, t] + a > up[i, t] + tol:
        return False
    # At the power cap only a heavy-side partner's step out of the slot can make room (the
    # moves' own check in try_moves decides).
    power_full = kw[i] * a > power_room[t] + 1e-6
    nb = 0
    for p in range(g_start[i], g_start[i + 1]):
        r = g_row[p]
        if r < n_fuse_rows:
            if g_val[p] > 0 and g_val[p] * a > fslack[r, t] + tol:
                return False
        elif g_val[p] > 0 and over[r - n_fuse_rows, t] + g_val[p] * a > 1e-6:
            blocked[nb] = r
            nb += 1
    cars[0], slots[0], amounts[0] = i, t, a
    if nb == 0:
        if power_full:
            return False
        tries[0] += 1
        return try_moves(cars, slots, amounts, 1, y, d, over, fslack, power_room, kwh, need, ceiling, kw, up, on_a,
                         g_start, g_row, g_val, n_fuse_rows, tol)
    r0 = blocked[0]
    # side -1: a car on the light side of every broken row moves a step into t (from a slot of
    # its own worth no more energy); side +1: a car that loads every broken row moves a step out
    # of t (into a slot worth no less). At the power cap only the second can make room.
    for side in (-1, 1):
        if side < 0 and power_full:
            continue
        seen = 0
        for s_ in range(r_start[r0], r_start[r0 + 1]):
            c = r_car[s_]
            if r_val[s_] * side <= 0 or c == i:
                continue
            same_side = True
            for b in range(1, nb):
                if _coef(c, blocked[b], g_start, g_row, g_val) * side <= 0:
                    same_side = False
            if not same_side:
                continue
            if side < 0:
                amount = step if y[c, t] > 0.0 else on_a[c]
                if kwh[c, t] <= 0.0 or y[c, t] + amount > up[c, t] + tol:
                    continue
            else:
                amount = step
                if y[c, t] - step < on_a[c] - tol:
                    continue
            seen += 1
            if seen > max_partners:
                break
            for e in range(on_start[c], on_start[c + 1]):
                u = on_slot[e]
                tries[1] += 1
                if u == t or y[c, u] <= 0.0:
                    continue
                if side < 0:
                    left = y[c, u] - amount
                    if kwh[c, u] > kwh[c, t] + 1e-12 or left < -tol or (left > tol and left < on_a[c] - tol):
                        continue
                elif y[c, u] + amount > up[c, u] + tol or kwh[c, u] < kwh[c, t] - 1e-12:
                    continue
                if not _room_at(c, u, side, amount, d, over, g_start, g_row, g_val, n_fuse_rows):
                    continue
                if tries[0] >= max_tries:
                    return False
                if _try_pair(c, u if side < 0 else t, t if side < 0 else u, amount, y, d, over, fslack, power_room,
                             kwh, need, ceiling, kw, up, on_a, g_start, g_row, g_val, n_fuse_rows, tol, tries, cars,
                             slots, amounts):
                    return True
    return False


@njit(cache=True)
def serve_blocked(y, d, over, fslack, power_room, order, kwh, need, ceiling, kw, up, on_a, g_start, g_row, g_val,
                  r_start, r_car, r_val, n_fuse_rows, step, tol, max_tries, max_work=-1, max_partners=32):
    """For the cars in ``order`` (short of their need first), the moves of the module docstring,
    slot by slot and again in the same slot while one is made, until each car has its need, no
    move is left, or ``max_tries`` moves have been tried. Changes ``y``, ``d``, ``over``,
    ``fslack`` and ``power_room`` in place; returns the number of moves made and of moves
    tried. ``ceiling`` [kWh] per car is the most energy a plan may give it (a car above it
    already may keep what it has). ``max_work`` limits the partner slots looked at (default: 50
    per cell of ``y``; checked between moves, so one car and slot may pass it by at most
    ``2 * max_partners * T``), ``max_partners`` the partners a side per car and slot: the
    search is a heuristic, and its time must stay a fraction of the rounding's own."""
    n, T = y.shape
    if max_work < 0:
        max_work = 50 * n * T
    on_start = np.zeros(n + 1, dtype=np.int64)
    for k in range(n):
        c = 0
        for u in range(T):
            if y[k, u] > 0.0:
                c += 1
        on_start[k + 1] = on_start[k] + c
    on_slot = np.empty(on_start[n], dtype=np.int64)
    for k in range(n):
        e = on_start[k]
        for u in range(T):
            if y[k, u] > 0.0:
                on_slot[e] = u
                e += 1
    cars = np.empty(3, dtype=np.int64)
    slots = np.empty(3, dtype=np.int64)
    amounts = np.empty(3)
    blocked = np.empty(g_row.shape[0] + 1, dtype=np.int64)
    tries = np.zeros(2, dtype=np.int64)
    made = 0
    for j in range(order.shape[0]):
        i = order[j]
        for t in range(T):
            if kwh[i, t] <= 0.0 or up[i, t] <= 0.0:
                continue
            while tries[0] < max_tries and tries[1] < max_work and _served(y[i], kwh[i], need[i]) < need[i] - 1e-9:
                if not _move_into(i, t, y, d, over, fslack, power_room, kwh, need, ceiling, kw, up, on_a, g_start,
                                  g_row, g_val, r_start, r_car, r_val, n_fuse_rows, step, tol, tries, max_tries, cars,
                                  slots, amounts, blocked, on_start, on_slot, max_partners):
                    break
                made += 1
            if tries[0] >= max_tries or tries[1] >= max_work:
                return made, tries[0]
    return made, tries[0]


# ---- cars a fuse row blocks: time-sharing a fuse phase under "0 or at least the minimum" ----
@njit(cache=True)
def _steps_down(v, step):
    return np.floor(v / step + 1e-9) * step


@njit(cache=True)
def _shift_partner(j, t, give, y, fslack, up, on_a, kwh, cand, n_cand, g_start, g_row, g_val, n_fuse_rows, step, tol,
                   cars, slots, amounts, max_pieces):
    """Car ``j``'s ``give`` [A] out of slot ``t`` and into slots ``cand[:n_cand]`` (in that
    order), as pieces of whole steps where its maximum and every fuse row of its have room:
    raised where it is on, all of it where it is off and ``give`` is at least its ``on_a``; at
    most ``max_pieces`` slots, each worth the energy a step in ``t`` is, so that ``j`` keeps
    its energy (and taking the shift back restores it exactly). Written into
    ``cars``/``slots``/``amounts``; returns how many changes (0: no such placement)."""
    cars[0], slots[0], amounts[0] = j, t, -give
    m, rem = 1, give
    for q in range(n_cand):
        u = cand[q]
        if u == t or up[j, u] <= 0.0 or abs(kwh[j, u] - kwh[j, t]) > 1e-12:
            continue
        off = y[j, u] <= 0.0
        if off and rem < on_a[j] - tol:
            continue
        room = up[j, u] - y[j, u]
        for p in range(g_start[j], g_start[j + 1]):
            r = g_row[p]
            if r < n_fuse_rows and g_val[p] > 0:
                room = min(room, (fslack[r, u] + tol) / g_val[p])
        piece = min(rem, _steps_down(room, step))
        if piece <= 0.0 or (off and piece < rem - tol):
            continue
        cars[m], slots[m], amounts[m] = j, u, piece
        m += 1
        rem -= piece
        if rem <= tol or m > max_pieces:
            break
    return m if rem <= tol else 0


@njit(cache=True)
def _swap_slot(i, j, t, a, dj, y, fslack, up, on_a, kwh, cand, n_cand, g_start, g_row, g_val, n_fuse_rows, tol, cars,
               slots, amounts):
    """Car ``i``'s step ``a`` [A] into slot ``t`` with car ``j`` giving ``dj`` [A] there and taking
    it back in a slot ``u`` where ``i`` gives up the same ``dj`` (``i``'s room there goes to
    ``j``): ``i`` gains ``a - dj`` amperes of energy, the room ``t`` had left. ``u`` among
    ``cand[:n_cand]`` (in that order) where ``i`` is on and stays 0 or at least its ``on_a``,
    ``j`` stays within its maximum and 0 or at least its ``on_a``, every fuse row of ``j``'s
    has room after ``i``'s part, and ``j``'s step is worth the same energy in ``t`` and ``u``.
    Written into ``cars``/``slots``/``amounts``; returns 4 (or 0: no such slot)."""
    for q in range(n_cand):
        u = cand[q]
        if u == t or y[i, u] <= 0.0 or up[j, u] <= 0.0 or abs(kwh[j, u] - kwh[j, t]) > 1e-12:
            continue
        left = y[i, u] - dj
        if left < -tol or (left > tol and left < on_a[i] - tol) or a * kwh[i, t] - dj * kwh[i, u] <= 1e-12:
            continue
        if y[j, u] + dj > up[j, u] + tol or (y[j, u] <= 0.0 and dj < on_a[j] - tol):
            continue
        ok = True
        for p in range(g_start[j], g_start[j + 1]):
            r = g_row[p]
            if r < n_fuse_rows and g_val[p] > 0:
                if fslack[r, u] + _coef(i, r, g_start, g_row, g_val) * dj - g_val[p] * dj < -tol:
                    ok = False
                    break
        if ok:
            cars[0], slots[0], amounts[0] = j, t, -dj
            cars[1], slots[1], amounts[1] = j, u, dj
            cars[2], slots[2], amounts[2] = i, u, -dj
            cars[3], slots[3], amounts[3] = i, t, a
            return 4
    return 0


@njit(cache=True)
def _slots_where(cond_row, y, i, slot_order, fslack, tol, out):
    """Slots in ``slot_order`` order into ``out``: where car ``i`` is on (``cond_row`` < 0) or
    where fuse row ``cond_row`` has room left; returns how many."""
    k = 0
    for q in range(slot_order.shape[0]):
        u = slot_order[q]
        if (y[i, u] > 0.0) if cond_row < 0 else (fslack[cond_row, u] > tol):
            out[k] = u
            k += 1
    return k


@njit(cache=True)
def serve_fuse_blocked(y, d, over, fslack, power_room, order, slot_order, kwh, need, ceiling, kw, up, on_a, g_start,
                       g_row, g_val, r_start, r_car, r_val, n_fuse_rows, step, tol, max_work, max_partners=16,
                       max_pieces=8, swap=True, shift=True):
    """Serve cars in ``order`` (short of their need) where a *fuse* row has room left, but less
    than the car's next step: its least setpoint ``on_a`` if it is off there (a phase with
    3 A left cannot take a 6 A car), else a pilot step. The LP shares a fuse phase with
    fractional currents; under "0 or at least the minimum" the same room needs the cars to take
    turns. For car ``i`` and such a slot ``t`` (those lacking the least room first), cars on in
    ``t`` under the row that lacks the most give up what the lacking rows miss, in whole steps
    and never below their own ``on_a``:

    - **shift** (``shift``): partner ``j`` moves it into other slots of its own where every
      fuse row of its has room (:func:`_shift_partner`); more partners may add up; then ``i``
      takes its step (gaining all of it);
    - **swap** (``swap``; one partner that covers every lacking row, where no shift was made):
      ``j`` moves it into a slot ``u`` where ``i`` is on and gives up the same there
      (:func:`_swap_slot`); ``i`` gains the room ``t`` had left.

    Each shift and swap and the step are checked and applied by :func:`try_moves` (every fuse
    row and the power cap ``power_room`` of the slots touched, every unbalance row of every slot
    with the light side at what cars draw, no car's energy up to its need falls, none passes its
    ``ceiling``); where the step is refused in the end, the shifts are taken back. Slots a
    partner's step goes to are tried in ``slot_order`` (the cheapest first). Changes ``y``,
    ``d``, ``over``, ``fslack`` and ``power_room`` in place; stops once ``max_work`` candidate
    slots have been looked at, each move tried counted as ``T`` more (checked between slots of
    ``i``). Returns the steps given and the work done."""
    n, T = y.shape
    width = 1
    for c in range(n):
        width = max(width, g_start[c + 1] - g_start[c])
    lack_row = np.empty(width, dtype=np.int64)
    lack = np.empty(width)
    key = np.empty(T)
    mine = np.empty(T, dtype=np.int64)  # the slots i is on in, cheapest first
    roomy = np.empty(T, dtype=np.int64)  # the slots the lacking row has room in, cheapest first
    cap = max(max_pieces + 1, 4)
    cars = np.empty(cap, dtype=np.int64)
    slots = np.empty(cap, dtype=np.int64)
    amounts = np.empty(cap)
    log_car = np.empty(max_partners * cap, dtype=np.int64)
    log_slot = np.empty(max_partners * cap, dtype=np.int64)
    log_old = np.empty(max_partners * cap)
    log_m = np.empty(max_partners, dtype=np.int64)
    one_car = np.empty(1, dtype=np.int64)
    one_slot = np.empty(1, dtype=np.int64)
    one_a = np.empty(1)
    made, work = 0, 0
    # ``roomy`` holds row ``roomy_row``'s slots as of the ``roomy_at``-th change of the plan.
    changes, roomy_row, roomy_at, n_roomy = 0, -1, -1, 0
    for jj in range(order.shape[0]):
        i = order[jj]
        # Slots where a fuse row lacks room for the car's next step, the least lacking first.
        for t in range(T):
            key[t] = np.inf
            if kwh[i, t] <= 0.0 or up[i, t] <= 0.0:
                continue
            a = step if y[i, t] > 0.0 else on_a[i]
            if y[i, t] + a > up[i, t] + tol:
                continue
            total = 0.0
            for p in range(g_start[i], g_start[i + 1]):
                r = g_row[p]
                if r < n_fuse_rows and g_val[p] > 0:
                    short = g_val[p] * a - fslack[r, t]
                    if short > tol:
                        total += short
            if total > tol:
                key[t] = total
        ts = argsort_stable(key)
        n_mine = _slots_where(-1, y, i, slot_order, fslack, tol, mine)
        work += T
        for q in range(T):
            t = ts[q]
            if key[t] == np.inf or _served(y[i], kwh[i], need[i]) >= need[i] - 1e-9:
                break
            if work >= max_work:
                return made, work
            a = step if y[i, t] > 0.0 else on_a[i]
            if y[i, t] + a > up[i, t] + tol or _energy(y[i], kwh[i]) + a * kwh[i, t] > ceiling[i] + 1e-9:
                continue
            nl, worst, worst_l = 0, -1, 0.0
            for p in range(g_start[i], g_start[i + 1]):
                r = g_row[p]
                if r < n_fuse_rows and g_val[p] > 0:
                    short = g_val[p] * a - fslack[r, t]
                    if short > tol:
                        lack_row[nl], lack[nl] = r, short
                        nl += 1
                        if short > worst_l:
                            worst, worst_l = r, short
            n_shift = 0
            swapped = False
            if nl > 0:
                # A partner's shift needs room on the row it relieves.
                if shift and (worst != roomy_row or changes != roomy_at):
                    n_roomy = _slots_where(worst, y, i, slot_order, fslack, tol, roomy)
                    roomy_row, roomy_at = worst, changes
                    work += T
                for s_ in range(r_start[worst], r_start[worst + 1]):
                    j = r_car[s_]
                    if j == i or r_val[s_] <= 0 or y[j, t] <= 0.0:
                        continue
                    give = 0.0
                    on_all = True  # j is on every row that still lacks room
                    for k in range(nl):
                        if lack[k] > tol:
                            c = _coef(j, lack_row[k], g_start, g_row, g_val)
                            if c > 0:
                                give = max(give, lack[k] / c)
                            else:
                                on_all = False
                    give = np.ceil(give / step - 1e-9) * step
                    spare = _steps_down(y[j, t] - on_a[j], step)
                    # What it lacks, from j's spare above its least setpoint (or all of the spare).
                    covers = on_all and spare >= give - tol
                    give = min(give, spare)
                    if give <= 0.0:
                        continue
                    m = 0
                    if n_roomy > 0:
                        m = _shift_partner(j, t, give, y, fslack, up, on_a, kwh, roomy, n_roomy, g_start, g_row,
                                           g_val, n_fuse_rows, step, tol, cars, slots, amounts, max_pieces)
                        work += n_roomy
                    work += T * (m > 0)  # a try costs about a pass over the touched cars' slots
                    for e in range(m):
                        log_old[n_shift * cap + e] = y[cars[e], slots[e]]
                    if m > 0 and try_moves(cars, slots, amounts, m, y, d, over, fslack, power_room, kwh, need,
                                           ceiling, kw, up, on_a, g_start, g_row, g_val, n_fuse_rows, tol):
                        changes += 1
                        for e in range(m):
                            log_car[n_shift * cap + e] = cars[e]
                            log_slot[n_shift * cap + e] = slots[e]
                        log_m[n_shift] = m
                        n_shift += 1
                        done = True
                        for k in range(nl):
                            lack[k] -= _coef(j, lack_row[k], g_start, g_row, g_val) * give
                            if lack[k] > tol:
                                done = False
                        if done or n_shift >= max_partners:
                            break
                    elif swap and n_shift == 0 and covers:
                        m = _swap_slot(i, j, t, a, give, y, fslack, up, on_a, kwh, mine, n_mine, g_start, g_row,
                                       g_val, n_fuse_rows, tol, cars, slots, amounts)
                        work += n_mine + T * (m > 0)
                        if m > 0 and try_moves(cars, slots, amounts, m, y, d, over, fslack, power_room, kwh, need,
                                               ceiling, kw, up, on_a, g_start, g_row, g_val, n_fuse_rows, tol):
                            swapped = True
                            changes += 1
                            break
            if swapped:
                made += 1
                n_mine = _slots_where(-1, y, i, slot_order, fslack, tol, mine)
                continue
            one_car[0], one_slot[0], one_a[0] = i, t, a
            ok = True
            for k in range(nl):
                if lack[k] > tol:
                    ok = False
            if ok and try_moves(one_car, one_slot, one_a, 1, y, d, over, fslack, power_room, kwh, need, ceiling, kw,
                                up, on_a, g_start, g_row, g_val, n_fuse_rows, tol):
                made += 1
                changes += 1
                n_mine = _slots_where(-1, y, i, slot_order, fslack, tol, mine)
                continue
            # Refused: the shifts taken back, the last first, cell by cell (not as moves to
            # check: a row over its limit at entry that a shift brought down would refuse them).
            for b in range(n_shift - 1, -1, -1):
                m = log_m[b]
                for e in range(m):
                    cars[e] = log_car[b * cap + e]
                    slots[e] = log_slot[b * cap + e]
                    amounts[e] = log_old[b * cap + e]
                _take_back(cars, slots, amounts, m, y, d, over, fslack, power_room, kwh, need, kw, g_start, g_row,
                           g_val, n_fuse_rows)
                changes += 1
    return made, work
