"""The SQLite store, the embedded default (see :class:`nowblock.store.Store`).

What is kept: stations, transactions (energy so far, the session's needs), meter values, the
history of finished sessions (it feeds the session-needs forecaster as a sessions frame),
charging profiles sent with the charger's answer, and the latest plan.

Every write is one short SQLite transaction committed before the method returns, so an OCPP
handler that writes and *then* acknowledges never acknowledges something that is not on disk.
The file runs in WAL mode: readers (a dashboard, a second process) never block the writer.
``synchronous=FULL`` by default makes a commit survive a power cut, not only a process crash.

The SQL is plain (upserts, no SQLite-only types), and nothing outside this module sees a
connection.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from nowblock.store.base import OPEN_TRANSACTION_COLUMNS, StoreError, check_number as _num, check_time as _ts, session_id_for

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stations (
    station_id   TEXT PRIMARY KEY,
    protocol     TEXT,
    vendor       TEXT,
    model        TEXT,
    status       TEXT,
    connected    INTEGER NOT NULL DEFAULT 0,
    first_seen   TEXT,
    last_seen    TEXT
);
CREATE TABLE IF NOT EXISTS transactions (
    session_id            TEXT PRIMARY KEY,
    station_id            TEXT NOT NULL,
    transaction_id        TEXT NOT NULL,
    connector_id          INTEGER,
    id_tag                TEXT,
    started_at            TEXT NOT NULL,
    stopped_at            TEXT,
    stop_reason           TEXT,
    meter_start_wh        REAL,
    meter_last_wh         REAL,
    last_meter_time       TEXT,
    energy_kwh            REAL NOT NULL DEFAULT 0,
    departure             TEXT,
    energy_requested_kwh  REAL,
    needs_known           INTEGER NOT NULL DEFAULT 0,
    phases                INTEGER,
    max_current_a         REAL,
    UNIQUE (station_id, transaction_id)
);
CREATE INDEX IF NOT EXISTS transactions_open ON transactions (stopped_at);
CREATE TABLE IF NOT EXISTS meter_values (
    station_id      TEXT NOT NULL,
    transaction_id  TEXT NOT NULL DEFAULT '',
    time            TEXT NOT NULL,
    energy_wh       REAL,
    current_l1_a    REAL,
    current_l2_a    REAL,
    current_l3_a    REAL,
    power_kw        REAL,
    soc_percent     REAL,
    PRIMARY KEY (station_id, transaction_id, time)
);
CREATE TABLE IF NOT EXISTS profiles (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    time              TEXT NOT NULL,
    station_id        TEXT NOT NULL,
    transaction_id    TEXT,
    purpose           TEXT NOT NULL,
    limit_a           REAL,
    valid_to          TEXT,
    status            TEXT NOT NULL,
    accepted_limit_a  REAL
);
CREATE INDEX IF NOT EXISTS profiles_station ON profiles (station_id, id);
CREATE TABLE IF NOT EXISTS plans (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    time     TEXT NOT NULL,
    policy   TEXT,
    status   TEXT,
    plan     TEXT NOT NULL
);
"""


