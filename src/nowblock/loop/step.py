"""One control step, the same for the simulator and the live loop.

:class:`ControlStep` turns an :class:`~nowblock.loop.observation.Observation` into the
policy's :class:`~nowblock.seam.BlockSnapshot` (:meth:`ControlStep.prepare`) and the policy's
answer into setpoints safe to send (:meth:`ControlStep.finish`). In between, the caller runs
the policy: the simulator directly (:meth:`ControlStep.run`), the live loop in a worker thread
with a time-out (:mod:`nowblock.control`); both fall back to a baseline heuristic on failure
(:func:`nowblock.loop.calling.call_policy`).

Trust. A car is *trusted* while its charger demonstrably applies the limit it was sent. A car
that draws clearly more than its limit, whose charger kept a higher limit than it was sent, or
whose meter values are stale is *untrusted*: the policy still plans it (it is sent a lowered
limit every step until it follows), but the other cars are made safe against what it may
really draw (its *committed* current). A car whose charger is offline cannot be sent anything:
it is not planned, and its committed current is reserved on every fuse above it, as is what a
car plugging in at an idle connector could draw before the next step.
"""

from __future__ import annotations

import logging
import time as _time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from nowblock.loop import closed_loop as cl
from nowblock.loop.needs import NeedsEstimation
from nowblock.loop.observation import Observation
from nowblock.loop.reserve import (held_before, learn_and_reserve, limits_before, paused_first, planned_with_reserve,
                                   unbalance_less_reserve)
from nowblock.loop.calling import bypasses_safety, call_policy
from nowblock.loop.restored import capped_at_draw, draw_caps_a, unconfirmed_mask
from nowblock.loop.trials import less_offsets, start_trials
from nowblock.seam import (BlockSnapshot, Policy, aligned_current_a, cached_constraint_rows, root_index,
                           safe_setpoints_a)

log = logging.getLogger(__name__)

#: Why a car is not trusted to follow its limit (see the module docstring).
UNTRUSTED_REASONS = ("stale", "over_draw", "holding", "offline")


@dataclass(frozen=True)
class StepContext:
    """What a step knows beside the policy's snapshot (typed; nothing rides in the snapshot).

    Attributes
    ----------
    cars : pandas.DataFrame
        Every observed car after needs estimation (index session_id).
    untrusted : dict
        session_id -> reason (one of :data:`UNTRUSTED_REASONS`) for every car not trusted.
    committed_a : pandas.Series
        [A per phase] What each untrusted car may really draw now (reserved for the others).
    idle_reserved_a : pandas.Series
        [A per phase] Held for a car plugging in at each idle connector.
    running : numpy.ndarray
        Per snapshot car: charging now, or with guessed needs and not known to be full (the
        hysteresis keeps it at its minimum where that fits).
    safety : BlockSnapshot or None
        The trusted cars in the block less what the untrusted ones may draw; None when every
        planned car is trusted (then the snapshot itself is the safety check).
    following : frozenset
        Sessions whose last measurement, taken with their limit in force long enough, shows
        them within it (trusted for a reason, not only for want of a settled measurement).
    base_load_kw : pandas.Series or None
        [kW] The observation's other load ahead (the policy's snapshot holds a copy).
    over_draw_ratio : pandas.Series
        Per car drawing more than its limit (untrusted for ``over_draw``): what it draws over
        what it is offered (> 1; inf for a car drawing at a 0 A limit). Its setpoint is divided
        by it, so that what it really draws fits its share of the plan.
    probing : frozenset
        Sessions offered their minimum on trial although seen drawing at a 0 A limit, whose
        answer to it has not settled yet (see :attr:`ControlStep.probe_due`).
    draw_caps_a : pandas.Series
        [A per phase] Per restored car not confirmed yet (:attr:`ControlStep.unconfirmed`): what
        it draws now, the most it is sent (its charger may hold a limit this process does not
        know of, above which any more may be a raise whose lowerings were not answered).
    planned_over_a : dict
        session_id -> [A] what a car is planned in on top of its limit (a new session's reserve,
        :mod:`nowblock.loop.reserve`; a meter's offset): the snapshot's bounds include it.
    """

    cars: pd.DataFrame
    untrusted: dict[str, str]
    committed_a: pd.Series
    idle_reserved_a: pd.Series
    running: np.ndarray
    safety: BlockSnapshot | None = None
    following: frozenset = frozenset()
    base_load_kw: pd.Series | None = None
    over_draw_ratio: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    probing: frozenset = frozenset()
    draw_caps_a: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    planned_over_a: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StepOutcome:
    """What one step decided.

    ``current_a`` [A per phase] by session_id for every planned car (what to send);
    ``policy`` the name of the policy that answered (the fallback's on trouble); ``status``
    ("ok", "empty", "failed: ...", "time-out ..."); ``plan`` the policy's plan over its horizon
    (slots x session_id [A]) or None; ``seconds`` per stage; :meth:`held_back` says why the
    block is below its limits.
    """

    time: pd.Timestamp
    current_a: pd.Series
    policy: str
    status: str
    snapshot: BlockSnapshot
    context: StepContext
    plan: pd.DataFrame | None = None
    seconds: dict = field(default_factory=dict)

    def held_back(self) -> dict:
        """Why the block is below its limits after this step (see :func:`held_back`)."""
        return held_back(self.snapshot, self.context, self.current_a)


