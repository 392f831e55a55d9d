"""The central system over real WebSockets on 127.0.0.1 with simulated chargers of both versions."""

import asyncio
import json
from datetime import timedelta

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from nowblock.seam import CAR_COLUMNS
from nowblock.ocpp import profiles as pr
from nowblock.testing import central_system, chargers, drain_kinds, eventually, make_test_site
from nowblock.sim.chargers import Car, Quirks

VERSIONS = ["1.6", "2.0.1"]
FAST = dict(backoff_s=0.01, response_timeout_s=2.0)


@pytest.mark.parametrize("version", VERSIONS)
async def test_session_life_cycle(version):
    site = make_test_site(2, grid_a=63)
    async with central_system(site, control="equal", **FAST) as cs:
        events = cs.events()
        async with chargers(cs, dict(cp_id="CP1", version=version, meter_interval_s=0.2)) as (sim,):
            st = cs.state.station("CP1")
            assert st.connected and st.version == version
            assert st.boot["vendor"] == "nowblock"
            # the fail-safe default arrives at boot
            await eventually(lambda: any(p.purpose == pr.TX_DEFAULT for p in sim.profiles))
            tx = await sim.plug_in(Car(phases=3, energy_kwh=30))
            t = await eventually(lambda: cs.state.transaction("CP1", tx))
            assert t.stop is None and t.connector_id == 1
            # meter values flow into the live state
            await eventually(lambda: t.energy_register_wh and t.energy_register_wh > 0 and t.power_w > 0)
            # a few Wh, so that 1.6's whole-Wh meter readings can be compared below
            await eventually(lambda: t.energy_delivered_kwh > 0.005)
            # A new session is counted at its limit + over_draw_a until a reading tells what it draws
            # over it (loop.reserve). A car that drew under its TxDefault before its first limit has no
            # known limit before (its charger's applied default is not in the snapshot), so only its
            # first settled reading (settle_s) frees it: 30 A for up to 15 s (CI, session 38; noted as
            # a capacity cost to narrow). Then the whole 63 A grid for one car: its 32 A maximum.
            await eventually(lambda: f"CP1:{tx}" in cs.controller.loop.learnt and not cs.controller.loop.reserve_a,
                             timeout_s=25.0)
            await eventually(lambda: sim.applied_limit_a() == 32.0 and t.current_a[0] == 32.0)
            snap = cs.state.snapshot()
            assert list(snap.columns[: len(CAR_COLUMNS)]) == list(CAR_COLUMNS)
            row = snap.loc[f"CP1:{tx}"]
            assert row["measured_current_a"] == pytest.approx(sim.draw_a(), abs=0.1)
            assert row["offered_current_a"] == pytest.approx(sim.applied_limit_a(), abs=0.1)
            assert row["phases"] == 3 and row["status"] in ("Charging", "Occupied") and row["soc_percent"] >= 30
            await sim.unplug()
            await eventually(lambda: t.stop is not None)
            assert t.energy_delivered_kwh == pytest.approx(sim.register_wh[1] / 1000.0, abs=1.01e-3)  # 1.6 meters report whole Wh
            assert cs.state.snapshot().empty
        await eventually(lambda: not cs.state.station("CP1").connected)
        kinds = await drain_kinds(events)
        for k in ("connect", "boot", "plug_in", "start", "meter", "stop", "disconnect"):
            assert k in kinds, k
        assert kinds.index("start") < kinds.index("meter") < kinds.index("stop") < kinds.index("disconnect")


