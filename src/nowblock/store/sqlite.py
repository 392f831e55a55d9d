"""The SQLite store, the embedded default (see :class:`nowblock.store.Store`).

What is kept: stations, transactions (energy so far, the session's needs), meter values, the
history of finished sessions (it feeds the session-needs forecaster as a sessions frame),
charging profiles sent with the charger's answer, and the latest plan. The statements are
shared with the PostgreSQL backend (:mod:`nowblock.store.sql`); this module holds the
connection, the schema and its migrations.

Every write is one short SQLite transaction committed before the method returns, so an OCPP
handler that writes and *then* acknowledges never acknowledges something that is not on disk.
The file runs in WAL mode: readers (a dashboard, a second process) never block the writer.
``synchronous=FULL`` by default makes a commit survive a power cut, not only a process crash.

Opening checks the file before writing to it (:class:`~nowblock.store.StoreFileError`, naming
the path, for anything else): a new or empty file is initialised; a nowblock database must be
whole (``PRAGMA quick_check``) and have the tables and columns of its recorded schema version;
another program's database is refused, not extended.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from nowblock.store.base import StoreError, StoreFileError
from nowblock.store.sql import Migration, SqlStore

log = logging.getLogger(__name__)

# Version 1 is the schema files had before versions were recorded (CREATE ... IF NOT EXISTS,
# so such a file is adopted as version 1 without a change). Times are fixed-width UTC ISO text,
# so text order is time order.
MIGRATIONS: tuple[Migration, ...] = (
    (1, "stations, transactions, meter values, profiles, plans", (
        """CREATE TABLE IF NOT EXISTS stations (
            station_id   TEXT PRIMARY KEY,
            protocol     TEXT,
            vendor       TEXT,
            model        TEXT,
            status       TEXT,
            connected    INTEGER NOT NULL DEFAULT 0,
            first_seen   TEXT,
            last_seen    TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS transactions (
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
        )""",
        "CREATE INDEX IF NOT EXISTS transactions_open ON transactions (stopped_at)",
        """CREATE TABLE IF NOT EXISTS meter_values (
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
        )""",
        """CREATE TABLE IF NOT EXISTS profiles (
            id                INTEGER PRIMARY KEY AUTOINCREMENT,
            time              TEXT NOT NULL,
            station_id        TEXT NOT NULL,
            transaction_id    TEXT,
            purpose           TEXT NOT NULL,
            limit_a           REAL,
            valid_to          TEXT,
            status            TEXT NOT NULL,
            accepted_limit_a  REAL
        )""",
        "CREATE INDEX IF NOT EXISTS profiles_station ON profiles (station_id, id)",
        """CREATE TABLE IF NOT EXISTS plans (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            time     TEXT NOT NULL,
            policy   TEXT,
            status   TEXT,
            plan     TEXT NOT NULL
        )""",
    )),
    (2, "operator inputs, events (alarms), a time index on meter values", (
        """CREATE TABLE IF NOT EXISTS operator_inputs (
            kind        TEXT NOT NULL,
            key         TEXT NOT NULL,
            data        TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
        """CREATE TABLE IF NOT EXISTS events (
            id    INTEGER PRIMARY KEY AUTOINCREMENT,
            time  TEXT NOT NULL,
            kind  TEXT NOT NULL,
            data  TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS events_time ON events (time)",
        "CREATE INDEX IF NOT EXISTS meter_values_time ON meter_values (time)",
    )),
    # A meter value's time is in the central system's clock (a station's stamp less its clock
    # offset); what the station stamped it is kept beside it (NULL: written before, or none).
    (3, "meter values keep the station's own stamp", (
        "ALTER TABLE meter_values ADD COLUMN station_time TEXT",
    )),
)

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS nowblock_schema (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  TEXT NOT NULL
)"""


#: The first 16 bytes of every SQLite 3 database file.
_SQLITE_HEADER = b"SQLite format 3\x00"
#: How many problems ``PRAGMA quick_check`` reports at most: one names the damage, and on a
#: badly broken file the check stops early instead of listing every page.
_QUICK_CHECK_PROBLEMS = 3


@functools.lru_cache(maxsize=8)
def expected_columns(migrations: tuple[Migration, ...], version: int) -> dict[str, frozenset[str]]:
    """The tables and columns nowblock's SQLite schema has at ``version``.

    Built by running the version table and the migrations up to ``version`` on an empty
    in-memory database and reading its tables back, so the expectation cannot drift from the
    migrations themselves (a few milliseconds, once per version).

    Parameters
    ----------
    migrations : tuple of Migration
        The backend's migrations, oldest first (:data:`MIGRATIONS`).
    version : int
        The schema version recorded in the file (1 for a file from before versions were
        recorded).

    Returns
    -------
    dict of str to frozenset of str
        Table name -> its column names, ``nowblock_schema`` included.
    """
    con = sqlite3.connect(":memory:")
    try:
        con.execute(_VERSION_TABLE)
        for v, _what, statements in migrations:
            if v > version:
                break
            for sql in statements:
                con.execute(sql)
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {n: frozenset(r[1] for r in con.execute(f'PRAGMA table_info("{n}")')) for n in names}
    finally:
        con.close()


def _greatest(*values):
    """PostgreSQL's GREATEST: the largest argument, NULLs ignored (NULL if all are)."""
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _least(*values):
    """PostgreSQL's LEAST: the smallest argument, NULLs ignored (NULL if all are)."""
    present = [v for v in values if v is not None]
    return min(present) if present else None


class SqliteStore(SqlStore):
    """:class:`Store` on one SQLite file in WAL mode (thread-safe: one connection, one lock).

    ``synchronous`` is SQLite's PRAGMA: "FULL" (default) survives power loss, "NORMAL" survives
    a process crash and is faster. Methods are short and synchronous; calling them from the
    event loop is intended (each is one small transaction). ``plans_kept`` plans are kept.
    """

    MIGRATIONS = MIGRATIONS
    #: [bytes] Files up to this size get the whole ``PRAGMA quick_check`` at open (about 0.1 s
    #: from the page cache, 1 s from a slow disk); larger ones a check of all tables but
    #: :attr:`LOG_TABLES` (see :meth:`_check_integrity`).
    FULL_CHECK_MAX_BYTES = 64 * 2**20
    #: The append-only logs, left out of the check at open of a large file: they hold nearly
    #: all of its size, and nothing a restart restores.
    LOG_TABLES = ("meter_values", "profiles", "events")
    EPOCH_S_SQL = "CAST(strftime('%s', substr(time, 1, 19)) AS INTEGER)"
    ALL_DIGITS_SQL = "transaction_id NOT GLOB '*[^0-9]*'"
    INTEGER_CAST = "INTEGER"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", plans_kept: int = 50) -> None:
        super().__init__(plans_kept=plans_kept)
        self.path = str(path)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"synchronous: expected OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self._lock = threading.RLock()
        self.closed = True  # until the file is open and checked: close() has nothing to do
        if self.path != ":memory:":
            self._check_path()
        try:
            self._con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreFileError(f"{self.path}: cannot be opened as a SQLite database ({exc})") from exc
        try:
            try:
                self._con.execute("PRAGMA busy_timeout=30000")
                # Checked before WAL mode is set: that writes the file's header, and a file
                # that is refused must be left exactly as it was.
                self._check_integrity()
                self._check_schema()
                self._con.execute("PRAGMA journal_mode=WAL")
                self._con.execute(f"PRAGMA synchronous={synchronous.upper()}")
            except sqlite3.DatabaseError as exc:
                # Whatever SQLite says about the file before anything is written is about the
                # file the operator gave, not a bug: name the file.
                code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # the primary result code
                if code == sqlite3.SQLITE_NOTADB or "not a database" in str(exc):
                    what = "not a SQLite database"
                elif code == sqlite3.SQLITE_CORRUPT or "malformed" in str(exc):
                    what = "the SQLite file is damaged (restore a backup, or move it away to start afresh)"
                else:
                    what = "cannot be used as a SQLite database"
                raise StoreFileError(f"{self.path}: {what}: {exc}") from exc
            for name, fn in (("GREATEST", _greatest), ("LEAST", _least)):
                self._con.create_function(name, -1, fn, deterministic=True)
            self.closed = False
            self._migrate(_VERSION_TABLE)
        except BaseException:
            self._con.close()
            self.closed = True
            raise

    def _location(self) -> str:
        return self.path

    def _check_path(self) -> None:
        """Refuse a path that cannot hold a SQLite file before SQLite gets to it.

        Creates the file's folder if it is missing. SQLite's own words for these cases
        ("unable to open database file", "file is not a database") name neither the file nor
        the reason, hence the checks here.

        Raises
        ------
        StoreFileError
            The path is a directory, its folder cannot be created, or the file has content
            that does not start with the SQLite header (text, random bytes, another format).
        """
        p = Path(self.path)
        if p.is_dir():
            raise StoreFileError(f"{self.path}: is a directory, not a SQLite database file")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreFileError(f"{self.path}: cannot create its folder ({exc.strerror or exc})") from exc
        try:
            with p.open("rb") as f:
                head = f.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return  # a new file: SQLite creates it
        except OSError as exc:
            raise StoreFileError(f"{self.path}: cannot be read ({exc.strerror or exc})") from exc
        if head and head != _SQLITE_HEADER:  # an empty file is a new database, as for SQLite
            raise StoreFileError(f"{self.path}: not a SQLite database (the file does not start with "
                                 "the SQLite header)")

    def _check_integrity(self) -> None:
        """Refuse a damaged file at open, not at the first station's write.

        ``PRAGMA quick_check`` reads every page and checks the b-trees (without the
        index-against-table comparison of ``integrity_check``). Its cost grows with the file:
        a year of a 20-charger block (3.5 million meter values, 580 MB) takes about 1 s with
        the file in the page cache and 9 s from disk. So a file up to
        :attr:`FULL_CHECK_MAX_BYTES` is checked whole; a larger one table by table, all but
        the append-only logs (:attr:`LOG_TABLES`, nearly all of its size): what a restart
        restores and every connect writes (stations, transactions, operator inputs, plans) is
        always checked, in milliseconds. Without this a damaged stations page let serve start,
        then closed every charger connection with "database disk image is malformed".

        Raises
        ------
        StoreFileError
            With the first problem SQLite reports. (A page so broken that the check cannot
            read it raises :class:`sqlite3.DatabaseError`; ``__init__`` words that one.)
        """
        try:
            size = Path(self.path).stat().st_size if self.path != ":memory:" else 0
        except OSError:
            size = 0
        if size <= self.FULL_CHECK_MAX_BYTES:
            problems = [r[0] for r in self._con.execute(f"PRAGMA quick_check({_QUICK_CHECK_PROBLEMS})")]
        else:
            names = [r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            problems = []
            for name in names:
                if name in self.LOG_TABLES:
                    continue
                quoted = name.replace('"', '""')
                problems += [r[0] for r in self._con.execute(f'PRAGMA quick_check("{quoted}")') if r[0] != "ok"]
            log.info("%s: %.0f MB, checked all tables but %s (for a full check: sqlite3 %s 'PRAGMA quick_check')",
                     self.path, size / 1e6, ", ".join(self.LOG_TABLES), self.path)
            problems = problems or ["ok"]
        if problems != ["ok"]:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise StoreFileError(
                f"{self.path}: the SQLite file is damaged (PRAGMA quick_check: {problems[0]}{more}); restore "
                "a backup, or move the file away to start with an empty store")

    def _check_schema(self) -> None:
        """Refuse another program's database, or nowblock's tables with columns missing.

        A file with no tables (new or empty) is fine: the migrations create them. A file with
        tables must have nowblock's schema-version table ``nowblock_schema``, or all of
        version 1's tables (files from before versions were recorded, adopted as version 1);
        anything else belongs to another program, and adding nowblock's tables to it would
        mix two programs' data. The tables of the recorded version must have every column
        that version created (extra tables and columns are left alone).

        Raises
        ------
        StoreFileError
            Naming the foreign tables found, or the missing tables and columns.
        """
        cur = self._con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        tables = {r[0] for r in cur}
        if not tables:
            return
        v1 = set(expected_columns(self.MIGRATIONS, 1)) - {"nowblock_schema"}
        if "nowblock_schema" in tables:
            cols = {r[1] for r in self._con.execute('PRAGMA table_info("nowblock_schema")')}
            row = self._con.execute("SELECT MAX(version) FROM nowblock_schema").fetchone() if "version" in cols else None
            version = int(row[0]) if row and row[0] is not None else 0
        elif v1 <= tables:
            version = 1
        else:
            shown = sorted(tables)
            names = ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")
            raise StoreFileError(
                f"{self.path}: not a nowblock database: it has table{'s' * (len(shown) != 1)} {names} but no "
                "nowblock_schema table; give nowblock a new or empty file (nothing was changed in this one)")
        if version > self.latest_schema_version:
            return  # _migrate refuses it with both version numbers
        problems = []
        for table, want in sorted(expected_columns(self.MIGRATIONS, version).items()):
            if table == "nowblock_schema" and table not in tables:
                continue  # a file from before versions were recorded: _migrate adds it
            if table not in tables:
                problems.append(f"table {table} is missing")
                continue
            have = {r[1] for r in self._con.execute(f'PRAGMA table_info("{table}")')}
            if want - have:
                problems.append(f"table {table} lacks column{'s' * (len(want - have) != 1)} "
                                f"{', '.join(sorted(want - have))}")
        if problems:
            raise StoreFileError(
                f"{self.path}: nowblock's tables (schema version {version}) are incomplete: {'; '.join(problems)}; "
                "restore a backup, or give nowblock a new or empty file")

    @contextmanager
    def _begin(self, *, exclusive: bool = False):
        """One write transaction, committed on exit; on any error nothing is applied.

        BEGIN IMMEDIATE takes the file's write lock at once, so every write transaction (and a
        migration) runs alone, whichever process it comes from.
        """
        with self._lock:
            cur = self._con.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield lambda sql, params: cur.execute(sql, params).rowcount
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _query(self, sql: str, params: dict) -> tuple[list[str], list[tuple]]:
        with self._lock:
            cur = self._con.execute(sql, params)
            return [d[0] for d in cur.description], cur.fetchall()

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
