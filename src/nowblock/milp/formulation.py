"""The one formulation of the charging problem, built from arrays, shared by every stage.

A :class:`Formulation` holds everything the optimizer needs as plain arrays (cars x slots),
made either from a sessions frame or from a policy snapshot (:mod:`nowblock.milp.adapters`).
:meth:`Formulation.matrix` turns it into one sparse standard form (:mod:`nowblock.milp.matrix`)
that the direct HiGHS path passes in one call and the Pyomo path turns into named components,
so both solve the very same model; :attr:`Formulation.limits` holds the same limits as
``G @ current_a[:, t] <= h[:, t]`` for the rounding and the re-check.

Model (all currents per phase [A], energies [kWh], money [EUR]):

- ``current_a[k]`` for every cell ``k`` = (car, slot) where the car is plugged in and may draw at
  least its minimum; "0 or >= min" (IEC 61851) in every slot of the returned plan.
- Energy: ``need <= sum_t kwh_per_a[k] * current[k] + shortfall_kwh[i] + later_kwh[i] <= need + one slot at the
  minimum current (at least one pilot step)``, ``0 <= shortfall <= need`` (soft target: never infeasible; a car gets at
  most one minimum-current slot more than it needs, so a small remainder can still be served).
  ``0 <= later_kwh[i] <= need - due`` is the part a car leaving after the horizon's end could
  still get after it (``due_kwh``), priced lower, so it is short first.
- Every fuse, every grid phase, every slot: charging current + the block's other load (root
  only, spread evenly over phases) <= rating, the room floored to the pilot step (every
  coefficient is a whole number and every setpoint a whole number of steps, so this loses no
  plan and tightens the bound). Single-phase cars load the grid phase their charger's rotation
  gives (:meth:`nowblock.block.site.Site.phase_incidence`).
- Optional unbalance: charging current on any grid phase of the root minus any other <= limit.
- Objective: shortfall (weighted by priority, or max-min fair on the fraction delivered, then
  weighted), energy cost at time-varying prices plus a tiny cost per kWh, a peak-power term on
  the block's import and a small penalty on setpoint changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from nowblock.block.site import PHASES, Site
from nowblock.milp.options import OptimizeOptions, Sharing
from nowblock.milp.slots import SlotTicks

__all__ = ["Formulation", "KernelArrays", "LimitRows", "OptimizeOptions", "Sharing", "SlotTicks", "phase_name"]

_PQ = tuple((p, q) for p in range(3) for q in range(3) if p != q)  # ordered phase pairs of unbalance rows


@dataclass(frozen=True, eq=False)
class KernelArrays:
    """Arrays the snapshot adapter's kernel computes in its own pass, handed to the formulation
    so that it does not compute them again: ``energy_per_a_kwh`` (n, T) and, when no time-window
    caps changed the upper bounds, the cells (``cell_car``, ``cell_slot``). They must describe
    the formulation they are given to (``dataclasses.replace`` callers that change the cars
    pass ``kernel_arrays=None``)."""

    energy_per_a_kwh: np.ndarray
    cell_car: np.ndarray | None = None
    cell_slot: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class LimitRows:
    """Every limit on the car currents of a slot as ``g @ current_a <= h[:, t]``.

    Rows ``f * 3 + p`` (the first ``n_fuse_rows``) are fuse ``f``, grid phase ``p``, with the
    headroom the base load leaves; when the site has an unbalance limit, six more rows bound the
    grid connection's charging current on phase p minus phase q. ``h`` [A] is floored to the
    pilot step. ``g_start``/``g_row``/``g_val`` list each car's nonzero rows (CSR of ``g.T``),
    ``r_start``/``r_car``/``r_val`` each row's cars (CSR of ``g``) for the numba kernels.
    """

    g: np.ndarray
    h: np.ndarray
    n_fuse_rows: int
    labels_of: tuple[tuple[str, str, str], ...] = field(repr=False)

    @cached_property
    def by_car(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, row, value): car ``i``'s nonzero rows are ``row[start[i]:start[i + 1]]``."""
        return _csr(self.g.T)

    @cached_property
    def by_row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, car, value): row ``r``'s nonzero cars are ``car[start[r]:start[r + 1]]``."""
        return _csr(self.g)

    @property
    def labels(self) -> list[tuple[str, str, str]]:
        """(kind, fuse id, phase) per row: ``("fuse", id, "L1")`` or ``("unbalance", id, "L1-L2")``."""
        return list(self.labels_of)