@pytest.mark.parametrize("version", VERSIONS)
async def test_every_running_transaction_gets_a_safe_txprofile_within_5_s(version):
    site = make_test_site(3, grid_a=40)
    async with central_system(site, control="equal", **FAST) as cs:
        specs = [dict(cp_id=f"CP{i}", version=version) for i in (1, 2, 3)]
        async with chargers(cs, *specs) as sims:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            txs = await asyncio.gather(*(s.plug_in(Car()) for s in sims))

            def all_have_tx_profiles():
                return all(any(p.purpose == pr.TX and p.transaction_id == tx for p in s.profiles)
                           for s, tx in zip(sims, txs))

            await eventually(all_have_tx_profiles, timeout_s=5.0)
            assert loop.time() - t0 < 5.0
            step = 0.1 if version == "1.6" else 1.0  # OCPP 1.6 limits take 0.1 A, 2.0.1 ones whole amperes here
            # Until its readings tell what it draws over its limit, each new car is counted at its limit
            # plus over_draw_a (loop.reserve: 3 x 11.3 A + 6 A before). The chargers read every 10 s from
            # a random offset; each first limit lowers the 13 A TxDefault, and after a lowering two
            # readings in a row at the limit in force tell it (reserve.tells_unsettled: one may be taken
            # on a ramp up through the limit), after a raise one: two meter intervals after the first limit
            # is in force (5 s at most, asserted above) plus a step, 25 s, unless a reading off the limit
            # in force (a change not applied yet) restarts the pair; 10 s more for that and CI load.
            # Measured (/tmp/s39/diag/test_diag.py, session 39): 2.7 to 19.5 s in 16 runs. Before session
            # 39 a lowered car waited for a settled reading, which the equal shares' rotation of the last
            # pilot step restarted (1.5 to 18.7 s, over 30 s in CI).
            await eventually(lambda: cs.controller.loop.learnt >= {f"CP{i}:{tx}" for i, tx in zip((1, 2, 3), txs)}
                             and not cs.controller.loop.reserve_a, timeout_s=5.0 + 2 * 10.0 + 10.0)
            # equal shares of the 40 A fuse, the last pilot steps of room to the first in turn; an excess
            # over-estimated from a car read while it came down from its TxDefault falls at its next two
            # readings at a lowered limit (or a settled one): two meter intervals more, and CI load
            await eventually(lambda: all(s.applied_limit_a() is not None for s in sims)
                             and sum(s.applied_limit_a() for s in sims) == pytest.approx(40.0),
                             timeout_s=2 * 10.0 + 10.0)
            applied = np.array([s.applied_limit_a() for s in sims])
            assert applied.max() - applied.min() <= step + 1e-9
            assert applied.min() == pytest.approx(13.3 if version == "1.6" else 13.0)
            # one car leaves: its point waits at a 0 A idle default for the next car, so the others
            # get the freed current, still within the fuse
            await sims[0].unplug()
            await eventually(lambda: sims[1].applied_limit_a() == 20.0 and sims[2].applied_limit_a() == 20.0)
            assert sims[0].applied_limit_a(1) == 0.0


async def test_unknown_identity_is_refused_at_the_handshake():
    async with central_system(make_test_site(1)) as cs:
        with pytest.raises(websockets.exceptions.InvalidStatus) as exc:
            async with connect(f"ws://127.0.0.1:{cs.port}/NOPE", subprotocols=["ocpp1.6"]):
                pass
        assert exc.value.response.status_code == 404
        # an unsupported protocol version is refused too
        with pytest.raises(websockets.exceptions.InvalidStatus) as exc:
            async with connect(f"ws://127.0.0.1:{cs.port}/CP1", subprotocols=["ocpp1.5"]):
                pass
        assert exc.value.response.status_code == 400
        assert not cs.state.station("CP1").connected


@pytest.mark.parametrize("version", VERSIONS)
async def test_basic_auth_wrong_password_refused_right_one_accepted(version):
    site = make_test_site(2, passwords={"CP1": "correct horse"})
    async with central_system(site) as cs:
        url = f"ws://127.0.0.1:{cs.port}/CP1"
        proto = ["ocpp1.6" if version == "1.6" else "ocpp2.0.1"]
        for headers in ({}, {"Authorization": "Basic " + _b64("CP1:battery staple")},
                        {"Authorization": "Basic " + _b64("CP2:correct horse")}):  # user must be the identity
            with pytest.raises(websockets.exceptions.InvalidStatus) as exc:
                async with connect(url, subprotocols=proto, additional_headers=headers):
                    pass
            assert exc.value.response.status_code == 401
        async with chargers(cs, dict(cp_id="CP1", version=version, password="correct horse")):
            assert cs.state.station("CP1").connected


