"""The shared control step (nowblock.loop.step): trust, reservations, needs, and one path for
simulated and live blocks."""

from __future__ import annotations

from datetime import timezone

import numpy as np
import pandas as pd
import pytest

from nowblock.block.scenario import Scenario
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.control.live import LiveBlock, pilot_step_a
from nowblock.loop.needs import NeedsEstimation
from nowblock.loop.observation import Observation, observed_frame
from nowblock.loop.step import ControlStep, held_back
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.state import LiveState
from nowblock.policies import get_policy
from nowblock.seam import failsafe_current_a, violation_a
from nowblock.sim.block import SimulatedBlock

T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")
STEP = pd.Timedelta("5min")


def _site(root_a=32.0, n=4) -> Site:
    cps = tuple(ChargePoint(f"CP{i}", "grid", 16.0, 6.0) for i in range(n))
    return Site("t", (Fuse("grid", (root_a,) * 3),), cps)


def _obs(site, *, measured, offered, connected=None, last_meter_s=None, known=True, limit_known=None) -> Observation:
    n = len(measured)
    last = [T0 - pd.Timedelta(seconds=s) if s is not None else pd.NaT
            for s in (last_meter_s or [10.0] * n)]
    cols = {
        "session_id": [f"CP{i}:{i}" for i in range(n)], "charge_point_id": [f"CP{i}" for i in range(n)],
        "cp_index": np.arange(n), "phases": np.full(n, 3), "min_current_a": np.full(n, 6.0),
        "max_current_a": np.full(n, 16.0), "arrival": [T0 - pd.Timedelta(hours=1)] * n,
        "departure": [T0 + pd.Timedelta(hours=4)] * n if known else [pd.NaT] * n,
        "energy_requested_kwh": np.full(n, 40.0 if known else np.nan), "energy_delivered_kwh": np.full(n, 2.0),
        "measured_current_a": np.asarray(measured, float), "offered_current_a": np.asarray(offered, float),
        "needs_known": np.full(n, known), "last_meter": last,
        "connected": np.ones(n, bool) if connected is None else np.asarray(connected),
        "limit_known": np.ones(n, bool) if limit_known is None else np.asarray(limit_known),
    }
    base = pd.Series(np.zeros(12), index=pd.date_range(T0, periods=12, freq=STEP))
    return Observation(T0, site, STEP, observed_frame(cols), base)


def _step_with_sent(obs, sent_a) -> ControlStep:
    step = ControlStep()
    for sid, a in zip(obs.cars.index, sent_a):
        step.record_sent(sid, a, T0 - pd.Timedelta(minutes=2))
    return step


def test_cars_following_their_limits_are_all_trusted_and_planned():
    obs = _obs(_site(), measured=[8.0] * 4, offered=[8.0] * 4)
    step = _step_with_sent(obs, [8.0] * 4)
    snap, ctx = step.prepare(obs)
    assert ctx.untrusted == {} and ctx.safety is None and len(snap.cars) == 4
    x = step.finish(snap, ctx, get_policy("equal").schedule(snap))
    assert x.sum() == pytest.approx(32.0) and violation_a(snap, x) == 0.0


def test_a_car_drawing_more_than_its_limit_is_planned_lowered_and_the_others_kept_safe():
    # CP0 draws 16 A although its charger accepted 8 A: it gets its limit again (never raised),
    # and the others are made safe against the 17 A (draw plus margin) it may really take.
    obs = _obs(_site(), measured=[16.0, 8.0, 8.0, 8.0], offered=[8.0] * 4)
    step = _step_with_sent(obs, [8.0] * 4)
    snap, ctx = step.prepare(obs)
    assert ctx.untrusted == {"CP0:0": "over_draw"} and ctx.committed_a["CP0:0"] == pytest.approx(17.0)
    x = step.finish(snap, ctx, get_policy("equal").schedule(snap))
    assert "CP0:0" in x.index and x["CP0:0"] <= 8.0  # its share of the plan if it follows
    others = x.drop("CP0:0")
    assert others.sum() + 17.0 <= 32.0 + 1e-9
    assert ((others == 0) | (others >= 6.0)).all()


