"""The simulator's meter wake-up (``simulate(meter_interval_s=...)``): a step that holds a new
session's over-draw reserve reads the meters ``meter_interval_s`` into it and runs the control
step again then, as the live controller's meter wake-up does; the step's parts are accounted
on their own (energy adds, currents and overloads take the worst part)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nowblock.block.scenario import Scenario
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.loop.closed_loop import LoopSettings
from nowblock.policies import get_policy
from nowblock.sim.block import SimulatedBlock
from nowblock.sim.simulator import simulate

T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")
STEP = pd.Timedelta("5min")


class Recorder:
    """Equal share, keeping the time of every snapshot it was shown."""

    def __init__(self):
        self.inner = get_policy("equal")
        self.name = "recorded-equal"
        self.times = []

    def schedule(self, snapshot):
        self.times.append(snapshot.time)
        return self.inner.schedule(snapshot)


def _scenario(grid_a=16.0, n=1, phases=3):
    """``n`` cars (16 A, 3 phases) plugged in for 2 h behind a ``grid_a`` connection."""
    site = Site("wake", (Fuse("grid", (grid_a,) * 3),),
                tuple(ChargePoint(f"CP{i}", "grid", 16.0, 6.0, 3, "L1L2L3") for i in range(n)))
    sessions = pd.DataFrame({"session_id": [f"s{i}" for i in range(n)], "charge_point_id": [f"CP{i}" for i in range(n)],
                             "arrival": [T0] * n, "departure": [T0 + pd.Timedelta(hours=2)] * n,
                             "energy_kwh": [20.0] * n, "phases": [phases] * n, "draw_fraction": [1.0] * n})
    return Scenario(site, sessions)


def test_a_new_sessions_reserve_frees_within_its_first_step():
    # One car alone on a 16 A connection: with its excess unknown it is planned at its limit
    # + 2 A and sent 14 A. Live, its first reading (within a meter interval) frees the reserve;
    # read only at each step's start it drew 14 A for its whole first step (15 A seen 300 s
    # later). Now its reading at 60 s wakes the step again and it draws 16 A for the rest.
    rec = Recorder()
    res = simulate(_scenario(), rec, step="5min")
    first = res.draws[res.draws["time"] == T0]["current_a"].to_numpy()
    assert T0 + pd.Timedelta(seconds=60) in rec.times  # the wake-up step ran the policy
    assert rec.times.count(T0 + pd.Timedelta(seconds=60)) == 1 and len(rec.times) == 24 + 1
    assert first == pytest.approx([(14.0 * 60 + 16.0 * 240) / 300])  # its mean current over the step
    assert res.timeseries["cars_L1_a"].iloc[0] == pytest.approx(16.0)  # the worst part
    assert res.metrics["max_overload_a"] == 0.0
    # Delivered energy is still the sum of drawn power times time.
    kwh = (res.draws["power_kw"] * STEP / pd.Timedelta(hours=1)).sum()
    assert kwh == pytest.approx(res.metrics["energy_delivered_kwh"])


def test_the_wake_up_gives_a_congested_new_car_more_energy_than_reading_at_step_starts_only():
    rec_off, rec_on = Recorder(), Recorder()
    slow = simulate(_scenario(grid_a=20.0, n=2), rec_off, step="5min", meter_interval_s=0)
    fast = simulate(_scenario(grid_a=20.0, n=2), rec_on, step="5min", meter_interval_s=60)
    assert all(t == t.floor("5min") for t in rec_off.times)  # no wake-up: meters read at step starts
    assert fast.metrics["energy_delivered_kwh"] > slow.metrics["energy_delivered_kwh"] + 1e-6
    for res in (slow, fast):
        assert res.metrics["max_overload_a"] == 0.0 and res.metrics["overload_steps"] == 0


def test_no_reserve_no_wake_up():
    rec = Recorder()
    simulate(_scenario(), rec, step="5min", loop_settings=LoopSettings(new_session_reserve=False))
    assert all(t == t.floor("5min") for t in rec.times) and len(rec.times) == 24


def test_meter_interval_must_be_a_non_negative_number():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="meter_interval_s"):
            simulate(_scenario(), "equal", meter_interval_s=bad)


def test_a_step_in_parts_adds_energy_and_reports_its_worst_part():
    # Block level: 10 A for the first minute, then 16 A on a 12 A connection: the overload of
    # the second part is 4 A (its time-weighted mean, 14.8 A, would show 2.8 A), the step's
    # energy is the sum of both parts and the draws give the step's mean current.
    scn = _scenario(grid_a=12.0)
    block = SimulatedBlock(scn, step=STEP, horizon=pd.Timedelta("1h"), start=T0, end=T0 + 2 * STEP)
    at = T0 + pd.Timedelta(seconds=60)
    block.observe(T0)
    block.apply(T0, pd.Series({"s0": 10.0}), until=at)
    obs = block.observe(at)
    assert obs.time == at and obs.cars["measured_current_a"].iloc[0] == pytest.approx(10.0)
    assert (pd.DatetimeIndex(obs.cars["last_meter"]) == at).all()
    block.apply(at, pd.Series({"s0": 16.0}))
    ts, overload, steps, _, _ = block.timeseries()
    kw_per_a = 3 * scn.site.voltage_v / 1000.0
    want_kwh = kw_per_a * (10.0 * 60 + 16.0 * 240) / 3600.0
    assert block.delivered[0] == pytest.approx(want_kwh)
    assert ts["charging_kw"].iloc[0] * STEP.total_seconds() / 3600.0 == pytest.approx(want_kwh)
    assert overload == pytest.approx(4.0) and steps == 1
    assert ts["grid_L1_a"].iloc[0] == pytest.approx(16.0) and ts["offered_a"].iloc[0] == pytest.approx(16.0)
    draws = block.draws()
    assert len(draws) == 1 and draws["current_a"].iloc[0] == pytest.approx((10.0 * 60 + 16.0 * 240) / 300)
    assert ts["n_charging"].iloc[0] == 1


def test_a_part_with_the_worst_unbalance_is_reported():
    # Two single-phase cars (L1, L2): balanced for a minute, then one alone at 16 A: the
    # step's unbalance is the second part's 16 A, not its mean nor the phases' maxima (16 - 16).
    site = Site("unb", (Fuse("grid", (63.0,) * 3),),
                tuple(ChargePoint(f"CP{i}", "grid", 16.0, 6.0, 1, rot) for i, rot in enumerate(("L1L2L3", "L2L3L1"))),
                max_unbalance_a=10.0)
    sessions = pd.DataFrame({"session_id": ["a", "b"], "charge_point_id": ["CP0", "CP1"], "arrival": [T0] * 2,
                             "departure": [T0 + pd.Timedelta(hours=2)] * 2, "energy_kwh": [20.0] * 2,
                             "phases": [1, 1], "draw_fraction": [1.0, 1.0]})
    block = SimulatedBlock(Scenario(site, sessions), step=STEP, horizon=pd.Timedelta("1h"), start=T0, end=T0 + STEP)
    at = T0 + pd.Timedelta(seconds=60)
    block.observe(T0)
    block.apply(T0, pd.Series({"a": 16.0, "b": 16.0}), until=at)
    block.observe(at)
    block.apply(at, pd.Series({"a": 16.0, "b": 0.0}))
    _, _, _, unb_excess, _ = block.timeseries()
    assert unb_excess == pytest.approx(6.0)
    assert np.allclose(block.cars_ph_a[0], [16.0, 16.0, 0.0])
