"""The one seam between a policy and the block it controls.

A policy (heuristic or MILP) sees the block only through a frozen :class:`BlockSnapshot` and
answers with per-session currents. The simulator and the live OCPP state both produce
snapshots, so the same policy object runs in both without change.

:func:`make_safe` is the shared last line of defence: every controlled policy passes its answer
through it, so whatever a policy (or a solver that timed out) proposes, the setpoints that
leave are 0 or within [min, max], in whole pilot steps, and load no fuse phase past its rating
even if every car draws all it is offered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from nowblock.site import Site

#: Columns of :attr:`BlockSnapshot.cars` (one row per plugged-in session, index session_id).
CAR_COLUMNS = {
    "charge_point_id": "OCPP identity of the charging point",
    "cp_index": "position of the charging point in site.charge_points",
    "phases": "grid phases the car loads: min(car phases, charger phases)",
    "min_current_a": "IEC 61851 minimum [A]: a setpoint is 0 or at least this",
    "max_current_a": "most the car may be offered now [A] (charger, car, and time-window caps)",
    "arrival": "plug-in time (UTC)",
    "departure": "known or estimated departure (UTC)",
    "energy_requested_kwh": "known or estimated energy the car wants in this session [kWh]",
    "energy_delivered_kwh": "energy delivered so far in this session [kWh]",
    "measured_current_a": "last measured current per phase [A] (NaN if never measured)",
    "offered_current_a": "setpoint currently applied by the charger [A]",
    "priority": "weight of this session's shortfall (>= 0)",
    "needs_known": "True when departure and energy were reported, False when estimated",
}


_NAT_NS = np.iinfo(np.int64).min  # how pandas stores NaT as int64


@dataclass(frozen=True)
class BlockSnapshot:
    """What a policy may know about the block at ``time``.

    ``cars`` has the columns in :data:`CAR_COLUMNS`. ``base_load_kw`` [kW] is the block's other
    load (measured now, forecast after), indexed by time from ``time`` on at ``step`` spacing;
    ``prices_eur_per_kwh`` [EUR/kWh] likewise or None. ``current_step_a`` [A] is the setpoint
    granularity chargers accept (1 A by default, 0.1 A for OCPP 1.6 limits).
    ``incidence_a`` optionally carries :meth:`incidence` precomputed by the producer, and
    ``car_arrays`` numeric columns of ``cars`` as arrays in row order (a producer that has
    them anyway saves the policy the pandas look-ups; they must equal the columns;
    ``arrival``/``departure`` as int64 nanoseconds since the epoch, NaT as pandas stores it).

    A snapshot is frozen: treat ``cars`` as read-only. Derived arrays (:meth:`values`,
    :meth:`incidence`, :func:`constraint_rows`) are computed once and cached.
    """

    time: pd.Timestamp
    site: Site
    step: pd.Timedelta
    cars: pd.DataFrame
    base_load_kw: pd.Series
    prices_eur_per_kwh: pd.Series | None = None
    current_step_a: float = 1.0
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    incidence_a: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)
    car_arrays: dict | None = field(default=None, compare=False, hash=False, repr=False)

    @cached_property
    def dt_h(self) -> float:
        """Length of the control step [h]."""
        return pd.Timedelta(self.step).value / 3.6e12

    @cached_property
    def _cache(self) -> dict:
        return {}

    def values(self, column: str) -> np.ndarray:
        """A numeric column of :attr:`cars` as a read-only float array (cached)."""
        c = self._cache
        key = ("col", column)
        if key not in c:
            pre = self.car_arrays.get(column) if self.car_arrays else None
            if pre is not None:
                a = np.array(pre, dtype=float)
            else:
                ser = self.cars[column]
                if ser.dtype.kind in "fiub":
                    a = np.array(ser.to_numpy(), dtype=float)
                else:
                    a = ser.to_numpy(dtype=float, na_value=np.nan)
            a.flags.writeable = False
            c[key] = a
        return c[key]

    @property
    def remaining_kwh(self) -> np.ndarray:
        """Energy each car still wants [kWh], never negative."""
        return np.maximum(self.values("energy_requested_kwh") - self.values("energy_delivered_kwh"), 0.0)

    @property
    def hours_to_departure_h(self) -> np.ndarray:
        """Time from :attr:`time` to each car's (known or estimated) departure [h]; inf if unknown."""
        return self._hours("departure", np.inf)

    @property
    def hours_since_arrival_h(self) -> np.ndarray:
        """Time from each car's arrival to :attr:`time` [h]; 0 if unknown."""
        return -self._hours("arrival", -0.0)

    def _hours(self, column: str, missing: float) -> np.ndarray:
        c = self._cache
        key = ("hours", column)
        if key not in c:
            pre = self.car_arrays.get(column) if self.car_arrays else None
            if pre is not None:  # int64 nanoseconds since the epoch (UTC); NaT is int64's minimum
                ns = np.asarray(pre, dtype=np.int64)
                na = ns == _NAT_NS
                na = na if na.any() else None
            else:
                arr = self.cars[column].array
                if not isinstance(arr, pd.arrays.DatetimeArray):
                    arr = pd.DatetimeIndex(arr).array
                arr = arr.as_unit("ns")
                ns, na = arr.asi8, arr.isna()
            h = (ns - pd.Timestamp(self.time).value) / 3.6e12  # .value: ns whatever the unit
            if na is not None:
                h[na] = missing
            h.flags.writeable = False
            c[key] = h
        return c[key]

    def incidence(self) -> np.ndarray:
        """Matrix (n_fuses*3, n_cars) from car current [A] to fuse-phase current [A]."""
        c = self._cache
        if "incidence" not in c:
            if self.incidence_a is not None:
                g = np.array(self.incidence_a, dtype=float)  # a copy: the producer's array stays writeable
            else:
                g = self.site.phase_incidence(self.cars["cp_index"].to_numpy(), self.cars["phases"].to_numpy())
            g.flags.writeable = False
            c["incidence"] = g
        return c["incidence"].copy()

    def headroom_a(self) -> np.ndarray:
        """Per-fuse-phase current [A] left for charging now, shape (n_fuses, 3), >= 0."""
        base_now = float(self.base_load_kw.to_numpy()[0]) if len(self.base_load_kw) else 0.0
        room = self.site.limits_a.copy()
        room[root_index(self.site)] -= self.site.base_load_phase_current_a(base_now)
        return np.maximum(room, 0.0)

    def kw_per_a(self) -> np.ndarray:
        """Power per ampere of setpoint for each car [kW/A]."""
        return self.values("phases") * self.site.voltage_v / 1000.0


