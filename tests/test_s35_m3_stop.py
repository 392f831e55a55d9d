"""A car leaving while its fallback TxDefault is on the wire leaves no default behind (stations
written from the specs, raw frames over 127.0.0.1)."""

from __future__ import annotations

import asyncio

import pytest
from interop.station import Late
from test_live_fallback_default import _booted, _start, _stop

from nowblock.ocpp import profiles as pr
from nowblock.testing import eventually


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_fallback_answered_after_the_car_left_is_cleared(version):
    # Review of 9a894c0/897f892: the TxDefault (id 101, stack level 1) was sent, the car left,
    # then the station's Accepted came: after_stop had already looked and found nothing to clear,
    # and the idle connector applied the departed car's 16 A above its 0 A idle default.
    async with _booted(version) as (cs, station, st):
        idle = await cs.set_default_profile("CP1", 0.0, connector_id=1, validity_s=900,
                                            profile_id=pr.IDLE_DEFAULT_ID_BASE + 1)
        assert idle.purpose == pr.TX_DEFAULT
        tx = await _start(st, version)
        await eventually(lambda: cs.state.running("CP1"))
        plain = station.__call__

        def leaves(action, p):  # the car leaves while the fallback's answer is on its way
            prof = (p.get("csChargingProfiles") or p.get("chargingProfile") or {}) if action == "SetChargingProfile" \
                else {}
            answer = plain(action, p)
            if prof.get("chargingProfilePurpose") == pr.TX_DEFAULT and prof.get("stackLevel") == 1:
                asyncio.get_running_loop().create_task(_stop(st, version, tx))
                return Late(0.3, answer)
            return answer

        st.answer = leaves
        rec = await cs.set_limit("CP1", 1, 16.0, retries=1, backoff_s=0.01)
        assert rec.attempts[-1] == (pr.TX_DEFAULT, "Accepted")  # taken as the car left
        await eventually(lambda: not cs.state.running("CP1"))
        await eventually(lambda: not [p for p in station.held if p.id == pr.TX_DEFAULT_ID_BASE + 1])
        assert station.applies_a(1, None) == 0.0
        assert cs.state.applied_limit_a("CP1", 1) == 0.0