class ControlStep:
    """The shared control step: observation -> snapshot -> (policy) -> safe setpoints.

    Parameters
    ----------
    settings : LoopSettings
        Margins, settle and staleness times of the closed loop (:mod:`~nowblock.loop.closed_loop`).
    needs : NeedsEstimation, optional
        How unreported needs are estimated (default: the fallback rule, no history).

    Notes
    -----
    The step keeps per session what it needs across steps: the last limit sent and when it
    changed (a measurement counts once the limit was in force ``settings.settle_s``), the
    allocation ceiling of a car that draws less than offered, and whether a car stopped drawing
    although offered its minimum (full). :meth:`record_sent` and :meth:`forget` keep it current.
    """

    def __init__(self, *, settings: cl.LoopSettings = cl.LoopSettings(), needs: NeedsEstimation | None = None) -> None:
        self.settings = settings
        self.needs = needs or NeedsEstimation()
        self.sent: dict[str, tuple[float, pd.Timestamp]] = {}
        self.changed_at: dict[str, pd.Timestamp] = {}
        self.before: dict[str, float] = {}  # session -> the limit before its last change [A]
        self.ceilings_a = pd.Series(dtype=float)
        self.full: set[str] = set()
        # Live: session -> a limit [A] sent, its answer not come yet (kept by nowblock.control.sending).
        self.pending_a: dict[str, float] = {}
        # session -> since when [ns] its offer is at least its minimum, and its energy then [kWh]
        self._on_since: dict[str, tuple[int, float]] = {}
        self._drew: set[str] = set()  # sessions seen drawing since then
        self._off_at: dict[str, int] = {}  # session -> when [ns] it was last seen offered below its minimum
        # session -> what it draws over its limit (> 1), once seen drawing over it; kept while it
        # still draws more than it is offered (a car sent its share over the ratio draws within
        # the tolerance of "over", and sent its share again, over it: it swung between both)
        self.over_ratio: dict[str, float] = {}
        # Live: sessions whose limit may go out again now (the escalation's retry is due); a car
        # among them seen drawing at a 0 A limit is offered its minimum on trial where the fuses
        # have room for its draw plus that minimum (nowblock.control sets it before each step).
        self.probe_due: set[str] = set()
        self.probes: dict[str, float] = {}  # session -> what it drew at 0 A before its trial [A]
        # session -> what its meter reads on top of its limit [A], once a trial showed it follow
        self.offsets: dict[str, float] = {}
        self.trial_candidates: dict[str, float] = {}  # this step: session -> its draw at 0 A [A], planned for a trial
        self._ignoring: set[str] = set()  # sessions whose last trial showed them ignoring their limit
        # Live, after a restart: sessions found running (restored from the store), whose chargers
        # may still apply what the dead process sent (or refuse every limit, unknown to this one).
        # Each is untrusted ("stale": counted at its maximum) and sent no more than it draws until
        # a limit sent by this process was accepted (``accepted``) and its meter settled under it
        # (an outside test: counted as trusted at once, a refusing car's 0 A went out with the
        # others' raises in one wave; 41 A on a 25 A feeder).
        self.unconfirmed: set[str] = set()
        self.accepted: dict[str, tuple[float, pd.Timestamp]] = {}  # session -> limit [A] accepted, when
        # Live: session -> [A per phase] what its station falls back to once its TxProfile
        # lapses, as the station holds it (inf: no limit, the car's maximum); an offline car
        # counts at least that (nowblock.control sets it before each step).
        self.offline_floor_a: dict[str, float] = {}
        # session -> what a trusted car draws over its limit [A] (within the over-draw tolerance),
        # reserved on every fuse above it (see :func:`~nowblock.loop.closed_loop.next_excess_a`).
        self.excess_a: dict[str, float] = {}
        # Sessions whose excess a reading told (the others reserved at over_draw_a); session -> what its
        # charger held before its first limit [A] (0: drew nothing; NaN unknown), what it applied then [A];
        # -> (when [ns], reading less limit [A]) of its last reading at its offer. See nowblock.loop.reserve.
        self.learnt: set[str] = set()
        self.reserve_a: dict[str, float] = {}
        self.first_from: dict[str, float] = {}
        self.first_held: dict[str, float] = {}
        self.offer_reads: dict[str, tuple[int, float]] = {}
        # Sessions last lowered (since changed_at); the others' last lowering (lowered_since).
        self._lowered: set[str] = set()
        self._lowered_at: dict[str, pd.Timestamp] = {}

    # ---- bookkeeping ---------------------------------------------------------------------------
    def record_sent(self, session_id: str, limit_a: float, time: pd.Timestamp) -> None:
        """Remember that ``limit_a`` [A] was sent to (and accepted for) ``session_id`` at ``time``."""
        prev = self.sent.get(session_id)
        self.sent[session_id] = (float(limit_a), time)
        if prev is None or abs(prev[0] - float(limit_a)) > 1e-6:
            if prev is None or float(limit_a) < prev[0]:  # a first limit may lower what it held
                self._lowered.add(session_id)
                self._lowered_at.pop(session_id, None)
            elif session_id in self._lowered and session_id in self.changed_at:  # a raise
                self._lowered.discard(session_id)
                self._lowered_at[session_id] = self.changed_at[session_id]
            self.changed_at[session_id] = time
            if prev is not None:
                self.before[session_id] = prev[0]

    def record_accepted(self, session_id: str, limit_a: float, time: pd.Timestamp) -> None:
        """Remember that the charger of ``session_id`` accepted ``limit_a`` [A] sent at ``time``
        (since when it holds that limit: the same limit accepted again keeps the first time)."""
        prev = self.accepted.get(session_id)
        if prev is None or abs(prev[0] - float(limit_a)) > 1e-6:
            self.accepted[session_id] = (float(limit_a), time)

    def lowered_since(self) -> dict[str, pd.Timestamp]:
        """session_id -> since when [UTC] its limit holds its last lowering (a raise after it does
        not move it). A reading before that may show a draw given up since; one before a raise is
        the car's draw (capped at the raised limit, an over-draw vanished and its overload alarm
        closed while it went on: an outside test)."""
        out = {sid: t for sid, t in self._lowered_at.items() if sid not in self._lowered}
        out.update({sid: self.changed_at[sid] for sid in self._lowered if sid in self.changed_at})
        return out

    def forget(self, keep) -> None:
        """Drop what is kept for sessions not in ``keep`` (they ended)."""
        keep = set(keep)
        self.unconfirmed &= keep
        for d in (self.sent, self.changed_at, self.before, self.over_ratio, self.probes, self.offsets, self.accepted,
                  self.excess_a, self._lowered_at, self.first_from, self.first_held, self.reserve_a):
            for sid in [s for s in d if s not in keep]:
                del d[sid]
        self.full &= keep
        self._lowered &= keep
        self._drew &= keep
        self._ignoring &= keep
        self.learnt &= keep
        for d in (self._on_since, self._off_at):
            for sid in [s for s in d if s not in keep]:
                del d[sid]
        if len(self.ceilings_a):
            self.ceilings_a = self.ceilings_a[self.ceilings_a.index.isin(list(keep))]

    # ---- observation -> snapshot ---------------------------------------------------------------
    def settled(self, cars: pd.DataFrame, after_s: float | None = None) -> np.ndarray:
        """Per car: its last measurement was taken with its current limit in force at least
        ``after_s`` [s] (default ``settings.settle_s``); a car never sent a limit has had its
        charger's own since it plugged in (a car's first meter value is no settled draw: it
        may not have started yet)."""
        last = _ns(cars["last_meter"])
        since = np.array([self.changed_at[s].value if s in self.changed_at else _NAT for s in cars.index.tolist()],
                         dtype=np.int64)
        since = np.where(since != _NAT, since, _ns(cars["arrival"]))
        wait_ns = (self.settings.settle_s if after_s is None else after_s) * 1e9
        return (last != _NAT) & (since != _NAT) & (last - since >= wait_ns)

    def prepare(self, obs: Observation) -> tuple[BlockSnapshot, StepContext]:
        """The policy's snapshot of ``obs`` and the step's context (see the module docstring)."""
        now, site, s = obs.time, obs.site, self.settings
        cars = obs.cars
        col = {c: obs.column(c) for c in _NUMERIC}
        settled = self.settled(cars)
        self._track_full(cars, col, settled, now)
        if len(cars):
            cars = self.needs.fill(cars, now, full=self.full, step=obs.step)
        n = len(cars)
        connected = col["connected"].astype(bool)
        offered = col["offered_current_a"].astype(float)
        measured = col["measured_current_a"].astype(float)
        max_a = col["max_current_a"].astype(float)
        min_a = col["min_current_a"].astype(float)
        ids_all = cars.index.tolist()
        # A car that has not sent a meter value yet is stale only once its session is that old.
        last = _ns(cars["last_meter"])
        ref = np.where(last != _NAT, last, _ns(cars["arrival"]))
        stale = ((now.value - ref) > s.stale_after_s * 1e9) & connected
        restored = unconfirmed_mask(self, cars, last, measured, offered) if self.unconfirmed else np.zeros(n, bool)
        stale = stale | (restored & connected)
        # Over its limit: once the limit had time to act, or at once when the draw is above both
        # the new limit and the one before it (a car cannot legitimately exceed either).
        before = limits_before(self, cars.index, connected, offered, measured, max_a)
        above = np.isfinite(measured) & np.isfinite(offered) & (measured > offered + s.over_draw_a)
        over = above & (settled | ~(measured <= before + s.over_draw_a)) & connected & ~stale
        # A car on trial at its minimum (it drew at a 0 A limit) is judged once its draw at the
        # trial settled: a reading that rose with its limit is a meter reading a constant offset
        # on top of a car that follows (counted, and sent, with that offset from then on); one
        # that did not is a car ignoring its limit (back to 0 A, tried again at its next retry).
        # Until then it counts as drawing what it drew at 0 A on top of its offer.
        for sid in [x for x in self.probes if x in self.changed_at]:
            if sid not in cars.index:
                del self.probes[sid]
                continue
            i = cars.index.get_loc(sid)
            if settled[i]:
                rise = measured[i] - self.probes[sid]
                # Only a trial whose minimum came into force tells anything: refused by the charger
                # or zeroed by the unbalance pass, a flat reading at 0 A "rose" by 0 = the limit.
                tried = np.isfinite(offered[i]) and offered[i] >= min_a[i] - 0.05
                if tried and np.isfinite(rise) and offered[i] - s.under_draw_a <= rise <= offered[i] + s.over_draw_a:
                    self.offsets[sid] = self.probes[sid]
                    log.info("%s: follows its limit with %.1f A read on top of it", sid, self.offsets[sid])
                    self.over_ratio.pop(sid, None)
                else:
                    self.over_ratio[sid] = np.inf  # ignores it: held at 0 A until its next trial
                    self._ignoring.add(sid)
                del self.probes[sid]
        trial = cars.index.isin(list(self.probes)) & connected & ~stale
        offset = np.array([self.offsets.get(x, 0.0) for x in ids_all], dtype=float)
        if self.offsets:
            # Within its limit once its offset is taken off: it follows, and is trusted; it is
            # planned in what it reads (the policy's and the safety net's rows count that) and
            # sent its share less the offset (finish), not divided by a ratio.
            beyond = np.isfinite(measured) & (measured - offset > offered + s.over_draw_a)
            for sid in cars.index[beyond & (offset > 0)]:
                del self.offsets[sid]  # draws over its limit beyond the offset: an over-drawer
            offset = np.array([self.offsets.get(x, 0.0) for x in ids_all], dtype=float)
            over = over & ~(offset > 0)
        over = over | trial
        last_sent = np.array([self.sent[x][0] if x in self.sent else np.nan for x in ids_all], dtype=float)
        # A charger found holding more than it was last sent (it answered but did not apply it), or
        # one that has not answered a limit yet (it may apply it any moment: counted at the higher).
        pending = np.array([self.pending_a.get(x, np.nan) for x in ids_all], dtype=float)
        holding = connected & ~stale & ~over & ((offered > last_sent + 0.05) | np.isfinite(pending))  # NaN: False
        offline = ~connected
        untrusted = stale | over | holding | offline
        cp_index = col["cp_index"].astype(np.int64)
        phases = col["phases"].astype(np.int64)
        committed = np.zeros(n)
        if untrusted.any():
            meas0 = np.nan_to_num(measured, nan=0.0)
            # No limit known, or one only a process before this may have sent: its maximum.
            in_force = np.where(col["limit_known"].astype(bool) & ~restored, offered, max_a)
            if self.offline_floor_a and offline.any():
                # Its TxProfile lapses while nobody can renew it, then its station applies what
                # it falls back to: counted at its 8 A TxProfile, an offline car drew its 13 A
                # fail-safe beside the others' 30 A, 43 A on a 40 A grid until the next step.
                floor = np.array([self.offline_floor_a.get(x, 0.0) for x in ids_all], dtype=float)
                in_force = np.where(offline, np.maximum(in_force, floor), in_force)
            committed = np.select([over, holding], [np.maximum(meas0 + s.margin_a, offered), np.fmax(offered, pending)],
                                  default=np.minimum(np.maximum(in_force, meas0), np.maximum(max_a, meas0)))
            if trial.any() or self.offsets:
                at_zero = np.array([self.probes.get(x, 0.0) for x in ids_all], dtype=float) + offset
                committed = np.where(trial | (offset > 0), np.maximum(committed, at_zero + offered + s.margin_a),
                                     committed)
        idle = obs.idle_defaults_a[obs.idle_defaults_a > 0] if len(obs.idle_defaults_a) else obs.idle_defaults_a
        # What a trusted car draws over its limit (within the tolerance) is real: reserved.
        mine = connected & ~untrusted & ~(offset > 0) & ~trial  # its own draw, its limit followed
        excess = cl.next_excess_a(np.array([self.excess_a.get(x, 0.0) for x in ids_all], dtype=float), measured,
                                  offered, held_before(self, cars.index, before, last), min_a, settled, mine)
        self.excess_a = {sid: float(e) for sid, e in zip(ids_all, excess) if e > 0}
        # Until a reading tells it, a car may draw up to over_draw_a over its limit unseen (five new
        # sessions at their limit + 1.5 A held a 40 A grid at 43 A for 19 s: an outside test).
        excess = learn_and_reserve(self, cars.index, excess, mine, settled, last, offered, measured, min_a)
        extra = excess > 0
        policy_site = site
        if offline.any() or len(idle) or extra.any():
            # Offline chargers cannot be planned: reserve what they may draw, and the idle connectors'.
            # A trusted car drawing a little over its limit draws that on top of any share: reserved.
            idle_cp = site.cp_index(idle.index.get_level_values("charge_point_id")) if len(idle) else np.zeros(0, np.int64)
            policy_site = cl.reserve_unobserved(
                site, np.concatenate([cp_index[offline], idle_cp, cp_index[extra]]),
                np.concatenate([phases[offline], site.cp_phases[idle_cp], phases[extra]]),
                np.concatenate([committed[offline], idle.to_numpy(float), excess[extra]]))
        if self.reserve_a:  # planned at limit + reserve, it may draw its limit: a range on the unbalance rows
            policy_site = unbalance_less_reserve(policy_site, self.reserve_a, cars.index, cp_index, phases)
        trusted = ~untrusted[connected]
        ids = cars.index[connected]
        prev = self.ceilings_a.reindex(ids).to_numpy(float) if len(self.ceilings_a) else None
        ceil = cl.next_ceilings_a(min_a[connected], max_a[connected], prev, measured[connected],
                                  offered[connected], settled[connected], s)
        if not trusted.all():  # only trusted cars' measurements move their ceilings
            keep = np.full(len(ids), np.nan) if prev is None else prev
            ceil = np.where(trusted, ceil, np.where(np.isfinite(keep), keep, max_a[connected]))
        self.ceilings_a = pd.Series(ceil, index=ids, name="ceiling_a")
        hi = max_a[connected]
        lo = min_a[connected]
        capped = np.clip(ceil, np.minimum(lo, hi), hi)
        over_ratio = self._over_ratio(cars.index, over, settled, measured, offered, before)
        if len(over_ratio):
            # A car drawing over its limit is planned in what it draws (its share is divided by
            # its ratio in finish): at most its draw now plus a ceiling's raise. Planned at its
            # maximum, its share went nowhere once divided (a car drawing 8 A at a 0 A limit
            # was planned 22 A that the others waited for, found by an outside test).
            pos = ids.get_indexer(over_ratio.index)
            pos = pos[pos >= 0]  # an offline car is not planned
            meas_c = np.nan_to_num(measured[connected], nan=0.0)
            capped = capped.copy()
            capped[pos] = np.minimum(capped[pos], np.maximum(meas_c[pos] + s.raise_step_a, 0.0))
        if self.offsets:
            # A car read with an offset is planned from what it reads, a ceiling's raise at a time
            # (its ceiling, not moved while untrusted, stayed where its 0 A left it).
            # In what it reads: its minimum plus the offset is what it takes to run it at all.
            pos = ids.get_indexer([x for x in self.offsets if x in ids])
            off_c = np.array([self.offsets[x] for x in ids[pos]], dtype=float)
            meas_c = np.nan_to_num(measured[connected], nan=0.0)
            capped = capped.copy()
            capped[pos] = np.clip(meas_c[pos] + s.raise_step_a, lo[pos] + off_c, hi[pos] + off_c)
            lo_plan = lo.copy()
            lo_plan[pos] += off_c
        if self.reserve_a:  # planned in what it may draw while its excess is not known
            capped, lo_plan = planned_with_reserve(self.reserve_a, ids, capped, lo_plan if self.offsets else lo)
        # A car held at 0 A although it draws, whose retry is due, is planned at its draw plus
        # its minimum (and a margin) or nothing: what it may take if offered its minimum.
        self.trial_candidates = {x: float(np.nan_to_num(measured[cars.index.get_loc(x)]))
                            for x in over_ratio.index if x in self.probe_due and x not in self.probes
                            and np.isinf(over_ratio[x]) and x in ids}
        if self.trial_candidates:
            pos = ids.get_indexer(list(self.trial_candidates))
            need = lo[pos] + np.array(list(self.trial_candidates.values())) + s.margin_a
            capped = capped.copy()
            capped[pos] = need
            lo_plan = lo_plan if self.offsets or self.reserve_a else lo.copy()
            lo_plan[pos] = need
        policy_cars = cars if connected.all() else cars.loc[connected]
        planned_as_read = bool(self.offsets or self.trial_candidates or self.reserve_a)  # min/max changed below
        if (capped != hi).any() or planned_as_read:
            policy_cars = policy_cars.copy(deep=False)
            policy_cars["max_current_a"] = capped
            if planned_as_read:
                policy_cars["min_current_a"] = lo_plan
        incidence = None if obs.incidence_a is None or not n else (
            np.asarray(obs.incidence_a)[:, connected] if not connected.all() else obs.incidence_a)
        arrays = None
        if obs.arrays is not None and connected.all() and cars is obs.cars and not planned_as_read:
            arrays = {**obs.arrays, "max_current_a": capped}
        # The policy's series are copies: one that edits them in place (``base_load_kw -= ...``, the
        # same object under pandas' copy-on-write) must not move the rows of the safety snapshot,
        # the repair or the untrusted cars' reservations, which read the observation's.
        snap = BlockSnapshot(time=now, site=policy_site, step=obs.step, cars=policy_cars,
                             base_load_kw=obs.base_load_kw.copy(),
                             prices_eur_per_kwh=None if obs.prices_eur_per_kwh is None else obs.prices_eur_per_kwh.copy(),
                             current_step_a=float(obs.current_step_a), incidence_a=incidence, car_arrays=arrays)
        snap = paused_first(self, snap)  # a new car paused for its reserve runs first, to be read
        safety = None
        doubt = untrusted[connected]
        if doubt.any():
            safety_site = cl.reserve_unobserved(policy_site, cp_index[connected][doubt], phases[connected][doubt],
                                                committed[connected][doubt])
            safety = BlockSnapshot(time=now, site=safety_site, step=obs.step, cars=policy_cars[trusted],
                                   base_load_kw=obs.base_load_kw, prices_eur_per_kwh=obs.prices_eur_per_kwh,
                                   current_step_a=float(obs.current_step_a),
                                   incidence_a=None if incidence is None else np.asarray(incidence)[:, trusted])
        if len(policy_cars):
            # What the safety net reads, computed before the policy sees the snapshot: read-only
            # arrays that a policy editing its snapshot's frames in place (base_load_kw -= ...)
            # cannot change, so the setpoints are made safe against the block as observed.
            snap.values("min_current_a"), snap.values("max_current_a"), snap.values("priority")
            cached_constraint_rows(snap)
        reason = np.full(n, "", dtype=object)
        for mask, why in ((holding, "holding"), (over, "over_draw"), (stale, "stale"), (offline, "offline")):
            reason[mask] = why
        running = _running(min_a[connected], offered[connected], measured[connected], s)
        # Unknown needs never stop a car that may still want energy: a car whose needs were
        # guessed is served at least at its minimum wherever that fits, until it stops drawing.
        guessed = ~cars["needs_known"].to_numpy(bool)[connected] & ~cars.index[connected].isin(list(self.full))
        running = running & trusted | guessed
        following = settled & np.isfinite(measured) & ~untrusted
        ctx = StepContext(
            following=frozenset(cars.index[following]),
            cars=cars,
            untrusted=dict(zip(cars.index[untrusted], reason[untrusted])),
            committed_a=pd.Series(committed[untrusted], index=cars.index[untrusted], dtype=float, name="current_a"),
            idle_reserved_a=idle,
            running=running,
            safety=safety,
            base_load_kw=obs.base_load_kw,
            over_draw_ratio=over_ratio,
            probing=frozenset(cars.index[trial]),
            draw_caps_a=draw_caps_a(self, cars.index[restored & connected], measured[restored & connected]),
            planned_over_a={**self.reserve_a, **self.offsets})
        return snap, ctx

    def _over_ratio(self, index: pd.Index, over, settled, measured, offered, before) -> pd.Series:
        """What each car seen drawing over its limit draws over it (see :class:`StepContext`)."""
        # Before its limit settled, the draw may still be the one of the limit before (a car
        # lowered from 25 to 20 A reads 30 A for a moment): over the higher of both.
        ref = np.where(settled, offered, np.fmax(offered, before))
        ratio = _draw_ratio(measured, ref)
        above = np.isfinite(measured) & np.isfinite(offered) & (measured > offered + 0.5)
        for i, sid in enumerate(index.tolist()):
            if sid in self.offsets:
                self.over_ratio.pop(sid, None)  # sent its share less its offset (finish)
            elif over[i] and sid in self._ignoring and sid not in self.probes:
                self.over_ratio[sid] = np.inf
            elif over[i]:
                # Before its limit settled the ratio may read low (over the higher, older limit):
                # it then only raises what is known (a review: lowered to a ratio of 1.35 from
                # 1.5, a car was sent 20 A and drew 30 A on a 27 A feeder).
                old = self.over_ratio.get(sid)
                r = float(ratio[i])
                self.over_ratio[sid] = r if settled[i] or old is None else max(old, r)
            elif sid in self.over_ratio and not above[i]:
                del self.over_ratio[sid]  # it follows its limit now
                self._ignoring.discard(sid)
        keep = [sid for sid in index.tolist() if sid in self.over_ratio]
        return pd.Series([self.over_ratio[s] for s in keep], index=pd.Index(keep, dtype=index.dtype), dtype=float)

    def _track_full(self, cars: pd.DataFrame, col: dict, settled: np.ndarray, now: pd.Timestamp) -> None:
        """Remember cars that stopped drawing although offered their minimum (full batteries).

        A car that drew since its offer rose to its minimum and then stops is full once its
        measurement settled; one that has not drawn since (not started yet after plugging in or
        after a pause, or one the process has not seen draw, after a restart) only once the offer
        has been at least its minimum for ``settings.start_s``: cars take seconds to a minute to
        start, and a car called full is offered nothing, so it could never show it was not (an
        outside test found both: a car whose first meter value read 0 A, and paused cars after a
        restart, taken for full for good)."""
        index = cars.index
        meas = col["measured_current_a"].astype(float)
        off = col["offered_current_a"].astype(float)
        on = np.isfinite(off) & (off >= col["min_current_a"].astype(float))
        kwh = np.nan_to_num(col["energy_delivered_kwh"].astype(float))
        last = _ns(cars["last_meter"])
        start_ns = max(self.settings.start_s, self.settings.settle_s) * 1e9
        waited = np.zeros(len(index), dtype=bool)
        for i, sid in enumerate(index.tolist()):
            if not on[i]:
                self._on_since.pop(sid, None)
                self._drew.discard(sid)
                self._off_at[sid] = now.value
                continue
            if sid not in self._on_since:
                # Since the limit that made it so was sent, where this process sent it (a car
                # first seen on at a step's observation was offered since the step before: from
                # then on, the simulator's cars full from the start were offered their minimum a
                # step longer, 4.6 points of demand met with unknown needs, found by an outside
                # test); else (after a restart) since now.
                sent = self.changed_at.get(sid)
                if sent is not None and sent.value < self._off_at.get(sid, _NAT):
                    sent = None  # its offer fell below the minimum after that send (a station maximum)
                self._on_since[sid] = (min(now.value, sent.value) if sent is not None else now.value, kwh[i])
            since, kwh0 = self._on_since[sid]
            if meas[i] > 1.0 or kwh[i] > kwh0 + 1e-3:  # a current, or energy taken since (meters differ)
                self._drew.add(sid)
            waited[i] = sid in self._drew or (last[i] != _NAT and last[i] - since >= start_ns)
        # A limit its charger has not answered yet is counted as offered (it may apply it any
        # moment) but may not be in force: a car at 0 A under it is not full (a 1.6 station
        # answering 3.5 s late, its car still at the 0 A it held before, was called full).
        unanswered = np.array([sid in self.pending_a for sid in index.tolist()], dtype=bool)
        full = settled & (meas < 0.5) & on & waited & ~unanswered
        if full.any() or self.full:
            self.full = (self.full | set(index[full])) - set(index[np.nan_to_num(meas) > 1.0])
            self.full &= set(index)

    # ---- answer -> safe setpoints --------------------------------------------------------------
    def finish(self, snap: BlockSnapshot, ctx: StepContext, answer: pd.Series, *, safe: bool = True) -> pd.Series:
        """Setpoints [A] to send, by session_id, for every car in ``snap``.

        The answer passes the safety net (:func:`~nowblock.seam.make_safe`), the hysteresis
        (:func:`~nowblock.loop.closed_loop.keep_running`) and the safety net again. An untrusted
        car is sent its share of that plan; the trusted cars are then made safe against what the
        untrusted ones may really draw. ``safe=False`` (only the uncontrolled
        reference policy of the simulator) returns the answer as it is.
        """
        index = snap.cars.index
        if len(index) == 0:
            return pd.Series(np.zeros(0), index=index, name="current_a", dtype=float)
        x = aligned_current_a(index, answer)
        if not safe:
            return pd.Series(np.nan_to_num(x, nan=0.0), index=index, name="current_a")
        x = safe_setpoints_a(snap, x)
        if ctx.running.any():
            x = safe_setpoints_a(snap, cl.keep_running_a(snap, x, ctx.running))
        if ctx.safety is not None:
            # An untrusted car is sent its share of the plan (what it should draw once it follows;
            # its charger's real draw does not depend on it); the trusted ones are made safe
            # against what the untrusted may really draw until then.
            doubt = index.isin(list(ctx.untrusted))
            fuses_only = _fuse_rows_only(ctx.safety)
            planned = x[~doubt]
            x[~doubt] = cl.refill_a(fuses_only, planned, safe_setpoints_a(fuses_only, planned))
            if snap.site.max_unbalance_a is not None:
                # The unbalance limit bounds what the chargers are offered, the untrusted cars'
                # offers included: checked on the whole vector (rows of the trusted cars alone
                # ignored the untrusted ones: a stale 2-phase car left a 1-phase car on the third
                # phase alone, paused it, and the offers broke the limit). Only lowers, so the
                # fuse rows above still hold.
                x = safe_setpoints_a(snap, x)
        if len(ctx.draw_caps_a):
            x = capped_at_draw(snap, x, ctx.draw_caps_a)
        if self.offsets or ctx.planned_over_a:
            x = less_offsets({**ctx.planned_over_a, **self.offsets}, snap, x)
        if len(ctx.over_draw_ratio):
            planned = np.array(x, dtype=float, copy=True)
            x = cl.scaled_for_over_draw(snap, x, ctx.over_draw_ratio)
            x = start_trials(self, snap, ctx, x, planned)
            if snap.site.max_unbalance_a is not None:
                # The unbalance rows counted the over-drawing cars at their share; sent less (or 0
                # A), a light phase may lose what balanced it (a review: phases 13 A apart under a
                # 5 A limit). Only lowers, so every row above still holds.
                x = safe_setpoints_a(snap, x)
        return pd.Series(x, index=index, name="current_a")

    def run(self, policy: Policy, obs: Observation, *, fallback: Policy) -> StepOutcome:
        """One synchronous step (the simulator's): prepare, the policy (fallback on failure), finish.

        Every setpoint returned is recorded as sent at ``obs.time`` (a simulated charger applies it).
        """
        t0 = _time.perf_counter()
        snap, ctx = self.prepare(obs)
        t1 = _time.perf_counter()
        decision, name, status = call_policy(policy, fallback, snap)
        t2 = _time.perf_counter()
        x = self.finish(snap, ctx, decision.current_a, safe=not bypasses_safety(policy))
        for sid, a in zip(x.index, x.to_numpy()):
            self.record_sent(sid, a, obs.time)
        t3 = _time.perf_counter()
        return StepOutcome(obs.time, x, name, status, snap, ctx, decision.plan_a,
                           {"prepare": t1 - t0, "policy": t2 - t1, "finish": t3 - t2})


