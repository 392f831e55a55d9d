"""The SQLite store on files that are not a healthy nowblock database, and what the recorder keeps.

Opening must refuse, with one line naming the file, anything that is not nowblock's database or
not whole (a directory, text, random bytes, a truncated or damaged file, another program's
tables, nowblock's tables with columns missing) and change nothing in it; ``nowblock serve``
turns that into exit status 2. A new or empty file is initialised as before. The recorder must
keep the vendor of both OCPP versions and move ``last_seen`` with the meter values, and
``serve`` must record the disconnects of a SIGTERM before it closes the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from nowblock.store import SqliteStore, StoreError, StoreFileError, attach_store, open_store
from nowblock.store import sqlite as sqlite_backend

T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _good_file(path, n_stations: int = 400) -> None:
    """A nowblock database with enough stations that their table spans several pages."""
    s = open_store(path)
    for i in range(n_stations):
        s.upsert_station(f"CP{i:04d}", time=T0, protocol="ocpp1.6", vendor="V" * 40, model="M" * 40, connected=True)
    s.start_transaction("CP0001", 7, time=T0, meter_start_wh=1000.0)
    s.close()  # checkpoints the WAL: everything is in the main file


def _page_of(path, table: str) -> tuple[int, int]:
    """(page size [bytes], number of a leaf page of ``table`` that is not its root)."""
    con = sqlite3.connect(path)
    try:
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        pages = sorted(r[0] for r in con.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'",
                                                  (table,)) if r[0] != root)
    finally:
        con.close()
    return page_size, pages[len(pages) // 2]


def _damage_page(path, table: str) -> None:
    page_size, page = _page_of(path, table)
    data = bytearray(Path(path).read_bytes())
    start = (page - 1) * page_size
    data[start:start + page_size // 2] = b"\xab" * (page_size // 2)
    Path(path).write_bytes(bytes(data))


# ---- refused at open: not SQLite, not whole ---------------------------------------------------
@pytest.mark.parametrize("content", [b"hello\n", os.urandom(20000), b"SQLite format 2\x00" + b"\x00" * 100],
                         ids=["text", "random", "other-header"])
def test_a_file_that_is_not_sqlite_is_refused_naming_it(tmp_path, content):
    db = tmp_path / "not.sqlite"
    db.write_bytes(content)
    with pytest.raises(StoreFileError, match="not a SQLite database") as err:
        open_store(db)
    assert str(err.value).startswith(f"{db}: ")
    assert db.read_bytes() == content  # nothing written, no WAL left behind
    assert not (tmp_path / "not.sqlite-wal").exists()


def test_a_directory_is_refused_naming_it(tmp_path):
    d = tmp_path / "adir.sqlite"
    d.mkdir()
    with pytest.raises(StoreFileError, match="is a directory") as err:
        open_store(d)
    assert str(err.value).startswith(f"{d}: ")


def test_a_truncated_file_is_refused_as_damaged(tmp_path):
    db = tmp_path / "cut.sqlite"
    _good_file(db)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreFileError, match="damaged") as err:
        open_store(db)
    assert str(err.value).startswith(f"{db}: ")


@pytest.mark.parametrize("whole_file_check", [True, False])
def test_a_damaged_page_of_a_state_table_is_refused_at_open(tmp_path, monkeypatch, whole_file_check):
    # The tester's case: one damaged stations page. Before, serve started and then closed every
    # charger connection with "database disk image is malformed". Both checks find it: the whole
    # file's (small files) and the table-by-table one (large files).
    if not whole_file_check:
        monkeypatch.setattr(SqliteStore, "FULL_CHECK_MAX_BYTES", 0)
    db = tmp_path / "damaged.sqlite"
    _good_file(db)
    _damage_page(db, "stations")
    before = _digest(db)
    with pytest.raises(StoreFileError, match="damaged") as err:
        open_store(db)
    assert str(err.value).startswith(f"{db}: ")
    assert _digest(db) == before


def test_a_large_file_skips_only_the_log_tables(tmp_path, monkeypatch, caplog):
    # Above FULL_CHECK_MAX_BYTES the check leaves out meter values, profiles and events (nearly
    # all of a year-old file): a damaged meter-values page does not stop a restart.
    monkeypatch.setattr(SqliteStore, "FULL_CHECK_MAX_BYTES", 0)
    db = tmp_path / "big.sqlite"
    s = open_store(db)
    s.upsert_station("CP1", time=T0)
    s.start_transaction("CP1", 1, time=T0)
    s.record_meter_values("CP1", 1, [{"time": T0 + pd.Timedelta(seconds=i), "energy_wh": float(i),
                                       "current_a": [16.0, 16.0, 16.0]} for i in range(2000)])
    s.close()
    _damage_page(db, "meter_values")
    with caplog.at_level("INFO", logger="nowblock.store.sqlite"):
        s = open_store(db)
    assert s.load_open_transactions()["transaction_id"].tolist() == ["1"]
    s.close()
    assert "checked all tables but meter_values, profiles, events" in caplog.text
    monkeypatch.setattr(SqliteStore, "FULL_CHECK_MAX_BYTES", 64 * 2**20)
    with pytest.raises(StoreFileError, match="damaged"):  # a small file: checked whole
        open_store(db)


# ---- refused at open: another program's database, nowblock's tables incomplete ---------------
@pytest.mark.parametrize("ddl, table", [
    ("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)", "customers"),
    ("CREATE TABLE transactions (id INTEGER PRIMARY KEY, amount REAL)", "transactions"),
])
def test_another_programs_database_is_refused_and_left_unchanged(tmp_path, ddl, table):
    db = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(db)
    con.execute(ddl)
    con.execute(f"INSERT INTO {table} VALUES (1, 'x')")
    con.commit()
    con.close()
    before = _digest(db)
    with pytest.raises(StoreFileError, match=f"not a nowblock database: it has table {table} but no "
                                             "nowblock_schema table") as err:
        open_store(db)
    assert str(err.value).startswith(f"{db}: ")
    assert _digest(db) == before
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == [table]
    con.close()


def test_nowblock_tables_with_missing_columns_are_refused_naming_them(tmp_path):
    db = tmp_path / "changed.sqlite"
    _good_file(db, n_stations=1)
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE transactions DROP COLUMN stop_reason")
    con.execute("DROP INDEX transactions_open")
    con.execute("ALTER TABLE transactions DROP COLUMN stopped_at")
    con.execute("DROP TABLE operator_inputs")
    con.commit()
    con.close()
    with pytest.raises(StoreFileError) as err:
        open_store(db)
    msg = str(err.value)
    v = max(m[0] for m in sqlite_backend.MIGRATIONS)  # the latest: the file was written whole
    assert msg.startswith(f"{db}: nowblock's tables (schema version {v}) are incomplete")
    assert "table operator_inputs is missing" in msg
    assert "table transactions lacks columns stop_reason, stopped_at" in msg


def test_a_pre_version_file_with_missing_columns_is_refused(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    for sql in sqlite_backend.MIGRATIONS[0][2]:
        con.execute(sql.replace("phases                INTEGER,", ""))
    con.commit()
    con.close()
    with pytest.raises(StoreFileError, match="schema version 1.*table transactions lacks column phases"):
        open_store(db)


def test_a_newer_schema_is_refused_naming_the_file(tmp_path):
    db = tmp_path / "newer.sqlite"
    _good_file(db, n_stations=1)
    con = sqlite3.connect(db)
    con.execute("INSERT INTO nowblock_schema VALUES (99, 'future', '2030-01-01')")
    con.commit()
    con.close()
    with pytest.raises(StoreFileError, match="schema version 99, newer than this nowblock knows") as err:
        open_store(db)
    assert str(err.value).startswith(f"{db}: ") and isinstance(err.value, StoreError)


# ---- PostgreSQL: tables of nowblock's names that are not nowblock's are refused the same way -----
def _pg(url: str, *statements: str) -> list:
    """Run ``statements`` in the URL's schema; returns the rows of the last one (if it has any)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        rows = []
        for sql in statements:
            cur = con.execute(sql)
            rows = cur.fetchall() if cur.description else []
        return rows


