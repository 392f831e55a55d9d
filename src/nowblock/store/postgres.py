"""The PostgreSQL store, for operators whose stack already runs PostgreSQL (``--db postgresql://...``).

The same statements as the SQLite store (:mod:`nowblock.store.sql`) on native types:
``TIMESTAMPTZ`` times, ``BOOLEAN`` flags, ``DOUBLE PRECISION`` values and the plan as ``JSONB``,
so the rest of an operator's stack can query the tables directly. Tables live in the first
schema of the connection's ``search_path`` (pick one with ``?options=-csearch_path%3Dname`` in
the URL); the package creates and migrates them (:data:`MIGRATIONS`).

Opening checks that schema before writing to it, as the SQLite store checks its file: tables
of nowblock's names that are not nowblock's (another program's ``transactions``, nowblock's
tables with columns missing, a table a later schema version creates) are refused with
:class:`~nowblock.store.StoreFileError` naming the database and schema, and nothing is changed.
Other tables in the schema, and extra columns, are left alone.

Driver: psycopg 3, synchronous. The store is called inside the OCPP handlers, before the
answer is sent (:class:`~nowblock.store.StoreRecorder`): a synchronous commit there is what
makes "acknowledged means stored" hold, exactly as with SQLite, and it keeps one
:class:`~nowblock.store.Store` protocol for both backends. The price is that the event loop
waits for the round trip to the server (docs/bench_store.md measures it with 500 chargers).

Durability: each write is one transaction, committed with ``synchronous_commit = on`` (set for
the session, whatever the server's default), so a commit that returned is on the server's
disk. A lost connection raises :class:`~nowblock.store.StoreUnavailable` (the handler does not
acknowledge; the charger retries) and the next call connects again.

A server that does not answer must not freeze the event loop (the chargers' handlers, the
control loop, the HTTP API all run on it). So every call has a deadline kept by the client, not
only by the server (a server process that is stopped, or a network black hole, never fires its
own ``statement_timeout``): a write ``write_timeout_s`` (2 s), a dispatch record, a plan and an
alarm ``bookkeeping_timeout_s`` (1 s: the control step waits for them), a read
``statement_timeout_s`` (10 s). A call past its deadline has its socket shut down, fails with
``StoreUnavailable`` and the connection is dropped (the server rolls back what it had begun).
One watchdog thread per store keeps these deadlines (started at open, stopped by ``close()``),
so a call starts no thread of its own.
Connecting waits at most ``connect_timeout_s``, and TCP keepalives and ``tcp_user_timeout`` end
a connection whose peer vanished. After a call timed out or could not connect, the store fails
fast: every call raises ``StoreUnavailable`` at once for ``retry_after_s`` (5 s), then one call
tries again. :attr:`PostgresStore.unavailable` says since when and why the store fails (None
once a call succeeds); ``/api/health`` reports it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import socket
import threading
import time as _time
import weakref
from contextlib import contextmanager

import pandas as pd

from nowblock.store.base import StoreError, StoreFileError, StoreUnavailable
from nowblock.store.sql import Migration, SqlStore

log = logging.getLogger(__name__)

MIGRATIONS: tuple[Migration, ...] = (
    (1, "stations, transactions, meter values, profiles, plans", (
        """CREATE TABLE stations (
            station_id   TEXT PRIMARY KEY,
            protocol     TEXT,
            vendor       TEXT,
            model        TEXT,
            status       TEXT,
            connected    BOOLEAN NOT NULL DEFAULT FALSE,
            first_seen   TIMESTAMPTZ,
            last_seen    TIMESTAMPTZ
        )""",
        """CREATE TABLE transactions (
            session_id            TEXT PRIMARY KEY,
            station_id            TEXT NOT NULL,
            transaction_id        TEXT NOT NULL,
            connector_id          INTEGER,
            id_tag                TEXT,
            started_at            TIMESTAMPTZ NOT NULL,
            stopped_at            TIMESTAMPTZ,
            stop_reason           TEXT,
            meter_start_wh        DOUBLE PRECISION,
            meter_last_wh         DOUBLE PRECISION,
            last_meter_time       TIMESTAMPTZ,
            energy_kwh            DOUBLE PRECISION NOT NULL DEFAULT 0,
            departure             TIMESTAMPTZ,
            energy_requested_kwh  DOUBLE PRECISION,
            needs_known           BOOLEAN NOT NULL DEFAULT FALSE,
            phases                INTEGER,
            max_current_a         DOUBLE PRECISION,
            UNIQUE (station_id, transaction_id)
        )""",
        "CREATE INDEX transactions_open ON transactions (stopped_at)",
        """CREATE TABLE meter_values (
            station_id      TEXT NOT NULL,
            transaction_id  TEXT NOT NULL DEFAULT '',
            time            TIMESTAMPTZ NOT NULL,
            energy_wh       DOUBLE PRECISION,
            current_l1_a    DOUBLE PRECISION,
            current_l2_a    DOUBLE PRECISION,
            current_l3_a    DOUBLE PRECISION,
            power_kw        DOUBLE PRECISION,
            soc_percent     DOUBLE PRECISION,
            PRIMARY KEY (station_id, transaction_id, time)
        )""",
        """CREATE TABLE profiles (
            id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            time              TIMESTAMPTZ NOT NULL,
            station_id        TEXT NOT NULL,
            transaction_id    TEXT,
            purpose           TEXT NOT NULL,
            limit_a           DOUBLE PRECISION,
            valid_to          TIMESTAMPTZ,
            status            TEXT NOT NULL,
            accepted_limit_a  DOUBLE PRECISION
        )""",
        "CREATE INDEX profiles_station ON profiles (station_id, id)",
        """CREATE TABLE plans (
            id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            time     TIMESTAMPTZ NOT NULL,
            policy   TEXT,
            status   TEXT,
            plan     JSONB NOT NULL
        )""",
    )),
    (2, "operator inputs, events (alarms), a time index on meter values", (
        """CREATE TABLE operator_inputs (
            kind        TEXT NOT NULL,
            key         TEXT NOT NULL,
            data        JSONB NOT NULL,
            updated_at  TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
        """CREATE TABLE events (
            id    BIGSERIAL PRIMARY KEY,
            time  TIMESTAMPTZ NOT NULL,
            kind  TEXT NOT NULL,
            data  JSONB NOT NULL
        )""",
        "CREATE INDEX events_time ON events (time)",
        "CREATE INDEX meter_values_time ON meter_values (time)",
    )),
    # A meter value's time is in the central system's clock (a station's stamp less its clock
    # offset); what the station stamped it is kept beside it (NULL: written before, or none).
    (3, "meter values keep the station's own stamp", (
        "ALTER TABLE meter_values ADD COLUMN station_time TIMESTAMPTZ",
    )),
)

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS nowblock_schema (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL
)"""

_CREATE_TABLE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\((.*)\)\s*$", re.S | re.I)
_ADD_COLUMN = re.compile(
    r"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(\w+)\s+ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)
_TABLE_CONSTRAINTS = ("CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "EXCLUDE")


def _top_level_parts(body: str) -> list[str]:
    """The comma-separated parts of a CREATE TABLE body (commas inside parentheses kept)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


