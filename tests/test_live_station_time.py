"""A station that stamps none of its messages after its boot (raw frames over 127.0.0.1, a real
central system and controller): the central system asks it for its time as the specs allow
(1.6 TriggerMessage MeterValues, whose timestamp is required; 2.0.1 GetVariables
ClockCtrlr.DateTime), so its idle connectors get their idle default, placed in its clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from interop.station import RawStation, meter_16, now_iso
from test_live_fallback_default import K01Station

from nowblock.control import attach
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site

AHEAD_S = 600.0  # the station's clock runs this far ahead of ours


class Unstamped(K01Station):
    """Holds and stacks profiles as the specs say; answers a request for its time: 1.6 a
    TriggerMessage MeterValues (Accepted, then the MeterValues), 2.0.1 ClockCtrlr.DateTime."""

    def __init__(self, version):
        super().__init__(version, reject_tx=False)
        self.asked, self.raw = [], None

    def __call__(self, action, p):
        if action == "TriggerMessage" and p.get("requestedMessage") == "MeterValues":
            self.asked.append(action)

            async def later():  # the triggered message follows the answer (1.6 5.17)
                await asyncio.sleep(0.05)
                await self.raw.ok("MeterValues", meter_16(p.get("connectorId") or 1, None, energy_wh=0.0,
                                                          when=now_iso(_station_now())))
            asyncio.get_running_loop().create_task(later())
            return {"status": "Accepted"}
        if action == "GetVariables":
            out = []
            for d in p["getVariableData"]:
                if (d["component"]["name"], d["variable"]["name"]) == ("ClockCtrlr", "DateTime"):
                    self.asked.append("ClockCtrlr.DateTime")
                    out.append({"attributeStatus": "Accepted", "component": d["component"],
                                "variable": d["variable"], "attributeValue": now_iso(_station_now())})
                else:
                    out.append({"attributeStatus": "UnknownVariable", "component": d["component"],
                                "variable": d["variable"]})
            return {"getVariableResult": out}
        return super().__call__(action, p)


def _station_now() -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=AHEAD_S)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_station_that_stamps_nothing_is_asked_its_time_and_gets_its_idle_default(tmp_path, version):
    # It got no idle default and its idle connector was counted at the point's 16 A until a car
    # started there (/tmp/s37/h1/repro4_unstamped_idle.py).
    site = make_test_site(1, grid_a=32.0, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    ctl = attach(cs, db=str(tmp_path / "block.sqlite"), policy="equal", period_s=30.0, min_replan_s=0.1,
                 solve_timeout_s=2.0, profile_validity_s=120.0)
    await ctl.start()
    station = Unstamped(version)
    st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", version, answer=station).connect()
    station.raw = st
    try:
        await st.boot()
        if version == "1.6":  # its timestamp is optional
            await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"})
        await st.heartbeat()
        idle_id = pr.IDLE_DEFAULT_ID_BASE + 1
        # Well before the 30 s period: the answer wakes a step.
        await eventually(lambda: any(p.id == idle_id for p in station.held), timeout_s=10)
        assert station.asked
        clock = cs.state.stations["CP1"].clock
        assert clock.stamped and abs(clock.offset_s - AHEAD_S) < 5.0
        idle = [p for p in station.held if p.id == idle_id][-1]
        assert idle.valid_to > _station_now() + timedelta(seconds=30)  # placed in its clock
        assert station.applies_a(1, None, offset_s=AHEAD_S) == 0.0
        await eventually(lambda: float(ctl.source.idle_defaults_a(ctl.clock()).iloc[0]) == 0.0, timeout_s=5)
    finally:
        await st.close()
        await ctl.stop()
        await cs.stop()