def _pg_location(url: str) -> str:
    """How the PostgreSQL store names ``url`` in its messages: the connection's fields but the password."""
    from psycopg.conninfo import conninfo_to_dict

    return " ".join(f"{k}={v}" for k, v in conninfo_to_dict(url).items() if k != "password")


def _pg_columns(url: str) -> dict[str, frozenset[str]]:
    rows = _pg(url, "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema()")
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return {t: frozenset(c) for t, c in out.items()}


@pytest.mark.parametrize("ddl, table", [
    ("CREATE TABLE transactions (id INTEGER PRIMARY KEY, amount REAL)", "transactions"),
    ("CREATE TABLE stations (id INTEGER PRIMARY KEY, amount REAL)", "stations"),
])
def test_postgres_tables_of_another_program_are_refused_and_left_unchanged(postgres_url, ddl, table):
    from nowblock.store import postgres as pg_backend

    _pg(postgres_url, ddl, f"INSERT INTO {table} VALUES (1, 2.5)")
    before = _pg_columns(postgres_url)
    with pytest.raises(StoreFileError, match=f"is not nowblock's: it has table {table} but no nowblock_schema "
                                             "table") as err:
        open_store(postgres_url)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{_pg_location(postgres_url)}: schema nbtest_")
    assert _pg_columns(postgres_url) == before  # nothing created, nothing changed
    assert _pg(postgres_url, f"SELECT * FROM {table}") == [(1, 2.5)]
    # The expectation is read from the PostgreSQL migrations: a fresh schema has exactly those columns.
    _pg(postgres_url, f"DROP TABLE {table}")
    open_store(postgres_url).close()
    latest = max(m[0] for m in pg_backend.MIGRATIONS)
    assert _pg_columns(postgres_url) == pg_backend.expected_columns(pg_backend.MIGRATIONS, latest)


