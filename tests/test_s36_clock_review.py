"""Review rev1 of session 36 on the station clock offset (nowblock.ocpp.edge.ClockOffset) and
how the live loop counts a station whose clock it cannot use: a slow replay between live
stamps (H1), a car at such a station counted at what it may physically draw (H2), a tie an
hour wide (M2), a queued pre-reset stamp (far flag), a station that stamps nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from interop.station import RawStation, meter_16
from test_s35_profiles_fallback import K01Station, _served

from nowblock.ocpp import profiles as pr
from nowblock.ocpp.edge import ClockOffset
from nowblock.testing import eventually

T0 = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _mv(t: datetime, connector_id: int = 1) -> dict:
    return {"connectorId": connector_id, "meterValue": [{"timestamp": _iso(t), "sampledValue": [{"value": "1"}]}]}


@pytest.mark.parametrize("pace_s, live_every_s", [(2.0, 30.0), (2.0, 60.0), (1.5, 30.0), (2.0, 10.0), (1.0, 30.0)])
def test_a_slow_16_replay_between_live_stamps_does_not_move_it(pace_s, live_every_s):
    # rev1 H1 (/tmp/s36/rev1/r2b_clock_interleaved.py): a right clock back from an hour's outage
    # replays its 360 queued 10 s MeterValues one per 2 s (1.6 has no offline flag), a live
    # MeterValues of its other connector every 30-60 s between them. The replay outvoted the
    # live stamps: down to -3528 s, on 351 of 384 CALLs below -900 s (each TxProfile sent
    # then had expired on arrival).
    c = ClockOffset()
    now = T0
    for _ in range(60):
        c.observe(_mv(now), now, "CP1")
        now += timedelta(seconds=10)
    off_from = now
    now += timedelta(seconds=3600)
    ests = []
    for k in range(360):
        c.observe(_mv(off_from + timedelta(seconds=10 * k)), now, "CP1")
        ests.append(c.offset_s)
        if k % int(live_every_s / pace_s) == 0:
            c.observe(_mv(now + timedelta(seconds=0.5), 2), now + timedelta(seconds=0.5), "CP1")
            ests.append(c.offset_s)
        now += timedelta(seconds=pace_s)
    assert min(ests) > -60.0 and max(ests) < 60.0, (min(ests), sum(e < -900 for e in ests), len(ests))


async def test_a_paced_16_replay_over_websocket_gets_profiles_that_live():
    # rev1 H1 end to end (/tmp/s36/rev1/r2d_clock_ws_1200.py, raw 1.6 frames): back from a
    # 1200 s outage the station replays its queued MeterValues (10 s apart) one per 2 s with a
    # live StatusNotification every 30 s. Estimate -1180..-1072 s; the 4 0 A TxProfiles sent
    # during the replay had all expired on arrival by the station's (right) clock.
    now = [T0]
    async with _served(tx_validity_s=900, clock=lambda: now[0]) as cs:
        station = K01Station("1.6", reject_tx=False)
        st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "1.6", answer=station).connect()
        try:
            await st.boot()
            await eventually(lambda: cs.state.station("CP1").failsafe is not None)
            tx = (await st.ok("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0,
                                                   "timestamp": _iso(now[0])}))["transactionId"]
            for i in range(3):
                now[0] += timedelta(seconds=1)
                await st.ok("MeterValues", meter_16(1, tx, amps=[16.0] * 3, energy_wh=i, when=_iso(now[0])))
            t_off = now[0]
            now[0] += timedelta(seconds=1200)
            lives = []
            for k in range(40):
                await st.ok("MeterValues", meter_16(1, tx, amps=[16.0] * 3, energy_wh=10 + k,
                                                    when=_iso(t_off + timedelta(seconds=10 * k))))
                if k % 15 == 0:
                    await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                                       "status": "Charging", "timestamp": _iso(now[0])})
                if k % 5 == 4:
                    n = len(st.received)
                    rec = await cs.set_limit("CP1", 1, 0.0, transaction_id=tx, validity_s=900)
                    sent = [p for a, p in st.received[n:] if a == "SetChargingProfile"]
                    assert rec.purpose == pr.TX and sent
                    to = sent[-1]["csChargingProfiles"]["validTo"]
                    lives.append((datetime.fromisoformat(to.replace("Z", "+00:00")) - now[0]).total_seconds())
                now[0] += timedelta(seconds=2)
            assert cs.state.station("CP1").clock.offset_s == pytest.approx(0.0, abs=2.0)
            assert all(850 <= s <= 950 for s in lives), lives
        finally:
            await st.close()