def test_a_charger_holding_more_than_it_was_sent_is_counted_at_it():
    obs = _obs(_site(), measured=[np.nan] * 4, offered=[16.0, 8.0, 8.0, 8.0])
    step = _step_with_sent(obs, [8.0] * 4)
    snap, ctx = step.prepare(obs)
    assert ctx.untrusted == {"CP0:0": "holding"} and ctx.committed_a["CP0:0"] == 16.0
    x = step.finish(snap, ctx, get_policy("equal").schedule(snap))
    assert x.drop("CP0:0").sum() + 16.0 <= 32.0 + 1e-9


def test_an_offline_charger_is_not_planned_and_its_limit_is_reserved():
    obs = _obs(_site(), measured=[8.0] * 4, offered=[12.0, 8.0, 8.0, 8.0], connected=[False, True, True, True])
    step = _step_with_sent(obs, [12.0, 8.0, 8.0, 8.0])
    snap, ctx = step.prepare(obs)
    assert "CP0:0" not in snap.cars.index and ctx.untrusted == {"CP0:0": "offline"}
    assert snap.site.limits_a[0].tolist() == [20.0] * 3  # 32 A less the 12 A it holds
    # Without a known limit it is counted at its maximum.
    obs2 = _obs(_site(), measured=[8.0] * 4, offered=[16.0] * 4, connected=[False, True, True, True],
                limit_known=[False, True, True, True])
    snap2, _ = _step_with_sent(obs2, [8.0] * 4).prepare(obs2)
    assert snap2.site.limits_a[0].tolist() == [16.0] * 3


def test_stale_meter_values_make_a_car_untrusted_at_its_limit_in_force():
    obs = _obs(_site(), measured=[8.0] * 4, offered=[8.0] * 4, last_meter_s=[600.0, 10.0, 10.0, 10.0])
    step = _step_with_sent(obs, [8.0] * 4)
    snap, ctx = step.prepare(obs)
    assert ctx.untrusted == {"CP0:0": "stale"} and ctx.committed_a["CP0:0"] == 8.0


def test_offers_to_untrusted_cars_count_in_the_unbalance_limit():
    # A stale 2-phase car on L1/L2 and a trusted 1-phase car wired to L3, 5 A unbalance limit:
    # the trusted car alone would break the limit, with the stale car's offer it does not. The
    # offers (the stale car's included) must hold the limit, and the L3 car is not paused for it.
    site = Site("t", (Fuse("grid", (10.0,) * 3),),
                (ChargePoint("CP0", "grid", 16.0, 6.0, phases=3),
                 ChargePoint("CP1", "grid", 16.0, 6.0, phases=1, phase_rotation="L3L1L2")),
                max_unbalance_a=5.0)
    cols = {
        "session_id": ["s0", "s1"], "charge_point_id": ["CP0", "CP1"], "cp_index": np.array([0, 1]),
        "phases": np.array([2, 1]), "min_current_a": np.full(2, 6.0), "max_current_a": np.full(2, 10.0),
        "arrival": [T0 - pd.Timedelta(minutes=14), T0 - pd.Timedelta(minutes=15)],
        "departure": [T0 + pd.Timedelta(minutes=30)] * 2, "energy_requested_kwh": np.full(2, 1.0),
        "energy_delivered_kwh": np.zeros(2), "measured_current_a": np.array([np.nan, 0.0]),
        "offered_current_a": np.zeros(2), "needs_known": np.ones(2, bool),
        "last_meter": [pd.NaT, T0], "connected": np.ones(2, bool), "limit_known": np.ones(2, bool),
    }
    base = pd.Series(np.zeros(12), index=pd.date_range(T0, periods=12, freq=STEP))
    obs = Observation(T0, site, STEP, observed_frame(cols), base)
    step = ControlStep()
    snap, ctx = step.prepare(obs)
    assert ctx.untrusted == {"s0": "stale"}
    x = step.finish(snap, ctx, pd.Series({"s0": 9.0, "s1": 10.0}))
    assert violation_a(snap, x) == 0.0  # fuse and unbalance rows, every offer counted
    assert x["s1"] >= 6.0 and x["s0"] >= 6.0
    # An answer that only the untrusted car's offer unbalances is lowered until it holds.
    x2 = step.finish(snap, ctx, pd.Series({"s0": 9.0, "s1": 0.0}))
    assert violation_a(snap, x2) == 0.0


