"""What the live controller sends and books as sent: each limit names its car's transaction; a
station
that goes away mid-step.

The live controller names each car's transaction when it sends its limit (found by a review:
the observed frame dropped ``transaction_id``, so f00696a's naming never happened live).

The live controller names the car's transaction when it sends a limit, so a limit decided for a
car that left never reaches the next car on its connector (simulated chargers over 127.0.0.1).

What the live controller books as sent when a station goes away while a step runs (the
project's RawStation, raw OCPP 1.6J frames over 127.0.0.1).
"""

from __future__ import annotations

import pandas as pd
import pytest
from interop.station import RawStation, meter_16, now_iso

from nowblock.sim.chargers import Car
from nowblock.testing import central_system, chargers, eventually, make_test_site
from nowblock.control import Controller
from nowblock.ocpp import profiles as pr


async def test_a_live_step_names_the_running_transaction():
    calls = []
    async with central_system(make_test_site(1), control="equal", backoff_s=0.01, response_timeout_s=2.0) as cs:
        sent = cs.set_limit

        async def spy(*a, **k):
            calls.append((a, k))
            return await sent(*a, **k)

        cs.set_limit = spy
        async with chargers(cs, dict(cp_id="CP1", version="1.6", meter_interval_s=1)) as (sim,):
            await sim.plug_in(Car())
            await eventually(lambda: calls, timeout_s=20)
            running = cs.state.running("CP1")
            assert running, "the car's transaction runs"
            assert calls[0][1].get("transaction_id") == running[0].transaction_id, calls[0]


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_limit_decided_for_a_car_that_left_does_not_reach_the_next_car(version):
    # Review of 897f892 (L1): control.sending called set_limit without transaction_id, so the guard
    # "nothing is sent unless the caller names a running transaction" never applied live: a step's
    # 32 A for a car that left while it ran went out as the next car's TxProfile.
    async with central_system(make_test_site(1), backoff_s=0.01, response_timeout_s=2.0) as cs:
        sender = Controller(cs, cs.site, "equal").sender  # its Dispatcher, no step of its own running
        async with chargers(cs, dict(cp_id="CP1", version=version, meter_interval_s=600)) as (sim,):
            await sim.plug_in(Car(), id_tag="A")
            first = await eventually(lambda: (cs.state.running("CP1") or [None])[0])
            cars = cs.state.snapshot()  # the step's view: indexed by session, the first car running
            sid = first.session_id
            assert cars.loc[sid, "transaction_id"] == first.transaction_id
            await sim.unplug()  # the car leaves while the step runs ...
            await sim.plug_in(Car(), id_tag="B")  # ... and the next one starts on its connector
            second = await eventually(lambda: (cs.state.running("CP1") or [None])[0])
            assert second.transaction_id != first.transaction_id
            before = cs.state.applied_limit_a("CP1", 1)
            sent = len(sim.received)
            # ... and the step's limit for the first car goes out now
            ok, accepted = await sender._send(cars, sid, 32.0, pd.Timestamp.now(tz="UTC"))
            assert accepted is None and len(sim.received) == sent
            assert not [p for p in sim.profiles if p.purpose == pr.TX and p.transaction_id == second.transaction_id]
            assert cs.state.applied_limit_a("CP1", 1) == before


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