_NUMERIC = ("connected", "offered_current_a", "measured_current_a", "max_current_a", "min_current_a",
            "limit_known", "cp_index", "phases", "energy_delivered_kwh")
_NAT = np.iinfo(np.int64).min


def _ns(column: pd.Series) -> np.ndarray:
    """A tz-aware datetime column as int64 nanoseconds since the epoch (NaT: int64's minimum)."""
    arr = column.array
    if not isinstance(arr, pd.arrays.DatetimeArray):
        arr = pd.DatetimeIndex(pd.to_datetime(column, utc=True)).array
    return arr.as_unit("ns").asi8


def _fuse_rows_only(snap: BlockSnapshot) -> BlockSnapshot:
    """``snap`` without its site's unbalance limit (its fuse rows alone)."""
    if snap.site.max_unbalance_a is None:
        return snap
    return replace(snap, site=replace(snap.site, max_unbalance_a=None))


def _running(min_a, offered_a, measured_a, settings: cl.LoopSettings) -> np.ndarray:
    """:func:`nowblock.loop.closed_loop.running_mask` on arrays."""
    offered = np.isfinite(offered_a) & (offered_a >= min_a - 1e-9) & (offered_a > 0)
    drawing = ~np.isfinite(measured_a) | (measured_a >= min(1.0, settings.margin_a))
    return offered & drawing


