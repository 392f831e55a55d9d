"""Dispatch of a step's limits: the two waves, re-sending to cars that do not follow, escalation."""

from __future__ import annotations

import pandas as pd

from nowblock.control.dispatch import Escalation, plan_waves

T0 = pd.Timestamp("2026-03-02 17:00", tz="UTC")


def test_lowered_limits_leave_before_raises_and_unchanged_ones_stay_home():
    sent = {"a": (20.0, T0), "b": (20.0, T0), "c": (10.0, T0)}
    targets = pd.Series({"a": 13.3, "b": 13.3, "c": 10.0, "new": 13.3})
    offered = pd.Series({"a": 20.0, "b": 20.0, "c": 10.0, "new": 13.3})  # the new car holds its 13.3 A default
    lower, higher = plan_waves(targets, sent, offered, T0 + pd.Timedelta(seconds=5), refresh_s=300)
    assert lower == [("new", 13.3), ("a", 13.3), ("b", 13.3)] and higher == []  # the new car first
    # One car leaves: the others go up, in the second wave only.
    sent = {s: (13.3, T0) for s in ("b", "c", "new")}
    lower, higher = plan_waves(pd.Series({"b": 20.0, "c": 13.3, "new": 20.0}), sent, offered, T0, refresh_s=300)
    assert lower == [] and higher == [("b", 20.0), ("new", 20.0)]


def test_a_new_car_above_its_default_is_a_raise_and_old_limits_are_refreshed():
    offered = pd.Series({"new": 0.0, "old": 16.0})  # 0 A idle default
    sent = {"old": (16.0, T0)}
    lower, higher = plan_waves(pd.Series({"new": 16.0, "old": 16.0}), sent, offered, T0 + pd.Timedelta(seconds=100),
                               refresh_s=300)
    assert lower == [] and higher == [("new", 16.0)]
    lower, higher = plan_waves(pd.Series({"old": 16.0}), sent, offered, T0 + pd.Timedelta(seconds=301), refresh_s=300)
    assert lower == [("old", 16.0)]  # due for a refresh before its profile can expire
    lower, _ = plan_waves(pd.Series({"old": 16.0}), sent, offered, T0, refresh_s=300, resend={"old"})
    assert lower == [("old", 16.0)]  # a car not following gets its limit again


def test_escalation_backs_off_then_escalates_then_alarms_and_forgets_a_car_that_follows():
    e = Escalation(backoff_s=5.0, max_backoff_s=40.0, grace_s=60.0, alarm_s=120.0)
    t = T0
    e.update({"a": "over_draw"}, t)
    sends = []
    for k in range(0, 130, 5):
        now = t + pd.Timedelta(seconds=k)
        due = e.due(now)
        if due:
            sends.append(k)
            e.tried(due, now)
    assert sends == [0, 5, 15, 35, 75, 115]  # pauses 5, 10, 20, 40, 40 s
    assert e.to_escalate(t + pd.Timedelta(seconds=59)) == [] and e.to_escalate(t + pd.Timedelta(seconds=60)) == ["a"]
    e.escalated.add("a")
    assert e.to_escalate(t + pd.Timedelta(seconds=90)) == []
    assert e.to_alarm(t + pd.Timedelta(seconds=120)) == ["a"]
    e.update({}, t + pd.Timedelta(seconds=130))  # it follows again
    assert e.since == {} and e.due(t + pd.Timedelta(seconds=131)) == set() and "a" not in e.escalated
