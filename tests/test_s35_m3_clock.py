"""A station's clock offset is estimated from its live messages only: what it queued while
offline (minutes old on arrival) says nothing of its clock."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from nowblock.ocpp import profiles as pr
from nowblock.ocpp.edge import ClockOffset

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
