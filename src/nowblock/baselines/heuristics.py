"""Baseline charging policies: strategies as plain functions behind one small class.

Every strategy is a function ``(snapshot) -> ndarray`` of proposed setpoints [A] per phase in
the order of ``snapshot.cars``; :class:`HeuristicPolicy` turns one into a :class:`Policy` and
passes the answer through :func:`nowblock.seam.make_safe` (the shared safety net). The
strategies already respect every limit row and the 0-or-at-least-min rule themselves, so
``make_safe`` is a second line of defence that rarely has to change anything.

* ``uncontrolled``: every car is offered its maximum; no safety net (the reference that
  overloads the grid connection).
* ``equal``: max-min fair water-filling: all cars rise together until a fuse phase (or the
  unbalance limit) binds, then the cars on it stop and the rest keep rising. When not every
  car can get its minimum, cars are admitted round robin: the ones that got the smallest
  share of their request so far go first, so who waits rotates over the evening.
* ``edf``: earliest deadline first: cars in order of departure each take what is left.
* ``llf``: least laxity first: likewise, in order of laxity (time left minus time needed at
  full power).
* ``round_robin``: ACN-Sim's RoundRobin (acnportal): cars take turns, each turn one fixed
  increment (:data:`ROUND_ROBIN_INCREMENT_A`) for one car while every limit row allows it; a
  car whose next increment does not fit takes what still fits and leaves the queue. A car's
  first turn is its minimum current (0 or at least the minimum). Turn order as for ``equal``
  admission (priority, smallest share of its request so far, longest waiting).

Limitation: cars are admitted one at a time, each keeping every row feasible. With a phase
unbalance limit below a single-phase car's minimum current, a lone single-phase car can never
start, so such cars charge only when all wanting cars fit at their minimum together (then a
balanced trio of single-phase cars does start); the MILP decides them jointly.

The registry that also knows the MILP (``get_policy``) sits above this layer, in
:mod:`nowblock.policies`; the optimizer below it uses these baselines as its fallback.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np
import pandas as pd

from nowblock.seam import BlockSnapshot, constraint_rows, make_safe
from nowblock.seam.snapshot import cached_constraint_rows

_TOL_A = 1e-6


# ---- helpers shared by the strategies --------------------------------------------------------
def _nz(a: np.ndarray) -> np.ndarray:
    """NaN as 0 (cheaper than np.nan_to_num on small arrays)."""
    return np.where(a == a, a, 0.0)


def _floor_step(x: np.ndarray, step: float) -> np.ndarray:
    if not step > 0:
        return x
    return np.floor(np.asarray(x) / step + 1e-9) * step


def _ceil_step(x: np.ndarray, step: float) -> np.ndarray:
    if not step > 0:
        return x
    return np.ceil(np.asarray(x) / step - 1e-9) * step


def need_current_a(snapshot: BlockSnapshot) -> np.ndarray:
    """Current [A] per phase that would deliver each car's remaining energy within one step."""
    dt_h = snapshot.dt_h
    per_a_kwh = snapshot.kw_per_a() * dt_h
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(per_a_kwh > 0, snapshot.remaining_kwh / per_a_kwh, 0.0)
    return _nz(need)


