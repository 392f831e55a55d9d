"""A charging point with two EVSEs (a twin wallbox under one [[charge_points]] entry): its
``max_current_a`` is the point's, over both EVSEs together, in the planner as in the fail-safe."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pandas as pd
from interop.station import RawStation, default_answer, limit_of, meter_201, now_iso

from nowblock.block.site import Site
from nowblock.loop.caps import shared_points_site
from nowblock.ocpp.state import LiveState
from nowblock.testing import central_system, eventually, make_test_site


def _last_tx(station: RawStation, evse: int) -> float | None:
    got = [limit_of(p["chargingProfile"]) for a, p in station.received if a == "SetChargingProfile"
           and p["evseId"] == evse and p["chargingProfile"]["chargingProfilePurpose"] == "TxProfile"]
    return got[-1] if got else None


async def test_the_two_evses_of_a_32_a_point_get_32_a_in_all_not_each():
    """/tmp/s37/m4/repro_f2_twin.py (an outside test, /tmp/s37/h4/twin.py): a 2.0.1 station with a
    car on each of its two EVSEs, one 32 A point on a 63 A grid, got 32 A and 31 A TxProfiles:
    63 A through a point rated 32 A (its breaker trips), while its fail-safe divided the point's
    share over the two EVSEs. Both cars draw what they are given."""
    async with central_system(make_test_site(1, grid_a=63.0), control="equal") as cs:
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "2.0.1",
                             answer=lambda a, p: default_answer("2.0.1", a, p)).connect()
        try:
            await s.boot()
            for e in (1, 2):
                await s.ok("StatusNotification", {"timestamp": now_iso(), "connectorStatus": "Occupied",
                                                  "evseId": e, "connectorId": 1})
                await s.ok("TransactionEvent", {
                    "eventType": "Started", "timestamp": now_iso(), "seqNo": 0, "triggerReason": "CablePluggedIn",
                    "transactionInfo": {"transactionId": f"T{e}"}, "evse": {"id": e, "connectorId": 1},
                    "meterValue": meter_201(amps=[16.0] * 3, energy_wh=0.0)})
            await eventually(lambda: _last_tx(s, 1) is not None and _last_tx(s, 2) is not None, timeout_s=15)
            ctl = cs.controller
            for k in range(3):  # each car draws what it was last given, over a few steps
                n = len(ctl.history)
                for e in (1, 2):
                    await s.ok("TransactionEvent", {
                        "eventType": "Updated", "timestamp": now_iso(), "seqNo": k + 1,
                        "triggerReason": "MeterValuePeriodic", "transactionInfo": {"transactionId": f"T{e}"},
                        "meterValue": meter_201(amps=[_last_tx(s, e)] * 3, energy_wh=100.0 * (k + 1))})
                await eventually(lambda: len(ctl.history) > n, timeout_s=10)
                await asyncio.sleep(0.5)  # what the step sent answered
                a1, a2 = _last_tx(s, 1), _last_tx(s, 2)
                assert a1 + a2 <= 32.0 + 1e-6, (k, a1, a2)
                assert min(a1, a2) >= 6.0  # room for both: neither paused
            assert s.schema_errors == []
        finally:
            await s.close()


def _twin_state(now: datetime, *, cars: int, evses: int = 2) -> LiveState:
    state = LiveState(make_test_site(2, grid_a=100.0), clock=lambda: now)
    for cp in ("CP1", "CP2"):
        state.on_connect(cp, "1.6")
        state.on_boot(cp, vendor="V", model="M")
    for c in range(1, evses + 1):  # a car plugged in at each EVSE; started on the first ``cars``
        state.on_status("CP1", c, "Preparing")
    for c in range(1, cars + 1):
        state.on_start("CP1", c, c, start=now, meter_start_wh=0.0)
        state.on_meter("CP1", c, c, {"current_l1_a": 20.0, "current_l2_a": 20.0, "current_l3_a": 20.0}, now)
    return state


def test_the_live_snapshot_rates_a_point_with_two_cars_as_a_fuse_over_them():
    """The live observation puts a point with two cars under a fuse of the point's rating (a cap
    window in force included); a point with one car gets none (its car's maximum is the point's
    already). What is held for an idle connector of the point (a car plugged in, not started, no
    default known: the point's maximum) is reserved above it, not taken from its cars."""
    from nowblock.control.live import LiveBlock

    now = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    ts = pd.Timestamp(now)
    failsafe = pd.Series({"CP1": 16.0, "CP2": 16.0})

    def live(cars: int, evses: int = 2, site: Site | None = None) -> LiveBlock:
        return LiveBlock(_twin_state(now, cars=cars, evses=evses), site or make_test_site(2, grid_a=100.0),
                         step=pd.Timedelta("15min"), horizon=pd.Timedelta("1h"), failsafe_a=failsafe)

    two = live(2)
    obs = two.observe(ts)
    assert obs.site.charge_point("CP1").fuse == "point:CP1" and obs.site.charge_point("CP2").fuse == "grid"
    point = obs.site.fuses[obs.site.fuse_ids.index("point:CP1")]
    assert point.max_current_a == (32.0, 32.0, 32.0) and point.parent == "grid"
    assert two.observe(ts).site is obs.site  # the same site while nothing changes
    assert live(1).observe(ts).site.charge_point("CP1").fuse == "grid"
    obs = live(2, evses=3).observe(ts)
    assert obs.idle_defaults_a[("CP1", 3)] == 32.0
    assert obs.site.fuses[obs.site.fuse_ids.index("point:CP1")].max_current_a == (64.0, 64.0, 64.0)
    d = make_test_site(2, grid_a=100.0).to_dict()
    d["charge_points"][0]["caps"] = [{"start": "00:00", "end": "23:59", "max_current_a": 10.0}]
    site = live(2, site=Site.from_dict(d)).observe(ts).site
    assert site.fuses[site.fuse_ids.index("point:CP1")].max_current_a == (10.0, 10.0, 10.0)


def test_shared_points_site_keeps_the_points_order_and_names_around_a_real_fuse():
    d = make_test_site(2, grid_a=63.0).to_dict()
    d["fuses"].append({"id": "point:CP2", "parent": "grid", "max_current_a": [50.0] * 3})
    site = Site.from_dict(d)
    out = shared_points_site(site, {"CP2": 32.0})
    assert out.charge_point_ids == site.charge_point_ids
    assert out.charge_point("CP2").fuse == "point:CP2'"
    assert out.fuses[out.fuse_ids.index("point:CP2'")].parent == site.charge_point("CP2").fuse
    assert shared_points_site(site, {}) is site
