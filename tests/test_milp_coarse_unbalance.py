"""The coarse stage under an unbalance limit (issue 15, session 38).

- On 30-minute coarse slots under an unbalance limit the coarse model stays a restriction where
  cars leave inside a coarse slot: its point, repeated over the fine slots, keeps every fine
  unbalance row (a car that stopped charging half-way through a coarse slot took its current
  off the light side: 80 A over a 20 A limit at 1,000 cars).
- Which coarse slot a call takes is decided by the model's size alone (a busy machine plans the
  same): 30-minute slots for a large 15-minute block with an unbalance limit and many rows,
  none for the same block without the limit, on a flat site (few rows) or with few cars.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import nowblock as nb
from nowblock.milp import from_sessions
from nowblock.milp import solve as solve_mod
from nowblock.milp import coarse as coarse_mod
from nowblock.milp.coarse import coarse_factor, coarse_formulation, expand
from nowblock.milp.highs_fast import solve_matrix
from nowblock.milp.matrix import is_feasible, plan_columns
from nowblock.milp.testing import MatrixCell, matrix_block

from test_milp_rounding import check_plan_from_the_site, check_unbalance_with_real_draws


def _block(n, share, tree, step, unbalance, seed=0, shift=None):
    b = matrix_block(MatrixCell(n, share, tree, step, True, unbalance), seed=seed)
    if shift is not None:  # departures off the coarse slots' marks
        b["sessions"] = b["sessions"].assign(departure=b["sessions"]["departure"] + pd.Timedelta(shift))
    return b


def _form(b, step, horizon="6h"):
    return from_sessions(b["site"], b["sessions"], start=b["start"], horizon=horizon, step=step,
                         base_load=b["base_load"], prices=b["prices"])


@pytest.mark.parametrize("n, share, tree, step, m, shift, horizon, whole", [
    (60, 0.35, True, "15min", 2, None, "24h", None),     # before: 31 A over the limit
    (60, 0.15, False, "15min", 2, None, "12h", None),    # 16 A
    (60, 0.35, True, "5min", 3, "5min", "12h", True),    # 32 A: departures 5 minutes past the quarter hour
])
def test_the_coarse_point_keeps_every_fine_unbalance_row_when_cars_leave_inside_a_coarse_slot(n, share, tree, step, m,
                                                                                              shift, horizon, whole):
    # On 30-minute coarse slots by default (the 15-minute grid's coarse stage); on 15-minute
    # ones when asked (cars leave on quarter hours, which those never straddle).
    b = _block(n, share, tree, step, True, shift=shift)
    form = _form(b, step, horizon)
    coarse = coarse_formulation(form.with_options(peak_eur_per_kw=0.0), m, **({} if whole is None else {"whole_slots": whole}))
    mfc = coarse.matrix(relax=True)
    res = solve_matrix(coarse, mfc, 30)
    assert res.status == "optimal"
    x = expand(form, coarse.current_from_cells(mfc.current_a(res.values)), m)
    mf = form.matrix(relax=True)
    car, slot = form.cells
    # Every fine row, the unbalance rows among them.
    assert is_feasible(mf, plan_columns(form, mf, x[car, slot]), tol=1e-6)
    # The coarse LP is a restriction: its point's fine cost is at least the fine LP's optimum.
    fine = solve_matrix(form, mf, 30)
    v = plan_columns(form, mf, x[car, slot])
    assert float(mf.cost @ v) >= fine.objective - 1e-6 * max(1.0, abs(fine.objective))


@pytest.mark.parametrize("unbalance, step, m", [(False, "15min", 2), (True, "5min", 3)])
def test_a_car_keeps_a_coarse_slot_it_leaves_inside_without_an_unbalance_limit_or_on_15_minute_slots(unbalance, step,
                                                                                                     m):
    # Fuse rows are sums: a car that stops within a coarse slot only frees room, so it keeps it;
    # 15-minute coarse slots keep it too (measured better there, see coarse_formulation).
    b = _block(30, 0.35, True, step, unbalance, shift="5min")
    form = _form(b, step, "12h")
    leaves_inside = (form.plugged > 0).sum(axis=1) % m != 0
    assert leaves_inside.any()
    kept = (coarse_formulation(form, m).upper_a[leaves_inside] > 0).sum()
    assert kept > (coarse_formulation(form, m, whole_slots=True).upper_a[leaves_inside] > 0).sum()


@pytest.mark.parametrize("cell, expected", [
    (MatrixCell(1000, 0.15, True, "15min", True, True), 2),    # tree, unbalance: 15,700 rows
    (MatrixCell(1000, 0.70, True, "15min", False, True), 2),   # 14,400 rows
    (MatrixCell(1000, 0.15, False, "15min", True, True), 1),   # flat: 4,800 rows, the fine LPs
    (MatrixCell(1000, 0.15, True, "15min", True, False), 1),   # no unbalance limit
    (MatrixCell(200, 0.15, True, "15min", True, True), 1),     # 10,300 cells
    (MatrixCell(200, 0.15, True, "5min", True, True), 3),      # 15-minute coarse slots, as before
])
def test_the_coarse_slot_is_chosen_by_the_models_size(cell, expected):
    b = matrix_block(cell)
    form = _form(b, cell.step, horizon="24h")
    mf = form.matrix(relax=True)
    assert coarse_mod.coarse_slots(form, mf, solve_mod.COARSE_MIN_CELLS) == expected
    if expected == 2:
        assert coarse_factor(form) == 1 and mf.num_row >= coarse_mod.COARSE_UNBALANCE_MIN_ROWS


def test_a_large_15_minute_block_with_an_unbalance_limit_gets_the_30_minute_coarse_plan(monkeypatch):
    # The rule on a small block (its thresholds lowered): the coarse stage on 30-minute slots,
    # its plan alone (no fine LP), real on every fuse phase and under the unbalance limit with
    # what cars really draw, bounded by the fine LP's optimum.
    monkeypatch.setattr(solve_mod, "COARSE_MIN_CELLS", 0)
    monkeypatch.setattr(coarse_mod, "COARSE_UNBALANCE_MIN_ROWS", 0)
    b = _block(40, 0.35, True, "15min", True, seed=2)
    s = nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="12h", step="15min",
                    base_load=b["base_load"], prices=b["prices"], time_limit_s=20)
    stages = [x["stage"] for x in s.extra["stages"]]
    assert stages[0] == "coarse lp" and not {"lp", "lp without peak", "mean-peak lp"} & set(stages)
    assert s.method.startswith("coarse lp")
    base_kw = pd.Series(s.form.base_kw, index=s.form.times)
    check_plan_from_the_site(b["site"], b["sessions"], base_kw, s.current_a, 1.0)
    check_unbalance_with_real_draws(b["site"], b["sessions"], s.current_a, slot_h=0.25)
    fine = solve_matrix(s.form, s.form.matrix(relax=True), 30)
    tol = 1e-6 * max(1.0, abs(fine.bound))
    assert np.isfinite(s.bound) and s.bound <= fine.bound + tol <= s.objective + 2 * tol
