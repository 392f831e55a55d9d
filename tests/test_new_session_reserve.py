"""A new session's over-draw reserve (loop/reserve.py) in the step's bounds: when it is freed
and what it is counted in (review rev4 of 197a73a)."""

from dataclasses import replace

import numpy as np
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
