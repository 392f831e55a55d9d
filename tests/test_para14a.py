"""Section 14a EnWG minimum power (BK6-22-300 Anlage 1 Ziffer 4.5.2) and the power cap as
per-phase currents (nowblock.block.para14a, nowblock.loop.caps)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nowblock.block.para14a import (
    SIMULTANEITY_FACTORS,
    controllable_devices,
    guaranteed_power_kw,
    simultaneity_factor,
)
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.loop.caps import POWER_CAP_FUSE_ID, capped_site, phase_demand_a, power_cap_phase_currents_a
from nowblock.loop.binding import binding_limits
from nowblock.policies import get_policy
from nowblock.seam import BlockSnapshot, make_safe

# The determination's table, written out once more by hand (Ziffer 4.5.2).
TABLE = {1: 1.0, 2: 0.8, 3: 0.75, 4: 0.7, 5: 0.65, 6: 0.6, 7: 0.55, 8: 0.5, 9: 0.45, 10: 0.45, 12: 0.45, 100: 0.45}


@pytest.mark.parametrize("n,gzf", sorted(TABLE.items()))
def test_simultaneity_factor_table(n, gzf):
    assert simultaneity_factor(n) == gzf


# 4.2 kW + (n - 1) x GZF x 4.2 kW, worked by hand.
@pytest.mark.parametrize("n,kw", [(1, 4.2), (2, 7.56), (3, 10.5), (5, 15.12), (8, 18.9), (9, 19.32), (12, 24.99)])
def test_guaranteed_power_is_the_ems_formula(n, kw):
    assert guaranteed_power_kw(n) == pytest.approx(kw, abs=1e-9)


def test_not_the_other_reading_of_the_formula():
    # n x 4.2 kW x GZF is what some secondary sources write; the determination's formula differs
    # from it for every n > 1 and is always the larger.
    for n in range(2, 20):
        assert guaranteed_power_kw(n) > n * 4.2 * simultaneity_factor(n) + 1e-9


def test_guaranteed_power_grows_with_devices_and_bad_counts_refused():
    p = [guaranteed_power_kw(n) for n in range(1, 30)]
    assert all(b > a for a, b in zip(p, p[1:]))
    assert len(SIMULTANEITY_FACTORS) == 9
    with pytest.raises(ValueError):
        simultaneity_factor(0)


def test_controllable_devices_above_4_2_kw():
    # 16 A on one phase is 3.68 kW: not a controllable device; 32 A single-phase and 3-phase are.
    assert controllable_devices([16 * 230 / 1000, 32 * 230 / 1000, 3 * 16 * 230 / 1000, 4.2]) == 2


def test_power_cap_follows_the_phases_the_cars_load():
    # One single-phase car on L1: all the power as current on L1 (18.26 A for 4.2 kW, not 6.09 A).
    c = power_cap_phase_currents_a(4.2, 230.0, [32.0, 0.0, 0.0])
    assert c[0] == pytest.approx(4200 / 230)
    assert c[1] == c[2] == 0.0
    # Demand met: the rest spread over the phases; the total is always the power.
    for demand in ([0, 0, 0], [5, 5, 5], [32, 16, 0], [32, 32, 32], [100, 1, 1]):
        c = power_cap_phase_currents_a(7.56, 230.0, demand)
        assert c.sum() * 230.0 / 1000.0 == pytest.approx(7.56)
        assert (c >= 0).all()
    # Three-phase demand above the budget: equal shares.
    assert np.allclose(power_cap_phase_currents_a(6.9, 230.0, [32, 32, 32]), 10.0)


def _site(n: int) -> Site:
    cps = tuple(ChargePoint(f"CP{i}", "grid", max_current_a=32.0, phases=3,
                            phase_rotation=["L1L2L3", "L2L3L1", "L3L1L2"][i % 3]) for i in range(n))
    return Site("t", (Fuse("grid", (250.0,) * 3),), cps)


@pytest.mark.parametrize("n_cars,car_phases", [(1, 1), (2, 1), (5, 3), (12, 1), (12, 3)])
def test_power_cap_gives_the_cars_the_floor_whatever_their_phases(n_cars, car_phases):
    """The block dimmed to P_min,14a: after the safety net the cars together draw the minimum
    (less at most one pilot step per car) and never more."""
    site = _site(n_cars)
    floor_kw = guaranteed_power_kw(controllable_devices([32 * 3 * 0.23] * n_cars))
    t0 = pd.Timestamp("2026-01-05 18:00", tz="UTC")
    phases = np.full(n_cars, car_phases)
    cars = pd.DataFrame({
        "charge_point_id": site.charge_point_ids, "cp_index": np.arange(n_cars), "phases": phases,
        "min_current_a": 6.0, "max_current_a": 32.0, "arrival": t0, "departure": t0 + pd.Timedelta(hours=8),
        "energy_requested_kwh": 40.0, "energy_delivered_kwh": 0.0, "measured_current_a": np.nan,
        "offered_current_a": 32.0, "priority": 1.0, "needs_known": True,
    }, index=[f"s{i}" for i in range(n_cars)])
    demand = phase_demand_a(site, np.arange(n_cars), phases, cars["max_current_a"])
    cap = power_cap_phase_currents_a(floor_kw, site.voltage_v, demand)
    capped = capped_site(site, charging_cap_a=cap)
    assert capped.fuse_ids[1] == POWER_CAP_FUSE_ID and capped.charge_points == tuple(
        cp.__class__(**{**cp.__dict__, "fuse": POWER_CAP_FUSE_ID}) for cp in site.charge_points)
    snap = BlockSnapshot(t0, capped, pd.Timedelta("15min"), cars, pd.Series(30.0, index=[t0]), current_step_a=0.1)
    x = make_safe(snap, get_policy("edf").schedule(snap))
    kw = float((x * phases).sum()) * site.voltage_v / 1000.0
    assert kw <= floor_kw + 1e-6  # never more than the cap ...
    # ... and what is left unused could not be given to anyone: every car is at the cap, at its
    # own maximum, or the room left is below its 6 A minimum.
    why = binding_limits(snap, x, capped_fuses=[POWER_CAP_FUSE_ID])
    assert set(why["binding"]) <= {"cap", "own_max", "min_current"}, why
    assert kw >= floor_kw - 3 * 6.0 * site.voltage_v / 1000.0
    if n_cars == 1 and car_phases == 1:  # the single-phase car's share is 18.2 A, not 6 A
        assert x.iloc[0] == pytest.approx(18.2)
