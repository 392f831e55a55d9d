"""Cars found running after a restart, until they take a limit of this process and follow it.

A restarted ``serve`` restores the running transactions from its store, but not what their
chargers hold: a limit the dead process sent (still in force for its life), or none at all from
a charger that refuses every limit. :class:`~nowblock.loop.step.ControlStep` keeps such sessions
in its ``unconfirmed`` set: each is untrusted ("stale", counted at its maximum) and sent no more
than it draws (:func:`draw_caps_a`, :func:`capped_at_draw`): any more may be a raise whose
lowerings, which it depends on, were not answered. It leaves the set once a limit sent by this
process was accepted and its meter settled under it (:func:`unconfirmed_mask`). An outside test
found a restored car counted as trusted at once: a refusing car's 0 A went out with the others'
raises in one wave, 41 A on a 25 A feeder for 2-3 s.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from nowblock.loop.closed_loop import lowered_a
from nowblock.seam import BlockSnapshot, safe_setpoints_a

log = logging.getLogger(__name__)

_NAT = np.iinfo(np.int64).min


def _holds(step, sid: str) -> float | None:
    """[A] The limit this process last sent ``sid`` if its charger accepted it, else None."""
    got = step.accepted.get(sid)
    if got is None or sid not in step.sent or abs(step.sent[sid][0] - got[0]) > 1e-6:
        return None
    return got[0]


def unconfirmed_mask(step, cars: pd.DataFrame, last_ns: np.ndarray, measured_a: np.ndarray,
                     offered_a: np.ndarray) -> np.ndarray:
    """Per car of ``cars``: restored and not confirmed yet.

    Parameters
    ----------
    step : ControlStep
        Its ``unconfirmed`` set (confirmed cars leave it), ``accepted`` and ``sent`` books and
        ``settings`` (``settle_s`` [s], ``over_draw_a`` [A]).
    cars : pandas.DataFrame
        The observed cars (index session_id).
    last_ns : numpy.ndarray
        [ns since the epoch] Each car's last meter value (int64's minimum: none).
    measured_a, offered_a : numpy.ndarray
        [A per phase] What each car draws and the limit its charger holds.

    Returns
    -------
    numpy.ndarray
        bool per car. A car is confirmed when the last limit it was sent is one its charger
        accepted and holds, and its meter, read at least ``settle_s`` after the acceptance, is
        within it (``over_draw_a``).
    """
    out = cars.index.isin(list(step.unconfirmed))
    s = step.settings
    for i in np.flatnonzero(out):
        sid = cars.index[i]
        lim = _holds(step, sid)
        if lim is None:
            continue
        at = step.accepted[sid][1]
        if (last_ns[i] != _NAT and last_ns[i] - at.value >= s.settle_s * 1e9 and np.isfinite(measured_a[i])
                and measured_a[i] <= lim + s.over_draw_a and offered_a[i] <= lim + 0.05):
            step.unconfirmed.discard(sid)
            out[i] = False
            log.info("%s: restored session follows the %.1f A it accepted: trusted", sid, lim)
    return out


def draw_caps_a(step, index: pd.Index, measured_a: np.ndarray) -> pd.Series:
    """[A per phase] The most each restored car not confirmed yet is sent: what it draws (0 A
    before its first meter value; a live car's station names it in that one, and until then it
    is an offline car's and sent nothing, ``LiveState.on_connect``), or the limit it accepted
    from this process if higher (it
    holds that one, so no raise; capped at its draw alone, a car drawing a little under its
    limit was lowered a pilot step at a time)."""
    acc = np.array([_holds(step, x) or 0.0 for x in index], dtype=float)
    return pd.Series(np.maximum(np.nan_to_num(np.asarray(measured_a, float), nan=0.0), acc), index=index,
                     dtype=float)


def capped_at_draw(snap: BlockSnapshot, x: np.ndarray, caps_a: pd.Series) -> np.ndarray:
    """``x`` [A per phase] with each car in ``caps_a`` sent at most its cap [A] (floored to a
    pilot step, 0 below its minimum). It only lowers, so every fuse row still holds; the
    unbalance limit is checked again."""
    if not snap.cars.index.isin(caps_a.index).any():
        return x
    x = lowered_a(snap, x, caps_a.index, caps_a.to_numpy(float))
    if snap.site.max_unbalance_a is not None:
        x = safe_setpoints_a(snap, x)
    return x