def root_index(site: Site) -> int:
    """Position of the grid connection (the fuse without a parent) in ``site.fuses``.

    :class:`Site` puts it first today; code that needs the root's rows asks here rather than
    assuming 0.
    """
    return site.fuse_ids.index(site.root.id)


@runtime_checkable
class Policy(Protocol):
    """Anything with a ``name`` and ``schedule(snapshot) -> current_a per session_id``."""

    name: str

    def schedule(self, snapshot: BlockSnapshot) -> pd.Series:
        """Setpoints [A] per phase for every car in ``snapshot.cars``, indexed by session_id."""
        ...


def constraint_rows(snapshot: BlockSnapshot) -> tuple[np.ndarray, np.ndarray]:
    """All linear limits on car currents now as ``G @ current_a <= h`` (fuses, unbalance).

    Rows ``f * 3 + p`` are fuse ``f``, grid phase ``p`` (``h`` is the headroom left by the base
    load); when ``site.max_unbalance_a`` is set, six more rows bound the difference of the
    grid connection's charging current between any two phases. Returns fresh copies.
    """
    g, h = cached_constraint_rows(snapshot)
    return g.copy(), h.copy()


def cached_constraint_rows(snapshot: BlockSnapshot) -> tuple[np.ndarray, np.ndarray]:
    """:func:`constraint_rows` without the copies: read-only arrays shared by every caller of
    this snapshot (the safety net and the MILP policy's top-up read them each step)."""
    cache = snapshot._cache
    rows = cache.get("rows")
    if rows is None:
        g, h = _constraint_rows(snapshot)
        g.flags.writeable = False
        h.flags.writeable = False
        rows = cache["rows"] = (g, h)
    return rows


def _constraint_rows(snapshot: BlockSnapshot) -> tuple[np.ndarray, np.ndarray]:
    g = snapshot.incidence()
    h = snapshot.headroom_a().reshape(-1)
    u = snapshot.site.max_unbalance_a
    if u is not None and len(snapshot.cars):
        r0 = 3 * root_index(snapshot.site)
        root = g[r0 : r0 + 3]
        rows = [root[p] - root[q] for p in range(3) for q in range(3) if p != q]
        g = np.vstack([g, np.array(rows)])
        h = np.concatenate([h, np.full(len(rows), float(u))])
    return g, h


