"""Store write latency per meter value, SQLite against PostgreSQL, with 500 chargers reporting.

Run on purpose (not part of the default ``pytest``); PostgreSQL needs a server::

    NOWBLOCK_TEST_POSTGRES_DSN=$(bash .ci/postgres.sh) \\
        python -m pytest benchmarks/bench_store.py -p no:cacheprovider -s --benchmark-columns=median,rounds

500 charging stations each run a transaction; in each round every one of them reports one
meter value (energy register, three phase currents, power), written the way the OCPP handlers
write it: one ``record_meter_values`` call with one row, committed before it returns (the
handler acknowledges after). Calls are back to back on one thread, as the event loop makes
them, so this is the store's latency at its highest rate, not at a charger's 10-60 s pace. The
per-write latencies of all rounds give p50 and p99; ``SqliteStore`` runs with its default
``synchronous=FULL`` (a commit survives a power cut) in WAL mode on the local disk;
``PostgresStore`` with ``synchronous_commit=on`` over TCP on 127.0.0.1, a fresh schema.
docs/bench_store.md records the numbers.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pandas as pd
import pytest

from nowblock.store import open_store

N_CHARGERS = 500
ROUNDS = 10
T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store(tmp_path / "bench.sqlite")
        yield s
        s.close()
        return
    dsn = os.environ.get("NOWBLOCK_TEST_POSTGRES_DSN")
    if not dsn:
        pytest.skip("set NOWBLOCK_TEST_POSTGRES_DSN (bash .ci/postgres.sh prints one)")
    import psycopg

    schema = f"nbbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}")
    s = open_store(f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}")
    yield s
    s.close()
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(f"DROP SCHEMA {schema} CASCADE")


def test_meter_value_write_latency(benchmark, store):
    backend = type(store).__name__
    benchmark.group = f"meter value writes, {N_CHARGERS} chargers"
    for i in range(N_CHARGERS):
        store.upsert_station(f"CP{i:04d}", time=T0, protocol="ocpp1.6", connected=True)
        store.start_transaction(f"CP{i:04d}", i + 1, time=T0, connector_id=1, meter_start_wh=0.0)
    latencies: list[float] = []
    k = [0]

    def one_round():
        k[0] += 1
        t = T0 + pd.Timedelta(seconds=10 * k[0])
        for i in range(N_CHARGERS):
            row = {"time": t, "energy_wh": 30.0 * k[0] + i, "current_a": [16.0, 16.0, 15.8], "power_kw": 11.0}
            t_w = time.perf_counter()
            store.record_meter_values(f"CP{i:04d}", i + 1, [row])
            latencies.append(time.perf_counter() - t_w)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    lat_ms = 1000.0 * np.asarray(latencies[N_CHARGERS:])  # the warm-up round is left out
    assert len(store.meter_values()) == N_CHARGERS * (ROUNDS + 1)  # every write is there
    benchmark.extra_info.update(
        backend=backend, writes=int(lat_ms.size), p50_ms=round(float(np.percentile(lat_ms, 50)), 3),
        p99_ms=round(float(np.percentile(lat_ms, 99)), 3), max_ms=round(float(lat_ms.max()), 3),
        writes_per_s=round(1000.0 / float(lat_ms.mean()), 1),
    )
    print(f"\n{backend}: {benchmark.extra_info}")
