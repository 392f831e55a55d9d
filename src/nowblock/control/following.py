"""Raises that wait for lowered cars to follow their new limits.

IEC 61851-1 gives a car up to 5 s to follow a lower PWM duty cycle. A lowered charger answers
its SetChargingProfile at once, but its car may draw its old current for those seconds: a raise
sent on the answer let a 40 A grid carry 60 A for 5 s when one car went 30 -> 10 A and another
10 -> 30 A (finding F4 of an outside test; tests/test_live_follow_before_raise.py).

:class:`Lowered` is what the dispatcher keeps of a lowering until a reading shows its car
within the new limit, or until ``follow_s`` has passed (a car that has not followed by then is
the untrusted path's business: it is counted at what it draws). :class:`FollowRoom` decides,
row by row of the fuse phases, which raises fit beside what the lowered cars may still draw
over their new limits: those go at once, the others once enough lowered cars have followed.
Pure: the sending is :class:`nowblock.control.sending.Dispatcher`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd


@dataclass
class Lowered:
    """A lowering sent whose car has not been seen following it yet.

    Attributes
    ----------
    limit_a : float
        [A per phase] The new (lower) limit its charger accepted.
    old_a : float
        [A per phase] What its car may draw until it follows: the limit it held before, or its
        draw if more (a settled reading under that limit: the reading plus a margin).
    since : datetime
        [our clock] When the lowering left: a reading taken since, within the limit plus the
        over-draw tolerance, shows the car has followed.
    until : datetime
        [our clock] The charger's answer plus the follow time: after it the lowering is
        forgotten.
    until_s : float
        [s, the event loop's clock] The same on the event loop's clock (a clock that does not
        move, as in tests, must not hold the raises forever).
    """

    limit_a: float
    old_a: float
    since: datetime
    until: datetime
    until_s: float

    @property
    def over_a(self) -> float:
        """[A per phase] What its car may still draw over its new limit."""
        return max(self.old_a - self.limit_a, 0.0)


class FollowRoom:
    """Which raises fit beside what lowered cars may still draw over their new limits.

    The step's plan holds on every fuse phase with each car at its new limit. While a lowered
    car still draws its old current the load exceeds the plan by that car's excess on every fuse
    phase above it; every raise not sent yet keeps its car at its old level, below the plan.
    A raise is sent when, with it, no fuse phase it loads exceeds the plan by more than the room
    the plan leaves there (``slack_a``; 0 where not known: then the raises held back must cover
    the lowered cars' excess).

    Parameters
    ----------
    rows : dict
        session_id -> its column of fuse-phase loads per ampere (the step's incidence, rows
        ``fuse * 3 + phase``).
    slack_a : numpy.ndarray
        [A] Per fuse phase, the room the plan leaves (>= 0).
    over_a : dict
        session_id -> [A] what a lowered car may still draw over its new limit.
    raise_a : dict
        session_id -> [A] what a raise adds to its car's draw (0: it needs no room, it goes at
        once).
    tol_a : float
        [A] Rounding tolerance.
    """

    def __init__(self, rows: dict, slack_a: np.ndarray, over_a: dict, raise_a: dict, *, tol_a: float = 1e-6) -> None:
        self.rows = rows
        self.slack_a = np.maximum(np.asarray(slack_a, dtype=float), 0.0)
        self.over_a = {s: float(a) for s, a in over_a.items() if a > tol_a and s in rows}
        self.raise_a = {s: max(float(a), 0.0) for s, a in raise_a.items()}
        self.tol_a = float(tol_a)
        self.waiting = list(self.raise_a)  # raises not released yet, in the order given
        extra = np.zeros(len(self.slack_a))
        for s, a in self.over_a.items():
            extra += a * rows[s]
        for s, a in self.raise_a.items():
            if s in rows:
                extra -= a * rows[s]
        self.extra_a = extra  # [A] per fuse phase, the load over the plan now

    def followed(self, session_id: str) -> None:
        """The lowered car ``session_id`` draws within its new limit now (or is forgotten)."""
        a = self.over_a.pop(session_id, None)
        if a is not None:
            self.extra_a = self.extra_a - a * self.rows[session_id]

    def fit_a(self, session_id: str) -> float:
        """[A] The most of the raise of ``session_id`` still waiting that fits now (0 to all of it)."""
        a = self.raise_a[session_id]
        col = self.rows.get(session_id)
        used = col > 0 if col is not None else None
        if used is None or not used.any():
            return a
        room = (self.slack_a[used] + self.tol_a - self.extra_a[used]) / col[used]
        return float(np.clip(room.min(), 0.0, a))

    def take(self, session_id: str, amount_a: float) -> None:
        """Count ``amount_a`` [A] of the raise of ``session_id`` as sent (a part of it)."""
        col = self.rows.get(session_id)
        if col is not None:
            self.extra_a = self.extra_a + amount_a * col
        self.raise_a[session_id] = max(self.raise_a[session_id] - amount_a, 0.0)

    def release(self) -> list[str]:
        """The raises that fit now, in order (each counted as sent before the next is tried);
        they leave ``waiting``."""
        out = []
        for s in list(self.waiting):
            a = self.raise_a[s]
            col = self.rows.get(s)
            if a > self.tol_a and col is not None:
                used = col > 0
                trial = self.extra_a + a * col
                if np.any(trial[used] > self.slack_a[used] + self.tol_a):
                    continue
                self.extra_a = trial
            out.append(s)
            self.waiting.remove(s)
        return out


def levels_a(cars: pd.DataFrame, loop, margin_a: float) -> dict[str, float]:
    """[A per phase] What each car may draw until a new limit takes hold.

    Parameters
    ----------
    cars : pandas.DataFrame
        The cars (index session_id) with ``measured_current_a``, ``offered_current_a``,
        ``max_current_a`` and, for settled readings, ``last_meter`` and ``arrival``.
    loop : ControlStep
        Its ``sent`` book (the last limit sent [A]), ``changed_at`` and ``settled`` rule.
    margin_a : float
        [A] Added to a settled reading under the limit.

    Returns
    -------
    dict
        session_id -> the limit it holds (the last sent, else what its charger applies, else
        its maximum), or its draw if more; a settled reading under that limit: the reading plus
        ``margin_a``. A reading taken before its last limit change tells nothing of it (a car
        lowered by an earlier step still unfollowed is the dispatcher's :class:`Lowered`).
    """
    if not len(cars):
        return {}
    meas = cars["measured_current_a"].to_numpy(float)
    off = cars["offered_current_a"].to_numpy(float)
    hi = cars["max_current_a"].to_numpy(float)
    timed = {"last_meter", "arrival"} <= set(cars.columns)
    settled = loop.settled(cars) if timed else np.zeros(len(cars), bool)
    if timed:  # a reading taken before its limit last changed (or none) tells nothing of it now
        changed = pd.to_datetime(pd.Series([loop.changed_at.get(s, pd.NaT) for s in cars.index], dtype=object),
                                 utc=True).to_numpy()
        read = pd.to_datetime(cars["last_meter"], utc=True).to_numpy()
        meas = np.where(pd.isna(changed) | (read >= changed), meas, np.nan)
    out = {}
    for k, sid in enumerate(cars.index):
        prev = loop.sent.get(sid)
        ref = prev[0] if prev is not None else (off[k] if np.isfinite(off[k]) else hi[k])
        m = meas[k]
        if not np.isfinite(m):
            out[sid] = float(ref)
        elif settled[k] and m < ref:
            out[sid] = float(min(ref, m + margin_a))
        else:
            out[sid] = float(max(ref, m))
    return out


def may_draw_a(cars: pd.DataFrame, levels: dict) -> dict[str, float]:
    """[A per phase] The most each car may draw until it follows a limit sent now.

    Parameters
    ----------
    cars : pandas.DataFrame
        The cars (index session_id) with ``measured_current_a``, ``max_current_a`` and
        ``connected``.
    levels : dict
        session_id -> [A] what it is counted at until a new limit takes hold (:func:`levels_a`).

    Returns
    -------
    dict
        session_id -> its level; for a connected car not read yet, its maximum. Nothing shows
        such a car within what its charger holds: a car paused from its start (a full block: a
        first limit of 0 A under its connector's 0 A idle default) that drew 16 A was counted at
        0 A, and the others' raises went at once beside it (h2's repro, session 39: 14.5 s at
        32 A on a 19 A grid). Used for lowerings only: a raise is credited at its level.
    """
    if not levels:
        return {}
    sel = cars.loc[list(levels)]  # one lookup for all (a step may send thousands of limits)
    lvl = np.fromiter(levels.values(), float, len(levels))
    meas = sel["measured_current_a"].to_numpy(float) if "measured_current_a" in sel else np.full(len(sel), np.nan)
    on = sel["connected"].to_numpy(bool) if "connected" in sel else np.ones(len(sel), bool)
    out = np.where(~np.isfinite(meas) & on, np.maximum(lvl, sel["max_current_a"].to_numpy(float)), lvl)
    return dict(zip(levels, out.tolist()))


def follows(transaction, low: Lowered, tol_a: float) -> bool:
    """Whether ``transaction`` (:class:`nowblock.ocpp.records.Transaction`, or None) shows its
    car following the lowering ``low``: a reading taken since it left (``last_meter``) with no
    phase above the new limit plus ``tol_a`` [A], or the transaction ended (it draws nothing)."""
    if transaction is None:
        return False
    if transaction.stop is not None:
        return True
    if transaction.last_meter is None or transaction.last_meter < low.since:
        return False
    cur = [float(c) for c in transaction.current_a if c is not None and math.isfinite(float(c))]
    return bool(cur) and max(cur) <= low.limit_a + tol_a


def fuse_rows(ctx, sids: list, snap, plan_a: pd.Series, offsets: dict, site) -> tuple[dict, np.ndarray]:
    """Per session of ``sids`` its column of fuse-phase loads per ampere, and per fuse phase the
    room [A] the step's plan leaves.

    Parameters
    ----------
    ctx : StepContext
        The step's context (``safety``, ``planned_over_a``; ``cars`` with ``charge_point_id``,
        ``phases``).
    sids : list
        Sessions whose columns are wanted.
    snap : BlockSnapshot or None
        The step's snapshot. Its rows (the trusted cars' safety snapshot when some are
        untrusted: those are counted at what they may draw, so their limits free nothing), with
        the plan ``plan_a`` [A] plus what each car is planned in over its limit (``offsets``, a
        new session's reserve), tell the room. None: 0 on every fuse phase of ``site``.
    plan_a : pandas.Series
        [A per phase] The step's setpoints by session.
    offsets : dict
        session_id -> [A] a meter's known offset over its limit.
    site : Site or None
        The live site (without ``snap``); None: one row for all cars.

    Returns
    -------
    rows : dict
        session_id -> column (a session missing from the rows is untrusted: it needs no room).
    slack : numpy.ndarray
        [A] Per row.
    """
    base = None if snap is None else (ctx.safety if ctx.safety is not None else snap)
    if base is not None:
        g = base.incidence()
        idx = base.cars.index
        x = plan_a.reindex(idx).fillna(0.0).astype(float)
        over = pd.Series({**ctx.planned_over_a, **offsets}, dtype=float).reindex(idx).fillna(0.0)
        slack = base.headroom_a().reshape(-1) - g @ (x + over.where(x > 0, 0.0)).to_numpy(float)
        pos = idx.get_indexer(sids)
        return {s: g[:, p] for s, p in zip(sids, pos) if p >= 0}, slack
    if site is None:  # one row for all: what is held back must make up for every excess
        return {s: np.ones(1) for s in sids}, np.zeros(1)
    cars = ctx.cars.loc[sids]
    g = site.phase_incidence(site.cp_index(cars["charge_point_id"].astype(str).tolist()),
                             cars["phases"].to_numpy(np.int64))
    return {s: g[:, k] for k, s in enumerate(sids)}, np.zeros(g.shape[0])
