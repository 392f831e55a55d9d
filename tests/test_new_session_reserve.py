"""A new session's over-draw reserve (loop/reserve.py) in the step's bounds: when it is freed
and what it is counted in (review rev4 of 197a73a)."""

from dataclasses import replace

import numpy as np
import pytest
import pandas as pd

from nowblock.loop import reserve
from nowblock.loop.step import ControlStep
from nowblock.policies import get_policy

from test_loop_step import T0, _obs, _site

ROOT_A = 40.0
OVER_A = 1.5  # each car draws its limit plus this once it has ramped up (within over_draw_a)


def _new_obs(site, t, measured, offered):
    o = _obs(site, measured=measured, offered=offered)
    o.cars["arrival"] = t - pd.Timedelta(seconds=2)
    o.cars["last_meter"] = t - pd.Timedelta(seconds=0.1)
    return replace(o, time=t)


def test_a_reading_taken_while_a_new_car_ramps_up_frees_no_reserve():
    # Four new cars on 40 A are raised from nothing to 8 A (their 10 A share less the 2 A
    # reserve). 3 s later, within the settle window, each reads 1 A under its offer: still
    # ramping, on its way to its limit + 1.5 A. That reading tells nothing of its excess: the
    # reserve stays, and what the cars may draw at the limits sent stays within the fuse.
    site = _site(root_a=ROOT_A, n=4)
    pol = get_policy("equal")
    step = ControlStep()
    sent = step.run(pol, _new_obs(site, T0, [0.0] * 4, [0.0] * 4), fallback=pol).current_a.to_numpy()
    assert step.reserve_a and (sent + OVER_A).sum() <= ROOT_A + 1e-6
    t = T0 + pd.Timedelta(seconds=3)
    ramp = list(sent - 1.0)
    sid = next(iter(step.reserve_a))
    assert not reserve.meter_departs(step, sid, ramp[0], t)
    out = step.run(pol, _new_obs(site, t, ramp, list(sent)), fallback=pol).current_a.to_numpy()
    assert set(step.reserve_a) == {f"CP{i}:{i}" for i in range(4)}
    assert (out + OVER_A).sum() <= ROOT_A + 1e-6  # 46.0 A when the ramp freed it
    # A reading at its offer still tells it (the car draws its limit + 1.5 A over it later:
    # learnt then from a reading over its limit plus nothing reserved).
    t2 = t + pd.Timedelta(seconds=2)
    assert reserve.meter_departs(step, sid, float(out[0]), t2)
    step.run(pol, _new_obs(site, t2, list(out), list(out)), fallback=pol)
    assert not step.reserve_a


async def test_the_repair_around_a_held_limit_counts_the_held_cars_reserve_too():
    # A new session whose charger keeps a higher limit (its 32 A maximum) may draw up to its
    # over_draw_a (2 A) over it like any new session: the other car is repaired around 34 A,
    # not 32 A (32 + (6 + 2) = 40 A counted, 33.5 + 7.5 = 41.0 A drawn at limit + 1.5 A).
    from test_control import FakeCentral, Clock, _start, _site as _ctl_site, _controller

    site = _ctl_site(root_a=ROOT_A, n=2)
    cs, clock = FakeCentral(site), Clock()
    _start(cs, clock, 2, needs={0: (3, 40.0), 1: (3, 40.0)})
    ctl = _controller(cs, clock, policy="equal")
    cs.keep_limit.add("CP0")  # answers, but its maximum (32 A) stays in force
    res = await ctl.step()
    assert res.current_a["CP0:tx0"] == 32.0
    reserve_a = ctl.loop.reserve_a
    assert reserve_a.get("CP0:tx0", 0.0) > 0.0  # its excess is still unknown
    held = {s: cs.state.applied_limit_a(s.split(":")[0], 1) for s in res.current_a.index}
    in_force = {s: 32.0 if a is None else a for s, a in held.items()}
    # What each may draw: its limit plus its reserve where it runs (at its minimum at least).
    may_draw = sum(a + reserve_a.get(s, 0.0) for s, a in in_force.items() if a >= 6.0)
    assert may_draw <= ROOT_A + 1e-6, (in_force, reserve_a)


