"""A car that ignores its limit, at a station that drops its WebSocket and comes back (raw OCPP
frames over 127.0.0.1, a real central system and controller; the cars' draws are the ground
truth). An outside test of session 38 (a DSO protection engineer's raw-frame stations):

* F2: after a reconnect storm a car known to ignore its limit (held at 0 A, its only limit ever
  sent) was trusted again and the others raised to the full rating: 35 A on a 19 A grid for
  33.5 s. The controller forgot the limits of a station that dropped; the one sent again on its
  return was booked as a new change, and until a reading settled after it the car was judged
  against the limit before it, unknown, so against its maximum (16 A drawn: not over).
* F3: the escalation clock of such a car restarted with every reconnect (its session, offline,
  was not planned and was forgotten): with drops of 2 s at 40, 80, 120 s no station maximum in
  150 s (82.2 s without drops, grace 60 s).
"""

from __future__ import annotations

import asyncio
import time

import pandas as pd

from interop.station import RawStation, now_iso
from test_live_fallback_default import K01Station

from nowblock.control import attach
from nowblock.control.dispatch import Escalation
from nowblock.loop.closed_loop import LoopSettings
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site

GRID_A = 19.0  # one car at 16 A fits, two do not


class Car:
    """A station with one three-phase car of 6..16 A on connector 1: it draws what the station
    applies (0 A below 6 A, 16 A with no limit), or 16 A whatever it is sent (``ignores``);
    a reading every ``every_s``. It can drop its WebSocket and come back without a reboot
    (its profiles kept, as a station that only lost its network)."""

    def __init__(self, cp_id: str, port: int, version: str = "1.6", *, ignores: bool = False, every_s: float = 0.3):
        self.cp_id, self.port, self.version, self.ignores, self.every_s = cp_id, port, version, ignores, every_s
        self.station = K01Station(version, reject_tx=False, k01=False)
        self.st: RawStation | None = None
        self.tx = None
        self.seq = 0
        self.wh = 0.0
        self.up = False
        self.lock = asyncio.Lock()

    @property
    def sid(self) -> str:
        return f"{self.cp_id}:{self.tx}"

    def draw_a(self) -> float:
        if self.tx is None:
            return 0.0
        lim = self.station.applies_a(1, self.tx)
        if self.ignores or lim is None:
            return 16.0
        return 0.0 if lim < 6.0 else min(float(lim), 16.0)

    async def _connect(self) -> None:
        self.st = await RawStation(f"ws://127.0.0.1:{self.port}", self.cp_id, self.version,
                                   answer=self.station).connect()
        self.up = True

    async def plug(self) -> None:
        await self._connect()
        await self.st.boot()
        await self._status("Available")  # stamped: its clock is known, its idle connector gets its default

    async def start(self) -> None:
        await self._status("Preparing")
        self.tx = await self.st.start_tx(tx_id=f"T-{self.cp_id}")
        await self._status("Charging")

    async def _status(self, status: str) -> None:
        if self.version == "1.6":
            await self.st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": status,
                                                    "timestamp": now_iso()})
        else:
            await self.st.ok("StatusNotification", {"timestamp": now_iso(), "evseId": 1, "connectorId": 1,
                                                    "connectorStatus": "Available" if status == "Available"
                                                    else "Occupied"})

    async def report(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with self.lock:
                if self.up:
                    a = self.draw_a()
                    self.wh += a * 3 * 230.0 * self.every_s / 3600.0
                    self.seq += 1
                    await self.st.reading(self.tx, self.seq, amps=[a] * 3, energy_wh=self.wh)
            await asyncio.sleep(self.every_s)

    async def drop(self) -> None:
        async with self.lock:
            self.up = False
            await self.st.close()

    async def back(self) -> None:
        async with self.lock:
            await self._connect()  # no BootNotification: it did not reboot
            await self._status("Charging")

    def station_max(self) -> list:
        return [p for p in self.station.held if p.purpose in pr.MAX_PURPOSES]


async def _block(tmp_path, version: str, *, settle_s: float, grace_s: float, period_s: float):
    site = make_test_site(2, grid_a=GRID_A, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    # EDF: the first car takes its 16 A, the second is left 0 A (its minimum does not fit),
    # the only limit it is ever sent.
    ctl = attach(cs, db=str(tmp_path / "nb.sqlite"), policy="edf", period_s=period_s, min_replan_s=0.1,
                 solve_timeout_s=1.0, loop=LoopSettings(settle_s=settle_s, stale_after_s=10.0),
                 escalation=Escalation(backoff_s=0.5, max_backoff_s=2.0, grace_s=grace_s, alarm_s=10 * grace_s))
    await ctl.start()
    return cs, ctl, [Car("CP1", cs.port, version), Car("CP2", cs.port, version, ignores=True)]


async def _down(cs, ctl, car: Car) -> None:
    """Drop ``car``'s connection until a step held it as an offline car's, then bring it back."""
    await car.drop()
    await eventually(lambda: not cs.state.station(car.cp_id).connected)
    n = len(ctl.history)
    await eventually(lambda: len(ctl.history) > n and ctl.history[-1].context.untrusted.get(car.sid) == "offline",
                     timeout_s=10)
    await car.back()


async def test_a_car_ignoring_its_only_limit_of_0_a_stays_untrusted_across_a_reconnect(tmp_path):
    # F2. Steps every 0.5 s, readings settle 2 s after a limit: the steps between the limit
    # re-sent on its return and a settled reading trusted it, and CP1 was raised to 16 A: 32 A.
    cs, ctl, cars = await _block(tmp_path, "1.6", settle_s=2.0, grace_s=60.0, period_s=0.5)
    good, bad = cars
    stop = asyncio.Event()
    tasks = []
    try:
        for c in cars:
            await c.plug()
        await good.start()
        tasks.append(asyncio.create_task(good.report(stop)))
        await eventually(lambda: good.draw_a() == 16.0, timeout_s=10)
        await bad.start()
        tasks.append(asyncio.create_task(bad.report(stop)))
        # It draws 16 A at 0 A: untrusted, and CP1 makes room (16 + 16 A do not fit on 19 A).
        await eventually(lambda: ctl.history and ctl.history[-1].context.untrusted.get(bad.sid) == "over_draw"
                         and good.draw_a() == 0.0, timeout_s=15)
        assert ctl.loop.sent[bad.sid][0] == 0.0 and bad.sid not in ctl.loop.before  # its only limit: 0 A
        for _ in range(2):  # a storm: it drops and comes back, twice
            await _down(cs, ctl, bad)
            n = len(ctl.history)
            t0 = time.monotonic()
            loads, trusted = [], []
            # Beyond a settled reading after its return, and four steps (one may wait seconds).
            while time.monotonic() - t0 < 5.0 or (len(ctl.history) < n + 4 and time.monotonic() - t0 < 20.0):
                loads.append(good.draw_a() + bad.draw_a())
                trusted += [r.time for r in ctl.history[n:] if bad.sid not in r.context.untrusted]
                await asyncio.sleep(0.1)
            assert max(loads) <= GRID_A, f"grid at {max(loads):.1f} A on its {GRID_A} A rating"
            assert trusted == [], f"{bad.sid} trusted by {len(set(trusted))} steps after its return"
            assert len(ctl.history) >= n + 4  # steps ran meanwhile
        assert all(c.st.schema_errors == [] for c in cars)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in cars:
            if c.st is not None:
                await c.st.close()
        await ctl.stop()
        await cs.stop()


async def test_the_escalation_clock_of_a_car_ignoring_its_limit_runs_on_across_reconnects(tmp_path):
    # F3. Grace 6 s; its station drops twice before it is over: the clock that started before
    # the first drop escalates it (a station maximum), not one restarted at its last return.
    cs, ctl, cars = await _block(tmp_path, "2.0.1", settle_s=1.0, grace_s=6.0, period_s=1.0)
    good, bad = cars
    stop = asyncio.Event()
    tasks = []
    try:
        for c in cars:
            await c.plug()
        for c in cars:
            await c.start()
            tasks.append(asyncio.create_task(c.report(stop)))
        await eventually(lambda: bad.sid in ctl.escalation.since, timeout_s=15)
        since = ctl.escalation.since[bad.sid]
        assert not bad.station_max()
        for _ in range(2):
            await _down(cs, ctl, bad)
            n = len(ctl.history)
            await eventually(lambda: len(ctl.history) > n and ctl.history[-1].context.untrusted.get(bad.sid)
                             == "over_draw", timeout_s=10)
            assert ctl.escalation.since.get(bad.sid) == since  # its clock runs on
        await eventually(bad.station_max, timeout_s=15)
        assert ctl.escalation.since.get(bad.sid) == since and bad.sid in ctl.escalation.escalated
        assert all(c.st.schema_errors == [] for c in cars)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in cars:
            if c.st is not None:
                await c.st.close()
        await ctl.stop()
        await cs.stop()


T0 = pd.Timestamp("2026-12-08 00:00", tz="UTC")


def test_an_offline_car_keeps_its_clock_is_reported_once_back_and_forgotten_once_ended():
    e = Escalation(backoff_s=5.0, max_backoff_s=40.0, grace_s=60.0, alarm_s=120.0)
    e.update({"a": "over_draw"}, T0, present={"a", "b"}, following=set())
    e.update({}, T0 + pd.Timedelta(seconds=30), present={"b"}, following={"b"})  # "a" offline: not planned
    assert e.since == {"a": T0}
    assert e.to_alarm(T0 + pd.Timedelta(seconds=130)) == []  # offline: reported once back
    e.update({"a": "over_draw"}, T0 + pd.Timedelta(seconds=140), present={"a", "b"}, following=set())
    assert e.since == {"a": T0} and e.to_alarm(T0 + pd.Timedelta(seconds=140)) == ["a"]
    e.escalated.add("a")
    e.forget({"b"})  # its transaction ended
    assert e.since == {} and e.escalated == set()
