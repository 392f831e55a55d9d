"""The live loop's idle defaults against stations written from the OCPP specs (raw frames over
127.0.0.1, a real central system and controller): renewing an idle default that is still in
force frees no room and so calls for no step."""

from __future__ import annotations

import asyncio

from interop.station import RawStation, now_iso
from test_live_fallback_default import K01Station

from nowblock.control import attach
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site


def _idle_sent(st: RawStation) -> int:
    return sum(1 for a, p in st.received if a == "SetChargingProfile"
               and p["csChargingProfiles"]["chargingProfileId"] == pr.IDLE_DEFAULT_ID_BASE + 1)


async def test_renewing_an_idle_default_wakes_no_step(tmp_path):
    # Every accepted renewal woke a step: 110 of 238 demo steps; on 40 idle connectors at
    # serve's ratio (TxProfiles of 5 periods) 124 steps/h for a 60 s period
    # (/tmp/s37/h1/repro1_idle_wakes.py). Idle defaults of 5 s, renewed at steps every 2 s.
    site = make_test_site(1, grid_a=32.0, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    ctl = attach(cs, db=str(tmp_path / "block.sqlite"), policy="equal", period_s=2.0, min_replan_s=0.1,
                 solve_timeout_s=1.5, profile_validity_s=5.0)
    await ctl.start()
    station = K01Station("1.6", reject_tx=False)
    st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "1.6", answer=station).connect()
    try:
        await st.boot()
        await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available",
                                           "timestamp": now_iso()})
        await eventually(lambda: _idle_sent(st) >= 1 and any(p.id == pr.IDLE_DEFAULT_ID_BASE + 1
                                                             for p in station.held), timeout_s=10)
        assert float(ctl.source.idle_defaults_a(ctl.clock()).iloc[0]) == 0.0
        await asyncio.sleep(0.5)
        n0, sent0 = len(ctl.history), _idle_sent(st)
        await eventually(lambda: _idle_sent(st) >= sent0 + 2, timeout_s=15)  # two renewals
        await asyncio.sleep(0.5)  # room for a step they would wake
        window = ctl.history[n0:]
        assert _idle_sent(st) - sent0 >= 2
        assert [r.reason for r in window if r.reason != "period"] == []
        assert len(window) >= 2  # the period's steps go on (they send the renewals)
    finally:
        await st.close()
        await ctl.stop()
        await cs.stop()
