"""Cars a fuse row blocks by less than their least setpoint take turns (issue 15's energy target).

A fuse phase whose room is not a sum of 6 A setpoints (a base load under it) strands 1-5 A in
slots where a car short of its need is off; the LP fills them with fractions. The rounding now
frees such a slot: another car on the row gives the missing amperes there and takes them back
in a slot of its own, where the short car gives up the same (:func:`nowblock.milp.balance_kernels.
serve_fuse_blocked`, :func:`nowblock.milp.rounding.serve_fuse_blocked`).

1. A hand-sized block (two single-phase cars under one grid phase, two slots, a base load in the
   first): rounded car by car the second car is 4 A-slots short while its phase has 4 A left.
2. The kernel on random plans (fuse rows with 0-5 A of room left, with and without the six
   unbalance rows, 1 A and 0.1 A steps): its books equal a recomputation, no fuse row that held
   breaks, no unbalance row gets worse (light side at what cars draw), cells stay in steps, 0 or
   at least the least setpoint and under the maximum, no car's energy up to its need falls,
   none passes its ceiling.
3. Issue 15's energy target on the instance-matrix cells that missed it: a tree under a grid fuse
   at 15 % with a base load, 5- and 15-minute slots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nowblock as nb
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.milp import from_sessions
from nowblock.milp import balance_kernels as bk
from nowblock.milp.rounding import _drawn_rows, make_plan

T0 = pd.Timestamp("2026-01-14 17:00", tz="UTC")
KWH_PER_A = 0.23 * 0.25  # one ampere on one phase for 15 minutes [kWh]


def _two_cars_one_phase():
    """Cars A (priority 2, placed first) and B, single-phase on the grid's L1 (16 A), both
    plugged in for two 15-minute slots; a 1.035 kW base load (1.5 A a phase) in the first
    slot leaves L1 14 A there (rooms are floored to whole amperes), 16 A in the second. A needs
    16 A-slots, B more than the 30 the phase holds in all."""
    site = Site(name="t", fuses=(Fuse("grid", (16.0, 16.0, 16.0)),),
                charge_points=(ChargePoint("A", "grid", max_current_a=16, phases=1, phase_rotation="L1L2L3"),
                               ChargePoint("B", "grid", max_current_a=16, phases=1, phase_rotation="L1L2L3")))
    sess = pd.DataFrame({"session_id": ["A", "B"], "charge_point_id": ["A", "B"], "arrival": T0,
                         "departure": T0 + pd.Timedelta("30min"), "energy_kwh": [16 * KWH_PER_A, 26 * KWH_PER_A],
                         "max_current_a": 16.0, "phases": 1, "priority": [2.0, 1.0]})
    base = pd.Series([1.035, 0.0, 0.0], index=pd.date_range(T0, periods=3, freq="15min"))
    return site, from_sessions(site, sess, start=T0, horizon="30min", base_load=base)


def test_a_phase_with_less_room_than_a_minimum_is_shared_by_taking_turns():
    """The LP's point: A 10 + 6 A, B 4 + 10 A (the phase full in both slots). Rounded car by
    car, B's 4 A fall below its 6 A minimum and the phase keeps 4 A unused in the first slot
    while B is 4 A-slots short. With A giving 2 A in the first slot and taking them back in the
    second, where B gives up 2 A, both slots are full: A 8 + 8, B 6 + 8, every car as much as
    the phase holds (30 A-slots: A's 16, B's 14)."""
    site, form = _two_cars_one_phase()
    room = form.limits.h[0]  # the grid's L1 row [A] per slot, after the base load
    np.testing.assert_allclose(room, [14.0, 16.0])
    x = np.array([[10.0, 6.0], [4.0, 10.0]])
    plan = make_plan(form, x)
    y = plan.current_a
    a, b = (y * form.energy_per_a_kwh).sum(axis=1) / KWH_PER_A  # A-slots each
    assert a >= 16.0 - 1e-9
    assert b >= 14.0 - 1e-9, f"B got {b} A-slots with {room - y.sum(axis=0)} A left on its phase"
    assert (y.sum(axis=0) <= room + 1e-9).all()
    assert ((y == 0) | (y >= 6.0)).all() and (y <= 16.0).all()
    np.testing.assert_array_equal(y, np.round(y))


# ---- 2. the kernel's guarantees on random plans ---------------------------------------------------
def _csr(m):
    r, c = np.nonzero(m)
    return np.searchsorted(r, np.arange(m.shape[0] + 1)).astype(np.int64), c.astype(np.int64), m[r, c]


def _books(g, h, n_fuse, y, kwh, need):
    d = _drawn_rows(y, kwh, need)
    gu = g[n_fuse:]
    over = np.clip(gu, 0.0, None) @ y + np.clip(gu, None, 0.0) @ d - h[n_fuse:]
    return d, over, h[:n_fuse] - g[:n_fuse] @ y


@st.composite
def fuse_case(draw):
    """Single-phase cars (phases drawn) under a fuse row a phase and a second level of one or
    two sub-fuses, steps of 1 A or 0.1 A, 6 A least setpoints, some cells unusable; the start
    lowered until every fuse row holds, then the rooms set to its load plus 0-5 A (what a base
    load strands); needs 0.5-1.5 times what the start gives; with or without the six unbalance
    rows (their rooms at the start's draws plus 0-3 A)."""
    n, T = draw(st.integers(2, 7)), draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    step = float(rng.choice([1.0, 0.1]))
    phase = np.zeros((3, n))
    phase[rng.integers(0, 3, n), np.arange(n)] = 1.0
    sub = np.zeros((2, n))
    sub[rng.integers(0, 2, n), np.arange(n)] = 1.0
    unbalance = bool(rng.integers(0, 2))
    unb = [phase[p] - phase[q] for p in range(3) for q in range(3) if p != q] if unbalance else []
    g = np.array([phase[0], phase[1], phase[2], sub[0], sub[1]] + unb)
    n_fuse = 5
    on_a = np.full(n, 6.0)
    up = np.where(rng.random((n, T)) < 0.85, 16.0, 0.0)
    kwh = 0.23 * 0.25 * (up > 0) * rng.choice([1.0, 1.0, 0.5], T)[None, :]
    y = np.where(rng.random((n, T)) < 0.6, np.floor(rng.uniform(6.0, 16.0, (n, T)) / step) * step, 0.0) * (up > 0)
    need = (y * kwh).sum(axis=1) * rng.choice([0.5, 1.0, 1.5], n)
    h = np.empty((len(g), T))
    h[:n_fuse] = g[:n_fuse] @ y + rng.choice([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 12.0], (n_fuse, T))
    if unbalance:
        d = _drawn_rows(y, kwh, need)
        gu = g[n_fuse:]
        h[n_fuse:] = np.maximum(np.clip(gu, 0.0, None) @ y + np.clip(gu, None, 0.0) @ d, 0.0) \
            + rng.choice([0.0, 1.0, 3.0], (len(unb), T))
    ceiling = need + on_a * kwh.max(axis=1)
    return g, h, n_fuse, y, kwh, need, up, on_a, step, ceiling


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuse_case())
def test_the_moves_keep_every_fuse_phase_minimum_pilot_step_and_car_s_energy(c):
    g, h, n_fuse, y0, kwh, need, up, on_a, step, ceiling = c
    n, T = y0.shape
    y = y0.copy()
    d, over, fslack = (np.ascontiguousarray(a) for a in _books(g, h, n_fuse, y, kwh, need))
    over0, fslack0 = over.copy(), fslack.copy()
    room = np.full(T, np.inf)
    served0 = np.minimum((y0 * kwh).sum(axis=1), need)
    order = np.argsort(served0 - need, kind="stable").astype(np.int64)
    order = order[(need - served0)[order] > 1e-9]
    g_start, g_row, g_val = _csr(g.T)
    r_start, r_car, r_val = _csr(g)
    made = 0
    for shift in (False, True):  # swaps only, then shifts and swaps (as the rounding runs it)
        made += bk.serve_fuse_blocked(y, d, over, fslack, room, order, np.arange(T, dtype=np.int64), kwh, need,
                                      ceiling, np.full(n, 0.23), up, on_a, g_start, g_row, g_val.astype(float),
                                      r_start, r_car, r_val.astype(float), n_fuse, step, 1e-9, 100_000,
                                      shift=shift)[0]
    d1, over1, fslack1 = _books(g, h, n_fuse, y, kwh, need)
    for got, want in ((d, d1), (over, over1), (fslack, fslack1)):
        np.testing.assert_allclose(got, want, atol=1e-9)
    assert (fslack1 >= np.minimum(fslack0, 0.0) - 1e-9).all()  # every fuse phase
    assert (over1 <= np.maximum(over0, 1e-6) + 1e-9).all()  # unbalance, light side at real draws
    assert ((y == 0) | (y >= on_a[:, None] - 1e-9)).all() and (y <= up + 1e-9).all() and (y >= 0).all()
    np.testing.assert_allclose(y / step, np.round(y / step), atol=1e-6)  # the pilot step
    e0, e1 = (y0 * kwh).sum(axis=1), (y * kwh).sum(axis=1)
    assert (np.minimum(e1, need) >= np.minimum(e0, need) - 1e-9).all()
    assert (e1 <= np.maximum(ceiling, e0) + 1e-9).all()
    assert (made > 0) == (np.minimum(e1, need).sum() > np.minimum(e0, need).sum() + 1e-12)