def test_guessed_needs_never_pause_a_car_that_may_still_want_energy():
    class Lazy:  # a policy that leaves everyone paused
        name = "lazy"

        def schedule(self, snapshot):
            return pd.Series(0.0, index=snapshot.cars.index)

    obs = _obs(_site(), measured=[0.0] * 4, offered=[0.0] * 4, known=False)
    step = ControlStep()
    snap, ctx = step.prepare(obs)
    assert not snap.cars["needs_known"].any()
    x = step.finish(snap, ctx, Lazy().schedule(snap))
    assert x.sum() > 0 and ((x == 0) | (x >= 6.0)).all() and violation_a(snap, x) == 0.0


def test_held_back_explains_unused_capacity():
    obs = _obs(_site(root_a=80.0), measured=[16.0, 8.0, 8.0, 8.0], offered=[8.0] * 4)
    step = _step_with_sent(obs, [8.0] * 4)
    snap, ctx = step.prepare(obs)
    x = step.finish(snap, ctx, get_policy("equal").schedule(snap))
    hb = held_back(snap, ctx, x)
    assert hb["untrusted"] == {"over_draw": 1} and hb["reserved_untrusted_a"] == pytest.approx(17.0)
    # Every car is planned at its 16 A maximum; CP0, drawing twice its limit, is sent half its
    # share (8 A: it draws its 16 A). 80 - 17 - 48 A are left (CP0 counted at the 17 A it may
    # really draw) and nobody waits.
    assert list(x) == [8.0, 16.0, 16.0, 16.0]
    assert hb["cars_at_max"] == 3 and hb["unused_a"] == pytest.approx(15.0) and hb["cars_waiting"] == 0


def test_pilot_step_follows_the_protocol_versions():
    assert pilot_step_a(["1.6", "1.6"]) == 0.1
    assert pilot_step_a(["1.6", "2.0.1"]) == 1.0
    assert pilot_step_a([]) == 1.0


