"""The one formulation of the charging problem, built from arrays, shared by both backends.

A :class:`Formulation` holds everything the optimizer needs as plain arrays (cars x slots),
made either from a sessions frame (:func:`from_sessions`) or from a policy snapshot
(:func:`from_snapshot`). :meth:`Formulation.matrix` turns it into one sparse standard form
(:class:`MatrixForm`: ``row_lo <= A x <= row_hi``, ``lb <= x <= ub``, integrality, cost) that
the direct HiGHS path passes in one call and the Pyomo path turns into named components, so
both solve the very same model.

Model (all currents per phase [A], energies [kWh], money [EUR]):

- ``current_a[k]`` for every cell ``k`` = (car, slot) where the car is plugged in and may draw at
  least its minimum; ``on[k]`` binary where IEC 61851's "0 or >= min" matters (``binary_slots``),
  ``min * on <= current <= upper * on``; later slots may be relaxed to ``0 <= current <= upper``.
- Energy: ``need <= sum_t kwh_per_a[k] * current[k] + shortfall_kwh[i] <= need + one slot at the
  minimum current``, ``0 <= shortfall <= need`` (soft target: never infeasible; a car gets at
  most one minimum-current slot more than it needs, so a small remainder can still be served).
- Every fuse, every grid phase, every slot: charging current + the block's other load (root
  only, spread evenly over phases) <= rating. Single-phase cars load the grid phase their
  charger's rotation gives (:meth:`nowblock.site.Site.phase_incidence`).
- Optional unbalance: charging current on any grid phase of the root minus any other <= limit.
- Objective: shortfall (weighted by priority, or max-min fair on the fraction delivered, then
  weighted), energy cost at time-varying prices, a peak-power term on the block's import,
  a small penalty on setpoint changes and a tiny preference for charging early.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd

from nowblock.baselines import STRATEGIES
from nowblock.block.site import PHASES, Site

Sharing = Literal["weighted", "fair"]


@dataclass(frozen=True)
class OptimizeOptions:
    """Operator choices and solver settings for one planning step.

    - ``sharing``: how shortfall is shared when not every car can be served: ``"weighted"``
      (minimise the priority-weighted total shortfall [kWh]) or ``"fair"`` (first maximise the
      smallest fraction of its need any car gets, then the weighted total).
    - ``shortfall_eur_per_kwh`` [EUR/kWh]: penalty on energy not delivered by departure.
    - ``peak_eur_per_kw`` [EUR/kW]: cost on the highest block import over the horizon.
    - ``change_eur_per_a`` [EUR/A]: penalty on every ampere a setpoint moves between slots.
    - ``early_eur_per_kwh`` [EUR/kWh]: tie-break favouring earlier charging, scaled 0..1 over the
      horizon (energy now is worth more than energy promised later when arrivals are unknown).
    - ``binary_slots``: number of leading slots with "0 or >= min" binaries (None: all slots);
      later slots are LP-relaxed (their plan may hold currents below the minimum, which the
      rounding sends to 0; a receding-horizon loop only applies the first slot). Default 8
      (two hours of 15-minute slots): measured in docs/bench_optimize.md.
    - ``change_slots``: number of leading slots whose setpoint changes are penalised (None: all);
      the first compares with the setpoint applied now.
    - ``departure_margin_h`` [h]: in the receding-horizon policy, plan to finish this much before
      the (known or estimated) departure, at most a quarter of the time left, so a car that
      draws less than offered near full (battery taper) can still catch up.
    - ``urgency_h`` [h]: in the receding-horizon policy, a car's shortfall weighs
      ``1 + urgency_h / hours_left`` times more (``hours_left`` to its real departure, at least
      one control step): a plan's shortfall on a car leaving soon is final, on a car staying
      for hours the next plans can still make it good. Without it the plan shared a (partly
      apparent, margin-made) shortfall by the energy per ampere of the first slot and starved
      cars minutes before departure that earliest-deadline-first served (found in simulation).
      0 switches it off.
    - ``top_up_h`` [h]: in the receding-horizon policy, give the first slot's spare room (after
      the plan) to cars the plan leaves short that leave within this many hours, earliest
      departure first, up to their maximum and never above the plan's own peak power (0: off).
      Default 24 (the default horizon: every car the plan leaves short). It was 3 h, because
      topping up every short car undid part of the plan's cost savings on the default week
      (cost 435 instead of 365 EUR, measured then); but the plan's later slots are promises
      that arriving cars break, and on the congested residential week of docs/bench_quality.md
      3 h left the MILP 0.7 points of demand below LLF (0.9871 against 0.9942) where 24 h meets
      LLF's 0.9942 at 1 % less cost than LLF. Demand by departure comes before cost.
    - ``top_up_guessed``: in the receding-horizon policy, also give the first slot's spare room
      to every car whose needs were estimated (``needs_known`` False) and that still wants
      energy, after the cars the plan leaves short and leaving soon, shared equally
      (:func:`nowblock.milp.policy.share_spare_a`; in equal share's admission order where
      not every one gets its minimum). A guessed departure or energy may order cars, never leave room unused
      while a car that still draws could take it: without this the plan spread a guessed
      15 kWh over a guessed 10 h at the cheapest hours while real cars left (demand met 0.891
      against equal sharing's 0.967 on a congested residential week, docs/bench_quality.md).
    - ``time_limit_s`` [s], ``mip_rel_gap`` (1 % by default), ``threads`` (None: HiGHS default).
    - ``current_step_a`` [A]: pilot-signal step the schedule is rounded to (0.1 for OCPP 1.6).
    - ``backend``: ``"highs"`` (direct, default) or ``"pyomo"``.
    - ``fallback``: baseline policy name used when the solver finds nothing.
    """

    sharing: Sharing = "weighted"
    shortfall_eur_per_kwh: float = 20.0
    peak_eur_per_kw: float = 0.01
    change_eur_per_a: float = 1e-4
    early_eur_per_kwh: float = 1e-3
    binary_slots: int | None = 8
    change_slots: int | None = 4
    departure_margin_h: float = 1.0
    urgency_h: float = 1.0
    top_up_h: float = 24.0
    top_up_guessed: bool = True
    time_limit_s: float = 30.0
    mip_rel_gap: float = 0.01
    threads: int | None = None
    current_step_a: float = 1.0
    backend: Literal["highs", "pyomo"] = "highs"
    fallback: str = "llf"
    solver_options: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.sharing not in ("weighted", "fair"):
            raise ValueError(f"sharing: expected 'weighted' or 'fair', got {self.sharing!r}")
        if self.fallback not in STRATEGIES or self.fallback == "uncontrolled":
            raise ValueError(f"fallback: expected one of equal, edf, llf, got {self.fallback!r}")
        if self.backend not in ("highs", "pyomo"):
            raise ValueError(f"backend: expected 'highs' or 'pyomo', got {self.backend!r}")
        for name in ("shortfall_eur_per_kwh", "peak_eur_per_kw", "change_eur_per_a", "early_eur_per_kwh",
                     "urgency_h", "top_up_h"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s: must be > 0, got {self.time_limit_s}")
        if not 0 <= self.mip_rel_gap < 1:
            raise ValueError(f"mip_rel_gap: must be in [0, 1), got {self.mip_rel_gap}")
        if not self.current_step_a > 0:
            raise ValueError(f"current_step_a: must be > 0, got {self.current_step_a}")
        for name in ("binary_slots", "change_slots"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name}: must be >= 0 or None, got {v}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "OptimizeOptions":
        """Build options from keyword arguments; an unknown key raises a TypeError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(kwargs) - known)
        if bad:
            raise TypeError(f"unknown optimizer option(s) {bad}; known: {sorted(known)}")
        return cls(**kwargs)


