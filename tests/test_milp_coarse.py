"""The coarse first stage for fine slot grids (:mod:`nowblock.milp.coarse`).

- The coarse problem is a restriction: its LP solution, repeated over the fine slots, keeps
  every fine row (checked against the fine model's own matrix).
- The Lagrange bound is a bound: for any non-negative row prices it is at most the fine LP's
  optimum (weak duality), and from the coarse LP's duals it is close to it.
- ``optimize`` with the coarse stage (forced on a small block) returns a real plan whose bound
  holds for it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nowblock as nb
from nowblock.milp import from_sessions
from nowblock.milp import solve as solve_mod
from nowblock.milp.coarse import coarse_factor, coarse_formulation, expand, fine_row_prices, lagrange_bound
from nowblock.milp.highs_fast import solve_matrix
from nowblock.milp.matrix import is_feasible, plan_columns
from nowblock.milp.testing import MatrixCell, matrix_block

from test_milp_rounding import check_plan_from_the_site, check_unbalance_with_real_draws


def _form(n, seed, tree, unbalance, step="5min", **opts):
    b = matrix_block(MatrixCell(n, 0.35, tree, step, True, unbalance), seed=seed)
    return b, from_sessions(b["site"], b["sessions"], start=b["start"], horizon="6h", step=step,
                            base_load=b["base_load"], prices=b["prices"], **opts)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 500), tree=st.booleans(), unbalance=st.booleans(), scale=st.floats(0.0, 3.0))
def test_coarse_plan_is_fine_feasible_and_any_prices_give_a_bound(seed, tree, unbalance, scale):
    _, form = _form(24, seed, tree, unbalance)
    m = coarse_factor(form)
    assert m == 3
    f0 = form.with_options(peak_eur_per_kw=0.0)
    coarse = coarse_formulation(f0, m)
    mfc = coarse.matrix(relax=True)
    res_c = solve_matrix(coarse, mfc, 30)
    assert res_c.status == "optimal" and res_c.row_dual is not None
    mf = form.matrix(relax=True)
    # The coarse solution, repeated over the fine slots, keeps every fine row and bound.
    x = expand(form, coarse.current_from_cells(mfc.current_a(res_c.values)), m)
    car, slot = form.cells
    assert is_feasible(mf, plan_columns(form, mf, x[car, slot]), tol=1e-6)
    # Weak duality: any non-negative prices give at most the fine LP's optimum.
    res = solve_matrix(form, mf, 30)
    assert res.status == "optimal"
    rows, lam = fine_row_prices(form, mf, coarse, mfc, res_c.row_dual, m)
    rng = np.random.default_rng(seed)
    for prices in (lam, scale * rng.random(len(rows)), np.zeros(len(rows))):
        lb = lagrange_bound(form, mf, rows, prices)
        assert lb <= res.bound + 1e-6 * max(1.0, abs(res.bound)), (lb, res.bound)
    # From the coarse duals it is close (within 10 % on these blocks).
    assert lagrange_bound(form, mf, rows, lam) >= res.bound - 0.10 * abs(res.bound)


@pytest.mark.parametrize("unbalance", [False, True])
def test_optimize_with_the_coarse_stage_returns_a_real_plan(monkeypatch, unbalance):
    monkeypatch.setattr(solve_mod, "COARSE_MIN_CELLS", 0)
    b, _ = _form(30, 1, True, unbalance)
    s = nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="6h", step="5min",
                    base_load=b["base_load"], prices=b["prices"], time_limit_s=20)
    assert s.extra["stages"][0]["stage"] == "coarse lp"
    assert s.status != "fallback"
    # Every fuse phase against the base load it was planned with (the largest in each slot),
    # the minimum, the maximum, the pilot step, the unbalance limit, from the site's own tree.
    base_kw = pd.Series(s.form.base_kw, index=s.form.times)
    check_plan_from_the_site(b["site"], b["sessions"], base_kw, s.current_a, 1.0)
    if unbalance:
        check_unbalance_with_real_draws(b["site"], b["sessions"], s.current_a, slot_h=5 / 60)
    assert np.isfinite(s.bound) and s.bound <= s.objective + 1e-9
