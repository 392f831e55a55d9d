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


@dataclass(frozen=True)
class BlockSnapshot:
    """What a policy may know about the block at ``time``.

    ``cars`` has the columns in :data:`CAR_COLUMNS`. ``base_load_kw`` [kW] is the block's other
    load (measured now, forecast after), indexed by time from ``time`` on at ``step`` spacing;
    ``prices_eur_per_kwh`` [EUR/kWh] likewise or None. ``current_step_a`` [A] is the setpoint
    granularity chargers accept (1 A by default, 0.1 A for OCPP 1.6 limits).
    """

    time: pd.Timestamp
    site: Site
    step: pd.Timedelta
    cars: pd.DataFrame
    base_load_kw: pd.Series
    prices_eur_per_kwh: pd.Series | None = None
    current_step_a: float = 1.0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def dt_h(self) -> float:
        """Length of the control step [h]."""
        return self.step / pd.Timedelta(hours=1)

    @property
    def remaining_kwh(self) -> np.ndarray:
        """Energy each car still wants [kWh], never negative."""
        c = self.cars
        return np.maximum(c["energy_requested_kwh"].to_numpy(float) - c["energy_delivered_kwh"].to_numpy(float), 0.0)

    def incidence(self) -> np.ndarray:
        """Matrix (n_fuses*3, n_cars) from car current [A] to fuse-phase current [A]."""
        return self.site.phase_incidence(self.cars["cp_index"].to_numpy(), self.cars["phases"].to_numpy())

    def headroom_a(self) -> np.ndarray:
        """Per-fuse-phase current [A] left for charging now, shape (n_fuses, 3), >= 0."""
        base_now = float(self.base_load_kw.iloc[0]) if len(self.base_load_kw) else 0.0
        room = self.site.limits_a.copy()
        room[0] -= self.site.base_load_phase_current_a(base_now)
        return np.maximum(room, 0.0)

    def kw_per_a(self) -> np.ndarray:
        """Power per ampere of setpoint for each car [kW/A]."""
        return self.cars["phases"].to_numpy(float) * self.site.voltage_v / 1000.0


@runtime_checkable
class Policy(Protocol):
    """Anything with a ``name`` and ``schedule(snapshot) -> current_a per session_id``."""

    name: str

    def schedule(self, snapshot: BlockSnapshot) -> pd.Series:
        """Setpoints [A] per phase for every car in ``snapshot.cars``, indexed by session_id."""
        ...


def constraint_rows(snapshot: BlockSnapshot) -> tuple[np.ndarray, np.ndarray]:
    """All linear limits on car currents now as ``G @ current_a <= h`` (fuses, unbalance)."""
    g = snapshot.incidence()
    h = snapshot.headroom_a().reshape(-1)
    u = snapshot.site.max_unbalance_a
    if u is not None and len(snapshot.cars):
        root = g[0:3]  # the grid connection is fuse 0 in every site (see Site.fuse_ids)
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

    1. Clip to [0, max]; a setpoint below a car's minimum becomes 0 (IEC 61851).
    2. Round down to ``snapshot.current_step_a`` (never up, so rounding cannot overload).
    3. While a limit row is violated, lower the cars that load it: first proportionally down
       to their minimum, then switch off the car with the lowest priority and most time left.
    The loop only ever lowers currents, so it ends, at worst with every car at 0.
    """
    cars = snapshot.cars
    n = len(cars)
    if n == 0:
        return pd.Series(np.zeros(0), index=cars.index, name="current_a", dtype=float)
    x = np.asarray(pd.Series(current_a, index=cars.index).reindex(cars.index).fillna(0.0), dtype=float)
    lo = cars["min_current_a"].to_numpy(float)
    hi = cars["max_current_a"].to_numpy(float)
    step = float(snapshot.current_step_a)
    x = np.clip(np.nan_to_num(x), 0.0, hi)
    x = _floor_step(x, step)
    x[(x < lo - tol_a)] = 0.0
    g, h = constraint_rows(snapshot)
    # Tie-break order for switching cars off: lowest priority first, then most slack.
    slack = (cars["departure"] - snapshot.time).dt.total_seconds().to_numpy(float)
    prio = cars["priority"].to_numpy(float)
    for _ in range(4 * n + 50):
        viol = g @ x - h
        r = int(np.argmax(viol))
        if viol[r] <= tol_a:
            break
        on = (g[r] > 0) & (x > 0)
        reducible = on & (x > lo + tol_a)
        excess = viol[r]
        if reducible.any():
            room = (x - lo)[reducible] * g[r, reducible]
            frac = min(1.0, excess / room.sum())
            x[reducible] -= frac * (x - lo)[reducible]
            x = _floor_step(x, step)
            x[(x > 0) & (x < lo - tol_a)] = 0.0
            continue
        cand = np.nonzero(on)[0]
        if len(cand) == 0:
            x[:] = 0.0  # unreachable for fuse rows; defensive for unbalance rows
            break
        victim = cand[np.lexsort((-slack[cand], prio[cand]))[0]]
        x[victim] = 0.0
    else:  # pragma: no cover - the loop bound is generous; all-zero is always safe
        x[:] = 0.0
    return pd.Series(x, index=cars.index, name="current_a")


def _floor_step(x: np.ndarray, step: float) -> np.ndarray:
    # A tiny epsilon keeps 16.0 from flooring to 15 after a float subtraction gave 15.9999999.
    return np.floor(x / step + 1e-9) * step


def violation_a(snapshot: BlockSnapshot, current_a) -> float:
    """Worst excess [A] of any limit row for setpoints ``current_a`` (0 when all hold)."""
    g, h = constraint_rows(snapshot)
    x = np.asarray(pd.Series(current_a).reindex(snapshot.cars.index).fillna(0.0), dtype=float)
    return float(max(0.0, (g @ x - h).max())) if len(h) else 0.0
