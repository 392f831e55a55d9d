"""One check for a time argument (``aware_time``): ``simulate``'s start/end and ``optimize``'s start.

The simulator's copy read a number as nanoseconds since 1970 and then called it a local time
("end: 1772470800 has no UTC offset"), and let pandas' own DateParseError through for text it
cannot read, naming no argument; ``optimize``'s copy named both.
"""

from __future__ import annotations

import pandas as pd
import pytest

from nowblock.sim.simulator import simulate


@pytest.fixture(scope="module")
def tiny():
    from nowblock.block.scenario import Scenario

    return Scenario.default(days=1, n_charge_points=2)


@pytest.mark.parametrize("bad,error,message", [
    (1772470800, TypeError, r"^end: expected a timezone-aware time .* got the number 1772470800"),
    ("soon", ValueError, r"^end: cannot read 'soon' as a time"),
    ("2026-07-01T18:00", ValueError, r"^end: must be timezone-aware: 2026-07-01T18:00 has no UTC offset"),
    (pd.NaT, ValueError, r"^end: missing \(NaT\); .* or None for the default"),
    ("9999-01-01T00:00Z", ValueError, r"^end: 9999-01-01T00:00:00\+00:00 is outside the times nowblock computes in"),
])
def test_simulate_end_is_checked_naming_it(tiny, bad, error, message):
    t0 = tiny.sessions["arrival"].min().floor("5min")
    with pytest.raises(error, match=message):
        simulate(tiny, "equal", start=t0, end=bad)


def test_aware_time_keeps_the_zone_and_both_wordings():
    from nowblock.block.sessions import aware_time

    t = aware_time("2026-10-25T02:30+01:00", "start")
    assert t.utcoffset() == pd.Timedelta("1h") and t == pd.Timestamp("2026-10-25T01:30Z")
    # the wordings the optimizer's and the simulator's checks had, both in one message
    with pytest.raises(ValueError, match=r"^start: must be timezone-aware") as err:
        aware_time("2026-10-25T02:30", "start", none_means="the first arrival")
    assert "has no UTC offset" in str(err.value)
    with pytest.raises(ValueError, match=r"or None for the first arrival$"):
        aware_time(pd.NaT, "start", none_means="the first arrival")
