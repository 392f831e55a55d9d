"""The shared safety net: whatever a policy proposes, what leaves is safe to send.

:func:`make_safe` is the last line of defence every controlled policy passes its answer
through: setpoints are 0 or within [min, max], in whole pilot steps, and load no fuse phase
past its rating even if every car draws all it is offered. :func:`failsafe_current_a` is the
other half of safety: the limit each charging point keeps when no central system is there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nowblock.block.site import Site
from nowblock.seam.snapshot import BlockSnapshot, cached_constraint_rows, constraint_rows, root_index


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


def safe_setpoints_a(snapshot: BlockSnapshot, current_a: np.ndarray, *, tol_a: float = 1e-6,
                     held: np.ndarray | None = None) -> np.ndarray:
    """:func:`make_safe` on a plain array: setpoints [A] in the order of ``snapshot.cars`` in,
    safe setpoints [A] out (a new array; NaN counts as 0, +inf as the car's maximum, like any
    value above it). For callers that already hold arrays
    (a pandas Series built and read back cost ~0.1 ms a step in the MILP policy).

    ``held`` (bool, one per car, optional) marks cars whose current cannot be changed (a
    charger that does not follow its limit): they are counted at ``current_a`` as given (NaN
    and negative as 0) in every row and never changed; the others are lowered around them. A
    row that stays broken with every other car on it off is left so (nothing sent mends it)."""
    x = np.asarray(current_a, dtype=float).reshape(-1)
    n = len(x)
    if n != len(snapshot.cars):
        raise ValueError(f"{n} setpoints for {len(snapshot.cars)} cars")
    if n == 0:
        return np.zeros(0)
    lo = _finite_or_0(snapshot.values("min_current_a"))
    hi = _finite_or_0(snapshot.values("max_current_a"))
    step = float(snapshot.current_step_a)
    given = np.where(np.isnan(x), 0.0, x)
    x = np.minimum(np.maximum(given, 0.0), np.maximum(hi, 0.0))  # np.clip is slow on small arrays
    x = _floor_step(x, step)
    x[x < lo - tol_a] = 0.0
    free = np.ones(n, dtype=bool)
    if held is not None:
        free = ~np.asarray(held, dtype=bool).reshape(-1)
        x[~free] = np.maximum(_finite_or_0(given[~free]), 0.0)
    g, h = cached_constraint_rows(snapshot)
    if len(h) == 0:
        return x
    # With held cars, a row that no free car still on loads is out of reach.
    movable = (g > 0) & free if not free.all() else None
    light = _light_side(snapshot, g)
    max_proportional = 2 * (len(h) + n) + 10
    for it in range(max_proportional + n + 1):
        viol = g @ x - h if light is None else light[0] @ x + light[1] @ np.minimum(x, light[2]) - h
        if movable is not None:
            viol = np.where((movable & (x > 0)).any(axis=1), viol, -np.inf)
        r = int(np.argmax(viol))
        if viol[r] <= tol_a:
            return x
        on = (g[r] > 0) & (x > 0) & free
        reducible = on & (x > lo + tol_a)
        if it < max_proportional and reducible.any():
            room = (x - lo)[reducible] * g[r, reducible]
            frac = min(1.0, viol[r] / room.sum())
            x[reducible] = _floor_step(x[reducible] - frac * (x - lo)[reducible], step)
            x[reducible & (x < lo - tol_a)] = 0.0
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
    if movable is not None:  # pragma: no cover
        x[free] = 0.0
    elif (g @ x - h).max() > tol_a:  # pragma: no cover
        x[:] = 0.0
    return x


def _light_side(snapshot: BlockSnapshot, g: np.ndarray):
    """For rows with a light side (the unbalance rows): (heavy part of ``g``, light part of ``g``,
    per car the most it draws on average this step [A]), or None when no row has one; computed
    once a snapshot (the safety net runs several times a step).

    A car on the light side of an unbalance row lightens it only by what it really draws: one
    that needs little more is full within the step and draws, on average, its remaining energy
    over the step (an outside test: a car needing 0.06 kWh offered 11 A drew 1.6 A, and the
    grid's phases were 29 A apart under a 20 A limit). Unknown needs: its offer."""
    if snapshot.site.max_unbalance_a is None:
        return None
    cache = snapshot._cache
    if "light_side" not in cache:
        cache["light_side"] = _light_side_rows(snapshot, g)
    return cache["light_side"]


def _light_side_rows(snapshot: BlockSnapshot, g: np.ndarray):
    neg = np.minimum(g, 0.0)
    if not neg.any():
        return None
    cars = snapshot.cars
    n = len(cars)
    left = (snapshot.remaining_kwh if "energy_requested_kwh" in cars and "energy_delivered_kwh" in cars
            else np.full(n, np.nan))  # NaN: needs unknown
    kw_per_a = snapshot.values("phases") * snapshot.site.voltage_v / 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        avg = np.where(np.isfinite(left) & (kw_per_a > 0), left / (kw_per_a * snapshot.dt_h), np.inf)
    if "measured_current_a" in cars and "offered_current_a" in cars:
        # A car drawing less than it is offered (a tapering battery) lightens a phase by what it
        # draws; one drawing its offer, or nothing yet (cars take a while to start; a full one
        # is known by its energy left, or taken off by the loop), by its new offer.
        meas = snapshot.values("measured_current_a")
        less = np.isfinite(meas) & (meas >= 1.0) & (meas < snapshot.values("offered_current_a") - 1.0)
        avg = np.where(less, np.minimum(avg, np.maximum(meas, 0.0)), avg)
    return np.maximum(g, 0.0), neg, avg


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


def failsafe_current_a(site: Site, worst_base_load_kw: float = 0.0, *, step_a: float = 1.0) -> pd.Series:
    """Each charging point's TxDefaultProfile limit [A]: safe if the central system disappears.

    Every fuse phase's rating (the grid connection's minus the worst-case other load
    ``worst_base_load_kw`` [kW]) is divided evenly over the charging points that load that
    phase; a point gets the smallest share over all fuse phases it loads, floored to
    ``step_a`` [A] (whole amperes by default; 0.1 A is OCPP 1.6's resolution), and 0 when that
    share is below its minimum (IEC 61851: 0 or at least min). The one fail-safe rule: the
    central system's boot-time default and the live loop both call this.
    """
    n = len(site.charge_points)
    cp = np.arange(n)
    g = site.phase_incidence(cp, site.cp_phases)  # (F*3, n): every point at its full phase count
    # A three-phase point with a single-phase car loads only its first phase; count every phase
    # of a point as loaded so that the share holds whatever car plugs in.
    limits = site.limits_a.copy()
    limits[root_index(site)] -= site.base_load_phase_current_a(max(0.0, float(worst_base_load_kw)))
    room = np.maximum(limits.reshape(-1), 0.0)
    users = g.sum(axis=1)
    share = np.where(users > 0, room / np.maximum(users, 1), np.inf)
    per_cp = np.where(g > 0, share[:, None], np.inf).min(axis=0)
    per_cp = np.floor(np.minimum(per_cp, site.cp_max_current_a) / step_a + 1e-9) * step_a
    per_cp[per_cp < site.cp_min_current_a] = 0.0
    return pd.Series(per_cp, index=site.charge_point_ids, name="current_a")
