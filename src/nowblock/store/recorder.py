"""Recording the central system's events in a store, and restoring them after a restart.

:class:`StoreRecorder` (with :func:`attach_store`) writes every event into a
:class:`~nowblock.store.Store` from inside the OCPP handlers, before their answers go out;
:func:`restore_state` loads the running transactions back into a fresh live state.
"""

from __future__ import annotations

import logging
import math

import pandas as pd

from nowblock.store.base import StoreError

log = logging.getLogger(__name__)


class StoreRecorder:
    """Writes the central system's events to a :class:`~nowblock.store.Store` synchronously.

    Attached as a listener of the live state, it runs inside ``emit``, that is inside the OCPP
    handler and before the handler's answer is sent: nothing acknowledged is left unwritten. A
    database error propagates (the charger gets a CALLERROR and retries); input the store
    refuses as invalid is logged and skipped (retrying would not help). The record of a limit
    sent (the ``limit`` event) is the exception: the charger has answered already, so a
    failed write of it is logged and never reaches the sender; so is the record of a
    connection opened or closed (it acknowledges nothing, and refusing it would keep a charger
    out of control, or its disconnect from the controller).

    A connection opened or closed whose record failed (the database unreachable, a SQLite file
    locked past its busy timeout) is written again, with the station's connection state then,
    after the next write that succeeds and by :meth:`retry` (``nowblock serve`` calls it after
    every control step); until then the store said ``connected`` for a station long gone. The
    write keeps everything stored (``last_seen`` only moves forward).

    Every message from a station moves its ``last_seen`` in the store: the ``seen`` event of a
    message that stores nothing else (a Heartbeat, an Authorize) is written at most once every
    ``seen_every_s`` per station, so a year of heartbeats does not grow the database; a failed
    write of it is logged, not raised (the message itself stored nothing).

    Parameters
    ----------
    state : LiveState
        The central system's live state (``nowblock.ocpp.state.LiveState``).
    store : Store
        Where the events are written.
    seen_every_s : float
        [s] Least time between two writes of a station's ``last_seen`` for messages that store
        nothing else (default 30 s).
    """

    def __init__(self, state, store, *, seen_every_s: float = 30.0) -> None:
        self.state = state
        self.store = store
        self.seen_every_s = float(seen_every_s)
        self._seen_written: dict[str, pd.Timestamp] = {}  # station -> last_seen last written
        #: Stations whose connection record (connect/disconnect) failed -> the time of that event.
        self.unrecorded: dict[str, pd.Timestamp] = {}
        self._retried: pd.Timestamp | None = None  # when :meth:`retry` last tried
        self._flush_failed: pd.Timestamp | None = None  # when a flush after a write last failed

    def __call__(self, ev) -> None:
        """Record one event (see ``nowblock.ocpp.events.Event``)."""
        try:
            wrote = self._record(ev)
        except StoreError as exc:
            log.warning("store refused %s from %s: %s", ev.kind, ev.cp_id, exc)
            return
        if wrote and self.unrecorded:  # the store takes writes again
            # Not on every message while a record keeps failing (a row the store refuses would
            # be tried, and logged, on each of the block's messages): at most every seen_every_s.
            now = pd.Timestamp(ev.time)
            failed = self._flush_failed
            if failed is None or not 0.0 <= (now - failed).total_seconds() < self.seen_every_s:
                self._flush_failed = now if self.flush() else None

    def flush(self) -> int:
        """Write the connection state of the stations whose connect/disconnect record failed
        (see the class); returns how many are still unwritten."""
        for cp_id, t in list(self.unrecorded.items()):
            try:
                self.store.upsert_station(cp_id, time=t, **self._station_fields(cp_id))
            except Exception as exc:  # noqa: BLE001 - down again: kept for the next try
                log.warning("store could not record the connection state of %s yet: %s", cp_id, exc)
                break
            self.unrecorded.pop(cp_id, None)
            log.info("store recorded the connection state of %s at last", cp_id)
        return len(self.unrecorded)

    def retry(self, now: pd.Timestamp) -> int:
        """:meth:`flush`, at most once every ``seen_every_s`` [s] of ``now`` (a time-zone aware
        time): for a block where nothing else is written (its one station went away). Returns
        how many connection records are still unwritten."""
        if not self.unrecorded:
            return 0
        now = pd.Timestamp(now)
        if self._retried is not None and 0.0 <= (now - self._retried).total_seconds() < self.seen_every_s:
            return len(self.unrecorded)
        self._retried = now
        return self.flush()

    def _station_fields(self, cp_id: str) -> dict:
        """What the live state knows of station ``cp_id`` for its row (None: left as stored)."""
        station = self.state.stations.get(cp_id)
        boot = getattr(station, "boot", {}) or {}
        # The live state keeps the BootNotification as ``vendor``/``model`` for both OCPP
        # versions (ocpp.state.on_boot); the OCPP field names are accepted too.
        return dict(protocol=getattr(station, "version", None),
                    vendor=_first(boot, "vendor", "charge_point_vendor", "vendor_name"),
                    model=_first(boot, "model", "charge_point_model"),
                    connected=getattr(station, "connected", None))

    # The live state delivers events to subscribers through ``_put``; a recorder is one.
    _put = __call__

    def _record(self, ev) -> bool:
        """Write one event; True when something was written (False: nothing to write, or a
        write that may fail was logged instead)."""
        s, st, now = self.store, self.state, pd.Timestamp(ev.time)
        if ev.kind == "seen":
            return self._seen(ev.cp_id, now)
        if ev.kind in ("connect", "disconnect", "boot", "status"):
            # The row is written with the station's connection state now: a failed connection
            # record of it waits no more.
            missed = self.unrecorded.pop(ev.cp_id, None)
            try:
                s.upsert_station(ev.cp_id, time=now, status=ev.data.get("status"), **self._station_fields(ev.cp_id))
            except StoreError:
                if missed is not None:
                    self.unrecorded[ev.cp_id] = missed
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the database, SQLite's own errors too
                if ev.kind in ("boot", "status"):
                    if missed is not None:
                        self.unrecorded[ev.cp_id] = missed
                    raise  # a message the charger sends again when it is not acknowledged
                # A connection opened or closed acknowledges nothing: refusing it would keep the
                # charger out of control (or its disconnect from the controller: a SQLite file
                # locked past its busy timeout raised out of the disconnect, and the controller
                # never heard of it) for a record. Written again later (see the class).
                self.unrecorded[ev.cp_id] = now if missed is None else max(missed, now)
                log.warning("store could not record the %s of %s (%s: %s); written again once the store "
                            "takes writes", ev.kind, ev.cp_id, type(exc).__name__, exc)
                return False
            self._seen_written[ev.cp_id] = now
            return True
        if ev.kind == "limit":
            # The record of a dispatch is bookkeeping: the charger has answered already, so a failed
            # write is logged and must not reach the sender (it would book a limit the charger
            # holds as not sent, and count a raise it accepted at the old, lower limit).
            d = ev.data
            tx = st.running_on(ev.cp_id, ev.connector_id) if ev.connector_id else None
            try:
                s.record_profile(ev.cp_id, time=now, purpose=d.get("purpose") or "none", limit_a=d.get("wanted_a"),
                                 status=",".join(f"{p}:{a}" for p, a in d.get("attempts") or []) or "none",
                                 transaction_id=None if tx is None else tx.transaction_id,
                                 accepted_limit_a=d.get("accepted_a"))
            except Exception as exc:  # noqa: BLE001 - StoreUnavailable too: the limit was sent all the same
                log.warning("store could not record the limit %s A sent to %s/%s (%s: %s); the charger's answer "
                            "stands", d.get("wanted_a"), ev.cp_id, ev.connector_id, type(exc).__name__, exc)
                return False
            return True
        if ev.transaction_id is None:
            return False
        t = st.transaction(ev.cp_id, ev.transaction_id)
        if t is None:
            return False
        if ev.kind == "start":
            s.start_transaction(ev.cp_id, t.transaction_id, time=pd.Timestamp(t.start), connector_id=t.connector_id,
                                id_tag=t.id_tag, meter_start_wh=t.meter_start_wh, session_id=t.session_id)
        elif ev.kind == "meter":
            # ``seen``: last_seen moves with the meter values in the same commit (one write a message).
            # In our clock within its record (Transaction.record_time), the station's stamp beside it.
            s.record_meter_values(ev.cp_id, t.transaction_id, [{
                "time": pd.Timestamp(t.record_time or t.last_meter or ev.time),
                "station_time": None if t.last_stamp is None else pd.Timestamp(t.last_stamp),
                "energy_wh": t.energy_register_wh,
                "current_a": [None if math.isnan(c) else c for c in t.current_a],
                "power_kw": None if math.isnan(t.power_w) else t.power_w / 1000.0,
                "soc_percent": None if math.isnan(t.soc_percent) else t.soc_percent,
            }], seen=now)
            self._seen_written[ev.cp_id] = now
            return True
        elif ev.kind == "late_meter":
            # Acknowledged, stamped before the car's last reading (queued, resent): the live state
            # keeps the newer one, the store keeps this one too, dated in ours. The store's energy
            # so far only grows and its last register is the live state's (not late), so a late
            # reading neither lowers nor adds to it (m10: 1 of 2 acknowledged values stored before).
            s.record_meter_values(ev.cp_id, t.transaction_id, [{**_late_row(ev.data, st.site.voltage_v), "late": True}],
                                  seen=now)
            self._seen_written[ev.cp_id] = now
            return True
        elif ev.kind == "needs":
            s.update_needs(ev.cp_id, t.transaction_id, departure=t.departure,
                           energy_requested_kwh=None if math.isnan(t.energy_requested_kwh) else t.energy_requested_kwh,
                           known=True)
        elif ev.kind == "stop":
            s.stop_transaction(ev.cp_id, t.transaction_id, time=pd.Timestamp(t.stop or ev.time),
                               meter_stop_wh=t.meter_stop_wh, reason=t.stop_reason)
        else:
            return False
        # A start, a stop or needs: the station was heard from (once a session: a write of its own is cheap).
        s.upsert_station(ev.cp_id, time=now)
        self._seen_written[ev.cp_id] = now
        return True

    def _seen(self, cp_id: str, now: pd.Timestamp) -> bool:
        """Move ``cp_id``'s ``last_seen`` to ``now`` unless it was written less than ``seen_every_s``
        ago; True when written."""
        last = self._seen_written.get(cp_id)
        if last is not None and 0.0 <= (now - last).total_seconds() < self.seen_every_s:
            return False
        self._seen_written[cp_id] = now  # also after a failure: retried in seen_every_s, not every message
        try:
            self.store.upsert_station(cp_id, time=now)
        except Exception as exc:  # noqa: BLE001 - a SQLite file locked past its busy timeout too
            log.warning("store could not move last_seen of %s: %s", cp_id, exc)
            return False
        return True


