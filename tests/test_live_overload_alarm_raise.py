"""The overload alarm against a raise: a reading taken before a *raised* limit is the car's
draw, not a draw it gave up (only readings before a lowered limit are capped at it)."""

from types import SimpleNamespace

import pandas as pd

from nowblock.control.alarms import Alarms, OverloadWatch
from nowblock.loop.step import ControlStep
from nowblock.testing import make_test_site

T0 = pd.Timestamp("2026-12-07 18:00", tz="UTC")


def _obs(measured, offered, read_at):
    cars = pd.DataFrame({"charge_point_id": ["CP1", "CP2"], "cp_index": [0, 1], "phases": [3, 3],
                         "measured_current_a": measured, "offered_current_a": offered,
                         "last_meter": pd.to_datetime(read_at, utc=True)}, index=["CP1:1", "CP2:2"])
    return SimpleNamespace(cars=cars, base_load_kw=pd.Series([0.0], index=[T0]))


def _s(seconds: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(seconds=seconds)


def test_a_raise_after_an_over_draws_reading_does_not_close_its_overload():
    # An outside test (/tmp/s37/h4 r2): cars drawing 2 A over their limits kept a 63 A grid at
    # 67 A; each raise of a limit capped every reading older than it at the new limit, and the
    # alarm closed while the overload went on. Here: a 16 A grid, two cars lowered to 7 A at
    # 10 s drawing 9 A each (18 A) read at 40 s; CP1 raised to 7.5 A at 50 s, CP2 not (capped
    # at 7.5 A, CP1's reading closed the overload: 16.5 A, within the 0.5 A tolerance).
    site = make_test_site(2, grid_a=16.0)
    step = ControlStep()
    for sid in ("CP1:1", "CP2:2"):
        step.record_sent(sid, 10.0, _s(0))
        step.record_sent(sid, 7.0, _s(10))  # lowered
    alarms = Alarms()
    watch = OverloadWatch(site, alarms)
    watch.watch(_obs([9.0, 9.0], [7.0, 7.0], [_s(40)] * 2), _s(41), changed_at=step.lowered_since())
    assert [round(o["worst_a"], 6) for o in watch.active] == [2.0, 2.0, 2.0]  # 18 A on 16 A
    step.record_sent("CP1:1", 7.5, _s(50))  # raised: the reading at 40 s stays CP1's draw
    assert step.lowered_since()["CP1:1"] == _s(10)
    watch.watch(_obs([9.0, 9.0], [7.5, 7.0], [_s(40)] * 2), _s(51), changed_at=step.lowered_since())
    assert [round(o["worst_a"], 6) for o in watch.active] == [2.0, 2.0, 2.0]
    assert [a for a in alarms.recent if a["kind"] == "overload"] == []  # not closed
    # A lowering after the reading caps it at the lowered limit (a re-sharing, not an overload).
    step.record_sent("CP2:2", 6.0, _s(60))
    watch.watch(_obs([9.0, 9.0], [7.5, 6.0], [_s(40)] * 2), _s(61), changed_at=step.lowered_since())
    assert watch.active == []  # 9 + 6 = 15 A on 16 A
    ended = [a for a in alarms.recent if a["kind"] == "overload"]
    assert len(ended) == 3 and all(a["worst_a"] == 2.0 and a["duration_s"] == 20.0 for a in ended)
