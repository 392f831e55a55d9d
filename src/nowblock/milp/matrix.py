"""The formulation as one sparse standard form (:class:`MatrixForm`), built from whole arrays.

The column and row layout is computed once, here, by :class:`Layout`; the numba kernel that
writes the entries (:func:`nowblock.milp.kernels.standard_form`) receives its block offsets as
arrays in the order of :data:`COLUMN_BLOCKS` and :data:`ROW_BLOCKS`, and its inputs as a few
named tuples (:class:`CellArrays`, :class:`CostTerms`, :class:`ChangePairs`,
:class:`LimitEntries`). :func:`plan_columns` gives every column's value for a plan of cell
currents, :func:`plan_objective` the objective [EUR] of that plan.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from nowblock.milp.formulation import Formulation

#: Column blocks, in the order they sit in the matrix.
COLUMN_BLOCKS = ("current_a", "on", "shortfall_kwh", "worst_fraction", "peak_kw", "change_up_a", "change_down_a",
                 "useful_a")
#: Row families, in the order they sit in the matrix.
ROW_BLOCKS = ("energy", "fuse", "unbalance", "on_upper", "on_lower", "fair", "peak", "change", "useful_upper",
              "useful_energy")

_TOL_A = 1e-6


@dataclass(frozen=True)
class Layout:
    """Named blocks laid out back to back from 0, in the order given.

    ``sizes`` maps every block name to its size; ``keep_empty`` says whether a block of size 0
    still appears in :attr:`slices` (columns: yes, each family is always there; rows: no).
    """

    sizes: dict[str, int]
    keep_empty: bool = True

    @property
    def starts(self) -> np.ndarray:
        """int64 start of every block, in the order of :attr:`sizes` (what the kernel reads)."""
        return np.concatenate([[0], np.cumsum(list(self.sizes.values()))[:-1]]).astype(np.int64)

    @property
    def total(self) -> int:
        """Number of columns (or rows) in all blocks."""
        return int(sum(self.sizes.values()))

    @property
    def slices(self) -> dict[str, slice]:
        """Block name -> its slice (empty row blocks left out)."""
        out = {}
        for (name, size), start in zip(self.sizes.items(), self.starts):
            if size or self.keep_empty:
                out[name] = slice(int(start), int(start) + int(size))
        return out


class CellArrays(NamedTuple):
    """Per cell (car, slot): slot, upper bound [A], energy per ampere [kWh/A], minimum [A],
    power per ampere [kW/A], and its car."""

    car: np.ndarray
    slot: np.ndarray
    upper_a: np.ndarray
    kwh_per_a: np.ndarray
    min_a: np.ndarray
    kw_per_a: np.ndarray


class CostTerms(NamedTuple):
    """Objective data: energy row bounds [kWh], per-car shortfall cost [EUR/kWh], per-slot price
    [EUR/kWh] and base load [kW], the flat energy cost [EUR/kWh], fair, peak [EUR/kW] and change
    [EUR/A] weights."""

    need_kwh: np.ndarray
    energy_hi_kwh: np.ndarray
    shortfall_eur_per_kwh: np.ndarray
    price_eur_per_kwh: np.ndarray
    base_kw: np.ndarray
    energy_eur_per_kwh: float
    fair_eur: float
    peak_eur_per_kw: float
    change_eur_per_a: float


class ChangePairs(NamedTuple):
    """Cells with a setpoint-change pair, whether each has a predecessor cell (``cell - 1``), and
    the setpoint applied now [A] for those without."""

    cell: np.ndarray
    has_prev: np.ndarray
    rhs_a: np.ndarray


class LimitEntries(NamedTuple):
    """Stated limit rows: per entry its row (within the family), cell and coefficient; per row
    its bound [A]."""

    row: np.ndarray
    cell: np.ndarray
    value: np.ndarray
    hi_a: np.ndarray


@dataclass(frozen=True, eq=False)
class MatrixForm:
    """A MILP in HiGHS's standard form: min ``cost @ x`` s.t. ``row_lo <= A x <= row_hi``.

    ``A`` is column-wise (CSC: ``a_start``, ``a_index``, ``a_value``). ``cols``/``rows`` map each
    variable or constraint family name to its slice (:class:`Layout`), so both backends (and the
    schedule reader) find ``current_a``, ``on``, ``shortfall_kwh``, ``fuse`` ... by name.
    """

    cost: np.ndarray
    col_lo: np.ndarray
    col_hi: np.ndarray
    integrality: np.ndarray  # int32: 0 continuous, 1 integer
    row_lo: np.ndarray
    row_hi: np.ndarray
    a_start: np.ndarray
    a_index: np.ndarray
    a_value: np.ndarray
    cols: dict[str, slice]
    rows: dict[str, slice]
    fuse_row_label: np.ndarray  # (n_fuse_rows, 2): fuse-phase row r, slot t
    unbalance_row_label: np.ndarray  # (n_unbalance_rows, 3): phase p, phase q, slot t
    binary_cell: np.ndarray  # cell index of every on/off column, in column order
    change_cell: np.ndarray  # cell of every change pair; its predecessor is cell - 1 when change_has_prev
    change_has_prev: np.ndarray
    change_rhs: np.ndarray  # setpoint applied now for pairs without a predecessor [A]
    fuse_cells: np.ndarray  # cells that appear in a stated fuse or unbalance row (where a limit can bind)
    useful_cell: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # cell of every useful-current column (the light side of an unbalance row, a cell priced below
    # 0 EUR/kWh in a model with binaries), in column order
    credit_on_useful: bool = False  # negative prices sit on the useful current, not the current
    bound_slack_eur: float = 0.0  # subtract from a relaxation's optimum for a bound on real plans [EUR]
    build_seconds: float = 0.0  # time spent building these arrays [s]
    current_scale: np.ndarray | None = None  # amperes per unit of each current column (None: 1)

    def current_a(self, values: np.ndarray) -> np.ndarray:
        """The cell currents [A] in column values ``values``."""
        x = np.asarray(values, dtype=float)[self.cols["current_a"]]
        return x if self.current_scale is None else x * self.current_scale

    @property
    def num_col(self) -> int:
        """Number of variables."""
        return len(self.cost)

    @property
    def num_row(self) -> int:
        """Number of constraints."""
        return len(self.row_lo)

    @property
    def num_nz(self) -> int:
        """Number of nonzeros in A."""
        return len(self.a_value)

    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The matrix row-wise: (row start, column index, value)."""
        col = np.repeat(np.arange(self.num_col), np.diff(self.a_start))
        order = np.lexsort((col, self.a_index))
        start = np.searchsorted(self.a_index[order], np.arange(self.num_row + 1))
        return start, col[order], self.a_value[order]


