"""A coarse first stage for fine slot grids: the LP on slots a few times longer, made a real plan on
the fine grid, and a Lagrange bound on the fine model from its duals.

HiGHS's LP grows far faster than the slot count: at 1,000 cars, 288 slots of 5 minutes with base
load, prices and an unbalance limit took 25-35 s (simplex, IPM with or without crossover; PDLP
57 s), the same cars on 96 slots of 15 minutes about 1 s (docs/bench_optimize.md). So, for fine
grids:

1. :func:`coarse_formulation`: the same cars on slots of ``factor`` fine slots each, a
   *restriction* of the fine model: a car's coarse upper bound is the least of its fine ones,
   the other load the largest, so one coarse current repeated over its fine slots keeps every
   fine row. Its LP (without the peak term) is solved; :func:`expand` repeats its currents
   over the fine slots, and the rounding (:func:`nowblock.milp.rounding.make_plan`) makes them
   a real fine plan, filling what the finer rooms leave.
2. :func:`lagrange_bound`: a proven lower bound on the fine model from the coarse LP's row
   duals, spread evenly over each coarse slot's fine rows: with the fuse and unbalance rows
   priced, the model falls apart into one fractional knapsack per car (cheapest energy per kWh
   first, up to its need while that is cheaper than its shortfall), solved exactly. Any
   non-negative prices give a valid bound (weak duality); the coarse duals make it tight when
   the coarse LP is.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from nowblock.milp.formulation import Formulation

#: The coarse slot is this long [h] at most (15 minutes: the LP is fast there).
COARSE_SLOT_H = 0.25


def coarse_factor(form: Formulation) -> int:
    """How many fine slots make one coarse slot (1: no coarse stage). Only for uniform slots
    shorter than :data:`COARSE_SLOT_H` that divide it."""
    if np.ndim(form.dt_h) != 0 or form.n_slots < 2:
        return 1
    ratio = COARSE_SLOT_H / float(form.dt_h)
    m = int(round(ratio))
    return m if m >= 2 and abs(ratio - m) < 1e-9 else 1


def _groups(T: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per fine slot its coarse slot, and per coarse slot its first fine slot."""
    return np.arange(T) // m, np.arange(0, T, m)


def coarse_formulation(form: Formulation, m: int) -> Formulation:
    """``form`` on slots of ``m`` fine slots each (the last may be shorter), as a restriction:
    per car and coarse slot the least fine upper bound [A] among the fine slots it may charge in,
    the plugged fraction so that a coarse ampere gives the energy of its fine slots, the largest
    other load [kW], the mean price [EUR/kWh]."""
    T = form.n_slots
    group, first = _groups(T, m)
    G = len(first)
    n_in = np.bincount(group, minlength=G).astype(float)
    dt = float(form.dt_h)
    can = (form.plugged > 0) & (form.upper_a > 0) & (form.upper_a >= form.min_current_a[:, None] - 1e-9)
    up = np.where(can, form.upper_a, np.inf)
    upper = np.minimum.reduceat(up, first, axis=1)
    upper = np.where(np.isfinite(upper), upper, 0.0)
    plugged = np.add.reduceat(np.where(can, form.plugged, 0.0), first, axis=1) / n_in[None, :]
    base = np.maximum.reduceat(np.asarray(form.base_kw, dtype=float), first)
    price = np.add.reduceat(np.asarray(form.price_eur_per_kwh, dtype=float), first) / n_in
    starts = form.times[first]
    return dataclasses.replace(
        form, slot_starts=pd.DatetimeIndex(starts), dt_h=dt * n_in, upper_a=upper, plugged=plugged, base_kw=base,
        price_eur_per_kwh=price, incidence_a=form.incidence, kernel_arrays=None)


def expand(form: Formulation, coarse_a: np.ndarray, m: int) -> np.ndarray:
    """A dense coarse plan [A] repeated over its fine slots, 0 where the car cannot charge."""
    group, _ = _groups(form.n_slots, m)
    x = np.asarray(coarse_a, dtype=float)[:, group]
    can = (form.plugged > 0) & (form.upper_a >= form.min_current_a[:, None] - 1e-9)
    return np.where(can, np.minimum(x, form.upper_a), 0.0)


def _row_keys(mf, T: int, m: int | None) -> np.ndarray:
    """A key per fuse and unbalance row of ``mf`` (kind, row, slot), the slot divided by ``m``."""
    fl = np.asarray(mf.fuse_row_label, dtype=np.int64).reshape(-1, 2)
    ul = np.asarray(mf.unbalance_row_label, dtype=np.int64).reshape(-1, 3)
    f_slot = fl[:, 1] if m is None else fl[:, 1] // m
    u_slot = ul[:, 2] if m is None else ul[:, 2] // m
    big = T + 1
    return np.concatenate([fl[:, 0] * big + f_slot, (10**9 + ul[:, 0] * 3 + ul[:, 1]) * big + u_slot])


