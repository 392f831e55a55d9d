"""The optimizer's answer: a :class:`Schedule`, in pilot steps, re-checked after rounding.

:func:`to_schedule` turns a solver result into setpoints a charger accepts: clipped to
[0, upper], rounded down to ``current_step_a`` with "0 or >= min", then (in the slots with
binaries) topped up one step at a time where every limit still has room, and finally re-checked against every fuse-phase and
unbalance row; a slot that fails is repaired by :func:`nowblock.seam.make_safe`. So
rounding never creates an overload. :func:`fallback_schedule` is what a block gets when the
solver finds nothing: a baseline heuristic played forward slot by slot.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nowblock.baselines import baseline_policy
from nowblock.seam import BlockSnapshot, make_safe
from nowblock.milp.formulation import Formulation
from nowblock.block.site import PHASES

_TOL_A = 1e-6
_DEFERRED = ("current_a", "power_kw", "binding", "energy_kwh", "shortfall_kwh")


@dataclass(frozen=True, eq=False)
class Schedule:
    """Setpoints for every plugged-in session over the horizon.

    - ``current_a`` [A per phase] and ``power_kw`` [kW]: DataFrames, index slot start (UTC),
      columns session_id; in whole pilot steps, 0 or within [min, max].
    - ``status``: ``"optimal"`` (within ``mip_rel_gap``), ``"time_limit"`` (the solver's best
      incumbent when the time limit hit), or ``"fallback"`` (the solver found nothing or failed;
      the schedule comes from the baseline heuristic named in ``detail``).
    - ``objective`` [EUR] of the solver's incumbent, ``bound`` [EUR] its proven lower bound,
      ``mip_gap`` (relative), ``solve_seconds`` (inside HiGHS, by its own clock),
      ``build_seconds`` (building and passing the model), ``backend`` ("highs" or "pyomo");
      on the fast path ``extra["run_call_seconds"]`` is the wall time of HiGHS's ``run()`` calls.
    - ``binding``: one row per (limit, slot) with no room for one more pilot step: columns
      ``time``, ``limit`` ("fuse" or "unbalance"), ``fuse_id``, ``phase``, ``load_a``,
      ``limit_a``, ``slack_a``; tells an operator why a car got less.
    - ``energy_kwh`` / ``shortfall_kwh`` [kWh] per session over the horizon (after rounding).
    - ``repaired_slots``: slots that needed the safety net after rounding (0 in normal use).

    A schedule from the solver builds its frames (``current_a``, ``power_kw``, ``binding``,
    ``energy_kwh``, ``shortfall_kwh``) on first access: a receding-horizon step reads one slot.
    """

    current_a: pd.DataFrame
    power_kw: pd.DataFrame
    status: str
    objective: float
    bound: float
    mip_gap: float
    solve_seconds: float
    build_seconds: float
    binding: pd.DataFrame
    energy_kwh: pd.Series
    shortfall_kwh: pd.Series
    backend: str = "highs"
    detail: str = ""
    repaired_slots: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def _deferred(cls, build, arrays: dict, **fields) -> "Schedule":
        """A schedule whose frames (``current_a``, ``power_kw``, ``binding``, ``energy_kwh``,
        ``shortfall_kwh``) are built by ``build(name, arrays)`` on first access.

        The receding-horizon loop reads one slot of the plan; building the frames and the
        binding report every step was about a tenth of a 50-car step (measured). ``arrays``
        holds the dense results (``form``, ``x`` (n, T) [A], ``energy`` [kWh] per car, ``load``
        ``G @ x`` or None) for in-package fast paths.
        """
        self = object.__new__(cls)
        d = self.__dict__  # frozen: fill the instance dict directly, as object.__setattr__ would
        for f in _eager_fields(cls):
            if f.name in fields:
                d[f.name] = fields[f.name]
            elif f.default_factory is not dataclasses.MISSING:
                d[f.name] = f.default_factory()
            elif f.default is not dataclasses.MISSING:
                d[f.name] = f.default
            else:
                raise TypeError(f"Schedule: missing field {f.name!r}")
        d["_pending"] = (build, arrays)
        return self

    def __getattr__(self, name: str):
        # Only reached for attributes not set yet: the deferred frames.
        pending = self.__dict__.get("_pending")
        if name in _DEFERRED and pending is not None:
            value = pending[0](name, pending[1])
            object.__setattr__(self, name, value)
            return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict:
        for name in _DEFERRED:
            getattr(self, name)
        state = dict(self.__dict__)
        state.pop("_pending", None)
        return state

    @property
    def times(self) -> pd.DatetimeIndex:
        """Slot starts (UTC)."""
        return self.current_a.index

    def first_slot(self) -> pd.Series:
        """Setpoints [A] of the first slot, by session_id (what a receding-horizon loop applies)."""
        pending = self.__dict__.get("_pending")
        if "current_a" not in self.__dict__ and pending is not None:
            x = pending[1]["x"]
            if x.shape[1] == 0:
                return pd.Series(dtype=float, name="current_a")
            return pd.Series(x[:, 0], index=_session_index(pending[1]), name="current_a")
        if len(self.current_a) == 0:
            return pd.Series(dtype=float, name="current_a")
        return self.current_a.iloc[0].rename("current_a")

    def __repr__(self) -> str:
        return (f"Schedule({self.current_a.shape[1]} sessions x {len(self.current_a)} slots, status={self.status!r}, "
                f"objective={self.objective:.4g} EUR, gap={self.mip_gap:.2%}, solve={self.solve_seconds:.3f} s)")


@functools.cache
def _eager_fields(cls) -> tuple:
    """The schedule's fields that are not deferred frames."""
    return tuple(f for f in dataclasses.fields(cls) if f.name not in _DEFERRED)