def test_postgres_nowblock_tables_with_missing_columns_are_refused_naming_them(postgres_url):
    from nowblock.store import postgres as pg_backend

    open_store(postgres_url).close()
    _pg(postgres_url, "ALTER TABLE transactions DROP COLUMN stop_reason",
        "ALTER TABLE transactions DROP COLUMN stopped_at", "DROP TABLE operator_inputs")
    with pytest.raises(StoreFileError) as err:
        open_store(postgres_url)
    msg = str(err.value)
    assert f"nowblock's tables (schema version {max(m[0] for m in pg_backend.MIGRATIONS)}) are incomplete" in msg
    assert "table operator_inputs is missing" in msg
    assert "table transactions lacks columns stop_reason, stopped_at" in msg
    # A table that only a later version creates, already there (another program's): refused too.
    _pg(postgres_url, "DROP TABLE events", "DELETE FROM nowblock_schema WHERE version >= 2",
        "ALTER TABLE transactions ADD COLUMN stop_reason TEXT", "ALTER TABLE transactions ADD COLUMN stopped_at TEXT",
        "CREATE TABLE events (id INTEGER, what TEXT)")
    with pytest.raises(StoreFileError, match="schema version 1.*table events is there, but schema version 1 has none"):
        open_store(postgres_url)


def test_postgres_other_tables_and_extra_columns_are_fine(postgres_url):
    _pg(postgres_url, "CREATE TABLE my_notes (note TEXT)")
    s = open_store(postgres_url)
    assert s.schema_version() == s.latest_schema_version
    s._write([("ALTER TABLE stations ADD COLUMN colour TEXT", {})])
    s.close()
    s = open_store(postgres_url)  # an operator's own table or column is left alone
    assert s.schema_version() == s.latest_schema_version
    s.close()