def _b64(s):
    import base64

    return base64.b64encode(s.encode()).decode()


@pytest.mark.parametrize("version", VERSIONS)
async def test_malformed_and_schema_violating_frames_are_answered_and_connection_survives(version):
    v16 = version == "1.6"
    async with central_system(make_test_site(1)) as cs:
        proto = "ocpp1.6" if v16 else "ocpp2.0.1"
        async with connect(f"ws://127.0.0.1:{cs.port}/CP1", subprotocols=[proto]) as ws:
            async def ask(frame):
                await ws.send(frame)
                return json.loads(await asyncio.wait_for(ws.recv(), 5))

            rpc = "FormationViolation" if v16 else "RpcFrameworkError"
            assert ask and (await ask("this is not json{"))[:3] == [4, "-1", rpc]
            assert (await ask('{"not": "an array"}'))[:3] == [4, "-1", rpc]
            r = await ask('[9, "m3", "Heartbeat", {}]')
            assert r[:3] == [4, "m3", "ProtocolError" if v16 else "MessageTypeNotSupported"]
            assert (await ask('[2, "m4", "Heartbeat"]'))[:3] == [4, "m4", rpc]
            boot = ('[2, "m5", "BootNotification", {"chargePointVendor": 5, "chargePointModel": "x"}]' if v16 else
                    '[2, "m5", "BootNotification", {"chargingStation": {"model": 5, "vendorName": "x"}, '
                    '"reason": "PowerUp"}]')
            assert (await ask(boot))[:3] == [4, "m5", "TypeConstraintViolation"]
            assert (await ask('[2, "m6", "Heartbeat", {"surplus": 1}]'))[:3] == [
                4, "m6", "FormationViolation" if v16 else "FormatViolation"]
            # Not known by the receiver: NotImplemented (an unknown name, the other version's
            # action); known but not something a charger asks the central system: NotSupported.
            assert (await ask('[2, "m7", "NoSuchAction", {}]'))[:3] == [4, "m7", "NotImplemented"]
            other = "TransactionEvent" if v16 else "StartTransaction"
            assert (await ask(f'[2, "m7b", "{other}", {{}}]'))[:3] == [4, "m7b", "NotImplemented"]
            assert (await ask('[2, "m7c", "SetChargingProfile", {}]'))[:3] == [4, "m7c", "NotSupported"]
            assert (await ask('[2, "m8", "StartTransaction", {"connectorId": 1}]' if v16 else
                              '[2, "m8", "TransactionEvent", {"eventType": "Started"}]'))[:3] == [4, "m8", "ProtocolError"]
            await ws.send('[3, "nobody-asked", {}]')  # a stray response is logged, never answered
            r = await ask('[2, "m9", "Heartbeat", {}]')
            assert r[0] == 3 and r[1] == "m9" and "currentTime" in r[2]
            assert cs.connection("CP1").frame_errors >= 8


