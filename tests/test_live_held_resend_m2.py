"""A station that goes quiet, drops, and comes back without its TxProfile (raw OCPP frames over
127.0.0.1; the cars' draws are the ground truth). Review rev3, Finding 1 (session 39): a drop
books its cars' limits as sent long ago (due again), but the car's escalation clock, running
since its readings stopped, held its limit back until its backoff pause was over: the station
back without its profile let its car draw 16 A unlimited, 32 A on a 19 A grid for 8.3 s.
"""

from __future__ import annotations

import asyncio

from test_live_escalation_reconnect import GRID_A, Car

from nowblock.control import attach
from nowblock.control.dispatch import Escalation
from nowblock.loop.closed_loop import LoopSettings
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site


async def test_a_station_back_without_its_profile_gets_its_limit_again_despite_its_backoff(tmp_path):
    site = make_test_site(2, grid_a=GRID_A, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    # EDF: CP1 takes 16 A, CP2 (a car that follows) is paused at 0 A. The backoff grows to
    # 8 s and more while CP2 is quiet, so it is not over when the station comes back.
    ctl = attach(cs, db=str(tmp_path / "nb.sqlite"), policy="edf", period_s=0.5, min_replan_s=0.1,
                 solve_timeout_s=1.0, loop=LoopSettings(settle_s=1.0, stale_after_s=3.0),
                 escalation=Escalation(backoff_s=1.0, max_backoff_s=60.0, grace_s=600, alarm_s=6000))
    await ctl.start()
    good, quiet = Car("CP1", cs.port), Car("CP2", cs.port)
    stop = asyncio.Event()
    tasks = []
    try:
        for c in (good, quiet):
            await c.plug()
        await good.start()
        tasks.append(asyncio.create_task(good.report(stop)))
        await eventually(lambda: good.draw_a() == 16.0, timeout_s=10)
        await quiet.start()
        tasks.append(asyncio.create_task(quiet.report(stop)))
        await eventually(lambda: quiet.draw_a() == 0.0 and good.draw_a() == 16.0 and ctl.history
                         and not ctl.history[-1].context.untrusted, timeout_s=15)
        await eventually(lambda: cs.state.transaction(quiet.cp_id, quiet.tx).last_meter is not None)
        await asyncio.sleep(1.0)
        quiet.up = False  # its readings stop: stale, its limit re-sent on the escalation's backoff
        await eventually(lambda: ctl.escalation.attempts.get(quiet.sid, 0) >= 4, timeout_s=30)
        last = ctl.escalation.last_try[quiet.sid]
        await eventually(lambda: ctl.escalation.last_try.get(quiet.sid) != last, timeout_s=60)  # just re-sent
        await quiet.st.close()
        await eventually(lambda: not cs.state.station(quiet.cp_id).connected)
        n = len(ctl.history)
        await eventually(lambda: len(ctl.history) > n and ctl.history[-1].context.untrusted.get(quiet.sid) == "offline",
                         timeout_s=10)
        quiet.station.held = []  # it lost its profiles while away: it applies nothing (16 A)
        assert quiet.station.applies_a(1, quiet.tx) is None
        await asyncio.sleep(2.0)  # away 2 s
        async with quiet.lock:
            await quiet._connect()  # back, no readings yet (its meter still quiet)
            quiet.up = False
            await quiet._status("Charging")
        # Its limit is due again at once: a TxProfile back while its backoff pause still runs
        # (at least 8 s after the last re-send).
        await eventually(lambda: any(p.purpose == pr.TX for p in quiet.station.held), timeout_s=5)
        assert quiet.draw_a() == 0.0 and good.draw_a() + quiet.draw_a() <= GRID_A
        assert quiet.st.schema_errors == []
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in (good, quiet):
            if c.st is not None:
                await c.st.close()
        await ctl.stop()
        await cs.stop()
