"""The :class:`~nowblock.store.Store` written once in portable SQL, for every SQL backend.

A backend (:mod:`~nowblock.store.sqlite`, :mod:`~nowblock.store.postgres`) supplies the
connection, its schema migrations and three small dialect hooks; every statement, value check
and result frame lives here, so the two backends cannot drift apart. Statements use named
``:name`` parameters and a few portable spellings: ``ON CONFLICT ... DO NOTHING`` for an
ignored duplicate, ``GREATEST``/``LEAST`` for the row-wise maximum and minimum (PostgreSQL's
built-ins; the SQLite backend registers the same functions), ``CAST(:x AS DOUBLE PRECISION)``
where PostgreSQL must learn a parameter's type from its first use.

Every write is one database transaction committed before the method returns; a batch with one
bad row is refused whole before anything is written (:class:`~nowblock.store.StoreError`).

Schema versions. Each backend lists its migrations as ``(version, description, statements)``;
on open, :meth:`SqlStore._migrate` applies those above the version recorded in the table
``nowblock_schema``, each in its own transaction together with its row there, so a failed
migration leaves the previous version intact. A database written by a newer nowblock (a
version this one does not know) is refused rather than guessed at.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from nowblock.store.base import (OPEN_TRANSACTION_COLUMNS, StoreError, StoreFileError, check_number as _num,
                                 check_time as _ts, session_id_for)

log = logging.getLogger(__name__)

#: A migration: (version, what it does, SQL statements run in one transaction).
Migration = tuple[int, str, tuple[str, ...]]


def parse_times(col: pd.Series) -> pd.Series:
    """Stored times as tz-aware UTC: ISO text (SQLite) or datetime objects (PostgreSQL).

    A stored time pandas cannot hold (outside 1677-2262, or garbage written by an older
    version) reads as NaT, so one bad row cannot stop a restart: ``restore_state`` skips and
    reports a transaction whose start is NaT.
    """
    if col.map(lambda v: isinstance(v, str)).any():
        return pd.to_datetime(col.replace("", None), format="ISO8601", utc=True, errors="coerce")
    return pd.to_datetime(col, utc=True, errors="coerce")


class SqlStore:
    """The shared implementation of :class:`~nowblock.store.Store` (not used directly).

    A subclass sets :attr:`MIGRATIONS` and :attr:`ALL_DIGITS_SQL`, and implements
    :meth:`_begin` (a context yielding ``run(sql, params) -> rowcount`` inside one committed
    transaction) and :meth:`_query` (``sql, params -> (columns, rows)``).
    """

    #: The backend's schema migrations, oldest first (see the module docstring).
    MIGRATIONS: tuple[Migration, ...] = ()
    #: A condition true when ``transaction_id`` is all digits, and the type to cast it to.
    ALL_DIGITS_SQL: str = ""
    INTEGER_CAST: str = "INTEGER"
    #: An expression of the column ``time`` as whole seconds since the epoch (for time buckets).
    EPOCH_S_SQL: str = ""

    closed: bool = False

    def __init__(self, *, plans_kept: int = 50) -> None:
        self._plans_kept = int(plans_kept)

    # ---- backend hooks ----------------------------------------------------------------------
    @contextmanager
    def _begin(self, *, exclusive: bool = False) -> Iterator[Callable[[str, dict], int]]:
        raise NotImplementedError  # pragma: no cover - every backend overrides it

    def _query(self, sql: str, params: dict) -> tuple[list[str], list[tuple]]:
        raise NotImplementedError  # pragma: no cover - every backend overrides it

    def _location(self) -> str:
        """Where the database is, for messages (a path, or a URL without its password)."""
        return "the database"

    # ---- plumbing -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise StoreError("store is closed")

    def _write(self, statements: list[tuple[str, dict]]) -> list[int]:
        """Run statements in one transaction; returns each one's row count."""
        self._check_open()
        with self._begin() as run:
            return [run(sql, params) for sql, params in statements]

    def _read(self, sql: str, params: dict | None = None) -> pd.DataFrame:
        self._check_open()
        cols, rows = self._query(sql, params or {})
        return pd.DataFrame(rows, columns=cols)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- schema versions ------------------------------------------------------------------
    @property
    def latest_schema_version(self) -> int:
        """The newest schema version this nowblock knows."""
        return max((m[0] for m in self.MIGRATIONS), default=0)

    def schema_version(self) -> int:
        """The schema version of the open database (0 before any migration)."""
        df = self._read("SELECT MAX(version) AS v FROM nowblock_schema")
        v = df["v"].iloc[0]
        return 0 if v is None or pd.isna(v) else int(v)

    def _migrate(self, version_table_sql: str) -> None:
        """Bring the schema to :attr:`latest_schema_version`, one migration a transaction."""
        latest = self.latest_schema_version
        while True:
            with self._begin(exclusive=True) as run:  # two processes opening at once: one migrates
                run(version_table_sql, {})
                _, rows = self._query("SELECT MAX(version) FROM nowblock_schema", {})  # same connection, same transaction
                current = 0 if rows[0][0] is None else int(rows[0][0])
                if current > latest:
                    # Bad input, not a bug: say where, so the operator knows which file to move.
                    raise StoreFileError(
                        f"{self._location()}: the database has schema version {current}, newer than this "
                        f"nowblock knows ({latest}): upgrade nowblock, or use another database")
                todo = [m for m in self.MIGRATIONS if m[0] > current]
                if not todo:
                    return
                version, what, statements = todo[0]
                for sql in statements:
                    run(sql, {})
                run("INSERT INTO nowblock_schema (version, description, applied_at) VALUES (:v, :d, :t)",
                    {"v": version, "d": what, "t": _ts(pd.Timestamp.now(tz="UTC"), "migration time")})
                log.info("store schema migrated to version %d (%s)", version, what)

    # ---- stations -----------------------------------------------------------------------------
    def upsert_station(self, station_id, *, time, protocol=None, vendor=None, model=None, status=None,
                       connected=None) -> None:
        """Create or update a station; ``None`` fields keep their stored value."""
        t = _ts(time, "station time")
        conn = None if connected is None else bool(connected)
        self._write([(
            """INSERT INTO stations (station_id, protocol, vendor, model, status, connected, first_seen, last_seen)
               VALUES (:sid, :protocol, :vendor, :model, :status, COALESCE(CAST(:conn AS BOOLEAN), FALSE), :t, :t)
               ON CONFLICT (station_id) DO UPDATE SET
                 protocol = COALESCE(excluded.protocol, stations.protocol),
                 vendor = COALESCE(excluded.vendor, stations.vendor),
                 model = COALESCE(excluded.model, stations.model),
                 status = COALESCE(excluded.status, stations.status),
                 connected = COALESCE(CAST(:conn AS BOOLEAN), stations.connected),
                 last_seen = GREATEST(stations.last_seen, excluded.last_seen)""",
            {"sid": str(station_id), "protocol": protocol, "vendor": vendor, "model": model, "status": status,
             "conn": conn, "t": t},
        )])

    def stations(self) -> pd.DataFrame:
        """All stations with protocol, status, connected flag, first and last seen (UTC)."""
        df = self._read("SELECT * FROM stations ORDER BY station_id")
        for c in ("first_seen", "last_seen"):
            df[c] = parse_times(df[c])
        df["connected"] = df["connected"].astype(bool)
        return df

    # ---- transactions ---------------------------------------------------------------------
    def start_transaction(self, station_id, transaction_id, *, time, connector_id=None, id_tag=None,
                          meter_start_wh=None, session_id=None, phases=None, max_current_a=None) -> str:
        """Record a started transaction; returns its session id.

        A repeated start of the same (station, transaction) fills only fields still empty and
        never resets the energy so far, so a charger that repeats a message loses nothing.
        """
        t = _ts(time, "transaction start")
        ms = _num(meter_start_wh, "meter_start_wh", min_value=0.0)
        mx = _num(max_current_a, "max_current_a", min_value=0.0)
        if phases is not None and int(phases) not in (1, 2, 3):
            raise StoreError(f"phases: must be 1, 2 or 3, got {phases!r}")
        key = {"st": str(station_id), "tx": str(transaction_id)}
        sid = session_id or session_id_for(station_id, transaction_id)
        self._write([(
            """INSERT INTO transactions (session_id, station_id, transaction_id, connector_id, id_tag, started_at,
                   meter_start_wh, meter_last_wh, phases, max_current_a)
               VALUES (:sid, :st, :tx, :conn, :tag, :t, :ms, :ms, :ph, :mx)
               ON CONFLICT (station_id, transaction_id) DO UPDATE SET
                 connector_id = COALESCE(transactions.connector_id, excluded.connector_id),
                 id_tag = COALESCE(transactions.id_tag, excluded.id_tag),
                 started_at = LEAST(transactions.started_at, excluded.started_at),
                 meter_start_wh = COALESCE(transactions.meter_start_wh, excluded.meter_start_wh),
                 meter_last_wh = COALESCE(transactions.meter_last_wh, excluded.meter_last_wh),
                 phases = COALESCE(excluded.phases, transactions.phases),
                 max_current_a = COALESCE(excluded.max_current_a, transactions.max_current_a)""",
            {**key, "sid": sid, "conn": None if connector_id is None else int(connector_id), "tag": id_tag,
             "t": t, "ms": ms, "ph": None if phases is None else int(phases), "mx": mx},
        )])
        row = self._read("SELECT session_id FROM transactions WHERE station_id = :st AND transaction_id = :tx", key)
        return str(row["session_id"].iloc[0])

    def record_meter_values(self, station_id, transaction_id, rows, *, seen=None) -> int:
        """Store meter samples; returns how many were new.

        ``seen`` (a tz-aware time, the central system's clock when the values arrived), when
        given, moves the station's ``last_seen`` up to it in the same transaction: meter
        values are what a charging station sends most, and a separate write per message would
        double the commits (one disk flush each with ``synchronous=FULL``).

        Each row is a mapping with ``time`` (the central system's clock) and any of ``energy_wh``
        (register [Wh]), ``current_a`` (per phase [A], a number or up to three), ``power_kw``
        [kW], ``soc_percent``, ``station_time`` (what the station stamped it, in its own clock;
        kept beside ``time``, tz-aware), ``late`` (True: a reading its station sent after a newer
        one, which the live state did not apply: a queued or resent message). A repeated sample (same station,
        transaction, time) is ignored, not overwritten. The transaction's energy so far only
        ever grows (a register that jumps back, after a charger reset, does not erase delivered
        energy). Its last register (``meter_last_wh``) is the last one recorded that is not
        ``late``, in the order recorded (within one call, by time), as the live state applies
        readings: by the newest time, a station whose clock stepped back 600 s kept the register
        of before the step for 600 s (10,300 Wh stored while 15,300 Wh were read and applied).
        ``last_meter_time`` is the latest time stored.
        """
        tx = "" if transaction_id is None else str(transaction_id)
        samples = []
        for i, r in enumerate(rows):
            t = _ts(r.get("time"), f"meter row {i} time")
            cur = r.get("current_a")
            if cur is None or np.isscalar(cur):
                cur = [cur]
            cur = [_num(c, f"meter row {i} current_a") for c in list(cur)[:3]] + [None] * (3 - min(3, len(cur)))
            raw = r.get("station_time")
            samples.append({"st": str(station_id), "tx": tx, "t": t, "late": bool(r.get("late", False)),
                            "raw": None if raw is None else _ts(raw, f"meter row {i} station_time"),
                            "e": _num(r.get("energy_wh"), f"meter row {i} energy_wh", min_value=0.0),
                            "l1": cur[0], "l2": cur[1], "l3": cur[2],
                            "p": _num(r.get("power_kw"), f"meter row {i} power_kw"),
                            "soc": _num(r.get("soc_percent"), f"meter row {i} soc_percent")})
        seen_at = None if seen is None else _ts(seen, "seen")
        if not samples and seen_at is None:
            return 0
        insert = """INSERT INTO meter_values (station_id, transaction_id, time, energy_wh, current_l1_a,
                        current_l2_a, current_l3_a, power_kw, soc_percent, station_time)
                    VALUES (:st, :tx, :t, :e, :l1, :l2, :l3, :p, :soc, :raw) ON CONFLICT DO NOTHING"""
        # The first register seen opens a transaction whose start carried no meter value.
        update = """UPDATE transactions SET
                      meter_start_wh = COALESCE(meter_start_wh, CAST(:e AS DOUBLE PRECISION)),
                      meter_last_wh = CASE WHEN :e IS NOT NULL AND NOT CAST(:late AS BOOLEAN)
                                           THEN :e ELSE meter_last_wh END,
                      last_meter_time = GREATEST(last_meter_time, :t),
                      energy_kwh = CASE WHEN :e IS NULL THEN energy_kwh
                                        ELSE GREATEST(energy_kwh, (:e - COALESCE(meter_start_wh, :e)) / 1000.0) END
                    WHERE station_id = :st AND transaction_id = :tx AND stopped_at IS NULL"""
        new = 0
        self._check_open()
        with self._begin() as run:
            for p in sorted(samples, key=lambda p: p["t"]):
                added = run(insert, p)
                new += added
                if added and tx:  # a repeated sample must not move the energy so far
                    run(update, p)
            if seen_at is not None:  # even for repeated samples: the station was heard from
                run("UPDATE stations SET last_seen = GREATEST(last_seen, :t) WHERE station_id = :st",
                    {"st": str(station_id), "t": seen_at})
        return new

    def update_needs(self, station_id, transaction_id, *, departure=None, energy_requested_kwh=None,
                     known=True) -> None:
        """Store a session's needs (departure UTC, energy [kWh]); ``known`` marks car-reported ones.

        Estimated needs never overwrite needs the car reported.
        """
        key = {"st": str(station_id), "tx": str(transaction_id)}
        params = {**key, "dep": None if departure is None else _ts(departure, "departure"),
                  "e": _num(energy_requested_kwh, "energy_requested_kwh", min_value=0.0), "k": bool(known)}
        n = self._write([(
            """UPDATE transactions SET departure = COALESCE(:dep, departure),
                   energy_requested_kwh = COALESCE(CAST(:e AS DOUBLE PRECISION), energy_requested_kwh),
                   needs_known = (needs_known OR CAST(:k AS BOOLEAN))
               WHERE station_id = :st AND transaction_id = :tx AND (CAST(:k AS BOOLEAN) OR NOT needs_known)""",
            params,
        )])
        if n[0] == 0:
            exists = self._read("SELECT 1 AS one FROM transactions WHERE station_id = :st AND transaction_id = :tx", key)
            if exists.empty:
                raise StoreError(f"needs for unknown transaction {transaction_id!r} on {station_id!r}")

    def stop_transaction(self, station_id, transaction_id, *, time, meter_stop_wh=None, reason=None) -> None:
        """Close a transaction (a repeated stop keeps the first stop time and reason).

        A stop for a transaction never seen (its start was lost on the charger's side, or it
        began before this store existed) is recorded as a session that starts and stops then.
        """
        p = {"st": str(station_id), "tx": str(transaction_id), "t": _ts(time, "transaction stop"),
             "ms": _num(meter_stop_wh, "meter_stop_wh", min_value=0.0), "reason": reason,
             "sid": session_id_for(station_id, transaction_id)}
        self._write([
            ("""INSERT INTO transactions (session_id, station_id, transaction_id, started_at)
                VALUES (:sid, :st, :tx, :t) ON CONFLICT DO NOTHING""", p),
            ("""UPDATE transactions SET
                   energy_kwh = CASE WHEN stopped_at IS NULL AND CAST(:ms AS DOUBLE PRECISION) IS NOT NULL
                                          AND meter_start_wh IS NOT NULL
                                     THEN GREATEST(energy_kwh, (:ms - meter_start_wh) / 1000.0) ELSE energy_kwh END,
                   meter_last_wh = CASE WHEN stopped_at IS NULL THEN COALESCE(:ms, meter_last_wh) ELSE meter_last_wh END,
                   stop_reason = COALESCE(stop_reason, :reason),
                   stopped_at = COALESCE(stopped_at, :t)
                WHERE station_id = :st AND transaction_id = :tx""", p),
        ])

    def _transactions(self, where: str, params: dict | None = None) -> pd.DataFrame:
        df = self._read(f"SELECT * FROM transactions WHERE {where} ORDER BY started_at, session_id", params)
        for c in ("started_at", "stopped_at", "last_meter_time", "departure"):
            df[c] = parse_times(df[c])
        for c in ("energy_kwh", "energy_requested_kwh", "meter_start_wh", "meter_last_wh", "max_current_a"):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        df["needs_known"] = df["needs_known"].astype(bool)
        return df

    def load_open_transactions(self) -> pd.DataFrame:
        """Running transactions (columns :data:`OPEN_TRANSACTION_COLUMNS`), indexed by session_id."""
        df = self._transactions("stopped_at IS NULL")
        out = pd.DataFrame({
            "session_id": df["session_id"].astype(str),
            "charge_point_id": df["station_id"].astype(str),
            "transaction_id": df["transaction_id"].astype(str),
            "connector_id": df["connector_id"],
            "id_tag": df["id_tag"],
            "arrival": df["started_at"],
            "departure": df["departure"],
            "energy_requested_kwh": df["energy_requested_kwh"],
            "needs_known": df["needs_known"],
            "energy_delivered_kwh": df["energy_kwh"],
            "meter_start_wh": df["meter_start_wh"],
            "meter_last_wh": df["meter_last_wh"],
            "last_meter_time": df["last_meter_time"],
            "phases": df["phases"],
            "max_current_a": df["max_current_a"],
        }, columns=list(OPEN_TRANSACTION_COLUMNS))
        return out.set_index("session_id", drop=False).rename_axis(None)

    def max_numeric_transaction_id(self) -> int:
        """Largest all-digit transaction id ever stored (0 if none): 1.6 ids continue above it."""
        df = self._read(f"SELECT MAX(CAST(transaction_id AS {self.INTEGER_CAST})) AS m FROM transactions "
                        f"WHERE transaction_id <> '' AND {self.ALL_DIGITS_SQL}")
        m = df["m"].iloc[0]
        return 0 if m is None or pd.isna(m) else int(m)

    def sessions_history(self, since=None) -> pd.DataFrame:
        """Finished sessions as a sessions frame (see nowblock.sessions) for the needs forecaster.

        ``energy_kwh`` is what was delivered, ``departure`` the stop time; extra columns
        ``id_tag``, ``needs_known``, ``energy_requested_kwh`` (reported, NaN if none).
        Sessions with ``departure <= arrival`` (a stop without a start) are left out.
        """
        if since is None:
            df = self._transactions("stopped_at IS NOT NULL")
        else:
            df = self._transactions("stopped_at IS NOT NULL AND stopped_at >= :since", {"since": _ts(since, "since")})
        out = pd.DataFrame({
            "session_id": df["session_id"].astype(str),
            "charge_point_id": df["station_id"].astype(str),
            "arrival": df["started_at"],
            "departure": df["stopped_at"],
            "energy_kwh": df["energy_kwh"].clip(lower=0.0),
            "max_current_a": df["max_current_a"].fillna(32.0),
            "phases": pd.to_numeric(df["phases"], errors="coerce").fillna(3).astype(np.int64),
            "priority": 1.0,
            "id_tag": df["id_tag"],
            "needs_known": df["needs_known"],
            "energy_requested_kwh": df["energy_requested_kwh"],
        })
        return out[out["departure"] > out["arrival"]].reset_index(drop=True)

    # ---- meter values, profiles, plans -------------------------------------------------------
    def meter_values(self, station_id: str | None = None, transaction_id=None) -> pd.DataFrame:
        """Stored meter samples (UTC ``time`` in the central system's clock, ``station_time`` as the
        station stamped them), optionally of one station / transaction."""
        conds, params = [], {}
        if station_id is not None:
            conds.append("station_id = :st")
            params["st"] = str(station_id)
        if transaction_id is not None:
            conds.append("transaction_id = :tx")
            params["tx"] = str(transaction_id)
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        df = self._read(f"SELECT * FROM meter_values{where} ORDER BY time, station_id", params)
        df["time"] = parse_times(df["time"])
        df["station_time"] = parse_times(df["station_time"])
        return df

    def record_profile(self, station_id, *, time, purpose, limit_a, status, transaction_id=None,
                       accepted_limit_a=None, valid_to=None) -> None:
        """Log a charging profile sent [A] and the charger's answer (status, limit it accepted [A])."""
        self._write([(
            """INSERT INTO profiles (time, station_id, transaction_id, purpose, limit_a, valid_to, status,
                   accepted_limit_a) VALUES (:t, :st, :tx, :purpose, :lim, :vt, :status, :acc)""",
            {"t": _ts(time, "profile time"), "st": str(station_id),
             "tx": None if transaction_id is None else str(transaction_id), "purpose": str(purpose),
             "lim": _num(limit_a, "limit_a"), "vt": None if valid_to is None else _ts(valid_to, "valid_to"),
             "status": str(status), "acc": _num(accepted_limit_a, "accepted_limit_a")},
        )])

    def profiles(self, station_id: str | None = None) -> pd.DataFrame:
        """Charging profiles sent, oldest first, with the charger's answers."""
        if station_id is None:
            df = self._read("SELECT * FROM profiles ORDER BY id")
        else:
            df = self._read("SELECT * FROM profiles WHERE station_id = :st ORDER BY id", {"st": str(station_id)})
        df["time"] = parse_times(df["time"])
        df["valid_to"] = parse_times(df["valid_to"])
        return df

    # ---- operator inputs, events and recent history (the HTTP API) -------------------------
    def save_operator_input(self, kind: str, key: str, data: dict, *, time) -> None:
        """Create or replace the operator input ``(kind, key)`` (a JSON-able dict), durably."""
        try:
            body = json.dumps(data, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"operator input {kind}/{key}: not JSON ({exc})") from exc
        self._write([(
            """INSERT INTO operator_inputs (kind, key, data, updated_at) VALUES (:kind, :key, :data, :t)
               ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at""",
            {"kind": str(kind), "key": str(key), "data": body, "t": _ts(time, "operator input time")},
        )])

    def delete_operator_input(self, kind: str, key: str) -> bool:
        """Remove the operator input ``(kind, key)``; returns whether it existed."""
        n = self._write([("DELETE FROM operator_inputs WHERE kind = :kind AND key = :key",
                          {"kind": str(kind), "key": str(key)})])
        return n[0] > 0

    def load_operator_inputs(self) -> list[dict]:
        """Every operator input as ``{"kind", "key", "data", "updated_at"}``, oldest first."""
        df = self._read("SELECT kind, key, data, updated_at FROM operator_inputs ORDER BY updated_at, kind, key")
        times = parse_times(df["updated_at"]) if len(df) else []
        return [{"kind": k, "key": key, "data": d if isinstance(d, dict) else json.loads(d), "updated_at": t}
                for (k, key, d, _), t in zip(df.itertuples(index=False), times)]

    def record_event(self, time, kind: str, data: dict) -> None:
        """Keep an event for the operator (an alarm: an overload, a car not following its limit)."""
        try:
            body = json.dumps(data, sort_keys=True, default=str, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"event {kind}: not JSON ({exc})") from exc
        self._write([("INSERT INTO events (time, kind, data) VALUES (:t, :kind, :data)",
                      {"t": _ts(time, "event time"), "kind": str(kind), "data": body})])

    def events(self, since=None, kind: str | None = None) -> pd.DataFrame:
        """Events (``time`` UTC, ``kind``, ``data`` dict) since ``since``, oldest first."""
        cond, params = [], {}
        if since is not None:
            cond.append("time >= :since")
            params["since"] = _ts(since, "since")
        if kind is not None:
            cond.append("kind = :kind")
            params["kind"] = str(kind)
        where = f" WHERE {' AND '.join(cond)}" if cond else ""
        df = self._read(f"SELECT time, kind, data FROM events{where} ORDER BY id", params)
        df["time"] = parse_times(df["time"])
        df["data"] = [d if isinstance(d, dict) else json.loads(d) for d in df["data"]]
        return df

    def recent_meter_values(self, since, until=None, *, bucket_s: float | None = None) -> pd.DataFrame:
        """Meter samples with ``since <= time < until``, oldest first (UTC ``time``).

        With ``bucket_s`` [s] the samples are averaged per station and bucket in SQL (``time`` is
        the bucket's start, ``energy_wh`` its last register, ``samples`` how many it holds).
        """
        params = {"since": _ts(since, "since")}
        cond = "time >= :since"
        if until is not None:
            cond += " AND time < :until"
            params["until"] = _ts(until, "until")
        if bucket_s is None:
            df = self._read(f"SELECT * FROM meter_values WHERE {cond} ORDER BY time, station_id", params)
            df["time"] = parse_times(df["time"])
            df["station_time"] = parse_times(df["station_time"])
            return df
        b = int(_num(bucket_s, "bucket_s", min_value=1.0))
        epoch = self.EPOCH_S_SQL
        df = self._read(
            f"SELECT station_id, ({epoch} / {b}) * {b} AS epoch_s, AVG(current_l1_a) AS current_l1_a, "
            "AVG(current_l2_a) AS current_l2_a, AVG(current_l3_a) AS current_l3_a, AVG(power_kw) AS power_kw, "
            "MAX(energy_wh) AS energy_wh, AVG(soc_percent) AS soc_percent, COUNT(*) AS samples "
            f"FROM meter_values WHERE {cond} GROUP BY station_id, epoch_s ORDER BY epoch_s, station_id", params)
        df.insert(1, "time", pd.to_datetime(pd.to_numeric(df.pop("epoch_s")), unit="s", utc=True))
        return df

    def save_plan(self, time, current_a: pd.DataFrame, *, policy: str = "", status: str = "") -> None:
        """Keep a plan: ``current_a`` [A] with time slots as rows and session ids as columns."""
        t = _ts(time, "plan time")
        if not isinstance(current_a, pd.DataFrame):
            raise StoreError("plan: expected a DataFrame (time slots x session_id)")
        df = current_a.copy()
        df.index = [_ts(x, "plan slot") for x in df.index]
        df.columns = [str(c) for c in df.columns]
        body = df.astype(float).to_json(orient="split")
        self._write([
            ("INSERT INTO plans (time, policy, status, plan) VALUES (:t, :policy, :status, :plan)",
             {"t": t, "policy": policy, "status": status, "plan": body}),
            ("DELETE FROM plans WHERE id <= (SELECT MAX(id) FROM plans) - :k", {"k": self._plans_kept}),
        ])

    def latest_plan(self) -> tuple[pd.Timestamp, pd.DataFrame] | None:
        """The last plan saved as ``(time, current_a frame)``, or None."""
        df = self._read("SELECT time, plan FROM plans ORDER BY id DESC LIMIT 1")
        if df.empty:
            return None
        body = df["plan"].iloc[0]
        d = body if isinstance(body, dict) else json.loads(body)
        plan = pd.DataFrame(d["data"], index=pd.DatetimeIndex(parse_times(pd.Series(d["index"], dtype=object))),
                            columns=[str(c) for c in d["columns"]], dtype=float)
        plan.index.name = "time"
        return pd.Timestamp(parse_times(pd.Series([df["time"].iloc[0]], dtype=object)).iloc[0]), plan