def _over_at_entry_case(seed):
    """review rev3's wider generator (kernel_broken.py): 1-, 2- and 3-phase cars, three fuse
    levels, kWh per slot per car, least setpoints 6-8 A, and unbalance rows whose room may be
    2-5 A below what the start draws (a row over its limit at entry)."""
    rng = np.random.default_rng(seed)
    n, T = int(rng.integers(1, 9)), int(rng.integers(1, 7))
    step = float(rng.choice([1.0, 0.1]))
    phase = np.zeros((3, n))
    for c in range(n):
        k = int(rng.choice([1, 1, 2, 3]))
        phase[rng.permutation(3)[:k], c] = 1.0
    nosub = rng.random(n) < 0.2
    sub = np.zeros((6, n))
    for c in range(n):
        if not nosub[c]:
            k = int(rng.integers(0, 2))
            sub[3 * k:3 * k + 3, c] = phase[:, c]
    unbalance = bool(rng.integers(0, 2))
    unb = [phase[p] - phase[q] for p in range(3) for q in range(3) if p != q] if unbalance else []
    g = np.array(list(phase) + list(sub) + unb)
    n_fuse = 9
    on_a = rng.choice([6.0, 6.0, 7.0, 8.0], n) if step == 1.0 else np.full(n, 6.0)
    up = np.where(rng.random((n, T)) < 0.85, rng.choice([16.0, 13.0, 32.0], (n, 1)), 0.0)
    kwh = KWH_PER_A * phase.sum(0)[:, None] * (up > 0) * rng.choice([1.0, 1.0, 0.5], (n, T))
    y = np.where(rng.random((n, T)) < 0.6, np.floor(rng.uniform(8.0, 16.0, (n, T)) / step) * step, 0.0) * (up > 0)
    y = np.minimum(y, up)
    need = (y * kwh).sum(axis=1) * rng.choice([0.5, 1.0, 1.5, 3.0], n)
    h = np.empty((len(g), T))
    h[:n_fuse] = g[:n_fuse] @ y + rng.choice([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 12.0], (n_fuse, T))
    if unbalance:
        gu = g[n_fuse:]
        h[n_fuse:] = np.maximum(np.clip(gu, 0, None) @ y + np.clip(gu, None, 0) @ _drawn_rows(y, kwh, need), 0) \
            + rng.choice([0.0, 1.0, 3.0, -2.0, -5.0], (len(unb), T))
    return g, h, n_fuse, y, kwh, need, up, on_a, step, need + on_a * kwh.max(axis=1)


