"""The time-stepped simulator: a policy against a scenario, one control step at a time.

Each step of length ``step`` (5 minutes by default):

1. Cars whose plug-in window covers the whole step are plugged in: a session is in the
   snapshot for the steps that start at or after its arrival and end at or before its
   departure (arrival rounded up and departure rounded down to the step grid). So a stay
   that covers no whole step gets no step at all: every stay shorter than one step, and a
   longer one across a step boundary (10:02 to 10:08 with 5 minute steps). It is never
   plugged in and gets nothing (``steps_plugged`` 0 in ``sessions``), but its request counts
   in ``energy_requested_kwh`` and ``demand_met``; a shorter ``step`` simulates it.
2. The simulated block reports what a central system would see
   (:class:`~nowblock.sim.block.SimulatedBlock`): the plugged-in cars with the current each
   drew in the previous step (the measurement), the limit in force, the energy so far and
   the needs if known; the base load [kW] from now over the horizon; prices likewise.
3. The live loop's control step (:class:`~nowblock.loop.step.ControlStep`) turns that into
   the policy's snapshot (estimating unknown needs, lowering the allocation ceiling of a car
   that draws less than offered), calls the policy (timed: ``solve_seconds_median``; on an
   exception the ``fallback`` answers) and passes the answer through the safety net and the
   hysteresis.
4. Each car draws ``min(offered, its own maximum) x draw_fraction``, no more than its battery
   accepts (:class:`~nowblock.sim.battery.TaperBattery`) and no more than it still wants.
   Its energy grows by ``drawn current x phases x voltage x step``: the delivered energy is
   the sum of drawn power times time by construction.
5. A meter wake-up, as live. A step that holds a new session's over-draw reserve
   (:mod:`nowblock.loop.reserve`: counted at its limit + ``over_draw_a``, sent its share less
   that, until a reading shows what it draws over its limit) is split: the cars draw for its
   first ``meter_interval_s``, then each reserved car's reading is judged by the live rule
   (:func:`nowblock.loop.reserve.meter_departs`), and if one calls for a step, the control
   step (and its policy) runs again at that instant on the readings of that part, as the live
   controller's meter wake-up does; its offers hold for the rest of the step. Live, a new
   car's first reading comes within a meter interval and the reserve costs seconds; read only
   at each step's start, it cost every new session its whole first step at its share less
   2 A (0.27-0.47 points of demand met on the congested workplace week, session 39).

Base load within a step. A base load series finer than the step can peak inside it, so the
base load the policy sees for *now* is the **maximum** of the true base load within the
coming step, and the measured fuse currents (and ``max_overload_a``) use that maximum too:
they are the worst moment of the step. With perfect foresight (the default) the rest of the
horizon also uses each step's maximum, so plans stay safe. ``base_load_kw`` in the time
series and the energies use the step's time-weighted mean.

Metrics (all in :attr:`SimulationResult.metrics`):

* ``energy_requested_kwh``, ``energy_delivered_kwh``, ``demand_met`` (delivered / requested,
  1 when nothing was requested), ``unmet_kwh``.
* ``peak_kw``: the highest step-mean block power (base load plus charging) [kW].
* ``max_overload_a``: the worst excess [A] of any fuse phase over
  ``max(rating, base-load-only current)``, from simulated draws plus the base load's maximum
  within each step. A base load that alone exceeds the grid connection is not blamed on
  charging; charging on top of it is.
* ``max_unbalance_excess_a``: the worst excess [A] of the grid connection's measured charging
  current unbalance (most minus least loaded phase) over ``site.max_unbalance_a``. Policies
  bound the unbalance of what they *offer* (``offered_L1_a`` ... in the time series: the
  grid connection's charging current if every car drew its offer); a single-phase car that
  draws less than offered can still unbalance the measured load, which this metric reports.
* ``cost_eur``: the cost of the charging energy only: each step's charging energy times the
  step-mean price, summed [EUR]; 0 when the scenario has no prices. The base load's energy is
  not in it (its cost is the same for every policy).
* ``solve_seconds_median``: median wall time of ``policy.schedule`` over steps with cars (a
  policy with ``warm_up()``, like the MILP's numba kernels, is warmed up first; ``wall_seconds``
  includes that).
* extras: ``n_sessions``, ``n_steps``, ``car_hours``, ``min_fraction_delivered``,
  ``sessions_fully_met``, ``overload_steps``, ``solve_seconds_max``, ``fallback_steps``
  (steps the fallback answered: the policy raised or answered no setpoints for the cars; each
  step's reason in ``SimulationResult.fallbacks``), ``fallback_policy`` (the one that answered
  them, only when there were any), ``wall_seconds``, ``policy``.
"""