def offer_bounds_a(snapshot: BlockSnapshot) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds [A] of a useful offer for each car, on the pilot-step grid.

    The upper bound is the car's maximum, but no more than what it still needs in this step
    (rounded up to a pilot step, and at least the minimum); both are 0 for cars that have
    their energy or cannot be offered their minimum. A car is offered nothing or something
    in [lower, upper].
    """
    step = float(snapshot.current_step_a)
    lo = _ceil_step(_nz(snapshot.values("min_current_a")), step)
    top = _floor_step(_nz(snapshot.values("max_current_a")), step)
    hi = np.minimum(top, _ceil_step(need_current_a(snapshot), step))
    hi = np.maximum(hi, lo)  # a car that needs less than the minimum is offered the minimum
    wants = (snapshot.remaining_kwh > 1e-9) & (lo <= top + _TOL_A) & (top > 0)
    return np.where(wants, lo, 0.0), np.where(wants, hi, 0.0)


def _sorted_greedy(snapshot: BlockSnapshot, order: np.ndarray) -> np.ndarray:
    """Cars in ``order`` each take the most every limit row still allows (acnportal style)."""
    g, h = constraint_rows(snapshot)
    lo, hi = offer_bounds_a(snapshot)
    step = float(snapshot.current_step_a)
    x = np.zeros(len(lo))
    load = np.zeros(len(h))
    for i in order:
        if hi[i] <= 0:
            continue
        col = g[:, i]
        pos = col > 0
        room = np.min((h[pos] - load[pos]) / col[pos]) if pos.any() else np.inf
        xi = float(_floor_step(min(hi[i], room), step))
        if xi < lo[i] - _TOL_A or xi <= 0:
            continue
        x[i] = xi
        load += col * xi
    return x


# ---- strategies --------------------------------------------------------------------------------
def uncontrolled_a(snapshot: BlockSnapshot) -> np.ndarray:
    """Every car offered its maximum [A], as a charger without load management does."""
    return _nz(snapshot.values("max_current_a"))


def edf_order(snapshot: BlockSnapshot) -> np.ndarray:
    """Positions of cars by departure (earliest first), ties by priority (highest first)."""
    return np.lexsort((-snapshot.values("priority"), snapshot.hours_to_departure_h))


def laxity_h(snapshot: BlockSnapshot) -> np.ndarray:
    """Laxity [h]: time left minus the time the remaining energy takes at the car's maximum."""
    full_kw = snapshot.kw_per_a() * _nz(snapshot.values("max_current_a"))
    with np.errstate(divide="ignore", invalid="ignore"):
        need_h = np.where(full_kw > 0, snapshot.remaining_kwh / full_kw, np.inf)
    lax = snapshot.hours_to_departure_h - need_h
    return np.where(np.isnan(lax), np.inf, lax)


def llf_order(snapshot: BlockSnapshot) -> np.ndarray:
    """Positions of cars by laxity (least first), ties by priority (highest first)."""
    return np.lexsort((-snapshot.values("priority"), laxity_h(snapshot)))


def edf_a(snapshot: BlockSnapshot) -> np.ndarray:
    """Earliest deadline first [A]: greedy over cars sorted by departure."""
    return _sorted_greedy(snapshot, edf_order(snapshot))


def llf_a(snapshot: BlockSnapshot) -> np.ndarray:
    """Least laxity first [A]: greedy over cars sorted by laxity."""
    return _sorted_greedy(snapshot, llf_order(snapshot))


def round_robin_order(snapshot: BlockSnapshot) -> np.ndarray:
    """Admission order for equal share: priority (highest first), then the smallest share of
    the request delivered so far, then the earliest arrival."""
    req = snapshot.values("energy_requested_kwh")
    got = snapshot.values("energy_delivered_kwh")
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(req > 0, got / req, 1.0)
    waited_h = snapshot.hours_since_arrival_h
    return np.lexsort((-waited_h, np.nan_to_num(share, nan=1.0), -snapshot.values("priority")))


