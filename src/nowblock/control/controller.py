"""The live control loop: OCPP state, forecast, optimize, dispatch.

:class:`Controller` runs as an asyncio task inside the ``serve`` process. It re-plans when a
car starts or stops, when a 2.0.1 car reports its needs, when a station (re)connects, when a
car's measured draw departs from its limit, and at least every ``period_s``. One step:

1. **snapshot**: the central system's live cars frame; needs no car reported are estimated;
   cars whose meter values are stale (or that ignore their limit) are taken out of the
   policy's hands and their worst case is reserved on every fuse above them
   (:mod:`nowblock.loop.closed_loop`), and so is the default limit of every idle connector (what a
   car that plugs in there draws before the next step reaches it); allocation ceilings follow
   what cars really draw.
2. **forecast**: the block's other load from a meter feed when there is one, else the forecaster.
3. **optimize**: the policy (MILP by default) in a worker thread with a time limit; on failure
   or time-out the heuristic; always through :func:`nowblock.seam.make_safe`, then the
   hysteresis that keeps running cars at their minimum instead of pausing them.
4. **dispatch**: TxProfiles with short validity, lowered limits first, raised limits after the
   lowered ones were answered; the limit the charger really accepted is what counts (a car
   that kept a higher limit is reserved at it and the others are repaired in the same step).

At boot every station gets a fail-safe TxDefaultProfile: its share of the connection with the
worst-case other load, so the block stays safe if this process dies. With a store, everything
the chargers report is written before the OCPP answer leaves (:class:`StoreRecorder`), and a
restarted ``serve`` continues the running transactions, their energy so far and the plan.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time as _time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from nowblock.loop import closed_loop as cl
from nowblock.loop.needs import FallbackNeedsEstimator
from nowblock.seam import CAR_COLUMNS, BlockSnapshot, Policy, failsafe_current_a, make_safe
from nowblock.block.site import Site

log = logging.getLogger(__name__)

#: Event kinds that make the controller re-plan at once (debounced by ``min_replan_s``).
REPLAN_EVENTS = frozenset({"start", "stop", "needs", "connect", "boot", "disconnect", "unplug"})


def _utcnow() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


# ---- one control step -------------------------------------------------------------------------
@dataclass
class StepResult:
    """What one control step did. Timings [s] per stage; currents [A] by session_id."""

    time: pd.Timestamp
    reason: str
    policy: str
    status: str
    current_a: pd.Series
    reserved: list[str] = field(default_factory=list)
    accepted_a: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    snapshot: BlockSnapshot | None = None


class Controller:
    """The live loop for one site (see the module docstring).

    ``central``: the central system (``.state`` the live state, ``set_limit`` /
    ``set_default_profile`` coroutines); ``policy``: a Policy or a name (default "milp");
    ``store``: a :class:`~nowblock.store.Store` or None; ``forecaster``: base load,
    ``predict(history, now, horizon) -> Series kW``; ``needs_forecaster``:
    ``predict_needs(cars, time) -> DataFrame(departure, energy_kwh)``; ``base_load_meter``:
    a callable ``now -> kW`` (a meter feed) or None; ``base_load_history``: a Series [kW] of
    the block's measured other load for the forecaster; ``worst_base_load_kw`` [kW]: the other
    load the fail-safe profiles must survive (default: the largest in the history, else 0).
    ``period_s`` [s] between planned steps; ``solve_timeout_s`` [s] before the heuristic
    ``fallback`` takes over; ``profile_validity_s`` [s] of each TxProfile (refreshed before it
    ends). ``clock`` returns now (UTC); the demo runs an accelerated one.
    """

    def __init__(
        self,
        central,
        site: Site,
        policy: Policy | str | None = "milp",
        store=None,
        forecaster=None,
        *,
        needs_forecaster=None,
        base_load_meter: Callable[[pd.Timestamp], float | None] | None = None,
        base_load_history: pd.Series | None = None,
        prices: pd.Series | None = None,
        worst_base_load_kw: float | None = None,
        period_s: float = 60.0,
        step: pd.Timedelta | str = "15min",
        horizon: pd.Timedelta | str = "24h",
        solve_timeout_s: float | None = None,
        fallback: str = "edf",
        profile_validity_s: float | None = None,
        min_replan_s: float = 1.0,
        settings: cl.LoopSettings = cl.LoopSettings(),
        clock: Callable[[], pd.Timestamp] | None = None,
    ) -> None:
        from nowblock.policies import get_policy

        self.central = central
        self.state = central.state
        self.site = site
        self.period_s = float(period_s)
        self.slot = pd.Timedelta(step)
        self.horizon = pd.Timedelta(horizon)
        self.solve_timeout_s = float(solve_timeout_s) if solve_timeout_s is not None else 0.8 * self.period_s
        self.fallback = get_policy(fallback)
        try:
            if isinstance(policy, Policy):
                self.policy = policy
            elif (policy or "milp") == "milp":  # HiGHS stops well before the step gives up on it
                self.policy = get_policy("milp", horizon=self.horizon, step=self.slot,
                                         time_limit_s=max(0.05, 0.6 * self.solve_timeout_s))
            else:
                self.policy = get_policy(policy)
        except (ImportError, AttributeError) as exc:  # the optimizer is not installed: the heuristic runs
            log.error("policy %r unavailable (%s); controlling with %s", policy, exc, fallback)
            self.policy = self.fallback
        self.store = store
        self.forecaster = forecaster
        self.needs_forecaster = needs_forecaster
        self.base_load_meter = base_load_meter
        self.base_load_history = base_load_history
        self.prices = prices
        self.profile_validity_s = float(profile_validity_s) if profile_validity_s else max(5.0 * self.period_s, 60.0)
        self.min_replan_s = float(min_replan_s)
        self.settings = settings
        if clock is None and callable(getattr(self.state, "clock", None)):
            clock = lambda: pd.Timestamp(self.state.clock())  # noqa: E731 - the central system's own time
        self.clock = clock or _utcnow
        if worst_base_load_kw is None:
            worst_base_load_kw = float(base_load_history.max()) if base_load_history is not None and len(base_load_history) else 0.0
        self.worst_base_load_kw = float(worst_base_load_kw)
        self.failsafe_a = failsafe_current_a(site, self.worst_base_load_kw)
        # The central system installs these as TxDefaultProfiles after every BootNotification.
        if hasattr(central, "failsafe_a"):
            central.failsafe_a = {k: float(v) for k, v in self.failsafe_a.items()}
        else:
            log.warning("the central system installs no fail-safe profiles; chargers keep their own defaults")
        self.owns_store = False
        self.ceilings_a = pd.Series(dtype=float)
        self.plan: pd.DataFrame | None = None
        self.history: list[StepResult] = []
        self._sent: dict[str, tuple[float, pd.Timestamp]] = {}  # session -> (limit sent [A], when)
        self._changed_at: dict[str, pd.Timestamp] = {}  # session -> when its limit last changed
        self._reserved: set[str] = set()  # sessions counted at their worst case in the last step
        self._full: set[str] = set()  # sessions whose car stopped drawing while offered its minimum
        self.top_up_kwh = 2.0
        self.needs_from_store = False
        self._needs_fit_at: pd.Timestamp | None = None
        self._solving: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_step_wall = -math.inf
        self._last_step_time: pd.Timestamp | None = None
        self._gaps_s: list[float] = []  # recent intervals between steps on the controller's clock [s]
        self._sub = None
        self._failsafe_tried: dict[str, float] = {}  # station -> wall time [s] of the last (re)install
        self._failsafe_tasks: set[asyncio.Task] = set()
        if store is not None:
            last = store.latest_plan()
            if last is not None:
                self.plan = last[1]
                log.info("continuing from the plan of %s (%d sessions)", last[0], last[1].shape[1])

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
        for t in list(self._failsafe_tasks):
            t.cancel()
        await asyncio.gather(*self._failsafe_tasks, return_exceptions=True)
        if self.owns_store and self.store is not None:
            self.store.close()

    async def _run(self) -> None:
        events = asyncio.get_running_loop().create_task(self._watch_events())
        try:
            while not self._stopping:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.period_s)
                    reason = "event"
                except asyncio.TimeoutError:
                    reason = "period"
                self._wake.clear()
                wait = self.min_replan_s - (_time.monotonic() - self._last_step_wall)
                if wait > 0:  # debounce bursts (ten cars starting at once: one step)
                    await asyncio.sleep(wait)
                    self._wake.clear()
                if self._stopping:
                    break
                try:
                    await self.step(reason)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("control step failed; chargers keep their last limits until they expire")
        finally:
            events.cancel()

    async def _watch_events(self) -> None:
        async for ev in self._sub:
            if ev.kind == "disconnect":
                for sid in [s for s in self._sent if s.split(":")[0] == ev.cp_id]:
                    self._sent.pop(sid, None)  # a reconnected station gets fresh profiles
            if ev.kind in REPLAN_EVENTS:
                self._wake.set()
            elif ev.kind == "meter" and (f"{ev.cp_id}:{ev.transaction_id}" in self._reserved
                                         or self._meter_departs(ev)):
                self._wake.set()  # a car counted at its maximum is heard again, or departs from its limit
            if ev.kind == "boot":  # its idle connectors are held at its maximum until its default is known
                self._background(self._wake_when_default_known(ev.cp_id))

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._failsafe_tasks.add(task)  # cancelled by stop()
        task.add_done_callback(self._failsafe_tasks.discard)

    async def _wake_when_default_known(self, cp_id: str, timeout_s: float = 30.0, every_s: float = 0.1) -> None:
        """Re-plan as soon as a station that just booted is known to hold a default limit (the
        fail-safe the central system installs after the boot), so that the room held for its
        idle connectors shrinks from its maximum to that limit without waiting for the period."""
        end = _time.monotonic() + timeout_s
        while not self._stopping and _time.monotonic() < end:
            st = self.state.stations.get(cp_id)
            if st is None or not st.connected:
                return
            if self.state.applied_limit_a(cp_id, 1) is not None:
                self._wake.set()
                return
            await asyncio.sleep(every_s)

    def _meter_departs(self, ev) -> bool:
        sid = f"{ev.cp_id}:{ev.transaction_id}"
        sent = self._sent.get(sid)
        if sent is None:
            return False
        cur = [ev.data.get(f"current_l{i}_a") for i in (1, 2, 3)]
        cur = [c for c in cur if c is not None and not math.isnan(c)]
        if not cur:
            return False
        now = self.clock()
        since = self._changed_at.get(sid)
        if since is not None and (now - since).total_seconds() < self.settings.settle_s:
            return False
        return abs(max(cur) - sent[0]) > self.settings.under_draw_a + self.settings.margin_a

    # ---- one step ---------------------------------------------------------------------------
    def build_snapshot(self, now: pd.Timestamp | None = None) -> tuple[BlockSnapshot, pd.DataFrame, dict]:
        """The policy's snapshot now, the full live cars frame, and stage timings [s]."""
        now = now or self.clock()
        t0 = _time.perf_counter()
        raw = self.state.snapshot(now.to_pydatetime())
        cars = raw.copy()
        for c in ("arrival", "departure"):  # one resolution, so that estimates can be written in
            cars[c] = pd.to_datetime(cars[c], utc=True).dt.as_unit("ns")
        last_meter = pd.Series([self._last_meter(cp, tx) for cp, tx in zip(cars["charge_point_id"], cars.get(
            "transaction_id", pd.Series([""] * len(cars))))], index=cars.index, dtype="datetime64[ns, UTC]")
        settled = self._settled(cars.index, last_meter, now)
        self._track_full(cars, settled)
        tn = _time.perf_counter()
        if len(cars):
            cars = self._fill_needs(cars, now)
        t_needs = _time.perf_counter() - tn
        stale = cl.stale_mask(last_meter, cars["arrival"], now, self.settings.stale_after_s)
        if "connected" in cars:
            stale |= ~cars["connected"].to_numpy(bool)
        over = cl.over_draw_mask(cars, settled, self.settings)
        # A charger that holds a higher limit than the last one it was sent (it answered but did
        # not apply it, or rejected every fallback) is planned around at what it holds, so that
        # no other car is raised into the current it keeps; its wanted limit is re-sent when due.
        offered = cars["offered_current_a"].to_numpy(float)
        last_sent = np.array([self._sent[s][0] if s in self._sent else np.nan for s in cars.index], dtype=float)
        holding = ~stale & ~over & (offered > last_sent + 0.05)  # NaN (never sent) compares False
        unobserved = stale | over | holding
        reserve = np.where(stale, cars["max_current_a"].to_numpy(float),
                           np.where(over, cars["measured_current_a"].to_numpy(float) + self.settings.margin_a, offered))
        # A car plugged in at an idle connector draws that point's default limit until the step it
        # triggers has sent its TxProfile: hold that much for it on every phase the point is wired
        # to, as for a station we cannot see (a 0 A fail-safe costs nothing).
        idle = self.idle_defaults_a(now, running=zip(cars["charge_point_id"], cars["connector_id"]))
        idle = idle[idle > 0]
        idle_cp = self.site.cp_index(idle.index.get_level_values("charge_point_id"))
        site = cl.reserve_unobserved(
            self.site, np.concatenate([cars["cp_index"].to_numpy(np.int64)[unobserved], idle_cp]),
            np.concatenate([cars["phases"].to_numpy(np.int64)[unobserved], self.site.cp_phases[idle_cp]]),
            np.concatenate([reserve[unobserved], idle.to_numpy(float)]))
        live = cars[~unobserved]
        self._reserved = set(cars.index[stale | over])  # cars whose next meter value is news
        self.ceilings_a = cl.update_ceilings(live, self.ceilings_a, settled[~unobserved], self.settings)
        policy_cars = cl.apply_ceilings(live, self.ceilings_a)[list(CAR_COLUMNS)]
        t1 = _time.perf_counter()
        base = self._base_load(now)
        t2 = _time.perf_counter()
        step_a = 0.1 if len(raw) and "version" in raw and (raw["version"] == "1.6").all() else 1.0
        snap = BlockSnapshot(time=now, site=site, step=self.slot, cars=policy_cars, base_load_kw=base,
                             prices_eur_per_kwh=self._prices(now), current_step_a=step_a,
                             extra={"reserved": list(cars.index[unobserved]), "running": cl.running_mask(live, self.settings),
                                    "holding": dict(zip(cars.index[holding], last_sent[holding])),
                                    "idle_reserved_a": {f"{cp}:{c}": float(a) for (cp, c), a in idle.items()}})
        return snap, cars, {"snapshot": t1 - t0 - t_needs, "forecast": t2 - t1 + t_needs}

    def idle_defaults_a(self, now: pd.Timestamp, running=()) -> pd.Series:
        """The limit [A per phase] a car newly plugged in at each idle connector could draw.

        One value per connector (EVSE in 2.0.1) without a running transaction, indexed by
        (``charge_point_id``, ``connector_id``); ``running`` are the (charge point, connector)
        pairs that run one. The limit is what the live state knows the point applies to an idle
        connector (its TxDefaultProfile, a fallback default left behind, a station maximum);
        when it knows none, the point's maximum if the station booted in this process (so we
        know it holds none), else the fail-safe installed earlier (offline, or not yet heard
        from since a restart). Never above the point's maximum.
        """
        busy = {(str(cp), int(c)) for cp, c in running}
        t = now.to_pydatetime()
        rows: dict[tuple[str, int], float] = {}
        for cp in self.site.charge_points:
            st = self.state.stations.get(cp.id)
            if st is None:
                continue
            for c in sorted({c for c in st.connectors if c > 0} | {1}):
                if (cp.id, c) in busy:
                    continue
                held = self.state.applied_limit_a(cp.id, c, t)
                if held is None:
                    held = cp.max_current_a if st.connected and st.boot else float(
                        self.failsafe_a.get(cp.id, cp.max_current_a))
                rows[(cp.id, c)] = min(float(held), float(cp.max_current_a))
        index = pd.MultiIndex.from_tuples(list(rows), names=["charge_point_id", "connector_id"])
        return pd.Series(list(rows.values()), index=index, dtype=float, name="current_a")

    def _last_meter(self, cp_id: str, tx_id) -> pd.Timestamp:
        t = self.state.transaction(cp_id, tx_id) if tx_id != "" else None
        lm = getattr(t, "last_meter", None)
        return pd.NaT if lm is None else pd.Timestamp(lm)

    def _settled(self, index, last_meter: pd.Series, now) -> np.ndarray:
        out = np.zeros(len(index), dtype=bool)
        for i, sid in enumerate(index):
            lm = last_meter.iloc[i]
            if pd.isna(lm):
                continue
            since = self._changed_at.get(sid)
            out[i] = since is None or (lm - since).total_seconds() >= self.settings.settle_s
        return out

    def _refit_needs(self, now: pd.Timestamp, min_sessions: int = 20) -> None:
        """Fit the session-needs forecaster on the store's history, at most once a day."""
        if self._needs_fit_at is not None and now - self._needs_fit_at < pd.Timedelta(days=1):
            return
        self._needs_fit_at = now
        try:
            from nowblock.forecast.needs import SessionNeedsForecaster

            hist = self.store.sessions_history(since=now - pd.Timedelta(days=365))
            if len(hist) >= min_sessions:
                self.needs_forecaster = SessionNeedsForecaster().fit(hist)
                log.info("needs forecaster fitted on %d finished sessions", len(hist))
        except Exception:
            log.exception("could not fit the needs forecaster; estimates use the fallback rule")

    def _track_full(self, cars: pd.DataFrame, settled: np.ndarray) -> None:
        """Remember cars that stopped drawing although offered their minimum (full batteries)."""
        meas = cars["measured_current_a"].to_numpy(float)
        off = cars["offered_current_a"].to_numpy(float)
        full = settled & (meas < 0.5) & (off >= cars["min_current_a"].to_numpy(float))
        self._full = (self._full | set(cars.index[full])) - set(cars.index[np.nan_to_num(meas) > 1.0])
        self._full &= set(cars.index)

    def _fill_needs(self, cars: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
        """Estimate the needs no car reported (departure UTC, energy [kWh]).

        The departure is the forecaster's lower quartile and the energy its upper quartile when
        it gives them (plan as if the car left early wanting much); the energy never falls below what the car got plus ``top_up_kwh`` while it
        still takes current (a car that keeps charging wants more, whatever the estimate said),
        and is what it got once it stopped drawing although offered its minimum (full).
        """
        cars = cars.copy()
        unknown = ~cars["needs_known"].to_numpy(bool) | cars["departure"].isna().to_numpy() \
            | cars["energy_requested_kwh"].isna().to_numpy()
        if unknown.any():
            blind = cars[unknown]
            fb = FallbackNeedsEstimator().predict_needs(blind, now)
            est = fb
            if self.needs_forecaster is not None:
                try:
                    got = self.needs_forecaster.predict_needs(blind, now).reindex(blind.index)
                    dep_col = "departure_q0.25" if "departure_q0.25" in got else "departure"
                    early = pd.to_datetime(got[dep_col], utc=True)
                    early = early.where(early > now + self.slot, now + self.slot)
                    e_col = "energy_kwh_q0.75" if "energy_kwh_q0.75" in got else "energy_kwh"
                    est = pd.DataFrame({
                        "departure": early.fillna(fb["departure"]),
                        "energy_kwh": pd.to_numeric(got[e_col], errors="coerce").fillna(fb["energy_kwh"]),
                    }, index=blind.index)
                except Exception:
                    log.exception("needs forecaster failed; using the fallback estimate")
            dep = cars["departure"].copy()
            dep[unknown] = pd.to_datetime(est["departure"], utc=True).dt.as_unit("ns").to_numpy()
            cars["departure"] = dep
            e = cars["energy_requested_kwh"].to_numpy(float, copy=True)
            got_kwh = cars["energy_delivered_kwh"].to_numpy(float)[unknown]
            full = cars.index[unknown].isin(list(self._full))
            e[unknown] = np.where(full, got_kwh, np.maximum(est["energy_kwh"].to_numpy(float), got_kwh + self.top_up_kwh))
            cars["energy_requested_kwh"] = e
            cars["needs_known"] = ~unknown
        # A car staying past its announced departure is planned as leaving within the step.
        late = cars["departure"] <= now
        if late.any():
            cars.loc[late, "departure"] = now + self.slot
        return cars

    def _base_load(self, now: pd.Timestamp) -> pd.Series:
        n = max(1, int(self.horizon / self.slot))
        idx = pd.date_range(now, periods=n, freq=self.slot)
        values = np.full(n, np.nan)
        if self.forecaster is not None and self.base_load_history is not None:
            try:
                hist = self.base_load_history[self.base_load_history.index < now]
                fc = pd.Series(self.forecaster.predict(hist, now, self.horizon), dtype=float)
                if len(fc):
                    values = fc.reindex(fc.index.union(idx)).ffill().reindex(idx).to_numpy(float, copy=True)
            except Exception:
                log.exception("base-load forecast failed; planning with the last known value")
        measured = self.base_load_meter(now) if self.base_load_meter is not None else None
        if measured is not None and np.isfinite(measured):
            values[0] = float(measured)
        elif not np.isfinite(values[0]) and self.base_load_history is not None and len(self.base_load_history):
            past = self.base_load_history[self.base_load_history.index <= now]
            values[0] = float(past.iloc[-1]) if len(past) else float(self.base_load_history.iloc[0])
        s = pd.Series(values, index=idx, name="kw").ffill().bfill().fillna(0.0)
        if len(s) > 1:  # the setpoints sent now hold into the next slot: plan now for the larger of both
            s.iloc[0] = max(s.iloc[0], s.iloc[1])
        return s

    def _prices(self, now: pd.Timestamp) -> pd.Series | None:
        if self.prices is None:
            return None
        idx = pd.date_range(now, periods=max(1, int(self.horizon / self.slot)), freq=self.slot)
        return self.prices.reindex(self.prices.index.union(idx)).ffill().bfill().reindex(idx)

    async def plan_setpoints(self, snap: BlockSnapshot) -> tuple[pd.Series, str, str]:
        """Setpoints [A], policy name, status: the policy in a worker thread, the heuristic on trouble."""
        if len(snap.cars) == 0:
            return pd.Series(np.zeros(0), index=snap.cars.index, dtype=float), self.policy.name, "empty"
        status = "ok"
        name = self.policy.name
        answer = None
        if self._solving is not None and not self._solving.done():
            status = "previous solve still running"
        else:
            self._solving = asyncio.ensure_future(asyncio.to_thread(self.policy.schedule, snap))
            try:
                answer = await asyncio.wait_for(asyncio.shield(self._solving), self.solve_timeout_s)
            except asyncio.TimeoutError:
                status = f"time-out after {self.solve_timeout_s:g} s"
            except Exception as exc:
                status = f"failed: {exc!r}"
                log.exception("policy %s failed", self.policy.name)
        if answer is None:
            log.warning("policy %s: %s; falling back to %s", self.policy.name, status, self.fallback.name)
            name = self.fallback.name
            answer = self.fallback.schedule(snap)
        x = make_safe(snap, answer)
        x = cl.keep_running(snap, x, snap.extra.get("running", np.zeros(len(x), bool)))
        return make_safe(snap, x), name, status

    def _keep_plan(self, snap: BlockSnapshot, x: pd.Series, now: pd.Timestamp, name: str, status: str) -> None:
        sched = getattr(self.policy, "last_schedule", None)
        plan = None
        if name == self.policy.name and sched is not None:
            plan = getattr(sched, "current_a", None)
        if not isinstance(plan, pd.DataFrame) or plan.empty:
            plan = x.to_frame(now).T
        else:
            plan = plan.copy()
            plan.iloc[0] = x.reindex(plan.columns).fillna(0.0).to_numpy()  # the slot actually sent
        self.plan = plan
        if self.store is not None:
            try:
                self.store.save_plan(now, plan, policy=name, status=status)
            except Exception:
                log.exception("could not store the plan")

    async def step(self, reason: str = "manual") -> StepResult:
        """One control step now: snapshot, forecast, optimize, dispatch (see module docstring)."""
        self._last_step_wall = _time.monotonic()
        now = self.clock()
        if self._last_step_time is not None:
            gap = (now - self._last_step_time).total_seconds()
            self._gaps_s = (self._gaps_s + [gap])[-10:]
        self._last_step_time = now
        if self.needs_from_store:
            self._refit_needs(now)
        self.keep_failsafe(now)
        snap, cars, secs = self.build_snapshot(now)
        t0 = _time.perf_counter()
        x, name, status = await self.plan_setpoints(snap)
        t1 = _time.perf_counter()
        # Chargers found holding a higher limit are planned around (see build_snapshot); the
        # limit they were asked for goes out again when it is due for a refresh.
        holding = pd.Series(snap.extra.get("holding", {}), dtype=float)
        accepted = await self.dispatch(snap, cars, pd.concat([x, holding]) if len(holding) else x, now)
        # A charger that kept a higher limit than we asked for in this very step: count it at
        # what it kept and repair the others now (later steps plan around it from the start).
        in_force = {sid: self._in_force_a(cars, sid, a) for sid, a in accepted.items() if sid in x.index}
        kept = {s: a for s, a in in_force.items() if a > x.get(s, 0.0) + 0.05}
        if kept:
            log.warning("limit not lowered on %s; repairing the others", ", ".join(sorted(kept)))
            fixed = cars.loc[list(kept)]
            site = cl.reserve_unobserved(snap.site, fixed["cp_index"], fixed["phases"], list(kept.values()))
            rest = snap.cars.drop(index=list(kept))
            snap2 = BlockSnapshot(now, site, snap.step, rest, snap.base_load_kw, snap.prices_eur_per_kwh,
                                  snap.current_step_a, extra=snap.extra)
            x2 = make_safe(snap2, x.reindex(rest.index))
            accepted.update(await self.dispatch(snap2, cars, x2, now, only_lower=True))
            x = pd.concat([x2, pd.Series(kept)])
        if len(holding):  # reported at what they hold now (lower only if the re-sent limit took)
            x = pd.concat([x, pd.Series({sid: self._in_force_a(cars, sid, accepted[sid]) if sid in accepted
                                         else float(cars.at[sid, "offered_current_a"]) for sid in holding.index},
                                        dtype=float)])
        t2 = _time.perf_counter()
        self._keep_plan(snap, x, now, name, status)
        secs.update(optimize=t1 - t0, dispatch=t2 - t1, persist=_time.perf_counter() - t2)
        res = StepResult(now, reason, name, status, x, list(snap.extra.get("reserved", [])), accepted, secs, snap)
        self.history.append(res)
        del self.history[:-500]
        log.info("step %s (%s): %d cars, %.0f A total, %d reserved, %d idle held, policy %s [%s], %.0f ms",
                 now.strftime("%H:%M:%S"), reason, len(x), float(x.sum()), len(res.reserved),
                 len(snap.extra.get("idle_reserved_a", {})), name, status, 1000 * sum(secs.values()))
        return res

    def failsafe_missing(self, now: pd.Timestamp) -> list[str]:
        """Stations that should hold the fail-safe TxDefaultProfile but, as far as the live state
        knows, hold none that outlasts the next ``max(1 h, 10 periods)``.

        Only stations that are connected and known to be past their BootNotification count
        (booted in this process, or running a transaction): a charger must not be sent profiles
        before it is accepted. The boot-time fail-safe lives ``default_validity_s`` (a week by
        default) and a restarted ``serve`` does not know what the chargers hold, so both a
        long-lived connection and a restart would otherwise leave stations without it.
        """
        horizon = now + pd.Timedelta(seconds=max(3600.0, 10.0 * self.period_s))
        out = []
        for cp_id, fs in self.failsafe_a.items():
            st = self.state.stations.get(cp_id)
            if st is None or not st.connected or not (st.boot or self.state.running(cp_id)):
                continue
            ok = any(p.purpose == "TxDefaultProfile" and p.connector_id == 0 and p.periods
                     and _first_limit_a(p, self.site.voltage_v) <= fs + 1e-6
                     and (p.valid_to is None or p.valid_to > horizon) for p in st.profiles)
            if not ok:
                out.append(cp_id)
        return out

    def keep_failsafe(self, now: pd.Timestamp) -> None:
        """(Re)install the fail-safe TxDefaultProfile where :meth:`failsafe_missing` finds none,
        in the background, at most once per ``max(60 s, 10 periods)`` of wall time per station."""
        if not hasattr(self.central, "set_default_profile"):
            return
        wall = _time.monotonic()
        retry_s = max(60.0, 10.0 * self.period_s)
        for cp_id in self.failsafe_missing(now):
            if wall - self._failsafe_tried.get(cp_id, -math.inf) < retry_s:
                continue
            self._failsafe_tried[cp_id] = wall
            log.info("%s: (re)installing the fail-safe TxDefaultProfile of %.1f A", cp_id, self.failsafe_a[cp_id])
            self._background(self._install_failsafe(cp_id))

    async def _install_failsafe(self, cp_id: str) -> None:
        try:
            rec = await self.central.set_default_profile(cp_id, float(self.failsafe_a[cp_id]), connector_id=0)
        except Exception as exc:
            log.warning("%s: fail-safe TxDefaultProfile not installed: %r", cp_id, exc)
            return
        if getattr(rec, "accepted_a", None) is not None:
            self._wake.set()  # the room held for its idle connectors may shrink to the fail-safe

    @property
    def _step_gap_s(self) -> float:
        """The longest recent interval between steps [s, controller clock], or the period."""
        return max(self._gaps_s) if self._gaps_s else self.period_s

    def _in_force_a(self, cars: pd.DataFrame, sid: str, accepted: float | None) -> float:
        """The limit [A] a charger applies after a dispatch: what it accepted, else what the live
        state knows it holds, else (no profile at all) the most the car may draw."""
        if accepted is not None:
            return float(accepted)
        row = cars.loc[sid]
        try:
            held = self.state.applied_limit_a(row["charge_point_id"], int(row["connector_id"]))
        except Exception:
            held = None
        return float(row["max_current_a"]) if held is None else min(float(held), float(row["max_current_a"]))

    # ---- dispatch ---------------------------------------------------------------------------
    async def dispatch(self, snap: BlockSnapshot, cars: pd.DataFrame, x: pd.Series, now: pd.Timestamp,
                       *, only_lower: bool = False) -> dict[str, float | None]:
        """Send TxProfiles: lowered limits first, then raised ones; returns the accepted limits [A]."""
        # Re-send before a profile could expire ahead of the next step (steps may run late).
        refresh_s = min(self.profile_validity_s / 2.0, self.profile_validity_s - 2.0 * self._step_gap_s)
        lower, higher = [], []
        for sid, limit in x.items():
            prev = self._sent.get(sid)
            due = prev is None or abs(prev[0] - limit) > 1e-6 or (now - prev[1]).total_seconds() >= refresh_s
            if not due:
                continue
            offered = float(cars.at[sid, "offered_current_a"]) if sid in cars.index else math.inf
            (lower if limit <= (prev[0] if prev else offered) else higher).append((sid, float(limit)))
        if only_lower:
            higher = []
        out: dict[str, float | None] = {}
        for batch in (lower, higher):
            if batch:
                got = await asyncio.gather(*(self._send(cars, sid, lim, now) for sid, lim in batch))
                out.update(dict(zip([b[0] for b in batch], got)))
        return out

    async def _send(self, cars: pd.DataFrame, sid: str, limit_a: float, now: pd.Timestamp) -> float | None:
        row = cars.loc[sid]
        prev = self._sent.get(sid)
        try:
            rec = await self.central.set_limit(row["charge_point_id"], int(row["connector_id"]), limit_a,
                                               validity_s=int(math.ceil(self.profile_validity_s)))
        except Exception as exc:
            log.warning("%s: limit %.1f A not sent: %s", sid, limit_a, exc)
            return None
        accepted = getattr(rec, "accepted_a", rec)
        self._sent[sid] = (limit_a, now)
        if prev is None or abs(prev[0] - limit_a) > 1e-6:
            self._changed_at[sid] = now
        return None if accepted is None else float(accepted)


def _first_limit_a(profile, voltage_v: float) -> float:
    """The first period's limit of ``profile`` in amperes per phase (watts over the phases it names, else 1)."""
    period = profile.periods[0]
    if profile.unit == "W":
        return float(period.limit) / (voltage_v * (period.number_phases or 1))
    return float(period.limit)