def fine_row_prices(form: Formulation, mf_fine, coarse: Formulation, mf_coarse, row_dual: np.ndarray, m: int):
    """Non-negative prices [EUR/A] for the fine model's fuse and unbalance rows: each coarse
    row's dual over ``m`` (a coarse ampere is ``m`` fine slot-amperes), on every fine row of the
    same fuse phase (or phase pair) in its fine slots. Returns (rows, prices), row indices of
    ``mf_fine``."""
    rows_c = np.r_[np.arange(mf_coarse.rows["fuse"].start, mf_coarse.rows["fuse"].stop) if "fuse" in mf_coarse.rows
                   else np.zeros(0, dtype=np.int64),
                   np.arange(mf_coarse.rows["unbalance"].start, mf_coarse.rows["unbalance"].stop)
                   if "unbalance" in mf_coarse.rows else np.zeros(0, dtype=np.int64)].astype(np.int64)
    lam_c = np.maximum(-np.asarray(row_dual, dtype=float)[rows_c], 0.0) / m
    key_c = _row_keys(mf_coarse, form.n_slots, None)
    key_f = _row_keys(mf_fine, form.n_slots, m)
    rows_f = np.r_[np.arange(mf_fine.rows["fuse"].start, mf_fine.rows["fuse"].stop) if "fuse" in mf_fine.rows
                   else np.zeros(0, dtype=np.int64),
                   np.arange(mf_fine.rows["unbalance"].start, mf_fine.rows["unbalance"].stop)
                   if "unbalance" in mf_fine.rows else np.zeros(0, dtype=np.int64)].astype(np.int64)
    order = np.argsort(key_c, kind="stable")
    pos = np.searchsorted(key_c[order], key_f)
    found = (pos < len(key_c)) & (key_c[order][np.minimum(pos, len(key_c) - 1)] == key_f) if len(key_c) else \
        np.zeros(len(key_f), dtype=bool)
    lam = np.zeros(len(rows_f))
    lam[found] = lam_c[order][pos[found]]
    return rows_f, lam


def lagrange_bound(form: Formulation, mf, rows: np.ndarray, lam: np.ndarray) -> float:
    """A proven lower bound [EUR] on every real plan of ``form`` (``mf``: its LP, without binaries)
    from prices ``lam`` >= 0 [EUR/A] on its rows ``rows`` (fuse and unbalance rows, ``<=``):
    ``min_x cost @ x + lam @ (A x - h)`` over the energy rows and bounds alone, one fractional
    knapsack per car, solved exactly; the change penalty (>= 0) left out, the peak term priced
    on the mean power (never above the peak), less ``mf.bound_slack_eur``. NaN for
    ``sharing="fair"`` (its max-min term is not separable by car)."""
    if form.options.sharing == "fair":
        return float("nan")
    car, slot = form.cells
    K = len(car)
    n, T = form.n_cars, form.n_slots
    cur = mf.cols["current_a"]
    col = np.repeat(np.arange(mf.num_col), np.diff(mf.a_start))
    price_row = np.zeros(mf.num_row)
    price_row[rows] = lam
    rc = mf.cost[cur].copy()
    in_cur = col < cur.stop
    np.add.at(rc, col[in_cur] - cur.start, mf.a_value[in_cur] * price_row[mf.a_index[in_cur]])
    const = -float(lam @ mf.row_hi[rows])
    c_peak = float(form.options.peak_eur_per_kw)
    base = np.asarray(form.base_kw, dtype=float)
    if c_peak > 0 and T:
        rc += c_peak / T * form.kw_per_a[car]
        const += c_peak * float(base.mean())
    kwh = form.cell_energy_per_a_kwh
    ok = kwh > 0
    ratio = np.where(ok, rc / np.where(ok, kwh, 1.0), np.inf)
    e_all = np.where(ok, form.cell_upper_a * kwh, 0.0)
    sh = mf.cols["shortfall_kwh"]
    w = mf.cost[sh]  # per car shortfall price [EUR/kWh]
    need = np.asarray(mf.row_lo[mf.rows["energy"]], dtype=float)
    hi = np.asarray(mf.row_hi[mf.rows["energy"]], dtype=float)
    order = np.lexsort((ratio, car))
    c_o, r_o, e_o = car[order], ratio[order], e_all[order]
    cum = np.cumsum(e_o)
    first = np.r_[0, np.nonzero(np.diff(c_o))[0] + 1] if K else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.r_[first, K])
    offset = np.repeat(np.r_[0.0, cum][first], counts) if K else np.zeros(0)
    before = cum - e_o - offset
    target = np.where(r_o < 0, hi[c_o], np.where(r_o < w[c_o], need[c_o], 0.0))
    take = np.clip(target - before, 0.0, e_o)
    got = np.bincount(c_o, weights=take, minlength=n)
    # Cells with negative reduced cost are cheaper than nothing; beyond a car's need they still
    # lower the sum as long as the energy row's ceiling allows (r_o < 0: target = ceiling).
    energy_cost = float((take * np.where(np.isfinite(r_o), r_o, 0.0)).sum())
    short = float((w * np.maximum(need - got, 0.0)).sum())
    return energy_cost + short + const - float(mf.bound_slack_eur)