def test_serve_refuses_a_foreign_postgres_schema_with_one_line_and_status_2(tmp_path, postgres_url):
    from nowblock.testing import make_test_site

    site = tmp_path / "site.toml"
    make_test_site(1).to_toml(site)
    _pg(postgres_url, "CREATE TABLE transactions (id INTEGER PRIMARY KEY, amount REAL)")
    r = subprocess.run([sys.executable, "-m", "nowblock.cli", "serve", "--site", str(site), "--port", "0",
                        "--db", postgres_url, "--policy", "edf"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("nowblock serve:")]
    assert lines == [lines[0]] and lines[0].startswith(f"nowblock serve: --db {_pg_location(postgres_url)}: "), r.stderr
    assert "is not nowblock's" in lines[0]
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ["unknown database", "unreachable port", "missing schema"])
def test_serve_names_the_database_it_cannot_use_with_one_line_and_status_2(tmp_path, postgres_dsn, case):
    # The tester's b4: "cannot listen on 127.0.0.1:PORT: cannot connect to PostgreSQL ..." (it is
    # the database, not the port), and a search_path naming no schema was "an internal error".
    from urllib.parse import urlsplit, urlunsplit

    from nowblock.testing import make_test_site

    site = tmp_path / "site.toml"
    make_test_site(1).to_toml(site)
    u = urlsplit(postgres_dsn)
    url, want = {
        "unknown database": (urlunsplit(u._replace(path="/nowblock_no_such_db")), "cannot connect to PostgreSQL"),
        "unreachable port": (urlunsplit(u._replace(netloc=u.netloc.rsplit(":", 1)[0] + ":1")),
                             "cannot connect to PostgreSQL"),
        "missing schema": (postgres_dsn + ("&" if u.query else "?") + "options=-csearch_path%3Dnbtest_no_such_schema",
                           "no schema to create tables in"),
    }[case]
    r = subprocess.run([sys.executable, "-m", "nowblock.cli", "serve", "--site", str(site), "--port", "0",
                        "--db", url, "--policy", "edf"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("nowblock serve:")]
    assert lines == [lines[0]] and lines[0].startswith(f"nowblock serve: --db {want}"), r.stderr
    assert "listen" not in lines[0] and "internal error" not in r.stderr and "Traceback" not in r.stderr


# ---- still opened ---------------------------------------------------------------------------------
def test_an_empty_file_and_extra_tables_are_fine(tmp_path):
    db = tmp_path / "empty.sqlite"
    db.touch()
    s = open_store(db)
    assert s.schema_version() == s.latest_schema_version
    s._write([("CREATE TABLE my_notes (note TEXT)", {}), ("ALTER TABLE stations ADD COLUMN colour TEXT", {})])
    s.close()
    s = open_store(db)  # an operator's own table or column is left alone
    assert s.schema_version() == s.latest_schema_version
    s.close()
    s = open_store(tmp_path / "new" / "folder" / "nb.sqlite")
    s.close()


# ---- the CLI: one line, the path, exit status 2 ----------------------------------------------
@pytest.mark.parametrize("kind", ["text", "dir", "foreign"])
def test_serve_refuses_a_bad_db_with_one_line_and_status_2(tmp_path, kind):
    from nowblock.testing import make_test_site

    site = tmp_path / "site.toml"
    make_test_site(1).to_toml(site)
    db = tmp_path / "bad.sqlite"
    if kind == "text":
        db.write_text("hello\n")
    elif kind == "dir":
        db.mkdir()
    else:
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE customers (id INTEGER)")
        con.commit()
        con.close()
    r = subprocess.run([sys.executable, "-m", "nowblock.cli", "serve", "--site", str(site), "--port", "0",
                        "--db", str(db), "--policy", "edf"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("nowblock serve:")]
    assert lines == [lines[0]] and lines[0].startswith(f"nowblock serve: --db {db}: "), r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


# ---- the recorder: vendor, last_seen ------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 17, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_recorder_keeps_vendor_and_moves_last_seen_with_meter_values(tmp_path, version):
    from nowblock.ocpp.state import LiveState
    from nowblock.testing import make_test_site

    clock = _Clock()
    state = LiveState(make_test_site(1), clock=clock)
    store = open_store(tmp_path / "nb.sqlite")
    attach_store(state, store)
    state.on_connect("CP1", version)
    # What the 1.6 and 2.0.1 BootNotification handlers hand to the state (ocpp/v16.py, v201.py).
    state.on_boot("CP1", vendor="Interop", model="Box", firmware_version="1.0")
    state.on_start("CP1", 1, "42", start=clock.now, meter_start_wh=0.0)
    for minutes in (1, 2, 3):
        clock.now += timedelta(minutes=1)
        state.on_meter("CP1", 1, "42", {"energy_wh": 100.0 * minutes}, clock.now)
    st = store.stations().set_index("station_id").loc["CP1"]
    assert st["vendor"] == "Interop" and st["model"] == "Box"
    assert st["last_seen"] == pd.Timestamp(clock.now)  # not the boot time
    clock.now += timedelta(minutes=1)
    state.on_stop("CP1", "42", stop=clock.now, meter_stop_wh=400.0)
    assert store.stations()["last_seen"].iloc[0] == pd.Timestamp(clock.now)
    store.close()


def test_heartbeats_move_last_seen_at_most_every_30_s(tmp_path):
    """A station that only sends heartbeats is seen alive in the store, without a write a heartbeat."""
    from nowblock.ocpp.state import LiveState
    from nowblock.testing import make_test_site

    clock = _Clock()
    state = LiveState(make_test_site(1), clock=clock)
    store = open_store(tmp_path / "nb.sqlite")
    attach_store(state, store)
    writes = []
    upsert = store.upsert_station
    store.upsert_station = lambda *a, **k: (writes.append(k["time"]), upsert(*a, **k))[1]
    state.on_connect("CP1", "1.6")
    state.on_boot("CP1", vendor="Interop", model="Box")
    booted, n_boot = clock.now, len(writes)
    for _ in range(60):  # ten minutes of heartbeats every 10 s (what the 1.6 and 2.0.1 handlers do)
        clock.now += timedelta(seconds=10)
        state.touch("CP1")
        last_seen = store.stations()["last_seen"].iloc[0]
        assert pd.Timestamp(clock.now) - last_seen < pd.Timedelta(seconds=30), (clock.now, last_seen)
    assert store.stations()["last_seen"].iloc[0] > pd.Timestamp(booted)
    assert len(writes) - n_boot <= 600 // 30, writes  # one write in 30 s, not one a heartbeat
    gaps = pd.Series(writes[n_boot:]).diff().dropna()
    assert (gaps >= timedelta(seconds=30)).all(), gaps
    store.close()


def test_seen_moves_last_seen_only_forward_and_alone(store_url):
    s = open_store(store_url)  # a SQLite file, then a PostgreSQL schema (tests/conftest.py)
    s.upsert_station("CP1", time=T0)
    s.start_transaction("CP1", 1, time=T0)
    later = T0 + pd.Timedelta(minutes=5)
    assert s.record_meter_values("CP1", 1, [{"time": T0, "energy_wh": 5.0}], seen=later) == 1
    assert s.record_meter_values("CP1", 1, [{"time": T0, "energy_wh": 5.0}], seen=T0) == 0  # repeated, earlier
    assert s.stations()["last_seen"].iloc[0] == later
    with pytest.raises(StoreError):
        s.record_meter_values("CP1", 1, [], seen="not a time")
    s.close()


# ---- serve: SIGTERM records the disconnects before the store closes -------------------------
async def test_sigterm_records_disconnects_before_the_store_closes(tmp_path):
    from nowblock.sim.chargers import SimCharger
    from nowblock.testing import eventually, make_test_site

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    make_test_site(2).to_toml(tmp_path / "site.toml")
    db = tmp_path / "nb.sqlite"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nowblock.cli", "serve", "--site", str(tmp_path / "site.toml"), "--port", str(port),
        "--db", str(db), "--policy", "edf", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path)
    sims = [SimCharger("CP1", f"ws://127.0.0.1:{port}", "1.6"), SimCharger("CP2", f"ws://127.0.0.1:{port}", "2.0.1")]
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 300)
        assert b"serving" in line, line
        for sim in sims:
            sim.start()
        for sim in sims:
            await sim.wait_connected()

        def booted() -> bool:
            con = sqlite3.connect(db)
            try:
                return con.execute("SELECT COUNT(*) FROM stations WHERE vendor IS NOT NULL AND connected").fetchone()[0] == 2
            finally:
                con.close()

        await eventually(booted, timeout_s=10.0)
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        for sim in sims:
            await sim.stop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = (await proc.stderr.read()).decode()
    assert proc.returncode == 0, err[-2000:]
    assert "store is closed" not in err, err[-2000:]
    con = sqlite3.connect(db)
    rows = con.execute("SELECT station_id, vendor, connected FROM stations ORDER BY station_id").fetchall()
    con.close()
    assert rows == [("CP1", "nowblock", 0), ("CP2", "nowblock", 0)], err[-2000:]


