"""The measured-overload watch: real overloads become alarms with size and duration; readings
taken on both sides of a re-sharing, or the planner's raised base load, do not."""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from nowblock.control.alarms import Alarms, OverloadWatch
from nowblock.testing import make_test_site

T0 = pd.Timestamp("2026-03-03 17:00", tz="UTC")


def _obs(measured, offered, read_at, base_kw=0.0):
    site = make_test_site(2, grid_a=32.0)
    cars = pd.DataFrame({"charge_point_id": ["CP1", "CP2"], "cp_index": [0, 1], "phases": [3, 3],
                         "measured_current_a": measured, "offered_current_a": offered,
                         "last_meter": pd.to_datetime(read_at, utc=True)}, index=["CP1:1", "CP2:2"])
    base = pd.Series([base_kw, base_kw], index=pd.date_range(T0, periods=2, freq="15min"))
    return site, SimpleNamespace(cars=cars, base_load_kw=base)


def test_a_car_read_before_its_limit_went_down_is_counted_at_its_new_limit():
    # CP1 was lowered 20 -> 10 A at 17:00:30, after its reading; CP2 was raised 12 -> 22 A and read after.
    site, obs = _obs([20.0, 22.0], [10.0, 22.0], [T0, T0 + pd.Timedelta("60s")])
    changed = {"CP1:1": T0 + pd.Timedelta("30s"), "CP2:2": T0 + pd.Timedelta("30s")}
    alarms = Alarms()
    watch = OverloadWatch(site, alarms)
    watch.watch(obs, T0 + pd.Timedelta("61s"), changed_at=changed)
    assert watch.active == []  # 10 + 22 = 32 A: within the 32 A fuse
    # Without knowing when limits changed, the same readings add up to 42 A: an overload that never flowed.
    naive = OverloadWatch(site, Alarms())
    naive.watch(obs, T0 + pd.Timedelta("61s"))
    assert {(o["fuse_id"], round(o["worst_a"], 6)) for o in naive.active} == {("grid", 10.0)}


def test_a_car_that_keeps_drawing_after_its_limit_went_down_is_an_overload_with_size_and_duration():
    site, obs = _obs([20.0, 22.0], [10.0, 22.0], [T0 + pd.Timedelta("90s"), T0 + pd.Timedelta("60s")])
    changed = {"CP1:1": T0 + pd.Timedelta("30s")}
    alarms = Alarms()
    watch = OverloadWatch(site, alarms)
    watch.watch(obs, T0 + pd.Timedelta("91s"), changed_at=changed)  # read after the change: 20 A counts
    assert [(o["phase"], round(o["worst_a"], 6)) for o in watch.active] == [("L1", 10.0), ("L2", 10.0), ("L3", 10.0)]
    _, fine = _obs([10.0, 22.0], [10.0, 22.0], [T0 + pd.Timedelta("150s")] * 2)
    watch.watch(fine, T0 + pd.Timedelta("151s"), changed_at=changed)
    assert watch.active == []
    ended = [a for a in alarms.recent if a["kind"] == "overload"]
    assert len(ended) == 3 and all(a["worst_a"] == 10.0 and a["duration_s"] == 60.0 for a in ended)


def test_the_metered_base_load_counts_not_the_planners_raised_value():
    # 6.9 kW of other load is 10 A a phase at 230 V: 10 + 20 + 10 = 40 A > 32 A; metered it is 0 kW.
    site, obs = _obs([10.0, 20.0], [10.0, 20.0], [T0, T0], base_kw=6.9)
    watch = OverloadWatch(site, Alarms())
    watch.watch(obs, T0, base_kw=0.0)
    assert watch.active == []  # 30 A of cars alone
    watch.watch(obs, T0)  # no meter: the observation's value
    assert watch.active and np.isclose(watch.active[0]["worst_a"], 8.0, atol=0.01)