def _late_row(d: dict, voltage_v: float) -> dict:
    """The stored meter row of a ``late_meter`` event's reading ``d`` (the keys of
    ``nowblock.ocpp.meter.parse_meter_values``, plus ``stamp``, the station's time, and ``time``,
    its date in ours within its transaction's record): ``energy_wh`` [Wh], ``current_a`` [A per
    phase; from per-phase power [W] at ``voltage_v`` [V] when only that was read, as the live state
    reads it], ``power_kw`` [kW], ``soc_percent`` [%], ``station_time`` (``stamp``)."""
    cur = [d.get(f"current_l{i}_a") for i in (1, 2, 3)]
    if all(c is None for c in cur):
        cur = [None if d.get(f"power_l{i}_w") is None else d[f"power_l{i}_w"] / voltage_v for i in (1, 2, 3)]
    power = d.get("power_w")
    return {"time": pd.Timestamp(d.get("time", d["stamp"])), "station_time": pd.Timestamp(d["stamp"]),
            "energy_wh": d.get("energy_wh"),
            "current_a": [None if c is None or math.isnan(c) else c for c in cur],
            "power_kw": None if power is None or math.isnan(power) else power / 1000.0,
            "soc_percent": None if d.get("soc_percent") is None or math.isnan(d["soc_percent"]) else d["soc_percent"]}


