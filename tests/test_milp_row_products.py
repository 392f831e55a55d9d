"""The rounding's row loads (limit rows times a plan) as sparse products, not numpy's dense
matmul: numpy's BLAS runs a dense product of that shape on all its threads, and on a loaded
machine that took 200-240 ms against 4-11 ms sparse (1,000 cars x 288 slots; docs/benchmarks.md,
issue 15, session 37)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nowblock.milp import from_sessions
from nowblock.milp.formulation import rows_times
from nowblock.milp.highs_fast import solve_matrix
from nowblock.milp.plans import as_plan
from nowblock.milp.rounding import make_plan
from nowblock.milp.schedule import binding_report
from nowblock.milp.testing import MatrixCell, matrix_block


class _CountsMatmul(np.ndarray):
    """A row matrix that counts the dense matrix products (numpy's ``matmul``) it takes part in."""

    products = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is np.matmul:
            type(self).products += 1
        args = [np.asarray(a) if isinstance(a, _CountsMatmul) else a for a in inputs]
        out = getattr(ufunc, method)(*args, **kwargs)
        return out.view(_CountsMatmul) if isinstance(out, np.ndarray) and out.shape == inputs[0].shape else out


def _form(unbalance: bool):
    b = matrix_block(MatrixCell(40, 0.15, True, "15min", True, unbalance), seed=5)
    return from_sessions(b["site"], b["sessions"], start=b["start"], horizon="12h", step="15min",
                         base_load=b["base_load"], prices=b["prices"])


@pytest.mark.parametrize("unbalance", [False, True])
def test_the_rounding_takes_no_dense_matrix_product_of_the_limit_rows(unbalance):
    form = _form(unbalance)
    mf = form.matrix(relax=True)
    lp = solve_matrix(form, mf, 30)
    x = form.current_from_cells(mf.current_a(lp.values))
    plain = make_plan(form, x)
    watched = dataclasses.replace(form)
    lim = form.limits
    rows = dataclasses.replace(lim, g=lim.g.view(_CountsMatmul))
    rows.__dict__.update(by_car=lim.by_car, by_row=lim.by_row)  # the numba kernels' plain copies
    watched.__dict__["limits"] = rows
    _CountsMatmul.products = 0
    plan = make_plan(watched, x)
    assert as_plan(watched, plan.current_a) is not None  # the re-check, also through the rows
    binding_report(watched, plan.current_a)
    assert _CountsMatmul.products == 0
    # The same plan as with the plain rows, and a real one (every row holds in every slot).
    np.testing.assert_array_equal(plan.current_a, plain.current_a)
    assert (lim.g[:lim.n_fuse_rows] @ plan.current_a <= lim.h[:lim.n_fuse_rows] + 1e-6).all()


def test_rows_times_is_the_matrix_product():
    rng = np.random.default_rng(1)
    g = (rng.random((9, 50)) < 0.3) * rng.choice([-1.0, 1.0], size=(9, 50))
    y = rng.random((50, 7)) * 16
    np.testing.assert_allclose(rows_times(g, y), g @ y, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(rows_times(g, y[:, 3]), g @ y[:, 3], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(rows_times(g.T > 0, y[:9] > 3), (g.T > 0).astype(float) @ (y[:9] > 3), atol=0)