def test_simulated_and_live_blocks_give_the_same_snapshot():
    """A simulated week measures what live control would do: the same situation, reported by
    the simulator's block and by the live OCPP state, becomes the same policy snapshot."""
    site = _site(root_a=32.0, n=2)
    sessions = pd.DataFrame({
        "session_id": ["a", "b"], "charge_point_id": ["CP0", "CP1"], "arrival": [T0, T0],
        "departure": [T0 + pd.Timedelta(hours=6)] * 2, "energy_kwh": [30.0, 10.0], "max_current_a": [16.0, 16.0],
        "draw_fraction": [1.0, 0.5]})
    scn = Scenario(site, sessions)
    sim = SimulatedBlock(scn, step=STEP, horizon=pd.Timedelta("1h"), start=T0, end=T0 + pd.Timedelta(hours=6),
                         needs_known=False)
    sim.apply(T0, pd.Series({"a": 16.0, "b": 16.0}))  # one step at 16 A: b draws 8 A
    now = T0 + STEP
    sim_obs = sim.observe(now)

    state = LiveState(site, clock=lambda: now.to_pydatetime())
    delivered = sim.delivered
    for i, (sid, cp) in enumerate([("a", "CP0"), ("b", "CP1")]):
        state.on_connect(cp, "2.0.1")
        state.on_start(cp, 1, sid, start=T0.to_pydatetime(), meter_start_wh=0.0)
        state.on_profile_accepted(cp, 1, pr.build_profile("2.0.1", pr.TX, 16.0, connector_id=1, transaction_id=sid,
                                                          now=T0.to_pydatetime()))
        a = sim.measured[i]
        state.on_meter(cp, 1, sid, {"energy_wh": 1000.0 * delivered[i], "current_l1_a": a, "current_l2_a": a,
                                    "current_l3_a": a}, now.to_pydatetime())
    live = LiveBlock(state, site, step=STEP, horizon=pd.Timedelta("1h"), failsafe_a=failsafe_current_a(site))
    live_obs = live.observe(now)

    def prepared(obs):
        step = ControlStep(needs=NeedsEstimation())
        for sid in obs.cars.index:
            step.record_sent(sid, 16.0, T0)
        return step.prepare(obs)

    s1, c1 = prepared(sim_obs)
    s2, c2 = prepared(live_obs)
    ids = {"a": "CP0:a", "b": "CP1:b"}
    cols = ["cp_index", "phases", "min_current_a", "max_current_a", "energy_requested_kwh", "energy_delivered_kwh",
            "measured_current_a", "offered_current_a", "priority", "needs_known"]
    left = s1.cars[cols].rename(index=ids)
    right = s2.cars[cols].loc[left.index]
    pd.testing.assert_frame_equal(left, right, check_dtype=False, check_names=False)
    assert (s1.cars["departure"].rename(index=ids) == s2.cars["departure"].loc[left.index]).all()
    assert left.loc["CP1:b", "max_current_a"] < 16.0  # b drew half: its ceiling came down, in both
    assert c1.untrusted == c2.untrusted == {}
    assert s1.current_step_a == 1.0 and s2.current_step_a == pilot_step_a(["2.0.1"])
    assert now.tzinfo is not None and now.tz_convert(timezone.utc) == now


def test_a_simulated_car_that_plugged_in_within_a_step_is_trusted_in_its_first():
    """A car that arrives mid-step is first observed at the next step's start, before it drew:
    its simulated charger reports then, so it is not stale (it was: every mid-step arrival of a
    simulated week took the untrusted path of a silent charger in its first step)."""
    site = _site(root_a=32.0, n=2)
    step15 = pd.Timedelta("15min")
    sessions = pd.DataFrame({
        "session_id": ["early", "late"], "charge_point_id": ["CP0", "CP1"],
        "arrival": [T0, T0 + pd.Timedelta(minutes=1)], "departure": [T0 + pd.Timedelta(hours=6)] * 2,
        "energy_kwh": [30.0, 10.0], "max_current_a": [16.0, 16.0]})
    sim = SimulatedBlock(Scenario(site, sessions), step=step15, horizon=pd.Timedelta("1h"), start=T0,
                         end=T0 + pd.Timedelta(hours=6), needs_known=True)
    step = ControlStep()
    snap, ctx = step.prepare(sim.observe(T0))
    assert list(snap.cars.index) == ["early"]
    step.record_sent("early", 16.0, T0)
    sim.apply(T0, pd.Series({"early": 16.0}))
    obs = sim.observe(T0 + step15)  # "late" plugged in 14 min ago, longer than stale_after_s
    assert step.settings.stale_after_s < 14 * 60
    assert np.isnan(obs.cars.loc["late", "measured_current_a"])  # no draw yet
    snap, ctx = step.prepare(obs)
    assert list(snap.cars.index) == ["early", "late"]
    assert ctx.untrusted == {} and ctx.safety is None