# ---- rounding and the re-check ----------------------------------------------------------
def limit_rows(form: Formulation) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
    """All limits as ``G @ current_a[:, t] <= H[:, t]``: G (rows, n), H (rows, T), row labels.

    Rows are every fuse phase (headroom after the other load) and, if the site has one, the
    root's pairwise unbalance limit. Labels are (kind, fuse id, phase). Computed once per
    formulation (repair, rounding and the binding report all need them).
    """
    g, h = _limit_gh(form)
    labels = form.__dict__.get("_limit_labels")
    if labels is None:  # only the binding report reads them
        site = form.site
        labels = [("fuse", site.fuse_ids[r // 3], PHASES[r % 3]) for r in range(form.incidence.shape[0])]
        if len(g) > len(labels):
            labels += [("unbalance", site.fuse_ids[0], f"{PHASES[p]}-{PHASES[q]}") for p, q in _PQ]
        form.__dict__["_limit_labels"] = labels
    return g, h, list(labels)


_PQ = [(p, q) for p in range(3) for q in range(3) if p != q]  # ordered phase pairs of the unbalance rows


def _limit_gh(form: Formulation) -> tuple[np.ndarray, np.ndarray]:
    """G and H of :func:`limit_rows`, cached on the formulation."""
    cached = form.__dict__.get("_limit_rows")
    if cached is None:
        g, h = form.incidence, form.headroom_a
        if form.site.max_unbalance_a is not None and form.n_cars:
            g = np.vstack([g, np.array([g[p] - g[q] for p, q in _PQ])])
            h = np.vstack([h, np.full((len(_PQ), form.n_slots), float(form.site.max_unbalance_a))])
        cached = form.__dict__["_limit_rows"] = (g, h)
    return cached


def round_to_steps(form: Formulation, raw_a: np.ndarray) -> tuple[np.ndarray, int]:
    """Round a dense (n, T) plan [A] to pilot steps without breaking any limit.

    Returns the rounded plan and the number of slots the safety net had to repair.
    """
    x, repaired, _ = _round(form, raw_a)
    return x, repaired


def _round(form: Formulation, raw_a: np.ndarray) -> tuple[np.ndarray, int, np.ndarray | None]:
    """:func:`round_to_steps` plus the load ``G @ x`` of every limit row and slot when the
    re-check had to repair (None otherwise: the binding report computes it if it is read)."""
    from nowblock.milp.kernels import round_plan

    g, h = _limit_gh(form)
    # Top up: give one more step back to cars that lost the most, as long as every row has room.
    # Only in the slots with binaries (what a receding-horizon loop applies); later slots are
    # an LP-relaxed plan (measured). Then every row of every slot is re-checked.
    x, bad_slot = round_plan(np.asarray(raw_a, dtype=float), form.upper_a, form.min_current_a, g, h,
                             float(form.options.current_step_a), form.n_binary_slots, _TOL_A)
    bad = np.nonzero(bad_slot)[0]
    if not len(bad):
        return x, 0, None
    # Repair failing slots with the shared safety net.
    pos = pd.Index(form.session_ids)
    for t in bad:
        snap = slot_snapshot(form, int(t), np.zeros(form.n_cars))
        idx = pos.get_indexer(snap.cars.index)
        safe = make_safe(snap, pd.Series(x[idx, t], index=snap.cars.index))
        x[:, t] = 0.0
        x[idx, t] = safe.to_numpy(float)
    return x, len(bad), g @ x


def binding_report(form: Formulation, current_a: np.ndarray, load_a: np.ndarray | None = None) -> pd.DataFrame:
    """Limits (fuse phase or unbalance, slot) with less than one pilot step of room left
    (``load_a``: ``G @ current_a`` if the caller has it)."""
    g, h, labels = limit_rows(form)
    load = g @ current_a if load_a is None else load_a
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


def to_schedule(form: Formulation, current_raw_a: np.ndarray, *, status: str, objective: float, bound: float,
                mip_gap: float, solve_seconds: float, build_seconds: float, backend: str, detail: str = "",
                extra: dict | None = None) -> Schedule:
    """Round a dense (n, T) plan [A] and wrap it with its solver report as a :class:`Schedule`
    (its frames and binding report are built on first access; ``extra`` becomes its ``extra``)."""
    x, repaired, load = _round(form, current_raw_a)
    energy = (x * form.energy_per_a_kwh).sum(axis=1)
    arrays = {"form": form, "x": x, "load": load, "energy": energy}
    return Schedule._deferred(
        _build_frame, arrays, status=status, objective=objective, bound=bound, mip_gap=mip_gap,
        solve_seconds=solve_seconds, build_seconds=build_seconds, backend=backend, detail=detail,
        repaired_slots=repaired, extra=dict(extra or {}),
    )


def _session_index(arrays: dict) -> pd.Index:
    """The schedule's session_id index, built once (a string index costs ~0.2 ms at 50 cars)."""
    if "ids" not in arrays:
        arrays["ids"] = pd.Index(arrays["form"].session_ids, name="session_id")
    return arrays["ids"]


def _build_frame(name: str, arrays: dict):
    """One of a schedule's deferred frames from its dense results (see :func:`to_schedule`)."""
    form, x = arrays["form"], arrays["x"]
    if name == "binding":
        return binding_report(form, x, arrays["load"])
    ids = _session_index(arrays)
    if name == "energy_kwh":
        return pd.Series(arrays["energy"], index=ids, name="energy_kwh")
    if name == "shortfall_kwh":
        return pd.Series(np.maximum(form.need_kwh - arrays["energy"], 0.0), index=ids, name="shortfall_kwh")
    times = pd.DatetimeIndex(form.times, name="time")
    if name == "current_a":
        return pd.DataFrame(x.T, index=times, columns=ids)
    return pd.DataFrame((x * form.kw_per_a[:, None]).T, index=times, columns=ids)  # power_kw


# ---- slot snapshots and the fallback ------------------------------------------------------
def slot_snapshot(form: Formulation, t: int, delivered_kwh: np.ndarray) -> BlockSnapshot:
    """A :class:`BlockSnapshot` of slot ``t`` as the formulation sees it (cars that can charge)."""
    step = pd.Timedelta(hours=float(form.slot_h[t]))
    last = form.n_slots - 1 - np.argmax(form.plugged[:, ::-1] > 0, axis=1)
    departure = form.times[last] + pd.to_timedelta(form.plugged[np.arange(form.n_cars), last] * form.slot_h[last], unit="h")
    cars = pd.DataFrame({
        "charge_point_id": np.array(form.site.charge_point_ids, dtype=object)[form.cp_index],
        "cp_index": form.cp_index,
        "phases": form.phases,
        "min_current_a": form.min_current_a,
        "max_current_a": np.where(form.upper_a[:, t] >= form.min_current_a - _TOL_A, form.upper_a[:, t], 0.0),
        "arrival": form.times[0],
        "departure": departure,
        "energy_requested_kwh": form.need_kwh,
        "energy_delivered_kwh": delivered_kwh,
        "measured_current_a": np.nan,
        "offered_current_a": 0.0,
        "priority": form.priority,
        "needs_known": True,
    }, index=pd.Index(form.session_ids, name="session_id"))
    cars = cars[form.plugged[:, t] > 0]
    base = pd.Series(form.base_kw[t:], index=form.times[t:], name="kw")
    prices = pd.Series(form.price_eur_per_kwh[t:], index=form.times[t:], name="eur_per_kwh")
    return BlockSnapshot(time=form.times[t], site=form.site, step=step, cars=cars, base_load_kw=base,
                         prices_eur_per_kwh=prices, current_step_a=form.options.current_step_a)


def fallback_schedule(form: Formulation, *, reason: str, solve_seconds: float = 0.0,
                      build_seconds: float = 0.0, backend: str = "highs") -> Schedule:
    """Play the baseline heuristic forward slot by slot; every slot passes make_safe."""
    policy = baseline_policy(form.options.fallback)
    name = policy.name
    x = np.zeros((form.n_cars, form.n_slots))
    delivered = np.zeros(form.n_cars)
    pos = pd.Index(form.session_ids)
    for t in range(form.n_slots):
        snap = slot_snapshot(form, t, delivered)
        if len(snap.cars) == 0:
            continue
        proposal = policy.schedule(snap)
        safe = make_safe(snap, proposal)
        idx = pos.get_indexer(safe.index)
        x[idx, t] = safe.to_numpy(float)
        delivered += x[:, t] * form.energy_per_a_kwh[:, t]
    return to_schedule(form, x, status="fallback", objective=float("nan"), bound=float("nan"),
                       mip_gap=float("inf"), solve_seconds=solve_seconds, build_seconds=build_seconds,
                       backend=backend, detail=f"{name} ({reason})")
