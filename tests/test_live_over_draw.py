"""Cars that draw a little more than their limit, against stations written from the OCPP 1.6
spec (raw frames over 127.0.0.1, a real central system and controller): what they draw over
their limit, within the over-draw tolerance, is planned for, so no fuse phase stays over its
rating."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from interop.station import RawStation, meter_16, now_iso
from test_s35_profiles_fallback import K01Station

from nowblock.control import attach
from nowblock.loop.closed_loop import LoopSettings
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site

OVER_A = 1.5  # within the 2 A over-draw tolerance: the cars stay trusted


class OverDrawingCar:
    """A 3-phase car on connector 1 of a 1.6 station that draws what the station applies plus
    ``OVER_A`` (0 below 6 A), reported every ``every_s`` as MeterValues."""

    def __init__(self, cp_id: str, port: int, every_s: float = 0.3) -> None:
        self.cp_id, self.port, self.every_s = cp_id, port, every_s
        self.station = K01Station("1.6", reject_tx=False)
        self.st: RawStation | None = None
        self.tx = None
        self.wh = 0.0

    def draw_a(self) -> float:
        lim = self.station.applies_a(1, self.tx) if self.tx is not None else None
        return 0.0 if lim is None or lim < 6.0 else float(lim) + OVER_A

    async def start(self) -> None:
        self.st = await RawStation(f"ws://127.0.0.1:{self.port}", self.cp_id, "1.6", answer=self.station).connect()
        await self.st.boot()
        await self.st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                                "timestamp": now_iso()})
        res = await self.st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                                    "timestamp": now_iso()})
        self.tx = res["transactionId"]
        await self.st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging",
                                                "timestamp": now_iso()})

    async def report(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            a = self.draw_a()
            self.wh += a * 3 * 230.0 * self.every_s / 3600.0
            await self.st.ok("MeterValues", meter_16(1, self.tx, amps=[a, a, a], energy_wh=self.wh))
            await asyncio.sleep(self.every_s)


async def _grid_load(tmp_path, period_s: float, seconds: float) -> tuple[list[tuple[float, float]], list]:
    """(s since both cars draw, the 20 A grid's load [A per phase] from what they draw), sampled
    every 0.1 s for ``seconds``, two over-drawing cars under a controller of ``period_s``; and
    the overloads the controller reported (alarms and the ones still open)."""
    site = make_test_site(2, grid_a=20.0, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    ctl = attach(cs, db=str(tmp_path / "block.sqlite"), policy="equal", period_s=period_s, min_replan_s=0.1,
                 solve_timeout_s=1.0, loop=LoopSettings(settle_s=1.0))
    await ctl.start()
    cars = [OverDrawingCar(f"CP{i}", cs.port) for i in (1, 2)]
    stop = asyncio.Event()
    tasks = []
    try:
        for c in cars:
            await c.start()
        tasks = [asyncio.create_task(c.report(stop)) for c in cars]
        await eventually(lambda: all(c.draw_a() > 0 for c in cars), timeout_s=10)
        samples = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            samples.append((time.monotonic() - t0, sum(c.draw_a() for c in cars)))
            await asyncio.sleep(0.1)
        assert all(c.st.schema_errors == [] for c in cars)
        return samples, [a for a in ctl.alarms if a["kind"] == "overload"] + ctl.active_overloads
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in cars:
            if c.st is not None:
                await c.st.close()
        await ctl.stop()
        await cs.stop()


async def test_a_tolerated_over_draw_is_planned_for(tmp_path):
    # An outside test (/tmp/s37/h4 r5, /tmp/s37/m3/r5_*.out): two cars drawing 1.5 A over their
    # limits were never untrusted (tolerance 2 A) and planned at their limits: a 40 A grid at
    # 43 A on every phase for 89 of 100 s. Here: a 20 A grid shared by two such cars, 10 A each
    # planned, 23 A drawn, for as long as they charged.
    samples, _ = await _grid_load(tmp_path, period_s=1.0, seconds=12.0)
    late = [a for t, a in samples if t >= 8.0]
    assert min(a for _, a in samples) > 0  # both cars charged throughout
    assert max(late) <= 20.0 + 1e-6, f"grid at {max(late):.1f} A on its 20 A rating"
    assert min(late) >= 2 * (6.0 + OVER_A)  # both kept charging, not paused to make room


async def test_an_over_draw_seen_in_a_meter_value_wakes_a_step(tmp_path):
    # The same with the period's step 60 s away: the excess, once its reading settled (1 s
    # here, 15 s by default), was reserved only by that step (r5: 43 A on 40 A until it).
    samples, overloads = await _grid_load(tmp_path, period_s=60.0, seconds=10.0)
    late = [a for t, a in samples if t >= 6.0]
    assert max(late) <= 20.0 + 1e-6, f"grid at {max(late):.1f} A on its 20 A rating"
    assert min(late) >= 2 * (6.0 + OVER_A)
    # The 23 A before it is reported: the step that lowered the cars capped their readings
    # at their new limits (a re-sharing) and the overload went unreported (r5: 21 s at 43 A).
    assert {o["phase"] for o in overloads if o["fuse_id"] == "grid"} == {"L1", "L2", "L3"}


def test_the_excess_is_learnt_from_settled_readings_and_kept_through_noise_and_pauses():
    from nowblock.loop.closed_loop import EXCESS_HYSTERESIS_A, next_excess_a

    nan = float("nan")
    lo = np.full(6, 6.0)
    # 0: settled 9.5 A at 8 A; 1: not settled, 17.5 A just after a lowering 16 -> 8 A (the old
    # limit's draw plus 1.5 A); 2: not settled, 16 A after that lowering (no excess shown);
    # 3: paused at 0 A drawing nothing (its 1.5 A kept); 4: untrusted; 5: no reading.
    prev = np.array([0.0, 0.0, 0.0, 1.5, 1.0, 0.0])
    meas = np.array([9.5, 17.5, 16.0, 0.0, 12.0, nan])
    off = np.array([8.0, 8.0, 8.0, 0.0, 8.0, 8.0])
    before = np.array([nan, 16.0, 16.0, 8.0, nan, nan])
    settled = np.array([True, False, False, True, True, True])
    trusted = np.array([True, True, True, True, False, True])
    e = next_excess_a(prev, meas, off, before, lo, settled, trusted)
    assert np.allclose(e, [1.5, 1.5, 0.0, 1.5, 0.0, 0.0])
    # Noise under the hysteresis keeps it; a reading that much lower, or under the limit, lowers it.
    one = dict(before_a=np.array([nan]), min_a=np.array([6.0]), settled=[True], trusted=[True])
    keep = next_excess_a(np.array([1.5]), np.array([9.5 - EXCESS_HYSTERESIS_A / 2]), np.array([8.0]), **one)
    assert np.allclose(keep, [1.5])
    assert np.allclose(next_excess_a(np.array([1.5]), np.array([8.5]), np.array([8.0]), **one), [0.5])
    assert np.allclose(next_excess_a(np.array([0.2]), np.array([7.5]), np.array([8.0]), **one), [0.0])