@pytest.mark.parametrize("seed", [101, 369, 408, 489])
def test_a_partner_s_shift_is_taken_back_where_a_row_was_over_at_entry(seed):
    """review rev3: where the short car's step was refused, its partners' shifts were taken back
    as moves to check, and one that had brought an unbalance row (over its limit at entry) down
    could not go back up: the partner's plan stayed changed while no car gained (34 of 4,000
    such plans). Each seed here was one of them."""
    g, h, n_fuse, y0, kwh, need, up, on_a, step, ceiling = _over_at_entry_case(seed)
    n, T = y0.shape
    y = y0.copy()
    d, over, fslack = (np.ascontiguousarray(a) for a in _books(g, h, n_fuse, y, kwh, need))
    order = np.arange(n, dtype=np.int64)[need - (y * kwh).sum(axis=1) > 1e-9]
    g_start, g_row, g_val = _csr(g.T)
    r_start, r_car, r_val = _csr(g)
    made = 0
    for shift in (False, True):
        made += bk.serve_fuse_blocked(y, d, over, fslack, np.full(T, np.inf), order, np.arange(T, dtype=np.int64),
                                      kwh, need, ceiling, np.full(n, 0.23), up, on_a, g_start, g_row,
                                      g_val.astype(float), r_start, r_car, r_val.astype(float), n_fuse, step, 1e-9,
                                      100_000, shift=shift)[0]
    for got, want in zip((d, over, fslack), _books(g, h, n_fuse, y, kwh, need)):
        np.testing.assert_allclose(got, want, atol=1e-9)
    gained = np.minimum((y * kwh).sum(axis=1), need).sum() - np.minimum((y0 * kwh).sum(axis=1), need).sum()
    assert made > 0 or np.array_equal(y, y0), np.argwhere(y != y0)  # no change for nothing
    assert (made > 0) == (gained > 1e-12)


