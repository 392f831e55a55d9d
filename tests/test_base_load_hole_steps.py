"""The base load a simulation needs is the one under the steps a car is plugged in (outside test
s37 F4): a refusal named first a 7-minute stay (10:02-10:09) that covers no whole 15-minute step,
so the simulator never plugs that car in, before the 9.75 h hole under real stays."""

import numpy as np
import pandas as pd
import pytest

import nowblock as nb
from nowblock.block.scenario import ScenarioError
from nowblock.block.site import ChargePoint, Fuse, Site

TZ = "Europe/Berlin"
DAY = "2026-07-01T"
WINDOW = dict(step="15min", start=f"{DAY}00:00:00+02:00", end="2026-07-02T00:00:00+02:00", policy="edf")


def _site() -> Site:
    return Site(name="t", fuses=(Fuse("grid", (63.0,) * 3),),
                charge_points=tuple(ChargePoint(f"CP0{i}", "grid", max_current_a=32.0) for i in (1, 2, 3)),
                voltage_v=230.0, timezone=TZ)


def _scenario(*stays) -> nb.Scenario:
    """Stays (charge point, arrival, departure: local times of the day); a base load every 15 min
    from 00:00 to 09:45 and on the next day, none in between (a hole 10:00-24:00)."""
    rows = [(f"s{i}", cp, pd.Timestamp(f"{DAY}{a}+02:00"), pd.Timestamp(f"{DAY}{b}+02:00"), 5.0)
            for i, (cp, a, b) in enumerate(stays)]
    sessions = pd.DataFrame(rows, columns=["session_id", "charge_point_id", "arrival", "departure", "energy_kwh"])
    times = pd.date_range(f"{DAY}00:00+02:00", f"{DAY}09:45+02:00", freq="15min").append(
        pd.date_range("2026-07-02T00:00+02:00", "2026-07-02T06:00+02:00", freq="15min"))
    return nb.Scenario(_site(), sessions, base_load=pd.Series(np.full(len(times), 10.0), index=times, name="kw"))


def test_the_first_hole_named_is_one_a_car_is_plugged_in_for():
    scn = _scenario(("CP01", "08:00", "09:00"), ("CP02", "10:02", "10:09"), ("CP03", "14:00", "18:00"))
    with pytest.raises(ScenarioError, match=r"no value for 2026-07-01T14:00:00\+02:00 \.\. 2026-07-01T18:00:00\+02:00"
                                            r" \(4 h, a gap between its times\)") as err:
        nb.simulate(scn, **WINDOW)
    assert "10:02" not in str(err.value) and "such parts" not in str(err.value)


def test_a_stay_inside_one_step_over_a_hole_does_not_stop_the_simulation(caplog):
    scn = _scenario(("CP01", "08:00", "09:00"), ("CP02", "10:02", "10:09"))
    res = nb.simulate(scn, **WINDOW)
    delivered = res.sessions.set_index("session_id")["energy_delivered_kwh"]
    assert delivered["s1"] == 0.0 < delivered["s0"]  # never plugged in, as the simulator does
    assert "taken as 0 kW" in caplog.text


def test_a_hole_under_part_of_a_stay_is_refused_for_its_whole_steps():
    # 10:05-10:35 is plugged in for the step 10:15-10:30 only
    with pytest.raises(ScenarioError, match=r"no value for 2026-07-01T10:15:00\+02:00 \.\. 2026-07-01T10:30:00\+02:00"):
        nb.simulate(_scenario(("CP01", "08:00", "09:00"), ("CP02", "10:05", "10:35")), **WINDOW)
    # a stay of exactly one step in the hole is still refused
    with pytest.raises(ScenarioError, match=r"no value for 2026-07-01T10:00:00\+02:00 \.\. 2026-07-01T10:15:00\+02:00"):
        nb.simulate(_scenario(("CP01", "08:00", "09:00"), ("CP02", "10:00", "10:15")), **WINDOW)


def test_the_hole_check_and_the_simulator_plug_a_car_in_for_the_same_steps():
    # plugged_times(step) and the simulator's k_in/k_out share one rule (whole_steps): stays on and
    # off the grid, inside one step, over the window's ends
    from nowblock.block.series import plugged_times
    from nowblock.sim.block import SimulatedBlock

    rng = np.random.default_rng(5)
    start, step = pd.Timestamp(f"{DAY}00:00:00+02:00").tz_convert("UTC"), pd.Timedelta("15min")
    a = start + pd.to_timedelta(rng.integers(-120, 1500, 40), unit="min") + pd.to_timedelta(rng.integers(0, 2, 40) * 30, "s")
    b = a + pd.to_timedelta(np.r_[rng.integers(1, 15, 10), rng.integers(15, 400, 30)], unit="min")
    site = Site(name="t", fuses=(Fuse("grid", (630.0,) * 3),), voltage_v=230.0, timezone=TZ,
                charge_points=tuple(ChargePoint(f"CP{i}", "grid", max_current_a=32.0) for i in range(40)))
    sessions = pd.DataFrame({"session_id": [f"s{i}" for i in range(40)], "charge_point_id": list(site.charge_point_ids),
                             "arrival": a, "departure": b, "energy_kwh": 1.0})
    end = start + pd.Timedelta("1D")
    blk = SimulatedBlock(nb.Scenario(site, sessions), step=step, horizon=step, start=start, end=end)
    for i, sid in enumerate(blk.sid):  # the simulator's own order
        got = plugged_times(sessions[sessions["session_id"] == sid], start, end, step)
        steps = [(start + k * step, start + (k + 1) * step) for k in range(blk.k_in[i], blk.k_out[i])]
        assert got == ([(steps[0][0], steps[-1][1])] if steps else []), i
    assert (blk.k_out > blk.k_in).sum() > 20 and (blk.k_out <= blk.k_in).any()  # both kinds met


def test_whole_steps_rounds_arrival_up_and_departure_down():
    from nowblock.block.series import whole_steps

    m = 60 * 10**9  # a minute [ns]
    k_in, k_out = whole_steps(np.array([0, 1, 15 * m, 16 * m, -20 * m]), np.array([15 * m, 29 * m, 30 * m, 29 * m, 1]),
                              0, 15 * m)
    assert k_in.tolist() == [0, 1, 1, 2, -1] and k_out.tolist() == [1, 1, 2, 1, 0]
