"""A station whose clock steps forward while a car charges (raw 1.6 frames over 127.0.0.1, a
spec-stacking station evaluating profiles in its own clock, a real central system and
controller): from its first stamp after the step the car is never counted below what the
station applies, and it is sent a TxProfile placed in its new clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pandas as pd
from interop.station import RawStation, meter_16, now_iso
from test_live_fallback_default import K01Station

from nowblock.control import attach
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site

STEP_S = 600.0  # the station's clock steps this far forward (e.g. NTP after a drift)


class SixAmps:
    """Every car 6 A: below the station's fail-safe, which it applies once its TxProfile lapses."""

    name = "six"

    def schedule(self, snapshot):
        return pd.Series(6.0, index=snapshot.cars.index)


async def test_a_forward_clock_step_never_leaves_a_car_counted_below_what_its_station_applies(tmp_path):
    # TxProfiles sent before the vote followed the step expired on arrival; and those sent
    # before it were counted in force for 21 of 39 s after a +600 s step while the station applied
    # its fail-safe (/tmp/s37/h1/repro5_forward_step.py).
    site = make_test_site(1, grid_a=32.0, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    ctl = attach(cs, db=str(tmp_path / "block.sqlite"), policy=SixAmps(), period_s=1.0, min_replan_s=0.1,
                 solve_timeout_s=0.8, profile_validity_s=20.0)
    await ctl.start()
    off = {"s": 0.0}

    def station_now():
        return datetime.now(timezone.utc) + timedelta(seconds=off["s"])

    station = K01Station("1.6", reject_tx=False)
    st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "1.6", answer=station).connect()
    try:
        await st.boot()
        await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                           "timestamp": now_iso(station_now())})
        tx = (await st.ok("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                               "timestamp": now_iso(station_now())}))["transactionId"]
        await eventually(lambda: station.applies_a(1, tx) == 6.0, timeout_s=10)
        failsafe = cs.state.station("CP1").failsafe.accepted_a
        assert failsafe > 6.0
        loop = asyncio.get_running_loop()
        off["s"] = STEP_S
        t0, next_meter, low, applied = loop.time(), loop.time(), [], []
        while loop.time() - t0 < 30.0:
            if loop.time() >= next_meter:  # one burst every 6 s: the vote follows in 3
                await st.ok("MeterValues", meter_16(1, tx, amps=[6, 6, 6], energy_wh=100.0,
                                                    when=now_iso(station_now())))
                next_meter += 6.0
            cars = ctl.source.observe(ctl.clock()).cars
            row = cars[cars["transaction_id"].astype(str) == str(tx)].iloc[0]
            counted = float(row["offered_current_a"]) if row["connected"] and row["limit_known"] else float(
                row["max_current_a"])
            applies = station.applies_a(1, tx, offset_s=off["s"])
            applied.append(applies)
            if counted < applies - 1e-6:
                low.append((round(loop.time() - t0, 1), counted, applies))
            await asyncio.sleep(0.5)
        assert low == []
        # Sent again in its new clock: the car is back at its 6 A, in force by the station's clock.
        assert applied[-1] == 6.0
        assert abs(cs.state.station("CP1").clock.offset_s - STEP_S) < 5.0
    finally:
        await st.close()
        await ctl.stop()
        await cs.stop()