@dataclass(frozen=True, eq=False)
class MatrixForm:
    """A MILP in HiGHS's standard form: min ``cost @ x`` s.t. ``row_lo <= A x <= row_hi``.

    ``A`` is column-wise (CSC: ``a_start``, ``a_index``, ``a_value``). ``cols``/``rows`` map each
    variable or constraint family name to its slice, so both backends (and the schedule reader)
    find ``current_a``, ``on``, ``shortfall_kwh``, ``fuse`` ... by name.
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
    build_seconds: float = 0.0  # time spent building these arrays [s]

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


@dataclass(frozen=True, eq=False)
class Formulation:
    """The charging problem for one horizon as arrays (n cars x T slots).

    ``times`` slot starts (UTC) of length ``dt_h`` [h] (a number, or one per slot); per car ``cp_index``, ``phases`` (grid
    phases loaded), ``min_current_a`` [A], ``upper_a`` (n, T) [A] (0 where the car cannot charge
    in that slot: not plugged, or a cap below its minimum), ``plugged`` (n, T) fraction of each slot
    the car is plugged in, ``need_kwh`` [kWh] still wanted, ``priority``; per slot ``base_kw``
    [kW] other load and ``price_eur_per_kwh`` [EUR/kWh]; ``prev_current_a`` [A] the setpoint
    applied now (NaN if none), for the change penalty on the first slot; ``draw_ratio`` per car
    (None: 1) is the share of the offered current it was measured to draw, which scales its
    energy (not its load on the fuses: the limits assume every car may draw all it is offered).
    ``shortfall_weight`` per car (None: 1) multiplies its shortfall penalty (urgency, see
    ``OptimizeOptions.urgency_h``). ``incidence_a`` optionally carries :attr:`incidence`
    precomputed (a snapshot has it). ``times`` may also be given as :class:`SlotTicks`; it is
    made an index on first read.
    """

    site: Site
    times: pd.DatetimeIndex
    dt_h: float | np.ndarray
    session_ids: np.ndarray
    cp_index: np.ndarray
    phases: np.ndarray
    min_current_a: np.ndarray
    upper_a: np.ndarray
    plugged: np.ndarray
    need_kwh: np.ndarray
    priority: np.ndarray
    base_kw: np.ndarray
    price_eur_per_kwh: np.ndarray
    prev_current_a: np.ndarray
    options: OptimizeOptions = field(default_factory=OptimizeOptions)
    draw_ratio: np.ndarray | None = None
    shortfall_weight: np.ndarray | None = None
    incidence_a: np.ndarray | None = field(default=None, repr=False)

    @cached_property
    def slot_h(self) -> np.ndarray:
        """Length of every slot [h], shape (T,)."""
        if np.ndim(self.dt_h) == 0:
            return np.full(self.n_slots, float(self.dt_h))
        return np.broadcast_to(np.asarray(self.dt_h, dtype=float), (self.n_slots,)).copy()

    @cached_property
    def energy_per_a_kwh(self) -> np.ndarray:
        """(n, T) energy [kWh] a car gets per ampere offered in each slot (0 where not plugged):
        power per ampere x slot length x plugged fraction x the car's measured draw ratio."""
        ratio = np.ones(self.n_cars) if self.draw_ratio is None else self.draw_ratio
        return (self.kw_per_a * ratio)[:, None] * self.slot_h[None, :] * self.plugged

    # ---- shapes and derived arrays ------------------------------------------------------
    @property
    def n_cars(self) -> int:
        """Number of sessions in the horizon."""
        return len(self.session_ids)

    @property
    def n_slots(self) -> int:
        """Number of slots in the horizon."""
        return len(self.__dict__["_times"])

    @cached_property
    def kw_per_a(self) -> np.ndarray:
        """Power per ampere of setpoint for each car [kW/A]."""
        return self.phases.astype(float) * self.site.voltage_v / 1000.0

    @cached_property
    def incidence(self) -> np.ndarray:
        """(n_fuses*3, n) car current [A] to fuse-phase current [A] (``incidence_a`` if given)."""
        if self.incidence_a is not None:
            return np.asarray(self.incidence_a, dtype=float)
        return self.site.phase_incidence(self.cp_index, self.phases)

    @cached_property
    def headroom_a(self) -> np.ndarray:
        """Current [A] left for charging on every fuse-phase row and slot, (n_fuses*3, T), >= 0."""
        room = np.repeat(self.site.limits_a.reshape(-1, 1), self.n_slots, axis=1)
        room[0:3] -= self.site.base_load_phase_current_a(self.base_kw).T
        return np.maximum(room, 0.0)

    @cached_property
    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """(car, slot) of every current variable, sorted by car then slot."""
        ok = (self.plugged > 0) & (self.upper_a > 0) & (self.upper_a >= self.min_current_a[:, None] - 1e-9)
        car, slot = np.nonzero(ok)
        return car, slot

    @cached_property
    def cell_upper_a(self) -> np.ndarray:
        """:attr:`upper_a` [A] of every cell (see :attr:`cells`)."""
        car, slot = self.cells
        return self.upper_a[car, slot]

    @cached_property
    def cell_energy_per_a_kwh(self) -> np.ndarray:
        """:attr:`energy_per_a_kwh` [kWh/A] of every cell (see :attr:`cells`)."""
        car, slot = self.cells
        return self.energy_per_a_kwh[car, slot]

    @property
    def n_binary_slots(self) -> int:
        """Slots (from the start) whose cells carry an on/off binary."""
        b = self.options.binary_slots
        return self.n_slots if b is None else min(int(b), self.n_slots)

    def with_options(self, **kwargs) -> "Formulation":
        """The same problem with some options replaced."""
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **kwargs))

    # ---- the standard form ------------------------------------------------------------
    @cached_property
    def binary_candidates(self) -> np.ndarray:
        """Boolean per cell: inside the binary window and with a minimum current > 0."""
        car, slot = self.cells
        return (slot < self.n_binary_slots) & (self.min_current_a[car] > 0)

    def matrix(self, relax: bool = False, binary_mask: np.ndarray | None = None) -> MatrixForm:
        """Build the sparse MILP.

        ``relax=True`` gives the LP relaxation (no binaries at all); ``binary_mask`` (bool per
        cell) puts on/off binaries on exactly those cells instead of every candidate.
        """
        if relax:
            mask = np.zeros(len(self.cells[0]), dtype=bool)
        elif binary_mask is None:
            mask = self.binary_candidates
        else:
            mask = np.asarray(binary_mask, dtype=bool) & self.binary_candidates
        return _build_matrix(self, mask)

    def current_from_cells(self, values: np.ndarray) -> np.ndarray:
        """Dense (n, T) current [A] from the ``current_a`` column values."""
        out = np.zeros((self.n_cars, self.n_slots))
        car, slot = self.cells
        out[car, slot] = values
        return out