# Operator inputs (the HTTP API's writes: caps, needs entered by residents, charging points out
# of service) and a time index for reading recent meter values. Additive: CREATE ... IF NOT
# EXISTS upgrades an existing file when it is opened, and nothing else in the schema changes.
_OPERATOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS operator_inputs (
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    data        TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS meter_values_time ON meter_values (time);
"""


def _parse_ts(col: pd.Series) -> pd.Series:
    return pd.to_datetime(col, format="ISO8601", utc=True)


class SqliteStore:
    """:class:`Store` on one SQLite file in WAL mode (thread-safe: one connection, one lock).

    ``synchronous`` is SQLite's PRAGMA: "FULL" (default) survives power loss, "NORMAL" survives
    a process crash and is faster. Methods are short and synchronous; calling them from the
    event loop is intended (each is one small transaction).
    """

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", plans_kept: int = 50) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._plans_kept = int(plans_kept)
        self._con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._con.execute("PRAGMA journal_mode=WAL")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"synchronous: expected OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self._con.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._con.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            self._con.executescript(_SCHEMA)
            self._con.executescript(_OPERATOR_SCHEMA)
        self.closed = False

    # ---- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _transaction(self):
        """One write transaction, committed on exit; on any error nothing is applied."""
        if self.closed:
            raise StoreError("store is closed")
        with self._lock:
            cur = self._con.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _write(self, statements: list[tuple[str, tuple]]) -> list[int]:
        """Run statements in one transaction; returns each one's row count."""
        with self._transaction() as cur:
            return [cur.execute(sql, params).rowcount for sql, params in statements]

    def _read(self, sql: str, params: tuple = ()) -> pd.DataFrame:
        if self.closed:
            raise StoreError("store is closed")
        with self._lock:
            cur = self._con.execute(sql, params)
            cols = [d[0] for d in cur.description]
            return pd.DataFrame(cur.fetchall(), columns=cols)

    def close(self) -> None:
        """Checkpoint the WAL and close the file (idempotent)."""
        if self.closed:
            return
        with self._lock:
            try:
                self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:  # another process may hold a read lock; the WAL stays valid
                pass
            self._con.close()
            self.closed = True

    def __enter__(self) -> "SqliteStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- stations ---------------------------------------------------------------------------
    def upsert_station(self, station_id, *, time, protocol=None, vendor=None, model=None, status=None,
                       connected=None) -> None:
        """Create or update a station; ``None`` fields keep their stored value."""
        t = _ts(time, "station time")
        conn = None if connected is None else int(bool(connected))
        self._write([(
            """INSERT INTO stations (station_id, protocol, vendor, model, status, connected, first_seen, last_seen)
               VALUES (?, ?, ?, ?, ?, COALESCE(?, 0), ?, ?)
               ON CONFLICT (station_id) DO UPDATE SET
                 protocol = COALESCE(excluded.protocol, protocol), vendor = COALESCE(excluded.vendor, vendor),
                 model = COALESCE(excluded.model, model), status = COALESCE(excluded.status, status),
                 connected = COALESCE(?, connected), last_seen = MAX(COALESCE(last_seen, ''), excluded.last_seen)""",
            (str(station_id), protocol, vendor, model, status, conn, t, t, conn),
        )])

    def stations(self) -> pd.DataFrame:
        """All stations with protocol, status, connected flag, first and last seen (UTC)."""
        df = self._read("SELECT * FROM stations ORDER BY station_id")
        for c in ("first_seen", "last_seen"):
            df[c] = _parse_ts(df[c])
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
        sid = session_id or session_id_for(station_id, transaction_id)
        self._write([(
            """INSERT INTO transactions (session_id, station_id, transaction_id, connector_id, id_tag, started_at,
                   meter_start_wh, meter_last_wh, phases, max_current_a)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (station_id, transaction_id) DO UPDATE SET
                 connector_id = COALESCE(connector_id, excluded.connector_id),
                 id_tag = COALESCE(id_tag, excluded.id_tag),
                 started_at = MIN(started_at, excluded.started_at),
                 meter_start_wh = COALESCE(meter_start_wh, excluded.meter_start_wh),
                 meter_last_wh = COALESCE(meter_last_wh, excluded.meter_last_wh),
                 phases = COALESCE(excluded.phases, phases),
                 max_current_a = COALESCE(excluded.max_current_a, max_current_a)""",
            (sid, str(station_id), str(transaction_id), None if connector_id is None else int(connector_id),
             id_tag, t, ms, ms, None if phases is None else int(phases), mx),
        )])
        row = self._read("SELECT session_id FROM transactions WHERE station_id=? AND transaction_id=?",
                         (str(station_id), str(transaction_id)))
        return str(row["session_id"].iloc[0])

    def record_meter_values(self, station_id, transaction_id, rows) -> int:
        """Store meter samples; returns how many were new.

        Each row is a mapping with ``time`` and any of ``energy_wh`` (register [Wh]),
        ``current_a`` (per phase [A], a number or up to three), ``power_kw`` [kW],
        ``soc_percent``. A repeated sample (same station, transaction, time) is ignored, not
        overwritten. The transaction's energy so far only ever grows (a register that jumps
        back, after a charger reset, does not erase delivered energy).
        """
        tx = "" if transaction_id is None else str(transaction_id)
        params = []
        for i, r in enumerate(rows):
            t = _ts(r.get("time"), f"meter row {i} time")
            cur = r.get("current_a")
            if cur is None or np.isscalar(cur):
                cur = [cur]
            cur = [_num(c, f"meter row {i} current_a") for c in list(cur)[:3]] + [None] * (3 - min(3, len(cur)))
            params.append((str(station_id), tx, t, _num(r.get("energy_wh"), f"meter row {i} energy_wh", min_value=0.0),
                           *cur, _num(r.get("power_kw"), f"meter row {i} power_kw"),
                           _num(r.get("soc_percent"), f"meter row {i} soc_percent")))
        if not params:
            return 0
        insert = """INSERT OR IGNORE INTO meter_values (station_id, transaction_id, time, energy_wh, current_l1_a,
                        current_l2_a, current_l3_a, power_kw, soc_percent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
        # The first register seen opens a transaction whose start carried no meter value.
        update = """UPDATE transactions SET
                      meter_start_wh = COALESCE(meter_start_wh, ?1),
                      meter_last_wh = CASE WHEN ?1 IS NOT NULL AND COALESCE(last_meter_time, '') <= ?2
                                           THEN ?1 ELSE meter_last_wh END,
                      last_meter_time = MAX(COALESCE(last_meter_time, ''), ?2),
                      energy_kwh = CASE WHEN ?1 IS NULL THEN energy_kwh
                                        ELSE MAX(energy_kwh, (?1 - COALESCE(meter_start_wh, ?1)) / 1000.0) END
                    WHERE station_id=?3 AND transaction_id=?4 AND stopped_at IS NULL"""
        new = 0
        with self._transaction() as cur:
            for p in sorted(params, key=lambda p: p[2]):
                added = cur.execute(insert, p).rowcount
                new += added
                if added and tx:  # a repeated sample must not move the energy so far
                    cur.execute(update, (p[3], p[2], str(station_id), tx))
        return new

    def update_needs(self, station_id, transaction_id, *, departure=None, energy_requested_kwh=None,
                     known=True) -> None:
        """Store a session's needs (departure UTC, energy [kWh]); ``known`` marks car-reported ones.

        Estimated needs never overwrite needs the car reported.
        """
        dep = None if departure is None else _ts(departure, "departure")
        e = _num(energy_requested_kwh, "energy_requested_kwh", min_value=0.0)
        k = int(bool(known))
        n = self._write([(
            """UPDATE transactions SET departure = COALESCE(?, departure),
                   energy_requested_kwh = COALESCE(?, energy_requested_kwh), needs_known = MAX(needs_known, ?)
               WHERE station_id=? AND transaction_id=? AND (? = 1 OR needs_known = 0)""",
            (dep, e, k, str(station_id), str(transaction_id), k),
        )])
        if n[0] == 0:
            exists = self._read("SELECT 1 FROM transactions WHERE station_id=? AND transaction_id=?",
                                (str(station_id), str(transaction_id)))
            if exists.empty:
                raise StoreError(f"needs for unknown transaction {transaction_id!r} on {station_id!r}")

    def stop_transaction(self, station_id, transaction_id, *, time, meter_stop_wh=None, reason=None) -> None:
        """Close a transaction (a repeated stop keeps the first stop time and reason).

        A stop for a transaction never seen (its start was lost on the charger's side, or it
        began before this store existed) is recorded as a session that starts and stops then.
        """
        t = _ts(time, "transaction stop")
        ms = _num(meter_stop_wh, "meter_stop_wh", min_value=0.0)
        sid = session_id_for(station_id, transaction_id)
        self._write([
            ("""INSERT OR IGNORE INTO transactions (session_id, station_id, transaction_id, started_at)
                VALUES (?, ?, ?, ?)""", (sid, str(station_id), str(transaction_id), t)),
            ("""UPDATE transactions SET
                   energy_kwh = CASE WHEN stopped_at IS NULL AND ? IS NOT NULL AND meter_start_wh IS NOT NULL
                                     THEN MAX(energy_kwh, (? - meter_start_wh) / 1000.0) ELSE energy_kwh END,
                   meter_last_wh = CASE WHEN stopped_at IS NULL THEN COALESCE(?, meter_last_wh) ELSE meter_last_wh END,
                   stop_reason = COALESCE(stop_reason, ?),
                   stopped_at = COALESCE(stopped_at, ?)
                WHERE station_id=? AND transaction_id=?""",
             (ms, ms, ms, reason, t, str(station_id), str(transaction_id))),
        ])

    def _transactions(self, where: str, params: tuple = ()) -> pd.DataFrame:
        df = self._read(f"SELECT * FROM transactions WHERE {where} ORDER BY started_at, session_id", params)
        for c in ("started_at", "stopped_at", "last_meter_time", "departure"):
            df[c] = _parse_ts(df[c].replace("", None))
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
        df = self._read("SELECT MAX(CAST(transaction_id AS INTEGER)) AS m FROM transactions "
                        "WHERE transaction_id <> '' AND transaction_id NOT GLOB '*[^0-9]*'")
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
            df = self._transactions("stopped_at IS NOT NULL AND stopped_at >= ?", (_ts(since, "since"),))
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
        """Stored meter samples (UTC time), optionally of one station / transaction."""
        sql, params = "SELECT * FROM meter_values", []
        conds = []
        if station_id is not None:
            conds.append("station_id=?")
            params.append(str(station_id))
        if transaction_id is not None:
            conds.append("transaction_id=?")
            params.append(str(transaction_id))
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        df = self._read(sql + " ORDER BY time, station_id", tuple(params))
        df["time"] = _parse_ts(df["time"])
        return df

    def record_profile(self, station_id, *, time, purpose, limit_a, status, transaction_id=None,
                       accepted_limit_a=None, valid_to=None) -> None:
        """Log a charging profile sent [A] and the charger's answer (status, limit it accepted [A])."""
        self._write([(
            """INSERT INTO profiles (time, station_id, transaction_id, purpose, limit_a, valid_to, status,
                   accepted_limit_a) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (_ts(time, "profile time"), str(station_id), None if transaction_id is None else str(transaction_id),
             str(purpose), _num(limit_a, "limit_a"), None if valid_to is None else _ts(valid_to, "valid_to"),
             str(status), _num(accepted_limit_a, "accepted_limit_a")),
        )])

    def profiles(self, station_id: str | None = None) -> pd.DataFrame:
        """Charging profiles sent, oldest first, with the charger's answers."""
        if station_id is None:
            df = self._read("SELECT * FROM profiles ORDER BY id")
        else:
            df = self._read("SELECT * FROM profiles WHERE station_id=? ORDER BY id", (str(station_id),))
        df["time"] = _parse_ts(df["time"])
        df["valid_to"] = _parse_ts(df["valid_to"])
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
            ("INSERT INTO plans (time, policy, status, plan) VALUES (?, ?, ?, ?)", (t, policy, status, body)),
            ("DELETE FROM plans WHERE id <= (SELECT MAX(id) FROM plans) - ?", (self._plans_kept,)),
        ])

    def latest_plan(self) -> tuple[pd.Timestamp, pd.DataFrame] | None:
        """The last plan saved as ``(time, current_a frame)``, or None."""
        df = self._read("SELECT time, plan FROM plans ORDER BY id DESC LIMIT 1")
        if df.empty:
            return None
        d = json.loads(df["plan"].iloc[0])
        plan = pd.DataFrame(d["data"], index=pd.DatetimeIndex(_parse_ts(pd.Series(d["index"], dtype=object))),
                            columns=[str(c) for c in d["columns"]], dtype=float)
        plan.index.name = "time"
        return pd.Timestamp(_parse_ts(pd.Series([df["time"].iloc[0]])).iloc[0]), plan


    # ---- operator inputs and recent history (the HTTP API) ---------------------------------
    def save_operator_input(self, kind: str, key: str, data: dict, *, time) -> None:
        """Create or replace the operator input ``(kind, key)`` (a JSON-able dict), durably."""
        body = json.dumps(data, sort_keys=True, allow_nan=False)
        self._write([(
            """INSERT INTO operator_inputs (kind, key, data, updated_at) VALUES (?, ?, ?, ?)
               ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at""",
            (str(kind), str(key), body, _ts(time, "operator input time")),
        )])

    def delete_operator_input(self, kind: str, key: str) -> bool:
        """Remove the operator input ``(kind, key)``; returns whether it existed."""
        return self._write([("DELETE FROM operator_inputs WHERE kind=? AND key=?", (str(kind), str(key)))])[0] > 0

    def load_operator_inputs(self) -> list[dict]:
        """Every operator input as ``{"kind", "key", "data", "updated_at"}``, oldest first."""
        df = self._read("SELECT kind, key, data, updated_at FROM operator_inputs ORDER BY updated_at, kind, key")
        return [{"kind": k, "key": key, "data": json.loads(d), "updated_at": pd.Timestamp(u)}
                for k, key, d, u in df.itertuples(index=False)]

    def recent_meter_values(self, since, until=None, *, bucket_s: float | None = None) -> pd.DataFrame:
        """Meter samples with ``since <= time < until``, oldest first (UTC ``time``).

        With ``bucket_s`` [s] the samples are averaged per station and bucket in SQL (``time``
        is the bucket's start; ``energy_wh`` its last register). A file store reads through its
        own short-lived connection: WAL lets it run beside the writer, so a long read (a day of a
        large block) never holds the lock the OCPP handlers write under.
        """
        params = [_ts(since, "since")]
        cond = "time >= ?"
        if until is not None:
            cond += " AND time < ?"
            params.append(_ts(until, "until"))
        if bucket_s is None:
            sql = f"SELECT * FROM meter_values WHERE {cond} ORDER BY time, station_id"
        else:
            b = int(_num(bucket_s, "bucket_s", min_value=1.0))
            sql = (f"SELECT station_id, (CAST(strftime('%s', substr(time, 1, 19)) AS INTEGER) / {b}) * {b} AS epoch_s, "
                   "AVG(current_l1_a) AS current_l1_a, AVG(current_l2_a) AS current_l2_a, "
                   "AVG(current_l3_a) AS current_l3_a, AVG(power_kw) AS power_kw, MAX(energy_wh) AS energy_wh, "
                   "AVG(soc_percent) AS soc_percent, COUNT(*) AS samples "
                   f"FROM meter_values WHERE {cond} GROUP BY station_id, epoch_s ORDER BY epoch_s, station_id")
        if self.path == ":memory:":
            df = self._read(sql, tuple(params))
        else:
            if self.closed:
                raise StoreError("store is closed")
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30.0)
            try:
                cur = con.execute(sql, tuple(params))
                df = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
            finally:
                con.close()
        if bucket_s is None:
            df["time"] = _parse_ts(df["time"])
        else:
            df.insert(1, "time", pd.to_datetime(df.pop("epoch_s"), unit="s", utc=True))
        return df
