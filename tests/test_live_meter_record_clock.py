"""A transaction's readings are ordered by the station's own stamps while the live state (and the
record, m11) dates each in ours by the station's known offset (4376b4c): readings stamped in order
must all be applied, however that estimate moves."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta, timezone

import pytest
from interop.station import RawStation, default_answer, now_iso

from nowblock.testing import central_system, make_test_site


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_readings_stamped_in_order_are_all_applied_while_the_offset_estimate_moves(version, monkeypatch):
    """tests/interop/test_crash.py after 4376b4c: 34 of 46 acknowledged meter values were missing
    from the store. Each stamp was moved into our clock by the estimate of that moment, which moves
    by milliseconds from CALL to CALL; readings 5 ms apart then came out dated before the last one,
    were not applied (no meter event, nothing stored) although the station had its answer. Here
    the estimate grows 20 ms a CALL (as an estimate settling on a busy machine)."""
    from nowblock.ocpp import edge

    step = itertools.count()
    monkeypatch.setattr(edge, "station_offset_s", lambda clock: 0.020 * next(step))
    cp = "CP1" if version == "1.6" else "CP2"
    async with central_system(make_test_site(2)) as cs:
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", cp, version,
                             answer=lambda a, p: default_answer(version, a, p)).connect()
        try:
            await s.boot()
            tx = await s.start_tx()
            applied = []
            for k in range(1, 21):
                e = 10000.0 + 7.0 * k
                await s.reading(tx, k, amps=[10.0] * 3, energy_wh=e)
                applied.append(cs.state.transaction(cp, tx).energy_register_wh == pytest.approx(e))
                await asyncio.sleep(0.005)
            assert all(applied), f"{applied.count(False)} of {len(applied)} acknowledged readings not applied"
        finally:
            await s.close()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_readings_after_the_stations_clock_steps_back_are_applied_once_its_estimate_follows(version, monkeypatch):
    """Review rev3 H1 (/tmp/s37/rev3/clock_back.py): a station's clock stepped back 600 s
    mid-transaction (NTP, a 1.6 station taking the time from a Heartbeat). Ordered by its stamps
    alone, every later reading was 'before the last one': acknowledged, not applied, not stored
    until its clock passed its old last stamp (0 of 60 applied over 120 s; the live current stuck
    at 10 A while the car drew 20 A). Here the offset estimate has followed the step (as it does
    within about a minute): dated in our clock each reading is newer than the last, so it is
    applied. A reading older by both clocks is still refused (the test above, the store's late
    meter values)."""
    from nowblock.ocpp import edge

    off = [0.0]
    monkeypatch.setattr(edge, "station_offset_s", lambda clock: off[0])
    cp = "CP1" if version == "1.6" else "CP2"

    def st_now():
        return datetime.now(timezone.utc) + timedelta(seconds=off[0])

    async with central_system(make_test_site(2)) as cs:
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", cp, version,
                             answer=lambda a, p: default_answer(version, a, p)).connect()
        try:
            await s.boot()
            tx = await s.start_tx(now_iso(st_now()))
            seq = itertools.count(1)

            async def reading(amps, e):
                await s.reading(tx, next(seq), amps=[amps] * 3, energy_wh=e, when=now_iso(st_now()))
                return cs.state.transaction(cp, tx)

            e = 10000.0
            for _ in range(3):
                e += 7.0
                await reading(10.0, e)
                await asyncio.sleep(0.05)
            off[0] = -600.0  # the station's clock steps back; the estimate has followed
            applied = []
            for _ in range(3):
                # 1.5 s apart: past the 1 s by which a reading older by its stamp must be newer in
                # our clock to be taken (state.METER_STEP_TOLERANCE_S).
                await asyncio.sleep(1.5)
                e += 7.0
                t = await reading(20.0, e)
                applied.append(t.energy_register_wh == pytest.approx(e))
            assert all(applied), f"{applied.count(False)} of {len(applied)} readings after the step not applied"
            assert t.current_a == pytest.approx((20.0, 20.0, 20.0))
        finally:
            await s.close()
