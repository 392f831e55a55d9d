"""What a block reports at one instant: the input of a control step, simulated or live.

A :class:`SnapshotSource` (the simulator's block, the live OCPP state) answers
``observe(time)`` with an :class:`Observation`: the plugged-in cars as measured (needs may be
unknown, limits as the chargers hold them), what an idle connector would let a new car draw,
the block's other load and prices ahead, and the pilot-signal step. Everything after that
(needs estimation, reservations, the policy's snapshot, the safety net) is
:class:`nowblock.loop.step.ControlStep`, the same code for both sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from nowblock.block.site import Site
from nowblock.seam import CAR_COLUMNS

#: Columns of :attr:`Observation.cars` beyond :data:`nowblock.seam.CAR_COLUMNS`.
OBSERVED_COLUMNS = {
    "connector_id": "connector (OCPP 1.6) or EVSE (2.0.1) the car is plugged in at",
    "last_meter": "time of the last meter value (UTC; NaT if none yet)",
    "connected": "whether the charger is connected now (a simulated one always is)",
    "limit_known": "whether the charger is known to hold a limit (an accepted profile): "
                   "then ``offered_current_a`` is that limit, else the charging point's maximum",
}


def empty_idle_defaults() -> pd.Series:
    """An empty :attr:`Observation.idle_defaults_a` (no idle connector can surprise the block)."""
    return _EMPTY_IDLE.copy()


_EMPTY_IDLE = pd.Series([], index=pd.MultiIndex.from_arrays(
    [pd.Index([], dtype=object), pd.Index([], dtype=np.int64)], names=["charge_point_id", "connector_id"]),
    dtype=float, name="current_a")


@dataclass(frozen=True)
class Observation:
    """The block at ``time`` as a source reports it.

    Attributes
    ----------
    time : pandas.Timestamp
        Now (UTC).
    site : Site
        The block's fuses and charging points.
    step : pandas.Timedelta
        The planning step of the snapshot (base load and prices are on this grid).
    cars : pandas.DataFrame
        One row per plugged-in session (index session_id) with the columns of
        :data:`nowblock.seam.CAR_COLUMNS` and :data:`OBSERVED_COLUMNS`. Unknown needs are
        NaT/NaN with ``needs_known`` False; ``measured_current_a`` [A] is NaN before the first
        meter value; ``offered_current_a`` [A] is the limit the charger holds.
    base_load_kw : pandas.Series
        [kW] The block's other load from ``time`` on, at ``step`` spacing (the first value is
        the worst of the coming step).
    prices_eur_per_kwh : pandas.Series or None
        [EUR/kWh] Prices on the same grid, or None.
    current_step_a : float
        [A] The pilot-signal step the chargers accept (0.1 for OCPP 1.6, 1 for most others).
    idle_defaults_a : pandas.Series
        [A per phase] For every idle connector (index charge_point_id, connector_id), what a car
        plugging in there would draw before the next step reaches it; empty when none can.
    incidence_a : numpy.ndarray, optional
        The cars' phase incidence (see :meth:`Site.phase_incidence`) when the source has it.
    arrays : dict, optional
        Numeric columns of ``cars`` as arrays in row order, equal to the columns, when the
        source has them anyway (the simulator): they save the step the pandas look-ups.
    """

    time: pd.Timestamp
    site: Site
    step: pd.Timedelta
    cars: pd.DataFrame
    base_load_kw: pd.Series
    prices_eur_per_kwh: pd.Series | None = None
    current_step_a: float = 1.0
    idle_defaults_a: pd.Series = field(default_factory=lambda: _EMPTY_IDLE)
    incidence_a: np.ndarray | None = field(default=None, repr=False, compare=False)
    arrays: dict | None = field(default=None, repr=False, compare=False)

    def column(self, name: str) -> np.ndarray:
        """Column ``name`` of :attr:`cars` as an array (from :attr:`arrays` when given)."""
        if self.arrays is not None and name in self.arrays:
            return self.arrays[name]
        return self.cars[name].to_numpy()


@runtime_checkable
class SnapshotSource(Protocol):
    """Anything that can report the block: the simulator's block and the live OCPP state."""

    def observe(self, time: pd.Timestamp) -> Observation:
        """The block at ``time`` (see :class:`Observation`)."""
        ...


def observed_frame(columns: dict) -> pd.DataFrame:
    """A cars frame with every observation column from a dict of equally long columns.

    ``columns`` holds ``session_id`` and the columns of :data:`nowblock.seam.CAR_COLUMNS` (times
    as tz-aware UTC arrays); missing optional columns get their neutral value (connector 1, no
    meter value yet, connected, limit known, priority 1, needs known).
    """
    n = len(columns["session_id"])
    defaults = {"connector_id": np.ones(n, dtype=np.int64), "last_meter": _NAT_UTC, "connected": np.ones(n, bool),
                "limit_known": np.ones(n, bool), "priority": np.ones(n), "needs_known": np.ones(n, bool)}
    sid = columns["session_id"]
    index = sid if isinstance(sid, pd.Index) else pd.Index(sid, name="session_id", dtype=object)
    data = {}
    for c in (*CAR_COLUMNS, *OBSERVED_COLUMNS):
        v = columns[c] if c in columns else defaults[c]
        if c in ("arrival", "departure", "last_meter") and not isinstance(getattr(v, "dtype", None),
                                                                           pd.DatetimeTZDtype):
            v = pd.to_datetime(pd.Series(v, dtype=object) if np.ndim(v) else [v] * n, utc=True).array
        data[c] = v
    return pd.DataFrame(data, index=index, copy=False)


_NAT_UTC = pd.NaT