def test_a_new_single_phase_car_draws_within_the_unbalance_limit_anywhere_in_its_reserve():
    # A new single-phase car on L1 is planned at its limit + 2 A (its reserve) but may draw just
    # its limit: the cars on L2 and L3 were raised to within 4 A of the upper bound, so the
    # phases stood 6.0 A apart when it drew its limit. Anywhere from its limit to its limit +
    # reserve, the phases now stay within the limit.
    from nowblock.block.site import ChargePoint, Fuse, Site

    unbalance_a = 4.0
    cps = (ChargePoint("CP0", "grid", 8.0, 6.0, phases=1, phase_rotation="L1L2L3"),
           ChargePoint("CP1", "grid", 16.0, 6.0, phases=1, phase_rotation="L2L3L1"),
           ChargePoint("CP2", "grid", 16.0, 6.0, phases=1, phase_rotation="L3L1L2"))
    site = Site("t", (Fuse("grid", (100.0,) * 3),), cps, max_unbalance_a=unbalance_a)
    o = _obs(site, measured=[0.0, 12.0, 12.0], offered=[0.0, 12.0, 12.0])
    o.cars["phases"] = 1
    o.cars["max_current_a"] = [8.0, 16.0, 16.0]
    o.cars["arrival"] = [T0 - pd.Timedelta(seconds=2)] + [T0 - pd.Timedelta(hours=1)] * 2  # CP0's is new
    o.cars["last_meter"] = T0 - pd.Timedelta(seconds=0.1)
    step = ControlStep()
    for sid in ("CP1:1", "CP2:2"):
        step.record_sent(sid, 12.0, T0 - pd.Timedelta(minutes=2))
    pol = get_policy("equal")
    x = step.run(pol, o, fallback=pol).current_a
    reserve_a = step.reserve_a.get("CP0:0", 0.0)
    assert reserve_a > 0.0 and x["CP0:0"] >= 6.0  # the new car runs, its excess unknown
    for over in np.linspace(0.0, reserve_a, 5):  # one phase per car
        drawn = np.array([x["CP0:0"] + over, x["CP1:1"], x["CP2:2"]])
        assert drawn.max() - drawn.min() <= unbalance_a + 1e-6, (over, x.to_dict())


def _lowered_from_tx_default(held_a=13.0, n=3):
    """Three new cars on 40 A whose chargers applied a 13 A TxDefault before their first limit
    (drawn so): their first limits, 11 or 12 A ((40 - 3 x 2) / 3 in whole amperes), lower it."""
    site = _site(root_a=ROOT_A, n=n)
    pol = get_policy("equal")
    step = ControlStep()
    first = step.run(pol, _new_obs(site, T0, [held_a] * n, [held_a] * n), fallback=pol).current_a
    assert step.reserve_a and (first < held_a).all() and (first > 0).all(), first.to_dict()
    return site, pol, step, first


def _read(site, step, pol, t, measured, offered, taken=None):
    """A step at ``t`` [UTC] on readings ``measured`` [A] taken at ``taken`` (0.1 s before)."""
    o = _new_obs(site, t, list(measured), list(offered))
    o.cars["last_meter"] = t - pd.Timedelta(seconds=0.1) if taken is None else taken
    return step.run(pol, o, fallback=pol).current_a


def test_two_readings_at_a_lowered_first_limit_free_the_reserve_before_it_settled():
    # Before session 39: after a lowering only a settled reading (15 s after the last change)
    # told the excess, and the equal policy's rotation of the last pilot step moved each car's
    # limit 11 <-> 12 A every few seconds: the 2 A stayed held until luck (1.5 to 18.7 s). Now
    # two readings at the limit in force, 10 s apart and not rising, tell it (13 s < settle_s).
    site, pol, step, first = _lowered_from_tx_default()
    sid = first.index[0]
    t = T0 + pd.Timedelta(seconds=3)
    assert reserve.meter_departs(step, sid, float(first[sid]), t)  # wakes a step: the first of a pair
    out = _read(site, step, pol, t, first, first)
    assert set(step.reserve_a) == set(first.index) and (out == first).all()
    t = T0 + pd.Timedelta(seconds=13)
    assert reserve.meter_departs(step, sid, float(first[sid]), t)
    out = _read(site, step, pol, t, first, first)
    assert not step.reserve_a and step.learnt == set(first.index)
    assert not step.excess_a and not step.offer_reads
    assert out.sum() == ROOT_A  # 40 A to share, none reserved