def _first(boot: dict, *keys: str):
    """The first of ``keys`` present with a value in ``boot`` (None if none is)."""
    for k in keys:
        v = boot.get(k)
        if v not in (None, ""):
            return str(v)
    return None


def attach_store(state, store) -> StoreRecorder:
    """Make ``state`` write every event to ``store`` before the OCPP answer goes out."""
    rec = StoreRecorder(state, store)
    if hasattr(state, "add_listener"):
        state.add_listener(rec)
    else:  # the live state hands events to everything in its subscriber set, synchronously
        state._subs.add(rec)
    return rec


def restore_state(state, store) -> int:
    """Load running transactions (energy so far, needs) from ``store`` into ``state``.

    Call before the central system accepts connections. Restored transactions have no fresh
    meter value, so the controller counts them at their maximum until their charger reports,
    and after that until their charger took a limit the controller sent and the meter settled
    under it (their session ids are ``state.restored_sessions``, which the controller takes).
    1.6 transaction ids continue above the largest one stored. Returns how many were restored.
    A station the store holds as connected is recorded as disconnected (none is connected to a
    process that has just started; its disconnect record was lost to a failed write or a crash).

    A stored record that cannot be read (a time outside what pandas holds, a missing start, a
    connector id that is no number) is skipped with an ERROR naming it, and so is the whole
    set when the store cannot load it at all: a restart must come up, not exit on one bad row.
    Their count is ``state.restore_skipped``.
    """
    state.restore_skipped = 0
    # The sessions restored: a controller counts each as untrusted until it takes a limit of its
    # own and follows it (its charger may hold what the process before sent, or refuse limits).
    state.restored_sessions = set()
    _mark_disconnected(state, store)
    try:
        top = int(store.max_numeric_transaction_id())
    except Exception as exc:
        log.error("could not read the largest stored transaction id (%r); 1.6 ids continue from the state's", exc)
        top = 0
    state.next_transaction_id = max(int(getattr(state, "next_transaction_id", 1)), top + 1)
    try:
        open_tx = store.load_open_transactions()
    except Exception as exc:
        log.error("could not load the open transactions from the store (%r); starting without them", exc)
        state.restore_skipped = -1
        return 0
    n = 0
    for _, r in open_tx.iterrows():
        if r["charge_point_id"] not in state.stations:
            log.warning("stored transaction %s on %s: station no longer in the site, skipped",
                        r["transaction_id"], r["charge_point_id"])
            continue
        try:
            state.restored_sessions.add(_restore_one(state, r))
        except Exception as exc:
            state.restore_skipped += 1
            log.error("stored transaction %s on %s cannot be read (%r): skipped", r.get("transaction_id"),
                      r.get("charge_point_id"), exc)
            continue
        n += 1
        try:
            _restore_clock(state, store, r["charge_point_id"], str(r["transaction_id"]))
        except Exception as exc:  # noqa: BLE001 - the transaction is restored; its clock is not needed to run
            log.error("stored meter values of %s on %s cannot be read for its clock (%r)", r.get("transaction_id"),
                      r.get("charge_point_id"), exc)
    if n:
        log.info("restored %d running transaction(s) from the store", n)
    return n


