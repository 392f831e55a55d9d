"""Tests for nowblock.loop.closed_loop: ceilings, stale meters, hysteresis, fail-safe shares."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nowblock.loop.closed_loop import (
    LoopSettings,
    apply_ceilings,
    keep_running,
    over_draw_mask,
    reserve_unobserved,
    running_mask,
    stale_mask,
    update_ceilings,
)
from nowblock.seam import BlockSnapshot, failsafe_current_a, make_safe, violation_a
from nowblock.block.site import ChargePoint, Fuse, Site

T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")


def _site(root_a: float = 63.0, n: int = 3, phases=None) -> Site:
    cps = tuple(
        ChargePoint(id=f"CP{i}", fuse="feeder", max_current_a=32.0, min_current_a=6.0,
                    phases=(phases or [3] * n)[i], phase_rotation=["L1L2L3", "L2L3L1", "L3L1L2"][i % 3])
        for i in range(n)
    )
    return Site("t", (Fuse("grid", (root_a,) * 3), Fuse("feeder", (50.0,) * 3, "grid")), cps)


def _cars(site: Site, measured, offered, **cols) -> pd.DataFrame:
    n = len(measured)
    df = pd.DataFrame({
        "charge_point_id": site.charge_point_ids[:n],
        "cp_index": np.arange(n),
        "phases": [min(3, site.charge_points[i].phases) for i in range(n)],
        "min_current_a": 6.0,
        "max_current_a": 32.0,
        "arrival": T0 - pd.Timedelta(hours=1),
        "departure": T0 + pd.Timedelta(hours=4),
        "energy_requested_kwh": 30.0,
        "energy_delivered_kwh": 5.0,
        "measured_current_a": np.asarray(measured, float),
        "offered_current_a": np.asarray(offered, float),
        "priority": 1.0,
        "needs_known": True,
    }, index=[f"s{i}" for i in range(n)])
    for k, v in cols.items():
        df[k] = v
    return df


def _snap(site, cars, base_kw: float = 0.0) -> BlockSnapshot:
    idx = pd.date_range(T0, periods=4, freq="15min")
    return BlockSnapshot(T0, site, pd.Timedelta("15min"), cars, pd.Series(base_kw, index=idx))


def test_car_drawing_less_gets_lower_ceiling_then_rises_slowly():
    site = _site()
    cars = _cars(site, measured=[10.0, 20.0, np.nan], offered=[20.0, 20.0, 20.0])
    s = LoopSettings(margin_a=1.0, raise_step_a=2.0, under_draw_a=2.0)
    c1 = update_ceilings(cars, None, settled=[True, True, True], settings=s)
    assert c1["s0"] == 11.0  # lowered to draw + margin
    assert c1["s1"] == 32.0  # takes what it is offered: stays at (or rises to) its maximum
    assert c1["s2"] == 32.0  # no measurement: no information, ceiling stays
    # Next step, s0 is offered its ceiling and now takes it all: the ceiling rises by one step.
    cars2 = _cars(site, measured=[11.0, 20.0, np.nan], offered=[11.0, 20.0, 20.0])
    c2 = update_ceilings(cars2, c1, settled=[True] * 3, settings=s)
    assert c2["s0"] == 13.0
    # Not settled yet (car ramping after a new offer): the ceiling does not move.
    c3 = update_ceilings(_cars(site, [0.0, 0.0, 0.0], [13.0, 20.0, 20.0]), c2, settled=[False] * 3, settings=s)
    assert c3.equals(c2)
    # A car that stops drawing is held at its minimum, never lowered to 0 (it may resume).
    c4 = update_ceilings(_cars(site, [0.0, 0.0, 0.0], [13.0, 20.0, 20.0]), c2, settled=[True] * 3, settings=s)
    assert c4["s0"] == 6.0 and c4["s1"] == 6.0


def test_freed_current_goes_to_others_in_the_same_step():
    site = _site(root_a=40.0, n=2)
    cars = _cars(site, measured=[8.0, 20.0], offered=[20.0, 20.0])
    ceil = update_ceilings(cars, None, settled=[True, True])
    snap = _snap(site, apply_ceilings(cars, ceil))
    # A proportional split of what the ceilings allow, through the shared safety net.
    x = make_safe(snap, snap.cars["max_current_a"])
    blind = make_safe(_snap(site, cars), cars["max_current_a"])  # the same split without ceilings
    assert blind["s1"] <= 20.0
    assert x["s0"] <= 9.0  # no more than it draws plus the margin
    assert x["s1"] >= 40.0 - 9.0 - 1.0  # what s0 leaves unused goes to s1, inside the 40 A root
    assert violation_a(snap, x) == 0.0


def test_stale_and_over_drawing_cars_are_reserved_at_their_worst_case():
    site = _site(root_a=63.0)
    last = pd.Series([T0 - pd.Timedelta(seconds=30), T0 - pd.Timedelta(minutes=10), pd.NaT])
    arrival = pd.Series([T0 - pd.Timedelta(hours=1)] * 2 + [T0 - pd.Timedelta(seconds=20)])
    stale = stale_mask(last, arrival, T0, stale_after_s=120)
    assert stale.tolist() == [False, True, False]  # a just-started car without meter values is not stale
    assert stale_mask(pd.Series([pd.NaT]), pd.Series([T0 - pd.Timedelta(hours=1)]), T0, 120).tolist() == [True]
    reserved = reserve_unobserved(site, [1], [3], [32.0])
    assert reserved.limits_a[0].tolist() == [31.0, 31.0, 31.0]
    assert reserved.limits_a[1].tolist() == [18.0, 18.0, 18.0]
    assert site.limits_a[0].tolist() == [63.0] * 3  # the original is untouched
    # More reserved than the rating: the rating left is (almost) nothing, never negative.
    tiny = reserve_unobserved(site, [0, 1], [3, 3], [32.0, 32.0])
    assert (tiny.limits_a[1] > 0).all() and (tiny.limits_a[1] < 0.01).all()
    cars = _cars(site, measured=[20.0, 10.0, 5.0], offered=[10.0, 10.0, 10.0])
    assert over_draw_mask(cars, [True] * 3).tolist() == [True, False, False]


def test_keep_running_lifts_paused_cars_only_where_it_fits():
    site = _site(root_a=20.0)
    cars = _cars(site, measured=[10.0, 7.0, 0.0], offered=[10.0, 8.0, 0.0])
    snap = _snap(site, cars)
    run = running_mask(cars)
    assert run.tolist() == [True, True, False]
    # The policy paused s1 (running) and s2 (idle): s1 is kept at its minimum, s2 stays off.
    x = keep_running(snap, pd.Series({"s0": 12.0, "s1": 0.0, "s2": 0.0}), run)
    assert x.tolist() == [12.0, 6.0, 0.0]
    # No room: the pause stands; nothing overloads.
    x = keep_running(snap, pd.Series({"s0": 16.0, "s1": 0.0, "s2": 0.0}), run)
    assert x["s1"] == 0.0 and violation_a(snap, x) == 0.0
    # A car whose reported needs are met is not lifted.
    done = _cars(site, measured=[10.0, 7.0, 0.0], offered=[10.0, 8.0, 0.0], energy_delivered_kwh=30.0)
    x = keep_running(_snap(site, done), pd.Series({"s0": 0.0, "s1": 0.0, "s2": 0.0}), run)
    assert x.sum() == 0.0


@pytest.mark.parametrize("base_kw", [0.0, 20.0, 200.0])
def test_failsafe_shares_hold_the_grid_connection_in_the_worst_case(base_kw):
    site = _site(root_a=63.0, n=6, phases=[3, 3, 1, 1, 1, 3])
    fs = failsafe_current_a(site, base_kw)
    assert ((fs == 0) | (fs >= site.cp_min_current_a)).all()
    assert (fs <= site.cp_max_current_a).all() and (fs == np.floor(fs)).all()
    # Every point drawing its fail-safe on every phase it has, plus the worst base load: no overload.
    load = site.fuse_phase_currents_a(fs.to_numpy(), np.arange(6), site.cp_phases)
    load[0] += site.base_load_phase_current_a(base_kw)
    if base_kw < 200:
        assert (load <= site.limits_a + 1e-9).all()
        assert fs.sum() > 0
    else:  # the other load alone exceeds the connection: nobody may charge unattended
        assert fs.sum() == 0
