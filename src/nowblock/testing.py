"""Helpers for tests and benchmarks: a central system (with a live controller) and simulated
chargers on localhost. Top of the layers: it may use every part of nowblock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from nowblock.ocpp.server import CentralSystem
from nowblock.block.site import Site


def make_test_site(n: int = 2, *, grid_a: float = 40.0, feeder_a: float | None = None, max_current_a: float = 32.0,
               phases: int = 3, passwords: dict[str, str] | None = None) -> Site:
    """A site with ``n`` charging points CP1..CPn under one grid connection of ``grid_a`` [A]
    (behind a feeder of ``feeder_a`` [A] when given); ``passwords`` are hashed into the site."""
    from nowblock.ocpp.auth import hash_password

    fuses = [{"id": "grid", "max_current_a": [grid_a] * 3}]
    parent = "grid"
    if feeder_a is not None:
        fuses.append({"id": "feeder", "parent": "grid", "max_current_a": [feeder_a] * 3})
        parent = "feeder"
    cps = []
    for i in range(1, n + 1):
        cp = {"id": f"CP{i}", "fuse": parent, "max_current_a": max_current_a, "phases": phases}
        if passwords and cp["id"] in passwords:
            # cheap scrypt cost: tests hash and verify many times
            cp["password_hash"] = hash_password(passwords[cp["id"]], n=2**10)
        cps.append(cp)
    return Site.from_dict({"name": "test-block", "fuses": fuses, "charge_points": cps})


@asynccontextmanager
async def central_system(site: Site, *, control: str | None = None, control_options: dict | None = None, **kw):
    """A started :class:`CentralSystem` on 127.0.0.1 with a free port; stopped on exit.

    With ``control`` (a policy name, e.g. "equal") a live :class:`~nowblock.control.Controller`
    runs on it (no store; ``control_options`` go to its constructor, a 2 s period and no
    debounce by default); it is ``cs.controller`` inside the block.
    """
    kw.setdefault("port", 0)
    cs = CentralSystem(site, **kw)
    ctl = None
    if control is not None:
        from nowblock.control import Controller

        opts = {"period_s": 2.0, "min_replan_s": 0.0, **(control_options or {})}
        ctl = Controller(cs, site, control, **opts)
    cs.controller = ctl
    await cs.start()
    if ctl is not None:
        await ctl.start()
    try:
        yield cs
    finally:
        if ctl is not None:
            await ctl.stop()
        await cs.stop()


@asynccontextmanager
async def chargers(cs: CentralSystem, *specs: dict):
    """Started and connected :class:`~nowblock.sim.chargers.SimCharger` s, one per ``spec``
    (keyword arguments, ``cp_id`` and ``version`` included); stopped on exit."""
    from nowblock.sim.chargers import SimCharger

    sims = [SimCharger(url=f"ws://127.0.0.1:{cs.port}", **spec) for spec in specs]
    for s in sims:
        s.start()
    try:
        await asyncio.gather(*(s.wait_connected() for s in sims))
        yield sims
    finally:
        await asyncio.gather(*(s.stop() for s in sims))


async def eventually(pred: Callable[[], object], timeout_s: float = 5.0, every_s: float = 0.02):
    """Poll ``pred()`` until truthy (returned) or raise ``TimeoutError`` after ``timeout_s`` [s]."""
    end = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(every_s)


async def drain_kinds(events, quiet_s: float = 0.2) -> list[str]:
    """Kinds of the events already queued on subscription ``events``, read until none has come
    for ``quiet_s`` [s]."""
    kinds: list[str] = []
    while True:
        try:
            kinds.append((await events.get(timeout=quiet_s)).kind)
        except asyncio.TimeoutError:
            return kinds
