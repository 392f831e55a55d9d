"""The planning step's numba kernels (:mod:`nowblock.milp.kernels`) against plain references.

Every reference below restates, in loops over small arrays, the numpy code the kernel replaced
(``git show 7576f7b``: ``is_feasible`` in highs_fast.py, ``top_up_first_slot`` in policy.py).
The kernels that turn a relaxed solution into a plan are tested in ``test_milp_rounding.py``
(the old LP-point repair and first-slot rounding they replaced are gone, with their tests).
Hypothesis compares kernel and reference on small random inputs with unbalance-like rows
(``g`` entries -1/0/1), currents on 0.1 A / 1 A steps and ties in the sort keys; property
tests check the safety contract; one end-to-end test runs the kernels' callers on a real
30-car formulation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nowblock.milp.kernels import csc_feasible, top_up_now

TOL_A = 1e-6  # the callers' tolerance (highs_fast._TOL_A, schedule._TOL_A)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- references (the replaced numpy semantics, written plainly) -----------------------------


def ref_raise_in_order(x, order, g, slack, hi, lo, kw, budget_kw, step):
    """The loop of the old ``top_up_first_slot``: each car in ``order`` to the most its rows'
    slack (rows it loads), its maximum and the power budget allow, in whole steps, 0 or >= min."""
    x = np.array(x, dtype=float)
    slack = np.array(slack, dtype=float)
    hi, lo = np.nan_to_num(hi), np.nan_to_num(lo)
    for i in order:
        room = np.inf
        for r in range(g.shape[0]):
            if g[r, i] > 1e-12:
                room = min(room, slack[r] / g[r, i])
        if kw[i] > 0:
            room = min(room, budget_kw / kw[i])
        new = np.floor(min(hi[i], x[i] + max(room, 0.0)) / step + 1e-9) * step
        if new < lo[i] - 1e-9 or new <= x[i] + 1e-9:
            continue
        slack = slack - g[:, i] * (new - x[i])
        budget_kw -= kw[i] * (new - x[i])
        x[i] = new
    return x


def ref_top_up_first_slot_old(x, short, hours_h, g, h, hi, lo, kw, budget_kw, step):
    """The whole old ``top_up_first_slot`` on arrays: cars that cannot take one step (or their
    minimum) against the rows' slack *at the start* are dropped first, the rest raised
    earliest departure first (stable)."""
    slack = h - g @ x
    hi, lo = np.nan_to_num(hi), np.nan_to_num(lo)  # as the old caller passed them
    keep = []
    for i in short:
        pos = g[:, i] > 1e-12
        room = float(np.min(slack[pos] / g[pos, i])) if pos.any() else np.inf
        need = step if x[i] > 0 else max(lo[i], step)
        if room >= need - 1e-9 and hi[i] >= x[i] + step - 1e-9:
            keep.append(int(i))
    order = sorted(keep, key=lambda i: hours_h[i])
    return ref_raise_in_order(x, order, g, slack, hi, lo, kw, budget_kw, step)


def new_top_up_first_slot(x, short, hours_h, g, h, hi, lo, kw, budget_kw, step):
    """What ``top_up_first_slot`` does now on arrays (the kernel on every short car)."""
    x = np.array(x, dtype=float)
    short = np.asarray(short, dtype=np.int64)
    order = short[np.argsort(hours_h[short], kind="stable")]
    top_up_now(x, order, g, h - g @ x, hi, lo, kw, float(budget_kw), float(step))
    return x


def csc_from_dense(a):
    """CSC arrays (start, index, value) of a dense matrix, column by column."""
    start, index, value = [0], [], []
    for j in range(a.shape[1]):
        rows = np.nonzero(a[:, j])[0]
        index.extend(rows)
        value.extend(a[rows, j])
        start.append(len(index))
    return np.array(start, dtype=np.int32), np.array(index, dtype=np.int32), np.array(value, dtype=float)


def ref_feasible(a_start, a_index, a_value, v, col_lo, col_hi, row_lo, row_hi, tol):
    """Old ``is_feasible``: bounds, then the dense ``A @ v`` against the rows (relative tol)."""
    a = np.zeros((len(row_lo), len(v)))
    for j in range(len(v)):
        for p in range(a_start[j], a_start[j + 1]):
            a[a_index[p], j] += a_value[p]
    if (v < col_lo - tol).any() or (v > col_hi + tol).any():
        return False
    r = a @ v
    scale = 1.0 + np.abs(np.where(np.isfinite(row_hi), row_hi, 0.0))
    return bool(((r >= row_lo - tol * scale) & (r <= row_hi + tol * scale)).all())


# ---- strategies -----------------------------------------------------------------------------
STEPS_A = (0.1, 1.0)


def amps(lo_tenths: int, hi_tenths: int):
    """Currents [A] on a 1 A grid (many ties) or a 0.1 A grid."""
    return st.one_of(st.integers(lo_tenths // 10, hi_tenths // 10).map(float),
                     st.integers(lo_tenths, hi_tenths).map(lambda k: k / 10))


def g_matrix(draw, n_rows, n_cars, entries):
    return np.array([[draw(st.sampled_from(entries)) for _ in range(n_cars)] for _ in range(n_rows)],
                    dtype=float).reshape(n_rows, n_cars)


@st.composite
def now_case(draw, entries=(-1.0, 0.0, 1.0)):
    """Safe setpoints now (0 or >= min, on the step grid, <= max) and the cars short of energy."""
    n_rows, n = draw(st.integers(0, 8)), draw(st.integers(0, 12))
    step = draw(st.sampled_from(STEPS_A))
    # NaN limits (unknown) count as 0, as np.nan_to_num makes them (the kernel's contract).
    lo = np.array([draw(st.sampled_from((0.0, 6.0, 6.0, np.nan))) for _ in range(n)])
    hi = np.array([draw(st.sampled_from((0.0, 10.0, 16.0, 16.0, 32.0, np.nan))) for _ in range(n)])
    x = np.array([draw(st.one_of(st.just(0.0), amps(0, 320))) for _ in range(n)])
    x = np.floor(np.minimum(x, np.nan_to_num(hi)) / step + 1e-9) * step
    x = np.where(x < np.nan_to_num(lo) - 1e-9, 0.0, x)
    kw = np.array([draw(st.sampled_from((0.0, 0.23, 0.69, 0.69))) for _ in range(n)])
    g = g_matrix(draw, n_rows, n, entries)
    # Slack from -2 A (a row already over its limit) to 60 A.
    h = g @ x + np.array([draw(amps(-20, 600)) for _ in range(n_rows)])
    budget_kw = draw(st.one_of(st.just(np.inf), st.integers(-10, 100).map(lambda k: k / 2)))
    short = np.array(sorted(draw(st.sets(st.integers(0, n - 1), max_size=n))) if n else [], dtype=np.int64)
    hours_h = np.array([draw(st.sampled_from((0.5, 1.0, 1.0, 3.0, np.inf))) for _ in range(n)])
    return dict(x=x, short=short, hours_h=hours_h, g=g, h=h, hi=hi, lo=lo, kw=kw, budget_kw=budget_kw, step=step)


# ---- 1. kernel == reference -----------------------------------------------------------------
@SETTINGS
@given(now_case())
def test_top_up_now_matches_its_loop_reference(c):
    order = c["short"][np.argsort(c["hours_h"][c["short"]], kind="stable")]
    x = c["x"].copy()
    slack = c["h"] - c["g"] @ x
    top_up_now(x, order, c["g"], slack, c["hi"], c["lo"], c["kw"], float(c["budget_kw"]), float(c["step"]))
    want = ref_raise_in_order(c["x"], order, c["g"], c["h"] - c["g"] @ c["x"], c["hi"], c["lo"], c["kw"],
                              c["budget_kw"], c["step"])
    np.testing.assert_allclose(x, want, atol=1e-9)
    # The kernel hands back the slack it left (in place), consistent with its answer.
    np.testing.assert_allclose(slack, c["h"] - c["g"] @ x, atol=1e-9)


@SETTINGS
@given(now_case(entries=(0.0, 1.0)))
def test_top_up_first_slot_matches_the_old_code_on_fuse_rows(c):
    # Fuse rows only (g >= 0): room only shrinks as cars are raised, so the old up-front drop
    # of cars without room for one step changes nothing.
    args = [c[k] for k in ("x", "short", "hours_h", "g", "h", "hi", "lo", "kw", "budget_kw", "step")]
    np.testing.assert_allclose(new_top_up_first_slot(*args), ref_top_up_first_slot_old(*args), atol=1e-9)


def test_top_up_first_slot_uses_room_that_raising_another_car_makes():
    # One unbalance row "L2 - L1 <= 0 A": car 0 on L1 (g = -1), car 1 on L2 (g = +1).
    # Car 1 has no room at the start; raising car 0 (earlier departure) gives it 16 A of room.
    # The numpy code this replaced dropped car 1 up front ([16, 0]); the kernel uses the room.
    case = dict(x=np.zeros(2), short=np.array([0, 1]), hours_h=np.array([1.0, 2.0]), g=np.array([[-1.0, 1.0]]),
                h=np.array([0.0]), hi=np.array([16.0, 16.0]), lo=np.array([6.0, 6.0]), kw=np.array([0.23, 0.23]),
                budget_kw=np.inf, step=1.0)
    args = [case[k] for k in ("x", "short", "hours_h", "g", "h", "hi", "lo", "kw", "budget_kw", "step")]
    np.testing.assert_allclose(ref_top_up_first_slot_old(*args), [16.0, 0.0])
    got = new_top_up_first_slot(*args)
    np.testing.assert_allclose(got, [16.0, 16.0])
    assert (case["g"] @ got <= case["h"] + TOL_A).all()


def test_top_up_first_slot_on_a_real_unbalanced_block_is_safe_and_raises_past_the_old_code():
    # A 2 A unbalance limit and mostly single-phase cars: the old code left car S00000 at 8 A,
    # the kernel raises it to 10 A with the room other raises made; every limit still holds.
    from nowblock.seam import constraint_rows, make_safe
    from nowblock.milp.policy import top_up_first_slot
    from nowblock.milp.testing import plugged_in_snapshot

    snap = plugged_in_snapshot(12, seed=0, max_unbalance_a=2.0, single_phase_share=0.9)
    safe = make_safe(snap, pd.Series([8.0, 6, 6, 0, 0, 0, 8, 8, 0, 0, 0, 0], index=snap.cars.index))
    everyone = np.ones(len(safe))
    got = top_up_first_slot(snap, safe, everyone).to_numpy(float)
    g, h = constraint_rows(snap)
    assert (g @ got <= h + TOL_A).all()  # the kernel's answer is safe; it only differs
    x = safe.to_numpy(float)
    want = ref_top_up_first_slot_old(x, np.arange(len(x)), snap.hours_to_departure_h, g, h,
                                     np.nan_to_num(snap.values("max_current_a")),
                                     np.nan_to_num(snap.values("min_current_a")), snap.kw_per_a(), np.inf,
                                     float(snap.current_step_a))
    assert (got >= want - 1e-9).all() and (got > want + 1e-9).any()


@st.composite
def csc_case(draw):
    n_row, n_col = draw(st.integers(0, 8)), draw(st.integers(0, 12))
    a = np.array([[draw(st.sampled_from((0.0, 0.0, 0.0, 1.0, -1.0, 0.5, 2.3))) for _ in range(n_col)]
                  for _ in range(n_row)]).reshape(n_row, n_col)
    v = np.array([draw(amps(-50, 300)) for _ in range(n_col)])
    r = a @ v
    # Bounds around the true values: exact, half a tolerance off (allowed), two tolerances or far
    # off (not allowed), or infinite. Half the cases only take the allowed offsets. Tolerances as
    # documented: absolute on columns, times 1 + |finite row_hi| on rows (kept clear of the edge
    # so that the summation order cannot matter).
    breaking = draw(st.booleans())

    def offset(tol):
        k = draw(st.sampled_from((0.0, 0.5, 2.0, 1e6) if breaking else (0.0, 0.5)))
        return draw(st.sampled_from((1.0, -1.0))) * k * tol

    def finite():
        return draw(st.integers(0, 3)) > 0

    col_lo = np.array([val - offset(TOL_A) if finite() else -np.inf for val in v])
    col_hi = np.array([val + offset(TOL_A) if finite() else np.inf for val in v])
    row_hi = np.array([val + offset(TOL_A * (1.0 + abs(val))) if finite() else np.inf for val in r])
    scale = 1.0 + np.abs(np.where(np.isfinite(row_hi), row_hi, 0.0))
    row_lo = np.array([val - offset(TOL_A * s) if finite() else -np.inf for val, s in zip(r, scale)])
    return a, v, col_lo, col_hi, row_lo, row_hi


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csc_case())
def test_csc_feasible_matches_a_dense_check(case):
    a, v, col_lo, col_hi, row_lo, row_hi = case
    start, index, value = csc_from_dense(a)
    got = csc_feasible(start, index, value, v, col_lo, col_hi, row_lo, row_hi, TOL_A)
    assert bool(got) == ref_feasible(start, index, value, v, col_lo, col_hi, row_lo, row_hi, TOL_A)


def _small_lp():
    """Rows: x0 + x1 in [2, 10], x0 - x1 <= 1 (no lower bound), x1 free row (both infinite)."""
    a = np.array([[1.0, 1.0], [1.0, -1.0], [0.0, 1.0]])
    return dict(start_index_value=csc_from_dense(a), v=np.array([3.0, 4.0]), col_lo=np.array([0.0, 0.0]),
                col_hi=np.array([5.0, np.inf]), row_lo=np.array([2.0, -np.inf, -np.inf]),
                row_hi=np.array([10.0, 1.0, np.inf]))


def _feasible(case):
    return bool(csc_feasible(*case["start_index_value"], case["v"], case["col_lo"], case["col_hi"], case["row_lo"],
                             case["row_hi"], TOL_A))


@pytest.mark.parametrize("change", ["col_below_lo", "col_above_hi", "row_below_lo", "row_above_hi"])
def test_csc_feasible_rejects_each_kind_of_violation(change):
    case = _small_lp()
    assert _feasible(case)  # the base point is feasible, so the change alone makes it fail
    if change == "col_below_lo":
        case["col_lo"] = np.array([3.0 + 2e-6, 0.0])
    elif change == "col_above_hi":
        case["col_hi"] = np.array([3.0 - 2e-6, np.inf])
    elif change == "row_below_lo":
        case["row_lo"] = np.array([7.0 + 2e-5, -np.inf, -np.inf])  # (7 + 1e-5 would be within 1e-6 x (1 + 10))
    else:
        case["v"] = np.array([3.0, 1.99])  # x0 - x1 = 1.01 > 1
        case["row_lo"] = np.array([2.0, -np.inf, -np.inf])
    assert not _feasible(case)
    start, index, value = case["start_index_value"]
    assert not ref_feasible(start, index, value, case["v"], case["col_lo"], case["col_hi"], case["row_lo"],
                            case["row_hi"], TOL_A)


def test_csc_feasible_tolerance_is_relative_to_the_row_bound():
    case = _small_lp()
    case["row_hi"] = np.array([7.0 - 5e-6, 1.0, np.inf])  # 5e-6 over, allowed 1e-6 x (1 + 7)
    assert _feasible(case)
    case["row_hi"] = np.array([7.0 - 9e-6, 1.0, np.inf])
    assert not _feasible(case)


def test_csc_feasible_rejects_nan():
    # A NaN reaching a row made the old is_feasible False (NaN compares False); the kernel
    # says False for every NaN value ("never feasible"), even one on a column without entries.
    case = _small_lp()
    case["v"] = np.array([np.nan, 4.0])
    start, index, value = case["start_index_value"]
    assert ref_feasible(start, index, value, case["v"], case["col_lo"], case["col_hi"], case["row_lo"],
                        case["row_hi"], TOL_A) is False
    assert not _feasible(case)
    case["v"] = np.array([3.0, 4.0, np.nan])
    case["start_index_value"] = csc_from_dense(np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 1.0, 0.0]]))
    case["col_lo"], case["col_hi"] = np.zeros(3), np.array([5.0, np.inf, np.inf])
    assert not _feasible(case)


# ---- 2. the safety contract -----------------------------------------------------------------
@SETTINGS
@given(now_case())
def test_top_up_now_keeps_the_contract(c):
    x0 = c["x"]
    got = new_top_up_first_slot(*[c[k] for k in ("x", "short", "hours_h", "g", "h", "hi", "lo", "kw", "budget_kw",
                                                 "step")])
    g, h = c["g"], c["h"]
    held = g @ x0 <= h + TOL_A
    assert ((g @ got)[held] <= h[held] + TOL_A).all()
    assert (got >= x0).all()
    assert (got <= np.nan_to_num(c["hi"]) + 1e-9).all()
    moved = got != x0
    assert np.isin(np.nonzero(moved)[0], c["short"]).all()
    assert (got[moved] >= np.nan_to_num(c["lo"])[moved] - 1e-9).all()
    on_grid = np.abs(got / c["step"] - np.round(got / c["step"])) < 1e-6
    assert on_grid[moved].all()
    if c["budget_kw"] >= 0:
        assert c["kw"] @ (got - x0) <= c["budget_kw"] + 1e-6
    else:
        assert not (moved & (c["kw"] > 0)).any()


# ---- 4. end to end on a real formulation ----------------------------------------------------
@pytest.fixture(scope="module")
def planned():
    from nowblock.milp import MilpPolicy
    from nowblock.milp.testing import plugged_in_snapshot

    snap = plugged_in_snapshot(30)
    pol = MilpPolicy(time_limit_s=30)
    out = pol.schedule(snap)
    return snap, pol, out


def test_top_up_first_slot_on_the_real_plan(planned):
    from nowblock.seam import constraint_rows, make_safe
    from nowblock.milp.policy import top_up_first_slot

    snap, pol, out = planned
    sched = pol.last_schedule
    form = pol.formulation(snap)
    idx = snap.cars.index
    safe = make_safe(snap, sched.first_slot().reindex(idx).fillna(0.0))
    short = sched.shortfall_kwh.reindex(idx).fillna(0.0).to_numpy(float)
    short = np.where(snap.hours_to_departure_h <= pol.options.top_up_h, short, 0.0)
    peak_kw = float((sched.power_kw.to_numpy().sum(axis=1) + form.base_kw).max(initial=0.0))
    # The policy's own answer is this call's (the same plan read through the schedule's frames).
    got = top_up_first_slot(snap, safe, short, peak_kw=peak_kw)
    pd.testing.assert_series_equal(got, out, check_exact=False, atol=1e-9, rtol=0)

    g, h = constraint_rows(snap)
    hi = np.nan_to_num(snap.values("max_current_a"))
    lo = np.nan_to_num(snap.values("min_current_a"))
    kw = snap.kw_per_a()
    base_now = float(snap.base_load_kw.iloc[0])
    hours = snap.hours_to_departure_h
    # Every other car set to 0 is also safe (fuse rows only) and leaves room to give back.
    low = safe.where(np.arange(len(idx)) % 2 == 1, 0.0)
    everyone = np.ones(len(idx))
    n_raised = 0
    # The plan's short cars under its peak, every car short with no power cap, and the same on
    # the lowered setpoints (the plan itself leaves little room: the grid share is tight).
    for start, short_kwh, peak in ((safe, short, peak_kw), (safe, everyone, np.inf), (low, everyone, peak_kw),
                                   (low, everyone, np.inf)):
        got = top_up_first_slot(snap, start, short_kwh, peak_kw=peak).to_numpy(float)
        x = start.to_numpy(float)
        cars = np.nonzero(short_kwh > 1e-3)[0]
        want = ref_top_up_first_slot_old(x, cars, hours, g, h, hi, lo, kw, peak - base_now - kw @ x,
                                         float(snap.current_step_a))
        np.testing.assert_allclose(got, want, atol=1e-9)
        n_raised += int((got > x + 1e-9).sum())
    assert n_raised > 0
