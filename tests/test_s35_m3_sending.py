"""The live controller names the car's transaction when it sends a limit, so a limit decided for a
car that left never reaches the next car on its connector (simulated chargers over 127.0.0.1)."""

from __future__ import annotations

import pandas as pd
import pytest

from nowblock.control import Controller
from nowblock.ocpp import profiles as pr
from nowblock.sim.chargers import Car
from nowblock.testing import central_system, chargers, eventually, make_test_site


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
