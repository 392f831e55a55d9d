"""What the live controller books as sent when a station goes away while a step runs (the
project's RawStation, raw OCPP 1.6J frames over 127.0.0.1)."""

import pandas as pd
from interop.station import RawStation, meter_16, now_iso

from nowblock.control import Controller
from nowblock.testing import central_system, eventually, make_test_site


async def test_a_limit_for_a_station_that_went_away_is_not_booked_as_sent():
    """/tmp/s36/h2/r7_disconnected_booked.py: a step's lowering to 20 A waited for its station's
    lock while the station's network dropped; set_limit found no connection ("Disconnected") yet the
    limit was booked as sent, after the controller had dropped the station's book at the
    disconnect so that it gets fresh limits when back. Once back (no reboot), an unchanged target
    was not sent again until its refresh (450 s), and the station kept what it held before."""
    async with central_system(make_test_site(1), backoff_s=0.01, response_timeout_s=2.0) as cs:
        sender = Controller(cs, cs.site, "equal").sender  # its Dispatcher, no step of its own running

        def answer(action, payload):
            return {"configurationKey": []} if action == "GetConfiguration" else {"status": "Accepted"}

        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", answer=answer).connect()
        try:
            await s.boot()
            r = await s.ok("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": now_iso()})
            await s.ok("MeterValues", meter_16(1, r["transactionId"], amps=[16.0] * 3, energy_wh=10.0))
            cars = cs.state.snapshot()  # the step's view, taken while the station is connected
            sid = cars.index[0]
            now = pd.Timestamp.now(tz="UTC")
            ok, _ = await sender._send(cars, sid, 32.0, now)
            assert ok and sender.loop.sent[sid][0] == 32.0
            sender.loop.sent.pop(sid)  # what the controller does at a disconnect
            await s.close()
            await eventually(lambda: not cs.state.station("CP1").connected)
            ok, _ = await sender._send(cars, sid, 20.0, now)  # the step's lowering, after it went away
            assert not ok and sid not in sender.loop.sent
        finally:
            await s.close()
