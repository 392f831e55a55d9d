"""Closing the control loop on what cars really draw: pure functions, no I/O.

Field systems learned that cars ignore setpoints: a car offered 32 A may take 10 A (its
on-board charger, a full battery, the cold), another keeps drawing after being told less, a
third never resumes after a pause at 0 A. These functions turn measurements into adjustments of
a :class:`~nowblock.seam.BlockSnapshot` before the policy runs, and into a repair of the
policy's answer after it:

* :func:`update_ceilings` keeps, per session, an *allocation ceiling* [A]: lowered towards what
  the car draws (plus a margin) when it takes less than offered, raised again by a fixed step
  per control step while it takes what it is offered. :func:`apply_ceilings` writes it into the
  snapshot's ``max_current_a``, so the current a car leaves unused goes to other cars in the
  same step.
* :func:`reserve_unobserved` takes cars whose meter values are stale (or that draw more than
  they are offered) out of the policy's hands and reserves their worst case on every fuse phase
  above them: a station we cannot see is counted at its maximum.
* :func:`keep_running` is the hysteresis after the policy: a car that is charging is kept at its
  minimum rather than paused to 0 A whenever the limits allow it.
* :func:`refill_a` gives the room freed when the trusted cars were made safe against what the
  untrusted ones really draw back to trusted cars, on the grid phases where it was freed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from nowblock.block.site import Site
from nowblock.seam.snapshot import BlockSnapshot, cached_constraint_rows, root_index

#: Smallest rating [A] left on a fuse phase whose whole rating is reserved (Site needs > 0).
_MIN_RATING_A = 1e-3
#: [A] A trusted car's reserved excess over its limit falls only when a reading shows it this much lower.
EXCESS_HYSTERESIS_A = 0.3


@dataclass(frozen=True)
class LoopSettings:
    """Tuning of the closed loop.

    ``margin_a`` [A]: headroom above the measured draw when a ceiling is lowered.
    ``raise_step_a`` [A]: how much a ceiling may rise per control step.
    ``under_draw_a`` [A]: a car draws "less than offered" when below the offer by more than this
    (keep it above ``margin_a`` so a car sitting at its lowered ceiling counts as taking it all).
    ``over_draw_a`` [A]: a car above its offer by more than this is ignoring its setpoint.
    ``stale_after_s`` [s]: meter values older than this are stale.
    ``settle_s`` [s]: a measurement counts only once the offer has been in force this long (for
    a car never sent a limit: since it plugged in).
    ``start_s`` [s]: a car not seen drawing since its offer rose to its minimum (just plugged in,
    resuming after a pause, or after a restart) is taken to be full (it draws nothing although
    offered its minimum) only once that offer has been in force this long: cars take seconds to a
    minute to start drawing, and a car called full is offered nothing, so it could never show
    that it was not.
    ``new_session_reserve``: count a car at its limit plus ``over_draw_a`` until a reading tells
    what it draws over it (:mod:`nowblock.loop.reserve`); on unless False, in the live loop and
    the simulator alike (one path: a simulated session holds it for its first step, until its
    first reading).
    ``follow_s`` [s]: how long a lowered car may take to follow its new limit (IEC 61851-1: 5 s
    after the duty cycle changed). Live, a raise that needs the room a lowering frees goes out
    once a reading shows the lowered car within its new limit plus ``over_draw_a``, or this long
    after its charger accepted (:mod:`nowblock.control.following`); 0 sends it with the answer.
    The simulator's cars follow at once: both limits apply from the start of its step.
    """

    margin_a: float = 1.0
    raise_step_a: float = 2.0
    under_draw_a: float = 2.0
    over_draw_a: float = 2.0
    stale_after_s: float = 120.0
    settle_s: float = 15.0
    start_s: float = 120.0
    new_session_reserve: bool | None = None
    follow_s: float = 5.0


def update_ceilings(
    cars: pd.DataFrame,
    ceilings_a: pd.Series | None,
    settled,
    settings: LoopSettings = LoopSettings(),
) -> pd.Series:
    """New allocation ceiling [A] per session (index of ``cars``).

    ``cars`` has ``min_current_a``, ``max_current_a``, ``measured_current_a`` (per phase [A],
    NaN if unknown) and ``offered_current_a`` (the limit the charger accepted [A]);
    ``ceilings_a`` the previous ceilings (missing sessions start at their maximum);
    ``settled`` a boolean per car, True when the measurement was taken after the current offer
    had been in force for a while (a car ramping up is not "drawing less").
    See :func:`next_ceilings_a` for the rule.
    """
    prev = None
    if ceilings_a is not None and len(ceilings_a):
        prev = pd.Series(ceilings_a, dtype=float).reindex(cars.index).to_numpy(float)
    new = next_ceilings_a(cars["min_current_a"].to_numpy(float), cars["max_current_a"].to_numpy(float), prev,
                          cars["measured_current_a"].to_numpy(float), cars["offered_current_a"].to_numpy(float),
                          settled, settings)
    return pd.Series(new, index=cars.index, name="ceiling_a")


def next_ceilings_a(min_a: np.ndarray, max_a: np.ndarray, prev_a: np.ndarray | None, measured_a: np.ndarray,
                    offered_a: np.ndarray, settled, settings: LoopSettings = LoopSettings()) -> np.ndarray:
    """:func:`update_ceilings` on arrays (one entry per car; currents [A] per phase).

    Parameters
    ----------
    min_a, max_a : numpy.ndarray
        [A] Each car's minimum and maximum.
    prev_a : numpy.ndarray or None
        [A] The previous ceilings, NaN (or None for all) where a car has none yet (it starts
        at its maximum).
    measured_a, offered_a : numpy.ndarray
        [A] Last measured draw (NaN if unknown) and the limit its charger applies.
    settled : array of bool
        The measurement was taken with the offer in force long enough.

    Returns
    -------
    numpy.ndarray
        [A] A settled car offered at least its minimum that draws more than ``under_draw_a``
        below the offer gets ``max(min, draw + margin)``; one that takes its offer gets
        ``+raise_step_a``; without a usable measurement the ceiling stays; always within
        [min, max].
    """
    lo, hi = min_a, max_a
    prev = np.array(hi, dtype=float) if prev_a is None else np.where(np.isfinite(prev_a), prev_a, hi)
    meas, off = measured_a, offered_a
    ok = np.asarray(settled, dtype=bool) & np.isfinite(meas) & np.isfinite(off) & (off >= lo - 1e-9) & (off > 0)
    under = ok & (meas < off - settings.under_draw_a)
    taking = ok & ~under
    new = prev.copy()
    new[under] = np.minimum(prev[under], meas[under] + settings.margin_a)
    new[taking] = prev[taking] + settings.raise_step_a
    return np.clip(new, lo, hi)


def next_excess_a(prev_a: np.ndarray, measured_a: np.ndarray, offered_a: np.ndarray, before_a: np.ndarray,
                  min_a: np.ndarray, settled, trusted) -> np.ndarray:
    """What each trusted car draws over its limit [A per phase], to be reserved on its fuses.

    A car drawing up to ``over_draw_a`` over its limit stays trusted (meters are not exact), but
    what it draws over is real current: planned at their limits, two cars drawing 1.5 A over
    theirs kept a 40 A fuse at 43 A for as long as they charged (an outside test). The excess
    is learnt from readings taken with the limit in force (``settled``; one taken before counts
    only over the higher of its limit and the one before), rises at once, and falls only when a
    settled reading shows it more than :data:`EXCESS_HYSTERESIS_A` lower, or the car that much
    under its limit (meter noise does not move the others' setpoints every step). A paused car
    (offered less than its minimum) drawing nothing tells nothing of what it draws when it runs:
    its excess is kept.

    Parameters
    ----------
    prev_a : numpy.ndarray
        [A] The excess known so far (0 where none).
    measured_a, offered_a, before_a : numpy.ndarray
        [A] Last measured draw, the limit its charger applies, the limit before its last change
        (NaN where unknown).
    min_a : numpy.ndarray
        [A] Each car's minimum.
    settled, trusted : array of bool
        The reading was taken with the limit in force long enough; the car is trusted (an
        untrusted one is counted at what it may draw instead: its excess is 0).

    Returns
    -------
    numpy.ndarray
        [A] The new excess per car (>= 0).
    """
    settled = np.asarray(settled, dtype=bool)
    ref = np.where(settled, offered_a, np.fmax(offered_a, before_a))
    with np.errstate(invalid="ignore"):
        raw = np.maximum(measured_a - ref, 0.0)  # NaN where either is unknown
        told = (np.isfinite(raw) & (settled | (raw > 0))
                & ((offered_a >= min_a - 1e-9) | (measured_a > EXCESS_HYSTERESIS_A)))
        rise = told & (raw > prev_a)
        # Lower by more than the noise, or clearly under its limit (a small excess read once
        # is not kept for the whole stay).
        fall = told & settled & ((raw < prev_a - EXCESS_HYSTERESIS_A) | (measured_a <= ref - EXCESS_HYSTERESIS_A))
    new = np.where(rise | fall, raw, prev_a)
    new = np.where(np.asarray(trusted, dtype=bool) & (new > 1e-6), new, 0.0)
    return new


def apply_ceilings(cars: pd.DataFrame, ceilings_a: pd.Series) -> pd.DataFrame:
    """A copy of ``cars`` whose ``max_current_a`` [A] is lowered to the ceilings (never below min)."""
    out = cars.copy()
    c = pd.Series(ceilings_a, dtype=float).reindex(cars.index).to_numpy(float)
    hi = cars["max_current_a"].to_numpy(float)
    lo = cars["min_current_a"].to_numpy(float)
    out["max_current_a"] = np.where(np.isfinite(c), np.clip(c, np.minimum(lo, hi), hi), hi)
    return out


def stale_mask(
    last_meter_time: pd.Series, arrival: pd.Series, now: pd.Timestamp, stale_after_s: float
) -> np.ndarray:
    """True for cars whose last meter value [UTC] is older than ``stale_after_s`` [s].

    A car that has not sent any meter value yet is stale only once its session is older than
    the same delay (a transaction that just started is not).
    """
    last = pd.to_datetime(pd.Series(last_meter_time), utc=True)
    arr = pd.to_datetime(pd.Series(arrival), utc=True)
    ref = last.where(last.notna(), arr)
    age_s = (pd.Timestamp(now) - ref).dt.total_seconds().to_numpy(float)
    return np.nan_to_num(age_s, nan=np.inf) > float(stale_after_s)


def over_draw_mask(cars: pd.DataFrame, settled, settings: LoopSettings = LoopSettings()) -> np.ndarray:
    """True for cars that draw clearly more than the limit their charger accepted."""
    meas = cars["measured_current_a"].to_numpy(float)
    off = cars["offered_current_a"].to_numpy(float)
    return np.asarray(settled, bool) & np.isfinite(meas) & np.isfinite(off) & (meas > off + settings.over_draw_a)


def reserve_unobserved(site: Site, cp_index, phases, reserved_a) -> Site:
    """A copy of ``site`` whose fuse ratings are lowered by the reserved draw of some cars.

    ``cp_index``, ``phases`` and ``reserved_a`` [A per phase] describe the cars the policy
    must not plan for (stale meters, cars ignoring setpoints); their worst case loads every
    fuse phase above them, so what is left is what the policy may share out.
    """
    cp_index = np.asarray(cp_index, dtype=np.int64)
    if len(cp_index) == 0:
        return site
    load = site.fuse_phase_currents_a(np.asarray(reserved_a, float), cp_index, np.asarray(phases, np.int64))
    limits = np.maximum(site.limits_a - load, _MIN_RATING_A)
    fuses = tuple(replace(f, max_current_a=tuple(float(v) for v in limits[i])) for i, f in enumerate(site.fuses))
    return replace(site, fuses=fuses)


def running_mask(cars: pd.DataFrame, settings: LoopSettings = LoopSettings()) -> np.ndarray:
    """True for cars that are charging now: offered at least their minimum and drawing.

    A car whose draw is unknown but that holds an offer of at least its minimum counts as
    running (better to keep a car going than to risk one that cannot resume).
    """
    lo = cars["min_current_a"].to_numpy(float)
    off = cars["offered_current_a"].to_numpy(float)
    meas = cars["measured_current_a"].to_numpy(float)
    offered = np.isfinite(off) & (off >= lo - 1e-9) & (off > 0)
    drawing = ~np.isfinite(meas) | (meas >= min(1.0, settings.margin_a))
    return offered & drawing


def keep_running(snapshot: BlockSnapshot, current_a: pd.Series, running) -> pd.Series:
    """Hysteresis: lift running cars that the policy paused back to their minimum where it fits.

    ``current_a`` [A] must already be safe (see :func:`nowblock.seam.make_safe`); cars are
    tried by priority (highest first), then least time left; a car is lifted only if every
    limit row still holds, so other cars never lose current and nothing overloads. Cars whose
    reported needs are met are left paused.
    """
    cars = snapshot.cars
    x = pd.Series(current_a, dtype=float).reindex(cars.index).fillna(0.0).to_numpy(float, copy=True)
    return pd.Series(keep_running_a(snapshot, x, running), index=cars.index, name="current_a")


def keep_running_a(snapshot: BlockSnapshot, current_a: np.ndarray, running) -> np.ndarray:
    """:func:`keep_running` on an array of setpoints [A] in the order of ``snapshot.cars``
    (a new array is returned)."""
    x = np.array(current_a, dtype=float)
    lo = snapshot.values("min_current_a")
    hi = snapshot.values("max_current_a")
    done = snapshot.values("needs_known").astype(bool) & (snapshot.remaining_kwh <= 1e-6)
    cand = np.nonzero(np.asarray(running, bool) & (x <= 0) & ~done & (lo <= hi) & (lo > 0))[0]
    if len(cand):
        g, h = cached_constraint_rows(snapshot)
        load = g @ x
        slack = snapshot.hours_to_departure_h
        prio = snapshot.values("priority")
        for j in cand[np.lexsort((slack[cand], -prio[cand]))]:
            trial = load + g[:, j] * lo[j]
            if np.all(trial <= h + 1e-9):
                x[j] = lo[j]
                load = trial
    return x


def refill_a(safety: BlockSnapshot, planned_a: np.ndarray, cut_a: np.ndarray, *, tol_a: float = 1e-6) -> np.ndarray:
    """Setpoints [A] of the trusted cars with the room their cut freed handed out again.

    When the trusted cars are made safe against what the untrusted ones may really draw, a car
    loading several phases is lowered on all of them for a draw on one: a refusing single-phase
    car drawing 16 A on grid L1 (planned at 9 A) cut a three-phase car from 16 to 9 A, and the
    7 A it left on L2 and L3 stayed unused while another three-phase car was held at 0 A (an
    outside test: grid L3 at 33 of 40 A for minutes). Here that room goes back to the trusted
    cars, earliest departure first (then highest priority), each up to its maximum, in pilot
    steps, 0 or at least its minimum. On each grid-connection phase no more is handed out
    than the cut freed there, so the plan's total on each grid phase (its choice of when to
    charge) is never exceeded; every row of ``safety`` (the fuses less what the untrusted cars
    may draw) still holds.

    Parameters
    ----------
    safety : BlockSnapshot
        The trusted cars, on a site whose ratings are lowered by what the untrusted ones may
        draw (fuse rows only).
    planned_a, cut_a : numpy.ndarray
        [A per phase] The trusted cars' setpoints before and after they were made safe.

    Returns
    -------
    numpy.ndarray
        [A per phase] ``cut_a`` with some cars raised (a new array).
    """
    x = np.array(cut_a, dtype=float, copy=True)
    if len(x) == 0:
        return x
    g, h = cached_constraint_rows(safety)
    freed = g @ np.asarray(planned_a, float) - g @ x
    r0 = 3 * root_index(safety.site)
    if not (freed[r0:r0 + 3] > tol_a).any():
        return x
    budget = h - g @ x
    budget[r0:r0 + 3] = np.minimum(budget[r0:r0 + 3], np.maximum(freed[r0:r0 + 3], 0.0))
    lo = np.nan_to_num(safety.values("min_current_a"))
    hi = np.nan_to_num(safety.values("max_current_a"))
    step = float(safety.current_step_a) or 1.0
    prio = np.nan_to_num(safety.values("priority"))
    for i in np.lexsort((-prio, safety.hours_to_departure_h)):
        rows = g[:, i] > 0
        if x[i] >= hi[i] - tol_a or not rows.any():
            continue
        add = min(float(np.min(budget[rows] / g[rows, i])), hi[i] - x[i])
        new = np.floor((x[i] + max(add, 0.0)) / step + 1e-9) * step
        if new <= x[i] + tol_a or new < lo[i] - tol_a:
            continue
        budget -= g[:, i] * (new - x[i])
        x[i] = new
    return x


def lowered_a(snap: BlockSnapshot, x: np.ndarray, ids: pd.Index, new_a: np.ndarray) -> np.ndarray:
    """``x`` [A per phase] with the cars ``ids`` (session ids; those not in ``snap`` skipped) sent
    at most ``new_a`` [A per phase], floored to a pilot step and 0 below their minimum.

    It only lowers, so every fuse row that held still holds; the unbalance limit does not (a
    light phase may lose what balanced it): callers check it again.
    """
    pos = snap.cars.index.get_indexer(ids)
    keep = pos >= 0
    if not keep.any():
        return x
    pos, new = pos[keep], np.asarray(new_a, dtype=float)[keep]
    step = float(snap.current_step_a) or 1.0
    lo = snap.values("min_current_a")[pos]
    x = np.array(x, dtype=float, copy=True)
    # The new value floored, never the old one: a setpoint off the grid under its cap is kept.
    y = np.minimum(x[pos], np.floor(new / step + 1e-9) * step)
    x[pos] = np.where(y >= lo - 1e-9, y, 0.0)
    return x


def scaled_for_over_draw(snap: BlockSnapshot, x: np.ndarray, ratio: pd.Series) -> np.ndarray:
    """``x`` [A] with the setpoint of every car in ``ratio`` divided by what it draws over its
    offer, floored to a pilot step, 0 below its minimum.

    A car (or a charger's meter) drawing 1.2 x its limit stays over it at any limit: sent its
    share of the plan it kept a fuse its share filled 20 % over, for as long as it charged (an
    outside test, a 25 A feeder at 30 A for five minutes); the other cars were made safe around
    its draw, but it was the only car there. Sent its share over the ratio, it draws its share.
    A charger that ignores its limit altogether draws the same at any limit: its ratio grows
    each step until it is sent 0 A (and the escalation goes on as before).
    """
    pos = snap.cars.index.get_indexer(ratio.index)
    now = np.where(pos >= 0, np.asarray(x, dtype=float)[np.maximum(pos, 0)], 0.0)
    r = ratio.to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        new = np.where(np.isfinite(r) & (r > 1.0), now / r, 0.0)
    return lowered_a(snap, x, ratio.index, new)
