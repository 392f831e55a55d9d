"""Tests for nowblock.store, each on a real SQLite file and on a real PostgreSQL server.

The ``store_url`` fixture (tests/conftest.py) runs every backend-neutral test twice: on a
SQLite file and in a fresh schema of a PostgreSQL server (reopen, restart of a killed
process, concurrent reader and writer, schema migrations).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from nowblock.block.sessions import validate_sessions
from nowblock.store import SqliteStore, Store, StoreError, StoreUnavailable, open_store
from nowblock.store import postgres as pg_backend
from nowblock.store import sqlite as sqlite_backend

T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")


def _minutes(m: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=m)


@pytest.fixture
def db(store_url):
    """The store's location: a SQLite file path, then a PostgreSQL URL (see conftest)."""
    return store_url


def _count(store, table: str) -> int:
    return int(store._read(f"SELECT COUNT(*) AS n FROM {table}")["n"].iloc[0])


def test_open_store_file_is_wal_and_implements_protocol(tmp_path):
    db = tmp_path / "nowblock.sqlite"
    s = open_store(db)
    assert isinstance(s, Store)
    s.upsert_station("CP01", time=T0, protocol="ocpp1.6", connected=True)
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"
    s.close()
    assert isinstance(open_store(f"sqlite:///{db}"), SqliteStore)
    with pytest.raises(StoreError):
        open_store("ftp://x/y")


def test_postgres_url_opens_a_durable_postgres_store(postgres_url):
    s = open_store(postgres_url)
    assert isinstance(s, Store) and isinstance(s, pg_backend.PostgresStore)
    # Durability is set per session, whatever the server's default.
    cols, rows = s._query("SHOW synchronous_commit", {})
    assert rows[0][0] == "on"
    s.upsert_station("CP01", time=T0, protocol="ocpp1.6", connected=True)
    # Native types, so other tools can query the tables.
    cols, rows = s._query("SELECT pg_typeof(last_seen)::text, pg_typeof(connected)::text FROM stations", {})
    assert rows[0] == ("timestamp with time zone", "boolean")
    s.close()


def test_unreachable_postgres_is_unavailable_and_hides_the_password():
    with pytest.raises(StoreUnavailable) as err:
        open_store("postgresql://nb:s3cret@127.0.0.1:1/nowblock", connect_timeout_s=2)
    assert "s3cret" not in str(err.value)
    assert not isinstance(err.value, StoreError)  # the recorder must not swallow it as bad input


def test_postgres_connection_lost_raises_then_reconnects(postgres_url, postgres_dsn):
    import psycopg

    s = open_store(postgres_url)
    s.start_transaction("CP01", 1, time=T0, meter_start_wh=0.0)
    pid = s._con.info.backend_pid
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:  # the server drops the session
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreUnavailable):
        s.record_meter_values("CP01", 1, [{"time": _minutes(1), "energy_wh": 100.0}])
    # The charger retries its message; the store has connected again and stores it.
    assert s.record_meter_values("CP01", 1, [{"time": _minutes(1), "energy_wh": 100.0}]) == 1
    assert s.load_open_transactions()["energy_delivered_kwh"].iloc[0] == pytest.approx(0.1)
    s.close()


def _lock_tables(url: str, *tables: str):
    """A second connection holding ``tables`` locked (a stuck migration, backup or vacuum); close it to release."""
    import psycopg

    con = psycopg.connect(url)
    con.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
    return con


def _timed(fn) -> tuple[float, BaseException | None]:
    """[s] How long ``fn()`` took, and what it raised (None if nothing)."""
    t = time.monotonic()
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - returned for the test to look at
        return time.monotonic() - t, exc
    return time.monotonic() - t, None


