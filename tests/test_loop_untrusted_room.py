"""The room a cut trusted car leaves on phases an untrusted car does not load goes to others.

Found by an outside OCPP test (/tmp/s35/h5 s14_reject_waste.py, reproduced in /tmp/s35/m2): a
refusing single-phase car drawing 16 A on grid L1 (planned at 9 A) cut a three-phase car from
16 to 9 A; grid L3 stayed at 33 of 40 A while a three-phase car was held at 0 A.
"""

import numpy as np
import pandas as pd

from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.loop.observation import Observation, observed_frame
from nowblock.loop.step import ControlStep

T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")
STEP = pd.Timedelta("15min")
IDS = ["CP01:2", "CP04:4", "CP06:6", "CP07:1"]
PHASES = np.array([3, 1, 3, 1])


def _site() -> Site:
    cps = (ChargePoint("CP01", "feeder-a", 16.0, phases=3),
           ChargePoint("CP04", "feeder-a", 32.0, phases=1, phase_rotation="L3L1L2"),  # grid L3
           ChargePoint("CP06", "feeder-b", 16.0, phases=3, phase_rotation="L2L3L1"),
           ChargePoint("CP07", "feeder-b", 16.0, phases=1))  # grid L1
    return Site("s14", (Fuse("grid", (40.0,) * 3), Fuse("feeder-a", (32.0,) * 3, "grid"),
                        Fuse("feeder-b", (25.0,) * 3, "grid")), cps)


def _obs(site: Site, held_a) -> Observation:
    n = len(IDS)
    cols = {"session_id": IDS, "charge_point_id": [i.split(":")[0] for i in IDS], "cp_index": np.arange(n),
            "phases": PHASES, "min_current_a": np.full(n, 6.0), "max_current_a": np.array([16.0, 32.0, 16.0, 16.0]),
            "arrival": [T0 - pd.Timedelta(minutes=10)] * n,
            "departure": [T0 + pd.Timedelta(hours=h) for h in (10, 1, 2, 10)],
            "energy_requested_kwh": np.array([15.0, 10.0, 20.0, 15.0]), "energy_delivered_kwh": np.zeros(n),
            "measured_current_a": np.asarray(held_a, float), "offered_current_a": np.asarray(held_a, float),
            "last_meter": [T0 - pd.Timedelta(seconds=1)] * n, "limit_known": np.array([True, True, True, False])}
    base = pd.Series(np.zeros(8), index=pd.date_range(T0, periods=8, freq=STEP))
    return Observation(T0, site, STEP, observed_frame(cols), base)


def test_room_a_refusing_car_leaves_on_other_grid_phases_goes_to_waiting_cars():
    site = _site()
    step = ControlStep()
    sent = {"CP01:2": 0.0, "CP04:4": 24.0, "CP06:6": 9.0, "CP07:1": 9.0}  # CP07 refuses: it holds 16 A
    for sid, a in sent.items():
        step.record_sent(sid, a, T0 - pd.Timedelta(minutes=2))
    snap, ctx = step.prepare(_obs(site, [0.0, 24.0, 9.0, 16.0]))
    assert ctx.untrusted == {"CP07:1": "holding"}
    # The plan counts CP07 at its 9 A share, so CP06 gets 16 A and grid L3 is full at 40 A.
    plan = pd.Series({"CP01:2": 0.0, "CP04:4": 24.0, "CP06:6": 16.0, "CP07:1": 9.0})
    x = step.finish(snap, ctx, plan)
    draw = x.to_numpy(float).copy()
    draw[IDS.index("CP07:1")] = 16.0  # what it really draws
    load = site.fuse_phase_currents_a(draw, np.arange(4), PHASES)
    assert (load <= np.array(site.limits_a) + 1e-9).all(), load
    assert x["CP06:6"] <= 9.0  # feeder-b L1: 25 A less CP07's 16 A
    # The 7 A CP06's cut freed on grid L2 and L3 is handed out again, first to the car leaving
    # first (CP04, on grid L3, was held at 24 A); grid L3 is used to its rating.
    assert x["CP04:4"] + x["CP01:2"] >= 24.0 + 6.0
    assert x["CP04:4"] >= 30.0
    assert load[0, 2] >= 39.0
    # Never more on a grid phase than the plan put there.
    planned = site.fuse_phase_currents_a(np.where(np.array(IDS) == "CP07:1", 16.0, plan.to_numpy(float)),
                                         np.arange(4), PHASES)
    assert (load[0] <= planned[0] + 1e-9).all()