def test_readings_over_a_lowered_first_limit_are_learnt_as_its_excess():
    # A car read twice at its lowered limit + 1.5 A draws that much over it (or still comes
    # down from the 13 A before): its excess is 1.5 A, not the 0 A that next_excess_a's rule
    # for readings not settled gives (over the higher of both limits), which counted it at its
    # limit.
    site, pol, step, first = _lowered_from_tx_default()
    drawn = first + OVER_A
    _read(site, step, pol, T0 + pd.Timedelta(seconds=3), drawn, first)
    assert set(step.reserve_a) == set(first.index)
    out = _read(site, step, pol, T0 + pd.Timedelta(seconds=13), drawn, first)
    assert not step.reserve_a
    assert step.excess_a == pytest.approx({sid: OVER_A for sid in first.index})
    assert (out.to_numpy() + OVER_A).sum() <= ROOT_A + 1e-6  # what they draw at the limits sent


def test_a_new_car_ramping_up_through_its_lowered_first_limit_frees_no_reserve():
    # Review rev1 of 9d3cd10: three cars plugged in under their chargers' 13 A TxDefault, not
    # read yet at the first step (their first limits, 11/12 A, booked as lowerings), still
    # ramping up from 0 A: read 0.2 A under their limits on the way up. That one reading freed
    # their 2 A each; they climbed on to their limits + 2 A: 46 A on the 40 A fuse until the
    # next reading (sims: 16 of 60 runs over, up to 30 s). Now the next readings, risen by 1.2 A
    # then 1.0 A (a slower ramp), tell nothing either; the one after, not rising, tells 2 A.
    over_a = 2.0
    site = _site(root_a=ROOT_A, n=3)
    pol = get_policy("equal")
    step = ControlStep()
    first = _read(site, step, pol, T0, [np.nan] * 3, [13.0] * 3, taken=pd.NaT)
    assert step.reserve_a and not any(reserve.raised(step, sid) for sid in first.index)
    out = _read(site, step, pol, T0 + pd.Timedelta(seconds=3), first - 0.2, first)
    assert set(step.reserve_a) == set(first.index)
    assert (out.to_numpy() + over_a).sum() <= ROOT_A + 1e-6  # 46.0 A when that reading freed it
    for s, over in ((13, 1.0), (14, over_a)):
        out = _read(site, step, pol, T0 + pd.Timedelta(seconds=s), out + over, out)
        assert set(step.reserve_a) == set(first.index), s
        assert (out.to_numpy() + over_a).sum() <= ROOT_A + 1e-6
    out = _read(site, step, pol, T0 + pd.Timedelta(seconds=14.5), out + over_a, out)  # still before settle_s
    assert not step.reserve_a and step.excess_a == pytest.approx({sid: over_a for sid in first.index})
    assert (out.to_numpy() + over_a).sum() <= ROOT_A + 1e-6


def test_an_excess_told_on_the_way_down_falls_at_its_first_settled_reading_at_once():
    # Review rev1 of 9d3cd10 (F2): readings taken while a car comes down from the 13 A before
    # tell too much; the fall rule lowers it at a settled reading, but no step was woken for
    # that reading: the A held too many waited for the period's step (2.4 A for 60 s). Here two
    # readings on a slow way down tell 1.5 A, then a settled one shows 0.2 A.
    site, pol, step, first = _lowered_from_tx_default()
    _read(site, step, pol, T0 + pd.Timedelta(seconds=3), first + 1.7, first)
    out = _read(site, step, pol, T0 + pd.Timedelta(seconds=13), first + 1.5, first)
    assert not step.reserve_a and step.excess_a == pytest.approx({sid: 1.5 for sid in first.index})
    sid, t = first.index[0], T0 + pd.Timedelta(seconds=30)  # the limits sent at 13 s settled
    assert reserve.meter_departs(step, sid, float(out[sid]) + 0.2, t)  # 1.3 A under its excess
    assert not reserve.meter_departs(step, sid, float(out[sid]) + 1.4, t)  # within the hysteresis
    _read(site, step, pol, t, out + 0.2, out)
    assert step.excess_a == pytest.approx({sid: 0.2 for sid in first.index})


