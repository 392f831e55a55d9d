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
import time

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


class Lagrangian:
    """The fine model with its fuse and unbalance rows ``rows`` (of ``mf``, ``<=``) priced: for
    prices ``lam`` >= 0 [EUR/A], ``min_x cost @ x + lam @ (A x - h)`` over the energy rows and
    bounds alone, one fractional knapsack per car, solved exactly (see :func:`lagrange_bound`).
    Built once per model: the ascent (:func:`improve_bound`) evaluates it many times. Not for
    ``sharing="fair"`` (its max-min term is not separable by car).

    The peak term is priced on the mean power of the first ``peak_slots`` slots (default all):
    the peak is at least any such mean, so every choice gives a bound; over the critical
    interval (:func:`~nowblock.milp.peak.critical_peak_kw`) it is the whole LP's on the blocks
    where the peak decides the objective (the mean-peak LP's rule, :mod:`nowblock.milp.peak`)."""

    def __init__(self, form: Formulation, mf, rows: np.ndarray, peak_slots: int | None = None) -> None:
        self.form = form
        self.rows = np.asarray(rows, dtype=np.int64)
        car, _ = form.cells
        cur = mf.cols["current_a"]
        col = np.repeat(np.arange(mf.num_col), np.diff(mf.a_start))
        pos = np.full(mf.num_row, -1, dtype=np.int64)
        pos[self.rows] = np.arange(len(self.rows))
        # Only currents may sit in a priced row: in the LP's matrix the light side of an
        # unbalance row is the currents themselves (with binaries it is a useful-current column,
        # which the knapsacks do not minimise over).
        priced = pos[mf.a_index] >= 0
        if np.any(priced & ((col < cur.start) | (col >= cur.stop))):
            raise ValueError("a priced row holds a column other than a current: the knapsacks would not bound it "
                             "(pass the LP's matrix, form.matrix(relax=True))")
        nz = priced & (col >= cur.start) & (col < cur.stop)
        self.nz_cell = col[nz] - cur.start
        self.nz_row = pos[mf.a_index[nz]]
        self.nz_value = np.asarray(mf.a_value[nz], dtype=float)
        self.n_cells = cur.stop - cur.start
        self.row_hi = np.asarray(mf.row_hi[self.rows], dtype=float)
        self.cost0 = np.asarray(mf.cost[cur], dtype=float).copy()
        self.const0 = -float(mf.bound_slack_eur)
        c_peak = float(form.options.peak_eur_per_kw)
        T = form.n_slots
        if c_peak > 0 and T:
            # The peak term priced on the mean power (never above the peak).
            k = T if peak_slots is None else min(max(int(peak_slots), 1), T)
            _, slot = form.cells
            self.cost0 += np.where(slot < k, c_peak / k * form.kw_per_a[car], 0.0)
            self.const0 += c_peak * float(np.asarray(form.base_kw, dtype=float)[:k].mean())
        kwh = form.cell_energy_per_a_kwh
        self.kwh = kwh
        self.ok = kwh > 0
        self.e_all = np.where(self.ok, form.cell_upper_a * kwh, 0.0)
        self.car = car
        self.w = np.asarray(mf.cost[mf.cols["shortfall_kwh"]], dtype=float)  # per car [EUR/kWh]
        self.need = np.asarray(mf.row_lo[mf.rows["energy"]], dtype=float)
        # The part of a need a car could get after the horizon's end is short first, cheaper.
        later = mf.cols.get("later_kwh")
        self.w_later = self.w if later is None else np.asarray(mf.cost[later], dtype=float)
        self.due = self.need if later is None else self.need - np.asarray(mf.col_hi[later], dtype=float)
        self.hi = np.asarray(mf.row_hi[mf.rows["energy"]], dtype=float)

    def value(self, lam: np.ndarray) -> tuple[float, np.ndarray]:
        """The bound [EUR] for prices ``lam`` [EUR/A] and the knapsacks' currents [A] per cell
        (a minimiser of the priced model, for the ascent's step)."""
        car, n, K = self.car, self.form.n_cars, len(self.car)
        rc = self.cost0 + np.bincount(self.nz_cell, weights=self.nz_value * lam[self.nz_row], minlength=self.n_cells)
        ok, kwh, e_all = self.ok, self.kwh, self.e_all
        ratio = np.where(ok, rc / np.where(ok, kwh, 1.0), np.inf)
        order = np.lexsort((ratio, car))
        c_o, r_o, e_o = car[order], ratio[order], e_all[order]
        cum = np.cumsum(e_o)
        first = np.r_[0, np.nonzero(np.diff(c_o))[0] + 1] if K else np.zeros(0, dtype=np.int64)
        counts = np.diff(np.r_[first, K])
        offset = np.repeat(np.r_[0.0, cum][first], counts) if K else np.zeros(0)
        before = cum - e_o - offset
        # Cells with negative reduced cost are cheaper than nothing; beyond a car's need they
        # still lower the sum as long as the energy row's ceiling allows (r_o < 0: the ceiling).
        target = np.where(r_o < 0, self.hi[c_o], np.where(r_o < self.w_later[c_o], self.need[c_o],
                                                          np.where(r_o < self.w[c_o], self.due[c_o], 0.0)))
        take = np.clip(target - before, 0.0, e_o)
        got = np.bincount(c_o, weights=take, minlength=n)
        energy_cost = float((take * np.where(np.isfinite(r_o), r_o, 0.0)).sum())
        later = np.minimum(np.maximum(self.need - got, 0.0), self.need - self.due)
        short = float((self.w * np.maximum(self.due - got, 0.0) + self.w_later * later).sum())
        x = np.zeros(K)
        x[order] = take / np.where(ok[order], kwh[order], 1.0)
        return energy_cost + short + self.const0 - float(lam @ self.row_hi), x

    def slack(self, x: np.ndarray) -> np.ndarray:
        """``A x - h`` [A] on the priced rows for cell currents ``x`` [A] (the dual's subgradient)."""
        return np.bincount(self.nz_row, weights=self.nz_value * x[self.nz_cell], minlength=len(self.rows)) - self.row_hi


