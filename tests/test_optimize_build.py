"""What the planning step's build kernels produce, checked against the model's documented meaning.

The standard form (:func:`nowblock.milp.matrix.build_matrix`), the snapshot arrays
(:func:`~nowblock.milp.kernels.snapshot_plan_arrays` behind ``from_snapshot``), the
resampling onto slots (``_on_slots``), ``argsort_stable`` and the lazy slot index are compared
with references written here in plain numpy/pandas from the module docstrings and the numpy
code the kernels replaced (``git show 7576f7b:src/nowblock/optimize/formulation.py``). The
matrix is rebuilt densely from its CSC arrays and every row family is recomputed, for random
column values, from the formulation's own arrays, never from the kernels' intermediate arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nowblock.seam import root_index
from nowblock.milp.adapters import from_snapshot
from nowblock.milp.options import OptimizeOptions
from nowblock.milp.slots import SlotTicks
from nowblock.milp.slots import on_slots as _on_slots
from nowblock.milp.slots import slot_ticks as _slot_ticks
from nowblock.milp.kernels import argsort_stable
from nowblock.milp.policy import MilpPolicy
from nowblock.milp.testing import plugged_in_snapshot
from nowblock.block.site import CapWindow

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
H = pd.Timedelta(hours=1)


# ---- snapshots ----------------------------------------------------------------------------
def _with_cars(snap, cars, **kw):
    """``snap`` with an edited ``cars`` frame: producer arrays dropped, so every derived array
    comes from the frame."""
    return dataclasses.replace(snap, cars=cars, car_arrays=None, incidence_a=None, **kw)


def _setpoints_now(snap, seed):
    """Cars with a setpoint applied now (some NaN: none known) and a measured draw."""
    rng = np.random.default_rng(seed)
    cars = snap.cars.copy()
    n = len(cars)
    offered = rng.choice([0.0, 6.0, 10.0, 16.0], n)
    offered[rng.random(n) < 0.2] = np.nan
    cars["offered_current_a"] = offered
    cars["measured_current_a"] = np.where(rng.random(n) < 0.5, offered * rng.uniform(0.1, 1.2, n), np.nan)
    return _with_cars(snap, cars)


def _unbalanced(snap):
    return dataclasses.replace(snap, site=dataclasses.replace(snap.site, max_unbalance_a=20.0), car_arrays=None,
                               incidence_a=None)


MATRIX_CASES = {
    "defaults-milp": (dict(), False, False),
    "defaults-lp": (dict(), True, False),
    "fair-peak-change-all-binary": (dict(sharing="fair", peak_eur_per_kw=0.5, change_eur_per_a=0.01,
                                         change_slots=None, binary_slots=None), False, False),
    "no-peak-no-change": (dict(peak_eur_per_kw=0.0, change_eur_per_a=0.0), False, False),
    "unbalance-fair": (dict(sharing="fair", peak_eur_per_kw=0.2, change_eur_per_a=0.01, change_slots=6), False,
                       True),
    "unbalance-lp": (dict(binary_slots=0), True, True),
    "first-slot-control-step": (dict(first_slot_is_control_step=True, peak_eur_per_kw=0.3, change_eur_per_a=0.01,
                                     binary_slots=3), False, True),
}


@pytest.fixture(scope="module")
def base_snapshot():
    return _setpoints_now(plugged_in_snapshot(40, seed=3), seed=3)


# ---- 1. the standard form ---------------------------------------------------------------------
def _dense(mf):
    """The constraint matrix as a dense array, from the CSC arrays alone."""
    col = np.repeat(np.arange(mf.num_col), np.diff(mf.a_start))
    a = np.zeros((mf.num_row, mf.num_col))
    np.add.at(a, (mf.a_index, col), mf.a_value)
    return a


def _check_csc(mf):
    s = np.asarray(mf.a_start)
    assert len(s) == mf.num_col + 1 and s[0] == 0 and s[-1] == mf.num_nz
    assert (np.diff(s) >= 0).all()
    idx = np.asarray(mf.a_index)
    assert ((idx >= 0) & (idx < mf.num_row)).all()
    for j in range(mf.num_col):
        assert (np.diff(idx[s[j]:s[j + 1]]) > 0).all(), f"column {j}: row indices not strictly increasing"
    assert np.isfinite(mf.a_value).all() and (mf.a_value != 0).all()


def _layout_ok(slices, names):
    """Blocks come in the documented order, back to back, from 0."""
    present = [k for k in names if k in slices]
    assert list(slices) == present
    pos = 0
    for k in present:
        assert slices[k].start == pos
        pos = slices[k].stop
    return pos


@pytest.mark.parametrize("case", list(MATRIX_CASES))
def test_matrix_rows_mean_the_model(base_snapshot, case):
    opts, relax, unbalance = MATRIX_CASES[case]
    snap = _unbalanced(base_snapshot) if unbalance else base_snapshot
    pol_kw = dict(opts)
    first = pol_kw.pop("first_slot_is_control_step", False)
    f = MilpPolicy(horizon="8h", step="15min", first_slot_is_control_step=first, **pol_kw).formulation(snap)
    o = f.options
    mf = f.matrix(relax=relax)
    _check_csc(mf)
    n, T = f.n_cars, f.n_slots
    site = f.site

    # Independent per-cell arrays, from the formulation's documented fields.
    mask = (f.plugged > 0) & (f.upper_a > 0) & (f.upper_a >= f.min_current_a[:, None] - 1e-9)
    car, slot = np.nonzero(mask)
    np.testing.assert_array_equal(f.cells[0], car)
    np.testing.assert_array_equal(f.cells[1], slot)
    K = len(car)
    slot_h = np.broadcast_to(np.asarray(f.dt_h, dtype=float), (T,))
    kw_per_a = f.phases * site.voltage_v / 1000.0
    ratio = np.ones(n) if f.draw_ratio is None else f.draw_ratio
    kwh_cell = (kw_per_a * ratio)[car] * slot_h[slot] * f.plugged[car, slot]
    ub_cell = f.upper_a[car, slot]
    need = np.maximum(f.need_kwh, 0.0)
    n_bin = T if o.binary_slots is None else min(o.binary_slots, T)
    bcell = np.zeros(0, dtype=np.int64) if relax else np.nonzero((slot < n_bin) & (f.min_current_a[car] > 0))[0]
    B = len(bcell)
    fair = o.sharing == "fair"
    use_peak = o.peak_eur_per_kw > 0
    n_change = T if o.change_slots is None else min(o.change_slots, T)
    pairs, has_prev, rhs = [], [], []
    if o.change_eur_per_a > 0:
        cell_set = set(zip(car.tolist(), slot.tolist()))
        for k in range(K):
            if k > 0 and car[k - 1] == car[k] and slot[k - 1] == slot[k] - 1 and slot[k] < n_change:
                pairs.append(k), has_prev.append(True), rhs.append(0.0)
            elif slot[k] == 0 and np.isfinite(f.prev_current_a[car[k]]):
                pairs.append(k), has_prev.append(False), rhs.append(f.prev_current_a[car[k]])
            elif 0 < slot[k] < n_change:  # from 0 A: no cell of the car in the slot before
                pairs.append(k), has_prev.append(False), rhs.append(0.0)
            if slot[k] + 1 < n_change and (car[k], slot[k] + 1) not in cell_set:  # to 0 A after it
                pairs.append(k), has_prev.append(False), rhs.append(0.0)
    P = len(pairs)
    if case != "no-peak-no-change":
        assert P > 0 and any(not h for h in has_prev), "the case should state first-slot change pairs"
    np.testing.assert_array_equal(mf.binary_cell, bcell)
    np.testing.assert_array_equal(mf.change_cell, pairs)
    np.testing.assert_array_equal(mf.change_has_prev, has_prev)
    np.testing.assert_allclose(mf.change_rhs, rhs, rtol=0, atol=0)

    # The light side of a stated unbalance row: with binaries a useful-current column per cell;
    # an LP gives those cars no overshoot instead (docs/optimizer.md, "The model").
    inc = f.incidence
    light_cells = np.zeros(0, dtype=np.int64)
    if unbalance:
        root = root_index(site)
        u_lim = np.floor(site.max_unbalance_a / o.current_step_a + 1e-9) * o.current_step_a
        UB0 = np.zeros((n, T))
        UB0[car, slot] = ub_cell
        cells_on_light = set()
        for p in range(3):
            for q in range(3):
                if p == q:
                    continue
                d = inc[3 * root + p] - inc[3 * root + q]
                heavy = np.maximum(d, 0.0) @ UB0
                for k in range(K):
                    if d[car[k]] < 0 and heavy[slot[k]] > u_lim + 1e-9:
                        cells_on_light.add(k)
        light_cells = np.array(sorted(cells_on_light), dtype=np.int64)
    U = 0 if relax else len(light_cells)
    u_cars = np.unique(car[light_cells])

    # Column layout, bounds, integrality and cost.
    sizes = {"current_a": K, "on": B, "shortfall_kwh": n, "worst_fraction": int(fair), "peak_kw": int(use_peak),
             "change_up_a": P, "change_down_a": P, "useful_a": U}
    assert _layout_ok(mf.cols, list(sizes)) == mf.num_col
    for name, size in sizes.items():
        assert mf.cols[name].stop - mf.cols[name].start == size, name
    c = mf.cols
    np.testing.assert_array_equal(mf.col_lo, 0.0)
    np.testing.assert_array_equal(mf.col_hi[c["current_a"]], ub_cell)
    np.testing.assert_array_equal(mf.col_hi[c["on"]], 1.0)
    np.testing.assert_array_equal(mf.col_hi[c["shortfall_kwh"]], need)
    np.testing.assert_array_equal(mf.col_hi[c["worst_fraction"]], 1.0)
    np.testing.assert_array_equal(mf.col_hi[c["useful_a"]], ub_cell[light_cells] if U else [])
    np.testing.assert_array_equal(mf.useful_cell, light_cells if U else [])
    rest = np.r_[mf.col_hi[c["peak_kw"]], mf.col_hi[c["change_up_a"]], mf.col_hi[c["change_down_a"]]]
    assert np.isposinf(rest).all()
    integ = np.zeros(mf.num_col, dtype=np.int32)
    integ[c["on"]] = 1
    np.testing.assert_array_equal(mf.integrality, integ)
    # A flat cost per kWh (no longer rising over the horizon: docs/optimizer.md, "Solving").
    # Less in the first slot for the cars the policy's top-up serves (``now_bonus_eur_per_kwh``).
    bonus = np.zeros(n) if f.now_bonus_eur_per_kwh is None else f.now_bonus_eur_per_kwh
    if case == "defaults-milp":
        assert (bonus > 0).any(), "the policy's formulation should prefer energy now for some car"
    per_kwh = f.price_eur_per_kwh[slot] + o.early_eur_per_kwh - np.where(slot == 0, bonus[car], 0.0)
    np.testing.assert_allclose(mf.cost[c["current_a"]], per_kwh * kwh_cell, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(mf.cost[c["on"]], 0.0)
    weight = np.ones(n) if f.shortfall_weight is None else f.shortfall_weight
    np.testing.assert_allclose(mf.cost[c["shortfall_kwh"]], o.shortfall_eur_per_kwh * f.priority * weight,
                               rtol=1e-12)
    if fair:
        w = 10.0 * o.shortfall_eur_per_kwh * max(need.sum(), 1e-9) * max(f.priority.max(), 1.0) * max(weight.max(), 1)
        np.testing.assert_allclose(mf.cost[c["worst_fraction"]], w, rtol=1e-12)
        assert w * 1e-3 > (o.shortfall_eur_per_kwh * f.priority * weight).max()  # fairness dominates
    if use_peak:
        np.testing.assert_array_equal(mf.cost[c["peak_kw"]], o.peak_eur_per_kw)
    np.testing.assert_array_equal(mf.cost[c["change_up_a"]], o.change_eur_per_a)
    np.testing.assert_array_equal(mf.cost[c["change_down_a"]], o.change_eur_per_a)

    # Rows: A @ v for random v, family by family.
    rng = np.random.default_rng(list(MATRIX_CASES).index(case))  # str hash varies per process
    v = rng.normal(0.0, 10.0, mf.num_col)
    y = _dense(mf) @ v
    x, on, sh = v[c["current_a"]], v[c["on"]], v[c["shortfall_kwh"]]
    wf = v[c["worst_fraction"]][0] if fair else None
    pk = v[c["peak_kw"]][0] if use_peak else None
    up, dn = v[c["change_up_a"]], v[c["change_down_a"]]
    X = np.zeros((n, T))
    X[car, slot] = x
    u_val = v[c["useful_a"]]
    XU = X.copy()  # the light side: useful currents where the model has them
    if U:
        XU[:] = 0.0
        XU[car[light_cells], slot[light_cells]] = u_val
    np.testing.assert_array_equal(inc, site.phase_incidence(f.cp_index, f.phases))
    load = inc @ X  # (fuse-phase rows, T) [A]
    r = mf.rows
    fams = ["energy", "fuse", "unbalance", "on_upper", "on_lower", "fair", "peak", "change", "useful_upper",
            "useful_energy"]
    assert _layout_ok(r, fams) == mf.num_row
    close = dict(rtol=1e-10, atol=1e-8)

    # Energy: need <= delivered + shortfall <= need + one slot at the minimum.
    energy = np.bincount(car, weights=kwh_cell * x, minlength=n) + sh
    np.testing.assert_allclose(y[r["energy"]], energy, **close)
    np.testing.assert_array_equal(mf.row_lo[r["energy"]], need)
    step = o.current_step_a
    on_a = np.maximum(np.ceil(f.min_current_a / step - 1e-9) * step, step)  # least setpoint, in steps
    overshoot = on_a * kw_per_a * slot_h.max()
    if relax and unbalance:
        assert len(u_cars) and mf.bound_slack_eur >= 0
        overshoot[u_cars] = 0.0
    np.testing.assert_allclose(mf.row_hi[r["energy"]], need + overshoot, rtol=1e-12)

    # Fuse rows: stated (row, slot) in increasing order; the others can never be exceeded.
    room = np.repeat(site.limits_a.reshape(-1, 1), T, axis=1)
    root = root_index(site)
    room[3 * root:3 * root + 3] -= site.base_load_phase_current_a(f.base_kw).T
    room = np.floor(np.maximum(room, 0.0) / o.current_step_a + 1e-9) * o.current_step_a  # whole pilot steps
    label = np.asarray(mf.fuse_row_label)
    assert label.shape == (r["fuse"].stop - r["fuse"].start, 2)
    key = label[:, 0] * T + label[:, 1]
    assert (np.diff(key) > 0).all()
    np.testing.assert_allclose(y[r["fuse"]], load[label[:, 0], label[:, 1]], **close)
    assert np.isneginf(mf.row_lo[r["fuse"]]).all()
    np.testing.assert_allclose(mf.row_hi[r["fuse"]], room[label[:, 0], label[:, 1]], rtol=1e-12, atol=1e-12)
    UB = np.zeros((n, T))
    UB[car, slot] = ub_cell
    worst = np.maximum(inc, 0.0) @ UB  # every car at its upper bound
    stated = np.zeros(worst.shape, dtype=bool)
    stated[label[:, 0], label[:, 1]] = True
    assert (worst[~stated] <= room[~stated] + 1e-9).all(), "an unstated fuse row could be exceeded"
    assert (worst[stated] > room[stated]).all(), "a fuse row is stated that can never bind"
    assert stated.any() and (~stated).any()

    # Unbalance at the root: phase p minus phase q, for p != q, only where it could exceed.
    if unbalance:
        u = np.floor(site.max_unbalance_a / o.current_step_a + 1e-9) * o.current_step_a
        ul = np.asarray(mf.unbalance_row_label)
        assert "unbalance" in r and len(ul) == r["unbalance"].stop - r["unbalance"].start > 0
        assert ((ul[:, 0] != ul[:, 1]) & (ul[:, :2] >= 0).all(axis=1) & (ul[:, :2] < 3).all(axis=1)).all()
        rp, rq = 3 * root + ul[:, 0], 3 * root + ul[:, 1]
        pos_d = np.maximum(inc[rp] - inc[rq], 0.0)
        neg_d = np.minimum(inc[rp] - inc[rq], 0.0)
        lhs = (pos_d * X[:, ul[:, 2]].T).sum(axis=1) + (neg_d * XU[:, ul[:, 2]].T).sum(axis=1)
        np.testing.assert_allclose(y[r["unbalance"]], lhs, **close)
        assert np.isneginf(mf.row_lo[r["unbalance"]]).all()
        np.testing.assert_array_equal(mf.row_hi[r["unbalance"]], u)
        seen = {tuple(row) for row in ul}
        assert len(seen) == len(ul)
        for p in range(3):
            for q in range(3):
                if p == q:
                    continue
                w = np.maximum(inc[3 * root + p] - inc[3 * root + q], 0.0) @ UB
                for t in range(T):
                    assert ((p, q, t) in seen) == (w[t] > u + 1e-9), (p, q, t)
    else:
        assert "unbalance" not in r and len(mf.unbalance_row_label) == 0

    # On/off: current <= upper * on and current >= min * on.
    if B:
        np.testing.assert_allclose(y[r["on_upper"]], x[bcell] - ub_cell[bcell] * on, **close)
        np.testing.assert_allclose(y[r["on_lower"]], x[bcell] - f.min_current_a[car[bcell]] * on, **close)
        assert np.isneginf(mf.row_lo[r["on_upper"]]).all() and (mf.row_hi[r["on_upper"]] == 0).all()
        assert (mf.row_lo[r["on_lower"]] == 0).all() and np.isposinf(mf.row_hi[r["on_lower"]]).all()
    else:
        assert "on_upper" not in r and "on_lower" not in r

    # Max-min fair: shortfall / need <= worst fraction, for every car that needs something.
    if fair:
        has = np.nonzero(need > 1e-9)[0]
        np.testing.assert_allclose(y[r["fair"]], sh[has] / need[has] - wf, **close)
        assert np.isneginf(mf.row_lo[r["fair"]]).all() and (mf.row_hi[r["fair"]] == 0).all()
    else:
        assert "fair" not in r

    # Peak: charging power - peak <= -other load, every slot.
    if use_peak:
        power = (X * kw_per_a[:, None]).sum(axis=0)
        np.testing.assert_allclose(y[r["peak"]], power - pk, **close)
        assert np.isneginf(mf.row_lo[r["peak"]]).all()
        np.testing.assert_array_equal(mf.row_hi[r["peak"]], -f.base_kw)
    else:
        assert "peak" not in r

    # Setpoint changes: current - previous (or the setpoint now, on the right) - up + down.
    if P:
        pairs_a, hp = np.array(pairs), np.array(has_prev)
        prev = np.where(hp, x[np.maximum(pairs_a - 1, 0)], 0.0)
        np.testing.assert_allclose(y[r["change"]], x[pairs_a] - prev - up + dn, **close)
        np.testing.assert_array_equal(mf.row_lo[r["change"]], rhs)
        np.testing.assert_array_equal(mf.row_hi[r["change"]], rhs)
    else:
        assert "change" not in r

    # Useful currents: u <= current on every light-side cell, a car's useful energy <= its need.
    if U:
        np.testing.assert_allclose(y[r["useful_upper"]], u_val - x[light_cells], **close)
        assert (mf.row_hi[r["useful_upper"]] == 0).all()
        ue = np.bincount(car[light_cells], weights=kwh_cell[light_cells] * u_val, minlength=n)[u_cars]
        np.testing.assert_allclose(y[r["useful_energy"]], ue, **close)
        np.testing.assert_allclose(mf.row_hi[r["useful_energy"]], need[u_cars], rtol=1e-12)
    else:
        assert "useful_upper" not in r and "useful_energy" not in r


# ---- 2. snapshot arrays -----------------------------------------------------------------------
def ref_plan(snap, horizon, step, opts, first_slot):
    """The old ``from_snapshot`` rules in plain numpy/pandas, from the cars frame."""
    cars = snap.cars
    step, horizon, ctrl = pd.Timedelta(step), pd.Timedelta(horizon), pd.Timedelta(snap.step)
    if first_slot and ctrl < step:
        T = 1 + int(np.ceil((horizon - ctrl) / step - 1e-9))
        dt = np.r_[ctrl / H, np.full(T - 1, step / H)]
    else:
        T = int(np.ceil(horizon / step - 1e-9))
        dt = np.full(T, step / H)
    offs = np.r_[0.0, np.cumsum(dt)[:-1]]
    dep = pd.DatetimeIndex(cars["departure"])
    left = np.array((dep - snap.time) / H, dtype=float)
    left[dep.isna()] = offs[-1] + dt[-1]  # unknown departure: plugged in all horizon
    ctrl_h = ctrl / H
    urgency = 1.0 + opts.urgency_h / np.maximum(left, ctrl_h)
    margin = np.clip(np.minimum(opts.departure_margin_h, 0.25 * left), 0.0, None)
    leave = np.maximum(left - margin, min(ctrl_h, dt[0]))
    plugged = np.clip((np.minimum(leave[:, None], (offs + dt)[None, :]) - offs) / dt, 0.0, 1.0)
    plugged[:, 1:] = np.where(plugged[:, 1:] >= 1 - 1e-9, 1.0, 0.0)
    cp = cars["cp_index"].to_numpy(np.int64)
    max_a = cars["max_current_a"].to_numpy(float)
    hi = np.minimum(snap.site.cp_max_current_a[cp], max_a)  # NaN stays NaN
    upper = np.where(plugged > 0, hi[:, None], 0.0)
    if snap.site.has_caps:  # time windows each slot overlaps (today's cap is already in max_a)
        starts = snap.time.tz_convert("UTC") + pd.to_timedelta(np.round(offs * 3.6e12).astype(np.int64), unit="ns")
        cap = snap.site.cap_current_a(pd.DatetimeIndex(starts), dt * 3600.0)[:, cp].T
        upper = np.where(plugged > 0, np.minimum(upper, cap), 0.0)
    upper[:, 0] = np.minimum(upper[:, 0], max_a)
    meas = cars["measured_current_a"].to_numpy(float)
    offered = cars["offered_current_a"].to_numpy(float)
    ok = np.isfinite(meas) & (meas > 0) & (offered > 0)
    ratio = np.ones(len(cars))
    ratio[ok] = np.clip(meas[ok] / offered[ok], 0.2, 1.0)
    phases = cars["phases"].to_numpy(float)
    kw_per_a = phases * snap.site.voltage_v / 1000.0
    need = np.maximum(cars["energy_requested_kwh"].to_numpy(float) - cars["energy_delivered_kwh"].to_numpy(float),
                      0.0)
    can = (upper * plugged * dt).sum(axis=1) * kw_per_a
    need = np.where(np.isfinite(need), need, can)
    one_slot = cars["min_current_a"].to_numpy(float) * kw_per_a * dt[0] * ratio
    need = np.where((need > 1e-3) & (need < one_slot), one_slot, need)
    return dict(plugged=plugged, upper_a=upper, need_kwh=need, draw_ratio=ratio, shortfall_weight=urgency,
                prev_current_a=offered, dt=dt)


def _edge_snapshot(seed=5, tz="UTC"):
    snap = plugged_in_snapshot(24, seed=seed)
    cars = snap.cars.copy()
    now = snap.time
    ids = cars.index
    col = cars.columns.get_loc
    cars.iloc[0, col("energy_requested_kwh")] = np.nan  # unknown energy
    cars.iloc[1, col("departure")] = pd.NaT  # unknown departure
    cars.iloc[2, [col("energy_requested_kwh"), col("departure")]] = [np.nan, pd.NaT]
    cars.iloc[3, col("departure")] = now - pd.Timedelta("10min")  # already passed
    cars.iloc[4, col("departure")] = now + pd.Timedelta("7min")  # inside the first slot
    cars.iloc[5, col("departure")] = now + pd.Timedelta("2h7min")  # a later partial slot
    cars.iloc[6, col("departure")] = now + pd.Timedelta("20min")  # margin: a quarter of the time left
    cars.iloc[7, col("max_current_a")] = np.nan  # unknown maximum
    cars.iloc[8, [col("max_current_a"), col("energy_requested_kwh")]] = [np.nan, np.nan]
    cars.iloc[9, col("energy_requested_kwh")] = 0.5  # less than one slot at the minimum
    cars.iloc[10, col("energy_requested_kwh")] = 0.0005  # below the 1 Wh threshold
    cars.iloc[11, col("energy_delivered_kwh")] = cars.iloc[11, col("energy_requested_kwh")] + 3.0  # over-delivered
    cars.iloc[12, col("priority")] = np.nan
    cars.iloc[13, col("max_current_a")] = 3.0  # below the minimum: no cells
    meas_off = [(10.0, 16.0), (2.0, 16.0), (20.0, 16.0), (np.nan, 16.0), (8.0, 0.0), (0.0, 10.0), (5.0, np.nan)]
    for j, (m, o) in enumerate(meas_off):
        cars.iloc[14 + j, [col("measured_current_a"), col("offered_current_a")]] = [m, o]
    cars.iloc[20, [col("energy_requested_kwh"), col("measured_current_a"), col("offered_current_a")]] = [0.4, 8.0,
                                                                                                          16.0]
    cars.iloc[21, col("offered_current_a")] = np.nan
    assert len(set(ids)) == len(ids)
    return _with_cars(snap, cars, time=now.tz_convert(tz))


@pytest.mark.parametrize("first_slot", [False, True])
@pytest.mark.parametrize("opts", [dict(), dict(departure_margin_h=0.0, urgency_h=0.0), dict(departure_margin_h=3.0,
                                                                                           urgency_h=2.5)])
def test_snapshot_arrays_follow_the_old_rules(opts, first_slot):
    snap = _edge_snapshot()
    o = OptimizeOptions(**opts)
    f = from_snapshot(snap, "10h", "15min", o, first_slot_is_control_step=first_slot)
    ref = ref_plan(snap, "10h", "15min", o, first_slot)
    assert f.n_slots == len(ref["dt"])
    np.testing.assert_allclose(f.slot_h, ref["dt"], rtol=0, atol=1e-12)
    for name in ("plugged", "upper_a", "need_kwh", "draw_ratio", "shortfall_weight", "prev_current_a"):
        np.testing.assert_allclose(getattr(f, name), ref[name], rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(f.priority, np.nan_to_num(snap.cars["priority"].to_numpy(float), nan=1.0))
    np.testing.assert_array_equal(f.session_ids, snap.cars.index.to_numpy(str))
    lo = snap.cars["min_current_a"].to_numpy()[:, None]
    mask = (ref["plugged"] > 0) & (ref["upper_a"] > 0) & (ref["upper_a"] >= lo - 1e-9)
    car, slot = np.nonzero(mask)
    np.testing.assert_array_equal(f.cells[0], car)
    np.testing.assert_array_equal(f.cells[1], slot)
    # The edge cases are really exercised.
    assert np.isnan(f.upper_a[7, 0]) and not (f.cells[0] == 7).any()
    assert (f.plugged[:, 1:] % 1 == 0).all()
    if not first_slot:  # a 15-min first slot: partial presence (a 5-min one is covered in full)
        assert 0 < f.plugged[4, 0] < 1 and 0 < f.plugged[3, 0] < 1
    assert f.need_kwh[10] == pytest.approx(0.0005) and f.need_kwh[11] == 0
    remaining = snap.remaining_kwh
    bumped = np.isfinite(remaining) & (f.need_kwh > remaining + 1e-9)
    assert bumped[9] == (not first_slot)  # 0.5 kWh: less than 15 min at 6 A on three phases, more than 5 min
    assert np.isfinite(f.need_kwh[[0, 2]]).all() and np.isnan(f.need_kwh[8])


@pytest.mark.parametrize("first_slot", [False, True])
def test_snapshot_arrays_with_time_window_caps(first_slot):
    """Later slots follow the site's cap windows (local time); a cap below the minimum leaves
    no cell; the cells are those of the documented mask."""
    snap = _edge_snapshot(seed=6)
    windows = (CapWindow("19:00", "20:30", 4.0), CapWindow("23:00", "01:15", 10.0))
    cps = tuple(dataclasses.replace(c, caps=windows if j % 2 else ()) for j, c in enumerate(snap.site.charge_points))
    site = dataclasses.replace(snap.site, charge_points=cps, timezone="Europe/Berlin")
    snap = dataclasses.replace(snap, site=site, car_arrays=None, incidence_a=None)
    assert site.has_caps
    o = OptimizeOptions()
    f = from_snapshot(snap, "10h", "15min", o, first_slot_is_control_step=first_slot)
    ref = ref_plan(snap, "10h", "15min", o, first_slot)
    for name in ("plugged", "upper_a", "need_kwh", "draw_ratio", "shortfall_weight"):
        np.testing.assert_allclose(getattr(f, name), ref[name], rtol=0, atol=1e-12, err_msg=name)
    lo = snap.cars["min_current_a"].to_numpy()[:, None]
    car, slot = np.nonzero((ref["plugged"] > 0) & (ref["upper_a"] > 0) & (ref["upper_a"] >= lo - 1e-9))
    np.testing.assert_array_equal(f.cells[0], car)
    np.testing.assert_array_equal(f.cells[1], slot)
    capped = np.isin(f.upper_a, [4.0, 10.0]) & (f.plugged > 0)
    assert capped.any() and (f.upper_a[capped] < snap.cars["max_current_a"].to_numpy()[:, None].repeat(
        f.n_slots, axis=1)[capped]).all()


def test_snapshot_arrays_with_producer_arrays_equal_the_frame():
    """The simulator's producer arrays give the same formulation as the frame they mirror."""
    with_arrays = plugged_in_snapshot(30, seed=8)
    without = _with_cars(with_arrays, with_arrays.cars.copy())
    a = from_snapshot(with_arrays, "6h", "15min")
    b = from_snapshot(without, "6h", "15min")
    for name in ("plugged", "upper_a", "need_kwh", "draw_ratio", "shortfall_weight", "base_kw", "price_eur_per_kwh"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    ref = ref_plan(without, "6h", "15min", OptimizeOptions(), False)
    np.testing.assert_allclose(a.need_kwh, ref["need_kwh"], rtol=0, atol=1e-12)


# ---- 3. resampling onto slots ---------------------------------------------------------------
def ref_on_slots(series, ticks_ns, slot_h, default, how):
    """Each slot sampled at 15 evenly spaced instants, last value carried forward (the first
    value before the series), then max or mean. NaN filled forward then backward in the
    series' own order, duplicate times keep the last value."""
    if series is None or len(series) == 0:
        return np.full(len(ticks_ns), float(default))
    idx = pd.DatetimeIndex(series.index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    s = pd.Series(series.to_numpy(float), index=idx.as_unit("ns")).ffill().bfill()
    s = s[~s.index.duplicated(keep="last")].sort_index()
    out = np.empty(len(ticks_ns))
    for t, (tick, h) in enumerate(zip(ticks_ns, slot_h)):
        at = pd.DatetimeIndex([tick + int(j / 15 * h * 3.6e12) for j in range(15)], tz="UTC").as_unit("ns")
        vals = np.array(s.asof(at), dtype=float)
        vals[at < s.index[0]] = s.iloc[0]
        out[t] = vals.max() if how == "max" else vals.mean()
    return out


_START = pd.Timestamp("2026-03-01 10:00", tz="UTC")


@st.composite
def series_and_slots(draw):
    first = draw(st.sampled_from([None, "1min", "5min"]))
    ticks, slot_h = _slot_ticks(_START, "3h", "15min", first=first)
    n = draw(st.integers(1, 30))
    where = draw(st.sampled_from(["around", "before", "after", "inside"]))
    lo, hi = {"around": (-60, 240), "before": (-500, -1), "after": (181, 400), "inside": (0, 180)}[where]
    mins = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
    if not draw(st.booleans()):
        mins = sorted(set(mins))  # the clean, strictly increasing case
    seconds = draw(st.lists(st.sampled_from([0, 1, 30, 59]), min_size=len(mins), max_size=len(mins)))
    vals = draw(st.lists(st.one_of(st.floats(-50, 50, allow_nan=False), st.just(np.nan)) if draw(st.booleans())
                         else st.floats(-50, 50, allow_nan=False), min_size=len(mins), max_size=len(mins)))
    idx = pd.DatetimeIndex([_START + pd.Timedelta(minutes=m, seconds=s) for m, s in zip(mins, seconds)])
    tz = draw(st.sampled_from(["UTC", "Europe/Berlin", None]))
    idx = idx.tz_localize(None) if tz is None else idx.tz_convert(tz)
    idx = idx.as_unit(draw(st.sampled_from(["s", "us", "ns"])))
    return pd.Series(vals, index=idx, dtype=float), ticks, slot_h, draw(st.sampled_from(["max", "mean"]))


@SETTINGS
@given(series_and_slots())
def test_on_slots_matches_pandas(args):
    series, ticks, slot_h, how = args
    got = _on_slots(series, ticks, slot_h, -1.0, how)
    np.testing.assert_allclose(got, ref_on_slots(series, ticks, slot_h, -1.0, how), rtol=1e-12, atol=1e-12)


def test_on_slots_edge_cases():
    ticks, slot_h = _slot_ticks(_START, "2h", "15min", first="1min")
    assert slot_h[0] == pytest.approx(1 / 60) and len(ticks) == 1 + 8
    np.testing.assert_array_equal(_on_slots(None, ticks, slot_h, 3.5), 3.5)
    np.testing.assert_array_equal(_on_slots(pd.Series([], dtype=float, index=pd.DatetimeIndex([], tz="UTC")), ticks,
                                            slot_h, 2.0), 2.0)
    # Duplicates (the last wins), unsorted, NaN: each against the reference.
    idx = pd.DatetimeIndex([_START + pd.Timedelta(minutes=m) for m in (30, 0, 30, 14, 90, 90)])
    s = pd.Series([1.0, 2.0, 3.0, np.nan, 5.0, 7.0], index=idx)
    for how in ("max", "mean"):
        np.testing.assert_allclose(_on_slots(s, ticks, slot_h, 0.0, how), ref_on_slots(s, ticks, slot_h, 0.0, how),
                                   rtol=1e-12, atol=0)
    got = _on_slots(s, ticks, slot_h, 0.0, "max")
    assert got[3] == 3.0 and got[-2] == 7.0  # 30 min: last of the duplicates; 90 min: 7 not 5
    only_before = pd.Series([4.0, 6.0], index=[_START - pd.Timedelta("2h"), _START - pd.Timedelta("1h")])
    np.testing.assert_array_equal(_on_slots(only_before, ticks, slot_h, 0.0), 6.0)
    only_after = pd.Series([4.0, 6.0], index=[_START + pd.Timedelta("5h"), _START + pd.Timedelta("6h")])
    np.testing.assert_array_equal(_on_slots(only_after, ticks, slot_h, 0.0), 4.0)
    all_nan = pd.Series([np.nan, np.nan], index=[_START, _START + pd.Timedelta("1h")])
    assert np.isnan(_on_slots(all_nan, ticks, slot_h, 0.0)).all()


def test_snapshot_base_load_and_prices_on_slots():
    snap = plugged_in_snapshot(5, seed=2)
    for first in (False, True):
        f = from_snapshot(snap, "5h", "15min", first_slot_is_control_step=first)
        ticks = np.asarray(f.times.as_unit("ns").asi8)
        np.testing.assert_allclose(f.base_kw, ref_on_slots(snap.base_load_kw, ticks, f.slot_h, 0.0, "max"), rtol=1e-12)
        np.testing.assert_allclose(f.price_eur_per_kwh, ref_on_slots(snap.prices_eur_per_kwh, ticks, f.slot_h, 0.0,
                                                                     "mean"), rtol=1e-12)


# ---- 4. argsort_stable ----------------------------------------------------------------------
@SETTINGS
@given(st.lists(st.integers(-3, 3), max_size=60), st.booleans())
def test_argsort_stable_equals_numpy(keys, as_float):
    key = np.array(keys, dtype=float if as_float else np.int64)
    np.testing.assert_array_equal(argsort_stable(key), np.argsort(key, kind="stable"))


@SETTINGS
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=40))
def test_argsort_stable_floats(keys):
    key = np.array(keys, dtype=float)
    np.testing.assert_array_equal(argsort_stable(key), np.argsort(key, kind="stable"))