@dataclass(frozen=True)
class SlotTicks:
    """Slot starts as integer nanoseconds since the epoch (UTC) and the index's time unit."""

    ns: np.ndarray
    unit: str = "ns"

    def __len__(self) -> int:
        return len(self.ns)

    def index(self) -> pd.DatetimeIndex:
        """The slot starts as a UTC index in ``unit`` (finer if the ticks need it)."""
        unit, per = self.unit, _NS_PER_UNIT[self.unit]
        if per > 1 and (self.ns % per).any():
            unit, per = "ns", 1
        return pd.DatetimeIndex((self.ns // per).view(f"M8[{unit}]"), tz="UTC")


class _LazyTimes:
    """``Formulation.times``: kept as given and made a DatetimeIndex on first read. The
    receding-horizon step rarely reads it (only the schedule's frames do), and building the
    index was ~0.1 ms of a 50-car step (measured in the step, after a solve)."""

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        v = obj.__dict__["_times"]
        if isinstance(v, SlotTicks):
            v = obj.__dict__["_times"] = v.index()
        return v

    def __set__(self, obj, value) -> None:
        obj.__dict__["_times"] = value


Formulation.times = _LazyTimes()  # after @dataclass: the generated __init__ sets it through __set__


# ---- building the matrix ----------------------------------------------------------------
def _build_matrix(f: Formulation, binary: np.ndarray) -> MatrixForm:
    """The standard form: numpy gathers the per-cell arrays, numba kernels emit the entries
    (about a hundred small numpy calls before, most of a 50-car step's build time)."""
    from nowblock.milp.kernels import change_pairs, limit_row_entries, standard_form

    t_start = time.perf_counter()
    o = f.options
    n, T = f.n_cars, f.n_slots
    car, slot = f.cells
    K = len(car)
    ub = f.cell_upper_a
    kwh_per_a = f.cell_energy_per_a_kwh
    bcell = np.nonzero(binary)[0]
    B = len(bcell)
    fair = o.sharing == "fair"
    use_peak = o.peak_eur_per_kw > 0
    need = np.maximum(f.need_kwh, 0.0)

    # Change penalty: one pair per cell with a predecessor (same car, previous slot) or, in slot
    # 0, with the setpoint applied now.
    n_change = T if o.change_slots is None else int(o.change_slots)
    if o.change_eur_per_a > 0 and n_change > 0:
        pair, has_prev, rhs = change_pairs(car, slot, f.prev_current_a[car], n_change)
    else:
        pair, has_prev, rhs = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), np.zeros(0)
    P = len(pair)

    # Fuse rows: every nonzero (fuse-phase row, car) pair of the incidence over the car's
    # cells, only rows whose cells could together exceed the headroom.
    A = f.incidence
    cell_count = np.bincount(car, minlength=n)
    cell_start = np.cumsum(cell_count) - cell_count
    pr, pc = np.nonzero(A)
    room = f.headroom_a.reshape(-1)
    keep_key, fuse_label, fuse_rows, fuse_cells, fuse_vals = limit_row_entries(
        pr, pc, A[pr, pc], cell_start, cell_count, slot, ub, room, T, 1e-9, False)

    # Unbalance at the root: charging current on phase p minus phase q, for p != q.
    u = f.site.max_unbalance_a
    unb_label = np.zeros((0, 3), dtype=np.int64)
    unb_rows = unb_cells = np.zeros(0, dtype=np.int64)
    unb_vals = np.zeros(0)
    n_unb = 0
    use_unb = u is not None and K > 0
    if use_unb:
        pq = np.array([(p, q) for p in range(3) for q in range(3) if p != q])
        d = A[pq[:, 0]] - A[pq[:, 1]]  # (6, n)
        dr, dc = np.nonzero(d)
        keep, _, unb_rows, unb_cells, unb_vals = limit_row_entries(dr, dc, d[dr, dc], cell_start, cell_count, slot, ub,
                                                                   np.full(6 * T, float(u)), T, 1e-9, True)
        n_unb = len(keep)
        unb_label = np.stack([pq[keep // T, 0], pq[keep // T, 1], keep % T], axis=1)

    weight = 1.0 if f.shortfall_weight is None else f.shortfall_weight
    fair_cost = 0.0
    if fair:
        # Weighted so that raising the worst fraction always beats any total-shortfall trade.
        w_max = 1.0 if f.shortfall_weight is None else max(float(np.max(f.shortfall_weight, initial=1.0)), 1.0)
        fair_cost = (10.0 * o.shortfall_eur_per_kwh * max(need.sum(), 1e-9) * max(f.priority.max(initial=1.0), 1.0)
                     * w_max)
    # The energy row's overshoot (one slot at the minimum current) lets a car with a small
    # remainder still be served under "0 or >= min": it stops by itself when full. Shortfall
    # is priced, so it is 0 when delivered >= need. Energy beyond need is never free (early_eur_per_kwh > 0).
    overshoot = f.min_current_a * f.kw_per_a * f.slot_h.max(initial=0.0)
    cost, col_lo, col_hi, integ, row_lo, row_hi, a_start, a_index, a_value = standard_form(
        car, slot, ub, kwh_per_a, f.min_current_a[car], f.kw_per_a[car], bcell, need, need + overshoot,
        o.shortfall_eur_per_kwh * f.priority * weight, f.price_eur_per_kwh, float(o.early_eur_per_kwh), T,
        float(fair_cost), fair, float(o.peak_eur_per_kw), use_peak, f.base_kw, float(o.change_eur_per_a), pair,
        has_prev, rhs, fuse_rows, fuse_cells, fuse_vals, room[keep_key], unb_rows, unb_cells, unb_vals,
        float(u) if use_unb else 0.0, n_unb)

    sizes = {"current_a": K, "on": B, "shortfall_kwh": n, "worst_fraction": int(fair),
             "peak_kw": int(use_peak), "change_up_a": P, "change_down_a": P}
    row_sizes = {"energy": n, "fuse": len(keep_key), "unbalance": n_unb if use_unb else None,
                 "on_upper": B or None, "on_lower": B or None, "fair": int((need > 1e-9).sum()) if fair else None,
                 "peak": T if use_peak else None, "change": P or None}
    return MatrixForm(
        cost=cost, col_lo=col_lo, col_hi=col_hi, integrality=integ, row_lo=row_lo, row_hi=row_hi,
        a_start=a_start, a_index=a_index, a_value=a_value, cols=_layout(sizes), rows=_layout(row_sizes),
        fuse_row_label=fuse_label, unbalance_row_label=unb_label, binary_cell=bcell,
        change_cell=pair, change_has_prev=has_prev, change_rhs=rhs,
        build_seconds=time.perf_counter() - t_start,
    )


def _layout(sizes: dict) -> dict[str, slice]:
    """Consecutive slices for named blocks of the given sizes (None: the block is left out)."""
    out, pos = {}, 0
    for name, size in sizes.items():
        if size is not None:
            out[name] = slice(pos, pos + size)
            pos += size
    return out


# ---- adapters: sessions frame and snapshot ----------------------------------------------
def _slot_ticks(start, horizon, step, first=None) -> tuple[np.ndarray, np.ndarray]:
    """Slot starts as integer nanoseconds since the epoch (UTC) and slot lengths [h]: ``step``
    slots over ``horizon``; with ``first`` shorter than ``step``, the first slot is ``first``
    long (a receding-horizon loop's control step) and the regular slots follow it."""
    step_ns = _as_ns(step)
    horizon_ns = _as_ns(horizon)
    if step_ns <= 0 or horizon_ns < step_ns:
        raise ValueError(f"step must be > 0 and horizon >= step (got step={pd.Timedelta(step)}, "
                         f"horizon={pd.Timedelta(horizon)})")
    if not isinstance(start, pd.Timestamp):
        start = pd.Timestamp(start)
    if start.tz is None:
        raise ValueError("start: must be timezone-aware")
    first_ns = step_ns if first is None else _as_ns(first)
    # Integers throughout: pd.date_range and Timedelta arithmetic were a third of the adapter.
    if first_ns <= 0 or first_ns >= step_ns:
        T = -(-horizon_ns // step_ns)
        offs_ns = np.arange(T, dtype=np.int64) * step_ns
        lengths = np.full(T, step_ns / 3.6e12)
    else:
        T = 1 + -(-(horizon_ns - first_ns) // step_ns)
        offs_ns = np.zeros(T, dtype=np.int64)
        offs_ns[1:] = first_ns + np.arange(T - 1, dtype=np.int64) * step_ns
        lengths = np.full(T, step_ns / 3.6e12)
        lengths[0] = first_ns / 3.6e12
    return start.value + offs_ns, lengths


def _as_ns(td) -> int:
    """A duration as integer nanoseconds."""
    return (td if isinstance(td, pd.Timedelta) else pd.Timedelta(td)).value


def _on_slots(series: pd.Series | None, ticks_ns: np.ndarray, slot_h: np.ndarray, default: float,
              how: str = "mean") -> np.ndarray:
    """A time series per slot: its ``how`` ("mean" or "max") over the slot starting at
    ``ticks_ns`` [ns since the epoch, UTC] of length ``slot_h`` [h] (step-wise values, last
    value carried forward, the first value before the series)."""
    if series is None or len(series) == 0:
        return np.full(len(ticks_ns), float(default))
    from nowblock.milp.kernels import sample_steps

    t_ns = _utc_ns(series.index)
    v = series.to_numpy(dtype=float, na_value=np.nan)
    slot_ns = np.asarray(slot_h, dtype=float) * 3.6e12
    # Sample on a fine grid inside each slot so a series finer than the slot is averaged (a
    # kernel: the pandas reindex/union this replaced cost ~10 ms a call, numpy ~50 us).
    vals, top = sample_steps(t_ns, v, ticks_ns, slot_ns, 15, True)
    if len(vals) == 0:  # NaN, or unsorted or duplicated times: fill, keep the last of each time
        if np.isnan(v).any():
            v = pd.Series(v).ffill().bfill().to_numpy(float)
        order = np.argsort(t_ns, kind="stable")
        t_ns, v = t_ns[order], v[order]
        last = np.r_[t_ns[1:] != t_ns[:-1], True]
        vals, top = sample_steps(t_ns[last], v[last], ticks_ns, slot_ns, 15, False)
    return top if how == "max" else vals.mean(axis=1)


def _nan_to(a: np.ndarray, value: float) -> np.ndarray:
    """A copy of ``a`` with NaN replaced by ``value`` (np.nan_to_num costs ~10 us a call)."""
    return np.where(np.isnan(a), value, a)


def _utc_ns(index) -> np.ndarray:
    """Nanoseconds since the epoch (UTC; naive counts as UTC) of a datetime index, without
    re-wrapping an index that already is one (that alone cost ~0.1 ms a call)."""
    idx = index if isinstance(index, pd.DatetimeIndex) else pd.DatetimeIndex(index)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    # pandas 3 stores microseconds: scale the integers (as_unit("ns") cost ~30 us a call).
    return idx.asi8 * _NS_PER_UNIT[idx.unit]


_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _hours(ts) -> np.ndarray:
    """Hours since the epoch, whatever the datetime unit (pandas 3 may store us or ns)."""
    idx = pd.DatetimeIndex(ts)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return ((idx - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(hours=1)).to_numpy(float)


def _plugged_fraction(arrival, departure, times: pd.DatetimeIndex, dt_h) -> np.ndarray:
    """(n, T) fraction of each slot between arrival and departure."""
    t0 = _hours(times)[None, :]
    a = _hours(arrival)[:, None]
    d = _hours(departure)[:, None]
    overlap = np.minimum(d, t0 + dt_h) - np.maximum(a, t0)
    return np.clip(overlap / dt_h, 0.0, 1.0)


def _upper(site: Site, times, cp_index, car_max_a, plugged) -> np.ndarray:
    if not site.has_caps:  # no time windows: skip the local-time grid
        cap = np.full((len(cp_index), len(times)), np.inf)
    else:
        cap = site.cap_current_a(times)[:, cp_index].T if len(cp_index) else np.zeros((0, len(times)))
    hi = np.minimum(np.minimum(site.cp_max_current_a[cp_index], car_max_a)[:, None], cap)
    return np.where(plugged > 0, hi, 0.0)


def from_sessions(site: Site, sessions: pd.DataFrame, start=None, horizon="24h", step="15min",
                  base_load=None, prices=None, options: OptimizeOptions | None = None,
                  use_draw_fraction: bool = False) -> Formulation:
    """The formulation for a sessions frame (the contract's columns), all needs known in advance.

    Every session overlapping [start, start + horizon) is planned; ``energy_kwh`` [kWh] is its
    whole need. ``start`` defaults to the first arrival floored to ``step``. With
    ``use_draw_fraction`` the decision is the current each car *draws* (offered x
    ``draw_fraction``): min and max are scaled by it (the offline yardstick's perfect foresight).
    """
    from nowblock.block.sessions import validate_sessions

    df = validate_sessions(sessions, site)
    if start is None:
        start = df["arrival"].min().floor(pd.Timedelta(step)) if len(df) else pd.Timestamp.now(tz="UTC").floor(step)
    ticks_ns, dt_h = _slot_ticks(start, horizon, step)
    times = SlotTicks(ticks_ns, pd.Timestamp(start).unit).index()
    end = times[-1] + pd.Timedelta(step)
    df = df[(df["departure"] > times[0]) & (df["arrival"] < end)]
    cp = site.cp_index(df["charge_point_id"])
    phases = np.minimum(df["phases"].to_numpy(np.int64), site.cp_phases[cp])
    plugged = _plugged_fraction(df["arrival"], df["departure"], times, dt_h)
    n = len(df)
    frac = df["draw_fraction"].to_numpy(float) if use_draw_fraction else np.ones(n)
    return Formulation(
        site=site, times=times, dt_h=float(dt_h[0]), session_ids=df["session_id"].to_numpy(str),
        cp_index=cp, phases=phases, min_current_a=site.cp_min_current_a[cp] * frac,
        upper_a=_upper(site, times, cp, df["max_current_a"].to_numpy(float), plugged) * frac[:, None],
        plugged=plugged, need_kwh=df["energy_kwh"].to_numpy(float),
        priority=df["priority"].to_numpy(float),
        base_kw=_on_slots(base_load, ticks_ns, dt_h, 0.0, "max"), price_eur_per_kwh=_on_slots(prices, ticks_ns, dt_h, 0.0),
        prev_current_a=np.full(n, np.nan), options=options or OptimizeOptions(),
    )


def from_snapshot(snapshot, horizon="24h", step="15min", options: OptimizeOptions | None = None,
                  first_slot_is_control_step: bool = False) -> Formulation:
    """The formulation for a policy snapshot: plugged-in cars, remaining needs, forecast load.

    With ``first_slot_is_control_step`` the first slot lasts ``snapshot.step`` and the regular
    slots follow it (measured: not better, see docs/bench_optimize.md).
    Departures are moved ``options.departure_margin_h`` earlier (at most a quarter of the time
    left), but never to less than one control step from now (a car whose departure has passed
    still wants its energy now); an unknown (NaT) departure means plugged in all horizon, an
    unknown (NaN) energy means all it can take. A car that drew less than offered gets energy
    in proportion (``draw_ratio``, from the last measurement). ``snapshot.cars.max_current_a`` already holds the
    current caps; time-window caps of later slots come from the site.
    """
    from nowblock.milp.kernels import snapshot_plan_arrays

    cars = snapshot.cars
    opts = options or OptimizeOptions(current_step_a=float(snapshot.current_step_a))
    site = snapshot.site
    ticks_ns, dt_h = _slot_ticks(snapshot.time, horizon, step,
                                 first=snapshot.step if first_slot_is_control_step else None)
    times = SlotTicks(ticks_ns, pd.Timestamp(snapshot.time).unit)
    cp = snapshot.values("cp_index").astype(np.int64)
    max_a = snapshot.values("max_current_a")
    phases = snapshot.values("phases")
    columns = cars.columns
    has_offered = "offered_current_a" in columns
    use_ratio = has_offered and "measured_current_a" in columns
    nan = np.full(len(cars), np.nan)
    offered = snapshot.values("offered_current_a") if has_offered else nan
    meas = snapshot.values("measured_current_a") if use_ratio else nan
    # One kernel for the per-car, per-slot arrays (the numpy version was ~30 calls, most of the
    # adapter's time). Rules, measured in simulation (docs/optimizer.md):
    # - departures move ``departure_margin_h`` earlier (at most a quarter of the time left), never
    #   to less than one control step from now (a car whose departure has passed still wants its
    #   energy now);
    # - a car leaving within the first slot counts only the time it stays: counting the whole
    #   first slot made the plan offer too little in a car's last step (full default week);
    # - later slots count only when the car is there for all of it: a plan that leaves energy for
    #   the last partial slot is at the mercy of when exactly the car leaves;
    # - a car that drew less than offered gets energy in proportion (``draw_ratio``; unknown, or 0
    #   when paused or full, counts as 1);
    # - a remainder smaller than one slot at the minimum current is planned as that slot: valued
    #   at its true size it never beat the slot's price and slipped past departure.
    cells = None
    plugged, upper, ratio, urgency, need, energy, cell_car, cell_slot = snapshot_plan_arrays(
        snapshot.hours_to_departure_h, max_a, site.cp_max_current_a[cp], snapshot.values("min_current_a"), phases,
        meas, offered, snapshot.remaining_kwh, dt_h, snapshot.dt_h, float(opts.urgency_h),
        float(opts.departure_margin_h), float(site.voltage_v), use_ratio)
    if site.has_caps and len(cp):
        # ``snapshot.cars.max_current_a`` holds today's cap; later slots follow the site's windows.
        upper = np.where(plugged > 0, np.minimum(upper, site.cap_current_a(times.index())[:, cp].T), 0.0)
    else:
        # Cells exactly as ``Formulation.cells`` finds them, from the kernel's own pass.
        cells = (cell_car, cell_slot)
    unknown = ~np.isfinite(need)
    if unknown.any():  # unknown energy: the car wants all it can get over the horizon
        can = (upper * plugged * dt_h[None, :]).sum(axis=1) * phases * site.voltage_v / 1000.0
        one_slot_kwh = snapshot.values("min_current_a") * phases * site.voltage_v / 1000.0 * dt_h[0] * ratio
        need[unknown] = np.where((can > 1e-3) & (can < one_slot_kwh), one_slot_kwh, can)[unknown]
    form = Formulation(
        site=site, times=times, dt_h=dt_h if (dt_h != dt_h[0]).any() else float(dt_h[0]),
        session_ids=cars.index.to_numpy(str),
        cp_index=cp, phases=phases.astype(np.int64),
        min_current_a=snapshot.values("min_current_a"), upper_a=upper, plugged=plugged,
        need_kwh=need, priority=_nan_to(snapshot.values("priority"), 1.0),
        base_kw=_on_slots(snapshot.base_load_kw, ticks_ns, dt_h, 0.0, "max"),
        price_eur_per_kwh=_on_slots(snapshot.prices_eur_per_kwh, ticks_ns, dt_h, 0.0),
        prev_current_a=offered, options=opts, draw_ratio=ratio, shortfall_weight=urgency,
        incidence_a=snapshot.incidence(),
    )
    # The cached properties' slots, from the kernel's own pass (the same numbers).
    form.__dict__["energy_per_a_kwh"] = energy
    if cells is not None:
        form.__dict__["cells"] = cells
        form.__dict__["cell_upper_a"] = upper[cells]
        form.__dict__["cell_energy_per_a_kwh"] = energy[cells]
    return form


def phase_name(row: int) -> tuple[int, str]:
    """(fuse index, phase name) of fuse-phase row ``row``."""
    return row // 3, PHASES[row % 3]