def equal_share_a(snapshot: BlockSnapshot) -> np.ndarray:
    """Equal share [A]: max-min fair water-filling over every limit row, with round-robin
    admission when not every car can get its minimum."""
    g, h = constraint_rows(snapshot)
    lo, hi = offer_bounds_a(snapshot)
    step = float(snapshot.current_step_a)
    wants = hi > 0
    order = round_robin_order(snapshot)
    x = np.where(wants, lo, 0.0)
    if np.any(g @ x > h + _TOL_A):
        admitted = np.zeros(len(lo), dtype=bool)
        load = np.zeros(len(h))
        for i in order:
            if wants[i] and np.all(load + g[:, i] * lo[i] <= h + _TOL_A):
                admitted[i] = True
                load += g[:, i] * lo[i]
        x = np.where(admitted, lo, 0.0)
    else:
        admitted = wants
    # Progressive filling: every round raises the free cars by the same amount until a row
    # binds or a car reaches its bound; each round freezes at least one car, so it ends.
    active = admitted & (x < hi - _TOL_A)
    while active.any():
        slack = h - g @ x
        rate = g[:, active].sum(axis=1)
        rising = rate > _TOL_A
        d_rows = np.min(np.maximum(slack[rising], 0.0) / rate[rising]) if rising.any() else np.inf
        d = min(d_rows, float(np.min(hi[active] - x[active])))
        x[active] += d
        binding = rising & (slack - rate * d <= _TOL_A)
        frozen = (g[binding] > 0).any(axis=0) if binding.any() else np.zeros(len(x), dtype=bool)
        active &= ~(frozen | (x >= hi - _TOL_A))
    x = np.where(admitted, np.maximum(_floor_step(x, step), lo), 0.0)
    return hand_out_steps(x, g, h, hi, order, step, admitted)


def hand_out_steps(x: np.ndarray, g: np.ndarray, h: np.ndarray, hi: np.ndarray, order: np.ndarray, step: float,
                   eligible: np.ndarray) -> np.ndarray:
    """Setpoints ``x`` [A] floored to pilot steps, with one more ``step`` [A] for the
    ``eligible`` cars first in ``order`` while every limit row they load (``g @ x <= h``, [A])
    still has a whole step for each of them, never above ``hi`` [A].

    Flooring a max-min fair share to pilot steps leaves up to a step per car unused on every
    row: on a connection with room for six cars at 6.4 A a phase that is 2.4 A of 38.4 A. Each
    row's count includes all earlier candidates on it, whether they got the step or not, so the
    result is feasible without a loop.
    """
    cand = eligible & (x > 0) & (x + step <= hi + _TOL_A)
    if step > 0 and cand.any():
        room_steps = np.floor(np.maximum(h - g @ x, 0.0) / step + 1e-9)
        go = order[cand[order]]
        on_row = g[:, go] > 0
        fits = np.all(~on_row | (np.cumsum(on_row, axis=1) <= room_steps[:, None]), axis=0)
        x = x.copy()
        x[go[fits]] += step
    return x


#: Increment [A] that round robin hands out per turn (rounded up to the pilot step).
ROUND_ROBIN_INCREMENT_A = 1.0


def round_robin_a(snapshot: BlockSnapshot) -> np.ndarray:
    """Round robin [A] (ACN-Sim's RoundRobin): fixed increments to the cars in turn.

    Parameters
    ----------
    snapshot : BlockSnapshot
        The block now.

    Returns
    -------
    ndarray
        Setpoints [A] per phase in the order of ``snapshot.cars``: each 0 or within the car's
        [minimum, useful maximum] on the pilot-step grid, every limit row respected.

    Notes
    -----
    Turns go in :func:`round_robin_order`. A car's first turn lifts it from 0 to its minimum
    current, each later turn by :data:`ROUND_ROBIN_INCREMENT_A` [A]; a turn that would load a
    limit row past its headroom gives the car only what still fits (on the pilot grid) and
    takes it out of the queue, as does reaching its useful maximum. Unlike ACN-Sim, which
    refuses a schedule when not every car fits at its minimum, cars that do not fit at their
    minimum wait at 0 (the IEC 61851 rule: 0 or at least 6 A).
    """
    g, h = cached_constraint_rows(snapshot)
    lo, hi = offer_bounds_a(snapshot)
    return round_robin_fill_a(np.zeros(len(lo)), g, h, lo, hi, round_robin_order(snapshot),
                              float(snapshot.current_step_a), hi > 0)


