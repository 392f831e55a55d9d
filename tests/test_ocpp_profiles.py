"""Pure parts of the OCPP package: profile building, stacking rules, meter parsing, auth, framing."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from nowblock.ocpp import profiles as pr
from nowblock.ocpp.auth import hash_password, verify_password
from nowblock.ocpp.meter import parse_meter_values
from nowblock.ocpp.server import identity_from_path
from nowblock.testing import make_test_site

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


def prof(version, purpose, a, connector=1, tx=None, level=None, validity_s=900, pid=None, now=T0, unit="A"):
    payload = pr.build_profile(version, purpose, a, connector_id=connector, now=now, validity_s=validity_s,
                               transaction_id=tx, stack_level=level, profile_id=pid, unit=unit)
    return pr.Profile.from_payload(0 if purpose in pr.MAX_PURPOSES else connector, payload)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_build_profile_floors_to_tenth_and_always_expires(version):
    p = pr.build_profile(version, pr.TX, 16.39, connector_id=2, now=T0, validity_s=600, transaction_id=7)
    sched = p["charging_schedule"] if version == "1.6" else p["charging_schedule"][0]
    assert sched["charging_schedule_period"][0]["limit"] == 16.3
    assert sched["duration"] > 600 and "valid_to" in p
    assert pr.parse_time(p["valid_to"]) == T0 + timedelta(seconds=600)
    assert p["transaction_id"] == (7 if version == "1.6" else "7")
    with pytest.raises(ValueError):
        pr.build_profile(version, pr.TX, 10, connector_id=1)


def test_build_profile_max_purpose_translated_per_version():
    assert pr.build_profile("2.0.1", pr.MAX_16, 10, connector_id=0)["charging_profile_purpose"] == pr.MAX_201
    assert pr.build_profile("1.6", pr.MAX_201, 10, connector_id=0)["charging_profile_purpose"] == pr.MAX_16


def test_watts_use_phases_and_voltage():
    p = pr.build_profile("1.6", pr.TX_DEFAULT, 10, connector_id=1, unit="W", phases=3, voltage_v=230)
    assert p["charging_schedule"]["charging_schedule_period"][0]["limit"] == 6900
    q = pr.Profile.from_payload(1, p)
    assert q.limit_at(pr.utcnow(), None, 230, 3) == pytest.approx(10)


def test_stacking_highest_level_wins_and_tx_overrides_default():
    low = prof("1.6", pr.TX_DEFAULT, 20, connector=0, level=0, pid=1)
    high = prof("1.6", pr.TX_DEFAULT, 12, connector=0, level=3, pid=2)
    t = T0 + timedelta(seconds=1)
    assert pr.active_limit_a([low, high], 1, t) == 12
    tx = prof("1.6", pr.TX, 25, tx=9, level=0, pid=3)
    assert pr.active_limit_a([low, high, tx], 1, t, transaction_id=9) == 25  # TxProfile replaces defaults
    assert pr.active_limit_a([low, high, tx], 1, t, transaction_id=10) == 12  # not this transaction's
    cap = prof("1.6", pr.MAX_16, 16, connector=0, pid=4)
    assert pr.active_limit_a([low, high, tx, cap], 1, t, transaction_id=9) == 16  # station maximum caps


def test_expired_profile_falls_through_to_lower_stack_level():
    base = prof("2.0.1", pr.TX_DEFAULT, 10, connector=0, level=0, pid=1, validity_s=7200)
    short = prof("2.0.1", pr.TX_DEFAULT, 30, connector=0, level=5, pid=2, validity_s=60)
    assert pr.active_limit_a([base, short], 1, T0 + timedelta(seconds=30)) == 30
    assert pr.active_limit_a([base, short], 1, T0 + timedelta(seconds=120)) == 10
    assert pr.active_limit_a([base, short], 1, T0 + timedelta(hours=3)) is None


def test_multi_period_relative_and_recurring_schedules():
    rel = pr.Profile(id=1, connector_id=1, stack_level=0, purpose=pr.TX, kind="Relative",
                     periods=(pr.Period(0, 8), pr.Period(600, 16)))
    start = T0
    assert pr.active_limit_a([rel], 1, T0 + timedelta(seconds=10), transaction_id=1, tx_start=start) == 8
    assert pr.active_limit_a([rel], 1, T0 + timedelta(seconds=700), transaction_id=1, tx_start=start) == 16
    daily = pr.Profile(id=2, connector_id=0, stack_level=0, purpose=pr.TX_DEFAULT, kind="Recurring",
                       recurrency_kind="Daily", start_schedule=T0.replace(hour=0), duration_s=86400,
                       periods=(pr.Period(0, 32), pr.Period(17 * 3600, 6), pr.Period(21 * 3600, 32)))
    assert pr.active_limit_a([daily], 1, T0 + timedelta(days=3, hours=6)) == 6  # 18:00 three days later
    sched = pr.composite_schedule_a([daily], 1, T0, 12 * 3600)
    assert sched == [(0.0, 32.0), (5 * 3600.0, 6.0), (9 * 3600.0, 32.0)]


def test_replace_and_clear_rules():
    a = prof("1.6", pr.TX_DEFAULT, 10, connector=1, level=0, pid=11)
    b = prof("1.6", pr.TX_DEFAULT, 12, connector=1, level=0, pid=12)  # same purpose/level/connector
    c = prof("1.6", pr.TX_DEFAULT, 14, connector=1, level=1, pid=13)
    d = prof("1.6", pr.MAX_16, 20, pid=14)
    ps = []
    for p in (a, b, c, d):
        ps = pr.add_profile(ps, p)
    assert sorted(p.id for p in ps) == [12, 13, 14]
    left, n = pr.clear_matching(ps, profile_id=13)
    assert n == 1 and sorted(p.id for p in left) == [12, 14]
    left, n = pr.clear_matching(ps, purpose=pr.TX_DEFAULT, stack_level=0)
    assert n == 1 and sorted(p.id for p in left) == [13, 14]
    left, n = pr.clear_matching(ps, purpose=pr.MAX_201)  # either spelling of the station maximum
    assert n == 1
    left, n = pr.clear_matching(ps)
    assert n == 3 and left == []


def test_failsafe_share_keeps_every_fuse_safe():
    site = make_test_site(5, grid_a=63, feeder_a=40)
    share = pr.failsafe_current_a(site)
    assert np.allclose(share, 8.0)  # feeder 40 A / 5
    assert (site.fuse_phase_currents_a(share, np.arange(5), np.full(5, 3)) <= site.limits_a + 1e-9).all()
    tight = make_test_site(8, grid_a=40)
    assert (pr.failsafe_current_a(tight) == 0).all()  # 5 A each is below the 6 A minimum


def test_failsafe_share_is_the_controllers_rule_in_0_1_a_steps():
    from nowblock.seam import failsafe_current_a
    from nowblock.block.site import ChargePoint, Fuse, Site

    rot = ["L1L2L3", "L2L3L1", "L3L1L2"]
    cps = tuple(ChargePoint(id=f"CP{i}", fuse="grid", phases=1, phase_rotation=rot[i % 3]) for i in range(6))
    site = Site("t", (Fuse("grid", (40.0,) * 3),), cps)
    share = pr.failsafe_current_a(site)
    # Single-phase points wired to different grid phases: two per phase, 20 A each (not 40 / 6).
    assert np.allclose(share, 20.0)
    assert (site.fuse_phase_currents_a(share, np.arange(6), site.cp_phases) <= site.limits_a + 1e-9).all()
    odd = make_test_site(3, grid_a=40)
    assert np.allclose(pr.failsafe_current_a(odd), 13.3)  # floored to 0.1 A, never rounded up
    assert np.allclose(failsafe_current_a(odd, 0.0).to_numpy(), 13.0)  # the controller's whole amperes


def test_password_hash_roundtrip():
    h = hash_password("s3cret", n=2**10)
    assert h.startswith("scrypt$1024$8$1$")
    assert verify_password("s3cret", h)
    assert not verify_password("wrong", h)
    assert not verify_password("s3cret", "garbage")
    assert hash_password("s3cret", n=2**10) != h  # salted


def test_identity_from_path():
    assert identity_from_path("/CP01") == "CP01"
    assert identity_from_path("/ocpp/ws/CP%2001?x=1") == "CP 01"
    assert identity_from_path("/") == ""


def test_parse_meter_values_both_versions():
    v16 = [{"timestamp": "2026-01-05T12:00:00Z", "sampled_value": [
        {"value": "12.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
        {"value": "7.1", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
        {"value": "oops", "measurand": "Power.Active.Import"},
        {"value": "55", "measurand": "SoC", "unit": "Percent"}]}]
    r, ts = parse_meter_values(v16)
    assert r == {"energy_wh": 12500.0, "current_l2_a": 7.1, "soc_percent": 55.0}
    assert ts == T0
    v201 = [{"timestamp": "2026-01-05T12:00:10Z", "sampled_value": [
        {"value": 4.2, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W", "multiplier": 3}},
        {"value": 16, "measurand": "Current.Import", "phase": "L1-N"}]}]
    r, _ = parse_meter_values(v201)
    assert r == {"power_w": 4200.0, "current_l1_a": 16.0}


def test_timestamps_take_rfc3339_in_either_case():
    """RFC 3339 (5.6) allows a lower-case "t" and "z": a station sending them was refused
    (TypeConstraintViolation on StartTransaction)."""
    want = datetime(2026, 12, 7, 5, 46, 52, 499000, tzinfo=timezone.utc)
    for s in ("2026-12-07T05:46:52.499Z", "2026-12-07t05:46:52.499z", "2026-12-07T05:46:52.499+00:00",
              "2026-12-07t07:46:52.499+02:00"):
        assert pr.parse_time(s) == want
    with pytest.raises(ValueError):
        pr.parse_time("2026-13-07t05:46:52z")  # month 13


def test_power_per_phase_alone_gives_each_phases_current():
    """A charger set to sample Power.Active.Import per phase (and no current) left every car's
    draw unknown, so a car ignoring its limit could not be seen; each phase's current is its power
    at the site's voltage."""
    from nowblock.ocpp.state import LiveState

    mv = [{"timestamp": "2026-01-05T12:00:00Z", "sampled_value": [
        {"value": "3680", "measurand": "Power.Active.Import", "phase": "L1-N", "unit": "W"},
        {"value": "2.3", "measurand": "Power.Active.Import", "phase": "L2", "unit": "kW"},
        {"value": "0", "measurand": "Power.Active.Import", "phase": "L3-N", "unit": "W"},
        {"value": "400", "measurand": "Voltage", "phase": "L1-L2", "unit": "V"}]}]
    r, _ = parse_meter_values(mv)
    assert r["power_l1_w"] == 3680.0 and r["power_l2_w"] == 2300.0 and r["power_w"] == 5980.0
    site = make_test_site(1)
    state = LiveState(site)
    state.on_connect("CP1", "1.6")
    state.on_start("CP1", 1, "7", start=T0, meter_start_wh=0.0)
    state.on_meter("CP1", 1, "7", r, T0 + timedelta(seconds=30))
    t = state.transaction("CP1", "7")
    v = site.voltage_v
    assert t.current_a == pytest.approx((3680.0 / v, 2300.0 / v, 0.0))
    assert state.snapshot(T0 + timedelta(seconds=30))["measured_current_a"].iloc[0] == pytest.approx(3680.0 / v)