def test_postgres_that_does_not_answer_fails_within_a_deadline_then_fast(postgres_url):
    # The tester's b7: nowblock's tables locked 30 s froze every handler for the server's 10 s
    # statement_timeout, call after call. Now a write gives up after 2 s, the control loop's
    # records after 1 s, and calls in between fail at once (the store is known unavailable).
    s = open_store(postgres_url)
    s.retry_after_s = 2.0  # [s] calls fail at once this long after one timed out (5 s by default)
    s.upsert_station("CP01", time=T0)
    lock = _lock_tables(postgres_url, "stations", "profiles")
    try:
        took, err = _timed(lambda: s.upsert_station("CP01", time=_minutes(1)))
        assert isinstance(err, StoreUnavailable) and 1.5 < took < 3.5, (took, err)
        assert "did not answer within 2 s" in str(err)
        took, err = _timed(lambda: s.upsert_station("CP01", time=_minutes(1)))
        assert isinstance(err, StoreUnavailable) and took < 0.2, (took, err)  # fails fast: no second wait
        assert "PostgreSQL unavailable" in str(err)
        since, why = s.unavailable
        assert "did not answer" in why
        time.sleep(2.1)  # then one call tries again: a record of the control loop waits 1 s at most
        took, err = _timed(lambda: s.record_profile("CP01", time=T0, purpose="TxProfile", limit_a=16.0,
                                                    status="TxProfile:Accepted"))
        assert isinstance(err, StoreUnavailable) and 0.8 < took < 2.0, (took, err)
        assert s.unavailable[0] == since  # unavailable since the first failure
    finally:
        lock.close()
    time.sleep(2.1)
    s.upsert_station("CP01", time=_minutes(2))  # the server answers again: stored, available
    assert s.unavailable is None
    assert s.stations()["last_seen"].iloc[0] == _minutes(2)
    s.close()


def test_postgres_stopped_server_fails_within_a_deadline(postgres_url):
    # The tester's b8: the server process stopped (a network black hole) never fires its own
    # statement_timeout; the client's deadline must end the call all the same.
    import os
    import signal

    s = open_store(postgres_url)
    s.upsert_station("CP01", time=T0)
    pid = s._con.info.backend_pid
    try:
        os.kill(pid, signal.SIGSTOP)
    except (PermissionError, ProcessLookupError):
        s.close()
        pytest.skip("cannot stop the PostgreSQL server process from here (another user, or another machine)")
    resume = threading.Timer(8.0, os.kill, (pid, signal.SIGCONT))  # whatever the store does, in 8 s
    resume.start()
    try:
        took, err = _timed(lambda: s.upsert_station("CP01", time=_minutes(1)))
    finally:
        resume.cancel()
        os.kill(pid, signal.SIGCONT)
    assert isinstance(err, StoreUnavailable) and took < 3.5, (took, err)
    time.sleep(s.retry_after_s + 0.1)
    s.upsert_station("CP01", time=_minutes(2))  # a new connection
    assert s._con.info.backend_pid != pid and s.unavailable is None
    s.close()


def test_postgres_deadlines_are_kept_by_one_thread_per_store(postgres_url, monkeypatch):
    # A timer thread per call cost 0.1-0.3 ms on every call of the control loop. One watchdog
    # thread per store keeps the deadlines now: calls start no thread, and a deadline still cuts
    # a hung call, also a 1 s record armed right after a 2 s write (it must wake the watchdog).
    s = open_store(postgres_url)
    s.retry_after_s = 0.5
    watchdogs = [t for t in threading.enumerate() if t.name.startswith("nowblock-pg-watchdog")
                 and t.is_alive()]
    starts = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (starts.append(self.name), start(self))[1])
    for i in range(100):
        s.upsert_station("CP01", time=_minutes(i))
        s.record_profile("CP01", time=_minutes(i), purpose="TxProfile", limit_a=16.0, status="Accepted")
        s.stations()
    assert starts == []
    lock = _lock_tables(postgres_url, "profiles")
    try:
        s.upsert_station("CP01", time=_minutes(200))
        took, err = _timed(lambda: s.record_profile("CP01", time=T0, purpose="TxProfile", limit_a=16.0,
                                                    status="Accepted"))
        assert isinstance(err, StoreUnavailable) and 0.8 < took < 1.6, (took, err)
        assert "did not answer within 1 s" in str(err)
    finally:
        lock.close()
    time.sleep(0.6)
    s.upsert_station("CP01", time=_minutes(201))  # reconnected, and kept by the same thread
    assert starts == [] and s.unavailable is None
    mine = [t for t in threading.enumerate() if t.name == f"nowblock-pg-watchdog-{id(s):x}"]
    assert len(mine) == 1 and mine[0] in watchdogs
    s.close()
    assert not mine[0].is_alive()  # stopped on close