# ---- 3. the instance-matrix cells of issue 15's energy target ---------------------------------
@pytest.mark.parametrize("label", ["50-15%-tree-5min-load", "50-15%-tree-15min-load"])
def test_the_tree_cells_with_a_base_load_deliver_995_of_the_plain_lp(label, unhurried_optimizer):
    """Issue 15: every plan delivers at least 99.5 % of what the plain LP relaxation of the same
    cars delivers (benchmarks/milp_matrix.py's ``lp_floor``: continuous currents, the fuse rooms
    as they are, not floored). Before: 99.316 % and 99.390 % (session 36's re-run; 6.94 kWh of
    the first cell's shortfall on its grid fuse's L3 row, whose room the base load makes
    fractional). The LPs' path and budgets as on a quiet machine and no MILP stage
    (``unhurried_optimizer``): the plan is the whole LP's, rounded and polished."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from milp_matrix import check_schedule, lp_floor

    from nowblock.milp.testing import MatrixCell, matrix_block

    n, share, shape, step, *rest = label.split("-")
    cell = MatrixCell(int(n), float(share.rstrip("%")) / 100, shape == "tree", step, "load" in rest, "unb" in rest)
    b = matrix_block(cell)
    s = nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="24h", step=step, base_load=b["base_load"],
                    prices=b["prices"], milp_effort=0.0, **unhurried_optimizer)
    chk = check_schedule(b, step, s.current_a)
    assert chk["ok"], chk["violations"]
    floor = lp_floor(b, step)
    assert chk["energy_kwh"] >= 0.995 * floor["energy_kwh"], (chk["energy_kwh"], floor["energy_kwh"])
