"""A car ignoring its limit is never judged "follows, with a meter offset" by a trial whose limit
never came into force (found by a review of the 0 A trial, session 35)."""

import asyncio

import pandas as pd
import pytest

from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.state import DispatchRecord
from test_control import Clock, FakeCentral, _controller


async def _run(variant: str) -> tuple[dict, list, list]:
    """Three 16 A points behind a 20 A fuse; CP0's car draws 10 A whatever it is sent (no offset).
    Variant "refused": from step 12 CP0's charger rejects every profile, so the trial's minimum
    never comes into force. Variant "unbalance": a site with a 20 A unbalance limit."""
    extra = {"max_unbalance_a": 20.0} if variant == "unbalance" else {}
    cps = tuple(ChargePoint(id=f"CP{i}", fuse="grid", max_current_a=16.0, min_current_a=6.0) for i in range(3))
    site = Site("t", (Fuse("grid", (20.0,) * 3),), cps, **extra)
    cs, clock = FakeCentral(site), Clock()
    cs.state.clock = clock
    for i in range(3):
        cs.state.on_connect(f"CP{i}", "2.0.1")
        cs.state.on_boot(f"CP{i}", vendor="v", model="m")
    accept = cs.set_limit
    refuse = {"on": False}

    async def set_limit(cp_id, connector_id, current_a, *, validity_s=None):
        if cp_id == "CP0" and refuse["on"]:
            cs.sent.append((cp_id, float(current_a)))
            rec = DispatchRecord(pr.utcnow(), float(current_a), None, cs.state.applied_limit_a(cp_id, connector_id),
                                 [(pr.TX, "Rejected")])
            cs.state.on_dispatch(cp_id, connector_id, rec)
            return rec
        return await accept(cp_id, connector_id, current_a, validity_s=validity_s)

    cs.set_limit = set_limit

    def plug(i):
        cs.state.on_start(f"CP{i}", 1, f"tx{i}", start=clock.now.to_pydatetime(), meter_start_wh=0.0)
        cs.state.on_needs(f"CP{i}", 1, departure=(clock.now + pd.Timedelta(hours=6)).to_pydatetime(), energy_kwh=40.0)

    plug(1)
    plug(2)
    ctl = _controller(cs, clock, policy="equal")
    present, offsets_seen = {1, 2}, []
    try:
        for k in range(40):
            if k == 3:
                plug(0)
                present.add(0)
            if k == 12:
                refuse["on"] = variant == "refused"
                for i in (1, 2):
                    cs.state.on_stop(f"CP{i}", f"tx{i}", stop=clock.now.to_pydatetime(), meter_stop_wh=1000.0)
                present -= {1, 2}
            for i in present:
                lim = cs.state.applied_limit_a(f"CP{i}", 1) or 0.0
                a = 10.0 if i == 0 else (lim if lim >= 6 else 0.0)
                cs.state.on_meter(f"CP{i}", 1, f"tx{i}", {f"current_l{j}_a": a for j in (1, 2, 3)},
                                  clock.now.to_pydatetime())
            res = await ctl.step()
            await asyncio.gather(*ctl.idle.tasks)
            offsets_seen.append(dict(ctl.loop.offsets))
            clock.advance(20)
        return res.context.untrusted, offsets_seen, sorted(ctl.escalation.alarmed)
    finally:
        await ctl.failsafe.cancel()


@pytest.mark.parametrize("variant", ["refused", "unbalance"])
async def test_a_trial_whose_limit_never_came_into_force_trusts_nothing(variant):
    """Before: at step 19 the car's whole 10 A draw became its "offset", it was trusted and its
    not-following alarm withdrawn, for the rest of the run."""
    untrusted, offsets_seen, alarmed = await _run(variant)
    assert all("CP0:tx0" not in o for o in offsets_seen), [o for o in offsets_seen if o]
    assert untrusted.get("CP0:tx0") is not None  # still counted at what it may draw
    assert "CP0:tx0" in alarmed