# ---- a connection record that failed ------------------------------------------------------------
def _recorded_state(tmp_path, n: int = 2):
    from nowblock.ocpp.state import LiveState
    from nowblock.testing import make_test_site

    clock = _Clock()
    state = LiveState(make_test_site(n), clock=clock)
    path = tmp_path / "nb.sqlite"
    store = open_store(path)
    rec = attach_store(state, store)
    for i in range(1, n + 1):
        state.on_connect(f"CP{i}", "1.6")
        state.on_boot(f"CP{i}", vendor="Interop", model="Box")
    return clock, state, store, rec, path


def _connected(store) -> dict:
    return store.stations().set_index("station_id")["connected"].to_dict()


def test_a_disconnect_the_store_could_not_record_is_written_at_its_next_write(tmp_path):
    """Found by review: a disconnect whose write failed (the database unreachable for a
    moment) left the station connected in the store until it connected again."""
    from nowblock.store import StoreUnavailable

    clock, state, store, rec, _ = _recorded_state(tmp_path)
    clock.now += timedelta(minutes=1)
    state.touch("CP1")
    seen = store.stations().set_index("station_id").loc["CP1", "last_seen"]
    upsert = store.upsert_station

    def down(*a, **k):
        raise StoreUnavailable("database unreachable")

    store.upsert_station = down
    state.on_disconnect("CP1")  # logged, not raised: a closed connection acknowledges nothing
    store.upsert_station = upsert
    assert _connected(store)["CP1"]
    clock.now += timedelta(minutes=1)
    state.on_start("CP2", 1, "7", start=clock.now, meter_start_wh=0.0)  # the store takes writes again
    assert _connected(store) == {"CP1": False, "CP2": True}
    row = store.stations().set_index("station_id").loc["CP1"]
    # Nothing stored is lost: what the boot wrote stays, last_seen does not go back.
    assert row["vendor"] == "Interop" and row["protocol"] is not None and row["last_seen"] == seen
    assert rec.unrecorded == {}