def lagrange_bound(form: Formulation, mf, rows: np.ndarray, lam: np.ndarray, peak_slots: int | None = None) -> float:
    """A proven lower bound [EUR] on every real plan of ``form`` (``mf``: its LP, without binaries)
    from prices ``lam`` >= 0 [EUR/A] on its rows ``rows`` (fuse and unbalance rows, ``<=``):
    ``min_x cost @ x + lam @ (A x - h)`` over the energy rows and bounds alone, one fractional
    knapsack per car, solved exactly; the change penalty (>= 0) left out, the peak term priced
    on the mean power of the first ``peak_slots`` slots (default all; never above the peak),
    less ``mf.bound_slack_eur``. NaN for ``sharing="fair"`` (its max-min term is not separable
    by car)."""
    if form.options.sharing == "fair":
        return float("nan")
    return Lagrangian(form, mf, rows, peak_slots=peak_slots).value(np.asarray(lam, dtype=float))[0]


#: Scales of the given prices tried as the ascent's start (see :func:`improve_bound`).
_START_SCALES = (1.0, 0.5, 0.25, 0.1, 0.0)
#: The ascent stops when its step's factor falls below this (its sixth halving; see :func:`improve_bound`).
_MIN_STEP_FACTOR = 1.0 / 32.0


def improve_bound(lagr: Lagrangian, lam: np.ndarray, target: float, stop_at: float,
                  max_iter: int = 500, stall: int = 3, enough: float = np.inf) -> tuple[float, np.ndarray, int]:
    """Raise the Lagrange bound by projected subgradient ascent on the prices (Polyak steps
    from the best multiple of ``lam`` (1, 1/2, 1/4, 1/10 or 0), towards ``target`` [EUR], an
    objective some real plan reaches; the step's factor halves
    after ``stall`` steps without a better bound). Every price vector it visits is >= 0, so
    every value is a proven bound (weak duality); it returns the best [EUR], its prices
    [EUR/A] and the steps taken. Stops before a step would end past ``stop_at``
    (``time.perf_counter()``; the first evaluation always runs), at
    ``max_iter``, when the step's factor has fallen below 1/32 (on four cells of the instance
    matrix the steps after that raised the bound by at most 0.03 points of gap) or once the
    bound reaches ``enough`` [EUR] (the caller's certificate: a higher bound changes no plan).

    Why: the coarse LP's duals, spread over the fine slots, gave a bound 28 % below the fine
    LP's on a congested 24-car block where the coarse model (a restriction) was short of
    energy; the fine LP's optimum is the supremum of these bounds."""
    lam = np.maximum(np.asarray(lam, dtype=float), 0.0)
    # The start: the best point on the ray from 0 through ``lam``. Where the coarse model was
    # short of energy its duals price every fuse row near the shortfall's price, far above the
    # fine model's (28 % below the fine LP, against 11 % at zero prices, on that block).
    # Every evaluation is timed: one costs 20 ms at 1,000 cars x 288 slots and up to 0.17 s at
    # 2,000, so none starts that would end past ``stop_at`` (the first always runs).
    eval_s = 0.0
    best = -np.inf
    for f in _START_SCALES:
        if best > -np.inf and time.perf_counter() + eval_s > stop_at:
            break
        t = time.perf_counter()
        v, xv = lagr.value(f * lam)
        eval_s = max(eval_s, time.perf_counter() - t)
        if v > best:
            best, best_lam, best_x = v, f * lam, xv
    lam, value, x = best_lam, best, best_x
    theta, since, steps = 1.0, 0, 0
    while (steps < max_iter and theta >= _MIN_STEP_FACTOR and time.perf_counter() + eval_s < stop_at
           and target > value and best < enough):
        g = lagr.slack(x)
        g[(lam <= 0.0) & (g < 0.0)] = 0.0
        norm = float(g @ g)
        if norm <= 1e-12:
            break
        lam = np.maximum(lam + theta * (target - value) / norm * g, 0.0)
        t = time.perf_counter()
        value, x = lagr.value(lam)
        eval_s = max(eval_s, time.perf_counter() - t)
        steps += 1
        if value > best + 1e-9 * max(1.0, abs(best)):
            best, best_lam, best_x, since = value, lam, x, 0
        else:
            since += 1
            if since >= stall:
                theta, since = 0.5 * theta, 0
                lam, value, x = best_lam, best, best_x
    return best, best_lam, steps
