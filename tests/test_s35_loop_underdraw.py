"""A car drawing less than offered is not paused and resumed at every step.

Found by an outside OCPP test (/tmp/s35/h5 s1_mixed.py 90 noreject, reproduced offline in
/tmp/s35/m2/r6.py): with 10 s steps (under the 15 s a reading takes to settle), a car capped at
7 A was offered 16 A, valued by the MILP at 7/16 of it on the unsettled reading and paused, then
offered 16 A again once paused: 16 <-> 0 A at every step.
"""

import numpy as np
import pandas as pd
import pytest

from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.loop.observation import Observation, observed_frame
from nowblock.loop.step import ControlStep
from nowblock.policies import get_policy

pytest.importorskip("highspy")

T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")
STEP = pd.Timedelta("15min")
IDS = ["CP06:6", "CP08:8", "CP05:5"]
CAPS = np.array([7.0, 32.0, 16.0])  # what each car can draw [A]


def _site() -> Site:
    cps = (ChargePoint("CP06", "feeder-b", 16.0, phases=3, phase_rotation="L2L3L1"),
           ChargePoint("CP08", "feeder-b", 32.0, phases=3),
           ChargePoint("CP05", "feeder-b", 16.0, phases=3, phase_rotation="L3L1L2"))
    return Site("s1", (Fuse("grid", (40.0,) * 3), Fuse("feeder-b", (25.0,) * 3, "grid")), cps)


def test_a_car_capped_below_its_offer_is_not_paused_and_resumed_every_step():
    site = _site()
    milp = get_policy("milp", horizon=pd.Timedelta("24h"), step=STEP, reuse_plan=False)
    step = ControlStep()
    n = len(IDS)
    t, offered, meas, kwh = T0, np.zeros(n), np.zeros(n), np.zeros(n)
    offers = []
    for _ in range(14):  # steps 10 s apart; every car follows its limit up to what it can draw
        cols = {"session_id": IDS, "charge_point_id": [i.split(":")[0] for i in IDS], "cp_index": np.arange(n),
                "phases": np.full(n, 3), "min_current_a": np.full(n, 6.0), "max_current_a": np.array([16., 32., 16.]),
                "arrival": [T0 - pd.Timedelta(seconds=5)] * n,
                "departure": [T0 + pd.Timedelta(hours=h) for h in (1, 3, 3)],
                "energy_requested_kwh": np.array([12.0, 30.0, 15.0]), "energy_delivered_kwh": kwh.copy(),
                "measured_current_a": meas.copy(), "offered_current_a": offered.copy(),
                "last_meter": [t - pd.Timedelta(seconds=1)] * n}
        base = pd.Series(np.zeros(96), index=pd.date_range(t, periods=96, freq=STEP))
        out = step.run(milp, Observation(t, site, STEP, observed_frame(cols), base), fallback=get_policy("edf"))
        offered = out.current_a.reindex(IDS).to_numpy(float)
        load = site.fuse_phase_currents_a(np.minimum(offered, CAPS), np.arange(n), np.full(n, 3))
        assert (load <= np.array(site.limits_a) + 1e-9).all()
        offers.append(offered[0])
        t += pd.Timedelta(seconds=10)
        meas = np.where(offered >= 6.0, np.minimum(offered, CAPS), 0.0)
        kwh += meas * 3 * 230 / 1000 * 10 / 3600
    later = np.array(offers[4:])
    # Once its ceiling found its draw, the urgent car keeps charging: never paused again, and its
    # offer stays near its draw (the ceiling's probe of +raise_step_a), not 16 <-> 0 A.
    assert (later >= 6.0).all(), offers
    assert later.max() - later.min() <= step.settings.raise_step_a + 1e-9, offers


def test_a_paused_car_is_valued_at_what_it_drew_not_in_full_and_the_safety_net_reads_what_is_observed():
    """Live (s1_mixed.py 90 noreject): a car capped at 7 A offered its ceiling of 8 A was valued at
    7/8 and paused, valued in full once paused (it draws nothing at 0 A) and offered 8 A again:
    8 <-> 0 A. Paused, it is shown to the policy drawing its last 7 A at its ceiling."""
    site = _site()
    step = ControlStep()
    n = len(IDS)

    def obs(t, offered, meas):
        cols = {"session_id": IDS, "charge_point_id": [i.split(":")[0] for i in IDS], "cp_index": np.arange(n),
                "phases": np.full(n, 3), "min_current_a": np.full(n, 6.0), "max_current_a": np.array([16., 32., 16.]),
                "arrival": [T0 - pd.Timedelta(minutes=10)] * n, "departure": [T0 + pd.Timedelta(hours=2)] * n,
                "energy_requested_kwh": np.full(n, 20.0), "energy_delivered_kwh": np.ones(n),
                "measured_current_a": np.asarray(meas, float), "offered_current_a": np.asarray(offered, float),
                "last_meter": [t - pd.Timedelta(seconds=1)] * n}
        base = pd.Series(np.zeros(8), index=pd.date_range(t, periods=8, freq=STEP))
        return Observation(t, site, STEP, observed_frame(cols), base)

    for sid, a in zip(IDS, (8.0, 17.0, 0.0)):
        step.record_sent(sid, a, T0 - pd.Timedelta(minutes=1))
    step.ceilings_a = pd.Series([8.0, 32.0, 16.0], index=pd.Index(IDS, name="session_id"))
    snap, ctx = step.prepare(obs(T0, [8.0, 17.0, 0.0], [7.0, 17.0, 0.0]))  # settled: CP06 draws 7 of 8 A
    assert ctx.for_policy(snap) is snap  # nothing to hide or remember: the policy sees the block
    t = T0 + pd.Timedelta(seconds=30)
    step.record_sent("CP06:6", 0.0, T0 + pd.Timedelta(seconds=10))  # the plan paused it
    snap, ctx = step.prepare(obs(t, [0.0, 25.0, 0.0], [0.0, 25.0, 0.0]))
    view = ctx.for_policy(snap).cars.loc["CP06:6"]
    ceiling = snap.cars.loc["CP06:6", "max_current_a"]
    assert view["offered_current_a"] == ceiling and view["measured_current_a"] == 7.0
    # The safety net's snapshot keeps what was observed.
    assert snap.cars.loc["CP06:6", "measured_current_a"] == 0.0 and snap.cars.loc["CP06:6", "offered_current_a"] == 0.0
