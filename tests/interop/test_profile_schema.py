"""Every charging profile the central system builds validates against the official schemas.

The dispatch sends SetChargingProfile without the ``ocpp`` library's run-time schema check (it
was a fifth of the server's time at 2,000 stations), so this is where the check happens.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from nowblock.ocpp import profiles as pr

from .station import schema_problems

T0 = datetime(2026, 3, 2, 17, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("purpose", [pr.TX, pr.TX_DEFAULT, pr.MAX_16])
@pytest.mark.parametrize("unit,amps", [("A", 16.37), ("A", 0.0), ("W", 13.9)])
def test_built_profiles_validate_against_the_official_schema(version, purpose, unit, amps):
    connector = 0 if purpose == pr.MAX_16 else 1
    prof = pr.build_profile(version, purpose, amps, connector_id=connector, now=T0, unit=unit, phases=3,
                            transaction_id=(7 if version == "1.6" else "T-7") if purpose == pr.TX else None,
                            profile_id=pr.IDLE_DEFAULT_ID_BASE + 1 if purpose == pr.TX_DEFAULT else None)
    req = (call16.SetChargingProfile(connector_id=connector, cs_charging_profiles=prof) if version == "1.6"
           else call201.SetChargingProfile(evse_id=connector, charging_profile=prof))
    # As the station reads it off the wire (1.6's multipleOf 0.1 is checked on decimals).
    payload = json.loads(json.dumps(remove_nones(snake_to_camel_case(serialize_as_dict(req)))), parse_float=Decimal)
    assert schema_problems(version, "SetChargingProfile", payload) == []
