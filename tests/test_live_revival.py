"""A car its station can be sent limits for again (an orphan named after a reboot or a reconnect)
wakes a step at once, not at the period's."""

from __future__ import annotations

import asyncio
import time

from interop.station import limit_of, meter_201, now_iso
from test_live_reconnect import _tx_profiles, t1_dropped_and_back

from nowblock.testing import central_system, eventually, make_test_site

PERIOD_S = 30.0


async def _orphaned_then_named(boot: bool):
    """A 2.0.1 station runs T1 and gets its TxProfile; its connection drops and it comes back (after
    a reboot with ``boot``), then names T1 in a TransactionEvent with meter values. Returns the
    seconds from the naming to the first step after it, that step's reasons the car is not trusted,
    and the seconds to T1's first TxProfile on the new connection."""
    async with central_system(make_test_site(1, grid_a=40), control="equal",
                              control_options={"period_s": PERIOD_S}) as cs:
        async with t1_dropped_and_back(cs) as (s, s2):
            if boot:
                await s2.boot()
            ctl = cs.controller
            await eventually(lambda: ctl.history and ctl.history[-1].context.untrusted.get("CP1:T1") == "offline",
                             timeout_s=10)  # the connect's (or boot's) step holds it as an offline car
            await asyncio.sleep(0.5)
            assert cs.state.transaction("CP1", "T1").orphaned
            n = len(ctl.history)
            t0 = time.monotonic()
            await s2.ok("TransactionEvent", {"eventType": "Updated", "timestamp": now_iso(), "seqNo": 1,
                                             "triggerReason": "MeterValuePeriodic",
                                             "transactionInfo": {"transactionId": "T1"},
                                             "meterValue": meter_201(amps=[16.0] * 3, energy_wh=100.0)})
            assert not cs.state.transaction("CP1", "T1").orphaned
            await eventually(lambda: len(ctl.history) > n, timeout_s=PERIOD_S + 5)
            stepped = time.monotonic() - t0
            why = dict(ctl.history[n].context.untrusted)
            await eventually(lambda: _tx_profiles(s2, "T1"), timeout_s=PERIOD_S + 5)
            sent = time.monotonic() - t0
            assert limit_of(_tx_profiles(s2, "T1")[0]) >= 6.0
            assert s.schema_errors == [] and s2.schema_errors == []
            return stepped, why, sent


async def test_an_orphan_named_after_a_reboot_gets_a_limit_at_once():
    """An outside test (h4 r4, /tmp/s37/m4/repro_f3_revival.py): after a power cut the stations'
    running transactions were orphans until they named them again (in MeterValues within 10 s),
    but reviving one woke no step: its car stayed offline, with no setpoint, for up to the period
    (14 s of a 20 s period in the reproduction; up to 60 s in serve) while every station showed
    connected. Now the revival wakes a step."""
    stepped, why, sent = await _orphaned_then_named(boot=True)
    assert stepped < 3.0 and sent < 5.0, (stepped, sent)
    assert why.get("CP1:T1") != "offline"


async def test_an_orphan_of_a_reconnect_named_again_gets_a_limit_at_once():
    """The same after a reconnect without a reboot: its first CALL after the connect ends the
    orphans of a station that did not reboot (``LiveState.touch``); this one names T1."""
    stepped, why, sent = await _orphaned_then_named(boot=False)
    assert stepped < 3.0 and sent < 5.0, (stepped, sent)
    assert why.get("CP1:T1") != "offline"
