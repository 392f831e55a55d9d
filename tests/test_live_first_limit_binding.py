"""The binding limit of a new car whose reserve is held: the step's plan counts it at its limit
plus the reserve (what it may draw over its limit until a reading tells), so on a full fuse the
fuse binds it. Before, the controller worked the binding out from the limits sent (without the
reserve): the car showed 2 A of room and its binding said ``plan``.

A raw OCPP 1.6 station (frames over 127.0.0.1, a real central system and controller) starts a
transaction and sends no reading, so its reserve stays held.
"""

from __future__ import annotations

from interop.station import RawStation, now_iso
from test_live_fallback_default import K01Station
from test_live_follow_before_raise import Scripted

from nowblock.testing import central_system, eventually, make_test_site


async def test_a_reserved_car_on_a_full_fuse_is_bound_by_the_fuse():
    site = make_test_site(1, grid_a=20.0, max_current_a=32.0)
    async with central_system(site, control=Scripted({"CP1": 32.0}),
                              control_options={"period_s": 60.0, "min_replan_s": 0.1, "solve_timeout_s": 1.0},
                              response_timeout_s=2.0, backoff_s=0.05, retries=1) as cs:
        ctl = cs.controller
        st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "1.6",
                              answer=K01Station("1.6", reject_tx=False)).connect()
        try:
            await st.boot()
            await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                               "timestamp": now_iso()})
            res = await st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                                   "timestamp": now_iso()})
            sid = f"CP1:{res['transactionId']}"
            await eventually(lambda: ctl.history and sid in ctl.history[-1].targets_a.index, timeout_s=10)
            step = ctl.history[-1]
            reserve_a = step.context.planned_over_a.get(sid, 0.0)
            assert reserve_a > 0, step.context.planned_over_a  # no reading yet: its reserve is held
            limit_a = float(step.targets_a[sid])
            assert abs(limit_a + reserve_a - 20.0) < 1e-6, (limit_a, reserve_a)  # the fuse full with the reserve
            row = step.binding.loc[sid]
            assert row["binding"] == "fuse" and row["limit"].endswith("/L1"), row.to_dict()
            assert row["room_a"] < 1e-6, row.to_dict()
        finally:
            await st.close()
