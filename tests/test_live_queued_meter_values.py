"""A 1.6 station's MeterValues queued before a reboot and replayed after its BootNotification
(raw frames over 127.0.0.1, a real central system and controller): they name a transaction the
reboot ended, so they revive no orphan; a meter value taken after the boot still does."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from interop.station import RawStation, meter_16, now_iso

from nowblock.control import attach
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site


class RunsOnly:
    """Accepts a TxProfile only for a transaction it runs (as after a reboot: none)."""

    def __init__(self):
        self.running, self.tx_answers = set(), []

    def __call__(self, action, p):
        if action == "SetChargingProfile" and p["csChargingProfiles"]["chargingProfilePurpose"] == "TxProfile":
            ok = p["csChargingProfiles"].get("transactionId") in self.running
            self.tx_answers.append((p["csChargingProfiles"].get("transactionId"), ok))
            return {"status": "Accepted" if ok else "Rejected"}
        if action == "GetConfiguration":
            return {"configurationKey": []}
        return {"status": "Accepted"}


async def test_meter_values_queued_before_a_reboot_revive_no_orphan(tmp_path):
    # They revived the orphan of the transaction the reboot ended: two or three TxProfiles sent
    # for it, Rejected, and its connector counted at their limit until its StopTransaction came
    # (/tmp/s37/h1/repro3_queued_revive.py).
    site = make_test_site(1, grid_a=32.0, max_current_a=16.0)
    cs, ctl = await _up(site, str(tmp_path / "block.sqlite"))
    stn = RunsOnly()
    url = f"ws://127.0.0.1:{cs.port}"
    st = await RawStation(url, "CP1", "1.6", answer=stn).connect()
    try:
        await st.boot()
        await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                           "timestamp": now_iso()})
        tx = (await st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                               "timestamp": now_iso()}))["transactionId"]
        stn.running.add(tx)
        await st.ok("MeterValues", meter_16(1, tx, amps=[10, 10, 10], energy_wh=100.0))
        await eventually(lambda: any(ok for _, ok in stn.tx_answers), timeout_s=10)
        await st.close()  # its network is lost: it queues two MeterValues of tx, then reboots
        off = datetime.now(timezone.utc)
        queue = [meter_16(1, tx, amps=[10, 10, 10], energy_wh=200.0 + 100 * k,
                          when=now_iso(off + timedelta(seconds=1 + k / 2))) for k in range(2)]
        await asyncio.sleep(5.0)  # its reboot
        stn.running.clear()
        st = await RawStation(url, "CP1", "1.6", answer=stn).connect()
        await st.boot()
        t = cs.state.transaction("CP1", tx)
        assert t.orphaned
        n = len(stn.tx_answers)
        for p in queue:
            await st.ok("MeterValues", p)
        assert t.energy_register_wh == 300.0  # read, ...
        assert t.orphaned  # ... but names no transaction the station runs now
        await asyncio.sleep(3.0)  # steps at 1 s
        assert stn.tx_answers[n:] == []
        # A station that goes on with it after the boot names it in a meter value taken since.
        stn.running.add(tx)
        await st.ok("MeterValues", meter_16(1, tx, amps=[10, 10, 10], energy_wh=400.0))
        assert not t.orphaned
        await eventually(lambda: any(ok for _, ok in stn.tx_answers[n:]), timeout_s=10)
    finally:
        await st.close()
        await ctl.stop()
        await cs.stop()


async def _up(site, db):
    """A central system on a free port with a controller storing to ``db`` (one process's life)."""
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    ctl = attach(cs, db=db, policy="equal", period_s=1.0, min_replan_s=0.1, solve_timeout_s=0.8,
                 profile_validity_s=60.0)
    await ctl.start()
    return cs, ctl


async def test_a_restored_transaction_of_a_station_behind_us_is_revived_after_a_restart_and_reboot(tmp_path):
    # Review rev2: the boot was placed in the station's clock by the estimate held then, 0 after
    # a restart of the central system; a station 600 s behind had every live MeterValues judged
    # queued before its boot for 600 s, its restored transaction an orphan (no TxProfile, its
    # car counted at the point's maximum) although named every second.
    behind = timedelta(seconds=600)

    def snow():
        return datetime.now(timezone.utc) - behind

    site = make_test_site(1, grid_a=32.0, max_current_a=16.0)
    db = str(tmp_path / "block.sqlite")

    stn = RunsOnly()
    cs, ctl = await _up(site, db)
    st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "1.6", answer=stn).connect()
    try:
        await st.boot()
        await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                           "timestamp": now_iso(snow())})
        tx = (await st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                               "timestamp": now_iso(snow())}))["transactionId"]
        stn.running.add(tx)
        await st.ok("MeterValues", meter_16(1, tx, amps=[10, 10, 10], energy_wh=100.0, when=now_iso(snow())))
        await eventually(lambda: any(ok for _, ok in stn.tx_answers), timeout_s=10)
    finally:
        await st.close()
        await ctl.stop()
        await cs.stop()
    # A power cut: the central system restarts and the station reboots, going on with tx.
    cs, ctl = await _up(site, db)
    st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "1.6", answer=stn).connect()
    try:
        await st.boot()
        t = cs.state.transaction("CP1", tx)
        assert t.orphaned
        n = len(stn.tx_answers)
        await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging",
                                           "timestamp": now_iso(snow())})
        assert cs.state.stations["CP1"].clock.offset_s < -590  # learnt from a live stamp
        await st.ok("MeterValues", meter_16(1, tx, amps=[10, 10, 10], energy_wh=200.0, when=now_iso(snow())))
        assert not t.orphaned  # named in a meter value taken after the boot
        await eventually(lambda: any(ok for _, ok in stn.tx_answers[n:]), timeout_s=10)
    finally:
        await st.close()
        await ctl.stop()
        await cs.stop()


