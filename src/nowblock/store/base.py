"""What a store is: the :class:`Store` protocol, its errors and its value checks.

Backends (:mod:`~nowblock.store.sqlite`, :mod:`~nowblock.store.postgres`) implement :class:`Store`; every
write is durable when the method returns, so an OCPP handler that writes and *then*
acknowledges never acknowledges something that is not stored. Values are checked before
anything is written (:func:`check_time`, :func:`check_number`): bad input raises
:class:`StoreError` and changes nothing.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Protocol, runtime_checkable

import pandas as pd

#: Columns of :meth:`Store.load_open_transactions` (one row per running transaction).
OPEN_TRANSACTION_COLUMNS = (
    "session_id", "charge_point_id", "transaction_id", "connector_id", "id_tag", "arrival",
    "departure", "energy_requested_kwh", "needs_known", "energy_delivered_kwh", "meter_start_wh",
    "meter_last_wh", "last_meter_time", "phases", "max_current_a",
)


class StoreError(ValueError):
    """Input a store refuses (bad value, unknown transaction); nothing stored was changed."""


class StoreFileError(StoreError):
    """A database that cannot be used as nowblock's store: bad input, not an internal error.

    Raised when a store is opened on something that is not a healthy nowblock database: a
    directory, a file that is not SQLite, a damaged file, another program's database, nowblock's
    tables with columns missing, or a schema written by a newer nowblock. The message starts
    with the path (or URL) and says what was found; nothing in the file was changed.
    ``nowblock serve`` prints it as one line after ``--db`` and exits with status 2.
    """


class StoreUnavailable(ConnectionError):
    """The database could not be reached: the write may not have been stored.

    Not a :class:`StoreError` on purpose: the recorder skips refused input, but this must
    reach the OCPP handler so that nothing is acknowledged (the charger sends it again).
    """


@runtime_checkable
class Store(Protocol):
    """What the central system and the controller persist; every write is durable on return."""

    def upsert_station(self, station_id: str, *, time, protocol: str | None = None, vendor: str | None = None,
                       model: str | None = None, status: str | None = None,
                       connected: bool | None = None) -> None:
        """Create or update a station row (``time`` tz-aware); None leaves a field as it was."""

    def start_transaction(self, station_id: str, transaction_id, *, time, connector_id: int | None = None,
                          id_tag: str | None = None, meter_start_wh: float | None = None,
                          session_id: str | None = None, phases: int | None = None,
                          max_current_a: float | None = None) -> str:
        """Record a started transaction (``meter_start_wh`` [Wh], ``max_current_a`` [A]); returns its session id."""

    def record_meter_values(self, station_id: str, transaction_id, rows: Iterable[Mapping], *, seen=None) -> int:
        """Store samples (``time``, ``energy_wh`` [Wh], ``current_a`` [A], ``power_kw`` [kW], ``soc_percent``,
        ``late``: not applied, so not the last register); returns how many were new.

        ``seen`` (tz-aware), when given, moves the station's ``last_seen`` up to it in the same transaction."""

    def update_needs(self, station_id: str, transaction_id, *, departure=None,
                     energy_requested_kwh: float | None = None, known: bool = True) -> None:
        """Set a running transaction's needs: departure (tz-aware) and energy [kWh]."""

    def stop_transaction(self, station_id: str, transaction_id, *, time, meter_stop_wh: float | None = None,
                         reason: str | None = None) -> None:
        """Close a transaction at ``time`` with its final register ``meter_stop_wh`` [Wh]."""

    def record_profile(self, station_id: str, *, time, purpose: str, limit_a: float | None, status: str,
                       transaction_id=None, accepted_limit_a: float | None = None, valid_to=None) -> None:
        """Log a profile sent (``limit_a`` [A]), the charger's answer and the limit it accepted [A]."""

    def save_plan(self, time, current_a: pd.DataFrame, *, policy: str = "", status: str = "") -> None:
        """Store the plan made at ``time``: setpoints [A], time slots x session id."""

    def latest_plan(self) -> tuple[pd.Timestamp, pd.DataFrame] | None:
        """The last stored plan (time, setpoints [A]), or None."""

    def load_open_transactions(self) -> pd.DataFrame:
        """Transactions not stopped yet, with their energy so far [kWh] (for a restart)."""

    def sessions_history(self, since=None) -> pd.DataFrame:
        """Finished sessions since ``since`` (tz-aware) as a sessions frame (energy [kWh])."""

    def max_numeric_transaction_id(self) -> int:
        """The largest integer transaction id stored (1.6 ids must never repeat), 0 if none."""

    def record_event(self, time, kind: str, data: dict) -> None:
        """Keep an event for the operator (an alarm: an overload, a car not following its limit)."""

    def events(self, since=None, kind: str | None = None) -> pd.DataFrame:
        """Events (``time``, ``kind``, ``data`` dict) since ``since``, oldest first."""

    def save_operator_input(self, kind: str, key: str, data: dict, *, time) -> None:
        """Create or replace an operator input (a cap, a resident's needs, a point out of service)."""

    def delete_operator_input(self, kind: str, key: str) -> bool:
        """Remove an operator input; returns whether it existed."""

    def load_operator_inputs(self) -> list[dict]:
        """Every operator input as ``{"kind", "key", "data", "updated_at"}`` (for a restart)."""

    def recent_meter_values(self, since, until=None, *, bucket_s: float | None = None) -> pd.DataFrame:
        """Meter samples from ``since`` (tz-aware) on: ``time``, ``station_id``, ``energy_wh`` [Wh],
        ``current_l1_a`` .. ``current_l3_a`` [A], ``power_kw`` [kW], ``soc_percent``; with
        ``bucket_s`` [s] averaged per station and bucket (``time``: the bucket's start)."""

    def close(self) -> None:
        """Release the connection; every acknowledged write is already durable."""


def session_id_for(station_id: str, transaction_id) -> str:
    """The session id of transaction ``transaction_id`` on ``station_id`` (unique in a block)."""
    return f"{station_id}:{transaction_id}"


# ---- value checks: refuse bad input before touching the database -----------------------------
def check_time(t, what: str) -> str:
    """UTC ISO 8601 text with fixed width so that text order is time order."""
    try:
        ts = pd.Timestamp(t)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{what}: not a timestamp ({t!r})") from exc
    if ts is pd.NaT or pd.isna(ts):
        raise StoreError(f"{what}: missing timestamp")
    if ts.tzinfo is None:
        raise StoreError(f"{what}: timestamp must be timezone-aware ({t!r})")
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def check_number(v, what: str, *, allow_none: bool = True, min_value: float | None = None) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v) and allow_none):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what}: not a number ({v!r})") from exc
    if not math.isfinite(f):
        raise StoreError(f"{what}: not a finite number ({v!r})")
    if min_value is not None and f < min_value:
        raise StoreError(f"{what}: must be >= {min_value}, got {f}")
    return f


