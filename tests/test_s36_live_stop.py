"""A car that leaves while its TxProfile is being retried, against stations written from the specs
(the project's RawStation, raw frames over 127.0.0.1, profiles stacked as the specs say)."""

import asyncio
import time

import pytest
from interop.station import Late
from test_live_fallback_default import _booted, _start, _stop

from nowblock.ocpp import profiles as pr
from nowblock.testing import eventually


def _tx_sent_at(st) -> list[float]:
    """time.monotonic() of every TxProfile the station received."""
    return [at for (a, p), at in zip(st.received, st.received_at) if a == "SetChargingProfile"
            and (p.get("csChargingProfiles") or p.get("chargingProfile"))["chargingProfilePurpose"] == pr.TX]


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_the_retries_of_a_departed_cars_txprofile_do_not_hold_its_connector(version):
    """Review R3 L6 of session 35 (/tmp/s36/h2/r4_stop_behind_chain.py): a step's TxProfile was
    retried (Rejected after 1.5 s, twice more) for a car that had left; after_stop waits for the
    station lock, so the departed car's fallback TxDefault (16 A on the now idle connector) was
    cleared 5.7 s after the stop (~28 s at the default time-outs), and the idle default behind it
    as late. Now no retry goes out once its transaction has ended."""
    async with _booted(version) as (cs, station, st):
        tx = await _start(st, version)
        await eventually(lambda: cs.state.running("CP1"))
        plain = station.__call__
        slow = {"s": 0.0}

        def answer(action, p):
            prof = (p.get("csChargingProfiles") or p.get("chargingProfile") or {}) if action == "SetChargingProfile" else {}
            if prof.get("chargingProfilePurpose") == pr.TX:
                return Late(slow["s"], {"status": "Rejected"}) if slow["s"] else {"status": "Rejected"}
            return plain(action, p)
        st.answer = answer
        await cs.set_limit("CP1", 1, 16.0, retries=0)  # TxProfile refused: the fallback TxDefault 101
        assert station.applies_a(1, tx) == 16.0
        cs.refusal_memory_s = 0.0  # the next step tries a TxProfile again
        slow["s"] = 1.5
        step = asyncio.create_task(cs.set_limit("CP1", 1, 10.0, retries=2, backoff_s=0.5))
        await eventually(lambda: len(_tx_sent_at(st)) == 2)  # the step's first try on the wire
        await _stop(st, version, tx)
        stopped = time.monotonic()
        rec = await asyncio.wait_for(step, 10)
        assert [at for at in _tx_sent_at(st) if at > stopped] == []  # no retry for the car that left
        assert rec.attempts[-2:] == [(pr.TX, "Skipped:TransactionEnded"), (pr.TX_DEFAULT, "Skipped:TransactionEnded")]
        await eventually(lambda: not [p for p in station.held if p.id == pr.TX_DEFAULT_ID_BASE + 1], timeout_s=5)
        assert station.applies_a(1, None) == cs.state.station("CP1").failsafe.accepted_a  # the idle connector's
        assert st.schema_errors == []