def round_robin_fill_a(x: np.ndarray, g: np.ndarray, h: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                       order: np.ndarray, step: float, eligible: np.ndarray) -> np.ndarray:
    """Round robin's turns on top of safe setpoints ``x`` [A]: the ``eligible`` cars in
    ``order`` take turns of :data:`ROUND_ROBIN_INCREMENT_A` [A] (a car at 0 first gets its
    minimum ``lo`` [A] or nothing) while every limit row ``g @ x <= h`` [A] allows it, up to
    ``hi`` [A]; a turn that does not fit gives what still fits on the ``step`` [A] grid and
    ends that car's turns. Returns a new array [A]."""
    inc = ROUND_ROBIN_INCREMENT_A if not step > 0 else step * max(1.0, np.ceil(ROUND_ROBIN_INCREMENT_A / step - 1e-9))
    x = np.array(x, dtype=float)
    load = g @ x
    # Per car, the rows it loads (positive) and all rows it touches (unbalance rows can fall).
    loads = [np.flatnonzero(g[:, i] > 0) for i in range(len(lo))]
    touches = [np.flatnonzero(g[:, i]) for i in range(len(lo))]
    queue = deque(int(i) for i in order if eligible[i] and hi[i] > 0 and x[i] < hi[i] - _TOL_A)
    while queue:
        i = queue.popleft()
        rows = loads[i]
        col = g[rows, i]
        room = float(np.min((h[rows] - load[rows]) / col)) if len(rows) else np.inf
        if x[i] == 0.0:
            d = lo[i] if lo[i] <= room + _TOL_A else 0.0  # the minimum or nothing
            last = d == 0.0
        else:
            d = min(inc, hi[i] - x[i])
            last = d > room + _TOL_A
            if last:  # the full increment does not fit: what still fits on the pilot grid
                d = float(_floor_step(max(room, 0.0), step))
        if d > 0:
            x[i] += d
            load[touches[i]] += g[touches[i], i] * d
        if not last and x[i] < hi[i] - _TOL_A:
            queue.append(i)
    return x


# ---- the policy class --------------------------------------------------------------------------
class HeuristicPolicy:
    """A :class:`~nowblock.seam.Policy` from a strategy function.

    ``allocate(snapshot) -> ndarray`` proposes setpoints [A] in the order of
    ``snapshot.cars``; with ``safe=True`` (every controlled policy) the answer goes through
    :func:`~nowblock.seam.make_safe`.
    """

    def __init__(self, name: str, allocate: Callable[[BlockSnapshot], np.ndarray], *, safe: bool = True):
        self.name = name
        self.allocate = allocate
        self.safe = safe

    def schedule(self, snapshot: BlockSnapshot) -> pd.Series:
        """Setpoints [A] per phase for every car in ``snapshot.cars``, indexed by session_id."""
        cars = snapshot.cars
        if len(cars) == 0:
            return pd.Series(np.zeros(0), index=cars.index, name="current_a", dtype=float)
        x = self.allocate(snapshot)
        if self.safe:
            return make_safe(snapshot, x)
        return pd.Series(np.asarray(x, dtype=float), index=cars.index, name="current_a")

    def reset(self) -> None:
        """Forget state between simulations (the baselines have none)."""

    def __repr__(self) -> str:
        return f"HeuristicPolicy({self.name!r})"


#: The baseline strategies by name: (strategy, whether its answer goes through make_safe).
STRATEGIES: dict[str, tuple[Callable[[BlockSnapshot], np.ndarray], bool]] = {
    "uncontrolled": (uncontrolled_a, False),
    "equal": (equal_share_a, True),
    "edf": (edf_a, True),
    "llf": (llf_a, True),
    "round_robin": (round_robin_a, True),
}


def baseline_policy(name: str) -> HeuristicPolicy:
    """The baseline policy ``name`` ("uncontrolled", "equal", "edf", "llf", "round_robin");
    ValueError if unknown."""
    key = name.strip().lower()
    if key not in STRATEGIES:
        raise ValueError(f"policy: unknown baseline {name!r}; choose one of {', '.join(STRATEGIES)}")
    fn, safe = STRATEGIES[key]
    return HeuristicPolicy(key, fn, safe=safe)