@pytest.mark.parametrize("version", VERSIONS)
async def test_disconnect_mid_transaction_and_reconnect_keeps_the_transaction(version):
    async with central_system(make_test_site(1), **FAST) as cs:
        events = cs.events()
        async with chargers(cs, dict(cp_id="CP1", version=version, meter_interval_s=0.2)) as (sim,):
            tx = await sim.plug_in(Car(energy_kwh=50))
            t = await eventually(lambda: cs.state.transaction("CP1", tx))
            await eventually(lambda: t.energy_register_wh and t.energy_register_wh > 0)
            sim.drop()
            await eventually(lambda: not cs.state.station("CP1").connected, timeout_s=3)
            assert cs.state.snapshot().loc[f"CP1:{tx}", "connected"] == False  # noqa: E712
            assert t.stop is None
            await eventually(lambda: sim.connections == 2 and cs.state.station("CP1").connected, timeout_s=5)
            before = t.energy_register_wh
            await eventually(lambda: t.energy_register_wh > before)  # meter values resume on the same transaction
            assert [x.transaction_id for x in cs.state.running("CP1")] == [str(tx)]
            await sim.unplug()
            await eventually(lambda: t.stop is not None)
            assert t.energy_delivered_kwh == pytest.approx(sim.register_wh[1] / 1000.0, abs=1.01e-3)  # 1.6 meters report whole Wh
        kinds = await drain_kinds(events)
        assert kinds.count("start") == 1 and kinds.count("connect") == 2 and "disconnect" in kinds


@pytest.mark.parametrize("version", VERSIONS)
async def test_rejected_txprofile_falls_back_to_txdefault(version):
    async with central_system(make_test_site(1), **FAST) as cs:
        async with chargers(cs, dict(cp_id="CP1", version=version, quirks=Quirks(reject_tx_profile=True))) as (sim,):
            await sim.plug_in(Car())
            await eventually(lambda: cs.state.running("CP1"))
            rec = await cs.set_limit("CP1", 1, 10.0, retries=1)
            assert rec.attempts[:3] == [(pr.TX, "Rejected"), (pr.TX, "Rejected"), (pr.TX_DEFAULT, "Accepted")]
            assert rec.purpose == pr.TX_DEFAULT and rec.accepted_a == 10.0
            assert sim.applied_limit_a() == 10.0
            assert cs.state.snapshot()["offered_current_a"].iloc[0] == 10.0
            # after the session the connector's fallback default is removed again
            await sim.unplug()
            await eventually(lambda: not any(p.id == pr.TX_DEFAULT_ID_BASE + 1 for p in sim.profiles))


@pytest.mark.parametrize("version", VERSIONS)
async def test_not_supported_and_silent_chargers_are_never_counted_as_limited(version):
    async with central_system(make_test_site(2), backoff_s=0.01,
                              response_timeout_s=0.3) as cs:
        specs = [dict(cp_id="CP1", version=version, quirks=Quirks(not_supported=True)),
                 dict(cp_id="CP2", version=version, quirks=Quirks(silent_profiles=True))]
        async with chargers(cs, *specs) as sims:
            for s in sims:
                await s.plug_in(Car())
            await eventually(lambda: len(cs.state.running()) == 2)
            rec = await cs.set_limit("CP1", 1, 10.0, retries=2)
            assert rec.purpose is None and rec.accepted_a is None
            # never retried: it will not change; the TxDefault it refused at boot is not even sent again
            assert rec.attempts == [(pr.TX, "NotSupported"), (pr.TX_DEFAULT, "Skipped:NotSupported"),
                                    (pr.MAX_16, "NotSupported")]
            rec = await cs.set_limit("CP1", 1, 9.0, retries=2)
            assert [a for _, a in rec.attempts] == ["Skipped:NotSupported"] * 3  # remembered until it reboots
            assert set(cs.state.station("CP1").refusals) == {pr.TX, pr.TX_DEFAULT, pr.MAX_16}
            rec = await cs.set_limit("CP2", 1, 10.0, retries=1)
            # A time-out is not sent again, nor as another purpose: the limit would be stale by then.
            assert rec.purpose is None and rec.attempts == [(pr.TX, "Timeout")]
            assert sims[1].client is not None and cs.connection("CP2") is not None  # still talking
            snap = cs.state.snapshot()
            assert (snap["offered_current_a"] == 32.0).all()  # counted at their maximum
            assert snap["accepted_limit_a"].isna().all()


