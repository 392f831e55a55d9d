"""The most energy any policy can deliver in this simulator: a perfect-foresight LP of its physics.

:func:`nowblock.milp.solve_offline` is the optimizer's own yardstick: it knows every session in
advance, but it plans 0-or-at-least-the-minimum setpoints on its own slot grid and ignores the
battery. No policy in the simulator can reach it: a car near full takes less than it is offered
(:class:`~nowblock.sim.battery.TaperBattery`), and the simulator serves a car only in the whole
control steps between its arrival (rounded up to the step grid) and its departure (rounded
down). On the residential week of docs/bench_quality.md those two take 0.58 points of demand
met even from uncontrolled charging on a connection that never binds.

:func:`simulation_bound` is the tight version for closed-loop comparisons: the same LP as the
simulator's own step (:class:`nowblock.sim.block.SimulatedBlock`), relaxed only where a policy
has a choice. What it keeps and what it relaxes is in its docstring's Notes (so that the API
reference, which renders the function and not this module, shows it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nowblock.sim.battery import TaperBattery

__all__ = ["SimulationBound", "simulation_bound"]


@dataclass(frozen=True)
class SimulationBound:
    """The result of :func:`simulation_bound`.

    Attributes
    ----------
    energy_kwh : pandas.Series
        Energy [kWh] per session_id in the bound's best plan (at most its request).
    energy_requested_kwh : float
        Total energy [kWh] the sessions in the window requested.
    demand_met : float
        ``energy_kwh.sum() / energy_requested_kwh`` [0..1]: no policy's demand met in
        :func:`nowblock.simulate` (zero overload, same battery and step) is above it.
    status : str
        HiGHS's model status ("Optimal" when the bound is proven).
    seconds : float
        Wall time of the build and solve [s].
    """

    energy_kwh: pd.Series
    energy_requested_kwh: float
    demand_met: float
    status: str
    seconds: float


def simulation_bound(scenario, step="5min", *, battery: TaperBattery | None = None, start=None,
                     end=None, current_step_a: float | None = None) -> SimulationBound:
    """The most energy [kWh] any zero-overload policy can deliver in :func:`nowblock.simulate`.

    Parameters
    ----------
    scenario : nowblock.Scenario
        Site, sessions and other load, as given to :func:`nowblock.simulate`.
    step : str or pandas.Timedelta
        The simulation's control step (default 5 min, as :func:`nowblock.simulate`).
    battery : TaperBattery, optional
        The cars' battery model of the simulation (default: :class:`TaperBattery`'s defaults,
        as :func:`nowblock.simulate`).
    start, end : pandas.Timestamp, optional
        The simulated window (default: the first arrival floored and the last departure ceiled
        to ``step``, as :func:`nowblock.simulate`).
    current_step_a : float, optional
        [A] Pilot step of the offers. None (default): currents are continuous, a bound for every
        zero-overload policy. Given: every fuse row's room and every car's cap are floored to
        whole steps, the bound for policies whose *offers* keep every fuse row in whole pilot
        steps, as :func:`nowblock.seam.make_safe` makes every controlled policy's. A car draws at
        most its offer, so the sum of its draws on a row is at most the sum of whole-step offers
        within the room: on a connection of 38.4 A a phase, 38 A. On a congested block that
        is about a percent of the room.

    Returns
    -------
    SimulationBound
        Energy per session [kWh] and the share of the request met.

    Notes
    -----
    A linear program on the simulator's step grid: the LP of the simulator's own step
    (:class:`nowblock.sim.block.SimulatedBlock`) over the whole window, relaxed only where a
    policy has a choice. Per session and step, the drawn current is a variable with

    - ``0 <= drawn <= min(car maximum, site cap) x draw_fraction`` in the steps the simulator
      serves the car (no minimum current: relaxing it keeps the bound valid);
    - the taper at the step's start: ``drawn <= max x accepted_fraction(soc)``, where the state
      of charge grows with the energy delivered before the step. The battery's accepted fraction
      is ``min(1, 1 - slope x (soc - taper_soc))`` on the states of charge a session reaches (its
      target is at most 1), a minimum of two linear functions, so it is two linear rows: the LP
      holds every trajectory the simulator can produce;
    - the energy ``sum(drawn x phases x voltage x step)`` at most the request;
    - every fuse phase at every step: the cars' drawn currents plus the other load (its maximum
      in the step, on the grid connection) within the rating: the simulator's overload metric
      is 0.

    The objective is the total energy delivered. Every policy whose run has zero overload
    delivers at most this (up to the LP's tolerance), whatever it knows; the unbalance limit is
    left out (a policy keeps it on what it offers, and a car that draws less can unbalance the
    drawn currents), which only loosens the bound. It is exact when nothing binds: on a
    connection that never limits, it equals what uncontrolled charging delivers in the
    simulator.
    """
    import time

    t0 = time.perf_counter()
    step = pd.Timedelta(step)
    battery = battery or TaperBattery()
    sess = scenario.sessions
    t_start = pd.Timestamp(start) if start is not None else sess["arrival"].min().floor(step)
    t_end = pd.Timestamp(end) if end is not None else sess["departure"].max().ceil(step)
    if current_step_a is not None and not current_step_a > 0:
        raise ValueError(f"current_step_a: must be > 0 or None, got {current_step_a}")
    lp = _BoundLP(scenario, step, battery, t_start, t_end, current_step_a)
    energy, status = lp.solve()
    requested = float(lp.req.sum())
    met = float(energy.sum() / requested) if requested > 0 else 1.0
    return SimulationBound(energy_kwh=pd.Series(energy, index=pd.Index(lp.sid, name="session_id"), name="energy_kwh"),
                           energy_requested_kwh=requested, demand_met=met, status=status,
                           seconds=time.perf_counter() - t0)


class _BoundLP:
    """The bound's LP in HiGHS's column-wise standard form (see :func:`simulation_bound`).

    Columns: the drawn current [A] of every served (session, step) cell, then per cell the
    energy [kWh] its session got before that step. Rows: per cell the energy recursion
    (equality) and the taper, per session the request, per fuse phase and step the rating.
    """

    def __init__(self, scenario, step: pd.Timedelta, battery: TaperBattery, start: pd.Timestamp,
                 end: pd.Timestamp, current_step_a: float | None = None) -> None:
        from nowblock.sim.block import SimulatedBlock

        # The simulator's own arrays (sessions kept, step grid, car maxima, batteries, caps,
        # incidence, in-step base load maxima), so the bound cannot drift from what it bounds.
        blk = SimulatedBlock(scenario, step=step, horizon=step, start=start, end=end, battery=battery)
        site, n_t = blk.site, blk.n_t
        self.sid, self.req = blk.sid, blk.req
        n_cells = np.maximum(blk.k_out - blk.k_in, 0)
        car = np.repeat(np.arange(len(blk.req)), n_cells)
        first = (np.cumsum(n_cells) - n_cells).astype(np.int64)
        slot = (np.arange(len(car)) - np.repeat(first, n_cells) + np.repeat(blk.k_in, n_cells)).astype(np.int64)
        upper = np.minimum(blk.car_max[car], blk.caps[slot, blk.cpi[car]] if len(car) else np.zeros(0))
        floor = (lambda a: np.floor(a / current_step_a + 1e-9) * current_step_a) if current_step_a else (lambda a: a)
        upper = floor(upper)
        self.car, self.slot, self.n_cars, self.n_cells = car, slot, len(blk.req), len(car)
        self.first, self.count = first, n_cells
        self.upper = np.maximum(upper * blk.draw_frac[car], 0.0)
        self.kwh_per_a = (blk.kw_per_a * blk.dt_h)[car]
        # Taper: drawn <= max * (1 - slope * (soc0 + before / cap - taper_soc)).
        if battery.taper_soc < 1.0:
            slope = (1.0 - battery.floor_fraction) / (1.0 - battery.taper_soc)
            self.taper_coef = (blk.car_max * slope / blk.cap_kwh)[car]
            self.taper_rhs = (blk.car_max * (1.0 - slope * (blk.soc - battery.taper_soc)))[car]
        else:
            self.taper_coef = self.taper_rhs = None
        # Fuse rows: what the grid connection has left after the other load's in-step maximum.
        limits = np.tile(site.limits_a.reshape(-1), (n_t, 1))
        r0 = blk.root
        limits[:, 3 * r0 : 3 * r0 + 3] -= site.base_load_phase_current_a(blk.base_max[:n_t])
        self.inc, self.room = blk.inc, floor(np.maximum(limits, 0.0))  # (n_t, F * 3)

    def solve(self) -> tuple[np.ndarray, str]:
        """Energy [kWh] per session in the optimal plan, and HiGHS's model status."""
        import highspy

        from nowblock.milp.highs_fast import new_solver

        n, nc = self.n_cars, self.n_cells
        if nc == 0:
            return np.zeros(n), "Optimal"
        rows, cols, vals, lo, hi = [], [], [], [], []
        r = 0
        cell = np.arange(nc)
        before = nc + cell  # column of "energy before this step"
        # Energy recursion: before[c] - before[c - 1] - kwh_per_a[c - 1] * drawn[c - 1] = 0 (the
        # session's first cell has nothing before it: its column is fixed to 0).
        nxt = cell[np.isin(cell, self.first, invert=True)]
        k = len(nxt)
        rid = r + np.arange(k)
        rows += [rid, rid, rid]
        cols += [before[nxt], before[nxt - 1], nxt - 1]
        vals += [np.ones(k), -np.ones(k), -self.kwh_per_a[nxt - 1]]
        lo.append(np.zeros(k))
        hi.append(np.zeros(k))
        r += k
        if self.taper_coef is not None:  # drawn + coef * before <= rhs, only where it can bind
            can = self.taper_rhs < self.upper + self.taper_coef * (self.req[self.car])
            idx = cell[can]
            k = len(idx)
            rid = r + np.arange(k)
            rows += [rid, rid]
            cols += [idx, before[idx]]
            vals += [np.ones(k), self.taper_coef[idx]]
            lo.append(np.full(k, -np.inf))
            hi.append(self.taper_rhs[idx])
            r += k
        # Request: sum of the session's energy <= its request.
        rid = r + self.car
        rows.append(rid)
        cols.append(cell)
        vals.append(self.kwh_per_a)
        lo.append(np.full(n, -np.inf))
        hi.append(self.req)
        r += n
        # Fuse phases: only the (row, step) pairs whose cars could together exceed the room.
        inc_cells = self.inc[:, self.car]  # (F * 3, cells)
        fr, fc = np.nonzero(inc_cells)
        key = fr * (self.room.shape[0] or 1) + self.slot[fc]
        most = np.bincount(key, weights=inc_cells[fr, fc] * self.upper[fc], minlength=self.inc.shape[0] * max(self.room.shape[0], 1))
        room = self.room.T.reshape(-1)  # (F * 3) x T, row-major by fuse phase
        binding = np.nonzero(most > room + 1e-9)[0]
        if len(binding):
            pos = np.full(len(room), -1, dtype=np.int64)
            pos[binding] = r + np.arange(len(binding))
            use = pos[key] >= 0
            rows.append(pos[key[use]])
            cols.append(fc[use])
            vals.append(inc_cells[fr[use], fc[use]])
            lo.append(np.full(len(binding), -np.inf))
            hi.append(room[binding])
            r += len(binding)
        rows_a, cols_a, vals_a = (np.concatenate(x) for x in (rows, cols, vals))
        order = np.lexsort((rows_a, cols_a))
        n_col = 2 * nc
        a_start = np.searchsorted(cols_a[order], np.arange(n_col + 1)).astype(np.int32)
        col_hi = np.concatenate([self.upper, np.full(nc, np.inf)])
        col_hi[before[self.first[self.count > 0]]] = 0.0
        cost = np.concatenate([-self.kwh_per_a, np.zeros(nc)])  # maximise the energy
        h = new_solver({"presolve": "on"})
        h.passModel(n_col, r, len(order), int(highspy.MatrixFormat.kColwise), int(highspy.ObjSense.kMinimize), 0.0,
                    cost, np.zeros(n_col), col_hi, np.concatenate(lo), np.concatenate(hi), a_start,
                    rows_a[order].astype(np.int32), vals_a[order], np.zeros(n_col, dtype=np.int32))
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        x = np.asarray(h.getSolution().col_value, dtype=float)[:nc]
        energy = np.bincount(self.car, weights=x * self.kwh_per_a, minlength=n)
        return np.minimum(energy, self.req), status