def make_safe(
    snapshot: BlockSnapshot,
    current_a,
    *,
    tol_a: float = 1e-6,
) -> pd.Series:
    """Repair proposed setpoints [A] so that they are safe to send; returns a Series by session.

    1. Clip to [0, max] (NaN counts as 0); a setpoint below a car's minimum becomes 0
       (IEC 61851: a charger offers 0 or at least the minimum).
    2. Round down to ``snapshot.current_step_a`` (never up, so rounding cannot overload).
    3. While a limit row of :func:`constraint_rows` (fuse phases, and the grid connection's
       phase unbalance when ``site.max_unbalance_a`` is set) is violated, lower the cars that
       load it: first proportionally down to their minimum, then switch off the car with the
       lowest priority and the most time left.

    Every step only lowers currents, and all-zero satisfies every row (headroom and the
    unbalance limit are >= 0), so the result never violates a row by more than ``tol_a`` [A].
    The number of proportional rounds is bounded; after that only switch-offs happen (at
    most one per car), so the loop ends.
    """
    cars = snapshot.cars
    if len(cars) == 0:
        return pd.Series(np.zeros(0), index=cars.index, name="current_a", dtype=float)
    x = safe_setpoints_a(snapshot, aligned_current_a(cars.index, current_a), tol_a=tol_a)
    return pd.Series(x, index=cars.index, name="current_a")


def safe_setpoints_a(snapshot: BlockSnapshot, current_a: np.ndarray, *, tol_a: float = 1e-6) -> np.ndarray:
    """:func:`make_safe` on a plain array: setpoints [A] in the order of ``snapshot.cars`` in,
    safe setpoints [A] out (a new array; NaN counts as 0). For callers that already hold arrays
    (a pandas Series built and read back cost ~0.1 ms a step in the MILP policy)."""
    x = np.asarray(current_a, dtype=float).reshape(-1)
    n = len(x)
    if n != len(snapshot.cars):
        raise ValueError(f"{n} setpoints for {len(snapshot.cars)} cars")
    if n == 0:
        return np.zeros(0)
    lo = _finite_or_0(snapshot.values("min_current_a"))
    hi = _finite_or_0(snapshot.values("max_current_a"))
    step = float(snapshot.current_step_a)
    x = np.minimum(np.maximum(_finite_or_0(x), 0.0), np.maximum(hi, 0.0))  # np.clip is slow on small arrays
    x = _floor_step(x, step)
    x[x < lo - tol_a] = 0.0
    g, h = cached_constraint_rows(snapshot)
    if len(h) == 0:
        return x
    max_proportional = 2 * (len(h) + n) + 10
    for it in range(max_proportional + n + 1):
        viol = g @ x - h
        r = int(np.argmax(viol))
        if viol[r] <= tol_a:
            return x
        on = (g[r] > 0) & (x > 0)
        reducible = on & (x > lo + tol_a)
        if it < max_proportional and reducible.any():
            room = (x - lo)[reducible] * g[r, reducible]
            frac = min(1.0, viol[r] / room.sum())
            x[reducible] -= frac * (x - lo)[reducible]
            x = _floor_step(x, step)
            x[(x > 0) & (x < lo - tol_a)] = 0.0
            continue
        cand = np.nonzero(on)[0]
        if len(cand) == 0:  # a violated row always has a car on it; defensive only
            x[:] = 0.0
            break
        # Switch off the lowest priority first, then the car with the most time left.
        slack = snapshot.hours_to_departure_h
        prio = _finite_or_0(snapshot.values("priority"))
        victim = cand[np.lexsort((-slack[cand], prio[cand]))[0]]
        x[victim] = 0.0
    # Out of rounds without a clean check (unreachable by the argument above): all off is safe.
    if (g @ x - h).max() > tol_a:  # pragma: no cover
        x[:] = 0.0
    return x


def aligned_current_a(index: pd.Index, current_a) -> np.ndarray:
    """Setpoints [A] as a fresh float array in the order of ``index`` (the cars' session ids).

    A Series or dict is aligned by session id (missing ones count as NaN); an array must
    already be in ``index`` order; a scalar applies to every car.
    """
    if isinstance(current_a, dict):
        current_a = pd.Series(current_a, dtype=float)
    if isinstance(current_a, pd.Series):
        if current_a.index.equals(index):
            return current_a.to_numpy(dtype=float, na_value=np.nan, copy=True)
        return current_a.reindex(index).to_numpy(dtype=float, na_value=np.nan)
    x = np.asarray(current_a, dtype=float)
    if x.ndim == 0:
        return np.full(len(index), float(x))
    x = x.reshape(-1)
    if len(x) != len(index):
        raise ValueError(f"{len(x)} setpoints for {len(index)} cars")
    return x.copy()


def _finite_or_0(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a), a, 0.0)


def _floor_step(x: np.ndarray, step: float) -> np.ndarray:
    if not step > 0:
        return x
    # A tiny epsilon keeps 16.0 from flooring to 15 after a float subtraction gave 15.9999999.
    return np.floor(x / step + 1e-9) * step


def violation_a(snapshot: BlockSnapshot, current_a) -> float:
    """Worst excess [A] of any limit row for setpoints ``current_a`` (0 when all hold)."""
    g, h = constraint_rows(snapshot)
    x = np.nan_to_num(aligned_current_a(snapshot.cars.index, current_a), nan=0.0)
    return float(max(0.0, (g @ x - h).max())) if len(h) else 0.0