def test_the_watchdog_expires_each_armed_call_once_and_survives_a_failing_cut(caplog):
    # No server needed: the store's watchdog thread alone. A call that ends in time is not cut; a
    # deadline earlier than the one the thread sleeps towards wakes it; a cut that raises is logged
    # and the next deadline is still kept (a dead watchdog would keep none).
    got = []

    class Owner:
        def expire(self, call_id):
            got.append((call_id, time.monotonic()))
            if call_id == 1:
                raise RuntimeError("cut failed")

    owner = Owner()
    wd = pg_backend._Watchdog(owner.expire, name="test-watchdog")
    t0 = time.monotonic()
    wd.arm(1, 0.2)
    time.sleep(0.4)
    wd.arm(2, 2.0)  # the thread now sleeps towards t0 + 2.4 s
    wd.disarm()
    wd.arm(3, 0.1)  # due at t0 + 0.5 s: must wake it
    time.sleep(0.5)
    assert [c for c, _ in got] == [1, 3], got
    assert 0.15 < got[0][1] - t0 < 0.35 and 0.45 < got[1][1] - t0 < 0.8, got
    assert "cutting call 1 failed" in caplog.text and wd.alive
    wd.stop()
    assert not wd.alive


def test_a_store_outage_refuses_messages_but_not_connections_or_dispatch_records(postgres_url, postgres_dsn):
    # During an outage a charger's connection (it acknowledges nothing) and the record of a limit
    # it accepted (it has answered already) must not fail: a failed connect kept the charger out
    # of control, a failed dispatch record booked its limit as not sent. A message that must be
    # stored is still refused (the charger sends it again).
    import psycopg

    from nowblock.ocpp.state import DispatchRecord, LiveState
    from nowblock.store import attach_store
    from nowblock.testing import make_test_site

    site = make_test_site(1)
    cp = site.charge_point_ids[0]
    state = LiveState(site)
    s = open_store(postgres_url)
    attach_store(state, s)
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:  # the database goes away
        admin.execute("SELECT pg_terminate_backend(%s)", (s._con.info.backend_pid,))
    s.dsn = s.dsn.replace(f":{s._con.info.port}/", ":1/")  # and nothing listens there
    state.on_connect(cp, "2.0.1")
    assert state.stations[cp].connected
    state.on_dispatch(cp, 1, DispatchRecord(pd.Timestamp.now(tz="UTC").to_pydatetime(), 16.0, "TxProfile", 16.0, []))
    assert state.stations[cp].dispatch[1].accepted_a == 16.0
    with pytest.raises(StoreUnavailable):
        state.on_status(cp, 1, "Preparing")
    state.on_disconnect(cp)
    s.close()