def held_back(snap: BlockSnapshot, ctx: StepContext, current_a: pd.Series) -> dict:
    """Why the block is below its limits after a step (for the log and the operator).

    Returns
    -------
    dict
        ``unused_a`` [A]: room left on the grid connection's tightest phase with every planned
        car at its setpoint; ``reserved_untrusted_a`` / ``reserved_idle_a`` [A]: the most held on
        one grid phase for untrusted or offline cars and for idle connectors;
        ``cars_waiting``: trusted cars below their maximum that still want energy; ``cars_at_max``;
        ``cars_done``: cars whose (reported or estimated) need is met; ``untrusted``: count by reason.
    """
    site = snap.site
    r = root_index(site)
    rows = slice(3 * r, 3 * r + 3)
    x = current_a.reindex(snap.cars.index).fillna(0.0).to_numpy(float)
    # An untrusted car loads the block with what it may really draw, not with what it was asked.
    taken = np.maximum(x, ctx.committed_a.reindex(snap.cars.index).fillna(0.0).to_numpy(float))
    load = snap.incidence()[rows] @ taken if len(x) else np.zeros(3)
    unused = float(np.min(snap.headroom_a()[r] - load))
    full_site = ctx.safety.site if ctx.safety is not None else snap.site

    def root_reserved(cp_ids, phases, amps) -> float:
        if len(amps) == 0:
            return 0.0
        load = full_site.fuse_phase_currents_a(np.asarray(amps, float), full_site.cp_index(cp_ids),
                                               np.asarray(phases, np.int64))[r]
        return float(load.max())

    cars = ctx.cars
    doubt = ctx.committed_a
    idle = ctx.idle_reserved_a
    mx = snap.values("max_current_a")
    remaining = snap.remaining_kwh
    step = float(snap.current_step_a)
    reasons: dict[str, int] = {}
    for why in ctx.untrusted.values():
        reasons[why] = reasons.get(why, 0) + 1
    return {
        "unused_a": round(max(unused, 0.0), 3),
        "reserved_untrusted_a": round(root_reserved(cars.loc[doubt.index, "charge_point_id"],
                                                    cars.loc[doubt.index, "phases"], doubt.to_numpy()), 3),
        "reserved_idle_a": round(root_reserved(idle.index.get_level_values("charge_point_id"),
                                               site.cp_phases[site.cp_index(idle.index.get_level_values(
                                                   "charge_point_id"))] if len(idle) else [],
                                               idle.to_numpy()), 3),
        "cars_waiting": int(((x < mx - step + 1e-9) & (remaining > 1e-3)
                             & ~snap.cars.index.isin(list(ctx.untrusted))).sum()),
        "cars_at_max": int((x >= mx - step + 1e-9).sum()),
        "cars_done": int((remaining <= 1e-3).sum()),
        "untrusted": reasons,
    }


def _draw_ratio(measured: np.ndarray, offered: np.ndarray) -> np.ndarray:
    """What cars draw over what they are offered (inf where offered nothing)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(offered > 0, measured / np.where(offered > 0, offered, 1.0), np.inf)
