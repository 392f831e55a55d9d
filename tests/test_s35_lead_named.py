"""The live controller names each car's transaction when it sends its limit (found by a review:
the observed frame dropped ``transaction_id``, so f00696a's naming never happened live)."""

from nowblock.sim.chargers import Car
from nowblock.testing import central_system, chargers, eventually, make_test_site


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
