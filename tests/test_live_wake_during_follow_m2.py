"""A step whose raises wait for a lowered car to follow gives way to a step called for meanwhile
(raw OCPP 1.6 stations over 127.0.0.1; the cars' draws are the ground truth). Review rev2 F-A
(session 39): the wait (up to ``follow_s``) blocked the controller's step, so a car going over its
limit on another feeder meanwhile was answered only once the wait ended: feeder B over its 30 A
rating for 4.1 s (0.2 s before the wait existed).
"""

from __future__ import annotations

import asyncio
import time

from test_live_follow_before_raise import LaggingCar, Scripted

from nowblock.block.site import Site
from nowblock.testing import central_system, eventually


class IgnoringCar(LaggingCar):
    """A :class:`LaggingCar` that draws ``ignore_a`` whatever its limit once ``ignore`` is set."""

    ignore_a: float | None = None

    def draw_a(self) -> float:
        if self.ignore_a is not None:
            self.now_a = self.ignore_a
            return self.now_a
        return super().draw_a()


SITE = Site.from_dict({"name": "t", "fuses": [
    {"id": "grid", "max_current_a": [100.0] * 3},
    {"id": "A", "parent": "grid", "max_current_a": [40.0] * 3},
    {"id": "B", "parent": "grid", "max_current_a": [30.0] * 3}],
    "charge_points": [{"id": f"CP{i}", "fuse": "A" if i <= 2 else "B", "max_current_a": 32.0, "phases": 3}
                      for i in range(1, 5)]})


async def test_a_car_over_its_limit_on_another_feeder_is_answered_while_raises_wait():
    policy = Scripted({"CP1": 30.0, "CP2": 10.0, "CP3": 15.0, "CP4": 15.0})
    opts = {"period_s": 60.0, "min_replan_s": 0.1, "solve_timeout_s": 1.0}
    async with central_system(SITE, control=policy, control_options=opts, response_timeout_s=2.0,
                              backoff_s=0.05, retries=1) as cs:
        ctl = cs.controller
        # CP1 follows its lowering at once but reads only every 10 s: CP2's raise into the room
        # it frees waits the whole follow time.
        cars = [IgnoringCar(f"CP{i}", cs.port, follow_s=0.0, every_s=10.0 if i == 1 else 0.5) for i in range(1, 5)]
        stop = asyncio.Event()
        for c in cars:
            await c.start()
        tasks = [asyncio.create_task(c.report(stop)) for c in cars]
        try:
            await eventually(lambda: [c.draw_a() for c in cars] == [30.0, 10.0, 15.0, 15.0]
                             and not ctl.loop.reserve_a, timeout_s=60)
            await asyncio.sleep(1.0)
            policy.want = {"CP1": 10.0, "CP2": 30.0, "CP3": 15.0, "CP4": 15.0}
            ctl.replan()
            await eventually(lambda: cars[0].draw_a() == 10.0, timeout_s=10)  # lowered: CP2's raise waits
            assert cars[1].draw_a() == 10.0
            cars[2].ignore_a = 30.0  # CP3 draws 30 A whatever its limit: feeder B at 45 A
            t0 = time.monotonic()
            await eventually(lambda: cars[2].draw_a() + cars[3].draw_a() <= 30.0, timeout_s=30)
            # Feeder B was made safe by a step while CP2's raise still waited for CP1's reading,
            # not by the step after the wait.
            assert cars[1].draw_a() == 10.0, f"feeder B over 30 A until CP2 was raised ({time.monotonic() - t0:.1f} s)"
            await eventually(lambda: cars[1].draw_a() == 30.0, timeout_s=30)  # the raise goes in the end
            assert cars[0].draw_a() + cars[1].draw_a() <= 40.0
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in cars:
                await c.st.close()