def test_a_car_above_both_its_new_and_its_old_limit_is_over_drawing_at_once():
    obs = _obs(_site(), measured=[16.0, 10.0, 8.0, 8.0], offered=[8.0] * 4)
    step = ControlStep()
    for sid, old in zip(obs.cars.index, [10.0, 10.0, 8.0, 8.0]):
        step.record_sent(sid, old, T0 - pd.Timedelta(minutes=5))
        step.record_sent(sid, 8.0, T0 - pd.Timedelta(seconds=2))  # changed just now: not settled yet
    _, ctx = step.prepare(obs)
    # CP0 draws 16 A: above the new 8 A and the old 10 A. CP1 draws its old 10 A: it may still
    # be ramping down, so it is not held against it before the new limit had time to act.
    assert ctx.untrusted == {"CP0:0": "over_draw"}


class _HalfKnowing:
    """An estimator that knows the first car only (the others' estimates are missing)."""

    def predict_needs(self, cars, time):
        dep = pd.Series(pd.NaT, index=cars.index, dtype="datetime64[ns, UTC]")
        energy = pd.Series(np.nan, index=cars.index)
        dep.iloc[0] = T0 + pd.Timedelta("3h")
        energy.iloc[0] = 12.0
        return pd.DataFrame({"departure": dep, "energy_kwh": energy})


def test_estimated_needs_say_where_they_came_from():
    """Reported needs carry no mark; an estimator's answer is "fitted", a gap it left and
    the fallback rule's guesses are "fallback" (the MILP plans only the fitted ones)."""
    site = _site()
    unknown = _obs(site, measured=[np.nan] * 3, offered=[0.0] * 3, known=False)
    fb = NeedsEstimation().fill(unknown.cars, T0, full=set(), step=STEP)
    assert list(fb["needs_estimate"]) == ["fallback"] * 3
    mixed = NeedsEstimation(_HalfKnowing()).fill(unknown.cars, T0, full=set(), step=STEP)
    assert list(mixed["needs_estimate"]) == ["fitted", "fallback", "fallback"]
    assert mixed["energy_requested_kwh"].iloc[0] == 12.0 and mixed["energy_requested_kwh"].iloc[1] == 15.0
    known = _obs(site, measured=[np.nan] * 3, offered=[0.0] * 3, known=True)
    assert "needs_estimate" not in NeedsEstimation().fill(known.cars, T0, full=set(), step=STEP)


def test_a_car_offered_its_minimum_for_the_first_time_is_full_once_start_s_passed_since_it_was_sent():
    """Found by an outside test: "not seen drawing since its offer rose to its minimum" counted
    from the step that first saw the offer, not from when it was sent; the simulator's cars full
    from the start were offered their minimum a step longer (4.6 points of demand met with
    unknown needs on the workplace week). Counted from the send now; after a restart (nothing
    sent by this process) from the first observation, as before."""
    obs = _obs(_site(), measured=[0.0, 0.0, 8.0, 8.0], offered=[6.0, 6.0, 8.0, 8.0], last_meter_s=[0.0] * 4)
    step = ControlStep()
    step.record_sent("CP0:0", 6.0, T0 - pd.Timedelta(minutes=5))  # a step of 5 min ago: 300 s >= start_s
    step.prepare(obs)
    assert "CP0:0" in step.full
    assert "CP1:1" not in step.full  # not sent by this process (a restart): waits start_s from now


def test_a_car_drawing_at_a_zero_limit_leaves_its_room_to_the_others():
    """Found by an outside test: a car drawing 8 A at a 0 A limit was planned up to its maximum,
    its share then divided to 0 A, and that room went to nobody (22 of 40 A unused while two
    cars waited). It is planned at what it draws; the others get the rest."""
    obs = _obs(_site(root_a=40.0, n=3), measured=[8.0, 8.0, 8.0], offered=[0.0, 8.0, 8.0])
    step = _step_with_sent(obs, [0.0, 8.0, 8.0])
    snap, ctx = step.prepare(obs)
    assert ctx.untrusted == {"CP0:0": "over_draw"}
    x = step.finish(snap, ctx, get_policy("equal").schedule(snap))
    assert x["CP0:0"] == 0.0
    # 40 A less the 9 A it may draw (8 A plus the margin): 31 A for the two others, in whole
    # amperes (planned at its 16 A maximum, it took a third of the 40 A: 13 A each for them).
    assert x.drop("CP0:0").sum() >= 31.0 - 2.0


