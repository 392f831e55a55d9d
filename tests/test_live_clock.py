"""A station whose clock is off ours, in the live loop: profiles carry its time, and how the loop
counts a station whose clock it cannot read.

Profiles reach a station whose clock is off ours: they carry its time (estimated from its own
timestamps), so it applies them (raw frames over 127.0.0.1, stations written from the specs).

Review rev1 of session 36 on the station clock offset (nowblock.ocpp.edge.ClockOffset) and
how the live loop counts a station whose clock it cannot use: a slow replay between live
stamps (H1), a car at such a station counted at what it may physically draw (H2), a tie an
hour wide (M2), a queued pre-reset stamp (far flag), a station that stamps nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta, datetime, timezone

import pytest
from interop.station import RawStation, now_iso, meter_16
from test_live_fallback_default import K01Station, _served

from nowblock.ocpp import profiles as pr
from nowblock.testing import eventually, make_test_site
from nowblock.ocpp.edge import ClockOffset


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("skew_s", [-3600, 3600])
async def test_a_station_an_hour_off_applies_its_failsafe_and_its_limits(version, skew_s, caplog):
    # H5 s5: a station one hour behind ignored every profile (validFrom = startSchedule = now -
    # 60 s in our clock): its car drew 48 A on a 40 A grid; one hour ahead, its TxProfiles had
    # run out (validTo = now + 900 s) before they arrived.
    caplog.set_level(logging.WARNING)
    async with _served(tx_validity_s=900) as cs:
        station = K01Station(version, reject_tx=False)
        st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", version, answer=station).connect()

        def its_now(s: float = 0.0) -> str:
            return now_iso(pr.utcnow() + timedelta(seconds=skew_s + s))

        try:
            await st.boot()
            await eventually(lambda: cs.state.station("CP1").failsafe is not None)
            # the fail-safe, sent before any timestamp of the station was seen, is in force by its clock
            assert station.applies_a(1, None, offset_s=skew_s) == cs.state.station("CP1").failsafe.accepted_a == 8.0
            if version == "1.6":
                await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                                   "timestamp": its_now()})
                tx = (await st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                                       "timestamp": its_now()}))["transactionId"]
            else:
                await st.ok("StatusNotification", {"timestamp": its_now(), "connectorStatus": "Occupied",
                                                   "evseId": 1, "connectorId": 1})
                tx = "T-1"
                await st.ok("TransactionEvent", {"eventType": "Started", "timestamp": its_now(),
                                                 "triggerReason": "CablePluggedIn", "seqNo": 0,
                                                 "transactionInfo": {"transactionId": tx},
                                                 "evse": {"id": 1, "connectorId": 1}})
            await eventually(lambda: cs.state.running("CP1"))
            rec = await cs.set_limit("CP1", 1, 6.0)
            assert rec.purpose == pr.TX
            # by its own clock it applies what was sent, and what the state counts, for the TxProfile's life
            assert station.applies_a(1, tx, offset_s=skew_s) == rec.accepted_a == 6.0
            assert station.applies_a(1, tx, offset_s=skew_s + 850) == 6.0
            assert station.applies_a(1, tx, offset_s=skew_s + 950) == 8.0  # then its fail-safe again
            assert cs.state.station("CP1").clock.offset_s == pytest.approx(skew_s, abs=5)
            assert any("clock" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        finally:
            await st.close()


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


def _capped_site():
    from nowblock.block.site import Site

    return Site.from_dict({"name": "b", "fuses": [{"id": "grid", "max_current_a": [40.0] * 3}], "charge_points": [
        {"id": "CP1", "fuse": "grid", "max_current_a": 32.0, "phases": 3,
         "caps": [{"start": "00:00", "end": "24:00", "max_current_a": 10.0}]},
        {"id": "CP2", "fuse": "grid", "max_current_a": 32.0, "phases": 3}]})


async def _controlled(site, **cs_kw):
    """A started central system on ``site`` (fast retries, ``cs_kw``) with a controller stepping
    by hand (a period of an hour); returns (cs, ctl)."""
    from nowblock.control import attach
    from nowblock.ocpp.server import CentralSystem

    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1, **cs_kw)
    await cs.start()
    return cs, attach(cs, policy="equal", period_s=3600.0, min_replan_s=0.0, solve_timeout_s=2.0)


async def _two_cars(site, *, preparing: bool = True, **cs_kw):
    """A central system on ``site`` with a controller stepping by hand, CP1 and CP2 (raw 1.6,
    K01 logic) booted, each running a car (started after a stamped Preparing StatusNotification
    with ``preparing``), stamped by the central system's clock (``cs_kw`` ``clock``, else the
    wall clock); returns (cs, ctl, stations, answers, tx)."""
    cs, ctl = await _controlled(site, tx_validity_s=900, **cs_kw)
    clock = cs_kw.get("clock", pr.utcnow)
    answers = {cp: K01Station("1.6", reject_tx=False) for cp in ("CP1", "CP2")}
    st = {cp: RawStation(f"ws://127.0.0.1:{cs.port}", cp, "1.6", answer=answers[cp]) for cp in answers}
    tx = {}
    for cp, s in st.items():
        await s.connect()
        await s.boot()
        await eventually(lambda: cs.state.station(cp).failsafe is not None)
        if preparing:
            await s.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                              "timestamp": _iso(clock())})
        tx[cp] = (await s.ok("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                  "timestamp": _iso(clock())}))["transactionId"]
    return cs, ctl, st, answers, tx


async def test_a_car_at_a_station_whose_clock_went_1970_counts_at_its_points_rating():
    # rev1 H2 (/tmp/s36/rev1/r3_far_clock_cap.py, raw 1.6 frames): CP1 (32 A) has a 10 A cap
    # window all day, enforced by our profiles only. Its clock falls back to 1970: it applies
    # none of them, so its car may draw 32 A. It was counted at the cap's 10 A and CP2 sent
    # 30 A: 62 A on each phase of the 40 A grid.
    cs, ctl, st, answers, tx = await _two_cars(_capped_site())
    try:
        for when in (None, "1970-01-01T00:10:00.000Z"):
            for cp in st:
                await st[cp].ok("MeterValues", meter_16(1, tx[cp], amps=[8.0] * 3,
                                                        when=when if cp == "CP1" and when else _iso(pr.utcnow())))
            res = await ctl.step("manual")
        sid1, sid2 = f"CP1:{tx['CP1']}", f"CP2:{tx['CP2']}"
        assert not cs.state.station("CP1").clock.usable
        assert res.context.untrusted.get(sid1) == "offline"
        assert res.context.committed_a[sid1] == 32.0
        cp2 = answers["CP2"].applies_a(1, tx["CP2"])
        assert cp2 == res.current_a[sid2] and cp2 + 32.0 <= 40.0 + 0.05, cp2
    finally:
        for s in st.values():
            await s.close()
        await cs.stop()


async def test_a_car_at_an_offline_station_counts_at_what_it_holds_when_its_point_goes_out_of_service():
    # The same hole for a station that went offline: it keeps the TxProfile it holds (16 A);
    # the operator takes its point out of service meanwhile (we cannot tell it). Its car was
    # counted at the out-of-service 0 A raised to its draw (8 A), not at the 16 A it may take.
    cs, ctl, st, answers, tx = await _two_cars(make_test_site(
        2, grid_a=32.0, max_current_a=16.0))
    try:
        for cp in st:
            await st[cp].ok("MeterValues", meter_16(1, tx[cp], amps=[8.0] * 3, when=_iso(pr.utcnow())))
        await ctl.step("manual")
        rec = await cs.set_limit("CP1", 1, 16.0, transaction_id=tx["CP1"])
        held = answers["CP1"].applies_a(1, tx["CP1"])
        assert rec.accepted_a == held == 16.0
        await st["CP1"].close()
        await eventually(lambda: not cs.state.station("CP1").connected)
        ctl.operator.set_in_service("CP1", False, reason="test")
        res = await ctl.step("manual")
        sid1 = f"CP1:{tx['CP1']}"
        assert res.context.untrusted.get(sid1) == "offline"
        assert res.context.committed_a[sid1] >= held
        cp2 = answers["CP2"].applies_a(1, tx["CP2"])
        assert cp2 + held <= 32.0 + 0.05, cp2
    finally:
        for s in st.values():
            await s.close()
        await cs.stop()


def test_a_tie_an_hour_wide_leaves_the_clock_unusable(caplog):
    # rev1 M2 (/tmp/s36/rev1/r2_clock_cases.py case B): StatusNotifications in local time
    # marked Z (+3600 s), MeterValues right, one of each every 2 min. The tie went to the higher
    # offset: +3600 s on every CALL, TxProfiles that would outlive the central system by an hour
    # (4500 s for 900); had it gone to the lower one they would expire on arrival if the status
    # stamps were right. Neither can be known: the clock is unusable, as one a day off.
    import logging

    caplog.set_level(logging.INFO)
    c = ClockOffset()
    now, usable = T0, []
    for m in range(60):
        for ahead in (3600, 0):
            c.observe({"timestamp": _iso(now + timedelta(seconds=ahead))}, now, "CP1")
            usable.append(c.usable)
            now += timedelta(seconds=60)
    assert not any(usable[8:]) and c.split_s == pytest.approx(3600.0, abs=1.0) and c.far_s is None
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "disagree" in r.getMessage()]
    assert len(warned) == 1 and warned[0].getMessage().startswith("CP1:")
    # the station's clock is mended: its stamps agree, the clock is usable again
    for k in range(6):
        c.observe({"timestamp": _iso(now)}, now, "CP1")
        now += timedelta(seconds=60)
    assert c.usable and c.offset_s == pytest.approx(0.0, abs=1.0)
    # a tie closer than the refresh margin still goes to the higher offset (usable)
    c = ClockOffset()
    for m in range(20):
        for ahead in (120, 0):
            c.observe({"timestamp": _iso(now + timedelta(seconds=ahead))}, now, "CP1")
            now += timedelta(seconds=60)
    assert c.usable and c.offset_s == pytest.approx(120.0, abs=1.0)


async def test_a_station_whose_stamps_tie_an_hour_apart_has_its_car_counted_at_its_maximum():
    # rev1 M2 through the live loop (raw 1.6 frames): CP1 stamps its StatusNotifications an
    # hour ahead and its MeterValues right, alternately, a minute apart. Its car was trusted at
    # the limit it accepted (placed +3600 s in its clock) and CP2 got the rest of the 24 A grid.
    now = [pr.utcnow().replace(microsecond=0)]
    cs, ctl, st, answers, tx = await _two_cars(make_test_site(2, grid_a=24.0, max_current_a=16.0), preparing=False,
                                               clock=lambda: now[0])
    try:
        for m in range(6):
            now[0] += timedelta(seconds=60)
            await st["CP1"].ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging",
                                                      "timestamp": _iso(now[0] + timedelta(hours=1))})
            now[0] += timedelta(seconds=60)
            for cp in st:
                await st[cp].ok("MeterValues", meter_16(1, tx[cp], amps=[6.0] * 3, when=_iso(now[0])))
        assert not cs.state.station("CP1").clock.usable
        res = await ctl.step("manual")
        sid1, sid2 = f"CP1:{tx['CP1']}", f"CP2:{tx['CP2']}"
        assert res.context.untrusted.get(sid1) == "offline"
        assert res.context.committed_a[sid1] == 16.0
        cp2 = pr.active_limit_a(answers["CP2"].held, 1, now[0], transaction_id=tx["CP2"])
        assert cp2 == res.current_a[sid2] and cp2 + 16.0 <= 24.0 + 0.05, cp2
        alarms = [a for a in ctl.alarms if a["kind"] == "station_clock"]
        assert [a["charge_point_id"] for a in alarms] == ["CP1"]
    finally:
        for s in st.values():
            await s.close()
        await cs.stop()


def test_one_stamp_queued_before_a_reset_does_not_clear_a_1970_clock():
    # rev1 suspected (/tmp/s36/m4/s1_far_cleared.py): a station reset to 1970 replays a
    # MeterValues it queued before its reset, stamped 5 min ago by its right clock: that one stamp
    # cleared the flag (usable True) until its next CALL, its cars trusted at what they accepted.
    c = ClockOffset()
    for i in range(-5, 0):
        now = T0 + timedelta(seconds=60 * i)
        c.observe({"timestamp": _iso(now)}, now, "CP1")
    epoch = datetime(1970, 1, 1, 0, 5, tzinfo=timezone.utc)
    for i in range(3):
        c.observe({"timestamp": _iso(epoch + timedelta(seconds=60 * i))}, T0 + timedelta(seconds=60 * i), "CP1")
    for k in range(3):  # its queue, replayed one per 2 s
        c.observe({"meterValue": [{"timestamp": _iso(T0 - timedelta(seconds=300 - 10 * k))}]},
                  T0 + timedelta(seconds=181 + 2 * k), "CP1")
        assert not c.usable and c.far_s < -50 * 365 * 86400.0
    # its clock set (NTP): usable once its time is confirmed, 3 CALLs over a minute or more
    seen = []
    for k in range(3):
        now = T0 + timedelta(seconds=240 + 60 * k)
        c.observe({"timestamp": _iso(now)}, now, "CP1")
        seen.append(c.usable)
    assert seen == [False, False, True]


async def test_a_1970_station_replaying_a_message_queued_before_its_reset_keeps_its_car_at_the_maximum():
    # The same over WebSocket through the live loop (raw 1.6 frames): CP1's clock goes 1970,
    # then it sends a MeterValues it queued before (stamped 5 min ago): its car was trusted again
    # at the 20 A it had accepted (placed in a clock it does not have).
    cs, ctl, st, answers, tx = await _two_cars(make_test_site(2, grid_a=40.0, max_current_a=32.0))
    try:
        for cp in st:
            await st[cp].ok("MeterValues", meter_16(1, tx[cp], amps=[8.0] * 3, when=_iso(pr.utcnow())))
        await st["CP1"].ok("MeterValues", meter_16(1, tx["CP1"], amps=[8.0] * 3, when="1970-01-01T00:10:00.000Z"))
        await st["CP1"].ok("MeterValues", meter_16(1, tx["CP1"], amps=[8.0] * 3,
                                                   when=_iso(pr.utcnow() - timedelta(seconds=300))))
        res = await ctl.step("manual")
        sid1, sid2 = f"CP1:{tx['CP1']}", f"CP2:{tx['CP2']}"
        assert not cs.state.station("CP1").clock.usable
        assert res.context.untrusted.get(sid1) == "offline" and res.context.committed_a[sid1] == 32.0
        cp2 = answers["CP2"].applies_a(1, tx["CP2"])
        assert cp2 == res.current_a[sid2] and cp2 + 32.0 <= 40.0 + 0.05, cp2
    finally:
        for s in st.values():
            await s.close()
        await cs.stop()


async def test_a_station_stamping_nothing_since_its_boot_has_its_idle_connector_at_its_maximum():
    # rev1 suspected (/tmp/s36/m4/s3_no_stamp_1970.py, raw 1.6 frames): a station reset to 1970
    # whose StatusNotification carries no timestamp (optional in 1.6) and that heartbeats is never
    # found 1970: its idle connector counted at the 20 A fail-safe, which its clock does not apply
    # (validFrom decades ahead), so a car plugging in draws the point's 32 A until a step after
    # its StartTransaction.
    cs, ctl = await _controlled(make_test_site(2, grid_a=40.0, max_current_a=32.0))
    k = K01Station("1.6", reject_tx=False)
    s = RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "1.6", answer=k)
    try:
        await s.connect()
        await s.boot()
        await eventually(lambda: cs.state.station("CP1").failsafe is not None)
        await s.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"})
        await s.ok("Heartbeat", {})
        fs = cs.state.station("CP1").failsafe.accepted_a
        assert fs is not None and fs < 32.0
        assert pr.active_limit_a(k.held, 1, datetime(1970, 1, 1, 0, 5, tzinfo=timezone.utc)) is None
        res = await ctl.step("manual")
        assert ctl.source.idle_defaults_a(res.time)[("CP1", 1)] == 32.0
        # it stamps a CALL by a right clock: the fail-safe it holds counts again
        await s.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available",
                                          "timestamp": _iso(pr.utcnow())})
        res = await ctl.step("manual")
        assert ctl.source.idle_defaults_a(res.time)[("CP1", 1)] == fs
    finally:
        await s.close()
        await cs.stop()
