"""Sending a step's limits to the chargers and keeping track of what they hold.

:class:`Dispatcher` is the I/O half of :mod:`nowblock.control.dispatch`: it sends the waves
that :func:`~nowblock.control.dispatch.plan_waves` orders, counts each car at the limit its
charger really holds afterwards, re-sends to cars that do not follow theirs when their back-off
is over (:class:`~nowblock.control.dispatch.Escalation`), escalates them to a station maximum
and then to an alarm, and asks chargers whose cars draw other than offered what they apply
(GetCompositeSchedule). Unreachable or unwilling chargers are logged, never raised.

A raise that needs the room a lowering frees waits until the lowered car follows
(:mod:`nowblock.control.following`; ``LoopSettings.follow_s``): the step waits for it, at most
the follow time. The simulator has no such wait: its cars follow at once and every limit of a
step applies from the step's start, so no state between the two exists there (the seconds a
live raise waits are under 2 % of its 5-minute step).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Callable

import numpy as np
import pandas as pd

from nowblock.control.dispatch import LONG_AGO, Escalation, plan_waves
from nowblock.control.following import FollowRoom, Lowered, follows, fuse_rows, levels_a, may_draw_a
from nowblock.loop import closed_loop as cl
from nowblock.loop.step import ControlStep, StepContext
from nowblock.loop.trials import less_offsets
from nowblock.ocpp.profiles import STATION_MAX_ID
from nowblock.seam import BlockSnapshot, make_safe, safe_setpoints_a

log = logging.getLogger(__name__)


class Dispatcher:
    """Limits out to the chargers, and what each car is counted at afterwards.

    Parameters
    ----------
    central : CentralSystem
        ``set_limit``, optionally ``set_station_max`` and ``read_applied_limit``; its ``state``
        answers ``applied_limit_a``.
    loop : ControlStep
        Its ``sent`` book (session -> limit [A], when) is updated with every limit that left.
    escalation : Escalation
        Back-off, grace and alarm times for cars that do not follow their limits.
    settings : LoopSettings
        The draw tolerances (``under_draw_a``, ``over_draw_a``) that make a car worth a read-back.
    profile_validity_s : float
        [s] Life of each TxProfile.
    readback_s : float
        [s] At most this often per car a charger is asked what it applies.
    spawn : callable
        Runs a coroutine as a task and returns it (the fail-safe keeper's task set, which the
        controller's stop cancels).
    alarm : callable
        ``alarm(kind, now, **data)`` for cars past their alarm time.
    step_gap_s : callable
        [s] The longest recent interval between steps: profiles are refreshed before they could
        expire ahead of the next step.
    send_wait_s : float
        [s] How long a wave waits for the chargers' answers. A charger that has not answered by
        then (a silent station, one still working through an earlier call: calls to a station
        go one at a time) is counted at what it holds, is booked as sent (so the next step finds
        it holding more than it was sent, if it does, and plans the others around it) and gets
        nothing more until it answers; its send goes on in the background. Without this bound
        one silent charger held every step, and every other charger's limit, for the 90 s of its
        fallback chain's time-outs.
    """

    def __init__(self, central, loop: ControlStep, escalation: Escalation, settings: cl.LoopSettings, *,
                 profile_validity_s: float, readback_s: float, spawn: Callable, alarm: Callable,
                 step_gap_s: Callable[[], float], send_wait_s: float = 2.5) -> None:
        self.central = central
        self.state = central.state
        self.loop = loop
        self.escalation = escalation
        self.settings = settings
        self.profile_validity_s = float(profile_validity_s)
        self.readback_s = float(readback_s)
        self._spawn = spawn
        self._alarm = alarm
        self._step_gap_s = step_gap_s
        self._read_at: dict[str, pd.Timestamp] = {}  # session -> when its applied limit was last asked
        self.station_max: dict[str, StationMax] = {}  # station -> the maximum kept on it (escalation)
        if not send_wait_s > 0:
            raise ValueError(f"send_wait_s: must be > 0, got {send_wait_s!r}")
        self.send_wait_s = float(send_wait_s)
        self._named: bool | None = None  # central.set_limit takes transaction_id (checked once)
        #: session -> a lowering whose car has not been seen following it (kept across steps: a
        #: step soon after may raise another car into the room it frees).
        self.lowered: dict[str, Lowered] = {}
        self.follow_poll_s = 0.1  # [s] how often a raise held back looks for the lowered cars' readings

    async def dispatch(self, targets: pd.Series, ctx: StepContext, now: pd.Timestamp,
                       snap: BlockSnapshot | None = None) -> dict[str, float | None]:
        """Send the step's limits (lowered first, then raised).

        Parameters
        ----------
        targets : pandas.Series
            [A per phase] The step's setpoint per session_id.
        ctx : StepContext
            The step's context (cars, untrusted cars, what they follow).
        now : pandas.Timestamp
        snap : BlockSnapshot, optional
            The step's snapshot: the room its plan leaves on each fuse phase lets a raise go
            beside a lowered car that has not followed yet. Without it a raise goes beside one
            only where other raises held back make up for what that car may still draw.

        Returns
        -------
        dict
            session_id -> the limit [A] its charger accepted (None: accepted, value not known).
        """
        self.escalation.update({s: r for s, r in ctx.untrusted.items() if s in targets.index}, now,
                               present=set(targets.index), following=ctx.following)
        doubt = set(self.escalation.since) & set(targets.index)
        resend = self.escalation.due(now) & doubt
        # A car that does not follow its limit gets one only when its pause is over: a raised
        # or unchanged target changes nothing it draws, and a charger that ignores us is not
        # flooded. A lower one goes out at once: a car drawing more than its limit in proportion
        # draws less at a lower limit (the step divides its share by what it draws over it), and
        # one ignoring its limit is lowered a few times, to 0 A, then held.
        # Not one booked LONG_AGO: its station dropped and may have lost its profiles, so what
        # it applies is unknown; held, a station back without them let its car draw 16 A on a
        # 19 A grid for 8 s (review rev3, session 39).
        hold = [s for s in doubt if s not in resend and s in self.loop.sent
                and float(targets[s]) >= self.loop.sent[s][0] - 1e-6 and self.loop.sent[s][1] != LONG_AGO]
        # A station maximum kept above the step's limits at its station lets the car that does
        # not follow take the room the others give up: lowered with the first wave.
        lowering = self._keep_station_maxima(targets, ctx, now, lower_only=True)
        got = await self.send_waves(targets.drop(hold), ctx, now, resend=resend, also=lowering, snap=snap,
                                    plan_a=targets)
        self.escalation.tried([s for s in resend if s in got], now)
        return got

    async def send_waves(self, targets: pd.Series, ctx: StepContext, now: pd.Timestamp, *, only_lower=False,
                         resend=frozenset(), also=(), snap: BlockSnapshot | None = None,
                         plan_a: pd.Series | None = None) -> dict[str, float | None]:
        """Send what :func:`~nowblock.control.dispatch.plan_waves` says is due: the lowered
        limits, and once they were answered the raises (none with ``only_lower``); a raise that
        needs the room a lowering frees once the lowered car has followed
        (:meth:`_raise_when_room`; ``snap`` and ``plan_a``, the step's snapshot and all its
        setpoints [A], tell the room the plan leaves).

        Each wave waits at most ``send_wait_s`` (see the class). The raises are held back for
        this step when a lowered limit of a car the step counted on (trusted) is not in force
        after the first wave (refused, or not answered yet): the room they would take is not
        free; the caller's repair lowers the others around that car now, and the next step
        plans around it. ``also`` (tasks answering True when a lowered station maximum was
        accepted) is waited for with the first wave, and holds the raises back the same way."""
        # Re-send before a profile could expire ahead of the next step (steps may run late).
        refresh_s = min(self.profile_validity_s / 2.0, self.profile_validity_s - 2.0 * self._step_gap_s())
        fewer = self._power_for_fewer_phases(ctx.cars, targets.index)
        lower, higher = plan_waves(targets, self.loop.sent, ctx.cars["offered_current_a"], now,
                                   refresh_s=refresh_s, resend=set(resend) | set(fewer))
        if fewer:
            # Its limit raises the phases it went on on since (from a third of it on each): in the
            # raise wave, after the lowerings that make room, unless it is below what it draws.
            up = [(sid, lim) for sid, lim in lower if sid in fewer and not lim <= fewer[sid] + 1e-9]
            lower = [x for x in lower if x not in up]
            higher = up + higher
        follow = self.settings.follow_s > 0
        sids = [sid for sid, _ in lower + higher]
        levels = levels_a(ctx.cars.loc[sids], self.loop, self.settings.margin_a) if follow else {}
        sent_at = self._clock()
        out = await self._wave(ctx.cars, lower, now, also=also)
        if follow:
            self._track_lowerings(ctx, lower, out, may_draw_a(ctx.cars.loc[sids], levels), sent_at)
            # A raise still below what its car was read drawing lowers it all the same: its
            # excess waits for it to follow like a lowering's (the raise itself needs no room).
            # Not a car not read yet: its raise is credited at what its charger holds (a new car
            # under a 0 A idle default drawing nothing; counted at its maximum, it went at once).
            tol = self.settings.over_draw_a
            self._track_lowerings(ctx, [(s, lim) for s, lim in higher if levels[s] > lim + tol
                                        and s not in self.loop.pending_a], None, levels, sent_at)
        if only_lower or not higher:
            return out
        stuck = [sid for sid, lim in lower if sid in out and sid not in ctx.untrusted
                 and self.in_force_a(ctx.cars, sid, out[sid]) > lim + 0.05]
        stuck += [f"the station maximum of {cp}" for cp, t in also
                  if not t.done() or t.cancelled() or t.exception() is not None or not t.result()]
        if stuck:
            log.warning("raises held back this step: %s not lowered yet", ", ".join(sorted(stuck)))
            return out
        if not follow:
            out.update(await self._wave(ctx.cars, higher, now))
            return out
        out.update(await self._raise_when_room(ctx, higher, levels, snap, targets if plan_a is None else plan_a, now))
        return out

    async def _raise_when_room(self, ctx: StepContext, higher: list, levels: dict, snap: BlockSnapshot | None,
                               plan_a: pd.Series, now: pd.Timestamp) -> dict[str, float | None]:
        """Send the raises ``higher`` ((session, limit [A]) pairs) as the room they need is
        there: at once those that fit beside what lowered cars that have not followed yet may
        still draw (:class:`~nowblock.control.following.FollowRoom`), the others as those cars'
        readings show them within their new limits, the rest once their follow time is over.
        ``levels``: session -> [A] what each raised car draws until its raise is sent."""
        self._forget_followed(ctx)
        limits = dict(higher)
        over = {s: low.old_a - float(plan_a.get(s, low.limit_a)) for s, low in self.lowered.items()}
        if not any(a > 1e-6 for a in over.values()):
            out = await self._wave(ctx.cars, higher, now)
            self._raised(limits)
            return out
        # A car still on an earlier lowering draws more than either limit: its raise needs no room.
        up = {s: 0.0 if s in ctx.untrusted or s in self.lowered else lim - levels.get(s, lim) for s, lim in higher}
        rows, slack = fuse_rows(ctx, list(dict.fromkeys([*over, *up])), snap, plan_a, self.loop.offsets,
                                getattr(self.state, "site", None))
        room = FollowRoom(rows, slack, over, up)
        since = self._clock()
        go = room.release()
        out: dict[str, float | None] = {}
        if room.waiting:
            log.info("raises of %s wait for %s to follow their lowered limits (at most %.0f s)",
                     ", ".join(room.waiting), ", ".join(sorted(room.over_a)), self.settings.follow_s)
            out.update(await self._wave(ctx.cars, self._first_limits(ctx, room, levels, limits, snap), now))
        while True:
            if go:
                out.update(await self._wave(ctx.cars, [(s, limits[s]) for s in go], now))
                self._raised({s: limits[s] for s in go})
            if not room.waiting:
                return out
            if self._new_session(ctx, since):
                # A car that started meanwhile waits for this step: its step plans the raises
                # again, and they wait there for the same lowered cars.
                log.info("raises of %s left to the next step: a new transaction started", ", ".join(room.waiting))
                return out
            await asyncio.sleep(self.follow_poll_s)
            for s in self._forget_followed(ctx):
                room.followed(s)
            go = room.release()

    def _first_limits(self, ctx: StepContext, room: FollowRoom, levels: dict, limits: dict,
                      snap: BlockSnapshot | None) -> list:
        """(session, limit [A]) for each new car whose raise waits: a first TxProfile now (every
        transaction gets one within seconds of its start), at what its charger holds plus the
        part of its raise that fits (in pilot steps; none below its minimum)."""
        step = float(snap.current_step_a) if snap is not None and snap.current_step_a else 1.0
        out = []
        for sid in room.waiting:
            if sid in self.loop.sent or sid not in levels:
                continue
            held = min(levels[sid], limits[sid])
            lim = min(math.floor((held + room.fit_a(sid)) / step + 1e-9) * step, limits[sid])
            if lim < float(ctx.cars.at[sid, "min_current_a"]) or lim < held:
                lim = held
            room.take(sid, max(lim - held, 0.0))
            out.append((sid, lim))
        return out

    def _new_session(self, ctx: StepContext, since: datetime) -> bool:
        """Whether a transaction learnt of since ``since`` [our clock] runs that the step did not
        see (its first limit waits for this step)."""
        running = getattr(self.state, "running", None)
        return callable(running) and any(t.session_id not in ctx.cars.index and t.known_at is not None
                                         and t.known_at >= since for t in running())

    def _follows(self, cars: pd.DataFrame, sid: str, low: Lowered) -> bool:
        find = getattr(self.state, "transaction", None)
        if find is None or "transaction_id" not in cars:
            return False
        t = find(str(cars.at[sid, "charge_point_id"]), cars.at[sid, "transaction_id"])
        return follows(t, low, self.loop.offsets.get(sid, 0.0) + self.settings.over_draw_a)

    def _clock(self) -> datetime:
        """Now by the live state's clock (what stamps the readings and the answers)."""
        clock = getattr(self.state, "clock", None)
        t = clock() if callable(clock) else None
        return t if isinstance(t, datetime) else datetime.now(timezone.utc)

    def _track_lowerings(self, ctx: StepContext, lower: list, out: dict | None, levels: dict,
                         sent_at: datetime) -> None:
        """Keep each lowering of a trusted car sent in ``lower`` ((session, limit [A]) pairs;
        answered: in ``out``, or None: about to be sent) whose car may draw more than its new
        limit (``levels``, [A]: :func:`~nowblock.control.following.may_draw_a`) until it
        follows (:attr:`lowered`)."""
        if not lower:
            return
        until = self._clock() + timedelta(seconds=self.settings.follow_s)
        until_s = asyncio.get_running_loop().time() + self.settings.follow_s
        for sid, lim in lower:
            if (out is not None and sid not in out) or sid in ctx.untrusted:
                continue
            prev = self.lowered.get(sid)
            old = max(levels.get(sid, lim), prev.old_a if prev is not None else 0.0)
            if old <= lim + 1e-6:
                self.lowered.pop(sid, None)
                continue
            self.lowered[sid] = Lowered(float(lim), float(old), prev.since if prev is not None else sent_at,
                                        until, until_s)

    def _raised(self, limits: dict) -> None:
        """Raises sent to cars still on a lowering: their new limit, forgotten once above what
        they drew."""
        for sid, lim in limits.items():
            low = self.lowered.get(sid)
            if low is None:
                continue
            if lim >= low.old_a - 1e-6:
                del self.lowered[sid]
            else:
                low.limit_a = float(lim)

    def _forget_followed(self, ctx: StepContext) -> list[str]:
        """Forget the lowerings whose car follows (a reading since within its limit plus
        ``over_draw_a``), whose follow time is over, or that left or are untrusted now (counted
        at what they draw); returns their sessions."""
        now, now_s = self._clock(), asyncio.get_running_loop().time()
        out = []
        for sid, low in list(self.lowered.items()):
            if (sid not in ctx.cars.index or sid in ctx.untrusted or now >= low.until or now_s >= low.until_s
                    or self._follows(ctx.cars, sid, low)):
                del self.lowered[sid]
                out.append(sid)
        return out

    async def _wave(self, cars: pd.DataFrame, batch: list, now: pd.Timestamp, also=()) -> dict[str, float | None]:
        """Send ``batch`` ((session, limit [A]) pairs) at once and wait up to ``send_wait_s`` for
        the answers (and for the tasks of ``also``, (station, task) pairs): session -> the limit
        [A] its charger accepted (None: not known, so counted at what the live state says it
        holds), for every car sent or still waiting to be."""
        out: dict[str, float | None] = {}
        tasks = {}
        for sid, lim in batch:
            if sid in self.loop.pending_a:  # its charger has not answered the last one: nothing more now
                out[sid] = None
                continue
            tasks[sid] = (self._spawn(self._send(cars, sid, lim, now)), lim)  # stopped with the controller
        if not tasks and not also:
            return out
        await asyncio.wait([t for t, _ in tasks.values()] + [t for _, t in also], timeout=self.send_wait_s)
        for sid, (task, lim) in tasks.items():
            if task.done():
                ok, a = task.result()
                if ok:
                    out[sid] = a
                continue
            log.warning("%s: no answer to its limit of %.1f A within %.1f s; counted at the higher of it and "
                        "what it holds", sid, lim, self.send_wait_s)
            prev = self.loop.sent.get(sid)
            self.loop.record_sent(sid, lim, now)  # sent: if its charger keeps more, it is holding
            # Until it answers, the charger may apply either limit: the next steps count it at the
            # higher (ControlStep.prepare: "holding"), and the lower is not freed for the others.
            self.loop.pending_a[sid] = float(lim)
            task.add_done_callback(lambda t, sid=sid, prev=prev: self._answered(sid, t, prev))
            out[sid] = None
        return out

    @property
    def pending(self) -> dict[str, float]:
        """Session -> the limit [A] sent whose answer has not come (the control step's book,
        :attr:`nowblock.loop.step.ControlStep.pending_a`)."""
        return self.loop.pending_a

    def _answered(self, sid: str, task: asyncio.Task, prev) -> None:
        """A send left waiting got its answer (or failed): it no longer counts as pending; a
        failed one is no longer booked as sent, so the next step sends its limit again."""
        self.loop.pending_a.pop(sid, None)
        failed = task.cancelled() or task.exception() is not None or not task.result()[0]
        if failed:
            if prev is None:
                self.loop.sent.pop(sid, None)
            else:
                self.loop.sent[sid] = prev

    async def _send(self, cars: pd.DataFrame, sid: str, limit_a: float, now: pd.Timestamp) -> tuple[bool, float | None]:
        row = cars.loc[sid]
        # Named, so nothing goes out once the car's transaction has ended (it left while the step
        # ran): without it the central system's guard against a departed car's limit never applied.
        tx = row.get("transaction_id")
        named = {} if tx is None or (not isinstance(tx, str) and pd.isna(tx)) else {"transaction_id": tx}
        if named and not self._names_transactions():
            named = {}
        try:
            rec = await self.central.set_limit(row["charge_point_id"], int(row["connector_id"]), limit_a,
                                               validity_s=int(math.ceil(self.profile_validity_s)), **named)
        except Exception as exc:  # noqa: BLE001 - an unreachable charger is normal weather
            log.warning("%s: limit %.1f A not sent: %s", sid, limit_a, exc)
            return False, None
        attempts = getattr(rec, "attempts", None) or []
        if attempts and all(answer == "Disconnected" for _, answer in attempts):
            # Its station went away while the step ran: booked as sent, the limit was not sent
            # again once it was back (the controller's fresh start after a disconnect undone).
            log.info("%s: limit %.1f A not sent: its station is not connected", sid, limit_a)
            return False, None
        self.loop.record_sent(sid, limit_a, now)
        accepted = getattr(rec, "accepted_a", rec)
        if accepted is not None:  # a restored car is trusted only once it took a limit of ours
            self.loop.record_accepted(sid, limit_a, now)
        return True, None if accepted is None else float(accepted)

    def _power_for_fewer_phases(self, cars: pd.DataFrame, sids) -> dict[str, float]:
        """Cars whose charger holds a limit in watts for fewer phases than the car now draws on
        (a car seen on 1 phase that went on on 3): session -> what it draws [A per phase]. Such a
        limit goes out again whatever was sent: the same amperes are then the power of all its
        phases. Unchanged, it was never re-sent, and a 32 A limit gave 10.67 A per phase."""
        out: dict[str, float] = {}
        off = getattr(self.state, "tx_power_phases_off", None)
        if off is None or "transaction_id" not in cars:
            return out
        for sid in sids:
            row = cars.loc[sid]
            try:
                n = off(row["charge_point_id"], int(row["connector_id"]), row["transaction_id"])
            except Exception:  # noqa: BLE001 - a stand-in state without stations: nothing to re-send
                continue
            if n > 0:
                meas = float(row.get("measured_current_a", math.nan))
                out[sid] = meas if math.isfinite(meas) else 0.0
        return out

    def _names_transactions(self) -> bool:
        # CentralSystem.set_limit takes transaction_id; a stand-in that does not (an older test
        # double) is called without it, said once: its departed cars' limits are not held back.
        if self._named is None:
            try:
                params = inspect.signature(self.central.set_limit).parameters.values()
            except (TypeError, ValueError):
                params = []
            self._named = any(p.name == "transaction_id" or p.kind is p.VAR_KEYWORD for p in params)
            if not self._named:
                log.warning("%s.set_limit takes no transaction_id: a limit decided for a car that left may reach "
                            "its connector", type(self.central).__name__)
        return self._named

    def in_force_a(self, cars: pd.DataFrame, sid: str, accepted: float | None) -> float:
        """The limit [A] a charger applies after a dispatch: what it accepted, else what the live
        state knows it holds, else (no profile at all) the most the car may draw; for a car whose
        last limit is not answered yet, at least that limit (it may apply it any moment)."""
        held = self._in_force_a(cars, sid, accepted)
        waiting = self.loop.pending_a.get(sid)
        return held if waiting is None else max(held, min(waiting, float(cars.loc[sid, "max_current_a"])))

    def _in_force_a(self, cars: pd.DataFrame, sid: str, accepted: float | None) -> float:
        if accepted is not None:
            return float(accepted)
        row = cars.loc[sid]
        try:
            held = self.state.applied_limit_a(row["charge_point_id"], int(row["connector_id"]))
        except Exception:  # noqa: BLE001 - an unknown station counts at its maximum
            held = None
        return float(row["max_current_a"]) if held is None else min(float(held), float(row["max_current_a"]))

    def counted_a(self, targets: pd.Series, ctx: StepContext, accepted: dict) -> dict[str, float]:
        """[A] Per planned car, the limit it is counted at after the dispatch: what it accepted,
        else what the live state knows it holds, else (no profile at all) the most it may draw;
        an untrusted car at least at what it may really draw."""
        out = {}
        for sid, a in targets.items():
            held = self.in_force_a(ctx.cars, sid, accepted.get(sid)) if sid in accepted else None
            if held is None:
                held = self.in_force_a(ctx.cars, sid, None) if sid in ctx.untrusted else float(a)
            if sid in ctx.untrusted:
                held = max(held, float(ctx.committed_a.get(sid, held)))
            out[sid] = float(held)
        return out

    async def repair(self, snap: BlockSnapshot, ctx: StepContext, targets: pd.Series, kept: dict,
                     now: pd.Timestamp) -> dict[str, float]:
        """Chargers in ``kept`` (session -> [A]) hold more than they were sent in this very step:
        the others are made safe around what those hold and lowered at once; returns what each
        of the others is counted at [A]."""
        log.warning("limit not lowered on %s; repairing the others", ", ".join(sorted(kept)))
        fixed = ctx.cars.loc[list(kept)]
        base = ctx.safety if ctx.safety is not None else snap
        # A held car whose excess is not known yet may draw its reserve over what it holds
        # (counted at 32 A alone, the other repaired to 6 + 2 A on 40 A: 41.0 A drawn).
        held_a = [a + self.loop.reserve_a.get(sid, 0.0) for sid, a in kept.items()]
        site = cl.reserve_unobserved(base.site, fixed["cp_index"], fixed["phases"], held_a)
        rest = base.cars.drop(index=[s for s in kept if s in base.cars.index])
        # The fuse rows here; the unbalance rows below, with the held cars in them (on these
        # rows alone, the rest could be lowered into an unbalance the held cars make worse).
        base_kw = ctx.base_load_kw if ctx.base_load_kw is not None else snap.base_load_kw  # not the policy's copy
        snap2 = BlockSnapshot(now, replace(site, max_unbalance_a=None), snap.step, rest, base_kw,
                              snap.prices_eur_per_kwh, snap.current_step_a)
        # In what the snapshot plans a car in: a new session's limit plus its reserve (a car sent
        # its limit was held at 0 A against bounds that include it, and counted without it).
        over = pd.Series(ctx.planned_over_a, dtype=float).reindex(targets.index).fillna(0.0)
        planned = targets + over.where(targets > 0, 0.0)
        x2 = make_safe(snap2, planned.reindex(rest.index))
        if snap.site.max_unbalance_a is not None:
            # Every car not repaired here counts at its offer: the held ones at what they hold,
            # the untrusted ones (not in ``base`` under a safety snapshot) at what they were sent.
            others = {sid: float(planned.get(sid, 0.0)) for sid in snap.cars.index if sid not in x2.index}
            x2 = _balanced_around(snap, x2, {**others, **kept})
        if ctx.planned_over_a:
            x2 = pd.Series(less_offsets(ctx.planned_over_a, snap2, x2.reindex(rest.index).to_numpy(float)),
                           index=rest.index)
        got = await self.send_waves(x2, ctx, now, only_lower=True)
        return {sid: self.in_force_a(ctx.cars, sid, got[sid]) if sid in got else float(x2[sid]) for sid in x2.index}

    async def escalate(self, targets: pd.Series, ctx: StepContext, now: pd.Timestamp,
                       counted: dict | None = None) -> None:
        """Station maximum for cars past their grace, kept while they charge; an alarm for cars
        past the alarm time.

        Parameters
        ----------
        targets : pandas.Series
            [A per phase] The step's setpoint per session_id.
        ctx : StepContext
        now : pandas.Timestamp
        counted : dict, optional
            session_id -> [A] what each car is counted at after the dispatch
            (:meth:`counted_a`): a station maximum is never above what its cars are counted at,
            so a raise held back this step does not reach the station through its maximum.
        """
        for sid in self.escalation.to_escalate(now):
            if sid not in ctx.cars.index or sid not in targets.index:
                continue
            cp_id = str(ctx.cars.at[sid, "charge_point_id"])
            self.escalation.escalated.add(sid)
            if hasattr(self.central, "set_station_max"):
                kept = self.station_max.setdefault(cp_id, StationMax())
                kept.sessions.add(sid)
                kept.why = (sid, ctx.untrusted.get(sid), (now - self.escalation.since[sid]).total_seconds())
                kept.asked_a = None  # sent now, whatever was asked before
        self._keep_station_maxima(targets, ctx, now, counted=counted)
        for sid in self.escalation.to_alarm(now):
            self.escalation.alarmed.add(sid)
            if sid not in ctx.cars.index:
                continue
            self._alarm("not_following", now, session_id=sid, charge_point_id=str(ctx.cars.at[sid, "charge_point_id"]),
                        reason=ctx.untrusted.get(sid, ""), since=self.escalation.since[sid].isoformat(),
                        measured_a=float(ctx.cars.at[sid, "measured_current_a"]),
                        limit_a=float(targets.get(sid, np.nan)))

    def _keep_station_maxima(self, targets: pd.Series, ctx: StepContext, now: pd.Timestamp, *,
                             lower_only: bool = False, counted: dict | None = None) -> list:
        """Send each kept station maximum again where the step's limits at its station changed
        it (with ``lower_only``, only where they lowered it) or before it could expire; clear
        it once the cars it was sent for have left. Returns (station, task) pairs of the sends.

        A station maximum stays as long as a car it was sent for charges, also once that car
        seems to follow its limit: a car held by the station maximum cannot be told from one
        that follows its own limit. Sent once and left (an outside test's physics), it stayed
        at the sum of the limits at the time while the others' limits fell, so the car not
        following took what they gave up, and when it expired (its profile lives
        ``profile_validity_s``) that car, trusted by then, went back to its full draw: 58 A on
        a 40 A fuse until the next step.
        """
        out = []
        if not self.station_max:
            return out
        refresh_s = min(self.profile_validity_s / 2.0, self.profile_validity_s - 2.0 * self._step_gap_s())
        base = targets if counted is None else pd.Series(
            {s: min(float(a), float(counted.get(s, a))) for s, a in targets.items()}, dtype=float)
        for cp_id, kept in list(self.station_max.items()):
            kept.sessions &= set(ctx.cars.index)  # an offline car is observed, not planned
            if not kept.sessions:
                if not lower_only:
                    del self.station_max[cp_id]
                    self._spawn(self._clear_station_max(cp_id))
                continue
            if not kept.sessions & set(targets.index):
                continue  # its station is offline: nothing can be sent
            limit = station_allowance_a(cp_id, base, ctx)
            # Against the last one asked, else (that one failed) the last one accepted: with
            # ``lower_only`` (before the others' raises) only what lowers the station goes out.
            ref = kept.asked_a if kept.asked_a is not None else kept.held_a
            if ref is not None and limit >= ref - 0.05:
                if lower_only:
                    continue
                due = kept.at is None or (now - kept.at).total_seconds() >= refresh_s
                if kept.asked_a is not None and limit <= ref + 0.05 and not due:
                    continue
                if kept.task is not None and not kept.task.done():
                    continue  # a raise or a refresh waits for the last send's answer
            kept.asked_a = limit
            kept.task = self._spawn(self._station_max(cp_id, kept, limit, now))
            out.append((cp_id, kept.task))
        return out

    async def _station_max(self, cp_id: str, kept: "StationMax", limit_a: float, now: pd.Timestamp) -> bool:
        try:
            rec = await self.central.set_station_max(cp_id, limit_a, validity_s=int(math.ceil(self.profile_validity_s)))
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: station maximum not sent: %r", cp_id, exc)
            rec = None
        ok = rec is not None and getattr(rec, "purpose", None) is not None
        if kept.why is not None:
            sid, why, for_s = kept.why
            kept.why = None
            log.warning("%s: not following its limit (%s) for %.0f s; station maximum %.1f A: %s", sid, why, for_s,
                        limit_a, getattr(rec, "purpose", None) or "not accepted")
        elif ok:
            log.info("%s: station maximum %.1f A", cp_id, limit_a)
        if ok:
            kept.at, kept.held_a = now, float(limit_a)
        elif kept.asked_a == limit_a:
            kept.asked_a = None  # sent again by the next step
        return ok

    async def _clear_station_max(self, cp_id: str) -> None:
        clear = getattr(self.central, "clear_profiles", None)
        if clear is None:
            return  # it expires after profile_validity_s
        try:
            await clear(cp_id, profile_id=STATION_MAX_ID)
        except Exception as exc:  # noqa: BLE001 - it expires after profile_validity_s
            log.info("%s: station maximum not cleared: %r", cp_id, exc)

    def read_back(self, ctx: StepContext, now: pd.Timestamp) -> None:
        """Ask the chargers of cars that do not draw what they were given what they apply
        (GetCompositeSchedule, in the background, at most every ``readback_s`` per car): a
        station that applies less than it accepted is then planned at what it applies."""
        read = getattr(self.central, "read_applied_limit", None)
        if read is None or not len(ctx.cars):
            return
        cars = ctx.cars
        meas = cars["measured_current_a"].to_numpy(float)
        off = cars["offered_current_a"].to_numpy(float)
        odd = np.isfinite(meas) & cars["connected"].to_numpy(bool) & (
            (meas < off - self.settings.under_draw_a) | (meas > off + self.settings.over_draw_a))
        for sid in cars.index[odd]:
            last = self._read_at.get(sid)
            if last is not None and (now - last).total_seconds() < self.readback_s:
                continue
            self._read_at[sid] = now
            cp_id, conn = str(cars.at[sid, "charge_point_id"]), int(cars.at[sid, "connector_id"])
            self._spawn(self._read_one(read, cp_id, conn))
        for sid in [s for s in self._read_at if s not in cars.index]:
            del self._read_at[sid]

    @staticmethod
    async def _read_one(read, cp_id: str, connector_id: int) -> None:
        try:
            await read(cp_id, connector_id)
        except Exception as exc:  # noqa: BLE001 - a station that cannot tell is planned at what it accepted
            log.info("%s/%s: applied limit not read back: %r", cp_id, connector_id, exc)


@dataclass
class StationMax:
    """The station maximum kept on one station while cars it was sent for charge.

    ``sessions``: the cars (session ids) past their grace at the station; ``asked_a`` [A]: the
    last maximum sent (None: send it); ``held_a`` [A] and ``at``: the last one the station
    accepted, and when; ``task``:
    the last send; ``why``: (session, reason, for [s]) of the escalation still to be logged.
    """

    sessions: set = field(default_factory=set)
    asked_a: float | None = None
    held_a: float | None = None
    at: pd.Timestamp | None = None
    task: asyncio.Task | None = None
    why: tuple | None = None


def station_allowance_a(cp_id: str, targets: pd.Series, ctx: StepContext) -> float:
    """[A per phase] The station maximum for station ``cp_id`` when one of its cars does not follow
    its limit, from the step's limits for the station's cars (``targets``, session -> [A]; the one
    not following at the limit it was sent) and what is held for its idle connectors
    (``ctx.idle_reserved_a``, counted on every phase).

    A station maximum (ChargePointMaxProfile / ChargingStationMaxProfile) bounds the station's
    total on each of its phases: set at one car's limit, it capped every other car of a
    several-EVSE station too (a following car held at 8 A instead of its 15 A). It is the smallest
    over the station's phases that its cars load (its first phase for a 1-phase car, its first two
    for a 2-phase one) of the sum of the limits of the cars loading that phase, so that no phase of
    the station can draw more than the step reserved on it: with a 3-phase car at 15 A and a 1-phase
    car at 8 A the sum 23 A holds only on the first phase, and 23 A on the others would let the
    station's 3-phase car take 23 A where 15 A were reserved.
    """
    cars = ctx.cars
    mine = [s for s in targets.index if s in cars.index and cars.at[s, "charge_point_id"] == cp_id]
    limit = np.nan_to_num(targets.reindex(mine).to_numpy(float), nan=0.0)
    phases = np.clip(cars.loc[mine, "phases"].to_numpy(float), 1, 3) if mine else np.zeros(0)
    idle = ctx.idle_reserved_a
    idle_a = float(idle[idle.index.get_level_values(0) == cp_id].sum()) if len(idle) else 0.0
    loaded = [k for k in (1, 2, 3) if (phases >= k).any()] or [1]
    return float(min(limit[phases >= k].sum() for k in loaded)) + idle_a


def _balanced_around(snap: BlockSnapshot, x: pd.Series, held: dict) -> pd.Series:
    """``x`` (setpoints [A] of the cars that follow, by session) lowered until every row of
    ``snap`` (the unbalance limit with them) that they can mend holds, with the cars in ``held``
    (session -> [A]) counted at those currents; only lowers. A car of ``snap`` in neither
    counts at 0 A."""
    index = snap.cars.index
    full = x.reindex(index).fillna(0.0).to_numpy(float, copy=True)
    pinned = index.isin(list(held))
    full[pinned] = [float(held[s]) for s in index[pinned]]
    y = pd.Series(safe_setpoints_a(snap, full, held=pinned), index=index)
    return pd.Series(np.minimum(x.to_numpy(float), y.reindex(x.index).fillna(x).to_numpy(float)), index=x.index)