@pytest.mark.parametrize("left_kwh, measured, light, heavy", [
    (0.01, 10.0, 10.0, 20.0),  # nearly full: it draws ~0.4 A on average this step, not its 10 A offer
    (30.0, 10.0, 10.0, 30.0),  # far from full, drawing its offer: it carries its 10 A on L2 and L3
    (30.0, 4.0, 6.0, 24.0),    # a tapering battery drawing 4 A (offered its minimum now): 4 A counted
])
def test_a_light_side_car_counts_in_the_unbalance_limit_at_what_it_will_draw(left_kwh, measured, light, heavy):
    """Found by an outside test: a car on the light side of the unbalance limit was counted at its
    offer, but one nearly full draws its remaining energy over the step (offered 11 A, it drew
    1.6 A; the grid's phases ended 29 A apart under a 20 A limit)."""
    site = Site("t", (Fuse("grid", (63.0,) * 3),),
                (ChargePoint("CP0", "grid", 32.0, 6.0, phases=1, phase_rotation="L1L2L3"),
                 ChargePoint("CP1", "grid", 32.0, 6.0, phases=3, phase_rotation="L2L3L1")),
                max_unbalance_a=20.0)
    cols = {
        "session_id": ["heavy", "light"], "charge_point_id": ["CP0", "CP1"], "cp_index": np.array([0, 1]),
        "phases": np.array([1, 2]), "min_current_a": np.full(2, 6.0), "max_current_a": np.full(2, 32.0),
        "arrival": [T0 - pd.Timedelta(hours=1)] * 2, "departure": [T0 + pd.Timedelta(hours=8)] * 2,
        "energy_requested_kwh": np.array([30.0, 30.0]), "energy_delivered_kwh": np.array([0.0, 30.0 - left_kwh]),
        "measured_current_a": np.array([32.0, measured]), "offered_current_a": np.array([32.0, 10.0]),
        "needs_known": np.ones(2, bool), "last_meter": [T0, T0], "connected": np.ones(2, bool),
        "limit_known": np.ones(2, bool),
    }
    base = pd.Series(np.zeros(12), index=pd.date_range(T0, periods=12, freq=STEP))
    step = ControlStep()
    for sid, a in (("heavy", 32.0), ("light", 10.0)):
        step.record_sent(sid, a, T0 - pd.Timedelta(minutes=2))
    snap, ctx = step.prepare(Observation(T0, site, STEP, observed_frame(cols), base))
    x = step.finish(snap, ctx, pd.Series({"heavy": 32.0, "light": 10.0}))
    assert x["light"] == light
    # L1 at most 20 A above what the 2-phase car on L2 and L3 really draws, and no lower.
    assert x["heavy"] == heavy