def test_readings_not_under_the_lowered_limit_in_force_tell_nothing():
    # The two guards of reserve.tells_unsettled, each on its own (review rev1 of 9d3cd10: no test
    # failed without them). A reading taken before the change, at the new limit, then one in
    # force: not two readings in force, nothing told (a car ramping up under the 13 A before may
    # pass its new limit on its way up).
    site, pol, step, first = _lowered_from_tx_default()
    _read(site, step, pol, T0 + pd.Timedelta(seconds=3), first - 0.1, first, taken=T0 - pd.Timedelta(seconds=1))
    _read(site, step, pol, T0 + pd.Timedelta(seconds=13), first - 0.1, first)
    assert set(step.reserve_a) == set(first.index)
    # Its charger reports 1 A less than the limit sent applied (not that limit: a charger found
    # holding more is untrusted instead): readings at that offer, 1 A under the limit sent, tell
    # nothing of what it draws over the limit sent.
    site, pol, step, first = _lowered_from_tx_default()
    for s in (3, 13):
        step.prepare(_new_obs(site, T0 + pd.Timedelta(seconds=s), list(first - 1.0), list(first - 1.0)))
        assert set(step.reserve_a) == set(first.index) and not step.learnt


def test_a_reading_before_a_lowered_limit_came_into_force_or_far_from_it_tells_nothing():
    site, pol, step, first = _lowered_from_tx_default()
    t = T0 + pd.Timedelta(seconds=3)
    at = first.to_numpy()
    # Still the 13 A before in force (its charger has not applied the new limit: counted at
    # what it holds meanwhile): no excess told.
    step.prepare(_new_obs(site, t, [13.0] * 3, [13.0] * 3))
    assert not step.learnt
    # Under the new limit in force but over it by more than over_draw_a (the 13 A before + 1.5 A):
    # not told (judged at its first settled reading), and no wake-up for it.
    assert not reserve.meter_departs(step, first.index[0], float(at[0]) + 2.5, t)
    step.prepare(_new_obs(site, t, list(at + 2.5), list(at)))
    assert set(step.reserve_a) == set(first.index)
    # Under it by more than the hysteresis: a car still ramping up tells nothing.
    assert not reserve.meter_departs(step, first.index[0], float(at[0]) - 1.0, t)
    step.prepare(_new_obs(site, t, list(at - 1.0), list(at)))
    assert set(step.reserve_a) == set(first.index)


@pytest.mark.parametrize("policy", ["equal", "round_robin"])
@pytest.mark.parametrize("over_a", [0.0, 2.0])
def test_a_new_car_paused_by_its_reserve_runs_first_and_is_freed(policy, over_a):
    # Three new cars on 18 A: at their minimum plus the 2 A reserve (3 x 8 A) one is paused; the
    # other two are read at their limit and freed. Before, the paused car was never read (no
    # offer), its reserve never freed, and 6 + 6 + 8 A never fit again: 9 + 9 A and the third
    # paused for good, where without the reserve all three ran at 6 A. Now it runs first (a
    # learnt car is paused instead), is read at its limit, freed, and all three run. Whatever
    # the cars draw up to their limit + 2 A (over_a), the fuse holds at every step (at + 2 A
    # two learnt cars leave no room for a third at its minimum, reserve or not: it waits).
    site = _site(root_a=18.0, n=3)
    pol = get_policy(policy)
    step = ControlStep()
    out = step.run(pol, _new_obs(site, T0, [0.0] * 3, [0.0] * 3), fallback=pol).current_a.to_numpy()
    assert (out > 0).sum() == 2  # one paused for its reserve
    paused = f"CP{int(np.flatnonzero(out == 0)[0])}:{int(np.flatnonzero(out == 0)[0])}"
    for k in range(1, 5):
        t = T0 + pd.Timedelta(seconds=3 * k)
        # Each running car draws its limit + over_a, read after the limit came into force.
        meas = [a + over_a if a > 0 else 0.0 for a in out]
        assert sum(meas) <= 18.0 + 1e-6
        may_draw = [a + (step.reserve_a.get(f"CP{i}:{i}", 0.0) or step.excess_a.get(f"CP{i}:{i}", 0.0))
                    for i, a in enumerate(out) if a > 0]
        assert sum(may_draw) <= 18.0 + 1e-6, (k, out, step.reserve_a, step.excess_a)
        out = step.run(pol, _new_obs(site, t, meas, list(out)), fallback=pol).current_a.to_numpy()
        if k == 1 and over_a == 0.0:
            assert out[int(paused[2])] >= 6.0  # the paused new car runs, to be read
    if over_a == 0.0:
        assert not step.reserve_a  # every car's excess learnt
        assert list(out) == [6.0, 6.0, 6.0]  # as without the reserve


