"""The live control loop: re-plan on events and on a period, inside ``nowblock serve``.

:class:`Controller` puts the parts in order; each part fits in a head and is tested alone:

1. **observe**: :class:`~nowblock.control.live.LiveBlock` turns the central system's state into
   an observation (cars, idle connectors, other load, prices, pilot step);
2. **prepare**: :class:`~nowblock.loop.step.ControlStep` (the simulator's own) estimates unknown
   needs, marks cars that do not follow their limits, reserves what they and idle connectors
   may draw, lowers the allocation ceiling of cars that draw less, and builds the snapshot;
3. **decide**: the policy (MILP by default) in a worker thread or process with a time limit; on
   failure or time-out the fallback heuristic, and a late plan is used by the next step
   (:class:`~nowblock.control.deciding.TimedPolicy`);
4. **finish**: the safety net and the hysteresis (the same ``ControlStep``);
5. **dispatch**: lowered limits first, raises after they were answered
   (:func:`~nowblock.control.dispatch.plan_waves`); a car that does not follow its limit gets
   it again with a growing pause, then a station maximum, then an alarm
   (:class:`~nowblock.control.dispatch.Escalation`); a charger that kept a higher limit in this
   very step is counted at it and the others are repaired at once
   (:class:`~nowblock.control.sending.Dispatcher`);
6. **watch**: a fuse phase measured above its rating is an alarm with its size and duration
   (:class:`~nowblock.control.alarms.OverloadWatch`).

At boot every station gets a fail-safe TxDefaultProfile (:mod:`~nowblock.control.failsafe`),
so the block stays safe if this process dies. With a store, everything the chargers report is
written before the OCPP answer leaves, and a restarted ``serve`` continues the plan.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time as _time
from dataclasses import dataclass, field, fields
from typing import Callable

import pandas as pd

from nowblock.block.site import Site
from nowblock.control.alarms import Alarms, OverloadWatch
from nowblock.control.deciding import TimedPolicy
from nowblock.control.dispatch import Escalation, planned_a, send_again
from nowblock.control.failsafe import FailsafeKeeper, IdleDefaults
from nowblock.control.live import LiveBlock
from nowblock.control.operator import OperatorInputs
from nowblock.control.sending import Dispatcher
from nowblock.control.solver import SolverProcess
from nowblock.loop import closed_loop as cl, reserve
from nowblock.loop.binding import binding_limits
from nowblock.loop.needs import NeedsEstimation
from nowblock.loop.step import ControlStep, StepContext, held_back
from nowblock.seam import BlockSnapshot, Decision, Policy, failsafe_current_a
from nowblock.seam.policy import check_policy

log = logging.getLogger(__name__)

#: Event kinds that make the controller re-plan at once (debounced by ``min_replan_s``).
REPLAN_EVENTS = frozenset({"start", "stop", "needs", "connect", "boot", "disconnect", "unplug"})


def _utcnow() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


@dataclass(frozen=True)
class ControllerSettings:
    """How the live loop runs.

    Attributes
    ----------
    period_s : float
        [s] At most this long between steps (events trigger steps sooner).
    step, horizon : pandas.Timedelta
        The policy's planning slot and horizon.
    solve_timeout_s : float or None
        [s] How long a step waits for the policy before the fallback answers (default 0.8 of
        the period); the MILP's own time limit is 0.6 of it.
    new_car_timeout_s : float
        [s] The wait when a car has never been sent a limit: every running transaction gets a
        TxProfile within 5 s of its start, whatever the policy costs.
    max_wait_s : float
        [s] The longest a step waits for the policy otherwise; a slower solve goes on in the
        background and its plan is applied by the next step (see :meth:`Controller.decide`).
    fallback : str
        The baseline heuristic on policy failure or time-out.
    profile_validity_s : float or None
        [s] Life of each TxProfile (default ``max(5 periods, 60 s)``), refreshed before it ends.
    min_replan_s : float
        [s] Events closer together than this make one step.
    loop : LoopSettings
        The closed loop's margins and times.
    escalation : Escalation
        Back-off, grace and alarm times for cars that do not follow their limits.
    overload_tolerance_a : float
        [A] A measured fuse phase above its rating by more than this is an overload.
    idle_limit_a : float or None
        [A] The default idle connectors are kept at while the controller runs (see
        :class:`~nowblock.control.failsafe.IdleDefaults`); None leaves them on their fail-safe
        (then its share is held for a car that might plug in).
    idle_validity_s : float
        [s] Life of an idle default (renewed while the controller runs); at most the
        TxProfiles' life (``profile_validity_s``), since it stays under a car's TxProfile.
    readback_s : float
        [s] At most this often per car, the charger of a car that does not draw what it was
        given is asked what it applies (GetCompositeSchedule).
    send_wait_s : float
        [s] How long a step waits for the chargers' answers to each wave of limits; a charger
        that has not answered by then is counted at what it holds and planned around from the
        next step (see :class:`~nowblock.control.sending.Dispatcher`).
    solver_process : bool
        Run a policy given by name in a worker process of its own
        (:class:`~nowblock.control.solver.SolverProcess`; ``nowblock serve`` does), so a long
        solve never slows the OCPP handlers.
    """

    period_s: float = 60.0
    step: pd.Timedelta = pd.Timedelta("15min")
    horizon: pd.Timedelta = pd.Timedelta("24h")
    solve_timeout_s: float | None = None
    new_car_timeout_s: float = 1.0
    max_wait_s: float = 2.0
    fallback: str = "edf"
    profile_validity_s: float | None = None
    min_replan_s: float = 1.0
    loop: cl.LoopSettings = cl.LoopSettings()
    escalation: Escalation = field(default_factory=Escalation)
    overload_tolerance_a: float = 0.5
    idle_limit_a: float | None = 0.0
    idle_validity_s: float = 900.0
    readback_s: float = 300.0
    send_wait_s: float = 2.5
    solver_process: bool = False


@dataclass
class StepResult:
    """What one control step did.

    ``current_a`` [A] by session_id: the limit each planned car is counted at after the step
    (what it accepted; what its charger holds when it kept a higher one); ``targets_a`` [A]: what
    the step asked for; ``reserved``: sessions not trusted to follow (see
    :class:`~nowblock.loop.step.StepContext`); ``accepted_a``: the limits chargers answered with;
    ``held_back``: why the block is below its limits; ``seconds`` per stage; ``binding``: per
    planned car the limit that binds it and by how much
    (:func:`~nowblock.loop.binding.binding_limits`, ``out_of_service`` for points out of service).
    """

    time: pd.Timestamp
    reason: str
    policy: str
    status: str
    current_a: pd.Series
    reserved: list[str] = field(default_factory=list)
    accepted_a: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    snapshot: BlockSnapshot | None = None
    context: StepContext | None = None
    targets_a: pd.Series | None = None
    held_back: dict = field(default_factory=dict)
    binding: pd.DataFrame | None = None


_SOURCE_OPTIONS = ("forecaster", "base_load_history", "base_load_meter", "prices", "base_load_margin")
_RENAMED = {"settings": "loop"}


class Controller:
    """The live loop for one site (see the module docstring).

    Parameters
    ----------
    central : CentralSystem
        ``.state`` (the live state) and the coroutines ``set_limit``, ``set_default_profile``,
        ``set_station_max``.
    site : Site
    policy : Policy or str
        The policy or its name (default "milp").
    store : Store, optional
        Where plans and alarms are kept (the events are recorded by the store's recorder).
    needs_forecaster : object, optional
        ``predict_needs(cars, time)`` (a fitted :class:`nowblock.forecast.SessionNeedsForecaster`).
    worst_base_load_kw : float, optional
        [kW] The other load the fail-safe profiles must survive (default: the largest in
        ``base_load_history``, else 0).
    clock : callable, optional
        Now (UTC); the central system's own clock by default (the demo runs an accelerated one).
    **options
        :class:`ControllerSettings` fields (``period_s``, ``step``, ``horizon``,
        ``solve_timeout_s``, ``fallback``, ``profile_validity_s``, ``min_replan_s``, ``settings``
        for the loop settings, ...) and :class:`~nowblock.control.live.LiveBlock` inputs
        (``forecaster``, ``base_load_history``, ``base_load_meter``, ``prices``,
        ``base_load_margin``).
    """

    def __init__(self, central, site: Site, policy: Policy | str | None = "milp", store=None, *,
                 needs_forecaster=None, worst_base_load_kw: float | None = None,
                 clock: Callable[[], pd.Timestamp] | None = None, **options) -> None:
        from nowblock.policies import get_policy

        known = {f.name for f in fields(ControllerSettings)}
        given = {_RENAMED.get(k, k): v for k, v in options.items() if k not in _SOURCE_OPTIONS}
        bad = sorted(set(given) - known)
        if bad:
            raise TypeError(f"Controller: unknown option(s) {bad}")
        for k in ("step", "horizon"):
            if k in given:
                given[k] = pd.Timedelta(given[k])
        self.config = cfg = ControllerSettings(**given)
        self.central = central
        self.state = central.state
        self.site = site
        self.period_s = float(cfg.period_s)
        self.solve_timeout_s = float(cfg.solve_timeout_s) if cfg.solve_timeout_s is not None else 0.8 * self.period_s
        self.profile_validity_s = (float(cfg.profile_validity_s) if cfg.profile_validity_s
                                   else max(5.0 * self.period_s, 60.0))
        self.fallback = get_policy(cfg.fallback)
        try:
            if isinstance(policy, Policy):  # the protocol's attributes exist; check_policy checks their kind
                self.policy = check_policy(policy)
            elif (policy or "milp") == "milp":  # HiGHS stops well before the step gives up on it
                opts = dict(horizon=cfg.horizon, step=cfg.step, time_limit_s=max(0.05, 0.6 * self.solve_timeout_s))
                self.policy = SolverProcess("milp", opts) if cfg.solver_process else get_policy("milp", **opts)
            else:
                self.policy = get_policy(policy)
        except (ImportError, AttributeError) as exc:  # the optimizer is not installed: the heuristic runs
            log.error("policy %r unavailable (%s); controlling with %s", policy, exc, cfg.fallback)
            self.policy = self.fallback
        if getattr(self.policy, "safe", True) is False:
            raise ValueError(f"policy {self.policy.name!r} bypasses the safety net: not for live control")
        self.store = store
        self.owns_store = False
        self.needs_from_store = False
        if clock is None and callable(getattr(self.state, "clock", None)):
            clock = lambda: pd.Timestamp(self.state.clock())  # noqa: E731 - the central system's own time
        self.clock = clock or _utcnow
        history = options.get("base_load_history")
        if worst_base_load_kw is None:
            worst_base_load_kw = float(history.max()) if history is not None and len(history) else 0.0
        self.worst_base_load_kw = float(worst_base_load_kw)
        self.failsafe_a = failsafe_current_a(site, self.worst_base_load_kw)
        if hasattr(central, "failsafe_a"):  # the central system installs these after every BootNotification
            central.failsafe_a = {k: float(v) for k, v in self.failsafe_a.items()}
        else:
            log.warning("the central system installs no fail-safe profiles; chargers keep their own defaults")
        self.operator = OperatorInputs(site, store, clock=self.clock)
        self.operator.listeners.append(lambda what, data: self.replan())
        self.source = LiveBlock(self.state, site, step=cfg.step, horizon=cfg.horizon, failsafe_a=self.failsafe_a,
                                operator=self.operator, **{k: options[k] for k in _SOURCE_OPTIONS if k in options})
        self.loop = ControlStep(settings=cfg.loop, needs=NeedsEstimation(needs_forecaster))
        self.escalation = cfg.escalation
        self.failsafe = FailsafeKeeper(central, self.failsafe_a, voltage_v=site.voltage_v,
                                       horizon=pd.Timedelta(seconds=max(3600.0, 10.0 * self.period_s)),
                                       retry_s=max(60.0, 10.0 * self.period_s), on_installed=self._wake_soon)
        self.idle = None
        if cfg.idle_limit_a is not None:
            # Never longer than the cars' TxProfiles: it stays on the connector under them.
            self.idle = IdleDefaults(central, site, limit_a=cfg.idle_limit_a,
                                     validity_s=min(float(cfg.idle_validity_s), self.profile_validity_s),
                                     retry_s=max(60.0, 10.0 * self.period_s), on_installed=self._wake_soon)
        self.plan: pd.DataFrame | None = None
        self.step_listeners: list[Callable[[StepResult], None]] = []  # called after every step
        self.history: list[StepResult] = []
        self._alarms = Alarms(store)
        self.source.alarm = self._alarms.raise_alarm  # a station clock more than a day off
        self.overloads = OverloadWatch(site, self._alarms, tolerance_a=cfg.overload_tolerance_a)
        self.timed = TimedPolicy(self.policy, self.fallback, solve_timeout_s=self.solve_timeout_s,
                                 new_car_timeout_s=cfg.new_car_timeout_s, max_wait_s=cfg.max_wait_s,
                                 period_s=self.period_s, wake=self._wake_soon)
        self.sender = Dispatcher(central, self.loop, self.escalation, cfg.loop,
                                 profile_validity_s=self.profile_validity_s, readback_s=cfg.readback_s,
                                 spawn=self.failsafe.spawn, alarm=self._alarms.raise_alarm,
                                 step_gap_s=lambda: self._step_gap_s, send_wait_s=cfg.send_wait_s)
        self._needs_fit_at: pd.Timestamp | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._committed: dict[str, float] = {}  # session -> [A] what the last step reserved for an untrusted car
        self._awaiting: dict[str, pd.Timestamp] = {}  # session -> the step whose limit its charger has not answered
        self._offline: dict[str, set[str]] = {}  # station -> sessions the last step held as offline cars'
        self._stopping = False
        self._last_step_wall = -math.inf
        self._last_step_time: pd.Timestamp | None = None
        self._gaps_s: list[float] = []  # recent intervals between steps on the controller's clock [s]
        self.failed_steps = 0  # control steps failed in a row (the loop's; 0 after one that completed)
        self.last_failure: tuple[pd.Timestamp, str] | None = None  # when and why the last one failed
        self._sub = None
        if store is not None:
            last = store.latest_plan()
            if last is not None:
                self.plan = last[1]
                log.info("continuing from the plan of %s (%d sessions)", last[0], last[1].shape[1])

    # ---- shorthands the tests and the demo read ------------------------------------------------
    @property
    def settings(self) -> cl.LoopSettings:
        """The closed loop's settings."""
        return self.config.loop

    @property
    def needs_forecaster(self):
        """The fitted needs forecaster in use (None: the fallback rule)."""
        return self.loop.needs.estimator

    @needs_forecaster.setter
    def needs_forecaster(self, value) -> None:
        self.loop.needs.estimator = value

    @property
    def top_up_kwh(self) -> float:
        """[kWh] A car that still draws wants at least this much more than it got."""
        return self.loop.needs.top_up_kwh

    def idle_defaults_a(self, now: pd.Timestamp, running=()) -> pd.Series:
        """See :meth:`nowblock.control.live.LiveBlock.idle_defaults_a`."""
        return self.source.idle_defaults_a(now, running=running)

    def failsafe_missing(self, now: pd.Timestamp) -> list[str]:
        """See :func:`nowblock.control.failsafe.failsafe_missing`."""
        return self.failsafe.missing(now)

    # ---- life cycle -------------------------------------------------------------------------
    def warm_up(self) -> float:
        """Compile what the policy compiles on first use (the MILP's numba kernels), before any
        charger is served; returns the seconds it took (0 for policies that need nothing)."""
        warm = getattr(self.policy, "warm_up", None)
        secs = float(warm()) if callable(warm) else 0.0
        log.info("policy %s warmed up in %.2f s", self.policy.name, secs)
        return secs

    async def start(self) -> None:
        """Start the loop task (re-plans on events and every ``period_s``)."""
        self._sub = self.state.subscribe()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nowblock-controller")
        fs = self.failsafe_a
        log.info("controller started: policy %s, fallback %s, period %g s, TxProfiles valid %g s, "
                 "fail-safe %g..%g A per charging point (worst other load %.1f kW)", self.policy.name,
                 self.fallback.name, self.period_s, self.profile_validity_s, fs.min() if len(fs) else 0,
                 fs.max() if len(fs) else 0, self.worst_base_load_kw)

    async def stop(self) -> None:
        """Stop the loop (profiles already sent stay on the chargers until they expire)."""
        self._stopping = True
        self._wake.set()
        if self._sub is not None:
            self._sub.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._task = None
        await self.failsafe.cancel()
        if isinstance(self.policy, SolverProcess):
            self.policy.close()
        if self.idle is not None:
            await self.idle.cancel()
        if self.owns_store and self.store is not None:
            self.store.close()

    def _wake_soon(self) -> None:
        self._wake.set()

    def replan(self) -> None:
        """Step as soon as possible (debounced by ``min_replan_s``), e.g. after an operator input."""
        self._wake.set()

    @property
    def active_overloads(self) -> list[dict]:
        """Fuse phases measured above their rating now: fuse_id, phase, limit_a, worst_a [A], start."""
        return self.overloads.active

    @property
    def alarms(self) -> list[dict]:
        """The recent alarms (time, kind, and their data), oldest first."""
        return self._alarms.recent

    def _wait_s(self) -> float:
        """[s] Until the next planned step: the period, or sooner when a cap starts or ends."""
        nxt = self.operator.next_change_after(self.clock())
        if nxt is None:
            return self.period_s
        return float(min(self.period_s, max(0.05, (nxt - self.clock()).total_seconds() + 0.01)))

    async def _run(self) -> None:
        events = asyncio.get_running_loop().create_task(self._watch_events())
        try:
            while not self._stopping:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._wait_s())
                    reason = "event"
                except asyncio.TimeoutError:
                    reason = "period"
                self._wake.clear()
                wait = self.config.min_replan_s - (_time.monotonic() - self._last_step_wall)
                if wait > 0:  # coalesce bursts (ten cars starting at once: one step)
                    await asyncio.sleep(wait)
                    self._wake.clear()
                if self._stopping:
                    break
                try:
                    await self.step(reason)
                    self.failed_steps = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failed_steps += 1
                    self.last_failure = (self.clock(), repr(exc)[:300])
                    log.exception("control step failed; chargers keep their last limits until they expire")
        finally:
            events.cancel()

    async def _watch_events(self) -> None:
        async for ev in self._sub:
            if ev.kind in ("disconnect", "clock"):
                # A reconnected station gets fresh profiles; so does one whose clock estimate
                # moved (those placed by the old estimate may have ended on arrival).
                send_again(self.loop.sent, ev.cp_id, anew=ev.kind == "clock")
                if ev.kind == "clock":
                    self._wake.set()
            if ev.kind in REPLAN_EVENTS or (ev.cp_id in self._offline and self._back_online(ev.cp_id)):
                self._wake.set()
            elif ev.kind == "meter" and self._meter_wakes(ev):
                self._wake.set()  # a car not following its limit is heard again, or one departs from its limit
            if ev.kind == "boot":  # its idle connectors are held at its maximum until its default is known
                self.failsafe.spawn(self._wake_when_default_known(ev.cp_id))

    def _back_online(self, cp_id: str) -> bool:
        """Whether a car the last step held as an offline car's at station ``cp_id`` can be sent
        a limit again: its station connected, its clock usable and the car no orphan (named
        since the station's reboot or reconnect). True once per step for the station.

        Its station's next message (the meter values naming it, a status) says so, but no event
        kind did: an orphan revived in the MeterValues a station sent within 10 s of its reboot
        stayed offline, with no setpoint, for up to the period (an outside test, h4 r4; 14 s of
        a 20 s period; tests/test_live_revival.py) while the API showed every station
        connected."""
        st = self.state.stations.get(cp_id)
        if st is None or not st.connected or not getattr(getattr(st, "clock", None), "usable", True):
            return False
        held = self._offline[cp_id]
        if any(t.session_id in held and not t.orphaned for t in self.state.running(cp_id)):
            del self._offline[cp_id]
            return True
        return False

    @staticmethod
    def _session(ev) -> str:
        return f"{ev.cp_id}:{ev.transaction_id}"

    async def _wake_when_default_known(self, cp_id: str, timeout_s: float = 30.0, every_s: float = 0.1) -> None:
        """Re-plan as soon as a station that just booted is known to hold a default limit (the
        fail-safe the central system installs after the boot), so that the room held for its
        idle connectors shrinks from its maximum to that limit without waiting for the period;
        and again once its clock is known (``ClockOffset.stamped``; the central system asks a
        station that stamps nothing), when its idle connectors may get their idle default."""
        end = _time.monotonic() + timeout_s
        default = False
        while not self._stopping and _time.monotonic() < end:
            st = self.state.stations.get(cp_id)
            if st is None or not st.connected:
                return
            if not default and self.state.applied_limit_a(cp_id, 1) is not None:
                self._wake.set()
                default = True
                unknown = not getattr(getattr(st, "clock", None), "stamped", True)
                if not unknown:
                    return
            elif default and getattr(getattr(st, "clock", None), "stamped", True):
                self._wake.set()
                return
            await asyncio.sleep(every_s)

    def _meter_wakes(self, ev) -> bool:
        """Whether a meter event calls for a step now: a car not following its limit is heard again
        with a current reading (one dated long ago, from a station whose clock runs behind, leaves
        it stale: waking on each of them made a step a second), a car draws on more phases than it
        was planned on (a car switching from 1 to 3 phases put 64 A on two 32 A grid phases until
        the period's step, found by an outside test), or a car departs from its limit."""
        if ev.data.get("phases_up"):
            return True
        sid = self._session(ev)
        if sid in self.escalation.since:
            t = self.state.transaction(ev.cp_id, ev.transaction_id)
            last = getattr(t, "last_meter", None)
            if last is not None and (ev.time - last).total_seconds() <= self.config.loop.stale_after_s:
                # News only if it may follow its limit now: one still drawing over it woke a step
                # with each meter value, and each step could hand the others' room around anew
                # (an outside test: two cars swapped 0 and 30 A every 5 s).
                # Or if it draws more than the last step reserved for it (the others were made safe
                # against that much only; a review found a car going from 30 to 38 A unnoticed).
                cur = [ev.data.get(f"current_l{i}_a") for i in (1, 2, 3)]
                cur = [c for c in cur if c is not None and not math.isnan(c)]
                if not cur:  # power only: no current to judge by; the period's step reads it
                    return False
                sent = self.loop.sent.get(sid)
                reserved = self._committed.get(sid)
                return (sent is None or max(cur) <= sent[0] + self.settings.over_draw_a
                        or (reserved is not None and max(cur) > reserved + self.settings.margin_a))
        return self._meter_departs(ev)

    def _meter_departs(self, ev) -> bool:
        cur = [ev.data.get(f"current_l{i}_a") for i in (1, 2, 3)]
        cur = [c for c in cur if c is not None and not math.isnan(c)]
        return bool(cur) and reserve.meter_departs(self.loop, self._session(ev), max(cur), self.clock())

    def _book_acceptances(self, cars, booked: dict | None = None) -> None:
        """Date each limit change from when its charger accepted it, not from the step that decided it.

        A step books a changed limit at its start (``loop.changed_at``), and a car's meter value
        counts as its draw at that limit once ``settle_s`` later. An answer that comes late
        (a busy station, or a busy machine: at the demo's 480x one second is 8 minutes) let a
        meter value taken before it, the car still at the 0 A it held before, count as a draw
        at the new limit: 0 A at 6 A, the car called full and given 0 A all night (the demo
        with ``--grid-a 100``: 0.1 to 0.3 of 14 to 27 kWh). Now the change counts from the
        station's acceptance as the live state recorded it (within the step's start and now).

        Parameters
        ----------
        cars : pandas.DataFrame
            The step's observed cars (``charge_point_id``, ``connector_id`` by session_id).
        booked : dict, optional
            session_id -> the step start [UTC] its accepted limit was booked at; without it,
            the sessions whose answer an earlier step did not wait for and that came since.
        """
        if booked is None:
            booked = {sid: t for sid, t in self._awaiting.items() if sid not in self.loop.pending_a}
            for sid in booked:
                del self._awaiting[sid]
        if not booked:
            return
        hi = pd.Timestamp(self.clock())
        for sid, at in booked.items():
            if self.loop.changed_at.get(sid) != at or sid not in cars.index:
                continue  # not changed by that step (a refresh), or gone
            row = cars.loc[sid]
            st = self.state.stations.get(str(row["charge_point_id"]))
            rec = st.dispatch.get(int(row["connector_id"])) if st is not None else None
            if rec is None or rec.accepted_a is None:
                continue
            when = pd.Timestamp(rec.time)
            when = when.tz_localize("UTC") if when.tzinfo is None else when
            self.loop.changed_at[sid] = min(max(when, at), hi)

    # ---- one step ---------------------------------------------------------------------------
    def build_snapshot(self, now: pd.Timestamp | None = None) -> tuple[BlockSnapshot, StepContext]:
        """The policy's snapshot now and the step's context (observe, then prepare)."""
        now = now or self.clock()
        obs = self.source.observe(now)
        self._set_offline_floors(obs, now)
        return self.loop.prepare(obs)

    def _set_offline_floors(self, obs, now: pd.Timestamp) -> None:
        """Give the step what each offline car's station falls back to once its TxProfile lapses
        (``LiveBlock.offline_floors_a``): the fail-safe as the station holds it, or the car's
        maximum where it holds none (the fail-safe we want it to hold counted 12 A for a car
        that drew 16 A: review rev3 F1 of session 36)."""
        floors = getattr(self.source, "offline_floors_a", None)
        self.loop.offline_floor_a = floors(obs.cars, now) if floors is not None else {}

    async def decide(self, snap: BlockSnapshot, *, new_cars: bool = False) -> tuple[Decision, str, str]:
        """The policy's decision within the step's wait, else the fallback's; see
        :meth:`nowblock.control.deciding.TimedPolicy.decide`. Returns (decision, name of the
        policy that decided, status)."""
        return await self.timed.decide(snap, new_cars=new_cars)

    async def step(self, reason: str = "manual") -> StepResult:
        """One control step now (see the module docstring)."""
        self._last_step_wall = _time.monotonic()
        now = self.clock()
        if self._last_step_time is not None:
            self._gaps_s = (self._gaps_s + [(now - self._last_step_time).total_seconds()])[-10:]
        self._last_step_time = now
        if self.needs_from_store:
            self._refit_needs(now)
        self.failsafe.keep(now)
        restored = getattr(self.state, "restored_sessions", None)
        if restored:  # restored from the store: untrusted until they take a limit of ours and follow it
            self.loop.unconfirmed |= set(restored)
            restored.clear()
        t0 = _time.perf_counter()
        obs = self.source.observe(now)
        self._book_acceptances(obs.cars)  # answers that came after an earlier step's wait
        if self.idle is not None:
            self.idle.keep(now, running=zip(obs.cars["charge_point_id"], obs.cars["connector_id"]))
        self.loop.probe_due = self.escalation.due(now)  # a car held at 0 A is tried at its minimum then
        self._set_offline_floors(obs, now)
        # Readings older than a lowering by an earlier step count at most at it (a re-sharing);
        # this step's own lowerings answer what the readings show: an over-draw seen and mended
        # by one step was capped away and never reported (an outside test, 21 s at 43 A on 40 A).
        lowered = self.loop.lowered_since()
        snap, ctx = self.loop.prepare(obs)
        self._committed = dict(zip(ctx.committed_a.index.tolist(), ctx.committed_a.to_numpy(float).tolist()))
        offline = [sid for sid, why in ctx.untrusted.items() if why == "offline"]
        self._offline = {}
        for sid, cp in zip(offline, ctx.cars.loc[offline, "charge_point_id"].astype(str)):
            self._offline.setdefault(cp, set()).add(sid)
        t1 = _time.perf_counter()
        new_cars = any(sid not in self.loop.sent for sid in snap.cars.index)
        decision, name, status = await self.decide(snap, new_cars=new_cars)
        t2 = _time.perf_counter()
        targets = self.loop.finish(snap, ctx, decision.current_a)
        accepted = await self.sender.dispatch(targets, ctx, now, snap)  # the plan's room: raises that fit go at once
        self._awaiting.update({sid: now for sid in accepted if sid in self.loop.pending_a})
        self._book_acceptances(obs.cars, {sid: now for sid, a in accepted.items() if a is not None})
        counted = self.sender.counted_a(targets, ctx, accepted)
        kept = {s: a for s, a in counted.items() if s not in ctx.untrusted and a > targets.get(s, 0.0) + 0.05}
        if kept:  # a charger kept a higher limit in this very step: repair the others now
            counted.update(await self.sender.repair(snap, ctx, targets, kept, now))
        await self.sender.escalate(targets, ctx, now, counted)
        self.sender.read_back(ctx, now)
        t3 = _time.perf_counter()
        x = pd.Series(counted, dtype=float).reindex(targets.index).rename("current_a")
        self.overloads.watch(obs, now, changed_at=lowered, base_kw=self.source.metered_base_kw(now))
        self.loop.forget(obs.cars.index)
        self.escalation.forget(obs.cars.index)  # an offline car's clock runs on; an ended one's goes
        self._awaiting = {k: v for k, v in self._awaiting.items() if k in obs.cars.index}
        self.operator.forget_sessions(obs.cars.index)
        self._keep_plan(decision, x, now, name, status)
        hb = held_back(snap, ctx, x)
        binding = self._binding(snap, planned_a(targets, ctx))
        secs = {"snapshot": t1 - t0, "optimize": t2 - t1, "dispatch": t3 - t2, "persist": _time.perf_counter() - t3}
        res = StepResult(now, reason, name, status, x, sorted(ctx.untrusted), accepted, secs, snap, ctx, targets, hb,
                         binding)
        self.history.append(res)
        del self.history[:-500]
        for fn in list(self.step_listeners):
            try:
                fn(res)
            except Exception:  # noqa: BLE001 - an observer must not break control
                log.exception("step listener failed")
        log.info("step %s (%s): %d cars, %.0f A total, %d untrusted %s, idle held %.0f A, unused %.0f A, "
                 "%d waiting, policy %s [%s], %.0f ms (%s)", now.strftime("%H:%M:%S"), reason, len(x), float(x.sum()),
                 len(ctx.untrusted), hb["untrusted"] or "", hb["reserved_idle_a"], hb["unused_a"],
                 hb["cars_waiting"], name, status, 1000 * sum(secs.values()),
                 " ".join(f"{k} {1000 * v:.0f}" for k, v in secs.items()))
        return res

    def _binding(self, snap: BlockSnapshot, targets: pd.Series) -> pd.DataFrame | None:
        """Which limit binds each planned car (for the operator; never fails the step)."""
        try:
            applied = self.operator.last_applied
            b = binding_limits(snap, targets, capped_fuses=applied.capped_fuses if applied else ())
            off = snap.cars["charge_point_id"].isin(list(self.operator.out_of_service)).to_numpy()
            if off.any():
                b.loc[off, "binding"] = "out_of_service"
            return b
        except Exception:  # noqa: BLE001
            log.exception("could not work out the binding limits")
            return None

    # ---- dispatch ---------------------------------------------------------------------------
    @property
    def _step_gap_s(self) -> float:
        """The longest recent interval between steps [s, controller clock], or the period."""
        return max(self._gaps_s) if self._gaps_s else self.period_s

    # ---- needs and the plan ------------------------------------------------------------------
    def _refit_needs(self, now: pd.Timestamp, min_sessions: int = 20) -> None:
        """Fit the session-needs forecaster on the store's history, at most once a day."""
        if self._needs_fit_at is not None and now - self._needs_fit_at < pd.Timedelta(days=1):
            return
        self._needs_fit_at = now
        try:
            from nowblock.forecast.calendar import Calendar
            from nowblock.forecast.needs import SessionNeedsForecaster

            hist = self.store.sessions_history(since=now - pd.Timedelta(days=365))
            if len(hist) >= min_sessions:
                self.needs_forecaster = SessionNeedsForecaster(calendar=Calendar.for_site(self.site)).fit(hist)
                log.info("needs forecaster fitted on %d finished sessions", len(hist))
        except Exception:  # noqa: BLE001 - estimates then use the fallback rule
            log.exception("could not fit the needs forecaster; estimates use the fallback rule")

    def _keep_plan(self, decision: Decision, x: pd.Series, now: pd.Timestamp, name: str, status: str) -> None:
        plan = decision.plan_a if name == self.policy.name else None
        if not isinstance(plan, pd.DataFrame) or plan.empty:
            plan = x.to_frame(now).T
        else:
            plan = plan.copy()
            plan.iloc[0] = x.reindex(plan.columns).fillna(0.0).to_numpy()  # the slot actually sent
        self.plan = plan
        if self.store is not None:
            try:
                self.store.save_plan(now, plan, policy=name, status=status)
            except Exception:  # noqa: BLE001 - control goes on without the stored plan
                log.exception("could not store the plan")