_EMPTY_I = np.zeros(0, dtype=np.int64)


def build_matrix(f: "Formulation", binary: np.ndarray, *, split_useful: bool = False,
                 exact_draws: bool = False) -> MatrixForm:
    """The standard form of ``f`` with on/off binaries on the cells flagged in ``binary``:
    numpy gathers the per-cell arrays, numba kernels emit the entries. ``split_useful``: the
    light side of an unbalance row counts a useful-current column even without binaries (for a
    model whose currents become whole pilot steps, :func:`in_pilot_steps`). ``exact_draws``:
    the useful current of a car that has one is exactly what it draws, in slot order
    (:func:`_with_exact_draws`: one more binary per cell of such a car)."""
    from nowblock.milp.kernels import change_pairs, limit_row_entries, standard_form

    t_start = time.perf_counter()
    o = f.options
    n, T = f.n_cars, f.n_slots
    car, slot = f.cells
    K = len(car)
    bcell = np.nonzero(binary)[0]
    B = len(bcell)
    fair = o.sharing == "fair"
    use_peak = o.peak_eur_per_kw > 0
    need = np.maximum(f.need_kwh, 0.0)

    # Change penalty: one pair per cell with a predecessor (same car, previous slot) or, in slot
    # 0, with the setpoint applied now; against 0 A where the car has no cell before or after it
    # inside the window (arriving, leaving, held at 0 by a cap): the plan's own frame, so the
    # objective of a plan is what its setpoints cost (kernels.change_pairs).
    n_change = T if o.change_slots is None else min(int(o.change_slots), T)
    if o.change_eur_per_a > 0 and n_change > 0:
        pair, has_prev, rhs = change_pairs(car, slot, np.asarray(f.prev_current_a, dtype=float)[car], n_change)
    else:
        pair, has_prev, rhs = _EMPTY_I, np.zeros(0, dtype=bool), np.zeros(0)
    P = len(pair)

    # Fuse rows: every nonzero (fuse-phase row, car) pair of the incidence over the car's
    # cells, only rows whose cells could together exceed the headroom.
    A = f.incidence
    cell_count = np.bincount(car, minlength=n)
    cell_start = np.cumsum(cell_count) - cell_count
    pr, pc = np.nonzero(A)
    room = f.headroom_a.reshape(-1)
    ub = f.cell_upper_a
    keep_key, fuse_label, fuse_rows, fuse_cells, fuse_vals = limit_row_entries(
        pr, pc, A[pr, pc], cell_start, cell_count, slot, ub, room, T, 1e-9, False)

    # Unbalance at the root: charging current on phase p minus phase q, for p != q.
    u = f.site.max_unbalance_a
    unb_label = np.zeros((0, 3), dtype=np.int64)
    unb_rows = unb_cells = _EMPTY_I
    unb_vals = np.zeros(0)
    n_unb = 0
    u_hi = 0.0
    if u is not None and K > 0:
        u_hi = float(f.floor_to_step(u))
        pq = np.array([(p, q) for p in range(3) for q in range(3) if p != q])
        d = A[pq[:, 0]] - A[pq[:, 1]]  # (6, n)
        dr, dc = np.nonzero(d)
        keep, _, unb_rows, unb_cells, unb_vals = limit_row_entries(dr, dc, d[dr, dc], cell_start, cell_count, slot,
                                                                   ub, np.full(6 * T, u_hi), T, 1e-9, True)
        n_unb = len(keep)
        unb_label = np.stack([pq[keep // T, 0], pq[keep // T, 1], keep % T], axis=1)
    # The light side of an unbalance row counts only current a car really draws (a full car
    # draws nothing): the energy row lets a car be offered up to one slot at its least setpoint
    # beyond its need (a small remainder is served under "0 or >= min"), but that overshoot
    # balances no phase. Without this the relaxation balanced the phases with it and its bound
    # stayed 2-26 % below every real plan (docs/optimizer.md). With binaries: a *useful* current
    # u <= current per cell on a light side, a car's useful energy at most its need, the light
    # side over u. Without binaries (an LP) the same bound comes cheaper (measured: the split
    # made HiGHS's LP 5-30x slower): the cars on a light side get no overshoot at all
    # (ceiling = need); every real plan, its cars cut to what they draw, is then a point of it
    # that costs at most ``bound_slack_eur`` more (``_cap_slack_eur``). Not so once currents are
    # whole pilot steps: a cut car's last current is a fraction of a step, no point of that model,
    # and its optimum was found above real plans (5.03 against 3.69 EUR, tests/test_optimize.py).
    # Energy beyond the need earns nothing at a negative price either (the car does not draw it;
    # ``plan_objective`` gives it no credit). With binaries (or whole steps) the price of a cell
    # below 0 EUR/kWh sits on its useful current, at most the need in all, so the model credits
    # what a car can draw only. An LP still credits the overshoot: its bound stays a bound (a
    # plan's objective only rises without the credit), and capping those cars at their need
    # there made the closed loop dearer (2 days, 12 points, prices - 0.3 EUR: 5.43 -> 5.75 EUR
    # for the same energy: the plan's extra offer in negative slots hedged cars drawing less).
    neg = unb_vals < 0
    useful = np.unique(unb_cells[neg])
    cell_price = _cell_price_eur_per_kwh(f)
    credit_cell = np.nonzero(cell_price < 0.0)[0]
    capped = None
    slack_eur = 0.0
    if B == 0 and not split_useful:
        credit_cell = credit_cell[:0]
    if B == 0 and len(useful) and not split_useful:
        capped = np.unique(car[useful])
        slack_eur = _cap_slack_eur(f, capped)
        useful = useful[:0]
        neg = np.zeros(len(unb_vals), dtype=bool)
    useful = np.union1d(useful, credit_cell).astype(np.int64)
    if exact_draws and len(useful):  # every cell of such a car: its draws depend on all of them
        useful = np.nonzero(np.isin(car, car[useful]))[0].astype(np.int64)
    U = len(useful)
    u_car = car[useful]
    u_cars = np.unique(u_car)

    weight = 1.0 if f.shortfall_weight is None else f.shortfall_weight
    fair_cost = 0.0
    if fair:
        # Weighted so that raising the worst fraction always beats any total-shortfall trade.
        w_max = 1.0 if f.shortfall_weight is None else max(float(np.max(f.shortfall_weight, initial=1.0)), 1.0)
        fair_cost = (10.0 * o.shortfall_eur_per_kwh * max(need.sum(), 1e-9) * max(f.priority.max(initial=1.0), 1.0)
                     * w_max)
    n_fair = int((need > 1e-9).sum()) if fair else 0
    # The energy row's ceiling (``Formulation.ceiling_kwh``: one slot at the minimum current, at
    # least a pilot step, beyond the need) lets a car with a small remainder still be served
    # under "0 or >= min": it stops by itself when full. Shortfall is priced, so it is 0 when
    # delivered >= need. Energy beyond need is never free (energy cost > 0).

    cols = Layout({"current_a": K, "on": B, "shortfall_kwh": n, "worst_fraction": int(fair),
                   "peak_kw": int(use_peak), "change_up_a": P, "change_down_a": P, "useful_a": U})
    rows = Layout({"energy": n, "fuse": len(keep_key), "unbalance": n_unb, "on_upper": B, "on_lower": B,
                   "fair": n_fair, "peak": T if use_peak else 0, "change": P, "useful_upper": U,
                   "useful_energy": len(u_cars)}, keep_empty=False)
    u0 = int(cols.starts[-1])
    r_up, r_ue = int(rows.starts[-2]), int(rows.starts[-1])
    unb_cols = unb_cells.copy()
    unb_cols[neg] = u0 + np.searchsorted(useful, unb_cells[neg])
    j = np.arange(U, dtype=np.int64)
    u_row = np.searchsorted(u_cars, u_car)
    extra = LimitEntries(np.concatenate([r_up + j, r_up + j, r_ue + u_row]),
                         np.concatenate([u0 + j, useful, u0 + j]),
                         np.concatenate([np.ones(U), -np.ones(U), f.cell_energy_per_a_kwh[useful]]), np.zeros(0))
    cells = CellArrays(car, slot, ub, f.cell_energy_per_a_kwh, f.min_current_a[car], f.kw_per_a[car])
    energy_hi = np.maximum(f.ceiling_kwh, need)
    if capped is not None:
        energy_hi[capped] = need[capped]
    terms = CostTerms(need, energy_hi, o.shortfall_eur_per_kwh * f.priority * weight,
                      np.asarray(f.price_eur_per_kwh, dtype=float), np.asarray(f.base_kw, dtype=float),
                      float(o.early_eur_per_kwh), float(fair_cost), float(o.peak_eur_per_kw),
                      float(o.change_eur_per_a))
    cost, col_lo, col_hi, integ, row_lo, row_hi, a_start, a_index, a_value = standard_form(
        cols.starts, cols.total, rows.starts, rows.total, cells, bcell, terms, ChangePairs(pair, has_prev, rhs),
        LimitEntries(fuse_rows, fuse_cells, fuse_vals, room[keep_key]),
        LimitEntries(unb_rows, unb_cols, unb_vals, np.full(n_unb, u_hi)), extra)
    if U:
        col_hi[u0:u0 + U] = ub[useful]
        row_hi[r_up:r_up + U] = 0.0
        row_hi[r_ue:r_ue + len(u_cars)] = need[u_cars]
    if len(credit_cell):  # the price moves to the useful current (what the car draws)
        price_a = cell_price[credit_cell] * f.cell_energy_per_a_kwh[credit_cell]
        cost[credit_cell] -= price_a
        cost[u0 + np.searchsorted(useful, credit_cell)] = price_a
    if f.now_bonus_eur_per_kwh is not None and K:
        first = slot == 0
        cost[:K][first] -= np.asarray(f.now_bonus_eur_per_kwh, dtype=float)[car[first]] * f.cell_energy_per_a_kwh[first]
    mf = MatrixForm(
        cost=cost, col_lo=col_lo, col_hi=col_hi, integrality=integ, row_lo=row_lo, row_hi=row_hi,
        a_start=a_start, a_index=a_index, a_value=a_value, cols=cols.slices, rows=rows.slices,
        fuse_row_label=fuse_label, unbalance_row_label=unb_label, binary_cell=bcell,
        change_cell=pair, change_has_prev=has_prev, change_rhs=rhs,
        fuse_cells=np.unique(np.concatenate([fuse_cells, unb_cells])), useful_cell=useful,
        bound_slack_eur=slack_eur, credit_on_useful=len(credit_cell) > 0,
        build_seconds=time.perf_counter() - t_start,
    )
    if f.due_kwh is not None and n:
        mf = _with_later_columns(f, mf)
    if exact_draws and U:
        mf = _with_exact_draws(f, mf, np.maximum(energy_hi, need))
        mf = dataclasses.replace(mf, build_seconds=time.perf_counter() - t_start)
    return mf


def _with_later_columns(f: "Formulation", mf: MatrixForm) -> MatrixForm:
    """``mf`` with one more shortfall column per car, ``later_kwh`` (appended after every other
    column): in the car's energy row, ``0 <= later_kwh <= Formulation.later_kwh`` (what it could
    still get after the horizon's end), priced ``after_horizon_weight`` times the car's
    ``shortfall_kwh`` column. Being cheaper it is short first: ``shortfall_kwh`` is then the
    energy due by the horizon's end and not delivered."""
    n = f.n_cars
    nc = mf.num_col
    e0 = mf.rows["energy"].start
    sh = mf.cols["shortfall_kwh"]
    cost = mf.cost[sh] * float(f.options.after_horizon_weight)
    # Appended columns with one entry each keep the CSC order: no sort.
    return dataclasses.replace(
        mf, cost=np.r_[mf.cost, cost], col_lo=np.r_[mf.col_lo, np.zeros(n)], col_hi=np.r_[mf.col_hi, f.later_kwh],
        integrality=np.r_[mf.integrality, np.zeros(n, dtype=mf.integrality.dtype)],
        a_start=np.r_[mf.a_start, mf.a_start[-1] + np.arange(1, n + 1)].astype(mf.a_start.dtype),
        a_index=np.r_[mf.a_index, e0 + np.arange(n)].astype(mf.a_index.dtype), a_value=np.r_[mf.a_value, np.ones(n)],
        cols={**mf.cols, "later_kwh": slice(nc, nc + n)})


def split_shortfall(form: "Formulation", short_kwh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A car's need not delivered in the horizon, ``short_kwh`` [kWh], as (due, later): what it
    could still get after the horizon's end (:attr:`Formulation.later_kwh`) is short first, the
    rest is due by the horizon's end and not delivered."""
    short = np.asarray(short_kwh, dtype=float)
    later = np.minimum(short, form.later_kwh)
    return short - later, later


def _with_exact_draws(f: "Formulation", mf: MatrixForm, hi_kwh: np.ndarray) -> MatrixForm:
    """``mf`` with the useful currents made exactly what each car draws: for every useful cell j
    (all cells of its car, in slot order) a binary ``full`` (the car has its need by the end of
    that slot) and two rows, with U_j its useful and C_j its offered energy so far [kWh] and M
    its most energy (``hi_kwh``): U_j >= C_j - M full_j and U_j >= need - M (1 - full_j). With
    ``u <= current`` and the need row (U <= need), U_j = min(need, C_j): a full car draws
    nothing. The relaxation without them (U only summed up to the need) let the light side of
    an unbalance row count a car's draws in a late slot that it had in fact drawn earlier: the
    MILP's plans broke the rows with real draws by up to 4.8 A and were rounded 3.9-6.5 % above
    the optimum (an outside test's small blocks). O(slots^2) entries per car: small blocks."""
    car = f.cells[0]
    kwh = f.cell_energy_per_a_kwh
    need = np.maximum(np.nan_to_num(np.asarray(f.need_kwh, dtype=float)), 0.0)
    useful = mf.useful_cell
    m = len(useful)
    u_car = car[useful]
    u0 = mf.cols["useful_a"].start
    nc, nr = mf.num_col, mf.num_row
    big = hi_kwh[u_car] + 1e-6
    first = np.r_[True, u_car[1:] != u_car[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(m), 0))
    jj = np.repeat(np.arange(m), np.arange(m) - start + 1)  # row j holds cells start_j..j of its car
    ll = np.concatenate([np.arange(start[j], j + 1) for j in range(m)]) if m else np.zeros(0, dtype=np.int64)
    k = kwh[useful[ll]]
    w = np.arange(nc, nc + m)
    j = np.arange(m)
    rows = np.concatenate([nr + jj, nr + jj, nr + j, nr + m + jj, nr + m + j])  # U - C + M full >= 0; U - M full
    cols = np.concatenate([u0 + ll, useful[ll], w, u0 + ll, w])
    vals = np.concatenate([k, -k, big, k, -big])
    old_cols = np.repeat(np.arange(nc), np.diff(mf.a_start))
    r = np.concatenate([mf.a_index.astype(np.int64), rows])
    c = np.concatenate([old_cols, cols])
    v = np.concatenate([mf.a_value, vals])
    order = np.lexsort((r, c))
    a_start = np.r_[0, np.cumsum(np.bincount(c, minlength=nc + m))].astype(np.int32)
    return dataclasses.replace(
        mf, cost=np.r_[mf.cost, np.zeros(m)], col_lo=np.r_[mf.col_lo, np.zeros(m)],
        col_hi=np.r_[mf.col_hi, np.ones(m)], integrality=np.r_[mf.integrality, np.ones(m, dtype=mf.integrality.dtype)],
        row_lo=np.r_[mf.row_lo, np.zeros(m), need[u_car] - big], row_hi=np.r_[mf.row_hi, np.full(2 * m, np.inf)],
        a_start=a_start, a_index=r[order].astype(np.int32), a_value=v[order],
        cols={**mf.cols, "full": slice(nc, nc + m)}, rows={**mf.rows, "draws": slice(nr, nr + 2 * m)})


def _cell_price_eur_per_kwh(f: "Formulation") -> np.ndarray:
    """Per cell the energy price the objective charges [EUR/kWh]: the slot's price plus
    ``early_eur_per_kwh`` (below 0: a credit, paid only on energy a car draws)."""
    return np.asarray(f.price_eur_per_kwh, dtype=float)[f.cells[1]] + float(f.options.early_eur_per_kwh)


def _cap_slack_eur(f: "Formulation", capped: np.ndarray) -> float:
    """How much more [EUR] a real plan may cost once the cars ``capped`` are cut to what they
    draw (their overshoot beyond the need taken away, which the LP without overshoot needs):
    the first slot's preference (``now_bonus_eur_per_kwh``) the objective still credits on
    energy beyond the need where the price does not already (a negative price earns nothing on
    it, :func:`plan_objective`), and the setpoint changes the cut can add (at most two per
    ampere cut, inside the change window). 0 without a preference and a change penalty.

    Only cars that can have their need by the end of the window count (of slot 0 for the
    preference): before that a car draws every ampere it is offered, so the cut moves none of
    its setpoints there. Counted for every capped car, the slack was 0.010-0.031 EUR on the
    instance matrix's 50-car unbalance cells, whose plans cost 1.4-1.6 EUR without load or
    prices: 0.6-2.0 points of their reported gaps, on 5-minute cells where no car can be full
    within the 4 slots of the window (docs/benchmarks.md, session 39)."""
    o = f.options
    car, slot = f.cells
    sel = np.isin(car, capped)
    c_car, c_slot = car[sel], slot[sel]
    kwh = f.cell_energy_per_a_kwh[sel]
    n = f.n_cars
    need = np.maximum(np.nan_to_num(np.asarray(f.need_kwh, dtype=float)), 0.0)
    over_kwh = np.maximum(f.ceiling_kwh - need, 0.0)  # the most energy beyond the need [kWh]
    most = f.cell_upper_a[sel] * kwh  # the most energy a cell can give [kWh]

    def can_be_full(cells: np.ndarray) -> np.ndarray:
        """Per car: whether its need fits in these of its cells (1e-9 kWh to spare: a bound must
        not rest on a rounding)."""
        return need <= np.bincount(c_car[cells], weights=most[cells], minlength=n) + 1e-9

    price = np.maximum(_cell_price_eur_per_kwh(f)[sel], 0.0)
    if f.now_bonus_eur_per_kwh is not None:  # the first slot's preference is a lower price there
        first = c_slot == 0
        full0 = can_be_full(first)
        price = price - np.where(first & full0[c_car], np.asarray(f.now_bonus_eur_per_kwh, dtype=float)[c_car], 0.0)
    worst = np.zeros(n)
    np.maximum.at(worst, c_car, np.maximum(-price, 0.0))
    out = float((worst[capped] * over_kwh[capped]).sum())
    n_change = f.n_slots if o.change_slots is None else int(o.change_slots)
    if o.change_eur_per_a > 0 and n_change > 0:
        win = c_slot < n_change
        amps_hi = np.bincount(c_car[win], weights=f.cell_upper_a[sel][win], minlength=n)
        kmin = np.full(n, np.inf)
        np.minimum.at(kmin, c_car[win], np.where(kwh[win] > 0, kwh[win], np.inf))
        amps = np.minimum(amps_hi, np.where(np.isfinite(kmin), over_kwh / np.where(np.isfinite(kmin), kmin, 1.0),
                                            0.0))
        amps = np.where(can_be_full(win), amps, 0.0)
        out += float(2.0 * o.change_eur_per_a * amps[capped].sum())
    return out


# ---- a plan's columns and objective -----------------------------------------------------------
def plan_columns(form: "Formulation", mf: MatrixForm, x: np.ndarray) -> np.ndarray:
    """Every column's value for cell currents ``x`` [A]: on/off, shortfall [kWh], worst
    fraction, peak [kW], changes [A], each at its cheapest value given ``x``."""
    from nowblock.milp.kernels import complete_columns

    car, slot = form.cells
    cols = mf.cols
    wf, pk = cols["worst_fraction"], cols["peak_kw"]
    v = complete_columns(mf.num_col, np.asarray(x, dtype=float), car, slot, form.cell_energy_per_a_kwh,
                            form.kw_per_a[car], np.maximum(form.need_kwh, 0.0), np.asarray(form.base_kw, dtype=float),
                            mf.binary_cell, cols["shortfall_kwh"].start, wf.start if wf.stop > wf.start else -1,
                            pk.start if pk.stop > pk.start else -1, mf.change_cell, mf.change_has_prev,
                            mf.change_rhs, cols["change_up_a"].start, cols["change_down_a"].start, _TOL_A)
    if "later_kwh" in cols:  # the part the car could get after the horizon is short first
        sh = cols["shortfall_kwh"]
        v[sh], v[cols["later_kwh"]] = split_shortfall(form, v[sh])
        if wf.stop > wf.start:
            need = np.maximum(form.need_kwh, 0.0)
            v[wf] = np.max(np.where(need > 1e-9, v[sh] / np.where(need > 1e-9, need, 1.0), 0.0), initial=0.0)
    if len(mf.useful_cell):
        v[cols["useful_a"]] = drawn_current_a(form, np.asarray(x, dtype=float))[mf.useful_cell]
    if "full" in cols:  # by the end of its slot the car has its need (_with_exact_draws)
        useful = mf.useful_cell
        e = (form.cell_energy_per_a_kwh * np.asarray(x, dtype=float))[useful]
        c_car = car[useful]
        cum = np.cumsum(e)
        first = np.r_[True, c_car[1:] != c_car[:-1]]
        before = np.maximum.accumulate(np.where(first, cum - e, 0.0)) if len(cum) else cum
        need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
        v[cols["full"]] = (cum - before >= need[c_car] - 1e-9).astype(float)
    return v


def drawn_current_a(form: "Formulation", x: np.ndarray) -> np.ndarray:
    """The current [A] each cell's car really draws at cell currents ``x`` [A]: what it is
    offered until it has its need, in slot order, then only the rest of its need (a full car
    stops drawing). Its energy is at most the need, so it is a value of the model's useful
    current (``useful_a``), and the light side of an unbalance row can only count on it."""
    car, slot = form.cells
    x = np.asarray(x, dtype=float)
    kwh = form.cell_energy_per_a_kwh
    need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
    order = np.lexsort((slot, car))
    e = (kwh * x)[order]
    cum = np.cumsum(e)
    c = car[order]
    first = np.r_[0, np.nonzero(np.diff(c))[0] + 1]
    offset = np.zeros(len(c))
    if len(c):
        start_cum = np.r_[0.0, cum][first]
        offset = np.repeat(start_cum, np.diff(np.r_[first, len(c)]))
    before = cum - e - offset  # energy in the car's earlier cells [kWh]
    rest = np.maximum(need[c] - before, 0.0)
    k = kwh[order]
    drawn = np.where(k > 0, np.minimum(x[order], rest / np.where(k > 0, k, 1.0)), x[order])
    out = np.empty(len(x))
    out[order] = drawn
    return out


def plan_objective(form: "Formulation", mf: MatrixForm, plan_a: np.ndarray) -> float:
    """The objective [EUR] of a dense (n, T) plan [A], every term computed from the plan itself
    (its shortfall, its peak, its changes), as the model prices them, except that energy a car
    is offered beyond its need (it does not draw it, :func:`drawn_current_a`) earns no credit at
    a negative price. ``mf`` in amperes (not :func:`in_pilot_steps`)."""
    car, slot = form.cells
    x = np.asarray(plan_a, dtype=float)[car, slot]
    out = float(mf.cost @ plan_columns(form, mf, x))
    credit = np.minimum(_cell_price_eur_per_kwh(form), 0.0) * form.cell_energy_per_a_kwh  # [EUR/A], <= 0
    if len(x) and credit.min() < 0.0 and not mf.credit_on_useful:  # else the useful current is what it draws
        out -= float(credit @ (x - drawn_current_a(form, x)))
    return out


def is_feasible(mf: MatrixForm, v: np.ndarray, tol: float = 1e-6) -> bool:
    """Whether column values ``v`` satisfy every bound and row of ``mf`` (within ``tol``)."""
    from nowblock.milp.kernels import csc_feasible

    return bool(csc_feasible(mf.a_start, mf.a_index, mf.a_value, np.asarray(v, dtype=float), mf.col_lo, mf.col_hi,
                             mf.row_lo, mf.row_hi, float(tol)))


def in_pilot_steps(mf: MatrixForm, cells: np.ndarray, step_a: float) -> MatrixForm:
    """``mf`` with the current columns of ``cells`` counted in whole pilot steps: each such column
    is an integer number of ``step_a`` [A] (its matrix entries and cost multiplied by the step,
    its bound divided). Its values times :attr:`MatrixForm.current_scale` are amperes again.
    A MILP over these columns plans in the steps a charger accepts, so its bound holds for every
    such plan (the LP's bound holds for continuous currents, a pilot step finer than any plan)."""
    sl = mf.cols["current_a"]
    k = sl.start + np.asarray(cells, dtype=np.int64)
    scale = np.ones(sl.stop - sl.start)
    scale[cells] = step_a
    col_of_entry = np.repeat(np.arange(mf.num_col), np.diff(mf.a_start))
    factor = np.ones(mf.num_col)
    factor[k] = step_a
    col_hi = mf.col_hi.copy()
    col_hi[k] = np.floor(col_hi[k] / step_a + 1e-9)
    integ = mf.integrality.copy()
    integ[k] = 1
    return dataclasses.replace(mf, cost=mf.cost * factor, col_hi=col_hi, integrality=integ,
                               a_value=mf.a_value * factor[col_of_entry], current_scale=scale)