def rows_times(g: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``g @ y`` for a dense row matrix ``g`` (rows, n), e.g. :attr:`LimitRows.g`, and plans
    ``y`` (n, T) or one plan (n,) [A]: each row's load [A] per slot, as a sparse product.

    Why not ``g @ y``: numpy's BLAS runs a product of this shape on all its threads, and where
    the cores are busy those threads wait on each other: 200-240 ms against 4-11 ms as a sparse
    product (1,000 cars x 288 slots, 6 and 120 rows, load average 27 on 2 cores; with one BLAS
    thread both take the same). A car is in a few rows, so the sparse product does no more work.

    Parameters
    ----------
    g : ndarray
        (rows, n) coefficients (bool or float), e.g. 1 per car and fuse phase it loads.
    y : ndarray
        (n, T) or (n,) currents [A] (bool or float).

    Returns
    -------
    ndarray
        (rows, T) or (rows,) ``g @ y`` [A].
    """
    import scipy.sparse as sp

    return np.asarray(sp.csr_array(np.asarray(g, dtype=float)) @ np.asarray(y, dtype=float))


def _csr(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, c = np.nonzero(m)
    start = np.searchsorted(r, np.arange(m.shape[0] + 1)).astype(np.int64)
    return start, c.astype(np.int64), m[r, c].astype(float)


@dataclass(frozen=True, eq=False)
class Formulation:
    """The charging problem for one horizon as arrays (n cars x T slots).

    Parameters
    ----------
    site : Site
        Fuse tree, charging points, voltage [V], unbalance limit [A].
    slot_starts : pandas.DatetimeIndex or SlotTicks
        Slot starts (UTC); read them as :attr:`times` (an index, built on first read).
    dt_h : float or ndarray
        Slot length [h], one number or one per slot.
    session_ids, cp_index, phases, min_current_a : ndarray
        Per car: id, charging point index, grid phases loaded, minimum current [A].
    upper_a, plugged : ndarray
        (n, T): the most a car may be offered [A] (0 where it cannot charge: not plugged, or a
        cap below its minimum) and the fraction of each slot it is plugged in.
    need_kwh, priority : ndarray
        Per car: energy still wanted [kWh] and shortfall weight.
    base_kw, price_eur_per_kwh : ndarray
        Per slot: the block's other load [kW] and the energy price [EUR/kWh].
    prev_current_a : ndarray
        Per car: the setpoint applied now [A] (NaN if none), for the change penalty.
    options : OptimizeOptions
    draw_ratio : ndarray, optional
        Per car, the share of the offered current it was measured to draw (None: 1); scales its
        energy, not its load on the fuses (the limits assume a car may draw all it is offered).
    shortfall_weight : ndarray, optional
        Per car, multiplies its shortfall penalty (urgency, ``OptimizeOptions.urgency_h``).
    incidence_a : ndarray, optional
        :attr:`incidence` precomputed (a snapshot has it).
    kernel_arrays : KernelArrays, optional
        Arrays the snapshot adapter already computed (see :class:`KernelArrays`).
    now_bonus_eur_per_kwh : ndarray, optional
        Per car, taken off the cost of every kWh it gets in the first slot [EUR/kWh] (None: 0).
        :class:`~nowblock.milp.MilpPolicy` sets it for the cars its top-up serves (see
        ``OptimizeOptions.top_up_h``).
    due_kwh : ndarray, optional
        Per car, the part of ``need_kwh`` [kWh] due by the horizon's end (None: all of it). A
        car leaving after the horizon's end needs by then only what it could not get after it
        (:func:`~nowblock.milp.adapters.due_by_horizon_end_kwh`); the rest (:attr:`later_kwh`)
        has its own shortfall column priced ``options.after_horizon_weight`` times the car's
        shortfall price, so due energy is served first.
    """

    site: Site
    slot_starts: pd.DatetimeIndex | SlotTicks
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
    kernel_arrays: KernelArrays | None = field(default=None, repr=False)
    now_bonus_eur_per_kwh: np.ndarray | None = None
    due_kwh: np.ndarray | None = None

    # ---- shapes and time ----------------------------------------------------------------
    @property
    def n_cars(self) -> int:
        """Number of sessions in the horizon."""
        return len(self.session_ids)

    @property
    def n_slots(self) -> int:
        """Number of slots in the horizon (without building :attr:`times`)."""
        return len(self.slot_starts)

    @cached_property
    def times(self) -> pd.DatetimeIndex:
        """Slot starts (UTC) as an index, built on first read from :attr:`slot_starts`."""
        s = self.slot_starts
        return s.index() if isinstance(s, SlotTicks) else pd.DatetimeIndex(s)

    @cached_property
    def slot_h(self) -> np.ndarray:
        """Length of every slot [h], shape (T,)."""
        if np.ndim(self.dt_h) == 0:
            return np.full(self.n_slots, float(self.dt_h))
        return np.broadcast_to(np.asarray(self.dt_h, dtype=float), (self.n_slots,)).copy()

    # ---- per car and cell ---------------------------------------------------------------
    @cached_property
    def kw_per_a(self) -> np.ndarray:
        """Power per ampere of setpoint for each car [kW/A]."""
        return self.phases.astype(float) * self.site.voltage_v / 1000.0

    @cached_property
    def energy_per_a_kwh(self) -> np.ndarray:
        """(n, T) energy [kWh] a car gets per ampere offered in each slot (0 where not plugged):
        power per ampere x slot length x plugged fraction x the car's measured draw ratio."""
        if self.kernel_arrays is not None:
            return self.kernel_arrays.energy_per_a_kwh
        ratio = np.ones(self.n_cars) if self.draw_ratio is None else self.draw_ratio
        return (self.kw_per_a * ratio)[:, None] * self.slot_h[None, :] * self.plugged

    @cached_property
    def incidence(self) -> np.ndarray:
        """(n_fuses*3, n) car current [A] to fuse-phase current [A] (``incidence_a`` if given)."""
        if self.incidence_a is not None:
            return np.asarray(self.incidence_a, dtype=float)
        return self.site.phase_incidence(self.cp_index, self.phases)

    @cached_property
    def headroom_a(self) -> np.ndarray:
        """Current [A] left for charging on every fuse-phase row and slot, (n_fuses*3, T), >= 0,
        floored to the pilot step."""
        room = np.repeat(self.site.limits_a.reshape(-1, 1), self.n_slots, axis=1)
        room[0:3] -= self.site.base_load_phase_current_a(self.base_kw).T
        return self.floor_to_step(np.maximum(room, 0.0))

    def floor_to_step(self, current_a):
        """``current_a`` [A] rounded down to whole pilot steps (``options.current_step_a``)."""
        step = float(self.options.current_step_a)
        return np.floor(np.asarray(current_a, dtype=float) / step + 1e-9) * step

    @cached_property
    def min_on_a(self) -> np.ndarray:
        """Per car the least nonzero setpoint [A]: its minimum current rounded up to a pilot step,
        at least one step."""
        step = float(self.options.current_step_a)
        lo = np.asarray(self.min_current_a, dtype=float)
        return np.maximum(np.ceil(lo / step - 1e-9) * step, step)

    @cached_property
    def ceiling_kwh(self) -> np.ndarray:
        """Per car the most energy [kWh] a plan may give it: its need plus one slot at
        :attr:`min_on_a`. A car with a small remainder can then still be served under "0 or >=
        min" and in whole steps (it stops by itself when full); the energy rows of the model and
        the rounding keep to the same ceiling, so the model's bound holds for every plan."""
        need = np.maximum(np.nan_to_num(np.asarray(self.need_kwh, dtype=float)), 0.0)
        return need + self.min_on_a * self.kw_per_a * float(self.slot_h.max(initial=0.0))

    @cached_property
    def later_kwh(self) -> np.ndarray:
        """Per car the part of its need [kWh] it could still get after the horizon's end (need
        less :attr:`due_kwh`, at least 0; all 0 without ``due_kwh``)."""
        need = np.maximum(np.nan_to_num(np.asarray(self.need_kwh, dtype=float)), 0.0)
        if self.due_kwh is None:
            return np.zeros(self.n_cars)
        return np.clip(need - np.asarray(self.due_kwh, dtype=float), 0.0, need)

    @cached_property
    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """(car, slot) of every current variable, sorted by car then slot."""
        k = self.kernel_arrays
        if k is not None and k.cell_car is not None:
            return k.cell_car, k.cell_slot
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
        """Slots (from the start) whose cells may carry an on/off binary in the MILP stage."""
        b = self.options.binary_slots
        return self.n_slots if b is None else min(int(b), self.n_slots)

    @cached_property
    def can_switch_on(self) -> np.ndarray:
        """Boolean per cell (see :attr:`cells`): whether the car's least setpoint
        (:attr:`min_on_a` [A]) fits every fuse phase it loads in that slot with every other car at
        0 A. Where not (a fuse, or a fuse less the other load, below the car's minimum), every real
        plan offers 0 A there."""
        car, slot = self.cells
        room = self.headroom_a
        ok = np.ones(len(car), dtype=bool)
        if len(car) == 0 or float(room.min(initial=np.inf)) >= float(self.min_on_a.max(initial=0.0)) - 1e-9:
            return ok  # every row has room for every car's minimum: nothing to look at cell by cell
        a = self.incidence
        need_a = self.min_on_a[car] - 1e-9
        for r in np.nonzero((a > 0).any(axis=1))[0]:
            on = a[r, car] > 0
            ok[on] &= room[r, slot[on]] >= need_a[on]
        return ok

    @cached_property
    def binary_candidates(self) -> np.ndarray:
        """Boolean per cell: inside the binary window and with a minimum current > 0."""
        car, slot = self.cells
        return (slot < self.n_binary_slots) & (self.min_current_a[car] > 0)

    @cached_property
    def limits(self) -> LimitRows:
        """Every limit as ``G @ current_a[:, t] <= h[:, t]`` (:class:`LimitRows`)."""
        site = self.site
        g, h = self.incidence, self.headroom_a
        n_fuse = g.shape[0]
        labels = [("fuse", site.fuse_ids[r // 3], PHASES[r % 3]) for r in range(n_fuse)]
        if site.max_unbalance_a is not None and self.n_cars:
            g = np.vstack([g, np.array([g[p] - g[q] for p, q in _PQ])])
            u = float(self.floor_to_step(site.max_unbalance_a))
            h = np.vstack([h, np.full((len(_PQ), self.n_slots), u)])
            labels += [("unbalance", site.fuse_ids[0], f"{PHASES[p]}-{PHASES[q]}") for p, q in _PQ]
        return LimitRows(g=np.ascontiguousarray(g, dtype=float), h=np.ascontiguousarray(h, dtype=float),
                         n_fuse_rows=n_fuse, labels_of=tuple(labels))

    def with_options(self, **kwargs) -> "Formulation":
        """The same problem with some options replaced."""
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **kwargs))

    # ---- the standard form --------------------------------------------------------------
    def matrix(self, relax: bool = False, binary_mask: np.ndarray | None = None, *, split_useful: bool = False,
               n_window: int | None = None, exact_draws: bool = False):
        """The sparse model (:class:`nowblock.milp.matrix.MatrixForm`).

        ``relax=True`` gives the LP relaxation (no binaries at all); ``binary_mask`` (bool per
        cell) puts on/off binaries on exactly those cells (of :attr:`binary_candidates`) instead
        of every candidate. ``split_useful``: useful-current columns on the light side of the
        unbalance rows even without binaries (:func:`~nowblock.milp.matrix.build_matrix`).
        ``n_window``: the candidates' window in slots instead of :attr:`n_binary_slots`.
        ``exact_draws``: useful currents exactly what cars draw, in slot order (more binaries).
        """
        from nowblock.milp.matrix import build_matrix

        cand = self.binary_candidates
        if n_window is not None and n_window != self.n_binary_slots:
            car, slot = self.cells
            cand = (slot < n_window) & (self.min_current_a[car] > 0)
        if relax:
            mask = np.zeros(len(self.cells[0]), dtype=bool)
        elif binary_mask is None:
            mask = cand
        else:
            mask = np.asarray(binary_mask, dtype=bool) & cand
        return build_matrix(self, mask, split_useful=split_useful, exact_draws=exact_draws)

    def current_from_cells(self, values: np.ndarray) -> np.ndarray:
        """Dense (n, T) current [A] from the ``current_a`` column values."""
        out = np.zeros((self.n_cars, self.n_slots))
        car, slot = self.cells
        out[car, slot] = values
        return out


def phase_name(row: int) -> tuple[int, str]:
    """(fuse index, phase name) of fuse-phase row ``row``."""
    return row // 3, PHASES[row % 3]
