"""Fuzzing the central system with a few thousand frames of both versions (the long run: benchmarks/bench_fuzz.py).

The central system runs in its own thread and event loop (real WebSockets on 127.0.0.1, a
real SQLite file); hypothesis drives a synchronous raw station. After the run: every CALL
with a readable id was answered, none with InternalError, nothing of ours logged an error,
a valid Heartbeat still works, and the event loop is alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nowblock.ocpp.server import CentralSystem
from nowblock.store import SqliteStore, attach_store
from nowblock.testing import make_test_site

from .fuzz import FuzzClient, Tally, frames

# hypothesis-jsonschema's regex strategies touch the global random state; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

FRAMES = int(os.environ.get("NOWBLOCK_FUZZ_FRAMES", "1500"))  # per protocol version
BATCH = 10  # frames per hypothesis example (drawing is the cost; the engine's overhead is per example)


class ServerThread:
    """A central system with a SQLite store, served from a background thread."""

    def __init__(self, db) -> None:
        self.db = db
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self) -> None:
        self.store = SqliteStore(self.db, synchronous="NORMAL")
        self.cs = CentralSystem(make_test_site(2), port=0, response_timeout_s=0.5, retries=0, backoff_s=0.01)
        attach_store(self.cs.state, self.store)
        await self.cs.start()
        self.url = f"ws://127.0.0.1:{self.cs.port}"

    def alive(self) -> bool:
        return asyncio.run_coroutine_threadsafe(asyncio.sleep(0, True), self.loop).result(10)

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.cs.stop(), self.loop).result(30)
        self.store.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record) -> None:
        self.records.append(record)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_fuzzed_frames_are_all_answered_and_nothing_breaks(tmp_path, version):
    errors = _Errors()
    nb, lib = logging.getLogger("nowblock"), logging.getLogger("ocpp")
    levels = nb.level, lib.level
    nb.addHandler(errors)
    # Warnings are what fuzzing provokes (and the library logs every refused CALL with a traceback).
    nb.setLevel(logging.ERROR)
    lib.setLevel(logging.CRITICAL)
    tally = Tally()
    try:
        with ServerThread(tmp_path / "nb.sqlite") as server:
            cp_id = "CP1" if version == "1.6" else "CP2"
            client = FuzzClient(server.url, cp_id, version, tally)

            @settings(max_examples=FRAMES // BATCH, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(st.lists(frames(version), min_size=BATCH, max_size=BATCH))
            def fire(batch):
                for frame in batch:
                    client.send(frame)
                if tally.frames % 100 < BATCH:
                    assert client.heartbeat()

            fire()
            assert client.heartbeat(), "a valid Heartbeat after the fuzz run is not answered"
            assert server.alive()
            client.close()
    finally:
        nb.removeHandler(errors)
        nb.setLevel(levels[0])
        lib.setLevel(levels[1])
    assert tally.frames >= FRAMES * 0.9
    assert tally.unanswered == [], tally.unanswered[:5]
    assert tally.internal_errors == [], tally.internal_errors[:5]
    assert [r.getMessage() for r in errors.records] == []
    assert tally.by_answer.get("CALLRESULT", 0) > 0 and tally.reconnects == 0
