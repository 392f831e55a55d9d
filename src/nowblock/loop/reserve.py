"""What a new session may draw over its limit before its first reading tells it.

A trusted car may draw up to ``over_draw_a`` over its limit (meters are not exact); what it
draws over is learnt from its readings and reserved on every fuse above it
(:func:`~nowblock.loop.closed_loop.next_excess_a`). A new session's excess is unknown until a
reading shows it: five raw OCPP 1.6 cars at their limit + 1.5 A held a 40 A grid at 43 A for
the 19 s before their first settled reading (an outside test, session 37). Until its excess is
*learnt*, a car is counted at its limit plus ``over_draw_a``:

* a settled reading (``settle_s`` after its last limit change) tells it;
* so do, before that, readings taken under its last limit in force that show it at its offer:
  from that limit less ``EXCESS_HYSTERESIS_A`` (a car still ramping up is below it) to that
  limit plus ``over_draw_a`` (:func:`tells_unsettled`). After a raise the first such reading
  tells it (a car ramping up cannot be above its new limit); otherwise (a lowering, a first
  limit under what its charger held) it takes two in a row whose excess (reading less limit)
  does not rise by more than ``EXCESS_HYSTERESIS_A``: a car still ramping up through its
  lowered limit rises between them, one coming down does not.

Either reading wakes a step (:func:`meter_departs`), which replaces the reserve by the learnt
excess. The car is planned in what it may draw (its limit plus the reserve, only while the
policy runs it: :func:`planned_with_reserve`). The ControlStep keeps the state (``learnt``,
``first_from``, ``reserve_a``); these functions read and update it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from nowblock.baselines.heuristics import offer_bounds_a
from nowblock.loop.closed_loop import EXCESS_HYSTERESIS_A
from nowblock.seam import cached_constraint_rows


def raised(step, sid: str) -> bool:
    """Whether the last limit sent to ``sid`` raised what its charger held before.

    Parameters
    ----------
    step : nowblock.loop.step.ControlStep
        The step's state (``sent``, ``before``, ``first_from``).
    sid : str
        The session.

    Returns
    -------
    bool
        True when the limit before [A] (for a first limit: what its charger held, 0 A when it
        drew nothing) is known and lower than the last one sent.
    """
    sent = step.sent.get(sid)
    if sent is None:
        return False
    before = step.before.get(sid, step.first_from.get(sid, np.nan))
    return bool(np.isfinite(before) and before < sent[0] - 1e-6)


def limits_before(step, ids: pd.Index, connected, offered_a, measured_a, max_a) -> np.ndarray:
    """Per car, the limit [A] its charger applied before its last limit (NaN where unknown).

    For a car not yet sent a limit, what its charger holds is remembered each step
    (``step.first_from``): 0 A under a 0 A idle default or while the car draws nothing (its
    first limit is then a raise), else the limit it applies (its fail-safe, its own default),
    NaN when unknown. That is its limit before its first one: a car drawing 11.5 A under its
    10 A fail-safe read so after a first limit of 8 A was not over both limits, but it was
    judged over at once against none, and its ratio stuck (session 37). A car still under its
    connector's 0 A idle default (no limit of its own applied yet) drew what its charger held
    before, at most its maximum: not over at once (it was paused for good).

    Parameters
    ----------
    step : nowblock.loop.step.ControlStep
        The step's state (``sent``, ``before``; ``first_from`` is updated).
    ids : pandas.Index
        The observed cars (session ids).
    connected : array of bool
        Their chargers are online.
    offered_a, measured_a, max_a : numpy.ndarray
        [A] The limit each charger applies, the last reading, each car's maximum.

    Returns
    -------
    numpy.ndarray
        [A] The limit before, per car.
    """
    connected = np.asarray(connected, bool)
    off = np.asarray(offered_a, float)
    unsent = connected & ~ids.isin(list(step.sent))
    if unsent.any():
        meas = np.asarray(measured_a, float)
        with np.errstate(invalid="ignore"):
            nothing = (np.isfinite(off) & (off <= 0)) | (np.isfinite(meas) & (meas < min(1.0, step.settings.margin_a)))
        for i in np.flatnonzero(unsent):
            step.first_from[ids[i]] = 0.0 if nothing[i] else float(off[i])
            step.first_held[ids[i]] = float(off[i])
    before = np.array([step.before.get(x, np.nan) for x in ids], dtype=float)
    if step.first_from:
        first = np.array([step.first_from.get(x, np.nan) if x in step.sent else np.nan for x in ids], dtype=float)
        before = np.where(np.isnan(before) & (first > 0), first, before)
    return np.where(np.isnan(before) & connected & ~(off > 0), np.asarray(max_a, float), before)


def held_before(step, ids: pd.Index, before_a: np.ndarray, last_ns: np.ndarray) -> np.ndarray:
    """The limit before [A] an unsettled reading's excess is judged over
    (:func:`~nowblock.loop.closed_loop.next_excess_a`, over the higher of it and the limit):
    :func:`limits_before`; where that is unknown for a car sent a limit, what its charger applied
    when first seen, and for a reading taken before its last change still unknown, inf (such a
    reading shows the limit before, not its excess over the new one: it tells nothing).

    A car seen drawing nothing (or under a charger reporting 0 A) counts its first limit as a
    raise from 0 A (``first_from``): its limit before is unknown. A reading of 13 A taken 0.08 s
    before its first limit of 11 A was sent (its charger's 13 A TxDefault still in force) was
    judged over 11 A alone: 2.0 A of excess, kept until a settled reading, which the equal
    shares' rotation of the last pilot step kept putting off: after the release the limits
    summed to 36 - 39 A instead of 40 A
    (test_every_running_transaction_gets_a_safe_txprofile_within_5_s[2.0.1], session 39).

    Parameters
    ----------
    step : nowblock.loop.step.ControlStep
        The step's state (``sent``, ``changed_at``, ``first_held``).
    ids : pandas.Index
        The observed cars (session ids).
    before_a : numpy.ndarray
        [A] :func:`limits_before`.
    last_ns : numpy.ndarray
        [ns since the epoch] When each car's last reading was taken.

    Returns
    -------
    numpy.ndarray
        [A] The limit before per car (NaN where unknown and no limit sent).
    """
    out = np.array(before_a, dtype=float)
    for i in np.flatnonzero(np.isnan(out)):
        sid = ids[i]
        if sid not in step.sent:
            continue
        held = step.first_held.get(sid, np.nan)
        if held > 0:
            out[i] = held
        elif sid in step.changed_at and last_ns[i] <= step.changed_at[sid].value:
            out[i] = np.inf
    return out


def learn_and_reserve(step, ids: pd.Index, excess_a: np.ndarray, controllable, settled, last_ns: np.ndarray,
                      offered_a, measured_a, min_a) -> np.ndarray:
    """The excess [A per phase] to hold on the fuses per car, and each controllable car's reserve
    (``step.reserve_a``) while its excess is not learnt yet (updates ``step.learnt``).

    Parameters
    ----------
    step : nowblock.loop.step.ControlStep
        The step's state; ``step.learnt`` gains the sessions whose reading tells their excess.
    ids : pandas.Index
        The observed cars (session ids).
    excess_a : numpy.ndarray
        [A] Each car's learnt excess (:func:`~nowblock.loop.closed_loop.next_excess_a`).
    controllable : array of bool
        Connected, trusted, not on trial and not read with an offset: the cars whose excess is
        reserved (an untrusted car is counted at what it may draw instead).
    settled : array of bool
        The last reading was taken with the limit in force ``settle_s``; a reading not settled
        may tell it too (:func:`tells_unsettled`: its excess is then the reading less its limit,
        in the returned excess and ``step.excess_a``).
    last_ns : numpy.ndarray
        [ns since the epoch] When each car's last reading was taken.
    offered_a, measured_a, min_a : numpy.ndarray
        [A] The limit its charger applies, its last reading, its minimum.

    Returns
    -------
    numpy.ndarray
        [A] ``excess_a`` to hold on the fuses, 0 where not learnt: such a car's reserve,
        ``over_draw_a`` at least, goes to ``step.reserve_a`` (a car known full is offered
        nothing and gets none).
    """
    s = step.settings
    off = np.asarray(offered_a, float)
    meas = np.asarray(measured_a, float)
    with np.errstate(invalid="ignore"):
        # A paused car's reading (offered less than its minimum) tells nothing of its draw.
        seen = np.isfinite(meas) & np.isfinite(off) & (off > 0) & (off >= np.asarray(min_a, float) - 1e-9)
    learnt = ids.isin(list(step.learnt)) if step.learnt else np.zeros(len(ids), bool)
    tells = seen & np.asarray(settled, bool)
    excess_a = np.array(excess_a, dtype=float)
    open_ = ~tells & ~learnt & np.asarray(controllable, bool)
    reads = step.offer_reads
    for sid in set(reads) - set(ids[np.asarray(controllable, bool) & ~tells]):
        del reads[sid]  # settled, ended or not controllable: a pair starts afresh
    for i in np.flatnonzero(open_):
        sid = ids[i]
        told = tells_unsettled(step, sid, off[i], meas[i], last_ns[i]) if seen[i] else None
        if told is None:
            if sid in reads and reads[sid][0] != last_ns[i]:
                del reads[sid]  # a newer reading not at its offer breaks the pair
            continue
        tells[i] = True
        # Over the new limit, not over the higher of both (next_excess_a's rule for readings not
        # settled, 0 A here after a lowering): a car read at its lowered limit + 1.5 A draws that
        # much over it, or is still coming down (then over-estimated until a settled reading).
        excess_a[i] = max(float(excess_a[i]), told, 0.0)
        if excess_a[i] > 0:
            step.excess_a[sid] = float(excess_a[i])
    if tells.any():
        step.learnt |= set(ids[tells])
        for sid in ids[tells]:
            reads.pop(sid, None)
        learnt = learnt | tells
    falls = seen & ~np.asarray(settled, bool) & learnt & (excess_a > 0) & np.asarray(controllable, bool)
    for i in np.flatnonzero(falls):
        # After a lowering a car still coming down reads more than it will draw: a reading at its
        # new limit in force bounds its excess from above (tells_unsettled's argument), and it
        # falls to that at once. Else an excess over-estimated while a car came down from its
        # 13 A TxDefault fell only at a settled reading, which the equal shares' 13 <-> 14 A
        # rotation kept putting off: 1.0 A held after a release, the limits summing to 39 A
        # instead of 40 A (test_every_running_transaction_gets_a_safe_txprofile_within_5_s[2.0.1]).
        # Two readings, as for a new car (tells_unsettled): a learnt car lowered while it still
        # ramped up (after a pause, a raise) is read on its way through its new limit, and one
        # reading let its excess fall below what it then drew (review rev1 of 9d3cd10, merged).
        sid = ids[i]
        sent = step.sent.get(sid)
        before = step.before.get(sid, step.first_from.get(sid, np.nan))
        if (sent is None or not before > sent[0] + 1e-6 or not in_force(step, sid, off[i], last_ns[i])
                or meas[i] - off[i] >= excess_a[i] - 1e-9):
            if sid in reads and reads[sid][0] != last_ns[i]:
                del reads[sid]  # a newer reading not at its new limit breaks the pair
            continue
        told = _paired(step, sid, int(last_ns[i]), float(meas[i] - off[i]))
        if told is None:
            continue
        excess_a[i] = max(told, 0.0)
        if excess_a[i] > 0:
            step.excess_a[sid] = float(excess_a[i])
        else:
            step.excess_a.pop(sid, None)
    full = ids.isin(list(step.full)) if step.full else np.zeros(len(ids), bool)
    hold = np.asarray(controllable, bool) & ~learnt & ~full & (s.new_session_reserve is not False)
    step.reserve_a = {sid: float(max(e, s.over_draw_a)) for sid, e in zip(ids[hold], excess_a[hold])}
    return np.where(hold, 0.0, excess_a)


def tells_unsettled(step, sid: str, offered_a: float, measured_a: float, last_ns: int) -> float | None:
    """The excess [A] over its limit that a reading taken before ``settle_s`` tells of a new
    session, or None.

    A reading counts when taken under the last limit sent, in force (its charger applies it,
    the reading is later than the change), and it shows the car at that limit or over it by at
    most ``over_draw_a``: from ``offered - EXCESS_HYSTERESIS_A`` to ``offered + over_draw_a``;
    its excess is the reading less the limit.

    * After a raise, the first such reading tells it: a car ramping up cannot be above its new
      limit; at it (not within ``under_draw_a`` below: a car still ramping, 1 A under, was
      judged to draw nothing over, then climbed to its limit + 1.5 A: 4 cars on 40 A at 46 A
      until the next reading).
    * Otherwise (a lowering, a first limit under what its charger held, nothing known of
      before) it is kept (``step.offer_reads``) and the next one tells it, unless its excess
      rose by more than ``EXCESS_HYSTERESIS_A`` since (then it is kept in turn). The later one
      tells it: the larger where it rose within the hysteresis; where it fell, the car came
      down and reads nearer its draw later (at or above it), and a reading whose change the
      charger had not applied yet (taken after the change was recorded) is not kept as its
      excess (the larger of both held 1.22 A on average over what three cars coming down drew,
      the later one 1.02 A: rev1's sim_down.py 0.7 10 40).
      One reading was taken for a car coming down (over-estimated), but a new car still ramping
      up from 0 A under its charger's 13 A TxDefault (its first limit booked as a lowering) is
      read on its way through its limit: three such cars on 40 A drew 44 A for up to 30 s, in
      16 of 60 runs (review rev1 of 9d3cd10). Between two readings 10 s apart a ramping car
      rises; one coming down, or at its draw, does not. A car ramping by less than the
      hysteresis in a meter interval is the hole the settled reading has too. Before session
      39 only a settled reading told it after a lowering, and under the equal policy's rotation
      of the last pilot step (11 <-> 12 A every few seconds, each change restarting the settle
      window) three new cars on 40 A held their 2 A each for 1.5 to 18.7 s, over 30 s under
      load.

    Parameters
    ----------
    step : nowblock.loop.step.ControlStep
        The step's state (``sent``, ``changed_at``).
    sid : str
        The session.
    offered_a, measured_a : float
        [A] The limit its charger applies, the reading.
    last_ns : int
        [ns since the epoch] When the reading was taken.

    Returns
    -------
    float or None
        [A] The excess told (may be negative: a car at its offer within the hysteresis), None
        when the reading tells nothing (yet).
    """
    if not (in_force(step, sid, offered_a, last_ns)
            and offered_a - EXCESS_HYSTERESIS_A <= measured_a <= offered_a + step.settings.over_draw_a):
        return None
    excess = float(measured_a - offered_a)
    if raised(step, sid):
        return excess
    return _paired(step, sid, int(last_ns), excess)


def _paired(step, sid: str, last_ns: int, excess: float) -> float | None:
    """``excess`` [A] once a reading at its offer follows another without rising by more than
    the hysteresis (a car ramping up rises between two readings), else None (kept for the next
    reading in ``step.offer_reads``; the same reading seen again tells nothing)."""
    prev = step.offer_reads.get(sid)
    if prev is not None and prev[0] == last_ns:
        return None  # the same reading seen again at a later step
    step.offer_reads[sid] = (last_ns, excess)
    if prev is None or excess > prev[1] + EXCESS_HYSTERESIS_A:
        return None  # the first at its offer, or still rising: the next one tells
    return excess


def in_force(step, sid: str, offered_a: float, last_ns: int) -> bool:
    """Whether a reading taken at ``last_ns`` [ns since the epoch] was taken under the last limit
    sent to ``sid``, in force: its charger applies it (``offered_a`` [A]), and the reading is
    later than the change (``changed_at``)."""
    sent, since = step.sent.get(sid), step.changed_at.get(sid)
    if sent is None or since is None or not (sent[0] > 0 and abs(offered_a - sent[0]) <= 0.05):
        return False
    return bool(last_ns > since.value)


def planned_with_reserve(reserve_a: dict, ids: pd.Index, max_a: np.ndarray, min_a: np.ndarray):
    """The bounds [A] the policy plans each car in: a car with a reserve is planned in what it
    may draw, its limit plus the reserve (0, or from its minimum plus the reserve to its
    maximum plus the reserve), and sent its share less the reserve
    (:func:`~nowblock.loop.trials.less_offsets`). A car the policy pauses costs nothing: held
    on every fuse instead, the 2 A of a car paused on a full fuse stayed held while it waited.

    Parameters
    ----------
    reserve_a : dict
        session_id -> [A] its reserve (:attr:`ControlStep.reserve_a`).
    ids : pandas.Index
        The planned cars (session ids).
    max_a, min_a : numpy.ndarray
        [A] Their bounds (not changed).

    Returns
    -------
    tuple of numpy.ndarray
        The new (max, min) bounds [A].
    """
    pos = ids.get_indexer(list(reserve_a))
    r = np.array(list(reserve_a.values()), dtype=float)[pos >= 0]
    pos = pos[pos >= 0]
    hi, lo = np.array(max_a, dtype=float), np.array(min_a, dtype=float)
    hi[pos] += r
    lo[pos] += r
    return hi, lo


def paused_first(step, snap):
    """``snap`` (the policy's snapshot) with each new car paused at the last step while its
    reserve is held put first, where the cars that want energy fit at their minimum but not at
    their minimum plus the reserves: its ``priority`` 1 above every other car's.

    A paused car is never read at an offer, so its reserve never frees, and planned at its
    minimum plus the reserve it may never fit again beside learnt cars: three new cars on an 18 A
    grid under equal shares ran 9 + 9 A with the third paused for good, where at their minimum
    all three fit once learnt (session 39). The baselines admit by priority first (``equal``,
    ``round_robin``: :func:`~nowblock.baselines.heuristics.round_robin_order`), the safety net
    and the hysteresis switch off the lowest first: the paused car runs at its minimum plus the
    reserve beside what is left (a learnt car is paused instead), is read at its limit, its
    reserve frees (:func:`tells_unsettled`), and at the next step the policy decides among learnt
    cars as without the reserve. The fuses hold what it may draw (its limit plus the reserve)
    throughout. Only where the cars that want energy fit at their minimum without the reserves
    but not with them is a pause the reserve's doing: else it is the policy's own choice (``edf``
    giving one car its maximum; turns among more cars than fit at their minimum), left as it is
    (put first there, under ``edf`` a paused new car on a tie of departures took a 22 A cap from
    a learnt car for a step, one new car after the other). ``edf``/``llf`` take priority only on
    ties of departure or laxity; the MILP weighs a car's shortfall by it.

    Parameters
    ----------
    step : nowblock.loop.step.ControlStep
        The step's state (``reserve_a`` after :func:`learn_and_reserve`, ``sent``).
    snap : nowblock.seam.BlockSnapshot
        The policy's snapshot, its cars planned with their reserve
        (:func:`planned_with_reserve`: ``min_current_a`` [A] is the minimum plus the reserve).

    Returns
    -------
    nowblock.seam.BlockSnapshot
        ``snap``, or a copy whose cars frame has those cars' priority raised.
    """
    cars = snap.cars
    if not step.reserve_a or "priority" not in cars.columns:
        return snap
    pos = cars.index.get_indexer(list(step.reserve_a))
    mins = snap.values("min_current_a")
    paused = [sid for sid, i in zip(step.reserve_a, pos) if i >= 0 and sid in step.sent
              and step.sent[sid][0] < mins[i] - step.reserve_a[sid] - 1e-9]
    if not paused:
        return snap
    g, h = cached_constraint_rows(snap)
    lo, _ = offer_bounds_a(snap)  # 0 for a car that wants nothing
    plain = lo.copy()
    plain[pos[pos >= 0]] -= np.array(list(step.reserve_a.values()), dtype=float)[pos >= 0]
    if np.all(g @ lo <= h + 1e-6) or not np.all(g @ np.where(lo > 0, plain, 0.0) <= h + 1e-6):
        return snap
    prio = np.array(snap.values("priority"), dtype=float)
    top = float(np.nanmax(prio)) if np.isfinite(prio).any() else 0.0
    prio[cars.index.isin(paused)] = max(top, 0.0) + 1.0
    cars = cars.copy(deep=False)
    cars["priority"] = prio
    return replace(snap, cars=cars, car_arrays=None)


def meter_departs(step, sid: str, current_a: float, now: pd.Timestamp) -> bool:
    """Whether a car's reading calls for a step now (the live loop's meter-value wake-up).

    Parameters
    ----------
    step : nowblock.loop.step.ControlStep
        The step's state.
    sid : str
        The session.
    current_a : float
        [A] The reading's highest phase current.
    now : pandas.Timestamp
        [UTC] The controller's clock.

    Returns
    -------
    bool
        True when the reading shows the car over its limit plus what is reserved for it (more
        than :data:`~nowblock.loop.closed_loop.EXCESS_HYSTERESIS_A`), when it tells a new
        session's excess (its reserve of ``over_draw_a`` frees; settled or not, from the limit
        less ``EXCESS_HYSTERESIS_A`` to the limit plus ``over_draw_a``: :func:`tells_unsettled`),
        or when a settled reading departs from the limit by more than ``under_draw_a +
        margin_a``; else before it settled after a lowering, only when above both the limit and
        the one before by more than ``over_draw_a``.
    """
    sent = step.sent.get(sid)
    if sent is None:
        return False
    s = step.settings
    learnt = sid not in step.reserve_a  # only a reserve held at the last step can be freed
    excess = step.excess_a.get(sid, 0.0)
    held = step.reserve_a.get(sid, excess)
    since = step.changed_at.get(sid)
    if since is not None and (now - since).total_seconds() < s.settle_s:
        if not learnt and sid in step.offer_reads:
            return True  # the second of a pair (tells_unsettled), or one breaking it
        if (not learnt and sent[0] > 0 and sent[0] - EXCESS_HYSTERESIS_A <= current_a <= sent[0] + s.over_draw_a
                and current_a - sent[0] < held - EXCESS_HYSTERESIS_A):
            return True  # it tells a new session's excess or is the first of a pair (tells_unsettled)
        if not raised(step, sid):
            # A reading may still show the higher limit before, but not more: one above both
            # limits by over_draw_a is what the step judges over at once (ControlStep.__call__:
            # ``before``, ``offered``), so it wakes one now. Else a car ignoring a lowering to
            # 14 A read 32 A unheeded until its first settled reading: a 40 A grid at 58 A for
            # 26 s (an outside test, session 38).
            before = step.before.get(sid, np.nan)
            if np.isnan(before) and step.first_from.get(sid, 0.0) > 0:
                before = step.first_from[sid]  # its first limit: what its charger held (limits_before)
            return bool(np.isfinite(before) and current_a > max(sent[0], before) + s.over_draw_a)
        # After a raise a car cannot legitimately be above its new limit: over what is reserved
        # is reserved at once.
        return current_a > sent[0] + held + EXCESS_HYSTERESIS_A
    if not learnt and sent[0] > 0:
        return True  # its first settled reading: the step learns its excess and frees the rest
    if current_a > sent[0] + excess + EXCESS_HYSTERESIS_A:
        # Over its limit by more than the last step reserved for it (within the over-draw
        # tolerance: still trusted): reserved at once, not at the period's step (two cars at
        # their limit + 1.5 A kept a 40 A grid at 43 A until then: an outside test).
        return True
    if sent[0] > 0 and EXCESS_HYSTERESIS_A < current_a < sent[0] + excess - EXCESS_HYSTERESIS_A:
        # Under it by more than the hysteresis: next_excess_a's fall rule frees it now, not at the
        # period's step (an excess told on the way down held 2.4 A for 60 s: review rev1 of 9d3cd10).
        return True
    return abs(current_a - sent[0]) > s.under_draw_a + s.margin_a


def unbalance_less_reserve(site, reserve_a: dict, ids: pd.Index, cp_index, phases):
    """``site`` with its unbalance limit [A] tightened by what the reserves may leave undrawn.

    A car with a reserve is planned at its limit plus the reserve, but draws anywhere from its
    limit to that: on the unbalance rows it lies in a range. A single- or two-phase car planned
    at limit + 2 A let the cars on the other phases be raised to within the limit of that bound;
    drawing its limit, the phases stood 6.0 A apart on a 4 A limit (review rev4). Each grid
    phase may draw up to the reserves of the unbalanced cars on it less than planned (a
    three-phase car's shortfall is the same on all three: no spread), so the plan keeps the
    limit less the largest such sum, never below 0 A.

    Parameters
    ----------
    site : nowblock.block.site.Site
        The site planned in (its ``max_unbalance_a`` may be None: returned as is).
    reserve_a : dict
        session_id -> [A] its reserve (:attr:`ControlStep.reserve_a`).
    ids : pandas.Index
        The observed cars (session ids), aligned with ``cp_index`` and ``phases``.
    cp_index, phases : numpy.ndarray
        Each car's charging point (position in ``site``) and number of phases.

    Returns
    -------
    nowblock.block.site.Site
        The site, its ``max_unbalance_a`` [A] lowered where a reserve lies on the unbalance rows.
    """
    if site.max_unbalance_a is None or not reserve_a:
        return site
    pos = ids.get_indexer(list(reserve_a))
    r = np.array(list(reserve_a.values()), dtype=float)[pos >= 0]
    pos = pos[pos >= 0]
    used = site.phase_usage(np.asarray(cp_index)[pos], np.asarray(phases)[pos])
    unbalanced = used.sum(axis=1) < 3
    short = (used[unbalanced] * r[unbalanced, None]).sum(axis=0)  # [A] per grid phase
    if not short.any():
        return site
    return replace(site, max_unbalance_a=max(float(site.max_unbalance_a) - float(short.max()), 0.0))