def test_transaction_life_cycle_and_reopen(db):
    s = open_store(db)
    s.upsert_station("CP01", time=T0, protocol="ocpp2.0.1", vendor="V", model="M", connected=True)
    sid = s.start_transaction("CP01", "tx-1", time=T0, connector_id=1, id_tag="TAG", meter_start_wh=1000.0)
    s.record_meter_values("CP01", "tx-1", [
        {"time": _minutes(1), "energy_wh": 1200.0, "current_a": [16.0, 16.0, 15.5], "power_kw": 11.0},
        {"time": _minutes(2), "energy_wh": 1500.0, "current_a": 16.0},
    ])
    s.update_needs("CP01", "tx-1", departure=_minutes(240), energy_requested_kwh=20.0, known=True)
    s.save_plan(T0, pd.DataFrame({sid: [16.0, 10.0]}, index=[T0, _minutes(15)]), policy="milp", status="optimal")
    s.close()

    s = open_store(db)  # a restart of serve: everything acknowledged is there
    open_tx = s.load_open_transactions()
    assert list(open_tx.index) == [sid]
    row = open_tx.loc[sid]
    assert row["charge_point_id"] == "CP01" and row["transaction_id"] == "tx-1"
    assert row["energy_delivered_kwh"] == pytest.approx(0.5)
    assert row["energy_requested_kwh"] == pytest.approx(20.0)
    assert row["departure"] == _minutes(240) and bool(row["needs_known"])
    assert row["arrival"] == T0 and row["arrival"].tzinfo is not None
    t, plan = s.latest_plan()
    assert t == T0 and list(plan.columns) == [sid] and plan[sid].tolist() == [16.0, 10.0]
    assert plan.index[1] == _minutes(15)
    mv = s.meter_values("CP01", "tx-1")
    assert len(mv) == 2 and mv["current_l3_a"].iloc[0] == 15.5 and np.isnan(mv["current_l2_a"].iloc[1])

    s.stop_transaction("CP01", "tx-1", time=_minutes(90), meter_stop_wh=9000.0, reason="EVDisconnected")
    assert s.load_open_transactions().empty
    hist = s.sessions_history()
    assert len(hist) == 1
    assert hist["energy_kwh"].iloc[0] == pytest.approx(8.0)
    assert hist["id_tag"].iloc[0] == "TAG"
    # The history is a valid sessions frame for the needs forecaster.
    validate_sessions(hist)
    assert len(s.sessions_history(since=_minutes(100))) == 0
    s.close()


def test_a_meter_row_keeps_the_stations_stamp_and_a_late_one_moves_no_last_register(db):
    """Meter rows are dated in the central system's clock, the station's own stamp kept beside
    (m11; schema version 3), and the last register is the last row recorded not marked late, in
    the order recorded (a station whose clock stepped back kept the register of before the step)."""
    s = open_store(db)
    ahead = pd.Timedelta(hours=2)
    s.start_transaction("CP01", 7, time=T0, meter_start_wh=1000.0)
    s.record_meter_values("CP01", 7, [{"time": _minutes(2), "station_time": _minutes(2) + ahead, "energy_wh": 2000.0}])
    # Dated earlier in ours than the last, and applied (the live state's judgment): the last register.
    s.record_meter_values("CP01", 7, [{"time": _minutes(1.5), "station_time": _minutes(1.5) + ahead,
                                       "energy_wh": 2500.0}])
    tx = s.load_open_transactions().iloc[0]
    assert tx["meter_last_wh"] == 2500.0 and tx["last_meter_time"] == _minutes(2)
    # Not applied (stamped before the last by both clocks): stored, moves neither total.
    s.record_meter_values("CP01", 7, [{"time": _minutes(3), "station_time": _minutes(1) + ahead,
                                       "energy_wh": 1500.0, "late": True}])
    tx = s.load_open_transactions().iloc[0]
    assert tx["meter_last_wh"] == 2500.0 and tx["energy_delivered_kwh"] == pytest.approx(1.5)
    mv = s.meter_values("CP01", 7)
    assert list(mv["energy_wh"]) == [2500.0, 2000.0, 1500.0]  # by our clock
    assert list(mv["station_time"] - mv["time"]) == [ahead, ahead, ahead - pd.Timedelta(minutes=2)]
    s.close()