def test_a_lone_station_s_lost_disconnect_is_written_by_the_retry(tmp_path):
    from nowblock.store import StoreUnavailable

    clock, state, store, rec, _ = _recorded_state(tmp_path, n=1)
    upsert = store.upsert_station
    store.upsert_station = lambda *a, **k: (_ for _ in ()).throw(StoreUnavailable("down"))
    state.on_disconnect("CP1")
    assert rec.retry(pd.Timestamp(clock.now)) == 1  # still down: kept
    store.upsert_station = upsert
    assert rec.retry(pd.Timestamp(clock.now) + pd.Timedelta(seconds=5)) == 1  # not before 30 s
    assert _connected(store)["CP1"]
    assert rec.retry(pd.Timestamp(clock.now) + pd.Timedelta(seconds=31)) == 0  # nothing else written
    assert not _connected(store)["CP1"]


def test_a_sqlite_file_locked_past_its_busy_timeout_does_not_swallow_a_disconnect(tmp_path):
    """Found by review: a disconnect written while another writer held the SQLite file past the
    busy timeout raised out of the live state: the controller never heard of it, and the store
    kept the station connected."""
    clock, state, store, rec, path = _recorded_state(tmp_path)
    events = state.subscribe()
    store._con.execute("PRAGMA busy_timeout=100")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        state.on_disconnect("CP1")
    finally:
        other.execute("ROLLBACK")
        other.close()
    kinds = []
    while not events._queue.empty():
        kinds.append(events._queue.get_nowait().kind)
    assert kinds[-1] == "disconnect"
    clock.now += timedelta(minutes=1)
    state.touch("CP2")
    assert _connected(store) == {"CP1": False, "CP2": True}


def test_a_restart_records_the_stations_stored_as_connected_as_disconnected(tmp_path):
    """A crash (or a failed write) lost a disconnect; a process that has just started has no station
    connected, so it says so in the store, keeping everything else."""
    from nowblock.ocpp.state import LiveState
    from nowblock.store import restore_state
    from nowblock.testing import make_test_site

    clock, state, store, rec, path = _recorded_state(tmp_path)
    before = store.stations().set_index("station_id")
    store.close()  # killed: no disconnect recorded
    store = open_store(path)
    fresh = LiveState(make_test_site(2), clock=clock)
    restore_state(fresh, store)
    after = store.stations().set_index("station_id")
    assert not after["connected"].any()
    assert after.drop(columns="connected").equals(before.drop(columns="connected"))
    store.close()


def test_a_connection_record_that_keeps_failing_is_not_tried_on_every_message(tmp_path, caplog):
    """Found by a review: a station whose connection record keeps failing (a row the store
    refuses) was written again, and logged, after every other write of the block."""
    clock, state, store, rec, _ = _recorded_state(tmp_path)
    upsert = store.upsert_station

    def refuse(cp_id, *a, **k):
        if cp_id == "CP1":
            raise RuntimeError("row refused")
        return upsert(cp_id, *a, **k)

    store.upsert_station = refuse
    state.on_disconnect("CP1")
    with caplog.at_level("WARNING", logger="nowblock.store.recorder"):
        for k in range(10):  # ten messages of another station within 20 s
            clock.now += timedelta(seconds=2)
            state.on_start("CP2", 1, f"t{k}", start=clock.now, meter_start_wh=0.0)
    tries = [r for r in caplog.records if "could not record the connection state" in r.getMessage()]
    assert len(tries) == 1 and "CP1" in rec.unrecorded
    store.upsert_station = upsert
    clock.now += timedelta(seconds=31)
    state.on_start("CP2", 1, "t-late", start=clock.now, meter_start_wh=0.0)
    assert rec.unrecorded == {} and not _connected(store)["CP1"]