@functools.lru_cache(maxsize=8)
def expected_columns(migrations: tuple[Migration, ...], version: int) -> dict[str, frozenset[str]]:
    """The tables and columns nowblock's PostgreSQL schema has at ``version``.

    Read from the statements themselves (the version table and the migrations up to
    ``version``: ``CREATE TABLE`` and ``ALTER TABLE ... ADD COLUMN``), so the expectation
    cannot drift from the migrations.

    Parameters
    ----------
    migrations : tuple of Migration
        The backend's migrations, oldest first (:data:`MIGRATIONS`).
    version : int
        The schema version recorded in the database.

    Returns
    -------
    dict of str to frozenset of str
        Table name -> its column names, ``nowblock_schema`` included.
    """
    tables: dict[str, frozenset[str]] = {}
    statements = [_VERSION_TABLE] + [sql for v, _what, stmts in migrations if v <= version for sql in stmts]
    for sql in statements:
        if m := _CREATE_TABLE.match(sql.strip()):
            tables[m[1]] = frozenset(p.split()[0] for p in _top_level_parts(m[2])
                                     if p.split()[0].upper() not in _TABLE_CONSTRAINTS)
        elif m := _ADD_COLUMN.match(sql.strip()):
            tables[m[1]] = tables.get(m[1], frozenset()) | {m[2]}
    return tables


