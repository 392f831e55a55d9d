"""A new car paused from its start (a full block: its first limit is 0 A) that draws from its
start, and a raise in the same step: the raise waits for it to follow.

Cars here are raw OCPP 1.6 stations (frames over 127.0.0.1, a real central system and
controller); the grid's load is summed from what the cars draw, every 0.1 s. CP2's connector
holds the 0 A idle default, but its car draws 16 A from its start (a station that did not apply
the default before the transaction) and follows its first TxProfile ``FOLLOW_S`` after its
station accepted it; its first reading comes a second after its start. Before this was mended
its first limit of 0 A was no lowering to the dispatch (what its charger held, 0 A, was all that
was known of it), so CP1's raise in the same step went at once: 30 + 16 A on a 40 A grid until
CP2 followed (h2's repro of session 39: 14.5 s at 32 A on a 19 A grid with a car that never
follows, whose settled reading at ``settle_s`` ends it).
"""

from __future__ import annotations

import asyncio
import time

from interop.station import RawStation, now_iso
from test_live_follow_before_raise import LaggingCar, Scripted

from nowblock.ocpp import profiles as pr
from nowblock.testing import central_system, eventually, make_test_site

FOLLOW_S = 3.0  # [s] CP2's car follows its first limit this long after its station accepted it


class StartingCar(LaggingCar):
    """A :class:`LaggingCar` whose car draws ``start_a`` [A] from its start whatever its
    station's idle default, until ``follow_s`` after its first TxProfile; first reading
    ``first_after_s`` [s] after its start."""

    def __init__(self, *args, start_a: float = 16.0, first_after_s: float = 1.0, **kw) -> None:
        super().__init__(*args, **kw)
        self.start_a, self.first_after_s = start_a, first_after_s

    def draw_a(self) -> float:
        if self.tx is None:
            return 0.0
        if not any(p.purpose == pr.TX and str(p.transaction_id) == str(self.tx) for p in self.station.held):
            self.now_a = self.start_a  # no TxProfile taken yet: the idle default ignored
            return self.now_a
        return super().draw_a()

    async def report(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(self.first_after_s)
        await super().report(stop)


async def test_a_raise_waits_for_a_new_car_paused_at_its_first_limit_to_follow():
    # 32 A: the block full, CP2's first limit 0 A (a lowering of nothing its charger was known to
    # let through: its 0 A idle default), CP1 10 -> 30 A in the same step.
    grid_a, first_a = 32.0, 0.0
    site = make_test_site(2, grid_a=grid_a, max_current_a=32.0)
    policy = Scripted({"CP1": 10.0, "CP2": 0.0})
    async with central_system(site, control=policy, control_options={"period_s": 60.0, "min_replan_s": 0.1,
                                                                     "solve_timeout_s": 1.0},
                              response_timeout_s=2.0, backoff_s=0.05, retries=1) as cs:
        ctl = cs.controller
        a = LaggingCar("CP1", cs.port)
        b = StartingCar("CP2", cs.port, follow_s=FOLLOW_S)
        stop = asyncio.Event()
        tasks = []
        try:
            b.st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP2", "1.6", answer=b.station).connect()
            await b.st.boot()
            await b.st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                                 "timestamp": now_iso()})
            await eventually(lambda: b.station.applies_a(1, None) == 0, timeout_s=10)  # its idle default
            await a.start()
            tasks.append(asyncio.create_task(a.report(stop)))
            await eventually(lambda: a.draw_a() == 10.0 and not ctl.loop.reserve_a, timeout_s=20)
            await asyncio.sleep(2 * a.every_s)
            policy.want = {"CP1": 30.0, "CP2": 0.0}  # the block full with CP2 paused
            res = await b.st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                                     "timestamp": now_iso()})
            b.tx = res["transactionId"]
            tasks.append(asyncio.create_task(b.report(stop)))
            samples = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < FOLLOW_S + 4.0:
                samples.append((round(time.monotonic() - t0, 1), a.draw_a(), b.draw_a()))
                await asyncio.sleep(0.1)
            worst = max(samples, key=lambda x: x[1] + x[2])
            assert worst[1] + worst[2] <= grid_a + 1e-6, f"the {grid_a:.0f} A grid at {sum(worst[1:]):.1f} A: {samples}"
            assert b.applies_a() == first_a and samples[-1][2] == first_a, samples
            assert a.applies_a() == 30.0, samples  # CP1's raise went once CP2 followed
            assert a.st.schema_errors == [] and b.st.schema_errors == []
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in (a, b):
                if c.st is not None:
                    await c.st.close()


def test_a_car_not_read_yet_may_draw_its_maximum_until_it_follows():
    import numpy as np
    import pandas as pd

    from nowblock.control.following import may_draw_a

    cars = pd.DataFrame({"measured_current_a": [np.nan, 8.0, np.nan], "max_current_a": [16.0, 16.0, 32.0],
                         "connected": [True, True, False]}, index=["new", "read", "offline"])
    # Not read yet: its maximum; read: its level (levels_a's); an offline car draws nothing here.
    assert may_draw_a(cars, {"read": 9.0, "new": 0.0, "offline": 0.0}) == {"read": 9.0, "new": 16.0, "offline": 0.0}
