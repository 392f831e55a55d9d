"""Which limit binds each car (nowblock.loop.binding): one case per kind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.loop.binding import BINDING_COLUMNS, binding_limits
from nowblock.loop.caps import capped_site
from nowblock.seam import BlockSnapshot

T0 = pd.Timestamp("2026-03-02 18:00", tz="UTC")


def _site(root_a=63.0, feeder_a=40.0, n=3, phases=(3, 3, 3), unbalance=None) -> Site:
    cps = tuple(ChargePoint(f"CP{i}", "feeder" if i < 2 else "grid", max_current_a=32.0, phases=phases[i],
                            phase_rotation=["L1L2L3", "L2L3L1", "L3L1L2"][i % 3]) for i in range(n))
    return Site("t", (Fuse("grid", (root_a,) * 3), Fuse("feeder", (feeder_a,) * 3, "grid")), cps,
                max_unbalance_a=unbalance)


def _snap(site, *, max_a=(32.0, 32.0, 32.0), phases=(3, 3, 3), delivered=(0.0, 0.0, 0.0), base_kw=0.0):
    n = len(max_a)
    cars = pd.DataFrame({
        "charge_point_id": site.charge_point_ids[:n], "cp_index": np.arange(n), "phases": list(phases)[:n],
        "min_current_a": 6.0, "max_current_a": list(max_a), "arrival": T0, "departure": T0 + pd.Timedelta(hours=5),
        "energy_requested_kwh": 20.0, "energy_delivered_kwh": list(delivered)[:n], "measured_current_a": np.nan,
        "offered_current_a": 0.0, "priority": 1.0, "needs_known": True,
    }, index=[f"s{i}" for i in range(n)])
    return BlockSnapshot(T0, site, pd.Timedelta("15min"), cars, pd.Series(base_kw, index=[T0]))


def test_fuse_binds_the_cars_under_it_and_own_max_the_other():
    site = _site()
    snap = _snap(site, max_a=(32.0, 32.0, 10.0))
    # feeder 40 A full with s0+s1; s2 on the grid at its own 10 A maximum.
    b = binding_limits(snap, {"s0": 20.0, "s1": 20.0, "s2": 10.0})
    assert list(b.columns) == list(BINDING_COLUMNS)
    assert b.loc["s0", "binding"] == "fuse" and b.loc["s0", "limit"].startswith("feeder/")
    assert b.loc["s0", "room_a"] == 0.0 and b.loc["s0", "held_back_a"] == 12.0
    assert b.loc["s0", "limit_a"] == 40.0
    assert b.loc["s2", "binding"] == "own_max" and b.loc["s2", "limit"] == ""


def test_plan_when_nothing_binds_and_done_when_the_need_is_met():
    site = _site()
    snap = _snap(site, delivered=(0.0, 20.0, 0.0))
    b = binding_limits(snap, {"s0": 10.0, "s1": 0.0, "s2": 10.0})
    assert b.loc["s0", "binding"] == "plan"
    assert b.loc["s0", "room_a"] == 22.0  # could take 22 A more (its maximum) before anything binds
    assert b.loc["s1", "binding"] == "done"


def test_grid_connection_with_base_load_binds():
    site = _site(root_a=40.0, feeder_a=63.0)
    # 6.9 kW of other load is 10 A a phase: 30 A left for charging.
    b = binding_limits(_snap(site, base_kw=6.9), {"s0": 15.0, "s1": 15.0, "s2": 0.0})
    assert set(b["binding"]) == {"fuse"}
    assert set(b["limit"]) <= {"grid/L1", "grid/L2", "grid/L3"}
    assert b.loc["s2", "room_a"] == 0.0


def test_min_current_rule_binds_a_car_at_zero_with_too_little_room():
    site = _site(root_a=63.0, feeder_a=40.0)
    b = binding_limits(_snap(site), {"s0": 32.0, "s1": 0.0, "s2": 0.0})
    # 8 A left on the feeder is enough for s1's 6 A minimum: the plan chose 0.
    assert b.loc["s1", "binding"] == "plan"
    snap = _snap(site, max_a=(36.0, 32.0, 32.0))
    b = binding_limits(snap, {"s0": 36.0, "s1": 0.0, "s2": 0.0})
    assert b.loc["s1", "binding"] == "min_current"
    assert b.loc["s1", "room_a"] == pytest.approx(4.0) and b.loc["s1", "limit"].startswith("feeder/")


def test_unbalance_limit_binds_a_single_phase_car():
    site = _site(root_a=100.0, feeder_a=100.0, phases=(1, 3, 3), unbalance=20.0)
    snap = _snap(site, phases=(1, 3, 3))
    b = binding_limits(snap, {"s0": 20.0, "s1": 0.0, "s2": 0.0})
    assert b.loc["s0", "binding"] == "unbalance" and b.loc["s0", "limit"] == "unbalance"
    assert b.loc["s0", "limit_a"] == 20.0


def test_a_capped_fuse_is_reported_as_cap():
    site = capped_site(_site(), fuse_caps_a={"feeder": 16.0})
    b = binding_limits(_snap(site), {"s0": 8.0, "s1": 8.0, "s2": 32.0}, capped_fuses=["feeder"])
    assert b.loc["s0", "binding"] == "cap" and b.loc["s0", "limit_a"] == 16.0
    assert b.loc["s2", "binding"] == "own_max"
    # The same rows without naming the cap read as an ordinary fuse.
    assert binding_limits(_snap(site), {"s0": 8.0, "s1": 8.0, "s2": 32.0}).loc["s0", "binding"] == "fuse"


def test_no_cars():
    b = binding_limits(_snap(_site(), max_a=()), {})
    assert b.empty and list(b.columns) == list(BINDING_COLUMNS)