# Any key: serializes nowblock's migrations across processes (pg_advisory_xact_lock).
_MIGRATION_LOCK_KEY = 0x6E6F77626C6B  # "nowblk"


def _import_psycopg():
    try:
        import psycopg
    except ImportError as exc:  # the extra is optional: SQLite needs nothing
        raise StoreError("the PostgreSQL store needs psycopg 3: pip install 'nowblock[postgres]'") from exc
    return psycopg


def _named_to_pyformat(sql: str) -> str:
    """``:name`` parameters (the shared statements) as psycopg's ``%(name)s``."""
    import re

    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql.replace("%", "%%"))


class _Watchdog:
    """The deadline of a store's call in progress, kept by one long-lived daemon thread per store.

    A timer thread per call cost 0.1-0.3 ms on every call of the control loop; this thread
    sleeps until the armed deadline and is woken only when a call arms one earlier than that
    (after an idle spell, or a 1 s record after a 2 s write), so back-to-back calls cost a lock
    and a comparison. At a deadline it calls ``expire(call_id)`` without its lock held; the
    store checks there that the call is still the one in progress. The thread holds the store
    only weakly, so a store dropped without ``close()`` is still collected (its finalizer stops
    the thread).

    Parameters
    ----------
    expire : callable
        ``expire(call_id)``: the call ``call_id`` ran past its deadline (held as a weak method).
    name : str
        The thread's name.
    """

    def __init__(self, expire, name: str) -> None:
        self._expire = weakref.WeakMethod(expire)
        self._cond = threading.Condition(threading.Lock())
        self._call_id = 0  # the armed call
        self._deadline: float | None = None  # [monotonic s] of the armed call; None: none armed
        self._wake_at = math.inf  # [monotonic s] when the thread looks next (inf: only when woken)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def arm(self, call_id: int, timeout_s: float) -> None:
        """Keep the deadline of call ``call_id``: ``timeout_s`` [s] from now."""
        deadline = _time.monotonic() + timeout_s
        with self._cond:
            self._call_id, self._deadline = call_id, deadline
            if deadline < self._wake_at:  # the thread would look too late (or never): wake it now
                self._cond.notify()

    def disarm(self) -> None:
        """The armed call ended: no deadline (the thread finds out when it next looks)."""
        with self._cond:
            self._deadline = None

    def stop(self, *, join: bool = True) -> None:
        """End the thread (idempotent); ``join``: wait for it."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if join and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    now = _time.monotonic()
                    if self._deadline is not None and now >= self._deadline:
                        call_id, self._deadline = self._call_id, None  # expire each call once
                        self._wake_at = math.inf
                        break
                    self._wake_at = math.inf if self._deadline is None else self._deadline
                    self._cond.wait(None if self._deadline is None else self._deadline - now)
            expire = self._expire()
            if expire is None:  # the store is gone
                return
            try:
                expire(call_id)
            except Exception:  # noqa: BLE001 - a dead watchdog would keep no deadline ever again
                log.exception("PostgreSQL store watchdog: cutting call %d failed", call_id)
            del expire  # hold the store only while expiring


class PostgresStore(SqlStore):
    """:class:`Store` on a PostgreSQL database (thread-safe: one connection, one lock).

    Parameters
    ----------
    dsn : str
        A libpq connection URL or string, e.g. ``postgresql://user:pw@127.0.0.1:5432/nowblock``.
    plans_kept : int
        How many plans to keep.
    connect_timeout_s : float
        [s] How long to wait for the server when connecting (libpq waits at least 2 s).
    statement_timeout_s : float
        [s] Longest a read may run (the server's ``statement_timeout`` too: a stuck lock must not
        hang the OCPP handlers forever).
    write_timeout_s : float
        [s] Longest a write (one transaction) may take, kept by the client.
    bookkeeping_timeout_s : float
        [s] Longest a record of the control loop (a dispatch, a plan, an alarm) may take.
    retry_after_s : float
        [s] After a call timed out or could not connect, calls fail at once for this long.
    """

    MIGRATIONS = MIGRATIONS
    ALL_DIGITS_SQL = "transaction_id ~ '^[0-9]+$'"
    EPOCH_S_SQL = "CAST(EXTRACT(EPOCH FROM time) AS BIGINT)"
    INTEGER_CAST = "NUMERIC"

    def __init__(self, dsn: str, *, plans_kept: int = 50, connect_timeout_s: float = 3.0,
                 statement_timeout_s: float = 10.0, write_timeout_s: float = 2.0,
                 bookkeeping_timeout_s: float = 1.0, retry_after_s: float = 5.0) -> None:
        super().__init__(plans_kept=plans_kept)
        self._psycopg = _import_psycopg()
        self.dsn = str(dsn)
        self._connect_timeout_s = float(connect_timeout_s)
        self._statement_timeout_ms = int(1000 * float(statement_timeout_s))
        self.statement_timeout_s = float(statement_timeout_s)
        self.write_timeout_s = float(write_timeout_s)
        self.bookkeeping_timeout_s = float(bookkeeping_timeout_s)
        self.retry_after_s = float(retry_after_s)
        self._lock = threading.RLock()
        self._con = None
        self.closed = False
        self._opening = True
        self._depth = 0  # nested calls of the lock's owner (a migration reads inside its transaction)
        self._local = threading.local()  # a shorter deadline for the control loop's records
        self._cut_lock = threading.Lock()
        self._call_id = 0  # the call in progress (the watchdog cuts only that one)
        self._cut_call = -1  # the call whose socket the watchdog shut down
        self._retry_at = 0.0  # [monotonic s] until then, calls fail at once
        #: Since when and why the store fails (None once a call succeeds): for ``/api/health``.
        self.unavailable: tuple[pd.Timestamp, str] | None = None
        self._watchdog = _Watchdog(self._cut, name=f"nowblock-pg-watchdog-{id(self):x}")
        try:
            with self._call(self._connect_timeout_s + 2.0):
                self._connection()  # fail early on a bad URL or an unreachable server
            self._check_schema()
            self._migrate(_VERSION_TABLE)
        except BaseException:
            self.close()
            raise
        self._opening = False

    def __repr__(self) -> str:
        return f"PostgresStore({self._redacted()!r})"

    def _redacted(self) -> str:
        """The DSN without its password (for messages and logs)."""
        try:
            info = self._psycopg.conninfo.conninfo_to_dict(self.dsn)
        except Exception:  # noqa: BLE001 - a message must not fail on an odd DSN
            return "postgresql://..."
        return " ".join(f"{k}={v}" for k, v in info.items() if k != "password")

    def _location(self) -> str:
        return self._redacted()

    def _check_schema(self) -> None:
        """Refuse tables of nowblock's names that are not nowblock's, before writing anything.

        Looks at the tables of the connection's current schema whose names nowblock uses
        (other tables are left alone). None: a new schema, the migrations create them. Some:
        the table ``nowblock_schema`` must be there, and every table of its recorded version
        with every column that version created (extra columns are left alone); a table that
        only a later version creates must not be there yet (its migration would fail on it).

        Raises
        ------
        StoreFileError
            Naming the database (without its password), the schema, and the foreign,
            missing or incomplete tables.
        """
        _, rows = self._query("SELECT current_schema(), table_name, column_name FROM information_schema.columns "
                              "WHERE table_schema = current_schema()", {})
        schema = rows[0][0] if rows else None
        names = expected_columns(self.MIGRATIONS, self.latest_schema_version)
        tables: dict[str, set[str]] = {}
        for _schema, table, column in rows:
            if table in names:
                tables.setdefault(table, set()).add(column)
        if not tables:
            return
        where = f"{self._location()}: schema {schema}"
        if "nowblock_schema" not in tables:
            shown = sorted(tables)
            raise StoreFileError(
                f"{where} is not nowblock's: it has table{'s' * (len(shown) != 1)} {', '.join(shown)} but no "
                "nowblock_schema table; give nowblock a schema of its own (?options=-csearch_path%3Dname in the "
                "URL; nothing was changed in this one)")
        version = 0
        if "version" in tables["nowblock_schema"]:
            _, rows = self._query("SELECT MAX(version) FROM nowblock_schema", {})
            version = int(rows[0][0]) if rows and rows[0][0] is not None else 0
        if version > self.latest_schema_version:
            return  # _migrate refuses it with both version numbers
        want = expected_columns(self.MIGRATIONS, version)
        problems = []
        for table in sorted(set(want) | set(tables)):
            if table not in want:
                problems.append(f"table {table} is there, but schema version {version} has none (another "
                                "program's?)")
            elif table not in tables:
                problems.append(f"table {table} is missing")
            elif want[table] - tables[table]:
                lacking = sorted(want[table] - tables[table])
                problems.append(f"table {table} lacks column{'s' * (len(lacking) != 1)} {', '.join(lacking)}")
        if problems:
            raise StoreFileError(
                f"{where}: nowblock's tables (schema version {version}) are incomplete: {'; '.join(problems)}; "
                "restore a backup, or give nowblock an empty schema (nothing was changed)")

    # ---- connection ---------------------------------------------------------------------------
    def _connection(self):
        """The open connection, connecting (again) if there is none."""
        if self.closed:
            raise StoreError("store is closed")
        if self._con is not None and not self._con.closed:
            return self._con
        pg = self._psycopg
        # A peer that vanished (a network black hole) ends the connection instead of hanging it;
        # options the URL gives win.
        try:
            given = pg.conninfo.conninfo_to_dict(self.dsn)
        except Exception:  # noqa: BLE001 - a malformed URL: connect says what is wrong
            given = {}
        tcp = {k: v for k, v in (("keepalives", 1), ("keepalives_idle", 5), ("keepalives_interval", 2),
                                 ("keepalives_count", 3), ("tcp_user_timeout", 10_000)) if k not in given}
        try:
            con = pg.connect(self.dsn, autocommit=True, connect_timeout=max(2, round(self._connect_timeout_s)),
                             application_name="nowblock", **tcp)
        except pg.OperationalError as exc:
            self._retry_at = _time.monotonic() + self.retry_after_s  # fail fast meanwhile
            raise StoreUnavailable(f"cannot connect to PostgreSQL ({self._redacted()}): "
                                   f"{str(exc).strip()}") from exc
        except pg.ProgrammingError as exc:  # a malformed URL
            raise StoreError(f"bad PostgreSQL URL: {exc}") from exc
        try:
            con.execute("SET synchronous_commit = on")  # a returned commit is on disk
            con.execute(f"SET statement_timeout = {self._statement_timeout_ms}")
            con.execute("SET TIME ZONE 'UTC'")
            schema = con.execute("SELECT current_schema()").fetchone()[0]
            fsync = con.execute("SHOW fsync").fetchone()[0]
        except BaseException:
            con.close()
            raise
        if schema is None:
            con.close()
            what = (f"no schema to create tables in: the search_path of {self._redacted()} names no existing "
                    "schema (create it, or name another one in ?options=-csearch_path%3Dname)")
            if self._opening:  # a configuration mistake: `nowblock serve` says it in one line, status 2
                raise StoreFileError(what)
            raise StoreUnavailable(what)  # dropped while serving: nothing may be acknowledged
        if fsync != "on":
            log.warning("PostgreSQL runs with fsync=off: a committed write may be lost in a power cut")
        self._con = con
        return con

    def _lost(self, exc) -> StoreUnavailable:
        """Drop a broken connection (the next call connects again) and say what happened."""
        con, self._con = self._con, None
        if con is not None:
            try:
                con.close()
            except Exception:  # noqa: BLE001 - it is already broken
                pass
        if self._cut_call == self._call_id:
            return StoreUnavailable(f"PostgreSQL did not answer within {self._deadline_s:g} s ({self._redacted()}); "
                                    "the write may not have been stored")
        if isinstance(exc, self._psycopg.errors.QueryCanceled):
            # The server's statement_timeout: it answered, so no fail-fast for the next calls (a slow
            # read made every write fail for 5 s, found by a review).
            return StoreUnavailable(f"PostgreSQL cancelled a statement that ran too long ({str(exc).strip()})")
        return StoreUnavailable(f"PostgreSQL connection lost ({str(exc).strip()}); the write may not have been stored")

    def _cut(self, call_id: int) -> None:
        """The watchdog: call ``call_id`` ran past its deadline; shut its socket down, so that the
        waiting call fails now (a stopped server never answers, and never fires its own timeout)."""
        with self._cut_lock:
            con = self._con
            if call_id != self._call_id or con is None:
                return
            self._cut_call = call_id
            self._retry_at = _time.monotonic() + self.retry_after_s
            try:
                fd = con.pgconn.socket
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except Exception:  # noqa: BLE001 - a closed socket: the call ended on its own
                pass

    @contextmanager
    def _call(self, timeout_s: float | None):
        """One store call: fail at once while the server is known unreachable, else hold the lock
        and keep the deadline ``timeout_s`` [s] (None: none, the migrations at open)."""
        if self.closed:
            raise StoreError("store is closed")
        timeout_s = getattr(self._local, "timeout_s", None) or timeout_s
        now = _time.monotonic()
        if now < self._retry_at and not self._opening and not self._lock_owned():
            why = self.unavailable[1] if self.unavailable else "it did not answer"
            raise StoreUnavailable(f"PostgreSQL unavailable, not tried again for {self._retry_at - now:.1f} s "
                                   f"(last: {why})")
        if not self._lock.acquire(timeout=-1 if timeout_s is None else timeout_s):
            raise StoreUnavailable(f"PostgreSQL store busy: another call held it for more than {timeout_s:g} s")
        try:
            self._depth += 1
            if self._depth > 1:  # nested in a call of this thread: the outer call keeps the deadline
                yield
                return
            with self._cut_lock:
                self._call_id += 1
                call_id = self._call_id
            self._deadline_s = timeout_s
            if timeout_s is not None:
                self._watchdog.arm(call_id, timeout_s)
            try:
                yield
            except StoreUnavailable as exc:
                if self.unavailable is None:
                    self.unavailable = (pd.Timestamp.now(tz="UTC"), str(exc))
                else:
                    self.unavailable = (self.unavailable[0], str(exc))
                raise
            else:
                self.unavailable = None
            finally:
                if timeout_s is not None:
                    self._watchdog.disarm()
                with self._cut_lock:
                    self._call_id += 1  # a late watchdog must not cut the next call
        finally:
            self._depth -= 1
            self._lock.release()

    def _lock_owned(self) -> bool:
        return self._lock._is_owned()  # noqa: SLF001 - RLock's own test of "this thread holds it"

    @contextmanager
    def _bookkeeping(self):
        """Calls inside keep the short deadline of the control loop's records."""
        self._local.timeout_s = self.bookkeeping_timeout_s
        try:
            yield
        finally:
            self._local.timeout_s = None

    def record_profile(self, *args, **kwargs) -> None:
        with self._bookkeeping():
            return super().record_profile(*args, **kwargs)

    def save_plan(self, *args, **kwargs) -> None:
        with self._bookkeeping():
            return super().save_plan(*args, **kwargs)

    def record_event(self, *args, **kwargs) -> None:
        with self._bookkeeping():
            return super().record_event(*args, **kwargs)

    @contextmanager
    def _begin(self, *, exclusive: bool = False):
        """One transaction, committed on exit; on any error nothing is applied."""
        pg = self._psycopg
        with self._call(None if exclusive else self.write_timeout_s):
            con = self._connection()
            try:
                with con.transaction():
                    cur = con.cursor()
                    if exclusive:
                        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))

                    def run(sql: str, params: dict) -> int:
                        cur.execute(_named_to_pyformat(sql), params)
                        return cur.rowcount

                    yield run
            except pg.OperationalError as exc:
                raise self._lost(exc) from exc

    def _query(self, sql: str, params: dict) -> tuple[list[str], list[tuple]]:
        pg = self._psycopg
        with self._call(self.statement_timeout_s + 1.0):  # the server's own timeout first
            con = self._connection()
            try:
                cur = con.execute(_named_to_pyformat(sql), params)
                return [d.name for d in cur.description], cur.fetchall()
            except pg.OperationalError as exc:
                raise self._lost(exc) from exc

    def __del__(self) -> None:
        # A store dropped without close() (a script, a test) must not leave its server
        # connection to the garbage collector; every acknowledged write is committed already.
        con = getattr(self, "_con", None)
        if con is not None:
            try:
                con.close()
            except Exception:  # noqa: BLE001 - nothing can be reported from a finalizer
                pass
        watchdog = getattr(self, "_watchdog", None)
        if watchdog is not None:
            watchdog.stop(join=False)  # a finalizer must not wait

    def close(self) -> None:
        """Close the connection and stop the watchdog thread (idempotent); every acknowledged write
        is already committed."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
            self.closed = True
        self._watchdog.stop()
