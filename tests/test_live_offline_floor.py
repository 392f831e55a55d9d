"""A car at a station we cannot reach counts at what that station falls back to once the car's
TxProfile lapses, as the station holds it (review rev3 F1, F2 of session 36; raw frames over
127.0.0.1, a real controller): a station that refused the fail-safe lets the car draw its
maximum, one that missed a lower re-install keeps the higher fail-safe it holds, and a
GetCompositeSchedule read-back does not keep an offline car at a TxProfile that lapsed."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pandas as pd
from interop.station import RawStation, Silence, now_iso
from test_live_fallback_default import K01Station
from test_live_idle_and_full import draw_limits, one_station, start_all

from nowblock.control import attach
from nowblock.loop.closed_loop import LoopSettings
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site


class NoFailsafe(K01Station):
    """Takes TxProfiles and idle defaults, refuses the connector-0 fail-safe; answers a
    GetCompositeSchedule with what it applies (the point's maximum when nothing applies)."""

    tx = None
    max_a = 16.0

    def __call__(self, action, p):
        if action == "SetChargingProfile":
            raw = p.get("csChargingProfiles") or p.get("chargingProfile")
            if raw["chargingProfilePurpose"] == pr.TX_DEFAULT and p.get("connectorId", p.get("evseId")) == 0:
                return {"status": "Rejected"}
        if action == "GetCompositeSchedule":
            lim = self.applies_a(p["connectorId"], self.tx)
            return {"status": "Accepted", "connectorId": p["connectorId"], "scheduleStart": now_iso(),
                    "chargingSchedule": {"chargingRateUnit": "A", "duration": p["duration"],
                                         "chargingSchedulePeriod": [{"startPeriod": 0, "limit": float(
                                             self.max_a if lim is None else lim)}]}}
        return super().__call__(action, p)


class DropsOnLowerFailsafe(K01Station):
    """Holds the fail-safe it took first; its network drops when a lower one is sent (no answer)."""

    st = None

    def __call__(self, action, p):
        if action == "SetChargingProfile":
            raw = p.get("csChargingProfiles") or p.get("chargingProfile")
            lim = float(raw["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"])
            if raw["chargingProfilePurpose"] == pr.TX_DEFAULT and p.get("connectorId") == 0 and lim < 12:
                asyncio.get_running_loop().call_later(0.1, lambda: asyncio.ensure_future(self.st.close()))
                return Silence()
        return super().__call__(action, p)


class Uneven:
    """CP1's car 6 A, CP2's 18 A."""

    name = "uneven"

    def schedule(self, snapshot):
        # In the snapshot's bounds: a new session's include the 2 A it is counted at over its limit
        # until a reading tells what it draws over it (nowblock.loop.reserve); then 6 and 18 A.
        lo = snapshot.cars["min_current_a"]
        return pd.Series([lo[s] if s.startswith("CP1:") else lo[s] + 12.0 for s in snapshot.cars.index],
                         index=snapshot.cars.index)


async def _pair(tmp_path, cp1, max_a: float, validity_s: float = 30.0, site=None):
    site = site if site is not None else make_test_site(2, grid_a=24.0, max_current_a=max_a)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    ctl = attach(cs, db=str(tmp_path / "block.sqlite"), policy=Uneven(), period_s=1.0, min_replan_s=0.1,
                 solve_timeout_s=2.0, profile_validity_s=validity_s, loop=LoopSettings(settle_s=1.0))
    await ctl.start()
    held = {"CP1": cp1, "CP2": K01Station("1.6", reject_tx=False)}
    sts = {cp: await RawStation(f"ws://127.0.0.1:{cs.port}", cp, "1.6", answer=held[cp]).connect() for cp in held}
    return cs, ctl, held, sts


_DRAWING: dict[int, tuple] = {}  # id(sts) -> (stop event, reporting task)


async def _start_drawing(sts: dict, held: dict) -> dict:
    """:func:`start_all`, then each car draws its limit and reports it (``draw_limits``): its readings
    free the 2 A a new session is counted at over its limit, so 6 + 18 A fill the 24 A grid."""
    txs = await start_all(sts)
    stop = asyncio.Event()
    _DRAWING[id(sts)] = (stop, asyncio.ensure_future(draw_limits(sts, held, txs, stop)))
    return txs


async def _close(cs, ctl, sts):
    stop, task = _DRAWING.pop(id(sts), (None, None))
    if stop is not None:
        stop.set()
        await task
    for st in sts.values():
        await st.close()
    await ctl.stop()
    await cs.stop()


async def _cp2_after_cp1_offline(cs, ctl, sts) -> float:
    """CP1's station goes away; CP2's limit two steps later [A]."""
    await sts["CP1"].close()  # idempotent (a station that dropped itself)
    await eventually(lambda: not cs.state.station("CP1").connected, timeout_s=10)
    n = len(ctl.history)
    await eventually(lambda: len(ctl.history) >= n + 2, timeout_s=10)
    res = ctl.history[-1]
    return float(res.current_a[[s for s in res.current_a.index if s.startswith("CP2:")]].iloc[0])


def _at_lapse(station: K01Station, tx, max_a: float) -> float:
    """[A] What ``station`` applies on connector 1 a second after its TxProfile's validTo, by
    the profiles it holds (no limit: the point's maximum)."""
    txp = [p for p in station.held if p.purpose == pr.TX][-1]
    lim = pr.active_limit_a(station.held, 1, txp.valid_to + timedelta(seconds=1), transaction_id=tx)
    return max_a if lim is None else float(lim)


async def test_an_offline_car_whose_station_refused_the_failsafe_counts_at_its_maximum(tmp_path):
    # Counted at the 12 A fail-safe wanted (refused), CP2 got 12 A; at CP1's TxProfile's end its
    # station applied no limit: 16 + 12 = 28 A on the 24 A grid until the next step.
    cs, ctl, held, sts = await _pair(tmp_path, NoFailsafe("1.6", reject_tx=False), 16.0)
    try:
        txs = await _start_drawing(sts, held)
        await eventually(lambda: held["CP1"].applies_a(1, txs["CP1"]) == 6.0
                         and held["CP2"].applies_a(1, txs["CP2"]) == 16.0, timeout_s=15)
        assert not any(p.connector_id == 0 for p in held["CP1"].held)  # it holds no fail-safe
        cp2 = await _cp2_after_cp1_offline(cs, ctl, sts)
        cp1 = _at_lapse(held["CP1"], txs["CP1"], 16.0)
        assert cp1 == 16.0
        assert cp2 + cp1 <= 24.0 + 1e-6, (cp2, cp1)
    finally:
        await _close(cs, ctl, sts)


async def test_an_offline_car_counts_at_the_failsafe_its_station_holds_above_the_target(tmp_path):
    # CP1 holds a 12 A fail-safe; a second connector shows up, the target becomes 6 A per EVSE
    # and CP1's network drops before it takes it. Counted at the 6 A target, CP2 kept 18 A:
    # 18 + 12 = 30 A on the 24 A grid once CP1's TxProfile lapsed.
    cp1 = DropsOnLowerFailsafe("1.6", reject_tx=False)
    cs, ctl, held, sts = await _pair(tmp_path, cp1, 32.0)
    cp1.st = sts["CP1"]
    try:
        txs = await _start_drawing(sts, held)
        await eventually(lambda: held["CP1"].applies_a(1, txs["CP1"]) == 6.0
                         and held["CP2"].applies_a(1, txs["CP2"]) == 18.0
                         and getattr(cs.state.station("CP1").failsafe, "accepted_a", None) == 12.0, timeout_s=20)
        await sts["CP1"].ok("StatusNotification", {"connectorId": 2, "errorCode": "NoError", "status": "Available"})
        cp2 = await _cp2_after_cp1_offline(cs, ctl, sts)
        assert [float(p.periods[0].limit) for p in held["CP1"].held if p.connector_id == 0] == [12.0]
        cp1_a = _at_lapse(held["CP1"], txs["CP1"], 32.0)
        assert cp1_a == 12.0
        assert cp2 + cp1_a <= 24.0 + 1e-6, (cp2, cp1_a)
    finally:
        await _close(cs, ctl, sts)


async def test_a_read_back_does_not_keep_an_offline_car_at_a_txprofile_that_lapsed(tmp_path):
    # CP1 answered a GetCompositeSchedule (6 A, its TxProfile) just before it went offline: the
    # read-back counted over what it holds for 900 s, so after its TxProfile lapsed (8 s here)
    # its car was still observed at 6 A with a limit known, where it draws the point's 16 A.
    cs, ctl, held, sts = await _pair(tmp_path, NoFailsafe("1.6", reject_tx=False), 16.0, validity_s=8.0)
    try:
        txs = await _start_drawing(sts, held)
        held["CP1"].tx = txs["CP1"]
        await eventually(lambda: held["CP1"].applies_a(1, txs["CP1"]) == 6.0, timeout_s=15)
        rep = await cs.read_applied_limit("CP1", 1)
        assert rep is not None and rep.limit_a == 6.0
        await sts["CP1"].close()
        await eventually(lambda: not cs.state.station("CP1").connected, timeout_s=10)
        txp = [p for p in held["CP1"].held if p.purpose == pr.TX][-1]
        lapse = pd.Timestamp(txp.valid_to) + pd.Timedelta(seconds=1)
        assert held["CP1"].applies_a(1, txs["CP1"], offset_s=(lapse - pd.Timestamp(pr.utcnow())).total_seconds()) is None
        await eventually(lambda: pd.Timestamp(pr.utcnow()) >= lapse, timeout_s=15)
        cars = ctl.source.observe(pd.Timestamp(pr.utcnow())).cars
        row = cars.loc[[s for s in cars.index if s.startswith("CP1:")][0]]
        # Its station applies no limit now: not a limit known at 6 A.
        assert not (bool(row["limit_known"]) and float(row["offered_current_a"]) < 16.0), row.to_dict()
    finally:
        await _close(cs, ctl, sts)


class ReadBack(NoFailsafe):
    """Takes every profile (the fail-safe too) and answers GetCompositeSchedule."""

    max_a = 32.0

    def __call__(self, action, p):
        return K01Station.__call__(self, action, p) if action == "SetChargingProfile" else super().__call__(action, p)


async def test_a_read_back_above_a_cap_window_counts_at_what_the_station_reports(tmp_path):
    # The read-back was clipped by the planning maximum, which holds the site's cap windows that
    # only our profiles enforce: CP1 (32 A, a 10 A cap window all day) reported applying 16 A and
    # its car was observed at 10 A. It is clipped by the physical maximum now (32 A).
    from nowblock.block.site import Site

    site = Site.from_dict({"name": "b", "fuses": [{"id": "grid", "max_current_a": [40.0] * 3}], "charge_points": [
        {"id": "CP1", "fuse": "grid", "max_current_a": 32.0, "phases": 3,
         "caps": [{"start": "00:00", "end": "24:00", "max_current_a": 10.0}]},
        {"id": "CP2", "fuse": "grid", "max_current_a": 32.0, "phases": 3}]})
    cs, ctl, held, sts = await _pair(tmp_path, ReadBack("1.6", reject_tx=False), 32.0, site=site)
    try:
        txs = await start_all(sts)
        held["CP1"].tx = txs["CP1"]
        await eventually(lambda: held["CP1"].applies_a(1, txs["CP1"]) == 6.0, timeout_s=15)
        await ctl.stop()  # no step re-sends its limit meanwhile
        rec = await cs.set_limit("CP1", 1, 16.0, transaction_id=txs["CP1"])
        assert rec.accepted_a == held["CP1"].applies_a(1, txs["CP1"]) == 16.0
        rep = await cs.read_applied_limit("CP1", 1)
        assert rep is not None and rep.limit_a == 16.0
        cars = ctl.source.observe(pd.Timestamp(pr.utcnow())).cars
        row = cars.loc[f"CP1:{txs['CP1']}"]
        assert bool(row["connected"]) and float(row["max_current_a"]) == 10.0  # planned under the cap
        assert float(row["offered_current_a"]) == 16.0, row.to_dict()
    finally:
        await _close(cs, ctl, sts)


async def test_no_idle_default_outlives_a_txprofile_at_a_station_whose_clock_is_behind(tmp_path):
    # Review rev3 F3 (/tmp/s36/rev3/g_idle_outlives_tx_clock_behind.py): a 1.6 station one hour
    # behind. Its 0 A idle default went out right after its boot, before any timestamped CALL,
    # written in our time; a car started before any re-send (busy connectors are not re-sent),
    # so once its TxProfile ended the station applied that 0 A for about an hour, not the 12 A
    # fail-safe it accepted and the step counts an offline car at.
    skew = -timedelta(hours=1)
    cs, ctl, station, st = await one_station(tmp_path, "1.6", 60.0)
    try:
        await st.boot()
        await eventually(lambda: getattr(cs.state.station("CP1").failsafe, "accepted_a", None) == 12.0, timeout_s=10)
        n = len(ctl.history)
        await eventually(lambda: len(ctl.history) >= n + 2, timeout_s=10)
        await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                           "timestamp": now_iso(pr.utcnow() + skew)})
        res = await st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                               "timestamp": now_iso(pr.utcnow() + skew)})
        tx = res["transactionId"]
        await eventually(lambda: any(p.purpose == pr.TX for p in station.held), timeout_s=10)
        await asyncio.sleep(1.0)
        txp = [p for p in station.held if p.purpose == pr.TX][-1]
        for dt in (1, 600, 3000):  # by the station's clock, after its TxProfile ended
            assert pr.active_limit_a(station.held, 1, txp.valid_to + timedelta(seconds=dt), transaction_id=tx) == 12.0
    finally:
        await st.close()
        await ctl.stop()
        await cs.stop()
