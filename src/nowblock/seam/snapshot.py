"""The block as a policy sees it: a frozen :class:`BlockSnapshot` and its limit rows.

A policy (heuristic or MILP) sees the block only through a snapshot: the plugged-in cars
(:data:`CAR_COLUMNS`), the block's other load and prices ahead, and the site's fuse tree.
The simulator and the live loop both hand policies snapshots built by the same code
(:mod:`nowblock.loop`), so the same policy object runs in both without change.
:func:`constraint_rows` turns a snapshot into ``G @ current_a <= h``, the rows every
allocation must respect.
"""


from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from nowblock.block.site import Site

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

