"""The optimizer's answer: a :class:`Schedule`, a real plan with the report of how it was found.

A schedule holds the dense plan (cars x slots [A], in pilot steps, "0 or >= min" in every slot,
every limit kept: :func:`nowblock.milp.rounding.make_plan` made it) and builds its frames
(``current_a``, ``power_kw``, ``binding``, ``energy_kwh``, ``shortfall_kwh``) on first read, as
cached properties: a receding-horizon step reads one slot. :func:`fallback_schedule` is what a
block gets when the solver raises: a baseline heuristic played forward slot by slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from nowblock.baselines import baseline_policy
from nowblock.milp.adapters import slot_snapshot
from nowblock.milp.formulation import Formulation, rows_times
from nowblock.milp.rounding import Plan, round_to_steps
from nowblock.seam import make_safe

__all__ = ["Schedule", "binding_report", "fallback_schedule", "limit_rows", "round_to_steps", "slot_snapshot"]

_TOL_A = 1e-6


@dataclass(frozen=True, eq=False)
class Schedule:
    """Setpoints for every plugged-in session over the horizon, and how they were found.

    Attributes
    ----------
    form : Formulation
        The problem the plan answers.
    plan_a : ndarray
        (n, T) setpoints [A per phase] in the order of ``form.session_ids``: whole pilot steps,
        0 or within [min, max], every fuse phase and the unbalance limit kept in every slot.
    status : str
        ``"optimal"`` (the plan's objective within ``mip_rel_gap`` of the proven bound),
        ``"time_limit"`` (the time limit stopped a stage; the best plan found is returned),
        ``"suboptimal"`` (every stage finished, the gap is above ``mip_rel_gap``) or
        ``"fallback"`` (the solver failed or found nothing: a heuristic plan, ``detail`` says
        which and why).
    method : str
        Which plan was returned: ``"lp+rounding"`` (the LP's currents made real),
        ``"coarse lp+rounding"`` (the LP over merged slots), ``"lp without peak+rounding"`` and
        ``"mean-peak lp+rounding"`` (the LP without its peak term, and its mean-peak form: see
        :mod:`nowblock.milp.solve`), ``"least laxity under the critical peak"`` (a plan from
        scratch, least laxity first),
        any of these with ``"+polish"`` (rounded again while that lowered the objective, e.g.
        ``"lp+rounding+polish"``), ``"milp+rounding"``, ``"milp"`` (the MILP stage's own plan
        as found, when it passes every check), ``"warm start"`` (the previous plan, shifted and
        made real), ``"greedy"`` (no LP solution: the better by objective of two plans from
        scratch by :func:`~nowblock.milp.rounding.make_plan`, the one with no power cap, whose
        cars take their cheapest slots earliest deadline first, and, when the time left holds
        it, the one under the critical peak of the cars' needs, slot by slot least laxity first
        and then filled earliest deadline first, the cap raised while a car misses its need;
        with ``status="fallback"``), ``"none"``
        (nothing to plan, or the all-zero plan when no car's minimum fits its fuses) or
        ``"baseline"``.
    objective, bound, mip_gap : float
        The returned plan's objective [EUR] (every term computed from the plan itself), the best
        proven lower bound [EUR] (NaN if none) and their relative distance (inf without a bound).
    solve_seconds, build_seconds, seconds : float
        Time inside HiGHS (its own clock), building and passing models, and the whole call [s].
    backend, detail : str
    repaired_slots : int
        Slots the safety net had to repair after the rounding (0 in normal use).
    extra : dict
        Per-stage figures (``stages``: name, seconds, objective, ...), ``run_call_seconds``.

    ``current_a`` and ``power_kw`` [kW] are DataFrames (slot start (UTC) x session_id);
    ``energy_kwh`` / ``shortfall_kwh`` [kWh] per session over the horizon; ``binding`` one row
    per (limit, slot) with less than a pilot step of room (columns ``time``, ``limit``,
    ``fuse_id``, ``phase``, ``load_a``, ``limit_a``, ``slack_a``).
    """

    form: Formulation = field(repr=False)
    plan_a: np.ndarray = field(repr=False)
    status: str
    objective: float
    bound: float
    mip_gap: float
    solve_seconds: float
    build_seconds: float
    backend: str = "highs"
    detail: str = ""
    repaired_slots: int = 0
    method: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict, compare=False)

    # ---- per car, in the formulation's order ------------------------------------------------
    @cached_property
    def energy_per_car_kwh(self) -> np.ndarray:
        """Energy [kWh] the plan gives each car, in the order of ``form.session_ids``."""
        return (self.plan_a * self.form.energy_per_a_kwh).sum(axis=1)

    @cached_property
    def shortfall_per_car_kwh(self) -> np.ndarray:
        """Need not met at departure as far as the horizon can tell [kWh] per car, in the order
        of ``form.session_ids``: a car leaving after the horizon's end counts as short only what
        it could not get after it either (``form.due_kwh``) at its maximum current."""
        from nowblock.milp.matrix import split_shortfall

        short = np.maximum(np.maximum(self.form.need_kwh, 0.0) - self.energy_per_car_kwh, 0.0)
        return split_shortfall(self.form, short)[0]

    # ---- frames, built on first read -------------------------------------------------------
    @cached_property
    def session_index(self) -> pd.Index:
        """The session_id index of every frame."""
        return pd.Index(self.form.session_ids, name="session_id")

    @property
    def times(self) -> pd.DatetimeIndex:
        """Slot starts (UTC)."""
        return self.form.times

    @cached_property
    def current_a(self) -> pd.DataFrame:
        """Setpoints [A per phase], slot start (UTC) x session_id."""
        return pd.DataFrame(self.plan_a.T, index=pd.DatetimeIndex(self.form.times, name="time"),
                            columns=self.session_index)

    @cached_property
    def power_kw(self) -> pd.DataFrame:
        """Charging power [kW] while plugged in, slot start (UTC) x session_id.

        In a slot a car covers only partly (it arrives or leaves inside it) this is its power
        during the part it is plugged in, not the slot's mean: its energy there is this power
        times the plugged-in hours (as ``energy_kwh`` counts it), not times the slot's length.
        """
        return pd.DataFrame((self.plan_a * self.form.kw_per_a[:, None]).T,
                            index=pd.DatetimeIndex(self.form.times, name="time"), columns=self.session_index)

    @cached_property
    def energy_kwh(self) -> pd.Series:
        """Energy [kWh] per session over the horizon."""
        return pd.Series(self.energy_per_car_kwh, index=self.session_index, name="energy_kwh")

    @cached_property
    def shortfall_kwh(self) -> pd.Series:
        """Need not met by the plan [kWh] per session, at departure as far as the horizon can
        tell (see :attr:`shortfall_per_car_kwh`)."""
        return pd.Series(self.shortfall_per_car_kwh, index=self.session_index, name="shortfall_kwh")

    @cached_property
    def binding(self) -> pd.DataFrame:
        """Limits (fuse phase or unbalance, slot) with less than one pilot step of room left."""
        return binding_report(self.form, self.plan_a)

    def first_slot(self) -> pd.Series:
        """Setpoints [A] of the first slot, by session_id (what a receding-horizon loop applies)."""
        if self.plan_a.shape[1] == 0:
            return pd.Series(dtype=float, name="current_a")
        return pd.Series(self.plan_a[:, 0], index=self.session_index, name="current_a")

    def __repr__(self) -> str:
        n, T = self.plan_a.shape
        return (f"Schedule({n} sessions x {T} slots, status={self.status!r}, method={self.method!r}, "
                f"objective={self.objective:.4g} EUR, gap={self.mip_gap:.2%}, {self.seconds:.3f} s)")


def limit_rows(form: Formulation) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
    """All limits as ``G @ current_a[:, t] <= H[:, t]``: G (rows, n), H (rows, T) [A], row labels
    (kind, fuse id, phase); :attr:`Formulation.limits` as a tuple."""
    lim = form.limits
    return lim.g, lim.h, lim.labels


def binding_report(form: Formulation, current_a: np.ndarray, load_a: np.ndarray | None = None) -> pd.DataFrame:
    """Limits (fuse phase or unbalance, slot) with less than one pilot step of room left
    (``load_a``: ``G @ current_a`` if the caller has it)."""
    g, h, labels = limit_rows(form)
    load = rows_times(g, current_a) if load_a is None else load_a
    slack = h - load
    r, t = np.nonzero(slack < form.options.current_step_a - _TOL_A)
    # Only rows some charging car loads count (checked for the few tight pairs, not all rows x slots).
    if len(r):
        used = np.einsum("pn,pn->p", (np.abs(g[r]) > 0).astype(float), (current_a[:, t].T > 0).astype(float)) > 0
        r, t = r[used], t[used]
    lab = np.array(labels, dtype=object).reshape(-1, 3)
    return pd.DataFrame({
        "time": form.times[t], "limit": lab[r, 0] if len(r) else [], "fuse_id": lab[r, 1] if len(r) else [],
        "phase": lab[r, 2] if len(r) else [], "load_a": load[r, t], "limit_a": h[r, t], "slack_a": slack[r, t],
    })


def fallback_schedule(form: Formulation, *, reason: str, solve_seconds: float = 0.0, build_seconds: float = 0.0,
                      backend: str = "highs", seconds: float = 0.0) -> Schedule:
    """Play the baseline heuristic ``options.fallback`` forward slot by slot; every slot passes
    make_safe, then the plan is put in pilot steps (:func:`round_to_steps`)."""
    from nowblock.milp.matrix import plan_objective

    policy = baseline_policy(form.options.fallback)
    x = np.zeros((form.n_cars, form.n_slots))
    delivered = np.zeros(form.n_cars)
    pos = pd.Index(form.session_ids)
    for t in range(form.n_slots):
        snap = slot_snapshot(form, t, delivered)
        if len(snap.cars) == 0:
            continue
        safe = make_safe(snap, policy.schedule(snap))
        idx = pos.get_indexer(safe.index)
        x[idx, t] = safe.to_numpy(float)
        delivered += x[:, t] * form.energy_per_a_kwh[:, t]
    plan, repaired = round_to_steps(form, x)
    objective = plan_objective(form, form.matrix(relax=True), plan) if len(form.cells[0]) else 0.0
    return Schedule(form=form, plan_a=plan, status="fallback", objective=objective, bound=float("nan"),
                    mip_gap=float("inf"), solve_seconds=solve_seconds, build_seconds=build_seconds, backend=backend,
                    detail=f"{policy.name} ({reason})", repaired_slots=repaired, method="baseline", seconds=seconds)


def plan_schedule(form: Formulation, plan: Plan, **report) -> Schedule:
    """A :class:`Schedule` of a real :class:`~nowblock.milp.rounding.Plan` with its report
    (the other fields of :class:`Schedule`)."""
    return Schedule(form=form, plan_a=plan.current_a, repaired_slots=plan.repaired_slots, **report)
