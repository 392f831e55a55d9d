"""Synthetic planning problems for the optimizer's tests and benchmarks.

:func:`plugged_in_block` makes ``n_cars`` cars plugged in at ``start`` on a block whose grid
connection is a fraction of the wallboxes' total rating, with residential departures (most
leave the next morning, some within a few hours), requested energies and a mix of three-phase
and single-phase cars on rotated chargers. Seeded, so benchmarks compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nowblock.block.site import ChargePoint, Fuse, Site

_ROTATIONS = ("L1L2L3", "L2L3L1", "L3L1L2")


def plugged_in_block(n_cars: int, *, seed: int = 0, start: str = "2026-01-14 17:00+00:00", grid_share: float = 1 / 3,
                     cps_per_feeder: int = 20, single_phase_share: float = 0.2,
                     max_unbalance_a: float | None = None) -> dict:
    """A block with ``n_cars`` cars plugged in at ``start``.

    Returns a dict with ``site``, ``sessions`` (the contract's frame), ``start``, ``base_load``
    (Series [kW], households' evening-peaked load) and ``prices`` (Series [EUR/kWh],
    day-ahead shaped). The grid connection carries ``grid_share`` of the charge points' total
    rating; feeders of ``cps_per_feeder`` points carry 60 % of theirs.
    """
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start)
    n_feeders = max(1, int(np.ceil(n_cars / cps_per_feeder)))
    three_phase_cp = rng.random(n_cars) > 0.1
    cp_max = np.where(rng.random(n_cars) < 0.15, 32.0, 16.0)
    root_a = max(32.0, grid_share * cp_max.sum())
    fuses = [Fuse("grid", (root_a,) * 3)]
    fuses += [Fuse(f"feeder-{k:03d}", (max(32.0, 0.6 * cps_per_feeder * 16.0),) * 3, parent="grid") for k in range(n_feeders)]
    cps = tuple(
        ChargePoint(id=f"CP{j:04d}", fuse=f"feeder-{j // cps_per_feeder:03d}", max_current_a=float(cp_max[j]),
                    min_current_a=6.0, phases=3 if three_phase_cp[j] else 1, phase_rotation=_ROTATIONS[j % 3])
        for j in range(n_cars)
    )
    site = Site(name=f"synthetic-{n_cars}", fuses=tuple(fuses), charge_points=cps, max_unbalance_a=max_unbalance_a)

    arrival = t0 - pd.to_timedelta(rng.uniform(0.0, 4.0, n_cars), unit="h")
    overnight = rng.random(n_cars) < 0.7
    dwell_h = np.where(overnight, rng.normal(14.0, 1.5, n_cars), rng.gamma(2.0, 1.8, n_cars) + 0.5)
    dwell_h = np.clip(dwell_h, 0.75, 23.0)
    departure = t0 + pd.to_timedelta(dwell_h, unit="h")
    car_phases = np.where(rng.random(n_cars) < single_phase_share, 1, 3)
    car_max = np.where(car_phases == 1, rng.choice([16.0, 32.0], n_cars), 16.0)
    energy = np.clip(rng.lognormal(np.log(14.0), 0.55, n_cars), 2.0, 60.0)
    sessions = pd.DataFrame({
        "session_id": [f"S{j:05d}" for j in range(n_cars)],
        "charge_point_id": [c.id for c in cps],
        "arrival": arrival,
        "departure": departure,
        "energy_kwh": energy,
        "max_current_a": car_max,
        "phases": car_phases,
        "priority": 1.0,
    })
    times = pd.date_range(t0 - pd.Timedelta("1h"), t0 + pd.Timedelta("26h"), freq="15min")
    hour = (times.hour + times.minute / 60.0).to_numpy()
    households = 1.5 * n_cars
    shape = 0.35 + 0.25 * np.exp(-((hour - 8.0) ** 2) / 4.0) + 0.55 * np.exp(-((hour - 19.0) ** 2) / 6.0)
    base = pd.Series(households * shape * (1 + 0.05 * rng.standard_normal(len(times))), index=times, name="kw")
    price = 0.22 + 0.10 * np.exp(-((hour - 19.0) ** 2) / 5.0) - 0.06 * np.exp(-((hour - 3.0) ** 2) / 6.0)
    prices = pd.Series(price, index=times, name="eur_per_kwh")
    return {"site": site, "sessions": sessions, "start": t0, "base_load": base, "prices": prices}


def plugged_in_snapshot(n_cars: int, *, seed: int | None = None, step="5min", producer_arrays: bool = True,
                        **kwargs):
    """The block of :func:`plugged_in_block` as a policy's :class:`~nowblock.seam.BlockSnapshot`
    at its ``start`` (nothing delivered yet, base load and prices on the control grid ``step``).

    With ``producer_arrays`` (default) the snapshot carries ``car_arrays`` and ``incidence_a``
    as the simulator's snapshots do; without, the policy derives them from ``cars``.
    """
    from nowblock.seam import BlockSnapshot

    b = plugged_in_block(n_cars, seed=n_cars if seed is None else seed, **kwargs)
    s, site = b["sessions"], b["site"]
    cp = site.cp_index(s["charge_point_id"])
    utc = lambda col: pd.DatetimeIndex(s[col]).tz_convert("UTC")  # noqa: E731
    cars = pd.DataFrame({
        "charge_point_id": s["charge_point_id"].to_numpy(), "cp_index": cp,
        "phases": np.minimum(s["phases"].to_numpy(), site.cp_phases[cp]), "min_current_a": site.cp_min_current_a[cp],
        "max_current_a": np.minimum(s["max_current_a"].to_numpy(float), site.cp_max_current_a[cp]),
        "arrival": utc("arrival"), "departure": utc("departure"),
        "energy_requested_kwh": s["energy_kwh"].to_numpy(float), "energy_delivered_kwh": 0.0,
        "measured_current_a": np.nan, "offered_current_a": 0.0, "priority": 1.0, "needs_known": True,
    }, index=pd.Index(s["session_id"].to_numpy(), name="session_id"))
    idx = pd.date_range(b["start"], periods=int(pd.Timedelta("24h") / pd.Timedelta(step)), freq=step)
    arrays = incidence = None
    if producer_arrays:
        arrays = {c: cars[c].to_numpy(float) for c in cars.columns
                  if c not in ("charge_point_id", "arrival", "departure", "needs_known")}
        arrays.update({c: cars[c].array.as_unit("ns").asi8 for c in ("arrival", "departure")})
        incidence = site.phase_incidence(cars["cp_index"].to_numpy(), cars["phases"].to_numpy())
    return BlockSnapshot(time=b["start"], site=site, step=pd.Timedelta(step), cars=cars,
                         base_load_kw=b["base_load"].reindex(idx, method="ffill").rename("kw"),
                         prices_eur_per_kwh=b["prices"].reindex(idx, method="ffill"), current_step_a=1.0,
                         incidence_a=incidence, car_arrays=arrays)


# ---- the instance matrix (issue 15) --------------------------------------------------------
@dataclass(frozen=True)
class MatrixCell:
    """One cell of the optimizer's instance matrix (``benchmarks/bench_milp_matrix.py``).

    ``n_cars`` cars plugged in at 17:00; ``fuse_share``: the grid connection's rating as a share
    of the charging points' summed maxima per phase; ``tree``: a flat site (every point under
    the grid fuse) or a 3-level tree (grid, feeders, sub-distributions, each rated below the sum
    of its children) with single-phase chargers; ``step``: the slot length over a 24 h horizon
    (``"15min"``: 96 slots, ``"5min"``: 288); ``load_and_prices``: a daily base load and a
    day-ahead price curve, or neither; ``unbalance``: the grid connection's 20 A unbalance limit
    (VDE-AR-N 4100) on or off.
    """

    n_cars: int
    fuse_share: float = 0.35
    tree: bool = False
    step: str = "15min"
    load_and_prices: bool = False
    unbalance: bool = False

    @property
    def label(self) -> str:
        """A short name: cars, fuse share, site shape, step, load/prices, unbalance."""
        return (f"{self.n_cars}-{round(self.fuse_share * 100)}%-{'tree' if self.tree else 'flat'}-{self.step}"
                f"{'-load' if self.load_and_prices else ''}{'-unb' if self.unbalance else ''}")


def matrix_block(cell: MatrixCell, *, seed: int = 0, start: str = "2026-01-14 17:00+00:00",
                 single_phase_car_share: float = 0.2) -> dict:
    """The block of one matrix cell, built only from the public contract (a :class:`Site` and a
    sessions frame).

    Charging points are 6..16 A, rotations L1L2L3 / L2L3L1 / L3L1L2 in turn. Flat: three-phase
    points directly under the grid fuse. Tree: every third charging point single-phase;
    sub-distributions of 8 points rated at 80 % of their points' summed maxima, feeders of 4
    sub-distributions at 90 % of theirs, the grid fuse at ``fuse_share`` of all points'
    maxima (so each level is below the sum of its children whenever ``fuse_share`` < 0.72).
    Cars: plugged in at ``start``; departure uniform over 2..24 h later on 15-minute marks;
    energy uniform 5..40 kWh, capped at 90 % of what 16 A on the car's phases delivers by
    departure; ``single_phase_car_share`` of the cars single-phase. With ``load_and_prices``, a
    base load [kW] peaking at 30 % of the grid connection's rating in the evening, and prices
    [EUR/kWh] of a day-ahead shape with noise. Returns ``site``, ``sessions``, ``start``,
    ``base_load`` and ``prices`` (None without).
    """
    rng = np.random.default_rng([seed, cell.n_cars, int(cell.fuse_share * 100), int(cell.tree)])
    t0 = pd.Timestamp(start)
    n = cell.n_cars
    rot = [_ROTATIONS[(j + j // 3) % 3] for j in range(n)]  # single-phase points meet all phases
    cp_phases = np.where((np.arange(n) % 3 == 2) & cell.tree, 1, 3)
    cp_max = np.full(n, 16.0)
    per_phase = np.zeros((n, 3))
    for j in range(n):
        grid = ChargePoint(id="x", fuse="x", phase_rotation=rot[j]).grid_phases
        per_phase[j, list(grid[:cp_phases[j]])] = cp_max[j]
    root_a = float(np.ceil(cell.fuse_share * per_phase.sum(axis=0).mean()))
    fuses = [Fuse("grid", (root_a,) * 3)]
    parent = ["grid"] * n
    if cell.tree:
        per_sub, subs_per_feeder = 8, 4
        n_sub = -(-n // per_sub)
        for s in range(n_sub):
            f = s // subs_per_feeder
            if s % subs_per_feeder == 0:
                members = slice(f * per_sub * subs_per_feeder, (f + 1) * per_sub * subs_per_feeder)
                fuses.append(Fuse(f"feeder-{f:03d}", (float(np.ceil(0.9 * 0.8 * per_phase[members].sum(axis=0).mean())),) * 3,
                                  parent="grid"))
            members = slice(s * per_sub, (s + 1) * per_sub)
            fuses.append(Fuse(f"sub-{s:04d}", (float(np.ceil(0.8 * per_phase[members].sum(axis=0).mean())),) * 3,
                              parent=f"feeder-{f:03d}"))
            for j in range(s * per_sub, min((s + 1) * per_sub, n)):
                parent[j] = f"sub-{s:04d}"
    cps = tuple(ChargePoint(id=f"CP{j:04d}", fuse=parent[j], max_current_a=float(cp_max[j]), min_current_a=6.0,
                            phases=int(cp_phases[j]), phase_rotation=rot[j]) for j in range(n))
    site = Site(name=f"matrix-{cell.label}", fuses=tuple(fuses), charge_points=cps,
                max_unbalance_a=20.0 if cell.unbalance else None)

    dwell_slots = rng.integers(8, 97, n)  # 2..24 h in 15-minute slots
    car_phases = np.where(rng.random(n) < single_phase_car_share, 1, 3)
    car_phases = np.minimum(car_phases, cp_phases)
    dwell_h = dwell_slots / 4.0
    can_kwh = 16.0 * car_phases * site.voltage_v / 1000.0 * dwell_h
    energy = np.minimum(rng.uniform(5.0, 40.0, n), 0.9 * can_kwh)
    sessions = pd.DataFrame({
        "session_id": [f"S{j:05d}" for j in range(n)],
        "charge_point_id": [c.id for c in cps],
        "arrival": t0,
        "departure": t0 + pd.to_timedelta(dwell_slots * 15, unit="min"),
        "energy_kwh": energy,
        "max_current_a": 16.0,
        "phases": car_phases,
        "priority": 1.0,
    })
    base = prices = None
    if cell.load_and_prices:
        times = pd.date_range(t0 - pd.Timedelta("1h"), t0 + pd.Timedelta("25h"), freq="5min")
        hour = (times.hour + times.minute / 60.0).to_numpy()
        root_kw = 3 * root_a * site.voltage_v / 1000.0
        shape = 0.4 + 0.2 * np.exp(-((hour - 8.0) ** 2) / 4.0) + 0.4 * np.exp(-((hour - 19.0) ** 2) / 6.0)
        base = pd.Series(0.3 * root_kw * shape * (1 + 0.05 * rng.standard_normal(len(times))), index=times, name="kw")
        price = (0.22 + 0.10 * np.exp(-((hour - 19.0) ** 2) / 5.0) - 0.06 * np.exp(-((hour - 3.0) ** 2) / 6.0)
                 + 0.01 * rng.standard_normal(len(times)))
        prices = pd.Series(price, index=times, name="eur_per_kwh")
    return {"site": site, "sessions": sessions, "start": t0, "base_load": base, "prices": prices}
