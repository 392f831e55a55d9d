"""Cars that draw a little more than their limit, against stations written from the OCPP 1.6
spec (raw frames over 127.0.0.1, a real central system and controller): what they draw over
their limit, within the over-draw tolerance, is planned for, so no fuse phase stays over its
rating."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd

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

    def __init__(self, cp_id: str, port: int, every_s: float = 0.3, over_a: float = OVER_A,
                 over_after_s: float = 0.0) -> None:
        self.cp_id, self.port, self.every_s, self.over_a = cp_id, port, every_s, over_a
        self.over_after_s, self.t_start = over_after_s, None  # draws its limit alone until then
        self.station = K01Station("1.6", reject_tx=False)
        self.st: RawStation | None = None
        self.tx = None
        self.wh = 0.0

    def draw_a(self) -> float:
        lim = self.station.applies_a(1, self.tx) if self.tx is not None else None
        late = self.t_start is None or time.monotonic() - self.t_start < self.over_after_s
        return 0.0 if lim is None or lim < 6.0 else float(lim) + (0.0 if late else self.over_a)

    async def start(self) -> None:
        await self.plug()
        await self.begin()

    async def plug(self) -> None:
        self.st = await RawStation(f"ws://127.0.0.1:{self.port}", self.cp_id, "1.6", answer=self.station).connect()
        await self.st.boot()
        await self.st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                                "timestamp": now_iso()})

    async def begin(self) -> None:
        res = await self.st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                                    "timestamp": now_iso()})
        self.tx = res["transactionId"]
        self.t_start = time.monotonic()
        await self.st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging",
                                                "timestamp": now_iso()})

    async def report(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.send(self.draw_a())
            await asyncio.sleep(self.every_s)

    async def send(self, a: float) -> None:
        self.wh += a * 3 * 230.0 * self.every_s / 3600.0
        await self.st.ok("MeterValues", meter_16(1, self.tx, amps=[a, a, a], energy_wh=self.wh))


async def _grid_load(tmp_path, period_s: float, seconds: float,
                     over_after_s: float = 0.0) -> tuple[list[tuple[float, float]], list]:
    """(s since both cars draw, the 20 A grid's load [A per phase] from what they draw), sampled
    every 0.1 s for ``seconds``, two over-drawing cars (from ``over_after_s`` after their start)
    under a controller of ``period_s``; and the overloads the controller reported (alarms and
    the ones still open)."""
    site = make_test_site(2, grid_a=20.0, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    ctl = attach(cs, db=str(tmp_path / "block.sqlite"), policy="equal", period_s=period_s, min_replan_s=0.1,
                 solve_timeout_s=1.0, loop=LoopSettings(settle_s=1.0))
    await ctl.start()
    cars = [OverDrawingCar(f"CP{i}", cs.port, over_after_s=over_after_s) for i in (1, 2)]
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
    # A new session is now counted at its limit plus the 2 A tolerance until a reading tells
    # its excess (test_new_sessions_drawing_over_their_limit_never_overload_a_full_fuse): here
    # the cars draw their limit at first (excess 0 learnt) and 1.5 A over it from 3 s on.
    samples, overloads = await _grid_load(tmp_path, period_s=60.0, seconds=10.0, over_after_s=3.0)
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


async def _new_fleet(tmp_path, n: int, over_a: float, ticks: int, every_s: float) -> list[list[tuple[float, float]]]:
    """Per meter interval, per car (limit its station applies [A], current it reports [A]):
    ``n`` new sessions that start together on a 40 A grid (16 A points: planned full), each
    drawing its limit plus ``over_a``, all reporting at once every ``every_s`` [s], ``ticks``
    times from their start; default loop settings (``settle_s`` 15 s), a 60 s period."""
    site = make_test_site(n, grid_a=40.0, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    ctl = attach(cs, db=str(tmp_path / "block.sqlite"), policy="equal", period_s=60.0, min_replan_s=0.1,
                 solve_timeout_s=1.0)
    await ctl.start()
    cars = [OverDrawingCar(f"CP{i}", cs.port, every_s=every_s, over_a=over_a) for i in range(1, n + 1)]
    try:
        for c in cars:
            await c.plug()
        # Each connector holds its 0 A idle default: the cars wait for their own limit.
        await eventually(lambda: all(c.station.applies_a(1, None) == 0 for c in cars), timeout_s=10)
        await asyncio.gather(*(c.begin() for c in cars))
        log = []
        for _ in range(ticks):
            amps = [c.draw_a() for c in cars]
            log.append([(c.station.applies_a(1, c.tx) or 0.0, a) for c, a in zip(cars, amps)])
            await asyncio.gather(*(c.send(a) for c, a in zip(cars, amps)))
            await asyncio.sleep(every_s)
        assert all(c.st.schema_errors == [] for c in cars)
        return log
    finally:
        for c in cars:
            if c.st is not None:
                await c.st.close()
        await ctl.stop()
        await cs.stop()


async def test_new_sessions_drawing_over_their_limit_never_overload_a_full_fuse(tmp_path):
    # A new session's excess is learnt only from its readings: each new session of cars at their
    # limit + 1.5 A overloaded until its first settled reading (/tmp/s37/m12: five raw 1.6 cars,
    # a 40 A grid at 43 A for 19 s; here 4 x 11.5 = 46 A for 15 s). Until a reading tells its
    # excess a car is now counted at its limit plus over_draw_a (2 A).
    log = await _new_fleet(tmp_path, n=4, over_a=OVER_A, ticks=10, every_s=1.0)
    sums = [sum(a for _, a in tick) for tick in log]
    assert max(sums) <= 40.0 + 1e-6, f"the 40 A grid at {max(sums):.1f} A at a meter value: {sums}"
    # Their first reading at their offer, after a raise from 0 A, told the 1.5 A: the rest of the
    # 2 A reserve was freed without waiting for a settled reading (15 s): the grid is full again.
    assert sums[-1] >= 40.0 - 0.5, sums


async def test_new_sessions_drawing_their_limit_get_their_fair_share_one_meter_interval_after_reading_it(tmp_path):
    # The reserve's cost is only a session's first seconds: after a raise (here from the 0 A
    # idle default) a car cannot legitimately be above its new limit, so its first reading at
    # its offer tells its excess (none here); the step it wakes gives the 2 A back. Waiting for
    # a settled reading (the experiment of session 37) held them at 8 A for 15 s.
    every_s = 2.0
    log = await _new_fleet(tmp_path, n=4, over_a=0.0, ticks=5, every_s=every_s)
    for car in range(4):
        k = next(i for i, tick in enumerate(log) if 6.0 <= tick[car][0] <= tick[car][1] + 2.0)  # at its offer
        assert k + 1 < len(log), log
        assert log[k + 1][car][1] == 10.0, (car, k, log)  # 40 A / 4: the fair share, one interval later


def test_a_first_limit_below_the_failsafe_a_new_car_drew_under_is_no_over_draw_at_once():
    # /tmp/s37/m12: a car drawing 11.5 A under its charger's 10 A fail-safe, read so again after
    # its first limit (8 A) went out but before it took hold, was judged over at once (against
    # no limit before: NaN) and its ratio stuck. The fail-safe it drew under is its limit before.
    from dataclasses import replace

    import pandas as pd
    from test_loop_step import T0, _obs, _site

    from nowblock.loop.step import ControlStep

    site = _site(root_a=20.0, n=2)

    def obs(t, measured, offered):
        o = _obs(site, measured=measured, offered=offered)
        o.cars["arrival"] = T0  # both plugged in at T0
        o.cars["last_meter"] = t - pd.Timedelta(seconds=0.5)
        return replace(o, time=t)

    step = ControlStep()
    t1, t2 = T0 + pd.Timedelta(seconds=1), T0 + pd.Timedelta(seconds=3)
    snap, _ = step.prepare(obs(t1, [11.5, 11.5], [10.0, 10.0]))
    for sid in snap.cars.index:
        step.record_sent(sid, 8.0, t1)
    snap, ctx = step.prepare(obs(t2, [11.5, 11.5], [8.0, 8.0]))
    assert ctx.untrusted == {} and len(ctx.over_draw_ratio) == 0
    # Not settled yet, it is planned at its limit plus the 2 A tolerance (1.5 A seen over both).
    assert step.reserve_a == {sid: 2.0 for sid in snap.cars.index}
    assert (snap.cars["min_current_a"] == 8.0).all() and (snap.cars["max_current_a"] == 18.0).all()


async def test_a_reading_above_both_limits_after_a_lowering_wakes_a_step_within_the_settle_window(tmp_path):
    # An outside test (/tmp/s38/h6/repro_wake.py, F1): a car lowered 20 -> 14 A that read 32 A
    # 3 s later (above both limits by more than over_draw_a: the step judges it over at once)
    # woke no step until its first reading settle_s (15 s) after the lowering: a 40 A grid at
    # 58 A for 26 s. Here a 20 A grid: CP1 alone at 16 A, lowered to its share when CP2 starts,
    # then reads 25 A; default settle_s (15 s) and a 60 s period. CP2 paused (or lowered) by the
    # step the reading wakes: 3 s at most (before: none until CP1's first settled reading).
    site = make_test_site(2, grid_a=20.0, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    ctl = attach(cs, db=str(tmp_path / "block.sqlite"), policy="equal", period_s=60.0, min_replan_s=0.1,
                 solve_timeout_s=1.0)
    await ctl.start()
    a, b = (OverDrawingCar(f"CP{i}", cs.port, every_s=0.5, over_a=0.0) for i in (1, 2))
    ignore_a: list[float] = []  # what CP1 draws once it ignores its limit
    stop = asyncio.Event()

    async def report(car, draw):
        while not stop.is_set():
            await car.send(draw())
            await asyncio.sleep(car.every_s)

    tasks = []
    try:
        await b.plug()  # booted, its idle connector at 0 A: CP1 alone gets its maximum
        await a.start()
        tasks.append(asyncio.create_task(report(a, lambda: ignore_a[0] if ignore_a else a.draw_a())))
        await eventually(lambda: (a.station.applies_a(1, a.tx) or 0) >= 14.0, timeout_s=10)
        # CP1's reserve freed first (its reading at 16 A): a reading at its lowered limit would
        # free it later and raise it again (reserve.tells_unsettled), its last change no lowering.
        await eventually(lambda: f"CP1:{a.tx}" in ctl.loop.learnt, timeout_s=5)
        await b.begin()
        # CP2 takes 7 A at most: under its offer, its reading frees none of its reserve before it
        # settles, so CP1's last change stays the lowering (a freed reserve raises it again).
        tasks.append(asyncio.create_task(report(b, lambda: min(b.draw_a(), 7.0))))
        # Both at their shares, CP1 lowered (its last change a lowering, well within settle_s).
        await eventually(lambda: (b.station.applies_a(1, b.tx) or 0) >= 6.0
                         and (a.station.applies_a(1, a.tx) or 99) <= 12.0, timeout_s=5)
        await asyncio.sleep(1.0)
        sid = f"CP1:{a.tx}"
        lim_a, lim_b = a.station.applies_a(1, a.tx), b.station.applies_a(1, b.tx)
        assert ctl.loop.before[sid] > ctl.loop.sent[sid][0] == lim_a, (ctl.loop.before, ctl.loop.sent)
        assert (pd.Timestamp.now(tz="UTC") - ctl.loop.changed_at[sid]).total_seconds() < 8.0
        ignore_a.append(25.0)  # above 16 + 2 and lim_a + 2: the step judges it over at once
        t0 = time.monotonic()
        await eventually(lambda: (b.station.applies_a(1, b.tx) or 0) < lim_b - 1.0, timeout_s=3.0)
        waited = time.monotonic() - t0
        assert sid in ctl.escalation.since or ctl.loop.over_ratio.get(sid) is not None, "CP1 not judged over"
        assert waited < 3.0
        assert a.st.schema_errors == [] and b.st.schema_errors == []
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in (a, b):
            if c.st is not None:
                await c.st.close()
        await ctl.stop()
        await cs.stop()