def test_an_unsettled_reading_never_lowers_a_known_over_draw_ratio():
    """Found by a review: a step 5 s after a car drawing 1.5 x its limit was lowered from 20 to 18 A
    measured its ratio over the older 20 A (1.35) and sent it 20 A: 30 A on a 27 A feeder."""
    site = Site("t", (Fuse("grid", (63.0,) * 3), Fuse("feeder", (27.0,) * 3, "grid")),
                (ChargePoint("CP0", "feeder", 32.0, 6.0),))

    def obs(t, offered, measured):
        cols = {"session_id": ["a"], "charge_point_id": ["CP0"], "cp_index": np.arange(1), "phases": np.full(1, 3),
                "min_current_a": np.full(1, 6.0), "max_current_a": np.full(1, 32.0),
                "arrival": [T0 - pd.Timedelta(hours=1)], "departure": [T0 + pd.Timedelta(hours=3)],
                "energy_requested_kwh": np.full(1, 60.0), "energy_delivered_kwh": np.full(1, 2.0),
                "measured_current_a": np.array([measured]), "offered_current_a": np.array([offered]),
                "needs_known": np.ones(1, bool), "last_meter": [t - pd.Timedelta(seconds=1)],
                "connected": np.ones(1, bool), "limit_known": np.ones(1, bool)}
        return Observation(t, site, STEP, observed_frame(cols),
                           pd.Series(np.zeros(12), index=pd.date_range(t, periods=12, freq=STEP)))

    step = ControlStep()
    step.record_sent("a", 20.0, T0 - pd.Timedelta(minutes=1))
    snap, ctx = step.prepare(obs(T0, 20.0, 30.0))  # settled: 1.5 x its limit
    x = step.finish(snap, ctx, get_policy("edf").schedule(snap))["a"]
    assert x == 18.0 and 1.5 * x <= 27.0
    step.record_sent("a", x, T0)
    t2 = T0 + pd.Timedelta(seconds=5)  # before the new limit settled; it draws 1.5 x 18 A already
    snap, ctx = step.prepare(obs(t2, x, 1.5 * x))
    assert ctx.over_draw_ratio["a"] == pytest.approx(1.5)
    x2 = step.finish(snap, ctx, get_policy("edf").schedule(snap))["a"]
    assert 1.5 * x2 <= 27.0


def test_a_car_offered_its_minimum_again_after_a_pause_with_no_new_send_waits_start_s():
    """Found by a review: the full-car wait counted from the last send, also when the car's offer
    had fallen below its minimum since (a station maximum) and just came back: taken for full at
    once, and with guessed needs for good."""
    site = _site(root_a=32.0, n=1)
    step = ControlStep()
    step.record_sent("CP0:0", 16.0, T0 - pd.Timedelta(minutes=30))

    def at(minutes, offered, measured):
        o = _obs(site, measured=[measured], offered=[offered], known=False, last_meter_s=[2.0])
        t = o.time + pd.Timedelta(minutes=minutes)
        o = Observation(t, o.site, o.step, o.cars.assign(last_meter=t - pd.Timedelta(seconds=2)), o.base_load_kw)
        step.prepare(o)
        return "CP0:0" in step.full

    assert not at(0, 16.0, 16.0)  # charging
    assert not at(1, 0.0, 0.0)  # held at 0 A by a station maximum, no new send
    assert not at(2, 16.0, 0.0)  # offered again, not started yet: not full before start_s
    assert at(5, 16.0, 0.0)  # still nothing after start_s: full


def test_a_new_sessions_first_reading_under_its_idle_default_is_not_an_over_draw_at_once():
    # /tmp/s37/m13: a twin EVSE's car started 1 ms after its EVSE's 0 A idle default was accepted,
    # its first reading (16 A, drawn under the limit its charger held before) was judged over
    # at once (no limit before it was known: NaN), sent 0 A and paused for good (2-3 of 4 runs of
    # test_the_two_evses_of_a_32_a_point_get_32_a_in_all_not_each). A car is over at once only
    # above both its limit and what its charger may have held before, at most its maximum.
    obs = _obs(_site(), measured=[16.0, 8.0], offered=[0.0, 8.0], last_meter_s=[0.0, 0.0])
    obs.cars["arrival"] = T0 - pd.Timedelta(seconds=1)
    snap, ctx = ControlStep().prepare(obs)
    assert "CP0:0" not in ctx.untrusted and "CP0:0" not in set(ctx.over_draw_ratio.index)
    # drawing above both a limit and its maximum is still over at once
    obs = _obs(_site(), measured=[20.0, 8.0], offered=[0.0, 8.0], last_meter_s=[0.0, 0.0])
    obs.cars["arrival"] = T0 - pd.Timedelta(seconds=1)
    _, ctx = ControlStep().prepare(obs)
    assert ctx.untrusted.get("CP0:0") == "over_draw"