def test_duplicates_and_bad_input_lose_nothing(db):
    s = open_store(db)
    s.start_transaction("CP01", 7, time=T0, meter_start_wh=0.0)
    s.record_meter_values("CP01", 7, [{"time": _minutes(5), "energy_wh": 2000.0}])
    # The charger repeats its start (e.g. after a reconnect): energy so far is kept.
    s.start_transaction("CP01", 7, time=_minutes(6), meter_start_wh=2000.0)
    # The same sample twice is ignored, not doubled or overwritten.
    assert s.record_meter_values("CP01", 7, [{"time": _minutes(5), "energy_wh": 9999.0}]) == 0
    # A register that jumps back (a meter reset) does not erase delivered energy.
    s.record_meter_values("CP01", 7, [{"time": _minutes(7), "energy_wh": 100.0}])
    tx = s.load_open_transactions().iloc[0]
    assert tx["energy_delivered_kwh"] == pytest.approx(2.0)
    assert tx["arrival"] == T0
    # A batch with one bad row is refused whole, before anything is written.
    n_before = len(s.meter_values())
    with pytest.raises(StoreError, match="row 1"):
        s.record_meter_values("CP01", 7, [{"time": _minutes(8), "energy_wh": 2100.0},
                                          {"time": _minutes(9), "energy_wh": float("inf")}])
    with pytest.raises(StoreError, match="timezone"):
        s.record_meter_values("CP01", 7, [{"time": pd.Timestamp("2026-03-02 18:00"), "energy_wh": 1.0}])
    with pytest.raises(StoreError):
        s.start_transaction("CP02", 1, time=T0, meter_start_wh=-5)
    with pytest.raises(StoreError):
        s.update_needs("CP09", "nope", energy_requested_kwh=3.0)
    assert len(s.meter_values()) == n_before
    # Estimated needs never overwrite needs the car reported.
    s.update_needs("CP01", 7, departure=_minutes(300), energy_requested_kwh=30.0, known=True)
    s.update_needs("CP01", 7, departure=_minutes(60), energy_requested_kwh=5.0, known=False)
    tx = s.load_open_transactions().iloc[0]
    assert tx["energy_requested_kwh"] == 30.0 and bool(tx["needs_known"])
    # Stop twice: the first stop wins; a stop for an unknown transaction is still recorded.
    s.stop_transaction("CP01", 7, time=_minutes(120), meter_stop_wh=5000.0)
    s.stop_transaction("CP01", 7, time=_minutes(130), meter_stop_wh=6000.0)
    s.stop_transaction("CP03", "ghost", time=_minutes(10))
    hist = s.sessions_history()
    assert list(hist["session_id"]) == ["CP01:7"]
    assert s.max_numeric_transaction_id() == 7  # "ghost" is not a number
    assert hist["departure"].iloc[0] == _minutes(120) and hist["energy_kwh"].iloc[0] == pytest.approx(5.0)
    s.close()


def test_profiles_and_station_log(db):
    s = open_store(db)
    s.upsert_station("CP01", time=T0, protocol="ocpp1.6", connected=True)
    s.upsert_station("CP01", time=_minutes(3), connected=False)
    st = s.stations().iloc[0]
    assert st["protocol"] == "ocpp1.6" and not st["connected"] and st["last_seen"] == _minutes(3)
    s.record_profile("CP01", time=T0, purpose="TxDefaultProfile", limit_a=10.0, status="Accepted",
                     accepted_limit_a=10.0, valid_to=None)
    s.record_profile("CP01", time=_minutes(1), purpose="TxProfile", limit_a=16.0, status="Rejected",
                     transaction_id=3, accepted_limit_a=10.0, valid_to=_minutes(6))
    p = s.profiles("CP01")
    assert p["status"].tolist() == ["Accepted", "Rejected"]
    assert p["accepted_limit_a"].tolist() == [10.0, 10.0]
    assert p["valid_to"].iloc[1] == _minutes(6)


def test_plans_are_pruned(db):
    s = open_store(db, plans_kept=3)
    for k in range(10):
        s.save_plan(_minutes(k), pd.DataFrame({"a": [float(k)]}, index=[_minutes(k)]))
    assert _count(s, "plans") <= 4
    assert s.latest_plan()[1]["a"].iloc[0] == 9.0


