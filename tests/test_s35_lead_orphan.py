"""A transaction orphaned by its station's reboot ends when the station reports its connector
Available (found by a review: held at the car's maximum for the rest of the day, 69 minutes in
the reproduction, while the other car got 16 A instead of 32 A)."""

from datetime import datetime, timedelta, timezone

from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.ocpp.state import LiveState

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def _state():
    site = Site("o", (Fuse("grid", (32.0,) * 3),),
                tuple(ChargePoint(f"CP{i}", "grid", max_current_a=16.0) for i in range(2)))
    clock = {"now": T0}
    st = LiveState(site, clock=lambda: clock["now"])
    for i in range(2):
        st.on_connect(f"CP{i}", "1.6")
        st.on_start(f"CP{i}", 1, i + 1, start=T0, meter_start_wh=0.0)
    return st, clock


def test_an_orphan_ends_when_its_connector_reports_available():
    st, clock = _state()
    clock["now"] = T0 + timedelta(minutes=10)
    st.on_boot("CP0", vendor="v", model="m")
    st.on_status("CP0", 1, "Charging")  # the car is still there: the orphan stays held for
    assert st.running_on("CP0", 1) is not None and st.running_on("CP0", 1).orphaned
    st.on_status("CP0", 1, "Available")  # nothing plugged in: its end will not come
    t = st.transaction("CP0", "1")
    assert t.stop == clock["now"] and t.stop_reason == "Orphaned"
    assert list(st.snapshot()["charge_point_id"]) == ["CP1"]


def test_available_without_a_reboot_ends_nothing():
    """A station that says Available while its transaction runs (no reboot) is not believed
    over its transaction: the car stays counted until its StopTransaction."""
    st, clock = _state()
    st.on_status("CP0", 1, "Available")
    assert st.running_on("CP0", 1) is not None
