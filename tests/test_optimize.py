"""The MILP allocator: hand-checked optima, shortfall sharing, phases, limits, rounding, fallback."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nowblock as nb
from nowblock.milp import OptimizeOptions, from_sessions, solve_formulation
from nowblock.milp.highs_fast import SolverOptionError
from nowblock.milp.schedule import limit_rows, round_to_steps
from nowblock.milp.testing import plugged_in_block
from nowblock.block.site import CapWindow, ChargePoint, Fuse, Site

from test_milp_rounding import check_unbalance_with_real_draws

T0 = pd.Timestamp("2026-01-14 12:00", tz="UTC")
KW_PER_A_3PH = 3 * 230 / 1000  # 0.69 kW per ampere on three phases
# Objective terms that would blur a hand-checked optimum are switched off.
PLAIN = dict(peak_eur_per_kw=0.0, change_eur_per_a=0.0, early_eur_per_kwh=0.0, binary_slots=None, mip_rel_gap=1e-9)


def _site(root_a, cps, unbalance=None, feeders=()):
    return Site(name="t", fuses=(Fuse("grid", (root_a,) * 3), *feeders), charge_points=tuple(cps),
                max_unbalance_a=unbalance)


def _sessions(rows):
    df = pd.DataFrame(rows, columns=["session_id", "charge_point_id", "arrival_h", "departure_h", "energy_kwh",
                                     "max_current_a", "phases", "priority"])
    df["arrival"] = T0 + pd.to_timedelta(df.pop("arrival_h"), unit="h")
    df["departure"] = T0 + pd.to_timedelta(df.pop("departure_h"), unit="h")
    return df


def _check_limits(site, sessions, sched, base_kw=0.0):
    """Every fuse phase and the unbalance limit hold in every slot; 0 or >= min; in steps."""
    sess = sessions.set_index("session_id").loc[sched.current_a.columns]
    cp = site.cp_index(sess["charge_point_id"])
    ph = np.minimum(sess["phases"].to_numpy(), site.cp_phases[cp])
    x = sched.current_a.to_numpy()
    for row in x:
        loads = site.fuse_phase_currents_a(row, cp, ph)
        room = site.limits_a.copy()
        room[0] -= site.base_load_phase_current_a(base_kw)
        assert (loads <= room + 1e-6).all()
        if site.max_unbalance_a is not None:
            assert loads[0].max() - loads[0].min() <= site.max_unbalance_a + 1e-6
    if site.max_unbalance_a is not None and len(x) > 1:
        # What the cars really draw: a car stops once it has its energy, so a phase whose cars
        # fill up early is lighter than its offers say.
        check_unbalance_with_real_draws(site, sessions, sched.current_a)
    on = x > 0
    assert (x[on] >= np.broadcast_to(site.cp_min_current_a[cp], x.shape)[on] - 1e-9).all()


def test_one_car_charges_in_the_cheap_hour():
    # 11.04 kWh is one hour at 16 A on three phases; the second hour costs a third of the first.
    site = _site(100, [ChargePoint("CP1", "grid", max_current_a=16)])
    sess = _sessions([("a", "CP1", 0, 2, 16 * KW_PER_A_3PH, 16, 3, 1.0)])
    prices = pd.Series([0.30] * 4 + [0.10] * 4, index=pd.date_range(T0, periods=8, freq="15min"))
    s = nb.optimize(site, sess, start=T0, horizon="2h", prices=prices, **PLAIN)
    assert s.status == "optimal"
    np.testing.assert_allclose(s.current_a["a"].to_numpy(), [0] * 4 + [16] * 4)
    assert s.objective == pytest.approx(11.04 * 0.10, rel=1e-6)
    assert s.shortfall_kwh["a"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(s.power_kw["a"].to_numpy()[4:], 16 * KW_PER_A_3PH)


def _two_cars_on_a_small_fuse(sharing):
    # A 20 A connection, two 16 A cars that each want one full hour: 22.08 kWh wanted, 13.8 possible.
    site = _site(20, [ChargePoint("CP1", "grid", max_current_a=16), ChargePoint("CP2", "grid", max_current_a=16)])
    need = 16 * KW_PER_A_3PH
    sess = _sessions([("hi", "CP1", 0, 1, need, 16, 3, 2.0), ("lo", "CP2", 0, 1, need, 16, 3, 1.0)])
    return site, sess, nb.optimize(site, sess, start=T0, horizon="1h", sharing=sharing, **PLAIN)


def test_weighted_shortfall_follows_priorities_and_respects_the_minimum():
    # max 2*A + B s.t. A + B <= 20, A, B in {0} u [6, 16]: A = 14, B = 6 (A = 16, B = 4 is not allowed).
    site, sess, s = _two_cars_on_a_small_fuse("weighted")
    assert s.status == "optimal"
    np.testing.assert_allclose(s.current_a["hi"].to_numpy(), 14)
    np.testing.assert_allclose(s.current_a["lo"].to_numpy(), 6)
    assert s.shortfall_kwh.sum() == pytest.approx(2 * 16 * KW_PER_A_3PH - 20 * KW_PER_A_3PH, rel=1e-6)
    _check_limits(site, sess, s)
    assert set(s.binding["fuse_id"]) == {"grid"} and len(s.binding) == 4 * 3  # 4 slots x 3 phases


def test_max_min_fair_gives_equal_fractions():
    site, sess, s = _two_cars_on_a_small_fuse("fair")
    assert s.status == "optimal"
    # 40 ampere-slots each (0.625 of each car's need), the connection full in every slot.
    np.testing.assert_allclose(s.current_a.sum(axis=0).to_numpy(), 40)
    np.testing.assert_allclose(s.current_a.sum(axis=1).to_numpy(), 20)
    frac = 1 - s.shortfall_kwh / (16 * KW_PER_A_3PH)
    np.testing.assert_allclose(frac.to_numpy(), 0.625, rtol=1e-6)


def test_infeasible_demand_is_shortfall_not_an_error():
    site = _site(16, [ChargePoint("CP1", "grid", max_current_a=16)])
    sess = _sessions([("a", "CP1", 0, 0.5, 100.0, 16, 3, 1.0)])
    s = nb.optimize(site, sess, start=T0, horizon="1h", **PLAIN)
    assert s.status == "optimal"
    assert s.energy_kwh["a"] == pytest.approx(16 * KW_PER_A_3PH * 0.5)
    assert s.shortfall_kwh["a"] == pytest.approx(100.0 - 16 * KW_PER_A_3PH * 0.5)


def test_single_phase_cars_on_rotated_chargers_use_all_three_phases():
    def run(rotations):
        cps = [ChargePoint(f"CP{i}", "grid", max_current_a=16, phases=1, phase_rotation=r) for i, r in enumerate(rotations)]
        site = _site(16, cps)
        sess = _sessions([(f"s{i}", f"CP{i}", 0, 1, 20.0, 16, 1, 1.0) for i in range(3)])
        s = nb.optimize(site, sess, start=T0, horizon="1h", **PLAIN)
        _check_limits(site, sess, s)
        return site, sess, s

    site, sess, s = run(["L1L2L3", "L2L3L1", "L3L1L2"])
    np.testing.assert_allclose(s.current_a.to_numpy(), 16)  # one car per grid phase, each at full current
    loads = site.fuse_phase_currents_a(s.current_a.iloc[0].to_numpy(), site.cp_index(sess.charge_point_id), sess.phases)
    np.testing.assert_allclose(loads[0], [16, 16, 16])
    _, _, same = run(["L1L2L3"] * 3)
    assert same.current_a.sum(axis=1).max() <= 16 + 1e-9  # all on L1: 16 A shared
    assert same.energy_kwh.sum() == pytest.approx(s.energy_kwh.sum() / 3, rel=1e-6)


def test_unbalance_limit_holds():
    cps = [ChargePoint("CP1", "grid", max_current_a=16, phases=1), ChargePoint("CP2", "grid", max_current_a=16, phases=1),
           ChargePoint("CP3", "grid", max_current_a=16, phases=3)]
    site = _site(100, cps, unbalance=10.0)
    sess = _sessions([("a", "CP1", 0, 2, 20.0, 16, 1, 1.0), ("b", "CP2", 0, 2, 20.0, 16, 1, 1.0),
                      ("c", "CP3", 0, 2, 5.0, 16, 3, 1.0)])
    s = nb.optimize(site, sess, start=T0, horizon="2h", **PLAIN)
    _check_limits(site, sess, s)
    # Both single-phase cars load L1: together at most 10 A, so at most one of them (6 A minimum each).
    single = s.current_a[["a", "b"]].to_numpy()
    assert (single.sum(axis=1) <= 10 + 1e-9).all()
    assert single.sum() == pytest.approx(10 * 8)  # and the room is used: 10 A in all 8 slots
    free = nb.optimize(_site(100, cps), sess, start=T0, horizon="2h", **PLAIN)
    assert free.energy_kwh[["a", "b"]].sum() > s.energy_kwh[["a", "b"]].sum() + 1.0


def test_caps_in_time_windows():
    # 14a EnWG dimming 13:00-14:00 Berlin (12:00-13:00 UTC in winter) to 6 A.
    cp = ChargePoint("CP1", "grid", max_current_a=16, caps=(CapWindow("13:00", "14:00", 6.0),))
    site = _site(100, [cp])
    sess = _sessions([("a", "CP1", 0, 2, 30.0, 16, 3, 1.0)])
    s = nb.optimize(site, sess, start=T0, horizon="2h", **PLAIN)
    np.testing.assert_allclose(s.current_a["a"].to_numpy(), [6] * 4 + [16] * 4)


def test_a_cap_window_off_the_slot_grid_caps_every_slot_it_overlaps():
    # A dimming from 13:10 to 13:50 Berlin: the slots from 13:00 and 13:45 are capped too.
    cp = ChargePoint("CP1", "grid", max_current_a=16, caps=(CapWindow("13:10", "13:50", 6.0),))
    s = nb.optimize(_site(100, [cp]), _sessions([("a", "CP1", 0, 2, 30.0, 16, 3, 1.0)]), start=T0, horizon="2h", **PLAIN)
    np.testing.assert_allclose(s.current_a["a"].to_numpy(), [6] * 4 + [16] * 4)


def test_base_load_takes_headroom_on_the_root():
    site = _site(32, [ChargePoint("CP1", "grid", max_current_a=32)])
    sess = _sessions([("a", "CP1", 0, 1, 50.0, 32, 3, 1.0)])
    base = pd.Series(3 * 230 * 20 / 1000, index=pd.date_range(T0, periods=4, freq="15min"))  # 20 A per phase
    s = nb.optimize(site, sess, start=T0, horizon="1h", base_load=base, **PLAIN)
    np.testing.assert_allclose(s.current_a["a"].to_numpy(), 12)


def test_pilot_step_of_a_tenth_amp():
    site = _site(20.55, [ChargePoint("CP1", "grid", max_current_a=32)])
    sess = _sessions([("a", "CP1", 0, 1, 50.0, 32, 3, 1.0)])
    s = nb.optimize(site, sess, start=T0, horizon="1h", current_step_a=0.1, **PLAIN)
    np.testing.assert_allclose(s.current_a["a"].to_numpy(), 20.5)
    whole = nb.optimize(site, sess, start=T0, horizon="1h", **PLAIN)
    np.testing.assert_allclose(whole.current_a["a"].to_numpy(), 20.0)


def test_unknown_option_and_refused_highs_option():
    site = _site(100, [ChargePoint("CP1", "grid")])
    sess = _sessions([("a", "CP1", 0, 1, 5.0, 16, 3, 1.0)])
    with pytest.raises(TypeError, match="mip_gap"):
        nb.optimize(site, sess, start=T0, mip_gap=0.1)
    with pytest.raises(SolverOptionError, match="no_such_option"):
        nb.optimize(site, sess, start=T0, solver_options={"no_such_option": 1})
    with pytest.raises(ValueError, match="sharing"):
        OptimizeOptions(sharing="equal")


# ---- rounding never overloads -------------------------------------------------------------
@st.composite
def _random_problem(draw):
    n_cp = draw(st.integers(1, 6))
    rot = ["L1L2L3", "L2L3L1", "L3L1L2", "L1L3L2"]
    cps = [ChargePoint(f"CP{i}", draw(st.sampled_from(["grid", "f1"])), max_current_a=draw(st.sampled_from([16.0, 20.0, 32.0])),
                       min_current_a=draw(st.sampled_from([0.0, 6.0])), phases=draw(st.sampled_from([1, 3])),
                       phase_rotation=draw(st.sampled_from(rot))) for i in range(n_cp)]
    root = draw(st.floats(10.0, 80.0))
    f1 = Fuse("f1", tuple(draw(st.floats(8.0, 60.0)) for _ in range(3)), parent="grid")
    unb = draw(st.one_of(st.none(), st.floats(4.0, 25.0)))
    site = _site(root, cps, unbalance=unb, feeders=(f1,))
    sess = _sessions([(f"s{i}", f"CP{i}", draw(st.floats(-1, 1)), draw(st.floats(1.1, 3)), draw(st.floats(0.5, 30)),
                       draw(st.sampled_from([10.0, 16.0, 32.0])), draw(st.sampled_from([1, 3])), 1.0) for i in range(n_cp)])
    step = draw(st.sampled_from([1.0, 0.1]))
    seed = draw(st.integers(0, 2**31 - 1))
    return site, sess, step, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_random_problem())
def test_rounding_never_overloads(problem):
    site, sess, step, seed = problem
    form = from_sessions(site, sess, start=T0, horizon="3h", options=OptimizeOptions(current_step_a=step))
    rng = np.random.default_rng(seed)
    # Fractional plans that sit right at (and a little past) the limits, as a solver's would.
    raw = rng.uniform(0, 1, form.upper_a.shape) * form.upper_a * rng.uniform(0.8, 1.3)
    x, _ = round_to_steps(form, raw)
    g, h, _ = limit_rows(form)
    assert (g @ x <= h + 1e-6).all()
    lo = form.min_current_a[:, None]
    assert ((x == 0) | (x >= lo - 1e-9)).all()
    assert (x <= form.upper_a + 1e-9).all()
    np.testing.assert_allclose(x / step, np.round(x / step), atol=1e-6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_random_problem())
def test_optimized_schedules_are_safe(problem):
    site, sess, step, _ = problem
    s = nb.optimize(site, sess, start=T0, horizon="3h", current_step_a=step, time_limit_s=5)
    # The status describes the returned plan (it was HiGHS's status for continuous currents
    # before the plan was rounded): "optimal" exactly when the bound certifies the plan.
    assert s.status in ("optimal", "suboptimal", "time_limit")
    assert s.bound <= s.objective + 1e-6 * max(1.0, abs(s.objective))  # HiGHS's tolerances
    assert (s.status == "optimal") == (s.mip_gap <= 0.01 or s.objective - s.bound <= 0.01 + 1e-12)
    _check_limits(site, sess, s)
    x = s.current_a.to_numpy()
    np.testing.assert_allclose(x / step, np.round(x / step), atol=1e-6)


def _four_single_phase_cars(cp2_min_a, energies_kwh, last_departure_h):
    # L1: CP0 and CP1, L2: CP2, L3: CP3; a 4 A unbalance limit under a 10 A grid fuse.
    rot = ["L1L2L3", "L1L2L3", "L2L3L1", "L3L1L2"]
    cps = [ChargePoint(f"CP{i}", "grid", 16.0, cp2_min_a if i == 2 else 0.0, phases=1, phase_rotation=r)
           for i, r in enumerate(rot)]
    site = _site(10.0, cps, unbalance=4.0, feeders=(Fuse("f1", (8.0,) * 3, parent="grid"),))
    sess = _sessions([(f"s{i}", f"CP{i}", 0.0, last_departure_h if i == 3 else 2.0, e, 10.0, 1, 1.0)
                      for i, e in enumerate(energies_kwh)])
    return site, sess


@pytest.mark.parametrize("cp2_min_a, energies_kwh, last_departure_h, step_a", [
    # The MILP in whole 1 A steps capped the light-side cars at their need: a plan whose car on
    # L2 is offered 1.035 kWh for its 1 kWh (it stops when full) was no point of it (bound 5.03
    # against a plan at 3.69 EUR).
    (0.0, (1.0, 1.0, 1.0, 3.0), 2.0, 1.0),
    # At 0.1 A steps the real-draw unbalance repair stopped after one pass per cell with 1.2 A
    # left: the car on L2 fills up early in a slot, L1 stays 5.3 A above it (bound 15.65
    # against 13.91 EUR).
    (6.0, (3.0, 1.0, 1.5, 3.0), 1.5, 0.1),
])
def test_unbalance_plans_keep_real_draws_and_stay_above_their_bound(cp2_min_a, energies_kwh, last_departure_h, step_a):
    site, sess = _four_single_phase_cars(cp2_min_a, energies_kwh, last_departure_h)
    s = nb.optimize(site, sess, start=T0, horizon="3h", current_step_a=step_a, time_limit_s=5)
    assert s.bound <= s.objective + 1e-6 * max(1.0, abs(s.objective))
    _check_limits(site, sess, s)


# ---- the solver fails or times out: fallback, still safe ------------------------------------
def test_time_limit_falls_back_or_keeps_an_incumbent_and_stays_safe():
    b = plugged_in_block(300, seed=3)
    s = nb.optimize(b["site"], b["sessions"], start=b["start"], base_load=b["base_load"], prices=b["prices"],
                    time_limit_s=1e-3)
    assert s.status in ("fallback", "time_limit")
    form = from_sessions(b["site"], b["sessions"], start=b["start"], base_load=b["base_load"])
    g, h, _ = limit_rows(form)
    x = s.current_a.T.reindex(pd.Index(form.session_ids)).to_numpy()
    assert (g @ x <= h + 1e-6).all()
    assert s.energy_kwh.sum() > 0


def test_solver_failure_falls_back_to_a_baseline(monkeypatch):
    from nowblock.milp import solve as solve_mod

    def broken(*args, **kwargs):
        raise RuntimeError("simulated HiGHS crash")

    monkeypatch.setattr(solve_mod, "solve_matrix", broken)
    site, sess, _ = _two_cars_on_a_small_fuse("weighted")
    s = nb.optimize(site, sess, start=T0, horizon="1h")
    assert s.status == "fallback" and "simulated HiGHS crash" in s.detail
    _check_limits(site, sess, s)
    assert s.energy_kwh.sum() > 0


def test_no_solution_status_falls_back(monkeypatch):
    from nowblock.milp import highs_fast
    from nowblock.milp import solve as solve_mod

    real = highs_fast.solve_matrix

    def nothing(*args, **kw):
        res = real(*args, **kw)
        return res.__class__(**{**res.__dict__, "status": "no_solution", "values": None})

    monkeypatch.setattr(solve_mod, "solve_matrix", nothing)
    site, sess, _ = _two_cars_on_a_small_fuse("weighted")
    s = nb.optimize(site, sess, start=T0, horizon="1h")
    assert s.status == "fallback" and s.method == "greedy"
    assert "no peak cap" not in s.detail  # time enough for the plan under the critical peak
    _check_limits(site, sess, s)
    # The greedy plan leaves less than one minimum current (6 A) of the 20 A fuse unused.
    assert (s.current_a.sum(axis=1).to_numpy() > 20 - 6).all()


def test_a_spent_time_limit_gets_the_cheaper_uncapped_greedy_plan():
    # A call whose time is gone before any stage (a time limit below what its block needs): the
    # plan from nothing without the critical-peak cap, which costs 3-5 times less (1,000 cars x
    # 288 slots: 0.4 s against 1.2-1.5 s), so that the call overruns its limit by as little as
    # it can; still a real plan within every limit.
    site, sess, _ = _two_cars_on_a_small_fuse("weighted")
    form = from_sessions(site, sess, start=T0, horizon="1h", options=OptimizeOptions(time_limit_s=0.5))
    s = solve_formulation(form, started_at=time.perf_counter() - 10.0)
    assert s.status == "fallback" and s.method == "greedy" and "no peak cap" in s.detail
    assert "skipped (no time left)" in s.detail
    _check_limits(site, sess, s)
    assert (s.current_a.sum(axis=1).to_numpy() > 20 - 6).all()


def test_warm_start_keeps_the_optimum():
    b = plugged_in_block(30, seed=5)
    form = from_sessions(b["site"], b["sessions"], start=b["start"], base_load=b["base_load"], prices=b["prices"],
                         options=OptimizeOptions(mip_rel_gap=1e-6))
    cold = solve_formulation(form)
    warm = solve_formulation(form, warm_start_a=cold.current_a.T.to_numpy())
    assert warm.objective == pytest.approx(cold.objective, rel=1e-4)


def test_nothing_plugged_in_is_an_empty_optimal_schedule():
    site = _site(100, [ChargePoint("CP1", "grid")])
    sess = _sessions([("a", "CP1", 5, 6, 5.0, 16, 3, 1.0)])
    s = nb.optimize(site, sess, start=T0, horizon="2h")
    assert s.status == "optimal" and s.current_a.shape[1] == 0


def test_milp_stage_searches_the_neighbourhood_then_proves_only_when_asked():
    """The MILP stage (``OptimizeOptions.milp_prove``): the neighbourhood of the best plan first;
    the whole MILP after it with ``milp_prove`` (the default), else not when the neighbourhood
    held a plan better by more than the gap tolerance. Either way the plan is real and safe and
    the bound it reports holds for the plan the whole MILP found."""
    b = plugged_in_block(6, seed=3, grid_share=0.15)
    # milp_min_s: time enough for the whole MILP on a loaded machine (it proves this in ~0.1 s)
    kw = dict(start=b["start"], horizon="6h", step="15min", base_load=b["base_load"], prices=b["prices"],
              milp_min_s=5.0)
    out = {prove: nb.optimize(b["site"], b["sessions"], milp_prove=prove, **kw) for prove in (True, False)}
    form = from_sessions(b["site"], b["sessions"], start=kw["start"], horizon="6h", step="15min",
                         base_load=b["base_load"])
    g, h, _ = limit_rows(form)
    for s in out.values():
        x = s.current_a.T.reindex(pd.Index(form.session_ids)).to_numpy()
        assert (g @ x <= h + 1e-6).all()
        assert ((x == 0) | (x >= 6 - 1e-9)).all() and np.allclose(x, np.round(x))  # whole amperes
        assert any(st["stage"] == "milp" for st in s.extra["stages"]) and s.method.startswith("milp")
        assert s.bound <= s.objective + 1e-6
    proved, plan_only = out[True], out[False]
    # The whole MILP continues from the neighbourhood's plan: never worse, and here 13 % better.
    assert proved.objective <= plan_only.objective + 1e-6
    assert proved.objective < 0.9 * plan_only.objective
    assert plan_only.bound <= proved.objective + 1e-6  # the relaxation's bound is a true bound
    assert proved.bound >= plan_only.bound - 1e-6


def test_milp_stage_neighbourhood_is_searched_and_its_bound_holds(monkeypatch):
    """The stage's own solves (:func:`nowblock.milp.stage.around_start`) on the MILP the stage
    built: the relaxation, the neighbourhood with integers fixed where it agrees with the start,
    and the whole MILP only with ``milp_prove``; the bound it reports never exceeds the MILP's
    optimum (solved to the end here), its plan is no worse than the start."""
    import dataclasses

    from nowblock.milp import stage as stage_mod
    from nowblock.milp.highs_fast import solve_matrix

    b = plugged_in_block(6, seed=3, grid_share=0.15)
    seen = []
    real = stage_mod.around_start

    def record(form, mf, start, left):
        seen.append((form, mf, start))
        return real(form, mf, start, left)

    monkeypatch.setattr(stage_mod, "around_start", record)
    nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="6h", step="15min", base_load=b["base_load"],
                prices=b["prices"], mip_rel_gap=1e-6, milp_min_s=5.0)
    assert len(seen) == 1
    form, mf, start = seen[0]
    best = solve_matrix(form, mf, 60.0, start)
    assert best.status == "optimal"
    calls = []

    def counting(form_, mf_, limit_s, start_=None, **kw):
        calls.append(mf_)
        return solve_matrix(form_, mf_, limit_s, start_, **kw)

    monkeypatch.setattr(stage_mod, "solve_matrix", counting)
    integer = mf.integrality > 0
    for prove, n_solves in ((False, 2), (True, 3)):
        calls.clear()
        f = dataclasses.replace(form, options=dataclasses.replace(form.options, milp_prove=prove, mip_rel_gap=0.01))
        t0 = time.perf_counter()
        res = real(f, mf, start, lambda: 30.0 - (time.perf_counter() - t0))
        assert len(calls) == n_solves
        assert not calls[0].integrality.any()  # the relaxation
        free_before = integer & (mf.col_hi > mf.col_lo)
        fixed_now = free_before & (calls[1].col_hi == calls[1].col_lo)
        assert 0 < fixed_now.sum() < free_before.sum()  # a neighbourhood, not the whole MILP
        assert res.values is not None and res.objective <= float(mf.cost @ start) + 1e-9
        assert res.bound <= best.objective + 1e-6 and res.objective >= best.bound - 1e-6
        assert res.status in ("optimal", "suboptimal")
    assert res.status == "optimal"  # with the whole MILP the bound certifies the plan


def test_lp_stage_plan_is_certified_and_as_good_as_the_plain_milp():
    # The LP stage's real plan (every slot 0 or >= min, in pilot steps) is within the gap of the
    # LP bound and of the plain MILP's optimum, which only has binaries in its first 8 slots and
    # continuous currents: a relaxation of what a charger can be sent.
    from nowblock.milp.highs_fast import solve_highs, solve_matrix

    b = plugged_in_block(120, seed=11)
    form = from_sessions(b["site"], b["sessions"], start=b["start"], base_load=b["base_load"], prices=b["prices"])
    s = solve_formulation(form)
    lp = solve_highs(form, relax=True)
    assert s.status == "optimal" and s.method in ("lp+rounding", "lp without peak+rounding",
                                                  "least laxity under the critical peak")
    assert s.bound <= lp.objective * (1 + 1e-7)  # no proven bound is above the LP's optimum
    assert lp.objective <= s.objective + 1e-9
    assert (s.objective - lp.objective) / s.objective <= form.options.mip_rel_gap
    x = s.plan_a
    lo = form.min_current_a[:, None]
    assert ((x == 0) | (x >= lo - 1e-9)).all()  # every slot, not only the first eight
    plain = solve_matrix(form, form.matrix(), 60.0)
    assert plain.status == "optimal"
    assert s.objective <= plain.objective * (1 + form.options.mip_rel_gap) + 1e-9


def test_every_solve_gets_its_own_time_limit():
    # HiGHS's time limit counts an object's run clock since it was made, and no clear* call
    # resets it: a solver object reused across solves (tried once, to save ~0.1 ms a step)
    # stopped later solves at once with "time limit reached". Many solves in one thread, each
    # with a limit of a few single solves, must all finish on their own clock.
    import time

    from nowblock.milp import highs_fast as hf

    b = plugged_in_block(30, seed=3)
    form = from_sessions(b["site"], b["sessions"], start=b["start"], horizon="12h", step="15min",
                         base_load=b["base_load"], prices=b["prices"])
    mf = form.matrix(relax=True)
    t0 = time.perf_counter()
    one = hf.solve_matrix(form, mf, 60.0)
    limit_s = 10 * max(time.perf_counter() - t0, one.solve_seconds)
    runs = [hf.solve_matrix(form, mf, limit_s) for _ in range(20)]
    assert one.status == "optimal"
    # A solve may hit its limit on a loaded machine, but only after using it: with a shared
    # clock the later solves stopped at once (solve_seconds far below their limit).
    for r in runs:
        assert r.status == "optimal" or (r.status == "time_limit" and r.solve_seconds >= 0.9 * limit_s), \
            (r.status, r.solve_seconds, limit_s)
    assert sum(r.status == "optimal" for r in runs) >= len(runs) // 2


def _grid_engineers_block():
    """Eight cars (1-, 2- and 3-phase) on rotated chargers behind an asymmetric fuse (40/20/40 A)
    for four hours: an outside test's block (a grid engineer's own generator)."""
    rot = ["L3L1L2", "L1L2L3", "L1L2L3", "L2L1L3", "L2L1L3", "L2L3L1", "L3L1L2", "L3L2L1"]
    cp_phases = [3, 3, 1, 1, 1, 3, 1, 3]
    site = Site("h3", (Fuse("grid", (40.0, 20.0, 40.0)),),
                tuple(ChargePoint(f"CP{i:02d}", "grid", 16.0, 6.0, cp_phases[i], rot[i]) for i in range(8)))
    t = pd.Timestamp("2026-03-02 16:00", tz="UTC")
    m = pd.Timedelta(minutes=15)
    sessions = pd.DataFrame({
        "session_id": [f"s{i}" for i in range(8)], "charge_point_id": [f"CP{i:02d}" for i in range(8)],
        "arrival": [t + k * m for k in (2, 2, 0, 0, 3, 1, 1, 3)],
        "departure": [t + k * m for k in (10, 9, 11, 15, 13, 15, 6, 13)],
        "energy_kwh": [4.10, 2.19, 5.17, 14.63, 3.26, 13.83, 5.09, 2.77],
        "max_current_a": [32.0, 16.0, 32.0, 32.0, 16.0, 16.0, 32.0, 16.0],
        "phases": [1, 1, 1, 1, 2, 3, 1, 1]})
    return site, sessions, t


def test_a_small_block_planned_once_gets_the_whole_milp_and_its_best_plan(unhurried_optimizer):
    """Found by an outside test: a small block's plan was 37.5 % off its bound and 3.6 kWh short of
    what the block allowed, returned in 0.01 s of a 10 s limit (the polished plan skipped the MILP
    stage, whose binaries covered the first 8 slots only). The reference: the same model with
    binaries on every slot, built through Pyomo and solved to optimality."""
    from nowblock.milp import solve as solve_mod

    site, sessions, t = _grid_engineers_block()
    kw = dict(start=t, horizon="240min", step="15min")
    # With the default budgets (a 10 s limit) the whole MILP runs, for at least _SMALL_MILP_MIN_S,
    # once the plan is not certified (no gap allowed here: since session 38 the rounding's plan is
    # within 1 % of the bound, 120.018 against 119.975 EUR at the optimum, and returned at once).
    quick = nb.optimize(site, sessions, time_limit_s=10, mip_rel_gap=0.0, mip_abs_gap=0.0, **kw)
    milp = [x for x in quick.extra["stages"] if x["stage"] == "milp"]
    assert milp and milp[0]["budget_seconds"] >= solve_mod._SMALL_MILP_MIN_S, quick.extra["stages"]
    # What it reaches, unhurried: at load 6-16 its 1 s (0.6 s used on a quiet machine) ran out
    # ("suboptimal"), and the Pyomo reference's build and proof overran 10 s.
    s = nb.optimize(site, sessions, milp_min_s=600.0, **unhurried_optimizer, **kw)
    ref = nb.optimize(site, sessions, backend="pyomo", binary_slots=None, mip_rel_gap=0.0, mip_abs_gap=0.0,
                      time_limit_s=600.0, **kw)
    assert "milp: optimal" in ref.detail  # HiGHS proved the whole MILP (the call's bound is the LP's)
    assert s.status == "optimal" and s.mip_gap <= 0.01
    assert s.objective <= ref.objective * 1.01 + 0.01
    assert s.shortfall_kwh.sum() <= ref.shortfall_kwh.sum() + 0.05
    # The call as the outside test made it (default gap, 10 s): the bug it found was this call's
    # plan, 37.5 % off its bound in 0.01 s; since session 38 it may stop at the rounding's plan
    # (120.018 EUR, gap 0.0037), which must stay within 1 % of the optimum and as full.
    d = nb.optimize(site, sessions, time_limit_s=10, **kw)
    assert d.mip_gap <= 0.01, (d.mip_gap, d.detail)
    assert d.objective <= ref.objective * 1.01 + 0.01
    assert d.shortfall_kwh.sum() <= ref.shortfall_kwh.sum() + 0.05