def test_concurrent_writer_and_reader(db):
    """A reader on its own connection sees only committed rows while a writer thread runs."""
    s = open_store(db)
    s.start_transaction("CP01", 1, time=T0, meter_start_wh=0.0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        try:
            for k in range(200):
                s.record_meter_values("CP01", 1, [{"time": _minutes(k), "energy_wh": 100.0 * k}])
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            stop.set()

    th = threading.Thread(target=writer)
    th.start()
    reader = open_store(db)
    seen = []
    while not stop.is_set():
        tx = reader.load_open_transactions()
        mv = reader.meter_values()
        # Energy so far is committed together with its sample: never ahead of the samples.
        if len(mv):
            assert tx["energy_delivered_kwh"].iloc[0] <= mv["energy_wh"].max() / 1000.0 + 1e-9
        seen.append(len(mv))
    th.join()
    assert not errors
    assert seen == sorted(seen)
    assert len(reader.meter_values()) == 200
    reader.close()
    s.close()


def test_committed_rows_survive_a_killed_process(db):
    """Writes from a process that is killed (no close, no checkpoint) are all there."""
    code = f"""
import os, pandas as pd
from nowblock.store import open_store
s = open_store({str(db)!r})
t0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")
s.start_transaction("CP01", "a", time=t0, meter_start_wh=0)
for k in range(50):
    s.record_meter_values("CP01", "a", [{{"time": t0 + pd.Timedelta(seconds=k), "energy_wh": 10.0 * k}}])
print("acked", flush=True)
os.kill(os.getpid(), 9)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "acked" in out.stdout
    s = open_store(db)
    assert len(s.meter_values()) == 50
    assert s.load_open_transactions()["energy_delivered_kwh"].iloc[0] == pytest.approx(0.49)
    s.close()


# ---- schema versions and migrations ---------------------------------------------------------------
def _backend(store):
    return sqlite_backend if isinstance(store, SqliteStore) else pg_backend


def test_schema_is_versioned_and_migrated_once(db):
    s = open_store(db)
    assert s.schema_version() == s.latest_schema_version >= 1
    s.start_transaction("CP01", 1, time=T0)
    s.close()
    s = open_store(db)  # reopening applies nothing twice and keeps the data
    assert _count(s, "nowblock_schema") == s.latest_schema_version
    assert len(s.load_open_transactions()) == 1
    s.close()


def test_new_migrations_apply_in_order_and_a_failed_one_changes_nothing(db, monkeypatch):
    s = open_store(db)
    s.upsert_station("CP01", time=T0)
    backend, v1 = _backend(s), s.latest_schema_version
    cls = type(s)
    s.close()
    add_note = (v1 + 1, "stations.note", ("ALTER TABLE stations ADD COLUMN note TEXT",))
    monkeypatch.setattr(cls, "MIGRATIONS", backend.MIGRATIONS + (add_note,))
    s = open_store(db)
    assert s.schema_version() == v1 + 1 and "note" in s.stations().columns
    assert s.stations()["station_id"].tolist() == ["CP01"]
    s.close()
    broken = (v1 + 2, "half a migration", ("ALTER TABLE stations ADD COLUMN extra TEXT",
                                           "INSERT INTO no_such_table VALUES (1)"))
    monkeypatch.setattr(cls, "MIGRATIONS", backend.MIGRATIONS + (add_note, broken))
    with pytest.raises(Exception, match="no_such_table"):
        open_store(db)
    monkeypatch.setattr(cls, "MIGRATIONS", backend.MIGRATIONS + (add_note,))
    s = open_store(db)  # the failed migration left the previous version whole
    assert s.schema_version() == v1 + 1 and "extra" not in s.stations().columns
    s.close()


def test_a_database_from_a_newer_nowblock_is_refused(db):
    s = open_store(db)
    newer = s.latest_schema_version + 5
    s._write([("INSERT INTO nowblock_schema (version, description, applied_at) VALUES (:v, 'future', :t)",
               {"v": newer, "t": "2030-01-01T00:00:00.000000+00:00"})])
    s.close()
    with pytest.raises(StoreError, match=f"schema version {newer}, newer"):
        open_store(db)


def test_a_sqlite_file_from_before_schema_versions_is_adopted(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    for sql in sqlite_backend.MIGRATIONS[0][2]:  # the tables as earlier versions wrote them
        con.execute(sql)
    con.execute("INSERT INTO transactions (session_id, station_id, transaction_id, started_at, energy_kwh) "
                "VALUES ('CP01:5', 'CP01', '5', '2026-03-02T17:00:00.000000+00:00', 2.5)")
    con.commit()
    con.close()
    s = open_store(db)
    # Adopted as version 1 as it is, then migrated to the latest like any version-1 database.
    assert s.schema_version() == s.latest_schema_version >= 2 and s.load_operator_inputs() == []
    tx = s.load_open_transactions()
    assert tx["energy_delivered_kwh"].tolist() == [2.5] and tx["arrival"].iloc[0] == T0
    s.close()


def test_operator_inputs_events_and_bucketed_meter_history(db):
    s = open_store(db)
    t = pd.Timestamp("2026-03-02 17:00", tz="UTC")
    s.save_operator_input("cap", "grid", {"max_current_a": [40.0, 40.0, 40.0], "until": "18:00"}, time=t)
    s.save_operator_input("cap", "grid", {"max_current_a": [32.0, 32.0, 32.0]}, time=t + pd.Timedelta("1min"))
    s.save_operator_input("out_of_service", "CP02", {}, time=t)
    got = {(r["kind"], r["key"]): r["data"] for r in s.load_operator_inputs()}
    assert got == {("cap", "grid"): {"max_current_a": [32.0, 32.0, 32.0]}, ("out_of_service", "CP02"): {}}
    assert s.delete_operator_input("out_of_service", "CP02") and not s.delete_operator_input("out_of_service", "CP02")
    with pytest.raises(StoreError):
        s.save_operator_input("cap", "grid", {"x": float("nan")}, time=t)  # refused, the stored one stays
    assert s.load_operator_inputs()[0]["data"] == {"max_current_a": [32.0, 32.0, 32.0]}
    s.record_event(t, "overload", {"fuse_id": "grid", "phase": "L1", "worst_a": 3.5, "duration_s": 12.0})
    s.record_event(t + pd.Timedelta("5min"), "not_following", {"session_id": "CP01:7"})
    ev = s.events()
    assert ev["kind"].tolist() == ["overload", "not_following"] and ev["data"].iloc[0]["worst_a"] == 3.5
    assert s.events(since=t + pd.Timedelta("1min"))["kind"].tolist() == ["not_following"]
    assert s.events(kind="overload")["time"].tolist() == [t]
    s.start_transaction("CP01", 7, time=t, connector_id=1, meter_start_wh=0.0)
    rows = [{"time": t + pd.Timedelta(seconds=10 * k), "energy_wh": 100.0 * k, "current_a": [float(k), 0.0, 0.0]}
            for k in range(12)]  # two minutes at one sample every 10 s
    s.record_meter_values("CP01", 7, rows)
    raw = s.recent_meter_values(t + pd.Timedelta("30s"))
    assert len(raw) == 9 and raw["time"].iloc[0] == t + pd.Timedelta("30s")
    per_min = s.recent_meter_values(t, t + pd.Timedelta("2min"), bucket_s=60)
    assert per_min["time"].tolist() == [t, t + pd.Timedelta("1min")] and per_min["samples"].tolist() == [6, 6]
    assert per_min["current_l1_a"].tolist() == pytest.approx([2.5, 8.5]) and per_min["energy_wh"].tolist() == [500.0, 1100.0]
    s.close()


def test_postgres_one_slow_read_does_not_refuse_the_writes_after_it(postgres_url):
    """Found by a review: a read cancelled by the server's statement_timeout set the fail-fast
    pause, and every write (charger messages, dispatch records) failed for 5 s after it."""
    from nowblock.store.base import StoreUnavailable
    from nowblock.store.postgres import PostgresStore

    store = PostgresStore(postgres_url, statement_timeout_s=0.5)
    try:
        store.upsert_station("CP1", time=pd.Timestamp.now(tz="UTC"))
        with pytest.raises(StoreUnavailable, match="cancelled a statement"):
            store._query("SELECT pg_sleep(2)", {})
        store.upsert_station("CP1", time=pd.Timestamp.now(tz="UTC"))  # the server answered: no pause
    finally:
        store.close()