async def test_station_max_is_the_last_resort_and_is_lifted_afterwards():
    # refusal_memory_s=0: a purpose the charger Rejected is offered again on the next limit
    async with central_system(make_test_site(1), **FAST, refusal_memory_s=0.0) as cs:
        async with chargers(cs, dict(cp_id="CP1", version="1.6")) as (sim,):
            await sim.plug_in(Car())
            await eventually(lambda: cs.state.running("CP1"))
            sim.quirks.reject_tx_profile = True
            original = sim.on_set_profile

            def no_defaults(connector_id, payload):
                if payload["charging_profile_purpose"] == pr.TX_DEFAULT:
                    return "Rejected"
                return original(connector_id, payload)

            sim.on_set_profile = no_defaults
            rec = await cs.set_limit("CP1", 1, 8.0, retries=0)
            assert rec.purpose == pr.MAX_16 and sim.applied_limit_a() == 8.0
            sim.quirks.reject_tx_profile = False
            rec = await cs.set_limit("CP1", 1, 20.0, retries=0)
            assert rec.purpose == pr.TX and ("ClearStationMax", "Accepted") in rec.attempts
            assert sim.applied_limit_a() == 20.0 and rec.accepted_a == 20.0


@pytest.mark.parametrize("version", VERSIONS)
async def test_car_drawing_less_and_single_phase_car_show_in_the_snapshot(version):
    async with central_system(make_test_site(2, grid_a=63), **FAST) as cs:
        specs = [dict(cp_id="CP1", version=version, meter_interval_s=0.1, quirks=Quirks(draw_fraction=0.5)),
                 dict(cp_id="CP2", version=version, meter_interval_s=0.1)]
        async with chargers(cs, *specs) as (lazy, single):
            a = await lazy.plug_in(Car())
            b = await single.plug_in(Car(phases=1, max_current_a=16))
            await eventually(lambda: lazy.applied_limit_a() < 32 and single.applied_limit_a() < 32)

            def settled():
                snap = cs.state.snapshot()
                return len(snap) == 2 and snap["measured_current_a"].notna().all() and \
                    snap.loc[f"CP1:{a}", "measured_current_a"] == pytest.approx(lazy.applied_limit_a() / 2, abs=0.1) \
                    and snap.loc[f"CP2:{b}", "phases"] == 1 and [snap]

            (snap,) = await eventually(settled)
            assert snap.loc[f"CP1:{a}", "phases"] == 3
            assert snap.loc[f"CP2:{b}", "measured_current_a"] == pytest.approx(16.0, abs=0.1)


async def test_verify_reads_back_the_composite_schedule():
    async with central_system(make_test_site(1), **FAST) as cs:
        async with chargers(cs, dict(cp_id="CP1", version="2.0.1")) as (sim,):
            await sim.plug_in(Car())
            await eventually(lambda: cs.state.running("CP1"))
            # someone else capped the station at 12 A behind our back
            sim.profiles = pr.add_profile(sim.profiles, pr.Profile.from_payload(
                0, pr.build_profile("2.0.1", pr.MAX_201, 12.0, connector_id=0, profile_id=77)))
            rec = await cs.set_limit("CP1", 1, 20.0, verify=True)
            assert rec.purpose == pr.TX and rec.accepted_a == 12.0


async def test_rate_unit_watts_is_learnt_and_used():
    async with central_system(make_test_site(1), **FAST) as cs:
        async with chargers(cs, dict(cp_id="CP1", version="1.6", quirks=Quirks(rate_unit="W"))) as (sim,):
            await eventually(lambda: any(p.purpose == pr.TX_DEFAULT for p in sim.profiles))
            assert cs.state.station("CP1").rate_unit == "W"
            assert sim.profiles[0].unit == "W"
            await sim.plug_in(Car(phases=3))
            rec = await cs.set_limit("CP1", 1, 10.0)
            assert rec.purpose == pr.TX
            # phases unknown before the first meter value: 1 phase assumed, never more current than asked
            assert sim.applied_limit_a() <= 10.0 + 1e-9