async def test_a_replay_first_after_a_restart_and_reboot_revives_no_ended_transaction(tmp_path):
    # m9 (/tmp/s38/h2/repro3_replay_first.py): the central system restarts and the station reboots
    # (a power cut); its StatusNotification carries no timestamp, so its first stamped CALL is the
    # replay of MeterValues it queued before the reboot, 60 s old. The clock estimate, empty after
    # the restart, learnt the replay's age from the replay itself: judged by it, the replay was
    # live and revived the transaction the reboot ended (1 TxProfile sent for it, Rejected) until
    # its queued StopTransaction. By the station's clock before the boot (the store's) it is queued.
    site = make_test_site(1, grid_a=32.0, max_current_a=16.0)
    db = str(tmp_path / "block.sqlite")

    stn = RunsOnly()
    cs, ctl = await _up(site, db)
    st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "1.6", answer=stn).connect()
    try:
        await st.boot()
        tx = (await st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                               "timestamp": now_iso()}))["transactionId"]
        stn.running.add(tx)
        await st.ok("MeterValues", meter_16(1, tx, amps=[10, 10, 10], energy_wh=10.0))
        await eventually(lambda: any(ok for _, ok in stn.tx_answers), timeout_s=10)
    finally:
        await st.close()
        await ctl.stop()
        await cs.stop()
    old = datetime.now(timezone.utc) - timedelta(seconds=60)  # its last two values, queued
    stn.running.clear()  # the reboot ended tx
    cs, ctl = await _up(site, db)
    st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "1.6", answer=stn).connect()
    try:
        await st.boot()
        n = len(stn.tx_answers)
        await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"})
        for k in range(2):
            await st.ok("MeterValues", meter_16(1, tx, amps=[10, 10, 10], energy_wh=20.0 + k,
                                                when=now_iso(old + timedelta(seconds=k))))
        t = cs.state.transaction("CP1", tx)
        assert t.energy_register_wh == 21.0  # read, ...
        assert t.orphaned  # ... but names no transaction the station runs now
        await asyncio.sleep(3.0)  # steps at 1 s
        assert [a for a in stn.tx_answers[n:] if a[0] == tx] == []
        await st.ok("StopTransaction", {"transactionId": tx, "meterStop": 21, "timestamp": now_iso(old)})
        assert t.stop is not None
    finally:
        await st.close()
        await ctl.stop()
        await cs.stop()


async def test_a_replay_of_a_station_ahead_of_us_revives_no_ended_transaction(tmp_path):
    # Review rev1 F1 (/tmp/s38/rev1/r5_replay_ahead.py): no restart of ours; a station 10 s ahead
    # queues two MeterValues of tx while offline, reboots and replays them 4 s later. The boot was
    # placed in its clock by ours as well as by its own (min(offset, 0)): by ours its stamps lay
    # after the boot, the replay was live and revived tx (2 Rejected TxProfiles).
    ahead = timedelta(seconds=10)

    def snow():
        return datetime.now(timezone.utc) + ahead

    site = make_test_site(1, grid_a=32.0, max_current_a=16.0)
    cs, ctl = await _up(site, str(tmp_path / "block.sqlite"))
    stn = RunsOnly()
    url = f"ws://127.0.0.1:{cs.port}"
    st = await RawStation(url, "CP1", "1.6", answer=stn).connect()
    try:
        await st.boot()
        await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                           "timestamp": now_iso(snow())})
        tx = (await st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                               "timestamp": now_iso(snow())}))["transactionId"]
        stn.running.add(tx)
        for k in range(3):
            await st.ok("MeterValues", meter_16(1, tx, amps=[10, 10, 10], energy_wh=100.0 + k, when=now_iso(snow())))
        await eventually(lambda: any(ok for _, ok in stn.tx_answers), timeout_s=10)
        assert cs.state.stations["CP1"].clock.offset_s > 9.0
        await st.close()
        off = snow()
        queue = [meter_16(1, tx, amps=[10, 10, 10], energy_wh=200.0 + 100 * k,
                          when=now_iso(off + timedelta(seconds=1 + k / 2))) for k in range(2)]
        await asyncio.sleep(5.0)  # its reboot
        stn.running.clear()
        st = await RawStation(url, "CP1", "1.6", answer=stn).connect()
        await st.boot()
        t = cs.state.transaction("CP1", tx)
        n = len(stn.tx_answers)
        for p in queue:
            await st.ok("MeterValues", p)
        assert t.energy_register_wh == 300.0  # read, ...
        assert t.orphaned  # ... but names no transaction the station runs now
        await asyncio.sleep(3.0)  # steps at 1 s
        assert [a for a in stn.tx_answers[n:] if a[0] == tx] == []
        # A value it takes after the boot, in the same clock, still names tx as running.
        stn.running.add(tx)
        await st.ok("MeterValues", meter_16(1, tx, amps=[10, 10, 10], energy_wh=400.0, when=now_iso(snow())))
        assert not t.orphaned
    finally:
        await st.close()
        await ctl.stop()
        await cs.stop()
