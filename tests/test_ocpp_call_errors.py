"""CALLERROR codes for payloads the schemas refuse by a field's value (raw frames over 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json

import pytest
from interop.station import RawStation, now_iso
from test_live_fallback_default import _served


async def _answer(st: RawStation, action: str, payload: dict, uid: str) -> list:
    fut = asyncio.get_running_loop().create_future()
    st._pending[uid] = fut
    await st.send_raw(json.dumps([2, uid, action, payload]))
    return await asyncio.wait_for(fut, 10)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_value_outside_its_enumeration_is_a_property_constraint_violation(version):
    # H5 s7: 'Sleeping' as a connector status was answered FormationViolation / FormatViolation;
    # OCPP-J: "syntactically correct but at least one field contains an invalid value".
    async with _served(failsafe_at_boot=False, probe_rate_unit=False) as cs:
        st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", version).connect()
        try:
            await st.boot()
            if version == "1.6":
                bad = {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"}
                extra = {"connectorId": 1, "errorCode": "NoError", "status": "Available", "colour": "red"}
            else:
                bad = {"timestamp": now_iso(), "connectorStatus": "Sleeping", "evseId": 1, "connectorId": 1}
                extra = {"timestamp": now_iso(), "connectorStatus": "Available", "evseId": 1, "connectorId": 1,
                         "colour": "red"}
            ans = await _answer(st, "StatusNotification", bad, "m-enum")
            assert ans[:3] == [4, "m-enum", "PropertyConstraintViolation"] and "Sleeping" in json.dumps(ans[4])
            # a field the schema does not know stays a format error in the version's spelling
            ans = await _answer(st, "StatusNotification", extra, "m-extra")
            assert ans[2] == ("FormationViolation" if version == "1.6" else "FormatViolation")
            assert (await st.heartbeat())["currentTime"]
        finally:
            await st.close()