async def test_needs_become_session_needs_and_stale_flag():
    async with central_system(make_test_site(1), **FAST) as cs:
        cs.state.stale_after_s = 0.5
        async with chargers(cs, dict(cp_id="CP1", version="2.0.1", meter_interval_s=60)) as (sim,):
            dep = pr.utcnow().replace(microsecond=0) + timedelta(hours=5)
            tx = await sim.plug_in(Car(energy_kwh=22.0, departure=dep, max_current_a=16))
            (snap,) = await eventually(lambda: [s for s in [cs.state.snapshot()] if len(s) == 1])
            row = snap.loc[f"CP1:{tx}"]
            assert row["needs_known"] and row["energy_requested_kwh"] == 22.0
            assert row["departure"] == dep and row["max_current_a"] == 16.0
            # A fresh meter value clears the flag; without one for 0.5 s it comes back. Waited for
            # rather than slept: a meter value may still arrive shortly after plug-in (a fixed
            # 0.6 s sleep flaked once in CI under load); the next periodic one is 60 s away.
            await sim.send_meter_now()
            await eventually(lambda: not cs.state.snapshot().loc[f"CP1:{tx}", "stale"], timeout_s=0.4)
            await eventually(lambda: bool(cs.state.snapshot().loc[f"CP1:{tx}", "stale"]), timeout_s=5.0)


async def test_tls_with_basic_auth_security_profile_2(tmp_path):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    from nowblock.cli.serve import ssl_context

    site = make_test_site(1, passwords={"CP1": "pw"})
    async with central_system(site, ssl_context=ssl_context(str(cert), str(key))) as cs:
        assert cs.url("CP1").startswith("wss://")
        client_ctx = ssl.create_default_context(cafile=str(cert))
        from nowblock.sim.chargers import SimCharger

        sim = SimCharger("CP1", f"wss://127.0.0.1:{cs.port}", "2.0.1", password="pw", ssl=client_ctx)
        sim.start()
        try:
            await sim.wait_connected()
            assert cs.state.station("CP1").connected
        finally:
            await sim.stop()
        with pytest.raises(Exception):  # plain ws:// is not served
            async with connect(f"ws://127.0.0.1:{cs.port}/CP1", subprotocols=["ocpp2.0.1"], open_timeout=2):
                pass


@pytest.mark.parametrize("version", VERSIONS)
async def test_other_notifications_are_answered(version):
    frames16 = [
        ('[2,"d1","DataTransfer",{"vendorId":"acme","messageId":"x","data":"y"}]', {"status": "UnknownVendorId"}),
        ('[2,"d2","FirmwareStatusNotification",{"status":"Installed"}]', {}),
        ('[2,"d3","DiagnosticsStatusNotification",{"status":"Uploaded"}]', {}),
        ('[2,"d4","Heartbeat",{}]', None),
    ]
    frames201 = [
        ('[2,"d1","DataTransfer",{"vendorId":"acme"}]', {"status": "UnknownVendorId"}),
        ('[2,"d2","NotifyReport",{"requestId":1,"generatedAt":"2026-01-01T00:00:00Z","seqNo":0}]', {}),
        ('[2,"d3","ReportChargingProfiles",{"requestId":1,"chargingLimitSource":"CSO","evseId":1,'
         '"chargingProfile":[{"id":5,"stackLevel":0,"chargingProfilePurpose":"TxDefaultProfile",'
         '"chargingProfileKind":"Absolute","chargingSchedule":[{"id":1,"chargingRateUnit":"A",'
         '"chargingSchedulePeriod":[{"startPeriod":0,"limit":10}]}]}]}]', {}),
        ('[2,"d4","NotifyChargingLimit",{"evseId":1,"chargingLimit":{"chargingLimitSource":"EMS"},'
         '"chargingSchedule":[{"id":1,"chargingRateUnit":"A","chargingSchedulePeriod":[{"startPeriod":0,"limit":9}]}]}]',
         {}),
    ]
    async with central_system(make_test_site(1), failsafe_at_boot=False) as cs:
        proto = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
        async with connect(f"ws://127.0.0.1:{cs.port}/CP1", subprotocols=[proto]) as ws:
            for frame, expected in (frames16 if version == "1.6" else frames201):
                await ws.send(frame)
                r = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert r[0] == 3 and r[1] == json.loads(frame)[1], r
                if expected is not None:
                    assert r[2] == expected
        if version == "2.0.1":  # an external limit (EMS) is counted like a station maximum on its EVSE
            assert cs.state.applied_limit_a("CP1", 1) == 9.0