def _mark_disconnected(state, store) -> None:
    """Stations the store holds as connected that are not connected to this process (it has
    just started): their disconnect was never recorded (a write that failed, a crash). Written
    as disconnected; ``last_seen`` and every other field stay as stored."""
    try:
        rows = store.stations() if hasattr(store, "stations") else None
        if rows is None or not len(rows):
            return
        for _, r in rows[rows["connected"].astype(bool)].iterrows():
            station = state.stations.get(r["station_id"])
            if station is None or station.connected:
                continue
            t = r["last_seen"] if pd.notna(r["last_seen"]) else pd.Timestamp.now(tz="UTC")
            store.upsert_station(r["station_id"], time=t, connected=False)
            log.info("%s: stored as connected, not connected since the start: recorded as disconnected",
                     r["station_id"])
    except Exception as exc:  # noqa: BLE001 - a restart must come up; the next connection record fixes it
        log.error("could not record the stations not connected since the start (%r)", exc)


def _restore_clock(state, store, cp_id: str, transaction_id: str) -> None:
    """Set ``Station.clock_before_boot_s`` [s] of ``cp_id`` from the stored meter values of its
    restored transaction: the median of their own stamps less their dates in ours (its clock
    offset then), over its last 5; left as it is when none has a stamp. A station that reboots
    after the restart is judged by it (``LiveState.before_boot``): its replayed queue then
    revives no transaction the reboot ended, while a live value of a station B s behind is live."""
    rows = getattr(store, "meter_values", None)
    station = state.stations.get(cp_id)
    if rows is None or station is None:
        return
    mv = rows(cp_id, transaction_id)
    if "station_time" not in mv:
        return
    mv = mv.dropna(subset=["station_time", "time"]).tail(5)
    if len(mv):
        station.clock_before_boot_s = float((mv["station_time"] - mv["time"]).dt.total_seconds().median())


