"""Cars an unbalance row blocks are served by moving other cars' steps (nowblock.milp.balance_kernels).

1. A hand-made block: a full light-phase car's energy sits in a slot the heavy phase does not
   need; the move into the blocked slot is the only way to serve the heavy-phase car.
2. The kernel on random plans (rows -1/0/1 after the fuse rows, steps of 1 A and 0.1 A; and
   single-phase cars under tight pairwise unbalance rows, slots of two lengths, the power cap at
   the plan's peak): its bookkeeping equals a recomputation, no row that held breaks, no car's
   energy up to its need falls, none passes its ceiling, every cell stays in steps, "0 or >= min"
   and under its maximum; a partner never passes its ceiling; at the power cap a heavy-phase
   partner's step out of the slot makes the room.
3. The whole optimizer on an instance-matrix cell where rounding each car on its own left four
   single-phase cars short while a whole-ampere plan serves every car
   (benchmarks/exact_matrix.py): now every car is served and the plan keeps the limit with the
   real draws.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_milp_rounding import SETTINGS, _csr, check_unbalance_with_real_draws, plan_case

import nowblock as nb
from nowblock.milp import balance_kernels as bk
from nowblock.milp.rounding import _drawn_rows


def _books(g, h, n_fuse, y, kwh, need, kw, power_cap):
    d = _drawn_rows(y, kwh, need)
    gu = g[n_fuse:]
    over = np.clip(gu, 0.0, None) @ y + np.clip(gu, None, 0.0) @ d - h[n_fuse:]
    fslack = h[:n_fuse] - g[:n_fuse] @ y
    room = power_cap - kw @ y
    return d, over, fslack, room


def _run(g, h, n_fuse, y, kwh, need, kw, up, on_a, step, power_cap, max_tries=10_000, ceiling=None):
    y = np.ascontiguousarray(y, dtype=float).copy()
    d, over, fslack, room = _books(g, h, n_fuse, y, kwh, need, kw, power_cap)
    d, over, fslack, room = (np.ascontiguousarray(a) for a in (d, over, fslack, room))
    served = np.minimum((y * kwh).sum(axis=1), need)
    order = np.argsort(-(need - served), kind="stable").astype(np.int64)
    order = order[(need - served)[order] > 1e-9]
    g_start, g_row, g_val = _csr(g.T)
    r_start, r_car, r_val = _csr(g)
    ceiling = np.full(len(need), np.inf) if ceiling is None else np.asarray(ceiling, dtype=float)
    made, _ = bk.serve_blocked(y, d, over, fslack, room, order, kwh, need, ceiling, kw, up, on_a, g_start, g_row,
                               g_val.astype(float), r_start, r_car, r_val.astype(float), n_fuse, step, 1e-9,
                               max_tries)
    return y, d, over, fslack, room, made


def _two_cars(kwh):
    """Car 0 on L2 (6 A in slot 0, plugged in only there, needs 10 A-slots of energy), car 1 on
    L1 (full, its 6 A in slot 1); rows L2 - L1 <= 6 A and L1 - L2 <= 6 A, no fuse rows; energy
    per ampere ``kwh`` [kWh/A] per car and slot. Returns the start and what :func:`_run` returns."""
    g = np.array([[1.0, -1.0], [-1.0, 1.0]])
    y0 = np.array([[6.0, 0.0], [0.0, 6.0]])
    return (y0, *_run(g, np.full((2, 2), 6.0), 0, y0, kwh, np.array([10 * 0.23, 6 * 0.23]), np.array([0.23, 0.23]),
                      np.array([[16.0, 0.0], [16.0, 16.0]]), np.array([6.0, 6.0]), 1.0, np.inf))


def test_a_light_phase_step_moves_into_the_slot_a_blocked_car_needs():
    """Car 0 on L2 is plugged in only in slot 0 and needs 10 A there; car 1 on L1 is full with
    6 A in slot 1. With at most 6 A between the phases, car 0 can have 6 A alone; with car 1's
    6 A moved into slot 0 it can have 12 A, and car 1 keeps its energy."""
    y0, y, d, over, fslack, room, made = _two_cars(np.array([[0.23, 0.0], [0.23, 0.23]]))
    np.testing.assert_allclose(y, [[10.0, 0.0], [6.0, 0.0]])
    assert made >= 1
    assert (over <= 1e-9).all()
    # the first step needs the move; the next three fit beside car 1's 6 A
    np.testing.assert_allclose((y * np.array([[0.23, 0.0], [0.23, 0.23]])).sum(axis=1), [10 * 0.23, 6 * 0.23])


def test_nothing_moves_where_the_light_car_cannot_give_its_step_back():
    """The same block, but a step of car 1's is worth less energy in slot 0 than in slot 1 (it
    charges slower there): moving it would cost car 1 energy it needs, so car 0 stays at 6 A."""
    y0, y, *_, made = _two_cars(np.array([[0.23, 0.0], [0.1, 0.23]]))
    np.testing.assert_allclose(y, y0)
    assert made == 0


def test_a_partner_never_passes_its_energy_ceiling():
    """Car 1's 6 A sit in a short slot (a quarter of the energy a step is worth in slot 0).
    Moving them into slot 0 would serve car 0 but give car 1 four times its need: refused at a
    ceiling of its need, made without one."""
    g = np.array([[1.0, -1.0], [-1.0, 1.0]])
    kwh = np.array([[0.23, 0.0], [0.23, 0.0575]])
    y0 = np.array([[6.0, 0.0], [0.0, 6.0]])
    need = np.array([10 * 0.23, 6 * 0.0575])
    args = (g, np.full((2, 2), 6.0), 0, y0, kwh, need, np.array([0.23, 0.23]), np.array([[16.0, 0.0], [16.0, 16.0]]),
            np.array([6.0, 6.0]), 1.0, np.inf)
    y, *_, made = _run(*args, ceiling=need)
    assert made == 0
    np.testing.assert_array_equal(y, y0)
    y, *_, made = _run(*args)
    assert made >= 1 and y[1, 0] == 6.0


def test_at_the_power_cap_a_heavy_phase_partner_makes_room():
    """Slot 0 is the plan's peak (the cap): car 0 (L2, plugged in only there, short) cannot take
    a step beside the 13 A on L2 against car 2's 7 A on L1 (limit 6 A). Car 1 (L2) gives a step
    in slot 0 and takes it back in slot 1: the slot's power stays, car 0 gets its step."""
    g = np.array([[1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])  # L2 - L1 <= 6, L1 - L2 <= 6
    kwh = np.array([[0.23, 0.0], [0.23, 0.23], [0.23, 0.23]])
    up = np.array([[16.0, 0.0], [16.0, 16.0], [16.0, 16.0]])
    y0 = np.array([[6.0, 0.0], [7.0, 6.0], [7.0, 6.0]])
    need = np.array([10 * 0.23, 13 * 0.23, 13 * 0.23])
    kw = np.full(3, 0.23)
    cap = float((kw @ y0).max())
    y, d, over, fslack, room, made = _run(g, np.full((2, 2), 6.0), 0, y0, kwh, need, kw, up, np.full(3, 6.0), 1.0, cap)
    np.testing.assert_allclose(y, [[7.0, 0.0], [6.0, 7.0], [7.0, 6.0]])
    assert made == 1 and (room >= -1e-9).all() and (over <= 1e-9).all()


@st.composite
def blocked_case(draw):
    """Small plans of single-phase cars (phases drawn) under the six pairwise unbalance rows held
    tight by the start (0-3 A of room), with or without one fuse row a phase, slots of 15 or 30
    minutes, the power cap at the start's peak (or 1 kW above), needs half, equal to or 1.5 times
    what the start gives, ceilings one slot at the least setpoint above the need."""
    n, T = draw(st.integers(2, 6)), draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    step = float(rng.choice([1.0, 0.1]))
    phase = np.zeros((3, n))
    phase[rng.integers(0, 3, n), np.arange(n)] = 1.0
    unb = [phase[p] - phase[q] for p in range(3) for q in range(3) if p != q]
    n_fuse = 3 * int(rng.integers(0, 2))
    g = np.array(([phase[0], phase[1], phase[2]] if n_fuse else []) + unb)
    on_a = np.full(n, 6.0)
    up = np.where(rng.random((n, T)) < 0.8, 16.0, 0.0)
    kw = np.full(n, 0.23)
    kwh = kw[:, None] * rng.choice([0.25, 0.5], T)[None, :] * (up > 0)
    y = np.where(rng.random((n, T)) < 0.6, np.floor(rng.uniform(6.0, 16.0, (n, T)) / step) * step, 0.0) * (up > 0)
    need = (y * kwh).sum(axis=1) * rng.choice([0.5, 1.0, 1.5], n)
    h = np.empty((len(g), T))
    h[n_fuse:] = np.maximum(g[n_fuse:] @ y, 0.0) + rng.choice([0.0, 1.0, 3.0], (len(unb), T))
    h[:n_fuse] = g[:n_fuse] @ y + rng.choice([0.0, 2.0, 10.0], (n_fuse, T))
    cap = float((kw @ y).max()) + float(rng.choice([0.0, 1.0]))
    ceiling = need + on_a * kwh.max(axis=1)
    return g, h, n_fuse, y, kwh, need, kw, up, on_a, step, cap, ceiling


@SETTINGS
@given(blocked_case())
def test_moves_among_single_phase_cars_keep_every_guarantee(c):
    g, h, n_fuse, y0, kwh, need, kw, up, on_a, step, cap, ceiling = c
    d0, over0, fslack0, room0 = _books(g, h, n_fuse, y0, kwh, need, kw, cap)
    y, d, over, fslack, room, made = _run(g, h, n_fuse, y0, kwh, need, kw, up, on_a, step, cap, ceiling=ceiling)
    d1, over1, fslack1, room1 = _books(g, h, n_fuse, y, kwh, need, kw, cap)
    for got, want in ((d, d1), (over, over1), (fslack, fslack1), (room, room1)):
        np.testing.assert_allclose(got, want, atol=1e-9)
    assert (over1 <= np.maximum(over0, 1e-6) + 1e-9).all()
    assert (fslack1 >= np.minimum(fslack0, 0.0) - 1e-9).all()
    assert (room1 >= np.minimum(room0, 0.0) - 1e-6).all()
    assert ((y == 0) | (y >= on_a[:, None] - 1e-9)).all() and (y <= up + 1e-9).all()
    np.testing.assert_allclose(y / step, np.round(y / step), atol=1e-6)
    e0, e1 = (y0 * kwh).sum(axis=1), (y * kwh).sum(axis=1)
    assert (np.minimum(e1, need) >= np.minimum(e0, need) - 1e-9).all()
    assert (e1 <= np.maximum(ceiling, e0) + 1e-9).all()
    assert (made > 0) == (np.minimum(e1, need).sum() > np.minimum(e0, need).sum() + 1e-12)


@SETTINGS
@given(plan_case())
def test_moves_keep_the_books_every_row_that_held_and_every_car_s_energy(c):
    g, h, n_fuse, step, on_a, up, kwh, kw = (c[k] for k in ("g", "h", "n_fuse", "step", "on_a", "up", "kwh", "kw"))
    need = c["need"]
    y0 = c["y"]
    d0, over0, fslack0, room0 = _books(g, h, n_fuse, y0, kwh, need, kw, c["cap"])
    y, d, over, fslack, room, made = _run(g, h, n_fuse, y0, kwh, need, kw, up, on_a, step, c["cap"])
    # the books equal a recomputation
    d1, over1, fslack1, room1 = _books(g, h, n_fuse, y, kwh, need, kw, c["cap"])
    np.testing.assert_allclose(d, d1, atol=1e-9)
    np.testing.assert_allclose(over, over1, atol=1e-9)
    np.testing.assert_allclose(fslack, fslack1, atol=1e-9)
    np.testing.assert_allclose(room, room1, atol=1e-9)
    # no row worse than it was where it was broken; none that held breaks
    assert (over1 <= np.maximum(over0, 1e-6) + 1e-9).all()
    assert (fslack1 >= np.minimum(fslack0, 0.0) - 1e-9).all()
    assert (room1 >= np.minimum(room0, 0.0) - 1e-6).all()
    # cells: whole steps, 0 or >= min, <= max
    assert ((y == 0) | (y >= on_a[:, None] - 1e-9)).all()
    assert (y <= np.maximum(up, y0) + 1e-9).all() and (y >= -1e-12).all()
    np.testing.assert_allclose(y / step, np.round(y / step), atol=1e-6)
    # energy up to the need: nobody loses, and a move made serves someone more
    before = np.minimum((y0 * kwh).sum(axis=1), need)
    after = np.minimum((y * kwh).sum(axis=1), need)
    assert (after >= before - 1e-9).all()
    if made:
        assert after.sum() > before.sum() + 1e-12
    else:
        np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize("label", ["50-70%-tree-15min-unb", "50-35%-tree-15min-unb"])
def test_unbalance_blocked_cars_get_what_a_whole_ampere_plan_can_give(label, unhurried_optimizer):
    """50-70%-tree-15min-unb: before the moves four single-phase cars ended 0.02-0.05 kWh short
    (0.14 kWh) where benchmarks/exact_matrix.py finds a whole-ampere plan serving every car; the
    gap to the bound was 65 %. 50-35%-tree-15min-unb: 996.07 kWh delivered, gap 6.8 %.

    The LPs' path and budgets as on a quiet machine (``unhurried_optimizer``) and no MILP stage:
    on a quiet machine the plan was the whole LP's, rounded and polished (the MILP stage, run on
    the 35 % cell for 0.28 s, changed nothing, nor did it run to its gap in 9 s); at load 6-16 the
    mean-peak LP ran instead and these asserts failed (gap 19.5 % / 8.3 %, 995.31 kWh)."""
    from nowblock.milp.testing import MatrixCell, matrix_block

    n, share, shape, step, *rest = label.split("-")
    b = matrix_block(MatrixCell(int(n), float(share.rstrip("%")) / 100, shape == "tree", step, "load" in rest,
                                "unb" in rest))
    s = nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="24h", step=step, milp_effort=0.0,
                    **unhurried_optimizer)
    check_unbalance_with_real_draws(b["site"], b["sessions"], s.current_a)
    assert s.bound <= s.objective + 1e-9
    if label.startswith("50-70%"):
        assert float(s.shortfall_kwh.sum()) <= 1e-6, s.shortfall_kwh[s.shortfall_kwh > 0]
        assert s.mip_gap <= 0.05, s.mip_gap
    else:
        assert float(s.energy_kwh.clip(upper=s.form.need_kwh).sum()) >= 997.0
        assert s.mip_gap <= 0.05, s.mip_gap