async def test_a_shared_simulated_clock_drives_profiles_and_timestamps():
    def later():
        return pr.utcnow() + timedelta(days=30)  # a simulated day a month ahead of the wall clock

    async with central_system(make_test_site(2, grid_a=40), clock=later, **FAST) as cs:
        async with chargers(cs, *[dict(cp_id=f"CP{i}", version=v, clock=later) for i, v in ((1, "1.6"), (2, "2.0.1"))]) as sims:
            for s in sims:
                await s.plug_in(Car())
            # profiles stamped with the wall clock would have expired on the chargers' clock: 32 A
            await eventually(lambda: [s.applied_limit_a() for s in sims] == [20.0, 20.0])
            t = cs.state.running("CP1")[0]
            assert abs((t.start - later()).total_seconds()) < 60


def test_finished_transactions_are_forgotten_after_a_while():
    from nowblock.ocpp.state import LiveState

    state = LiveState(make_test_site(1), keep_finished_s=3600)
    t0 = pr.utcnow() - timedelta(hours=3)
    state.on_start("CP1", 1, 1, start=t0)
    state.on_stop("CP1", 1, stop=t0 + timedelta(hours=1))
    state.on_start("CP1", 1, 2, start=t0 + timedelta(hours=2, minutes=30))
    state.on_stop("CP1", 2, stop=t0 + timedelta(hours=2, minutes=45))
    state.on_start("CP1", 1, 3, start=pr.utcnow())  # prunes transaction 1 only
    assert sorted(k[1] for k in state.transactions) == ["2", "3"]


async def test_201_updated_for_an_unknown_transaction_opens_it_and_ended_closes_it():
    # What a charger sends after the central system restarted mid-session.
    async with central_system(make_test_site(1), failsafe_at_boot=False) as cs:
        events = cs.events()
        async with connect(f"ws://127.0.0.1:{cs.port}/CP1", subprotocols=["ocpp2.0.1"]) as ws:
            mv = ('[{"timestamp":"2026-01-05T12:00:00Z","sampledValue":[{"value":5000,'
                  '"measurand":"Energy.Active.Import.Register"},{"value":10,"measurand":"Current.Import","phase":"L1"}]}]')
            await ws.send('[2,"u1","TransactionEvent",{"eventType":"Updated","timestamp":"2026-01-05T12:00:00Z",'
                          '"triggerReason":"MeterValuePeriodic","seqNo":7,"transactionInfo":{"transactionId":"T-9"},'
                          '"evse":{"id":1},"meterValue":' + mv + '}]')
            assert json.loads(await ws.recv())[:2] == [3, "u1"]
            t = cs.state.transaction("CP1", "T-9")
            assert t is not None and t.stop is None and t.energy_register_wh == 5000.0
            kinds = [(await events.get(timeout=2)).kind for _ in range(3)]
            assert kinds == ["connect", "start", "meter"]
            await ws.send('[2,"u2","TransactionEvent",{"eventType":"Ended","timestamp":"2026-01-05T12:30:00Z",'
                          '"triggerReason":"EVCommunicationLost","seqNo":8,"transactionInfo":{"transactionId":"T-9",'
                          '"stoppedReason":"EVDisconnected"},"meterValue":'
                          + mv.replace("5000", "7500").replace("12:00:00", "12:30:00") + '}]')
            assert json.loads(await ws.recv())[:2] == [3, "u2"]
            assert t.stop is not None and t.stop_reason == "EVDisconnected" and t.energy_delivered_kwh == 2.5
