"""A real central system (``ocpp`` library over WebSockets on 127.0.0.1) writing to a real SQLite file."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest

from nowblock.ocpp.server import CentralSystem
from nowblock.store import SqliteStore, attach_store, restore_state
from nowblock.testing import make_test_site


@asynccontextmanager
async def served(path, n: int = 2, *, grid_a: float = 40.0, **kw):
    """A started central system for CP1..CPn with the store ``path`` attached; yields (cs, store)."""
    site = make_test_site(n, grid_a=grid_a)
    kw = {"port": 0, "backoff_s": 0.01, "response_timeout_s": 1.0, "retries": 1, **kw}
    cs = CentralSystem(site, **kw)
    store = SqliteStore(path, synchronous="NORMAL")
    restore_state(cs.state, store)
    attach_store(cs.state, store)
    await cs.start()
    try:
        yield cs, store
    finally:
        await cs.stop()
        store.close()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "nb.sqlite"