def test_argsort_stable_small():
    assert len(argsort_stable(np.zeros(0))) == 0
    np.testing.assert_array_equal(argsort_stable(np.array([4.0])), [0])
    np.testing.assert_array_equal(argsort_stable(np.ones(7)), np.arange(7))


# ---- 5. the lazy slot index -------------------------------------------------------------------
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
@pytest.mark.parametrize("unit", ["s", "us", "ns"])
def test_times_lazy_from_slot_ticks(tz, unit):
    base = plugged_in_snapshot(4, seed=1)
    snap = dataclasses.replace(base, time=base.time.as_unit(unit).tz_convert(tz))
    f = from_snapshot(snap, "3h", "15min")
    assert isinstance(f.slot_starts, SlotTicks)
    assert f.n_slots == 12
    assert "times" not in vars(f)  # n_slots did not build the index (a cached property)
    want = pd.date_range(snap.time.tz_convert("UTC"), periods=12, freq="15min")
    assert want.unit == unit
    pd.testing.assert_index_equal(f.times, want, check_freq=False)
    assert str(f.times.tz) == "UTC" and f.times.unit == unit
    assert vars(f)["times"] is f.times  # built once

    g = from_snapshot(snap, "3h", "15min", first_slot_is_control_step=True)
    assert g.n_slots == 13  # 5 min, then ceil(175 / 15) = 12 slots of 15 min
    want = pd.DatetimeIndex([snap.time.tz_convert("UTC")]).append(
        pd.date_range(snap.time.tz_convert("UTC") + snap.step, periods=g.n_slots - 1, freq="15min")).as_unit(unit)
    pd.testing.assert_index_equal(g.times, want, check_freq=False)
    assert g.times.unit == unit
    np.testing.assert_allclose(g.slot_h, np.r_[5 / 60, np.full(g.n_slots - 1, 0.25)], rtol=0, atol=1e-15)


def test_slot_ticks_index_finer_than_its_unit():
    start = pd.Timestamp("2026-01-01 00:00", tz="UTC").as_unit("s")
    ticks, _ = _slot_ticks(start, "1h", "15min", first="1500ms")
    idx = SlotTicks(ticks, "s").index()
    assert idx.unit in ("ms", "us", "ns")
    pd.testing.assert_index_equal(idx.as_unit("ns"), pd.DatetimeIndex(
        [start] + list(pd.date_range(start + pd.Timedelta("1500ms"), periods=len(ticks) - 1, freq="15min")),
        tz="UTC").as_unit("ns"))
