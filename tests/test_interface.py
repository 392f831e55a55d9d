"""The seam: BlockSnapshot helpers, constraint_rows, make_safe edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nowblock.seam import (
    CAR_COLUMNS,
    BlockSnapshot,
    Policy,
    aligned_current_a,
    cached_constraint_rows,
    constraint_rows,
    make_safe,
    safe_setpoints_a,
    root_index,
    violation_a,
)
from nowblock.block.site import ChargePoint, Fuse, Site

T0 = pd.Timestamp("2026-03-02 18:00", tz="UTC")


def _site(*, unbalance=None, root_last=False) -> Site:
    fuses = [Fuse("grid", (50.0, 50.0, 50.0)), Fuse("feeder", (20.0, 20.0, 20.0), parent="grid")]
    if root_last:
        fuses.reverse()
    return Site(
        "t",
        tuple(fuses),
        (
            ChargePoint("A", "feeder", 32.0, 6.0, 3, "L1L2L3"),
            ChargePoint("B", "feeder", 32.0, 6.0, 1, "L2L3L1"),
            ChargePoint("C", "grid", 32.0, 6.0, 3, "L3L1L2"),
            ChargePoint("D", "grid", 16.0, 6.0, 1, "L1L2L3"),
        ),
        max_unbalance_a=unbalance,
    )


def _snap(site: Site, *, base_kw=0.0, step_a=1.0, prio=(1.0, 1.0, 1.0, 1.0), dep_h=(2, 4, 6, 8)) -> BlockSnapshot:
    n = len(site.charge_points)
    cars = pd.DataFrame(
        {
            "charge_point_id": site.charge_point_ids,
            "cp_index": np.arange(n),
            "phases": site.cp_phases,
            "min_current_a": site.cp_min_current_a,
            "max_current_a": site.cp_max_current_a,
            "arrival": pd.DatetimeIndex([T0 - pd.Timedelta(hours=1)] * n),
            "departure": pd.DatetimeIndex([T0 + pd.Timedelta(hours=h) for h in dep_h]),
            "energy_requested_kwh": 30.0,
            "energy_delivered_kwh": np.array([0.0, 5.0, 30.0, 10.0]),
            "measured_current_a": np.nan,
            "offered_current_a": 0.0,
            "priority": np.array(prio, dtype=float),
            "needs_known": True,
        },
        index=pd.Index(["a", "b", "c", "d"], name="session_id"),
    )
    return BlockSnapshot(T0, site, pd.Timedelta("15min"), cars,
                         pd.Series([base_kw, base_kw], index=[T0, T0 + pd.Timedelta("15min")], name="kw"),
                         current_step_a=step_a)


def test_car_columns_are_documented():
    assert set(_snap(_site()).cars.columns) == set(CAR_COLUMNS)


def test_snapshot_helpers():
    snap = _snap(_site(), base_kw=23.0)
    assert snap.dt_h == 0.25
    np.testing.assert_allclose(snap.remaining_kwh, [30.0, 25.0, 0.0, 20.0])
    np.testing.assert_allclose(snap.hours_to_departure_h, [2, 4, 6, 8])
    np.testing.assert_allclose(snap.hours_since_arrival_h, [1, 1, 1, 1])
    np.testing.assert_allclose(snap.kw_per_a(), [0.69, 0.23, 0.69, 0.23])
    room = snap.headroom_a()
    np.testing.assert_allclose(room[0], 50.0 - 23000.0 / 690.0)
    np.testing.assert_allclose(room[1], 20.0)
    with pytest.raises(ValueError):
        snap.values("priority")[0] = 5.0  # cached arrays are read-only


def test_root_need_not_be_listed_first():
    site = _site(root_last=True)
    r0 = root_index(site)
    assert site.fuse_ids[r0] == "grid"
    snap = _snap(site, base_kw=23.0)
    room = snap.headroom_a()
    np.testing.assert_allclose(room[r0], 50.0 - 23000.0 / 690.0)  # base load lands on the grid fuse
    np.testing.assert_allclose(room[1 - r0], 20.0)


def test_constraint_rows_match_the_site_model():
    snap = _snap(_site(unbalance=10.0))
    g, h = constraint_rows(snap)
    assert g.shape == (6 + 6, 4) and h.shape == (12,)
    x = np.array([10.0, 7.0, 12.0, 9.0])
    fuse = snap.site.fuse_phase_currents_a(x, snap.cars["cp_index"], snap.cars["phases"])
    np.testing.assert_allclose((g @ x)[:6], fuse.reshape(-1))
    root = fuse[0]
    np.testing.assert_allclose(sorted((g @ x)[6:]), sorted(root[p] - root[q] for p in range(3) for q in range(3) if p != q))
    g[0, 0] = 99.0  # callers get copies; the cache stays intact
    assert constraint_rows(snap)[0][0, 0] == 1.0


def test_make_safe_keeps_a_safe_answer():
    snap = _snap(_site())
    x = pd.Series({"a": 10.0, "b": 6.0, "c": 0.0, "d": 16.0})
    np.testing.assert_array_equal(make_safe(snap, x).to_numpy(), x.to_numpy())


def test_make_safe_rounds_down_and_applies_the_minimum():
    snap = _snap(_site(), step_a=1.0)
    x = make_safe(snap, [9.99, 5.5, -3.0, np.nan])
    assert x.tolist() == [9.0, 0.0, 0.0, 0.0]


def test_make_safe_repairs_a_fuse_proportionally_then_switches_off():
    snap = _snap(_site())
    # feeder (20 A) carries A on L1..L3 and B on L2: 16 + 16 on L2 = 32 > 20
    x = make_safe(snap, {"a": 16.0, "b": 16.0})
    assert x["c"] == 0.0 and x["d"] == 0.0
    assert x["a"] + x["b"] <= 20.0 and x["a"] >= 6.0 and x["b"] >= 6.0
    # three 3-phase-equivalent demands that cannot all get the minimum on a 10 A feeder
    site = Site("t", (Fuse("grid", (10.0,) * 3),),
                tuple(ChargePoint(c, "grid", 32.0, 6.0) for c in "ABCD"))
    s2 = _snap(site, prio=(1.0, 0.0, 1.0, 1.0), dep_h=(2, 3, 9, 1))
    x2 = make_safe(s2, [32.0, 32.0, 32.0, 32.0])
    assert (x2 > 0).sum() == 1 and x2.sum() <= 10.0
    # the lowest priority goes first, then the most time left; the one with least time stays on
    assert x2["d"] > 0


def test_make_safe_respects_the_unbalance_limit():
    snap = _snap(_site(unbalance=5.0))
    x = make_safe(snap, [0.0, 16.0, 0.0, 16.0])  # B on L2, D on L1: 16 A each, balanced-ish
    assert violation_a(snap, x) == 0.0
    x = make_safe(snap, [0.0, 16.0, 0.0, 0.0])  # one single-phase car at 16 A: 16 A unbalance
    assert x["b"] == 0.0  # the minimum (6 A) alone is over 5 A, so the car must stop


def test_safe_setpoints_a_lowers_the_others_around_held_cars():
    """``held`` cars (chargers that keep their own limit) count as given in every row and are
    never changed; the others are lowered until every row holds that they can mend."""
    snap = _snap(_site(unbalance=5.0), step_a=1.0)
    g, h = constraint_rows(snap)
    rng = np.random.default_rng(7)
    mended = 0
    for _ in range(200):
        x = rng.uniform(0.0, 34.0, 4)
        held = rng.random(4) < 0.4
        x[held] = np.round(rng.uniform(0.0, 16.0, held.sum()), 2)  # held need not be a pilot step
        got = safe_setpoints_a(snap, x, held=held)
        np.testing.assert_array_equal(got[held], x[held])
        plain = safe_setpoints_a(snap, np.where(held, 0.0, x))  # the clip, steps and minima alone
        free = ~held
        assert (got[free] <= np.floor(np.minimum(x[free], snap.cars["max_current_a"].to_numpy()[free])) + 1e-9).all()
        assert ((got[free] == 0) | (got[free] >= 6.0)).all()
        broken = g @ got - h > 1e-6
        # A row left broken is one the held cars break alone: no car that can move loads it.
        assert not ((g[broken] > 0) & free & (got > 0)).any()
        # Mended around them: the others lower than they would be without the held cars, all rows clean.
        mended += int(not broken.any() and (got[free] < plain[free] - 1e-9).any())
        if not held.any():
            np.testing.assert_array_equal(got, safe_setpoints_a(snap, x))
    assert mended >= 5  # (8 of these 200) the others were lowered for the held cars, not only left


def test_make_safe_terminates_with_many_cars():
    n = 300
    site = Site("big", (Fuse("grid", (40.0,) * 3),),
                tuple(ChargePoint(f"C{i}", "grid", 32.0, 6.0, 1, ["L1L2L3", "L2L3L1", "L3L1L2"][i % 3]) for i in range(n)),
                max_unbalance_a=3.0)
    cars = pd.DataFrame(
        {
            "charge_point_id": site.charge_point_ids, "cp_index": np.arange(n), "phases": 1,
            "min_current_a": 6.0, "max_current_a": 32.0,
            "arrival": pd.DatetimeIndex([T0] * n), "departure": pd.DatetimeIndex([T0 + pd.Timedelta(hours=5)] * n),
            "energy_requested_kwh": 10.0, "energy_delivered_kwh": 0.0, "measured_current_a": np.nan,
            "offered_current_a": 0.0, "priority": 1.0, "needs_known": True,
        },
        index=pd.Index([f"s{i}" for i in range(n)], name="session_id"),
    )
    snap = BlockSnapshot(T0, site, pd.Timedelta("5min"), cars, pd.Series([0.0], index=[T0]))
    x = make_safe(snap, np.linspace(6, 32, n))
    assert violation_a(snap, x) == 0.0
    assert (x > 0).sum() >= 3  # it did not give up and switch everything off


def test_safe_setpoints_a_is_make_safe_on_arrays():
    snap = _snap(_site(unbalance=5.0))
    rng = np.random.default_rng(3)
    for _ in range(30):
        x = rng.uniform(-5.0, 40.0, 4)
        x[rng.random(4) < 0.2] = np.nan
        before = x.copy()
        got = safe_setpoints_a(snap, x)
        np.testing.assert_array_equal(got, make_safe(snap, x).to_numpy())
        np.testing.assert_array_equal(x, before)  # the caller's array is left alone
        assert violation_a(snap, got) == 0.0
    with pytest.raises(ValueError, match="3 setpoints for 4 cars"):
        safe_setpoints_a(snap, np.zeros(3))


def test_cached_constraint_rows_are_shared_and_read_only():
    snap = _snap(_site(unbalance=5.0))
    g, h = cached_constraint_rows(snap)
    assert cached_constraint_rows(snap)[0] is g
    with pytest.raises(ValueError):
        g[0, 0] = 5.0
    g2, h2 = constraint_rows(snap)
    np.testing.assert_array_equal(g2, g)
    g2[0, 0] = 5.0  # the copies stay writeable and the cache untouched
    assert g[0, 0] != 5.0


def test_aligned_current_a():
    idx = pd.Index(["a", "b", "c"])
    np.testing.assert_array_equal(aligned_current_a(idx, pd.Series({"c": 3.0, "a": 1.0})), [1.0, np.nan, 3.0])
    np.testing.assert_array_equal(aligned_current_a(idx, {"b": 2.0}), [np.nan, 2.0, np.nan])
    np.testing.assert_array_equal(aligned_current_a(idx, 6.0), [6.0, 6.0, 6.0])
    with pytest.raises(ValueError):
        aligned_current_a(idx, [1.0, 2.0])


def test_violation_a_reads_arrays_in_car_order():
    snap = _snap(_site())
    assert violation_a(snap, np.array([32.0, 0.0, 0.0, 0.0])) == pytest.approx(12.0)


def test_policy_protocol_is_structural():
    class Fixed:
        name = "fixed"

        def schedule(self, snapshot):
            return pd.Series(6.0, index=snapshot.cars.index)

    assert isinstance(Fixed(), Policy)


def test_producer_arrays_with_nat_departure_mean_unknown():
    # A producer's int64 arrays store NaT as int64's minimum: that is an unknown departure
    # (inf hours), not a date 292 years back.
    snap = _snap(_site())
    cars = snap.cars.copy()
    cars.loc["b", "departure"] = pd.NaT
    arrays = {"departure": cars["departure"].array.as_unit("ns").asi8.copy()}
    with_arrays = BlockSnapshot(T0, snap.site, snap.step, cars, snap.base_load_kw, car_arrays=arrays)
    from_frame = BlockSnapshot(T0, snap.site, snap.step, cars, snap.base_load_kw)
    np.testing.assert_array_equal(with_arrays.hours_to_departure_h, from_frame.hours_to_departure_h)
    assert np.isinf(with_arrays.hours_to_departure_h[1]) and with_arrays.hours_to_departure_h[0] == 2.0
