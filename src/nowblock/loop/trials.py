"""Trials for cars read drawing at a 0 A limit, and cars whose meter reads an offset.

A car whose meter reads a current at a 0 A limit is either a car ignoring its limit or a meter
reading an offset on top of a car that follows it; only offering something tells them apart.
:class:`~nowblock.loop.step.ControlStep` plans such a car for a trial when the live loop's
retry for it is due (:attr:`ControlStep.probe_due`); these functions turn the step's setpoints
into the trial's and into the offset car's.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from nowblock.seam import BlockSnapshot, violation_a

log = logging.getLogger(__name__)


def _fuse_rows_only(snap: BlockSnapshot) -> BlockSnapshot:
    """``snap`` without its site's unbalance limit (its fuse rows alone)."""
    if snap.site.max_unbalance_a is None:
        return snap
    return replace(snap, site=replace(snap.site, max_unbalance_a=None))


def less_offsets(offsets: dict, snap: BlockSnapshot, x: np.ndarray) -> np.ndarray:
    """``x`` [A] with each car whose meter reads an offset on top of its limit sent its share
    less that offset (floored to a pilot step; it was planned in what it reads, its minimum
    plus the offset at least), or 0 A.

    Parameters
    ----------
    offsets : dict
        session_id -> [A] what its meter reads on top of its limit.
    snap : BlockSnapshot
        The step's policy snapshot (its cars' minimum there is the minimum plus the offset).
    x : numpy.ndarray
        [A per phase] Setpoints per snapshot car.

    Returns
    -------
    numpy.ndarray
        [A per phase] The setpoints to send.
    """
    index = snap.cars.index
    pos = [i for i, sid in enumerate(index) if sid in offsets]
    if not pos:
        return x
    step = float(snap.current_step_a) or 1.0
    lo = snap.values("min_current_a")
    x = np.array(x, dtype=float, copy=True)
    for i in pos:
        sid = index[i]
        off = offsets[sid]
        want = np.floor((x[i] - off) / step + 1e-9) * step
        x[i] = want if want >= lo[i] - off - 1e-9 else 0.0  # lo: its minimum plus the offset here
    return x


def start_trials(step, snap: BlockSnapshot, ctx, x: np.ndarray, planned: np.ndarray) -> np.ndarray:
    """``x`` [A] with the cars on trial kept at their minimum, and new trials started.

    A car whose meter reads a current at a 0 A limit is a car ignoring its limit or a meter
    with an offset: the two cannot be told apart without offering something, and held at 0
    A it was never served again (a 3 A offset held a car at 0 A with the whole fuse free).
    When its retry is due (:attr:`ControlStep.probe_due`) it is planned at its draw plus its minimum;
    if the plan (``planned``, before the over-draw scaling) gives it that and every fuse has
    room for it with the others at what they are counted at, it is offered its minimum.
    Once its draw at that settles it is judged: a reading that rose with its limit is a
    meter offset (sent its share less the offset from then on); one that did not, a car
    ignoring its limit (back to 0 A until its next retry).

    Parameters
    ----------
    step : ControlStep
        Its ``trial_candidates`` (session -> draw at 0 A [A]) this step; ``probes`` gets the
        trials started.
    snap : BlockSnapshot
        The step's policy snapshot.
    ctx : StepContext
        The step's context (untrusted cars, what they may draw, cars on trial).
    x : numpy.ndarray
        [A per phase] Setpoints per snapshot car after the over-draw scaling.
    planned : numpy.ndarray
        [A per phase] The same before it.

    Returns
    -------
    numpy.ndarray
        [A per phase] The setpoints to send.
    """
    index = snap.cars.index
    lo = ctx.cars["min_current_a"].reindex(index).to_numpy(float)
    on = np.array([s in ctx.probing for s in index])
    new = np.array([s in step.trial_candidates for s in index])
    if new.any():
        # Every car at what it is counted at: the trusted at their setpoints, the others at
        # what they may draw, this one at its draw plus its minimum.
        doubt = index.isin(list(ctx.untrusted))
        counted = np.array(x, dtype=float, copy=True)
        counted[doubt] = ctx.committed_a.reindex(index[doubt]).fillna(0.0).to_numpy(float)
        fuses = _fuse_rows_only(snap)
        for i in np.flatnonzero(new):
            sid = index[i]
            trial = counted.copy()
            trial[i] += lo[i]
            if planned[i] >= lo[i] - 1e-9 and violation_a(fuses, trial) <= 1e-9:
                on[i] = True
                step.probes[sid] = step.trial_candidates[sid]
                log.info("%s: drew %.1f A at a 0 A limit; offered its minimum %.1f A on trial", sid,
                         step.probes[sid], float(lo[i]))
    if on.any():
        x = np.array(x, dtype=float, copy=True)
        x[on] = lo[on]
    return x

