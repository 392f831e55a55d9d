"""Sending a step's setpoints to the chargers: which limits go out, in which order, how often.

:func:`plan_waves` is pure: a limit that goes down (or a new car's, at most what its charger
already allows) leaves in the first wave, every raise in the second, once the first was
answered, so the block passes through no state worse than before. A limit unchanged since it
was sent is re-sent only before its profile could expire.

A car that does not follow its limit (it draws more, its charger kept a higher one, its meter
values are stale) gets its limit again with a growing pause, and after a grace the station is
escalated to a station-wide maximum, then reported (:class:`Escalation`). Chargers that ignore
limits are normal weather: they are logged and shown, never raised as errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd


def plan_waves(targets_a: pd.Series, sent: dict[str, tuple[float, pd.Timestamp]], offered_a: pd.Series,
               now: pd.Timestamp, *, refresh_s: float, resend=frozenset()) -> tuple[list, list]:
    """The limits to send now, in two waves.

    Parameters
    ----------
    targets_a : pandas.Series
        [A per phase] The step's setpoint per session_id.
    sent : dict
        session_id -> (limit last sent [A], when).
    offered_a : pandas.Series
        [A] The limit each charger applies now (for a car never sent one: its default).
    now : pandas.Timestamp
    refresh_s : float
        [s] An unchanged limit is re-sent once it is this old.
    resend : set
        Sessions whose limit goes out again whatever was sent (cars not following theirs).

    Returns
    -------
    lower, higher : list of (session_id, limit_a)
        The first wave (lowered limits and new cars at or below what they hold), then the raises;
        in each, cars never sent a limit first.
    """
    lower, higher = [], []
    for sid, limit in targets_a.items():
        limit = float(limit)
        prev = sent.get(sid)
        due = (prev is None or abs(prev[0] - limit) > 1e-6 or (now - prev[1]).total_seconds() >= refresh_s
               or sid in resend)
        if not due:
            continue
        ref = prev[0] if prev is not None else float(offered_a.get(sid, math.inf))
        (lower if limit <= ref + 1e-9 else higher).append((sid, limit))
    # Cars never sent a limit go first in their wave: with thousands of profiles in flight, a
    # new transaction's first TxProfile must not queue behind every refresh.
    first = lambda item: item[0] in sent  # noqa: E731 - False (new) sorts first; the sort is stable
    return sorted(lower, key=first), sorted(higher, key=first)


def planned_a(targets_a: pd.Series, ctx) -> pd.Series:
    """[A per phase] What the step's plan holds each car at: its limit, plus what it is planned
    in over it where it runs (``ctx.planned_over_a``: a new session's reserve, a meter's learnt
    offset; :class:`~nowblock.loop.step.StepContext`).

    The limits sent exclude it, the plan's snapshot counts it: the binding limits of the sent
    limits showed a reserved car 2 A of room on a full fuse, bound by its plan.

    Parameters
    ----------
    targets_a : pandas.Series
        [A per phase] The step's limits by session_id.
    ctx : StepContext
        The step's context.

    Returns
    -------
    pandas.Series
        [A per phase] By session_id, as ``targets_a``.
    """
    over = pd.Series(getattr(ctx, "planned_over_a", None) or {}, dtype=float).reindex(targets_a.index).fillna(0.0)
    return targets_a + over.where(targets_a > 0, 0.0)


#: When a limit is booked as sent once its station dropped: due again at once (:func:`send_again`).
LONG_AGO = pd.Timestamp("2000-01-01", tz="UTC")


def send_again(sent: dict[str, tuple[float, pd.Timestamp]], cp_id: str, *, anew: bool = False) -> None:
    """Make the limits sent to the cars at station ``cp_id`` due again (its connection dropped, or
    its clock estimate moved).

    Parameters
    ----------
    sent : dict
        session_id ("station:transaction") -> (limit last sent [A], when); updated in place.
    cp_id : str
        The station.
    anew : bool
        Forget them, as if never sent (its clock moved: a profile placed by the old estimate may
        have ended on arrival). Else (a drop) each is booked as sent long ago: due again, the same
        limit, not a new one. Forgotten, the limit sent again on its return was a change no
        reading had settled after, and a car ignoring its only limit of 0 A was judged against
        the limit before it, unknown, so against its maximum, and trusted (an outside test,
        session 38: the others raised to the full rating, 35 A on a 19 A grid for 33.5 s).
    """
    for sid in [s for s in sent if s.split(":")[0] == cp_id]:
        if anew:
            del sent[sid]
        else:
            sent[sid] = (sent[sid][0], LONG_AGO)


@dataclass
class Escalation:
    """How long a car has not followed its limit, and what was done about it.

    Parameters
    ----------
    backoff_s : float
        [s] First pause before a limit is sent again to a car that does not follow it; it
        doubles with every attempt, up to ``max_backoff_s``.
    grace_s : float
        [s] After this long not following, the station gets a station-wide maximum
        (ChargePointMaxProfile / ChargingStationMaxProfile) from the limits the step gives its
        connectors, the car's own included, phase by phase (see
        :func:`nowblock.control.sending.station_allowance_a`).
    alarm_s : float
        [s] After this long, the car is reported as an alarm (log WARNING, the store, the API).
    """

    backoff_s: float = 5.0
    max_backoff_s: float = 120.0
    grace_s: float = 60.0
    alarm_s: float = 180.0
    since: dict[str, pd.Timestamp] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    last_try: dict[str, pd.Timestamp] = field(default_factory=dict)
    escalated: set[str] = field(default_factory=set)
    alarmed: set[str] = field(default_factory=set)
    planned: set[str] | None = None  # ``present`` at the last update (None: all tracked)

    def update(self, untrusted: dict[str, str], now: pd.Timestamp, *, present=None, following=None) -> None:
        """Start the clock for cars that stopped following, stop it for those that follow again.

        Parameters
        ----------
        untrusted : dict
            session_id -> why it is not trusted now.
        present : set, optional
            Sessions planned now (None: all that are tracked). A tracked one not among them (its
            station is offline) keeps its clock as it stands: a station that drops its WebSocket
            and comes back restarted the clock of a car that ignores its limits, which was then
            never escalated (an outside test, session 38: drops of 2 s at 40, 80, 120 s, no
            station maximum in 150 s, 82.2 s without them). Sessions that ended are dropped by
            :meth:`forget`.
        following : set, optional
            Sessions whose settled measurement shows them within their limit. A car between a
            new limit and a settled measurement keeps its clock, so a charger that ignores its
            limits cannot reset it by being sent a new one. None: every car not untrusted.
        """
        self.planned = None if present is None else set(present)
        for sid in list(self.since):
            if present is not None and sid not in present:
                continue
            back = (sid in following) if following is not None else (sid not in untrusted)
            if back and sid not in untrusted:
                for d in (self.since, self.attempts, self.last_try):
                    d.pop(sid, None)
                self.escalated.discard(sid)
                self.alarmed.discard(sid)
        for sid in untrusted:
            self.since.setdefault(sid, now)

    def forget(self, keep) -> None:
        """Drop the sessions not in ``keep`` (the observed ones, offline cars' included): they ended.

        Parameters
        ----------
        keep : iterable of str
            Session ids still running.
        """
        keep = set(keep)
        for sid in [s for s in self.since if s not in keep]:
            for d in (self.since, self.attempts, self.last_try):
                d.pop(sid, None)
        self.escalated &= keep
        self.alarmed &= keep

    def due(self, now: pd.Timestamp) -> set[str]:
        """Sessions whose limit should go out again now (their pause is over)."""
        out = set()
        for sid in self.since:
            last = self.last_try.get(sid)
            pause = min(self.backoff_s * 2 ** max(self.attempts.get(sid, 0) - 1, 0), self.max_backoff_s)
            if last is None or (now - last).total_seconds() >= pause:
                out.add(sid)
        return out

    def tried(self, session_ids, now: pd.Timestamp) -> None:
        """Record that the limits of ``session_ids`` were sent again at ``now``."""
        for sid in session_ids:
            if sid in self.since:
                self.attempts[sid] = self.attempts.get(sid, 0) + 1
                self.last_try[sid] = now

    def to_escalate(self, now: pd.Timestamp) -> list[str]:
        """Sessions past their grace that have no station maximum yet."""
        return [s for s, t in self.since.items()
                if s not in self.escalated and (now - t).total_seconds() >= self.grace_s]

    def to_alarm(self, now: pd.Timestamp) -> list[str]:
        """Sessions past the alarm time not reported yet; an offline car's (not planned at the last
        :meth:`update`) once it is back, with a limit and a reading to report."""
        return [s for s, t in self.since.items() if s not in self.alarmed
                and (self.planned is None or s in self.planned) and (now - t).total_seconds() >= self.alarm_s]
