"""A station's clock offset (nowblock.ocpp.edge.ClockOffset): voted on by its recent live
bursts, so that neither a minority of wrong stamps, nor a wrong first stamp, nor a queue replayed
after an outage moves it, and a real clock step is followed within a few CALLs; a clock more than
a day off is said, alarmed, and its cars counted at their maximum.

A station's clock offset is estimated from its live messages only: what it queued while
offline (minutes old on arrival) says nothing of its clock.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest
from interop.station import RawStation, meter_16, now_iso
from test_live_fallback_default import K01Station, _served

from nowblock.control import attach
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.edge import ClockOffset
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site


T0 = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _tx_life_s(offset_est_s: float, its_offset_s: float, validity_s: int = 900) -> float:
    """[s of our clock] How long a TxProfile sent at T0 with the estimate ``offset_est_s`` stays in
    force at a station whose clock is ours + ``its_offset_s`` (0: expired on arrival)."""
    p = pr.Profile.from_payload(1, pr.in_station_clock(pr.build_profile(
        "1.6", pr.TX, 16.0, connector_id=1, now=T0, validity_s=validity_s, transaction_id=1), offset_est_s))
    t = 0
    while p.limit_at(T0 + timedelta(seconds=its_offset_s + t), None, 230.0, 3) is not None and t < 10 * 86400:
        t += 10
    return t


def _z_bug_station(c: ClockOffset, wrong_first: bool, hours: float = 2.0) -> list[float]:
    """A right clock sending a message every 60 s; every other minute one more, stamped an hour
    ahead (local time marked Z), one second before (``wrong_first``) or after the right one. The
    very first message is a wrong one when ``wrong_first``. Returns the estimate after each CALL."""
    out = []
    for t in range(0, int(hours * 3600), 60):
        now = T0 + timedelta(seconds=t)
        msgs = [(now, 2.0)]
        if t % 120 == 0:
            msgs.insert(0 if wrong_first else 1, (now + timedelta(seconds=3600), 1.0 if wrong_first else 3.0))
        for stamp, late in msgs:
            c.observe({"timestamp": _iso(stamp)}, now + timedelta(seconds=late), "CP1")
            out.append(c.offset_s)
    return out


@pytest.mark.parametrize("wrong_first", [True, False])
def test_a_third_of_stamps_an_hour_off_does_not_pin_the_estimate(wrong_first):
    # Review R3 M1 (session 35): a station stamping some messages in local time marked Z, the
    # first one among them, pinned the estimate at +3600 s for good (a stamp older than the
    # previous sample was taken for a queued one); its TxProfiles then lived 4500 s by its clock
    # if the central system died, not 900.
    c = ClockOffset()
    est = _z_bug_station(c, wrong_first)
    assert c.offset_s == pytest.approx(-2.0, abs=1.0)
    assert _tx_life_s(c.offset_s, 0.0) == pytest.approx(900, abs=10)
    # the wrong stamps win at most while the station's first few bursts are all there is
    assert sum(e > 1800 for e in est) <= 6, [i for i, e in enumerate(est) if e > 1800]
    assert all(abs(e) < 5 for e in est[12:])


@pytest.mark.parametrize("before_s, after_s", [(0, 3600), (-120, 0), (0, 600), (3600, 0), (0, -3600)])
def test_a_clock_step_is_followed_within_four_calls(before_s, after_s):
    # Review R2 M3 (session 35): a clock stepped forward (NTP, a time zone set) was followed after
    # 8 live CALLs; meanwhile each TxProfile sent had expired on arrival by the station's clock
    # (0 s of 900), and the station applied its fail-safe while the TxProfile was counted.
    c = ClockOffset()
    for i in range(-15, 0):
        now = T0 + timedelta(seconds=60 * i)
        c.observe({"timestamp": _iso(now + timedelta(seconds=before_s))}, now, "CP1")
    assert c.offset_s == pytest.approx(before_s, abs=1.0)
    seen = []
    for k in range(4):
        now = T0 + timedelta(seconds=60 * k)
        c.observe({"timestamp": _iso(now + timedelta(seconds=after_s))}, now, "CP1")
        seen.append(c.offset_s)
    assert seen[-1] == pytest.approx(after_s, abs=1.0), seen
    # one stepped CALL is not yet a step (a single wrong stamp must not move it)
    assert seen[0] == pytest.approx(before_s, abs=1.0), seen


def test_a_slow_station_is_followed_within_four_calls_and_old_candidates_expire():
    # A station heard every 5 minutes (a heartbeat-only station's StatusNotifications): a clock
    # set back 900 s was followed after 9 CALLs (45 minutes).
    c = ClockOffset()
    for i in range(-12, 0):
        now = T0 + timedelta(seconds=300 * i)
        c.observe({"timestamp": _iso(now)}, now, "CP1")
    for i in range(4):
        now = T0 + timedelta(seconds=300 * i)
        c.observe({"timestamp": _iso(now - timedelta(seconds=900))}, now, "CP1")
    assert c.offset_s == pytest.approx(-900.0, abs=1.0)
    # Candidates expire after minutes: two stamps an hour ahead, then a quiet 31 minutes; a third
    # one does not tie with the estimate's last bursts (it would win the tie, being higher).
    c = ClockOffset()
    for i in range(8):
        now = T0 + timedelta(seconds=60 * i)
        c.observe({"timestamp": _iso(now)}, now, "CP1")
    for i in (8, 9):
        now = T0 + timedelta(seconds=60 * i)
        c.observe({"timestamp": _iso(now + timedelta(hours=1))}, now, "CP1")
    now = T0 + timedelta(seconds=60 * 9 + 31 * 60)
    c.observe({"timestamp": _iso(now + timedelta(hours=1))}, now, "CP1")
    assert c.offset_s == pytest.approx(0.0, abs=1.0)


def test_a_long_replay_after_an_outage_does_not_move_it():
    # ea413fa's protection kept for a replay longer than one burst: a station back after 50 min
    # sends one live StatusNotification, then 300 queued MeterValues (every 10 s of the outage),
    # one per 100 ms round trip (30 s: six bursts), then live ones every 60 s.
    c = ClockOffset()
    c.observe({"timestamp": _iso(T0)}, T0, "CP1")
    for k in range(300):
        at = T0 + timedelta(seconds=0.5 + 0.1 * k)
        c.observe({"transactionId": 1, "meterValue": [{"timestamp": _iso(T0 - timedelta(seconds=3000 - 10 * k))}]},
                  at, "CP1")
        assert _tx_life_s(c.offset_s, 0.0) >= 600, (k, c.offset_s)
    for k in range(1, 4):
        now = T0 + timedelta(seconds=30 + 60 * k)
        c.observe({"timestamp": _iso(now)}, now, "CP1")
        assert c.offset_s == pytest.approx(0.0, abs=1.0)


def test_one_bogus_stamp_in_a_chatty_stream_does_not_move_it():
    c = ClockOffset()
    for k in range(200):  # a message every 2 s; one of them stamped 23 h ahead
        now = T0 + timedelta(seconds=2 * k)
        c.observe({"timestamp": _iso(now + timedelta(hours=23 if k == 100 else 0))}, now, "CP1")
        assert c.offset_s == pytest.approx(0.0, abs=1.0), k


async def test_a_station_stamping_its_status_in_local_time_gets_profiles_by_its_real_clock():
    # R3 M1 through a central system over WebSocket (raw 1.6 frames): the station's first
    # StatusNotification and every other one carry local time marked Z (an hour ahead), its
    # transaction messages UTC. Its TxProfile must end 900 s after it was sent by its clock
    # (it ended 4500 s after: an hour of a stale limit after the central system dies).
    now = [T0]
    async with _served(tx_validity_s=900, clock=lambda: now[0]) as cs:
        station = K01Station("1.6", reject_tx=False)
        st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "1.6", answer=station).connect()
        try:
            await st.boot()
            await eventually(lambda: cs.state.station("CP1").failsafe is not None)

            async def status(state: str):
                await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": state,
                                                   "timestamp": _iso(now[0] + timedelta(hours=1))})

            await status("Preparing")
            now[0] += timedelta(seconds=1)
            tx = (await st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                                   "timestamp": _iso(now[0])}))["transactionId"]
            for minute in range(1, 9):
                now[0] = T0 + timedelta(seconds=60 * minute)
                if minute % 2 == 0:
                    await status("Charging")
                    now[0] += timedelta(seconds=1)
                await st.ok("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
                    {"timestamp": _iso(now[0]), "sampledValue": [{"value": str(100 * minute)}]}]})
            assert cs.state.station("CP1").clock.offset_s == pytest.approx(0.0, abs=2.0)
            rec = await cs.set_limit("CP1", 1, 6.0)
            assert rec.purpose == pr.TX and rec.accepted_a == 6.0
            sent_at = now[0]

            def applies(after_s: float):
                return pr.active_limit_a(station.held, 1, sent_at + timedelta(seconds=after_s), transaction_id=tx)

            assert applies(10) == 6.0 and applies(850) == 6.0
            assert applies(950) == cs.state.station("CP1").failsafe.accepted_a == 8.0
        finally:
            await st.close()


def test_a_clock_more_than_a_day_off_is_flagged_warned_and_cleared(caplog):
    # Review R2 M3 (session 35): a station reset to 1970 (a reboot without a battery) was dropped
    # without a word: no profile is in force by its clock, the fail-safe neither.
    caplog.set_level(logging.INFO)
    c = ClockOffset()
    for i in range(-3, 0):
        now = T0 + timedelta(seconds=60 * i)
        c.observe({"timestamp": _iso(now)}, now, "CP1")
    assert c.usable and c.far_s is None
    epoch = datetime(1970, 1, 1, 0, 5, tzinfo=timezone.utc)
    for i in range(5):
        c.observe({"timestamp": _iso(epoch + timedelta(seconds=60 * i))}, T0 + timedelta(seconds=60 * i), "CP1")
        assert not c.usable and c.far_s == pytest.approx((epoch - T0).total_seconds(), abs=60)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "days off" in r.getMessage()]
    assert len(warned) == 1 and "CP1" in warned[0].getMessage()
    assert c.offset_s == pytest.approx(0.0, abs=1.0)  # not moved by it
    # its clock is set (NTP, or the BootNotification's currentTime): usable once that time is
    # confirmed, 3 CALLs over a minute or more (one may be a message queued before the reset)
    for k in range(3):
        now = T0 + timedelta(seconds=300 + 30 * k)
        c.observe({"timestamp": _iso(now)}, now, "CP1")
        assert c.usable == (k == 2) and (c.far_s is None) == (k == 2)
    assert any("within a day" in r.getMessage() for r in caplog.records)


async def test_a_station_reset_to_1970_has_its_cars_counted_at_their_maximum(caplog):
    # R2 M3 through the live loop (raw 1.6 frames): CP2 stamps 1970 and applies no profile by its
    # clock, so its car draws its 16 A; CP3 stamps 1970 too and has no car. CP2's car was counted
    # at the 13.5 A it accepted (trusted), CP3's idle connector at its 0 A idle default; once
    # CP2's car was seen over its limit CP1 got 16 A: with a car plugging in at CP3 (16 A by its
    # clock) 48 A on a 40 A grid (/tmp/s36/h1/repro_1970b.py).
    caplog.set_level(logging.WARNING)
    site = make_test_site(3, grid_a=40.0, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1, tx_validity_s=900)
    await cs.start()
    ctl = attach(cs, policy="equal", period_s=3600.0, min_replan_s=0.0, solve_timeout_s=2.0)
    skew = {"CP1": 0.0, "CP2": (datetime(1970, 1, 1, 0, 5, tzinfo=timezone.utc) - pr.utcnow()).total_seconds()}
    skew["CP3"] = skew["CP2"]
    answers = {cp: K01Station("1.6", reject_tx=False) for cp in skew}
    st = {cp: RawStation(f"ws://127.0.0.1:{cs.port}", cp, "1.6", answer=answers[cp]) for cp in skew}
    try:
        tx = {}
        for cp, s in st.items():
            await s.connect()
            await s.boot()
            await eventually(lambda: cs.state.station(cp).failsafe is not None)
            its = now_iso(pr.utcnow() + timedelta(seconds=skew[cp]))
            await s.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                              "status": "Available" if cp == "CP3" else "Preparing", "timestamp": its})
            if cp != "CP3":
                tx[cp] = (await s.ok("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                          "timestamp": its}))["transactionId"]
        for _ in range(2):
            res = await ctl.step("manual")
            for cp in tx:  # each car draws what its station applies by its own clock (none: 16 A)
                lim = answers[cp].applies_a(1, tx[cp], offset_s=skew[cp])
                amps = 16.0 if lim is None else min(16.0, lim)
                when = now_iso(pr.utcnow() + timedelta(seconds=skew[cp]))
                await st[cp].ok("MeterValues", meter_16(1, tx[cp], amps=[amps] * 3, when=when))
            sid1, sid2 = f"CP1:{tx['CP1']}", f"CP2:{tx['CP2']}"
            assert res.context.untrusted.get(sid2) == "offline"
            assert res.context.committed_a[sid2] == 16.0
            assert ctl.source.idle_defaults_a(res.time)[("CP3", 1)] == 16.0
            cp1 = answers["CP1"].applies_a(1, tx["CP1"])
            assert cp1 == res.current_a[sid1] and cp1 + 16.0 + 16.0 <= 40.0 + 0.05
        alarms = [a for a in ctl.alarms if a["kind"] == "station_clock"]
        assert sorted(a["charge_point_id"] for a in alarms) == ["CP2", "CP3"]
        warned = [r.getMessage() for r in caplog.records if "days off" in r.getMessage()]
        assert len([m for m in warned if m.startswith("CP2:")]) == 1, warned
    finally:
        for s in st.values():
            await s.close()
        await cs.stop()


def test_a_station_reset_within_a_busy_burst_is_flagged():
    # Its reading of 1970 came as the tenth CALL of a 5 s burst, the lowest stamp of it: the
    # burst keeps its 8 newest stamps and dropped that one, and with it the flag.
    c = ClockOffset()
    for k in range(9):
        at = T0 + timedelta(seconds=0.3 * k)
        c.observe({"timestamp": _iso(at)}, at, "CP1")
    at = T0 + timedelta(seconds=3)
    c.observe({"timestamp": "1970-01-01T00:00:10Z"}, at, "CP1")
    assert not c.usable and c.far_s < -50 * 365 * 86400.0


NOW = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)


def _at(s: float) -> str:
    return pr.iso(NOW + timedelta(seconds=s))


def _tx_limit_by_its_clock(offset_est_s: float, its_offset_s: float, after_s: float, limit_a: float = 0.0):
    """What a station whose clock is ours + ``its_offset_s`` applies ``after_s`` after a
    TxProfile of ``limit_a`` sent now under its 8 A fail-safe (by its own clock)."""
    fs = pr.Profile.from_payload(0, pr.build_profile("1.6", pr.TX_DEFAULT, 8.0, connector_id=0,
                                                     now=NOW - timedelta(hours=2), validity_s=7 * 86400))
    tx = pr.build_profile("1.6", pr.TX, limit_a, connector_id=1, now=NOW, transaction_id=1, validity_s=900)
    held = [fs, pr.Profile.from_payload(1, pr.in_station_clock(tx, offset_est_s))]
    return pr.active_limit_a(held, 1, NOW + timedelta(seconds=its_offset_s + after_s), transaction_id=1)


def test_a_reconnect_burst_of_queued_meter_values_is_not_a_clock_offset(caplog):
    # Review of 65c86de (clock.py 3, 3b): ten MeterValues sampled over the last 50 minutes, sent
    # on reconnect, then a live StatusNotification: the estimate was -1500 s for a right clock,
    # a TxProfile pausing the car (0 A) had expired on arrival and the station applied its 8 A
    # fail-safe while 0 A were counted; six clock WARNINGs in the burst.
    caplog.set_level(logging.INFO)
    c = ClockOffset()
    for i in range(10):
        c.observe({"meterValue": [{"timestamp": _at(-3000 + 300 * i)}]}, NOW, "CP1")
    c.observe({"timestamp": _at(0)}, NOW + timedelta(seconds=0.05), "CP1")
    assert c.offset_s == pytest.approx(0.0, abs=1.0)
    assert _tx_limit_by_its_clock(c.offset_s, 0.0, 10) == 0.0
    assert _tx_limit_by_its_clock(c.offset_s, 0.0, 850) == 0.0
    assert not [r for r in caplog.records if "clock" in r.getMessage() and r.levelno >= logging.WARNING]


def test_queued_messages_after_live_ones_and_2_0_1_offline_ones_are_not_taken():
    c = ClockOffset()
    for k in range(5):  # live, every 10 s
        c.observe({"timestamp": _at(10 * k)}, NOW + timedelta(seconds=10 * k))
    live = c.samples
    # then queued messages, older than the last live one (1.6 sends them as they are)
    for k in range(20):
        c.observe({"transactionId": 1, "timestamp": _at(-1200 + 10 * k)}, NOW + timedelta(seconds=41 + 0.02 * k))
    # 2.0.1 says so itself: offline true, whatever their timestamps
    for k in range(20):
        c.observe({"eventType": "Updated", "offline": True, "timestamp": _at(30 + k)},
                  NOW + timedelta(seconds=600 + 0.02 * k))
    assert c.samples == live and c.offset_s == pytest.approx(0.0, abs=1.0)


def test_an_hour_off_is_still_found_and_warned_once(caplog):
    # what 65c86de fixed stays fixed (a station an hour behind; 15 samples for a step forward)
    caplog.set_level(logging.WARNING)
    c = ClockOffset()
    for k in range(30):
        c.observe({"timestamp": _at(-3600 + 10 * k)}, NOW + timedelta(seconds=10 * k), "CP1")
    assert c.offset_s == pytest.approx(-3600.0, abs=1.0)
    assert len([r for r in caplog.records if "clock" in r.getMessage()]) == 1
    # its clock is set right: followed once most samples are the new ones (no live message is
    # taken for a queued one: each is newer than the last)
    for k in range(30, 38):
        c.observe({"timestamp": _at(10 * k)}, NOW + timedelta(seconds=10 * k), "CP1")
    assert c.offset_s == pytest.approx(0.0, abs=1.0)
