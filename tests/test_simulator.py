"""The time-stepped simulator: energy conservation, safety, the battery model, the seam."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import nowblock
from nowblock.seam import root_index
from nowblock.policies import get_policy
from nowblock.block.scenario import Scenario
from nowblock.sim import simulator as simmod
from nowblock.sim.battery import TaperBattery
from nowblock.loop.closed_loop import LoopSettings
from nowblock.loop.needs import FallbackNeedsEstimator
from nowblock.loop.series import step_stats
from nowblock.sim.simulator import simulate
from nowblock.block.site import PHASES, CapWindow, ChargePoint, Fuse, Site

CONTROLLED = ["equal", "edf", "llf"]
CONTRACT = {"energy_requested_kwh", "energy_delivered_kwh", "demand_met", "peak_kw", "max_overload_a",
            "cost_eur", "solve_seconds_median"}
T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")


class Recorder:
    """Wraps a policy and keeps every snapshot it was shown."""

    def __init__(self, inner="equal"):
        self.inner = get_policy(inner)
        self.name = f"recorded-{self.inner.name}"
        self.snaps = []
        self.resets = 0

    def reset(self):
        self.resets += 1

    def schedule(self, snapshot):
        self.snaps.append(snapshot)
        return self.inner.schedule(snapshot)


def _one_car_scenario(*, energy_kwh=10.0, phases=3, cp_phases=3, rotation="L1L2L3", arrival=T0,
                      departure=T0 + pd.Timedelta(hours=10), base=None, grid_a=63.0, draw_fraction=1.0):
    site = Site("one", (Fuse("grid", (grid_a,) * 3),),
                (ChargePoint("CP1", "grid", 16.0, 6.0, cp_phases, rotation),))
    sessions = pd.DataFrame({"session_id": ["s1"], "charge_point_id": ["CP1"], "arrival": [arrival],
                             "departure": [departure], "energy_kwh": [energy_kwh], "phases": [phases],
                             "draw_fraction": [draw_fraction]})
    return Scenario(site, sessions, base_load=base)


def _fuse_currents_from_draws(res, scn, base_kw_per_step):
    """Fuse-phase currents per step [A] rebuilt from the draws with the site model alone."""
    site = scn.site
    sess = scn.sessions.set_index("session_id")
    out = np.zeros((len(res.timeseries), len(site.fuses), 3))
    pos = {t: i for i, t in enumerate(res.timeseries.index)}
    for t, grp in res.draws.groupby("time"):
        s = sess.loc[grp["session_id"]]
        out[pos[t]] = site.fuse_phase_currents_a(grp["current_a"].to_numpy(), site.cp_index(s["charge_point_id"]),
                                                 s["phases"].to_numpy())
    out[:, root_index(site), :] += site.base_load_phase_current_a(base_kw_per_step)
    return out


# ---- contract and conservation -----------------------------------------------------------------
def test_metrics_contract_and_export(small_scenario):
    res = nowblock.simulate(small_scenario, policy="edf")
    assert CONTRACT <= set(res.metrics)
    assert 0.0 <= res.metrics["demand_met"] <= 1.0
    assert res.metrics["policy"] == "edf" and res.policy == "edf"
    assert len(res.timeseries) == res.metrics["n_steps"]
    assert {"base_load_kw", "charging_kw", "n_charging", "grid_L1_a", "grid_L1_limit_a", "cars_L2_a",
            "households_L3_a"} <= set(res.timeseries.columns)
    assert set(res.sessions["session_id"]) == set(small_scenario.sessions["session_id"])
    assert res.metrics["solve_seconds_median"] > 0.0


@pytest.mark.parametrize("policy", ["uncontrolled", "equal"])
def test_energy_is_conserved(small_scenario, policy):
    res = simulate(small_scenario, policy)
    dt_h = res.step / pd.Timedelta(hours=1)
    per_session = res.draws.groupby("session_id")["power_kw"].sum() * dt_h
    got = res.sessions.set_index("session_id")["energy_delivered_kwh"]
    np.testing.assert_allclose(per_session.reindex(got.index).fillna(0.0), got, rtol=1e-9, atol=1e-9)
    assert res.timeseries["charging_kw"].sum() * dt_h == pytest.approx(res.metrics["energy_delivered_kwh"])
    assert got.sum() == pytest.approx(res.metrics["energy_delivered_kwh"])
    req = res.sessions.set_index("session_id")["energy_requested_kwh"]
    assert np.all(got <= req + 1e-9)  # a car stops when it has what it asked for
    assert res.metrics["energy_requested_kwh"] == pytest.approx(req.sum())


def test_cars_never_draw_more_than_offered_or_their_limits(small_scenario):
    rec = Recorder("edf")
    res = simulate(small_scenario, rec)
    sess = small_scenario.sessions.set_index("session_id")
    cap = np.minimum(sess["max_current_a"], small_scenario.site.cp_max_current_a[
        small_scenario.site.cp_index(sess["charge_point_id"])]) * sess["draw_fraction"]
    d = res.draws
    assert np.all(d["current_a"].to_numpy() <= cap.loc[d["session_id"]].to_numpy() + 1e-9)
    offers = {}
    for snap in rec.snaps:
        # A step may be split by a meter wake-up (a snapshot inside it): its mean draw is within
        # the highest of its offers.
        x = rec.inner.schedule(snap)
        t = snap.time.floor(res.step)
        offers.update({(t, s): max(v, offers.get((t, s), 0.0)) for s, v in x.items()})
    for t, s, a in d[["time", "session_id", "current_a"]].itertuples(index=False):
        assert a <= offers[(t, s)] + 1e-9


# ---- safety -------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", CONTROLLED)
def test_controlled_policies_never_overload(small_scenario, policy):
    res = simulate(small_scenario, policy)
    assert res.metrics["max_overload_a"] == 0.0
    assert res.metrics["overload_steps"] == 0
    fuse = _fuse_currents_from_draws(res, small_scenario, res.timeseries["base_load_max_kw"].to_numpy())
    assert np.all(fuse <= small_scenario.site.limits_a[None] + 1e-6)


def test_uncontrolled_overloads_the_same_block(small_scenario):
    res = simulate(small_scenario, "uncontrolled")
    assert res.metrics["max_overload_a"] > 5.0
    fuse = _fuse_currents_from_draws(res, small_scenario, res.timeseries["base_load_max_kw"].to_numpy())
    excess = (fuse - small_scenario.site.limits_a[None]).max()
    assert excess == pytest.approx(res.metrics["max_overload_a"], abs=1e-6)


def test_base_load_finer_than_the_step_stays_safe():
    # one-minute household load with short spikes; 15-minute control steps
    times = pd.date_range(T0 - pd.Timedelta(hours=1), T0 + pd.Timedelta(hours=12), freq="1min")
    kw = np.full(len(times), 20.0)
    kw[::7] = 36.0  # spikes up to 52 A per phase inside every step
    base = pd.Series(kw, index=times, name="kw")
    scn = _one_car_scenario(energy_kwh=40.0, base=base, grid_a=63.0)
    res = simulate(scn, "equal", step="15min")
    assert res.metrics["max_overload_a"] == 0.0
    # independent check minute by minute: the car's constant draw plus the true base load
    car_a = res.timeseries["cars_L1_a"].reindex(times, method="ffill").fillna(0.0).to_numpy()
    total = car_a + kw * 1000.0 / (3 * 230.0)
    assert total.max() <= 63.0 + 1e-6
    assert res.timeseries["charging_kw"].max() > 0  # it did charge between the spikes' headroom
    # the policy saw the maximum of the coming step, not its mean
    rec = Recorder("equal")
    simulate(scn, rec, step="15min")
    assert all(s.base_load_kw.iloc[0] == 36.0 for s in rec.snaps)


def test_unavoidable_base_overload_is_not_blamed_on_charging():
    times = pd.date_range(T0 - pd.Timedelta(hours=1), T0 + pd.Timedelta(hours=12), freq="15min")
    base = pd.Series(50.0, index=times, name="kw")  # 72.5 A per phase on a 63 A connection
    scn = _one_car_scenario(base=base, grid_a=63.0)
    assert simulate(scn, "equal").metrics["max_overload_a"] == 0.0
    assert simulate(scn, "uncontrolled").metrics["max_overload_a"] == pytest.approx(16.0)


def test_unbalance_is_bounded_on_offers_and_measured_honestly():
    rot = ["L1L2L3", "L2L3L1", "L3L1L2"]
    site = Site("unb", (Fuse("grid", (63.0,) * 3),),
                tuple(ChargePoint(f"CP{i}", "grid", 16.0, 6.0, 1, rot[i]) for i in range(3)), max_unbalance_a=5.0)
    sessions = pd.DataFrame({"session_id": ["a", "b", "c"], "charge_point_id": ["CP0", "CP1", "CP2"],
                             "arrival": [T0] * 3, "departure": [T0 + pd.Timedelta(hours=3)] * 3,
                             "energy_kwh": [50.0] * 3, "draw_fraction": [1.0, 1.0, 0.5]})
    for interval_s in (0.0, 60.0):
        res = simulate(Scenario(site, sessions), "equal", meter_interval_s=interval_s)
        off = res.timeseries[["offered_L1_a", "offered_L2_a", "offered_L3_a"]].to_numpy()
        assert off.max() == 16.0 and np.all(off.max(axis=1) - off.min(axis=1) <= 5.0)
        # Offers are balanced, but car c draws half of its offer: the measured unbalance can exceed
        # the limit, and the metric says by how much, recomputed here from the cars' draws.
        d = res.draws.pivot_table(index="time", columns="session_id", values="current_a", fill_value=0.0)
        d = d.reindex(columns=["a", "b", "c"], fill_value=0.0)  # a, b, c load L1, L2, L3 (rotations)
        measured = (d.max(axis=1) - d.min(axis=1) - 5.0).clip(lower=0.0).max()
        assert measured > 0 and res.metrics["max_overload_a"] == 0.0
        if interval_s == 0.0:  # whole steps: the draws are the step's currents
            assert res.metrics["max_unbalance_excess_a"] == pytest.approx(measured)
        else:  # a step split by a meter wake-up counts its worst part, at least its mean
            assert res.metrics["max_unbalance_excess_a"] >= measured - 1e-9


@pytest.mark.parametrize("policy", ["equal", "edf", "milp"])
def test_a_car_full_within_a_step_reads_zero_and_the_unbalance_limit_holds_from_the_next_step(policy):
    """Found by an outside test: the simulated meter showed what a car drew on average over the
    step, so a car full part-way through read as a tapering draw; with unknown needs the safety
    net counted it on the light side one more step, and the phases were up to 26 A apart under a
    10 A limit for two steps. A meter shows what a car draws at the step's end: nothing once it
    is full."""
    rot = ["L1L2L3", "L2L3L1", "L3L1L2"]
    site = Site("unb", (Fuse("grid", (63.0,) * 3),),
                tuple(ChargePoint(f"CP{i}", "grid", 16.0, 6.0, 1, rot[i]) for i in range(3)), max_unbalance_a=10.0)
    sessions = pd.DataFrame({"session_id": ["a", "b", "c"], "charge_point_id": ["CP0", "CP1", "CP2"],
                             "arrival": [T0] * 3, "departure": [T0 + pd.Timedelta(hours=3)] * 3,
                             "energy_kwh": [30.0, 1.0, 30.0], "phases": [1, 1, 1]})  # b: 3.26 steps at 16 A
    rec = Recorder(policy)
    res = simulate(Scenario(site, sessions), rec, step="5min", needs="unknown", battery=TaperBattery(taper_soc=1.0))
    d = res.draws.pivot_table(index="time", columns="session_id", values="current_a", fill_value=0.0)
    d = d.reindex(index=res.timeseries.index, columns=["a", "b", "c"], fill_value=0.0)  # on L1, L2, L3
    b = d["b"].to_numpy()
    full_step = int(np.nonzero(b > 0)[0].max())  # the step b fills within
    assert 0 < b[full_step] < res.timeseries["offered_L2_a"].iloc[full_step]  # full part-way through
    after = next(sn for sn in rec.snaps if sn.time == res.timeseries.index[full_step + 1])
    assert after.cars.loc["b", "measured_current_a"] == 0.0  # not its average over the step
    unb = d.max(axis=1) - d.min(axis=1)
    assert unb.iloc[:full_step].max() <= 10.0 + 1e-9  # the step b fills within may break it (unknown needs),
    assert unb.iloc[full_step + 1:].max() <= 10.0 + 1e-9  # the next ones no more
    assert res.metrics["max_overload_a"] == 0.0


# ---- physics -------------------------------------------------------------------------------------
def test_battery_taper():
    b = TaperBattery(capacity_kwh=60.0, target_soc=0.9, taper_soc=0.8, floor_fraction=0.1)
    frac = b.accepted_fraction(np.array([0.1, 0.8, 0.9, 1.0]))
    np.testing.assert_allclose(frac, [1.0, 1.0, 0.55, 0.1])
    assert b.capacities_kwh(np.array([10.0, 100.0])).tolist() == [60.0, pytest.approx(100.0 / 0.85)]
    np.testing.assert_allclose(b.start_soc(np.array([30.0]), np.array([60.0])), [0.4])
    with pytest.raises(ValueError):
        TaperBattery(target_soc=0.01)


def test_a_car_tapers_near_full_and_stops_at_its_energy():
    scn = _one_car_scenario(energy_kwh=40.0, departure=T0 + pd.Timedelta(hours=12))
    res = simulate(scn, "uncontrolled")
    a = res.draws["current_a"].to_numpy()
    assert res.sessions["energy_delivered_kwh"].iloc[0] == pytest.approx(40.0)
    assert a[0] == 16.0 and a[-2] < 16.0 * 0.65  # constant current first, tapering at the end
    assert np.all(np.diff(a[:-1]) <= 1e-9)


def test_a_car_that_draws_less_than_offered():
    scn = _one_car_scenario(energy_kwh=5.0, draw_fraction=0.5)
    res = simulate(scn, "uncontrolled")
    assert res.draws["current_a"].iloc[0] == pytest.approx(8.0)


def test_single_phase_car_on_a_three_phase_charger_loads_one_grid_phase():
    scn = _one_car_scenario(phases=1, rotation="L2L3L1")
    res = simulate(scn, "equal")
    ts = res.timeseries
    assert ts["cars_L2_a"].max() == 16.0
    assert ts["cars_L1_a"].max() == 0.0 and ts["cars_L3_a"].max() == 0.0
    assert res.draws["power_kw"].iloc[0] == pytest.approx(16.0 * 0.23)


def test_time_window_caps_limit_every_offer():
    site = Site("capped", (Fuse("grid", (63.0,) * 3),),
                (ChargePoint("CP1", "grid", 16.0, 6.0, 3, "L1L2L3", caps=(CapWindow("18:00", "20:00", 6.0),)),),
                timezone="UTC")
    sessions = pd.DataFrame({"session_id": ["s1"], "charge_point_id": ["CP1"], "arrival": [T0],
                             "departure": [T0 + pd.Timedelta(hours=5)], "energy_kwh": [60.0]})
    scn = Scenario(site, sessions)
    for policy in ["uncontrolled", *CONTROLLED]:
        res = simulate(scn, policy)
        d = res.draws.set_index("time")["current_a"]
        inside = (d.index.hour >= 18) & (d.index.hour < 20)
        assert d[inside].max() == 6.0 and d[~inside].max() == 16.0


@pytest.mark.parametrize("policy", ["uncontrolled", "edf", "milp"])
def test_a_cap_window_off_the_step_grid_caps_every_step_it_overlaps(policy):
    """Found by an outside test: a window from 18:10 capped the 15-minute step from 18:00 only at
    18:15, a step late (a 14a dimming honoured late); one ending at 19:50 lets the 19:45 step go
    uncapped only once it is over."""
    site = Site("capped", (Fuse("grid", (63.0,) * 3),),
                (ChargePoint("CP1", "grid", 16.0, 6.0, 3, "L1L2L3", caps=(CapWindow("18:10", "19:50", 6.0),)),),
                timezone="UTC")
    sessions = pd.DataFrame({"session_id": ["s1"], "charge_point_id": ["CP1"], "arrival": [T0],
                             "departure": [T0 + pd.Timedelta(hours=5)], "energy_kwh": [60.0]})
    res = simulate(Scenario(site, sessions), policy, step="15min")
    d = res.draws.set_index("time")["current_a"]
    minute = d.index.hour * 60 + d.index.minute
    overlapping = (minute + 15 > 18 * 60 + 10) & (minute < 19 * 60 + 50)
    assert d[overlapping].max() == 6.0 and d[~overlapping].max() == 16.0
    assert d.index[overlapping].min() == T0 + pd.Timedelta(minutes=60)  # 18:00, not 18:15


def test_plug_in_window_is_rounded_to_whole_steps():
    scn = _one_car_scenario(arrival=T0 + pd.Timedelta("3min"), departure=T0 + pd.Timedelta("62min"),
                            energy_kwh=100.0)
    rec = Recorder("equal")
    res = simulate(scn, rec, start=T0, end=T0 + pd.Timedelta(hours=2))
    times = [s.time for s in rec.snaps]
    assert times[0] == T0 + pd.Timedelta("5min") and times[-1] == T0 + pd.Timedelta("55min")
    assert rec.resets == 1
    assert res.metrics["n_steps"] == 24
    assert res.metrics["car_hours"] == pytest.approx(11 / 12)



@pytest.mark.parametrize("arrival_min, departure_min", [(0, 3), (2, 8)])
def test_a_stay_covering_no_whole_step_gets_no_step_but_counts_as_requested(arrival_min, departure_min):
    # Documented in the module docstring and docs/concepts.md: shorter than a step, or across a
    # step boundary (10:02 to 10:08 with 5 minute steps).
    scn = _one_car_scenario(arrival=T0 + pd.Timedelta(minutes=arrival_min),
                            departure=T0 + pd.Timedelta(minutes=departure_min), energy_kwh=0.5)
    rec = Recorder("equal")
    res = simulate(scn, rec, start=T0, end=T0 + pd.Timedelta("30min"))
    assert all(len(snap.cars) == 0 for snap in rec.snaps)
    assert res.sessions["steps_plugged"].tolist() == [0]
    assert res.metrics["energy_delivered_kwh"] == 0.0
    assert res.metrics["energy_requested_kwh"] == 0.5 and res.metrics["demand_met"] == 0.0

# ---- what the policy sees --------------------------------------------------------------------------
def test_snapshot_shows_measurements_of_the_previous_step(small_scenario):
    rec = Recorder("equal")
    simulate(small_scenario, rec, end=small_scenario.start + pd.Timedelta(hours=3))
    first, second, third = rec.snaps[0], rec.snaps[1], rec.snaps[2]
    assert first.cars["measured_current_a"].isna().all()
    sid = first.cars.index[0]
    # A new session is planned in its limit plus over_draw_a (2 A) and sent its share less that
    # until a reading tells its excess (the live loop's path, loop.reserve): its first reading,
    # at the next step, does, and from then on it is sent what it was planned.
    reserve_a = LoopSettings().over_draw_a
    assert second.cars.loc[sid, "offered_current_a"] == rec.inner.schedule(first)[sid] - reserve_a
    assert second.cars.loc[sid, "measured_current_a"] == second.cars.loc[sid, "offered_current_a"]
    assert third.cars.loc[sid, "offered_current_a"] == rec.inner.schedule(second)[sid]
    assert second.cars.loc[sid, "energy_delivered_kwh"] > 0
    assert first.cars["needs_known"].all()
    assert len(first.base_load_kw) == 24 * 12 and first.base_load_kw.index[0] == first.time
    assert first.prices_eur_per_kwh is not None and len(first.prices_eur_per_kwh) == 24 * 12


def test_unknown_needs_come_from_the_estimator(small_scenario):
    class Guess:
        def __init__(self):
            self.calls = 0

        def predict_needs(self, cars, time):
            self.calls += 1
            assert cars["departure"].isna().all() and cars["energy_requested_kwh"].isna().all()
            return pd.DataFrame({"departure": time + pd.Timedelta(hours=3), "energy_kwh": 7.0,
                                 "needs_known": False}, index=cars.index)

    est, rec = Guess(), Recorder("edf")
    res = simulate(small_scenario, rec, needs="unknown", needs_estimator=est,
                   end=small_scenario.start + pd.Timedelta(hours=16))
    assert est.calls == len(rec.snaps) > 0
    snap = rec.snaps[5]
    assert not snap.cars["needs_known"].any()
    assert (snap.cars["energy_requested_kwh"] == 7.0).all()
    assert (snap.cars["departure"] == snap.time + pd.Timedelta(hours=3)).all()
    # the cars still follow their real needs: nobody gets more than they really asked for
    s = res.sessions
    assert np.all(s["energy_delivered_kwh"] <= s["energy_requested_kwh"] + 1e-9)
    assert res.metrics["max_overload_a"] == 0.0


def test_unknown_needs_without_estimator_use_the_fallback(small_scenario):
    res = simulate(small_scenario, "equal", needs="unknown", end=small_scenario.start + pd.Timedelta(hours=16))
    assert res.metrics["energy_delivered_kwh"] > 0.5 * res.metrics["energy_requested_kwh"]
    fb = FallbackNeedsEstimator(dwell_h=10.0, energy_kwh=15.0)
    cars = pd.DataFrame({"arrival": [T0], "energy_delivered_kwh": [4.0], "measured_current_a": [0.0],
                         "offered_current_a": [16.0], "min_current_a": [6.0]}, index=pd.Index(["x"]))
    est = fb.predict_needs(cars, T0 + pd.Timedelta(hours=1))
    assert est.loc["x", "energy_kwh"] == 4.0  # offered enough, drew nothing: full
    assert est.loc["x", "departure"] == T0 + pd.Timedelta(hours=10)


def test_base_load_forecaster_is_used_after_now(small_scenario):
    class Flat:
        def __init__(self):
            self.seen = []

        def predict(self, history, now, horizon):
            self.seen.append((history.index.max() if len(history) else None, now))
            return pd.Series(1.0, index=pd.date_range(now, now + horizon, freq="15min"))

    fc, rec = Flat(), Recorder("equal")
    simulate(small_scenario, rec, base_load_forecaster=fc, end=small_scenario.start + pd.Timedelta(hours=2))
    assert len(fc.seen) == len(rec.snaps)
    last_hist, now = fc.seen[0]
    assert last_hist < now  # no peeking at the future
    snap = rec.snaps[0]
    true_now = step_stats(small_scenario.base_load, snap.time, snap.step, 1)[1][0]
    assert snap.base_load_kw.iloc[0] == pytest.approx(true_now)
    assert (snap.base_load_kw.iloc[1:] == 1.0).all()


def test_step_stats_mean_and_max():
    idx = pd.date_range(T0, periods=4, freq="5min")
    s = pd.Series([1.0, 4.0, 2.0, 8.0], index=idx)
    mean, mx = step_stats(s, T0, pd.Timedelta("10min"), 3)
    np.testing.assert_allclose(mean, [2.5, 5.0, 8.0])
    np.testing.assert_allclose(mx, [4.0, 8.0, 8.0])
    mean, mx = step_stats(s, T0 - pd.Timedelta("5min"), pd.Timedelta("5min"), 2)
    np.testing.assert_allclose(mx, [1.0, 1.0])  # before the first sample the first value holds


def test_cost_is_charging_energy_times_price(small_scenario):
    res = simulate(small_scenario, "edf")
    dt_h = res.step / pd.Timedelta(hours=1)
    price = res.timeseries["price_eur_per_kwh"]
    by_step = res.draws.groupby("time")["power_kw"].sum()
    assert res.metrics["cost_eur"] == pytest.approx((by_step * price.reindex(by_step.index)).sum() * dt_h)
    assert res.metrics["peak_kw"] == pytest.approx(res.timeseries["block_kw"].max())


def test_progress_goes_to_stderr(small_scenario, capsys, monkeypatch):
    monkeypatch.setattr(simmod, "PROGRESS_EVERY_S", 0.0)
    simulate(small_scenario, "edf", end=small_scenario.start + pd.Timedelta(hours=1), progress=True)
    err = capsys.readouterr()
    assert "100.0%" in err.err and err.out == ""


def test_result_plot(small_scenario, tmp_path):
    res = simulate(small_scenario, "uncontrolled", end=small_scenario.start + pd.Timedelta(hours=6))
    fig = res.plot(tmp_path / "load.png")
    assert len(fig.axes) == 3 + len(small_scenario.site.fuses) - 1 and (tmp_path / "load.png").stat().st_size > 10_000
    files = res.to_dir(tmp_path / "out", plot=False)
    assert [f.name for f in files] == ["timeseries.csv", "sessions.csv", "metrics.json"]
    back = pd.read_csv(files[0], index_col="time")
    assert len(back) == len(res.timeseries) and back.index[0].endswith("+01:00")


def test_bad_arguments():
    scn = _one_car_scenario()
    with pytest.raises(ValueError, match="needs"):
        simulate(scn, "equal", needs="maybe")
    with pytest.raises(ValueError, match="unknown policy"):
        simulate(scn, "nope")


# ---- random blocks, whole simulations ---------------------------------------------------------------
@st.composite
def random_scenarios(draw) -> Scenario:
    """A random fuse tree with random charging points, sessions over 6 hours, and base load."""
    n_f = draw(st.integers(1, 3))
    fuses = tuple(Fuse(f"F{i}", tuple(float(draw(st.integers(10, 120))) for _ in range(3)),
                       None if i == 0 else f"F{draw(st.integers(0, i - 1))}") for i in range(n_f))
    n_cp = draw(st.integers(1, 6))
    rot = ["L1L2L3", "L2L3L1", "L3L1L2", "L2L1L3"]
    cps = tuple(ChargePoint(f"CP{j}", f"F{draw(st.integers(0, n_f - 1))}", float(draw(st.sampled_from([16, 32]))),
                            6.0, draw(st.sampled_from([1, 3])), draw(st.sampled_from(rot))) for j in range(n_cp))
    site = Site("rnd", fuses, cps, max_unbalance_a=draw(st.one_of(st.none(), st.floats(5.0, 30.0))))
    rows = []
    for j in range(n_cp):
        a = T0 + pd.Timedelta(minutes=draw(st.integers(0, 180)))
        rows.append({"session_id": f"s{j}", "charge_point_id": f"CP{j}", "arrival": a,
                     "departure": a + pd.Timedelta(minutes=draw(st.integers(10, 300))),
                     "energy_kwh": draw(st.floats(0.0, 40.0)), "phases": draw(st.integers(1, 3)),
                     "max_current_a": float(draw(st.sampled_from([10, 16, 32]))),
                     "draw_fraction": draw(st.sampled_from([0.7, 1.0]))})
    # 9 h: the last departure is at most 8 h after T0; a base load ending inside the simulated
    # window is refused (it was filled with its largest value, and held before that).
    times = pd.date_range(T0, periods=54, freq="10min")
    base = pd.Series([draw(st.floats(0.0, 60.0)) for _ in range(len(times))], index=times, name="kw")
    return Scenario(site, pd.DataFrame(rows), base_load=base)


def _stale_two_phase_car_beside_a_one_phase_car() -> Scenario:
    """Found by this test (seed 6 at 150 examples): a 2-phase car on L1/L2 that arrives mid-step
    beside a 1-phase car wired to L3, a 5 A unbalance limit. The simulator then marked such a
    car stale in its first step, and the stale car's offer was left out of the rows the other car
    was made safe against: the L3 car was paused and the offers stood 9 A apart. The simulator
    no longer marks it stale; the untrusted car's case is
    ``tests/test_loop_step.py::test_offers_to_untrusted_cars_count_in_the_unbalance_limit``."""
    site = Site("rnd", (Fuse("F0", (10.0, 10.0, 10.0)),),
                (ChargePoint("CP0", "F0", 16.0, 6.0, 3, "L1L2L3"), ChargePoint("CP1", "F0", 16.0, 6.0, 1, "L1L2L3"),
                 ChargePoint("CP2", "F0", 16.0, 6.0, 1, "L3L1L2")), max_unbalance_a=5.0)
    m = pd.Timedelta(minutes=1)
    sessions = pd.DataFrame({"session_id": ["s1", "s2", "s0"], "charge_point_id": ["CP1", "CP2", "CP0"],
                             "arrival": [T0, T0, T0 + m], "departure": [T0 + 10 * m, T0 + 30 * m, T0 + 30 * m],
                             "energy_kwh": [0.0, 1.0, 1.0], "phases": [1, 1, 2], "max_current_a": 10.0,
                             "draw_fraction": 0.7})
    times = pd.date_range(T0, periods=36, freq="10min")
    return Scenario(site, sessions, base_load=pd.Series(0.0, index=times, name="kw"))


@settings(max_examples=int(os.environ.get("NB_SIM_EXAMPLES", 15)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scn=random_scenarios())
@example(scn=_stale_two_phase_car_beside_a_one_phase_car())
def test_random_blocks_are_never_overloaded_and_conserve_energy(scn):
    for policy in CONTROLLED:
        res = simulate(scn, policy, step="15min")
        assert res.metrics["max_overload_a"] == 0.0
        if scn.site.max_unbalance_a is not None:  # bounded on offers (cars may draw less)
            off = res.timeseries[["offered_L1_a", "offered_L2_a", "offered_L3_a"]].to_numpy()
            assert np.all(off.max(axis=1) - off.min(axis=1) <= scn.site.max_unbalance_a + 1e-6)
        dt_h = 0.25
        fuse = _fuse_currents_from_draws(res, scn, res.timeseries["base_load_max_kw"].to_numpy())
        allowed = np.broadcast_to(scn.site.limits_a, fuse.shape).copy()
        r0 = root_index(scn.site)
        allowed[:, r0] = np.maximum(allowed[:, r0], scn.site.base_load_phase_current_a(
            res.timeseries["base_load_max_kw"].to_numpy()))
        assert np.all(fuse <= allowed + 1e-6)
        got = res.sessions.set_index("session_id")["energy_delivered_kwh"]
        drawn = res.draws.groupby("session_id")["power_kw"].sum().reindex(got.index).fillna(0.0) * dt_h
        np.testing.assert_allclose(drawn, got, atol=1e-9)
        assert np.all(got <= res.sessions.set_index("session_id")["energy_requested_kwh"] + 1e-9)


# ---- the default NOW-Block ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_two_days():
    return Scenario.default(days=2)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["uncontrolled", *CONTROLLED])
def test_default_scenario_per_policy(default_two_days, policy):
    scn = default_two_days
    res = simulate(scn, policy)
    dt_h = res.step / pd.Timedelta(hours=1)
    assert res.draws["power_kw"].sum() * dt_h == pytest.approx(res.metrics["energy_delivered_kwh"])
    if policy == "uncontrolled":
        assert res.metrics["max_overload_a"] > 0.0  # the default block is congested
    else:
        assert res.metrics["max_overload_a"] == 0.0
        assert res.metrics["demand_met"] > 0.5
    assert set(PHASES) == {c.split("_")[1] for c in res.timeseries.columns if c.startswith("cars_")}


def test_a_start_or_end_without_offset_is_refused(small_scenario):
    """simulate(start="2026-10-25 01:00") was read as UTC without a word (02:00 in Dortmund),
    while nb.optimize and every file refuse a time without an offset, ambiguous twice a year
    (found by an outside test); a time with an offset or a tz-aware one still works."""
    t0 = small_scenario.start
    naive = t0.tz_convert(small_scenario.site.timezone).tz_localize(None)
    for kw in ({"start": naive.isoformat()}, {"start": naive}, {"end": (naive + pd.Timedelta("1h")).to_pydatetime()}):
        with pytest.raises(ValueError, match="(start|end): .* has no UTC offset"):
            simulate(small_scenario, "equal", **{"start": t0, "end": t0 + pd.Timedelta("1h"), **kw})
    res = simulate(small_scenario, "equal", start=t0.tz_convert(small_scenario.site.timezone).isoformat(),
                   end=t0 + pd.Timedelta("1h"))
    assert res.timeseries.index[0] == t0


def test_a_window_pandas_cannot_compute_in_is_refused(small_scenario):
    """simulate(end="9999-01-01T00:00Z") or a start in 1600 stopped with OutOfBoundsDatetime from
    deep inside the step grid (found by an outside test); the argument is named now."""
    t0 = small_scenario.start
    for kw in ({"start": "1600-01-01T00:00+00:00"}, {"end": "9999-01-01T00:00Z"}):
        with pytest.raises(ValueError, match=r"(start|end): .* is outside the times nowblock computes in "
                                             r"\(1677-09-23 to 2262-04-09 UTC"):
            simulate(small_scenario, "equal", **{"start": t0, "end": t0 + pd.Timedelta("1h"), **kw})