@pytest.mark.parametrize("reported_a", [13.0, 0.0])  # what the charger reports applying when first seen
def test_a_reading_under_the_tx_default_before_a_first_limit_is_no_excess(reported_a):
    # Three new cars on 40 A drew nothing when first seen, their chargers holding a 13 A
    # TxDefault: each first limit (11 or 12 A) counts as a raise from 0 A. A reading of 13 A taken
    # before that limit was sent (the car started under the TxDefault) was judged over the new
    # limit alone: 1 - 2 A of excess, learnt at once and kept until a settled reading (which the
    # equal policy's 11 <-> 12 A rotation kept putting off: CI, session 39, limits summing to
    # less than 40 A after the reserves were freed). It is judged over the 13 A its charger held,
    # and where the charger reported 0 A then (CI: one did), a reading before the change tells nothing.
    site = _site(root_a=ROOT_A, n=3)
    pol = get_policy("equal")
    step = ControlStep()
    first = step.run(pol, _new_obs(site, T0, [0.0] * 3, [reported_a] * 3), fallback=pol).current_a
    assert (first < 13.0).all() and (first > 0).all() and step.first_from == dict.fromkeys(first.index, 0.0)
    at = list(first.to_numpy())
    t = T0 + pd.Timedelta(seconds=1)
    o = _new_obs(site, t, [13.0] * 3, at)
    o.cars["last_meter"] = T0 - pd.Timedelta(seconds=0.05)  # before the first limits were sent
    step.run(pol, o, fallback=pol)
    assert not step.excess_a, step.excess_a
    # Read at their limits once in force: freed, and nothing over them is counted.
    t2 = T0 + pd.Timedelta(seconds=4)
    sent = [step.sent[s][0] for s in first.index]
    out = step.run(pol, _new_obs(site, t2, sent, sent), fallback=pol).current_a
    assert not step.reserve_a and not step.excess_a, (step.reserve_a, step.excess_a)
    assert out.sum() == ROOT_A


def test_an_excess_over_estimated_while_coming_down_falls_at_a_reading_after_a_lowering():
    # Three new cars read 1 A over their first limits, lowered from a 13 A TxDefault: still coming
    # down, or drawing that much over (learnt as 1 A, over-estimated if they were coming down).
    # They then draw their limits. The excess fell only at a settled reading (15 s after the last
    # change), and the equal shares' rotation of the last pilot step moved the limits every few
    # seconds: 1 A held after the release, the limits summing to 39 A, not 40 A (CI, session 39).
    # A reading at its limit in force after a lowering bounds the excess from above: it falls, at
    # the second such reading that does not rise (a car ramping up through its new limit rises
    # between them: the rule of tells_unsettled, for a new car's excess as for its fall).
    site, pol, step, first = _lowered_from_tx_default()
    at = list(first.to_numpy())
    for t in (T0 + pd.Timedelta(seconds=2), T0 + pd.Timedelta(seconds=3)):
        out = step.run(pol, _new_obs(site, t, [a + 1.0 for a in at], at), fallback=pol).current_a
    assert not step.reserve_a and step.excess_a == dict.fromkeys(first.index, 1.0)
    raised = list(out.to_numpy())  # a raise: a reading at the raised limit tells nothing of a fall
    out = step.run(pol, _new_obs(site, T0 + pd.Timedelta(seconds=6), raised, raised), fallback=pol).current_a
    assert step.excess_a == dict.fromkeys(first.index, 1.0)
    # A 37 A cap lowers every car (no reading settles: 3 s apart, settle_s 15 s) ...
    capped = list(step.run(pol, _new_obs(_site(root_a=ROOT_A - 3.0, n=3), T0 + pd.Timedelta(seconds=9), raised,
                                         raised), fallback=pol).current_a.to_numpy())
    assert all(c < r for c, r in zip(capped, raised)), (capped, raised)
    # ... and each reads its lowered limit twice: at most that over it, 0 A. The cap gone, 40 A to share.
    capped_site = _site(root_a=ROOT_A - 3.0, n=3)
    out = step.run(pol, _new_obs(capped_site, T0 + pd.Timedelta(seconds=11), capped, capped), fallback=pol).current_a
    assert step.excess_a == dict.fromkeys(first.index, 1.0)  # one reading: it may still be ramping up
    out = step.run(pol, _new_obs(site, T0 + pd.Timedelta(seconds=12), capped, capped), fallback=pol).current_a
    assert not step.excess_a, step.excess_a
    assert out.sum() == ROOT_A