from __future__ import annotations

import logging
import sys
import time as _time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nowblock.block.sessions import OUTSIDE_TIMES, aware_time
from nowblock.loop import reserve
from nowblock.loop.calling import bypasses_safety
from nowblock.loop.closed_loop import LoopSettings
from nowblock.loop.needs import FallbackNeedsEstimator, NeedsEstimation  # noqa: F401 - FallbackNeedsEstimator's old home
from nowblock.loop.step import ControlStep
from nowblock.seam import Policy
from nowblock.sim.battery import TaperBattery
from nowblock.sim.block import SimulatedBlock

log = logging.getLogger(__name__)



@dataclass
class SimulationResult:
    """What a simulation produced.

    ``metrics`` (see the module docstring), ``timeseries`` (one row a step, indexed by the
    step's start time, UTC), ``sessions`` (one row a simulated session: requested and
    delivered energy [kWh], fraction delivered), ``draws`` (long format: time, session_id,
    current_a, power_kw for every step a car drew), ``solve_seconds`` (one entry per policy
    call), ``fallbacks`` (one row a step the policy did not answer: ``time`` (UTC), ``policy``
    (the one that answered instead) and ``reason``, e.g. ``failed: ValueError(...)``).
    """

    metrics: dict
    timeseries: pd.DataFrame
    sessions: pd.DataFrame
    draws: pd.DataFrame
    solve_seconds: np.ndarray
    policy: str
    step: pd.Timedelta
    site: object = field(repr=False, default=None)
    fallbacks: pd.DataFrame = field(repr=False, default_factory=lambda: pd.DataFrame(
        {"time": pd.DatetimeIndex([], tz="UTC"), "policy": [], "reason": []}))

    def to_dir(self, path, *, plot: bool = True, title: str | None = None):
        """Write the result as files into folder ``path`` (created if needed).

        ``timeseries.csv``, ``sessions.csv``, ``metrics.json`` and, with ``plot``, ``load.png``.
        Every time in them is in the site's time zone with its UTC offset
        (``2026-03-02T18:00:00+01:00``), the convention of every file nowblock writes.

        Parameters
        ----------
        path : str or os.PathLike
            The output folder.
        plot : bool
            Also draw ``load.png`` (:meth:`plot`).
        title : str, optional
            The plot's title.

        Returns
        -------
        list of pathlib.Path
            The files written.
        """
        import json
        from pathlib import Path

        from nowblock.block.sessions import iso_times

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tz = self.site.timezone if self.site is not None else None
        files = [out / "timeseries.csv", out / "sessions.csv", out / "metrics.json"]
        ts = self.timeseries.copy()
        ts.index = pd.Index(iso_times(ts.index, tz), name="time")
        ts.to_csv(files[0])
        sessions = self.sessions.copy()
        for col in ("arrival", "departure"):
            if col in sessions.columns:
                sessions[col] = iso_times(sessions[col], tz)
        sessions.to_csv(files[1], index=False)
        files[2].write_text(json.dumps(self.metrics, indent=2) + "\n")
        if plot:
            files.append(out / "load.png")
            self.plot(files[-1], title=title)
        return files

    def plot(self, path=None, *, title: str | None = None):
        """The current on every fuse phase against its limit, in the site's local time.

        See :func:`nowblock.sim.plot.plot_load`.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Write a PNG there.
        title : str, optional
            The figure's title (default: the policy).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from nowblock.sim.plot import local_timeseries, plot_load

        ts = local_timeseries(self.timeseries, self.site.timezone) if self.site is not None else self.timeseries
        grid = self.site.root.id if self.site is not None else None
        head = title or f"policy {self.policy}"
        return plot_load(ts, grid_fuse=grid, path=path, title=f"{head}: current per fuse phase against its limit")


#: The policy of ``simulate()`` and ``nowblock simulate`` when none is named: the MILP, the
#: policy ``nowblock serve`` runs live, so a simulation shows what the live block would do.
DEFAULT_POLICY = "milp"

#: Progress appears only on runs longer than this [s], then at most once per this interval.
PROGRESS_EVERY_S = 1.0


def _progress_printer(enabled: bool, total: int, label: str):
    """A callable(k) that prints ``label`` progress to stderr on long runs."""
    if not enabled:
        return lambda k: None
    t0 = _time.perf_counter()
    last = [t0]

    def show(k: int) -> None:
        now = _time.perf_counter()
        if now - last[0] >= PROGRESS_EVERY_S or (k == total and now - t0 >= PROGRESS_EVERY_S):
            last[0] = now
            pct = 100.0 * k / max(total, 1)
            eta = (now - t0) / max(k, 1) * (total - k)
            sys.stderr.write(f"\r{label}: {pct:5.1f}% ({k}/{total} steps, {eta:5.0f} s left)")
            if k == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return show


def simulate(
    scenario,
    policy: str | Policy = "milp",
    *,
    step="5min",
    horizon="24h",
    start=None,
    end=None,
    days: float | None = None,
    needs: str = "known",
    needs_estimator=None,
    base_load_forecaster=None,
    current_step_a: float = 1.0,
    battery: TaperBattery | None = None,
    progress: bool = False,
    policy_options: dict | None = None,
    fallback: str = "edf",
    loop_settings: LoopSettings | None = None,
    meter_interval_s: float = 60.0,
) -> SimulationResult:
    """Run ``policy`` against ``scenario`` and measure it.

    Every step runs the live loop's own control step (:class:`nowblock.loop.step.ControlStep`):
    the same needs estimation, allocation ceilings, reservations, safety net and hysteresis,
    fed by the simulated block (:class:`nowblock.sim.block.SimulatedBlock`) instead of OCPP.

    Parameters
    ----------
    scenario : nowblock.Scenario
        Site, sessions, base load [kW] and prices [EUR/kWh].
    policy : str or Policy
        A name for :func:`nowblock.policies.get_policy` or a policy object; default ``"milp"``
        (:data:`DEFAULT_POLICY`, the policy ``nowblock serve`` runs).
    step, horizon : str or Timedelta
        Control step and how far ahead base load and prices reach in each snapshot, each a
        positive duration with its unit (``"15min"``, ``"24h"``, a Timedelta); a bare number
        (``300``, ``"5"``) raises TypeError / ValueError naming the argument, as in
        :func:`nowblock.optimize`. A car is plugged in for the whole steps within its stay
        only: a stay that covers no whole step (one shorter than ``step``) gets nothing, its
        request still counted.
    start, end : timestamp, optional
        Simulated window, timezone-aware (or ISO 8601 text with a UTC offset; a time without
        one raises ValueError); by default from the first arrival to the last
        departure, on the step grid. An end off the grid from ``start`` is simulated to the end
        of the step that holds it (30 minutes past it for a Lord Howe week of 1-hour steps,
        where the clock moves by half an hour). Sessions overlapping the window take part (a car
        already plugged in at ``start`` arrives empty-handed then); their whole request
        counts in ``energy_requested_kwh``.
    days : float, optional
        Simulate ``days`` calendar days from ``start`` in the site's time zone instead of
        giving ``end`` (both at once raise ValueError): a week from Monday 00:00 local ends the
        next Monday 00:00 local, 167 h across the spring switch and 169 h across the autumn
        one (:func:`calendar_end`; a fraction of a day adds that share of 24 h).
        ``nowblock simulate --days`` passes it. ``end`` is an instant: ``start`` plus a
        Timedelta of N days is N x 24 h, an hour off across a switch.
    needs : "known" or "unknown"
        Whether the policy sees the sessions' real departure and energy, or estimates them as
        the live loop does (:class:`nowblock.loop.needs.NeedsEstimation` with
        ``needs_estimator``, e.g. a fitted :class:`nowblock.forecast.SessionNeedsForecaster`;
        the fallback rule if None).
    base_load_forecaster : object, optional
        ``predict(history, now, horizon) -> Series`` [kW]; None means perfect foresight. The
        value for now is always the true maximum within the coming step. A forecaster of
        nowblock's whose calendar is not the site's time zone (they default to Europe/Berlin)
        is warned about, as is such a ``needs_estimator``: build them with
        ``calendar=nowblock.forecast.Calendar.for_site(scenario.site)``.
    current_step_a : float
        Pilot-signal granularity [A] passed to the policy, > 0 (ValueError otherwise).
    battery : TaperBattery, optional
        The cars' battery model. None means ``TaperBattery()``: 60 kWh usable, a fully served
        session ends at 90 % state of charge, and above 80 % the current a car accepts falls
        linearly to 10 % of its maximum at 100 % (:class:`~nowblock.sim.battery.TaperBattery`);
        so a car may draw less than it is offered near the end of a large request.
    progress : bool
        Print progress to stderr on long runs.
    policy_options : dict, optional
        Keyword arguments for :func:`~nowblock.policies.get_policy` when ``policy`` is a name
        (for example the MILP's options).
    fallback : str
        The baseline that answers a step when the policy raises (as in the live loop); an
        unknown name raises ValueError naming ``fallback``.
    loop_settings : LoopSettings, optional
        The closed loop's margins and times (:class:`nowblock.loop.closed_loop.LoopSettings`);
        a new session's over-draw reserve is on as in the live loop (``new_session_reserve=False``
        turns it off).
    meter_interval_s : float
        [s] When a simulated charger's first meter reading under a step's limits comes (OCPP
        chargers commonly sample every 10-60 s; 60, the slowest, by default): a step that holds
        a new session's reserve runs its control step again then if a reserved car's reading
        calls for one (step 5 above), and that part of the step is accounted on its own (energy
        adds; currents and overloads take the worst part). 0, or a step's length or more,
        reads meters only at each step's start, as does the ``uncontrolled`` reference (it
        sends its answer as it is: no reserve to free).

    Returns
    -------
    SimulationResult
        Metrics, time series, per-session results, draws and per-step policy times.
    """
    from nowblock.milp.inputs import check_duration  # optimize's check: the same words for the same mistake
    from nowblock.policies import get_policy

    wall0 = _time.perf_counter()
    # Checked before the policy is built: a typo costs no MILP warm-up. A step without a unit
    # was read as nanoseconds: "5" asked for 141 TiB of step grid (MemoryError), 300 raised
    # pandas' "freq=<300 * Nanos> is incompatible with unit=us". A horizon without one (24, "24")
    # or not > 0 was taken as one step: the MILP planned without look-ahead, silently.
    step = check_duration(step, "step")
    horizon = check_duration(horizon, "horizon")
    current_step_a = float(current_step_a)
    if not (np.isfinite(current_step_a) and current_step_a > 0):  # 0 was accepted: a pilot step of 0 A means nothing
        raise ValueError(f"current_step_a: must be > 0 A (the pilot signal's granularity), got {current_step_a:g}")
    try:
        backup = get_policy(fallback)
    except (TypeError, ValueError) as exc:  # get_policy's words name 'policy', the argument the user got right
        raise type(exc)(f"fallback: {str(exc).removeprefix('policy: ')}") from None
    # A policy object is checked too: one with a misspelt `schedule` ran every step on the fallback.
    pol = get_policy(policy, **(policy_options or {}))
    if hasattr(pol, "reset"):
        pol.reset()
    warm_up = getattr(pol, "warm_up", None)
    if callable(warm_up):  # compile before the clock runs: solve_seconds time planning, not numba
        warm_up()
    if needs not in ("known", "unknown"):
        raise ValueError(f"needs: expected 'known' or 'unknown', got {needs!r}")
    meter_interval_s = float(meter_interval_s)
    if not (np.isfinite(meter_interval_s) and meter_interval_s >= 0):
        raise ValueError(f"meter_interval_s: must be >= 0 s (0: meters read at each step's start), "
                         f"got {meter_interval_s:g}")
    wake = pd.Timedelta(seconds=meter_interval_s)
    sess = scenario.sessions
    if len(sess) == 0 and (start is None or (end is None and days is None)):
        raise ValueError("simulate: a scenario without sessions needs start and end")
    if days is not None and end is not None:
        raise ValueError("simulate: give end or days, not both")
    t_start = _utc(start, "start") if start is not None else sess["arrival"].min().floor(step)
    if days is not None:
        t_end = calendar_end(t_start, days, scenario.site.timezone)
    else:
        t_end = _utc(end, "end") if end is not None else sess["departure"].max().ceil(step)
    if not t_end > t_start:  # else: no step, no session, and metrics of a perfect week
        raise ValueError(f"simulate: end {t_end.isoformat()} is not after start {t_start.isoformat()}")
    scenario = _covered(scenario, t_start, t_end, pd.Timedelta(step))
    for what, obj in (("needs_estimator", needs_estimator if needs == "unknown" else None),
                      ("base_load_forecaster", base_load_forecaster)):
        _warn_other_zone(what, obj, scenario.site)
    block = SimulatedBlock(scenario, step=step, horizon=horizon, start=t_start, end=t_end,
                           needs_known=needs == "known", base_load_forecaster=base_load_forecaster,
                           current_step_a=current_step_a, battery=battery)
    loop_settings = loop_settings or LoopSettings()
    control = ControlStep(settings=loop_settings,
                          needs=NeedsEstimation(needs_estimator if needs == "unknown" else None))
    split_steps = pd.Timedelta(0) < wake < block.step and not bypasses_safety(pol)
    solve_s: list[float] = []
    fallbacks: list[tuple] = []  # (time, the policy that answered, why): steps the policy did not answer
    show = _progress_printer(progress, block.n_t, f"simulate {pol.name}")
    for k in range(block.n_t):
        now = block.grid[k]
        obs = block.observe(now)
        if len(obs.cars):
            out = control.run(pol, obs, fallback=backup)
            solve_s.append(out.seconds["policy"])
            if out.status != "ok":
                fallbacks.append((now, out.policy, out.status))
            # The uncontrolled reference sends its answer as it is, reserve or not: nothing to free.
            if control.reserve_a and split_steps:
                at = now + wake
                block.apply(now, out.current_a, until=at)
                if _meter_wakes(control, block, at):
                    obs = block.observe(at)
                    out = control.run(pol, obs, fallback=backup)
                    solve_s.append(out.seconds["policy"])
                    if out.status != "ok":
                        fallbacks.append((at, out.policy, out.status))
                block.apply(at, out.current_a)
            else:
                block.apply(now, out.current_a)
            control.forget(obs.cars.index)
        show(k + 1)
    res = _result(block, pol, np.asarray(solve_s), fallbacks, wall0)
    if fallbacks:
        t, who, why = zip(*fallbacks)
        res.fallbacks = pd.DataFrame({"time": pd.DatetimeIndex(t), "policy": list(who), "reason": list(why)})
        res.metrics["fallback_policy"] = backup.name
        log.warning("simulate: policy %s did not answer %d of %d steps (%s answered them; the reasons are in "
                    "SimulationResult.fallbacks); first: %s", pol.name, len(fallbacks), len(solve_s), backup.name,
                    why[0])
    return res


def _meter_wakes(control: ControlStep, block: SimulatedBlock, at: pd.Timestamp) -> bool:
    """Whether a reserved car's reading at ``at`` calls for a control step, by the live
    controller's rule for a meter value (:func:`nowblock.loop.reserve.meter_departs`: its
    first reading under its limit tells what it draws over it, and its reserve frees).

    Parameters
    ----------
    control : ControlStep
        The step's state after the step that holds the reserves (``reserve_a``, ``sent``).
    block : SimulatedBlock
        The block, its cars having drawn up to ``at`` (``measured``: [A per phase] the draw).
    at : pandas.Timestamp
        [UTC] When the readings are taken.

    Returns
    -------
    bool
        True when one reading calls for a step.
    """
    pos = block.sid_index.get_indexer(list(control.reserve_a))
    for sid, i in zip(control.reserve_a, pos):
        cur = block.measured[i] if i >= 0 else np.nan
        if np.isfinite(cur) and reserve.meter_departs(control, sid, float(cur), at):
            return True
    return False


def _covered(scenario, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta):
    """``scenario`` checked to cover the simulated window (the rule of
    :func:`nowblock.block.scenario.cover_window`, as in :func:`nowblock.optimize`): a series a
    year off was held flat at its last value, without a word. A base load that misses part of
    the window while a car is plugged in is refused (elsewhere it is 0 kW, with one warning:
    the window starts at the first arrival floored to the step); prices that miss part of it
    get their mean there."""
    import copy

    from nowblock.block.scenario import cover_window, plugged_times

    tz, where = scenario.site.timezone, "the simulated window"
    files = getattr(scenario, "_series_files", {})  # set by Scenario.from_dir: name the file
    base = cover_window(scenario.base_load, start, end, files.get("base_load", "base_load"), "base_load", tz, where,
                        step, plugged_times(scenario.sessions, start, end, step))
    prices = cover_window(scenario.prices, start, end, files.get("prices", "prices"), "prices", tz, where, step)
    if base is scenario.base_load and prices is scenario.prices:
        return scenario
    out = copy.copy(scenario)  # not dataclasses.replace: that validates the sessions again
    out.base_load, out.prices = base, prices
    return out


def _result(block: SimulatedBlock, pol, solve: np.ndarray, fallbacks: list, wall0: float) -> SimulationResult:
    """The metrics and frames of a finished simulation (see the module docstring)."""
    timeseries, max_overload, overload_steps, unb_excess, _ = block.timeseries()
    sessions = block.session_table()
    req, frac = block.req, sessions["fraction_delivered"].to_numpy(float)
    n_s, n_t, dt_h = len(req), block.n_t, block.dt_h
    e_req, e_del = float(req.sum()), float(block.delivered.sum())
    metrics = {
        "energy_requested_kwh": e_req,
        "energy_delivered_kwh": e_del,
        "demand_met": e_del / e_req if e_req > 0 else 1.0,
        "peak_kw": float(timeseries["block_kw"].max()) if n_t else 0.0,
        "max_overload_a": max_overload,
        "cost_eur": float(np.sum(block.charging_kw * dt_h * np.nan_to_num(block.price_mean[:n_t])))
        if block.has_prices else 0.0,
        "solve_seconds_median": float(np.median(solve)) if len(solve) else 0.0,
        "unmet_kwh": float(np.maximum(req - block.delivered, 0.0).sum()),
        "n_sessions": int(n_s),
        "sessions_fully_met": float(np.mean(frac >= 1.0 - 1e-6)) if n_s else 1.0,
        "min_fraction_delivered": float(frac.min()) if n_s else 1.0,
        "overload_steps": overload_steps,
        "max_unbalance_excess_a": unb_excess,
        "n_steps": int(n_t),
        "car_hours": float(block.n_plugged.sum() * dt_h),
        "solve_seconds_max": float(solve.max()) if len(solve) else 0.0,
        "fallback_steps": len(fallbacks),
        "wall_seconds": _time.perf_counter() - wall0,
        "policy": pol.name,
    }
    return SimulationResult(metrics, timeseries, sessions, block.draws(), solve, pol.name, block.step, block.site)


def _warn_other_zone(what: str, forecaster, site) -> None:
    """Warn if ``forecaster`` learns on another clock than ``site``'s time zone.

    The forecasters default to Europe/Berlin; one built without
    ``calendar=Calendar.for_site(site)`` for a New York block learnt its Friday-evening stays as
    Saturday-morning ones. Its calendar is ``forecaster.calendar`` or ``forecaster.model.calendar``.
    """
    cal = getattr(forecaster, "calendar", None) or getattr(getattr(forecaster, "model", None), "calendar", None)
    tz = getattr(cal, "tz", None)
    if isinstance(tz, str) and tz != site.timezone:
        log.warning("simulate: %s learns on the %s clock, the site's time zone is %s (build it with "
                    "calendar=nowblock.forecast.Calendar.for_site(site))", what, tz, site.timezone)


def calendar_end(start, days: float, tz: str) -> pd.Timestamp:
    """The instant ``days`` calendar days after ``start`` on the wall clock of ``tz``, in UTC.

    Whole days step the local date and keep the local time of day (so a day across a daylight
    saving switch is 23 or 25 h); a fraction of a day then adds that share of 24 h. A local
    time the switch skips moves forward by the gap, one it repeats takes its first instant.

    Parameters
    ----------
    start : pandas.Timestamp
        Timezone-aware start.
    days : float
        Calendar days, positive and finite.
    tz : str
        IANA time zone, normally the site's (``Site.timezone``).

    Returns
    -------
    pandas.Timestamp
        The end, UTC.

    Raises
    ------
    ValueError
        ``days`` is not a positive finite number, or the end is outside the range of
        pandas' timestamps.
    """
    days = float(days)
    if not (np.isfinite(days) and days > 0):
        raise ValueError(f"days: {days:g} is not a positive number of days")
    whole = int(np.floor(days))
    wall = pd.Timestamp(start).tz_convert(tz).tz_localize(None)
    try:
        local = (wall + pd.Timedelta(days=whole)).tz_localize(tz, ambiguous=True, nonexistent="shift_forward")
    except (OverflowError, pd.errors.OutOfBoundsDatetime):
        raise ValueError(f"days: {days:g} days from {pd.Timestamp(start).isoformat()} {OUTSIDE_TIMES}") from None
    return _utc(local + pd.Timedelta(days=days - whole), "end")


def _utc(t, what: str) -> pd.Timestamp:
    """``t`` checked by :func:`nowblock.block.sessions.aware_time` (the check ``nb.optimize``
    shares), in UTC; ``what`` names it in errors."""
    return aware_time(t, what).tz_convert("UTC")
