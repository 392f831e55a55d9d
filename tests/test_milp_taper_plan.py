"""The plan's allowance for a battery taper it cannot observe (``taper_kwh``, ``taper_share``).

Found by an outside tester (session 37): on a 100 A block whose single-phase phase was full all
night, the receding-horizon MILP left a 22 kWh car's whole charge to its last three hours; the
car tapered near full and left 1.09 kWh short where every heuristic filled it. With the options
the last ``taper_kwh`` of a car's remaining energy is planned at ``taper_share`` of its maximum
draw, in the last slots before its (margin) departure, never in the first slot (offered now).
The expected bounds below are computed here from that rule, not from the kernel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from nowblock.milp.adapters import from_snapshot
from nowblock.milp.options import OptimizeOptions
from nowblock.milp.testing import plugged_in_snapshot

H = pd.Timedelta(hours=1)


def _snapshot():
    """Four single-phase cars, every need known: a long stay, a small remainder, a car already drawing half its
    offer, and a car whose derated maximum is below its minimum current."""
    snap = plugged_in_snapshot(4, seed=3, step="5min", producer_arrays=False)
    cars = snap.cars.copy()
    cp_max = snap.site.cp_max_current_a[cars["cp_index"].to_numpy()]
    assert (cp_max >= [32.0, 16.0, 16.0, 16.0]).all()
    cars["max_current_a"] = [32.0, 16.0, 16.0, 7.0]
    cars["phases"] = 1
    cars["departure"] = snap.time + np.array([10.0, 10.0, 10.0, 10.0]) * H
    cars["energy_requested_kwh"] = [20.0, 2.0, 20.0, 20.0]
    cars["energy_delivered_kwh"] = 0.0
    cars["offered_current_a"] = [16.0, 16.0, 16.0, 7.0]
    cars["measured_current_a"] = [16.0, 16.0, 8.0, 7.0]  # car 2 draws half its offer
    return dataclasses.replace(snap, cars=cars, car_arrays=None, incidence_a=None)


def _expected_upper(snap, opts, step_h=0.25, horizon_h=24.0):
    """Upper bounds [A] (n, T) by the documented rule, in plain numpy."""
    cars = snap.cars
    T = int(horizon_h / step_h)
    offs = np.arange(T) * step_h
    left = np.array((cars["departure"] - snap.time) / H, dtype=float)
    dep = left - np.minimum(opts.departure_margin_h, 0.25 * left)
    plugged = (offs + step_h <= dep[:, None] + 1e-9) | (np.arange(T) == 0)
    hi = np.minimum(snap.site.cp_max_current_a[cars["cp_index"].to_numpy()], cars["max_current_a"].to_numpy())
    upper = np.where(plugged, hi[:, None], 0.0)
    ratio = np.clip(cars["measured_current_a"] / cars["offered_current_a"], 0.2, 1.0).to_numpy()
    remaining = (cars["energy_requested_kwh"] - cars["energy_delivered_kwh"]).to_numpy()
    kw_per_a = cars["phases"].to_numpy() * snap.site.voltage_v / 1000.0
    for i in range(len(cars)):
        draw = min(ratio[i], opts.taper_share)
        if opts.taper_kwh <= 0 or draw >= ratio[i]:
            continue  # off, or already drawing less than the derated share: planned at its draw
        start = dep[i] - min(opts.taper_kwh, remaining[i]) / (hi[i] * kw_per_a[i] * draw)
        tail = plugged[i] & (offs + step_h > start + 1e-9) & (np.arange(T) > 0)
        upper[i, tail] = max(hi[i] * draw / ratio[i], min(cars["min_current_a"].iloc[i], hi[i]))
    return upper


def test_the_last_taper_kwh_are_planned_at_the_derated_draw_never_in_the_first_slot():
    snap = _snapshot()
    opts = OptimizeOptions(taper_kwh=6.0, taper_share=0.75)
    form = from_snapshot(snap, "24h", "15min", opts)
    np.testing.assert_allclose(form.upper_a, _expected_upper(snap, opts), rtol=0, atol=1e-9)
    hi = form.upper_a[:, 0]
    derated = (form.plugged > 0) & (form.upper_a < hi[:, None] - 1e-9)
    # The long stay: its last 6 kWh at 0.75 of 32 A single-phase take 1.09 h before 8.5 h.
    assert derated[0].sum() == 5 and derated[0, 33] and not derated[0, 28] and hi[0] == 32.0
    np.testing.assert_allclose(form.upper_a[0, derated[0]], 24.0)
    # A remainder of 2 kWh at 0.75 of 16 A takes its last 0.72 h (three slots); the first slot never.
    assert derated[1].sum() == 3 and not derated[:, 0].any()
    np.testing.assert_allclose(form.upper_a[1, derated[1]], 12.0)
    # Drawing half its offer already (the plan's draw ratio): not derated again.
    assert not derated[2].any() and form.draw_ratio[2] == pytest.approx(0.5)
    # 0.75 x 7 A is below the 6 A minimum: capped at the minimum, the cells kept.
    assert (form.upper_a[3, derated[3]] == 6.0).all() and derated[3].any()
    assert (form.cells[0] == 3).sum() == (form.plugged[3] > 0).sum()


def test_the_default_plans_every_slot_at_the_cars_maximum():
    snap = _snapshot()
    form = from_snapshot(snap, "24h", "15min", OptimizeOptions())
    np.testing.assert_allclose(form.upper_a, _expected_upper(snap, OptimizeOptions()), rtol=0, atol=1e-9)
    assert (form.upper_a[0][form.plugged[0] > 0] == 32.0).all()
    assert (form.upper_a[1][form.plugged[1] > 0] == 16.0).all()


@pytest.mark.parametrize("kw", [dict(taper_kwh=-1.0), dict(taper_share=0.0), dict(taper_share=1.5)])
def test_taper_options_are_checked(kw):
    with pytest.raises(ValueError, match="taper"):
        OptimizeOptions(**kw)


def test_optimize_says_it_does_not_apply_the_taper_options():
    """``nb.optimize`` plans a sessions frame, which has no measured draw or slot sent now: the taper
    options were dropped without a word (review rev3 L1 of session 37). Now a UserWarning says so,
    and the plan is the one without them."""
    import nowblock as nb
    from nowblock.milp.testing import plugged_in_block

    b = plugged_in_block(6, seed=4)
    kw = dict(start=b["start"], horizon="4h", step="15min", milp_effort=0)
    plain = nb.optimize(b["site"], b["sessions"], **kw)
    with pytest.warns(UserWarning, match="taper_kwh"):
        tapered = nb.optimize(b["site"], b["sessions"], **kw, taper_kwh=6.0, taper_share=0.75)
    np.testing.assert_allclose(tapered.current_a.to_numpy(), plain.current_a.to_numpy())
