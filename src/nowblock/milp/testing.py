"""Synthetic planning problems for the optimizer's tests and benchmarks.

:func:`plugged_in_block` makes ``n_cars`` cars plugged in at ``start`` on a block whose grid
connection is a fraction of the wallboxes' total rating, with residential departures (most
leave the next morning, some within a few hours), requested energies and a mix of three-phase
and single-phase cars on rotated chargers. Seeded, so benchmarks compare like with like.
"""

from __future__ import annotations

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
