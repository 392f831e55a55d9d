"""Unit checks of the protocol edge (nowblock.ocpp.edge); the end-to-end ones are in tests/interop."""

import logging
from datetime import datetime, timedelta, timezone

import pytest
from ocpp.exceptions import FormatViolationError, PropertyConstraintViolationError

from nowblock.ocpp import edge

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("raw, kind, uid", [
    ('[2,"a","X",{"v":' + "[" * 50_000 + "]" * 50_000 + "}]", "depth", "a"),
    ('[2,"b","X",{"v":' + "[" * 40 + "]" * 40 + "}]", "depth", "b"),  # parses, then too deep
    ('[2,"c","X",{"v":"\\ud83d"}]', "string", "c"),
    ('[2,"d","X",{"\\udc00":1}]', "string", "d"),
    ('[2,"e","X",{"v":NaN}]', "number", "e"),
    ('[2,"f","X",{"v":1e999}]', "number", "f"),
    ('[2,"g","X",{"v":' + "9" * 30 + "}]", "number", "g"),
    ('[2.0, "h", "X", {"v": tru', "json", "h"),
    ("garbage", "json", None),
    (b"\xff\xfe", "json", None),
])
def test_parse_frame_refuses_with_the_readable_id(raw, kind, uid):
    with pytest.raises(edge.FrameError) as info:
        edge.parse_frame(raw)
    assert info.value.kind == kind and info.value.unique_id == uid


def test_parse_frame_accepts_what_ocpp_sends():
    msg = edge.parse_frame('[2,"1","BootNotification",{"model":"Wallbox \\u2713 \\ud83d\\ude00","n":-9223372036854775807}]')
    assert msg[3]["model"].endswith("\U0001F600") and msg[3]["n"] == -(2**63 - 1)


def test_event_time_clamps_implausible_clocks_and_refuses_garbage():
    assert edge.event_time("0001-01-01T00:00:00Z", NOW, "timestamp") == NOW
    assert edge.event_time("9999-12-31T23:59:59Z", NOW, "timestamp") == NOW
    assert edge.event_time(None, NOW, "timestamp") == NOW
    buffered = NOW - timedelta(days=30)  # an offline charger replays a month-old transaction
    assert edge.event_time(buffered.isoformat(), NOW, "timestamp") == buffered
    with pytest.raises(FormatViolationError):  # the schemas' "format": "date-time"
        edge.event_time("yesterday", NOW, "timestamp")


def test_departure_time_is_clamped_or_ignored():
    assert edge.departure_time("9999-12-31T23:59:59Z", NOW) == NOW + timedelta(seconds=edge.MAX_DEPARTURE_S)
    assert edge.departure_time("0001-01-01T00:00:00Z", NOW) is None
    soon = NOW + timedelta(hours=3)
    assert edge.departure_time(soon.isoformat(), NOW) == soon


def test_connector_ids_are_bounded():
    assert edge.check_connector(0) == 0
    for bad in (-1, 33, 10**6):
        with pytest.raises(PropertyConstraintViolationError):
            edge.check_connector(bad)
    with pytest.raises(PropertyConstraintViolationError):
        edge.check_connector(0, allow_zero=False)


def test_a_meter_value_dated_ahead_of_its_arrival_is_dated_on_arrival(caplog):
    """Found by an outside test: a station clock 10 min ahead kept its car "fresh" for up to 15
    minutes after its meter went quiet (stale detection trusts the meter value's time)."""
    now = datetime(2026, 12, 7, 6, 0, tzinfo=timezone.utc)
    assert edge.meter_time(None, now, "CPa") == now
    assert edge.meter_time(now - timedelta(seconds=30), now, "CPa") == now - timedelta(seconds=30)
    assert edge.meter_time(now + timedelta(seconds=30), now, "CPa") == now + timedelta(seconds=30)  # small skew
    with caplog.at_level(logging.WARNING, logger="nowblock.ocpp.edge"):
        assert edge.meter_time(now + timedelta(minutes=10), now, "CPb") == now
        # Hours behind (a wrong clock, or queued while offline): kept, and said once an hour.
        old = now - timedelta(hours=3)
        assert edge.meter_time(old, now, "CPc") == old
        assert edge.meter_time(old, now + timedelta(seconds=5), "CPc") == old
    said = [r.getMessage() for r in caplog.records]
    assert sum("CPb" in m and "ahead" in m for m in said) == 1
    assert sum("CPc" in m and "behind" in m for m in said) == 1


@pytest.mark.parametrize("value", ["2026-12-07", "2026-12-07T10:40Z", "2026-12-07T10:40:00+0100", "20261207T104000Z",
                                   "2026-W49-1T10:40:00Z", "2026-12-07T10:40:00 +01:00"])
def test_timestamps_python_reads_but_rfc_3339_does_not_are_a_format_violation(value):
    """Found by an outside test: Python's reader took a date alone as midnight UTC (an arrival
    10.5 h early), and times without seconds, "+0100", compact and week dates, which docs/ocpp.md
    promises to refuse."""
    from ocpp.exceptions import FormatViolationError

    from nowblock.ocpp import edge

    with pytest.raises(FormatViolationError):
        edge.check_time(value, "timestamp")


def test_a_leap_second_is_the_next_second_and_a_time_without_offset_is_utc_with_a_warning(caplog):
    from nowblock.ocpp import edge

    assert edge.check_time("2016-12-31T23:59:60Z") == datetime(2017, 1, 1, tzinfo=timezone.utc)
    edge._naive_warned.discard("departureTime")
    with caplog.at_level("WARNING", logger="nowblock.ocpp.edge"):
        t = edge.check_time("2026-12-07T18:00:00", "departureTime")
        edge.check_time("2026-12-07T18:05:00", "departureTime")
    assert t == datetime(2026, 12, 7, 18, tzinfo=timezone.utc)
    assert sum("no UTC offset" in r.getMessage() for r in caplog.records) == 1  # once, not per message