def _restore_one(state, r) -> str:
    arrival = r["arrival"]
    if pd.isna(arrival):
        raise ValueError("no readable start time")
    arrival.as_unit("ns")  # OutOfBoundsDatetime: the control loop works in nanoseconds (1677-2262)
    ms = None if pd.isna(r["meter_start_wh"]) else float(r["meter_start_wh"])
    connector = int(r["connector_id"]) if pd.notna(r["connector_id"]) else 1
    departure = None
    if bool(r["needs_known"]) and pd.notna(r["departure"]):
        try:
            departure = r["departure"].as_unit("ns").to_pydatetime()
        except (ValueError, OverflowError):
            log.error("stored departure %s of transaction %s cannot be used: restored without it",
                      r["departure"], r["transaction_id"])
    # Never in our future: a file written before schema version 3 stored a start by the station's
    # clock; one of a station 300 s ahead restored 300 s ahead, every later reading was "before
    # its start", dated at the start, and all but the first were dropped as repeats (rev1 F2).
    t = state.on_start(r["charge_point_id"], connector, r["transaction_id"],
                       start=min(arrival.to_pydatetime(), state.clock()),
                       meter_start_wh=ms, id_tag=None if pd.isna(r["id_tag"]) else r["id_tag"])
    if ms is not None:
        t.energy_register_wh = ms + 1000.0 * float(r["energy_delivered_kwh"])
    if pd.notna(r.get("last_meter_time")):
        # Its stop is never dated before a meter value stored of it (edge.checked_stop); none
        # after now (a file written before schema version 3 dated them by the station's clock).
        t.recorded_until = min(max(r["last_meter_time"].to_pydatetime(), t.start), max(state.clock(), t.start))
    if bool(r["needs_known"]):
        t.departure = departure
        if pd.notna(r["energy_requested_kwh"]):
            t.energy_requested_kwh = float(r["energy_requested_kwh"])
    return t.session_id
