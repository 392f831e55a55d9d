"""Session needs (departure, energy) and arrivals, learnt from past sessions with habits."""

import numpy as np
import pandas as pd
import pytest

from nowblock.forecast import ArrivalForecaster, Calendar, ForecastError, SessionNeedsForecaster

TZ = "Europe/Berlin"
HABITS = {  # charge point: (arrival hour, dwell [h], energy [kWh]) on workdays
    "CP1": (8.0, 9.0, 6.0),  # parks at work during the day
    "CP2": (18.0, 13.0, 20.0),  # comes home in the evening, leaves in the morning
    "CP3": (13.0, 4.0, 3.0),
}


def _day_type(t):
    return int(Calendar().day_types(np.array([(t.tz_localize(None) - pd.Timestamp("1970-01-01")).days]))[0])


def _sessions(days=42, seed=0, start="2024-09-02"):
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(days):
        day = pd.Timestamp(start, tz=TZ) + pd.Timedelta(days=d)
        if _day_type(day) >= 5:  # weekends and NRW holidays (2024-10-03) off
            continue
        for cp, (h, dwell, e) in HABITS.items():
            arr = day + pd.Timedelta(hours=h + 0.4 * rng.standard_normal())
            dep = arr + pd.Timedelta(hours=max(dwell + 0.5 * rng.standard_normal(), 0.5))
            rows.append((f"{cp}-{d}", cp, arr, dep, max(e * (1 + 0.15 * rng.standard_normal()), 0.1)))
    df = pd.DataFrame(rows, columns=["session_id", "charge_point_id", "arrival", "departure", "energy_kwh"])
    if not rows:
        return df.astype({"arrival": "datetime64[ns, UTC]", "departure": "datetime64[ns, UTC]", "energy_kwh": float})
    df["arrival"] = df["arrival"].dt.tz_convert("UTC")
    df["departure"] = df["departure"].dt.tz_convert("UTC")
    return df


@pytest.fixture(scope="module")
def fitted():
    return SessionNeedsForecaster(departure_point=0.5, energy_point=0.5).fit(_sessions())


def _cars(cp, arrival, delivered=0.0, sid="q"):
    return pd.DataFrame({"charge_point_id": [cp], "arrival": [arrival], "energy_delivered_kwh": [delivered]},
                        index=pd.Index([sid], name="session_id"))


@pytest.mark.parametrize("cp", sorted(HABITS))
def test_learns_each_charge_points_habit(fitted, cp):
    h, dwell, energy = HABITS[cp]
    arrival = pd.Timestamp("2024-10-15", tz=TZ) + pd.Timedelta(hours=h)
    got = fitted.predict_needs(_cars(cp, arrival), arrival).iloc[0]
    err_h = abs((got["departure"] - arrival) / pd.Timedelta(hours=1) - dwell)
    assert err_h < 1.0
    assert abs(got["energy_kwh"] - energy) < 0.2 * energy


def test_output_contract_and_conditioning(fitted):
    arrival = pd.Timestamp("2024-10-15 18:00", tz=TZ)
    cars = pd.concat([
        _cars("CP2", arrival, 0.0, "a"),
        _cars("CP2", arrival, 15.0, "b"),  # already took most of its usual energy
        _cars("CP2", arrival - pd.Timedelta(days=3), 40.0, "c"),  # stayed and took more than anyone
        _cars("CP-new", arrival, 0.0, "d"),  # a charging point never seen
    ])
    now = arrival + pd.Timedelta(hours=2)
    out = fitted.predict_needs(cars, now)
    assert list(out.index) == ["a", "b", "c", "d"] and out.index.name == "session_id"
    assert {"departure", "energy_kwh", "departure_q0.1", "energy_kwh_q0.9"} <= set(out.columns)
    assert str(out["departure"].dt.tz) == "UTC"
    assert out.notna().all().all()
    for base in ("departure", "energy_kwh"):
        cols = [f"{base}_q0.1", f"{base}_q0.25", base, f"{base}_q0.75", f"{base}_q0.9"]  # base: median
        vals = out[cols].apply(lambda c: c.astype("int64") if base == "departure" else c).to_numpy()
        assert (np.diff(vals, axis=1) >= 0).all(), base
    assert (out.filter(like="departure") > now).all().all()
    assert (out.filter(like="energy").to_numpy() >= cars["energy_delivered_kwh"].to_numpy()[:, None]).all()
    assert out.loc["b", "energy_kwh"] > 15.0  # more than delivered: the usual 20 kWh
    assert out.loc["c", "energy_kwh"] == 40.0  # nobody wanted more: it is done
    assert out.loc["c", "departure"] <= now + pd.Timedelta(hours=1)


def test_planning_points_are_the_requested_quantiles():
    est = SessionNeedsForecaster().fit(_sessions())  # defaults: plan with departure q0.1, energy q0.9
    t = pd.Timestamp("2024-10-15 18:00", tz=TZ)
    out = est.predict_needs(_cars("CP2", t), t)
    assert (out["departure"] == out["departure_q0.1"]).all()
    assert (out["energy_kwh"] == out["energy_kwh_q0.9"]).all()
    assert out["energy_kwh_q0.9"].iloc[0] > out["energy_kwh_q0.25"].iloc[0]
    with pytest.raises(ForecastError, match="departure_point"):
        SessionNeedsForecaster(energy_point=1.0)


def test_full_car_wants_no_more_and_departures_are_tracked(fitted):
    t = pd.Timestamp("2024-10-15 20:00", tz=TZ)
    cars = _cars("CP2", t - pd.Timedelta(hours=2), 5.0).assign(
        measured_current_a=[0.0], offered_current_a=[16.0], min_current_a=[6.0])
    assert fitted.predict_needs(cars, t)["energy_kwh"].iloc[0] == 5.0  # offered, drew nothing: full
    est = SessionNeedsForecaster(departure_point=0.5, energy_point=0.5).fit(_sessions())
    cp2_last = est._last_dep_ns["CP2"]
    est.predict_needs(_cars("CP2", t, 0.0, "x"), t)
    later = t + pd.Timedelta(hours=10)
    est.predict_needs(_cars("CP1", later, 0.0, "y"), later)  # "x" is gone: it left by now
    assert est._last_dep_ns["CP2"] == t.value > cp2_last


def test_id_tag_separates_drivers_sharing_a_charge_point():
    rng = np.random.default_rng(1)
    rows = []
    for d in range(30):
        day = pd.Timestamp("2024-09-02", tz="UTC") + pd.Timedelta(days=d)
        for tag, e in (("alice", 5.0), ("bob", 30.0)):
            arr = day + pd.Timedelta(hours=17 + rng.random())
            rows.append((f"{tag}{d}", "CP1", tag, arr, arr + pd.Timedelta(hours=12), e + rng.random()))
    df = pd.DataFrame(rows, columns=["session_id", "charge_point_id", "id_tag", "arrival", "departure", "energy_kwh"])
    est = SessionNeedsForecaster(departure_point=0.5, energy_point=0.5).fit(df)
    cars = pd.DataFrame({"charge_point_id": ["CP1"] * 3, "id_tag": ["alice", "bob", None],
                         "arrival": [pd.Timestamp("2024-10-10 17:30", tz="UTC")] * 3},
                        index=pd.Index(["a", "b", "anon"], name="session_id"))
    out = est.predict_needs(cars, cars["arrival"].iloc[0])
    assert out.loc["a", "energy_kwh"] < 7 and out.loc["b", "energy_kwh"] > 28
    assert 5 < out.loc["anon", "energy_kwh_q0.9"]


def test_tiny_or_bad_history():
    with pytest.raises(ForecastError, match="missing column"):
        SessionNeedsForecaster().fit(pd.DataFrame({"arrival": []}))
    with pytest.raises(ForecastError, match="no usable session"):
        df = _sessions(days=3)
        SessionNeedsForecaster().fit(df.assign(departure=df["arrival"]))
    est = SessionNeedsForecaster().fit(_sessions(days=1))  # three sessions: population answer
    t = pd.Timestamp("2024-10-15 12:00", tz=TZ)
    out = est.predict_needs(_cars("CP9", t), t)
    assert out.notna().all().all() and (out["departure"] > t).all()
    with pytest.raises(ForecastError, match="before predict"):
        SessionNeedsForecaster().predict_needs(_cars("CP1", t), t)


def test_beats_population_median_on_habitual_data(fitted):
    test = _sessions(days=14, seed=9, start="2024-10-14")
    cars = test.set_index("session_id")[["charge_point_id", "arrival"]]
    errs = {}
    for name, fn in (("knn", fitted.predict_needs), ("pop", fitted.population_baseline)):
        preds = pd.concat([fn(cars.iloc[[i]], cars["arrival"].iloc[i]) for i in range(len(cars))])
        truth = test.set_index("session_id")
        errs[name] = (((preds["departure"] - truth["departure"]).abs() / pd.Timedelta(hours=1)).mean(),
                      (preds["energy_kwh"] - truth["energy_kwh"]).abs().mean())
    assert errs["knn"][0] < 0.5 * errs["pop"][0] and errs["knn"][1] < 0.5 * errs["pop"][1]


def test_arrivals_follow_the_weekly_rhythm():
    df = _sessions(days=42)
    end = pd.Timestamp("2024-10-14", tz=TZ)
    fc = ArrivalForecaster().fit(df, end=end).predict(end, "7D")
    assert list(fc.columns) == ["arrivals", "energy_kwh", "energy_total_kwh", "dwell_h"]
    assert len(fc) == 7 * 96 and np.isfinite(fc.to_numpy()).all()
    local = fc.index.tz_convert(TZ)
    per_day = fc["arrivals"].groupby(local.date).sum().to_numpy()
    np.testing.assert_allclose(per_day[:5], 3.0, rtol=0.02)  # three cars every workday
    assert per_day[5:].max() < 0.05  # nobody comes at the weekend
    evening = (local.day_of_week == 0) & (local.hour == 18)
    night = (local.day_of_week == 0) & (local.hour == 3)
    assert fc["arrivals"][evening].sum() > 0.3 and fc["arrivals"][night].sum() < 0.01
    assert fc.loc[evening, "energy_kwh"].mean() == pytest.approx(20.0, rel=0.15)
    assert fc.loc[evening, "dwell_h"].mean() == pytest.approx(13.0, rel=0.15)


def test_arrivals_errors():
    with pytest.raises(ForecastError, match="divide a day"):
        ArrivalForecaster(step="7min")
    with pytest.raises(ForecastError, match="empty"):
        ArrivalForecaster().fit(_sessions(days=0))
    est = ArrivalForecaster().fit(_sessions(days=0), start="2024-09-02 00:00+02:00", end="2024-09-09 00:00+02:00")
    assert est.predict(pd.Timestamp("2024-09-10", tz=TZ), 8)["arrivals"].sum() == 0.0


def test_kind_of_day_tells_the_next_morning_apart():
    est = SessionNeedsForecaster()
    # Fri 2024-10-04 (workday before a day off), Sat 10-05 (off before off), Sun 10-06 (off
    # before a workday), Mon 10-07 (workday before a workday), Wed 10-02 (before the 10-03 holiday);
    # kind = 2 * (day off) + (next day off)
    days = ["2024-10-04", "2024-10-05", "2024-10-06", "2024-10-07", "2024-10-02"]
    arr = pd.DatetimeIndex([pd.Timestamp(d, tz=TZ) + pd.Timedelta(hours=19) for d in days]).tz_convert("UTC")
    kind, hour = est._kind_hour(arr.as_unit("ns").asi8)
    assert kind.tolist() == [1, 3, 2, 0, 1]
    np.testing.assert_allclose(hour, 19.0)


def test_online_forecaster_learns_the_sessions_that_end():
    """Without history the block's own sessions become the history: each one that ends is
    learnt with its charging point, arrival, the step it left in and the energy it took (up to
    its last step); the
    model is fitted once enough ended, and until then the fallback rule answers."""
    import nowblock as nb
    from nowblock.block.families import family_scenario
    from nowblock.forecast import OnlineNeedsForecaster

    scn = family_scenario("residential_elaad", n_charge_points=8, connection_fraction=0.3, days=3, seed=4)
    est = OnlineNeedsForecaster(min_sessions=5)
    t0 = scn.sessions["arrival"].iloc[:2].max()  # both have arrived (a car not yet arrived is refused)
    first = est.predict_needs(scn.sessions.iloc[:2].set_index("session_id"), t0)
    assert first["departure"].isna().all() and first["energy_kwh"].isna().all()
    est = OnlineNeedsForecaster(min_sessions=5)
    res = nb.simulate(scn, policy="equal", needs="unknown", needs_estimator=est)
    assert est.fits >= 1
    learnt = est.learnt.set_index("session_id")
    out = res.sessions.set_index("session_id")
    ended = out.index[out["departure"] < out["departure"].max() - pd.Timedelta("1h")]
    assert set(ended) <= set(learnt.index)
    got = learnt.loc[ended]
    assert (got["charge_point_id"] == out.loc[ended, "charge_point_id"]).all()
    dev = (got["departure"] - out.loc[ended, "departure"]).abs()
    assert (dev <= pd.Timedelta("10min")).all()
    # What it took up to the last step it was seen in (the last step's energy is not observed).
    took = out.loc[ended, "energy_delivered_kwh"]
    assert (got["energy_kwh"] <= took + 1e-9).all()
    assert (got["energy_kwh"] >= took - 16 * 3 * 0.23 / 12 - 1e-9).all()
    assert (got["energy_kwh"] >= took - 1e-9).mean() > 0.5


def test_online_estimates_are_provisional_until_the_model_has_seen_enough_sessions():
    """A forecaster fitted on few sessions marks its estimates provisional; the loop labels
    those cars "provisional" (not "fitted"), and once the model was fitted on enough sessions
    (here: four weeks of history given up front) they are "fitted" again."""
    from nowblock.block.families import family_scenario
    from nowblock.forecast import OnlineNeedsForecaster
    from nowblock.loop.needs import NeedsEstimation

    scn = family_scenario("residential_elaad", n_charge_points=8, connection_fraction=0.3, days=1, seed=4,
                          history_days=28)
    hist = scn.meta["history"]
    cars = scn.sessions.iloc[:3].set_index("session_id")
    t = cars["arrival"].max() + pd.Timedelta("5min")

    few = OnlineNeedsForecaster(history=hist.iloc[:40], min_sessions=20, provisional_below=100)
    out = few.predict_needs(cars, t)
    assert few.fitted_on == 40 and out["provisional"].all()
    assert out["departure"].notna().all() and out["energy_kwh"].notna().all()

    many = OnlineNeedsForecaster(history=hist, min_sessions=20, provisional_below=100)
    assert len(hist) >= 100
    assert not many.predict_needs(cars, t)["provisional"].any()

    snap_cols = cars.assign(departure=pd.NaT, energy_requested_kwh=np.nan, needs_known=False,
                            energy_delivered_kwh=0.0, measured_current_a=np.nan, offered_current_a=np.nan,
                            min_current_a=6.0)
    snap_cols["departure"] = pd.to_datetime(snap_cols["departure"], utc=True)
    step = pd.Timedelta("5min")
    labels_few = NeedsEstimation(OnlineNeedsForecaster(history=hist.iloc[:40], provisional_below=100)).fill(
        snap_cols, t, full=set(), step=step)["needs_estimate"]
    labels_many = NeedsEstimation(OnlineNeedsForecaster(history=hist, provisional_below=100)).fill(
        snap_cols, t, full=set(), step=step)["needs_estimate"]
    assert (labels_few == "provisional").all()
    assert (labels_many == "fitted").all()
    with pytest.raises(ValueError, match="provisional_below"):
        OnlineNeedsForecaster(provisional_below=-1)


def test_online_forecaster_refuses_naive_times():
    from nowblock.forecast import OnlineNeedsForecaster
    from nowblock.forecast.calendar import ForecastError

    with pytest.raises(ForecastError):
        OnlineNeedsForecaster().predict_needs(pd.DataFrame(), pd.Timestamp("2026-03-02 17:00"))
    with pytest.raises(ValueError):
        OnlineNeedsForecaster(min_sessions=0)


def test_a_car_arriving_after_the_time_asked_about_is_refused():
    """A car plugged in has arrived: one that arrives after ``time`` is refused naming it (it was
    estimated from an elapsed time of zero), by the fitted and the online forecaster alike, and
    nothing is recorded; the loop asks about such a car (a station clock ahead) as arriving now."""
    from nowblock.forecast import OnlineNeedsForecaster
    from nowblock.loop.needs import NeedsEstimation

    est = SessionNeedsForecaster(departure_point=0.5, energy_point=0.5).fit(_sessions())
    now = pd.Timestamp("2024-10-15 18:00", tz=TZ)
    cars = pd.concat([_cars("CP2", now - pd.Timedelta("1h"), sid="here"),
                      _cars("CP2", now + pd.Timedelta("10min"), sid="later")])
    with pytest.raises(ForecastError, match=r"session 'later' arrives at 2024-10-15T16:10:00\+00:00, after the "
                                            r"time asked about \(2024-10-15T16:00:00\+00:00\)"):
        est.predict_needs(cars, now)
    assert est._seen == {}  # refused whole: not tracked
    assert len(est.predict_needs(cars.iloc[:1], now)) == 1
    assert len(est.predict_needs(_cars("CP2", now, sid="just"), now)) == 1  # arriving at the time asked about

    online = OnlineNeedsForecaster(history=_sessions(), min_sessions=20)
    with pytest.raises(ForecastError, match="session 'later' arrives"):
        online.predict_needs(cars, now)
    assert online._open == {} and online.fits == 0

    snap = cars.assign(departure=pd.to_datetime(pd.Series(pd.NaT, index=cars.index), utc=True),
                       energy_requested_kwh=np.nan, needs_known=False, measured_current_a=np.nan,
                       offered_current_a=np.nan, min_current_a=6.0)
    filled = NeedsEstimation(SessionNeedsForecaster(departure_point=0.5, energy_point=0.5).fit(_sessions())).fill(
        snap, now, full=set(), step=pd.Timedelta("5min"))
    assert list(filled["needs_estimate"]) == ["fitted", "fitted"]  # not every car on the fallback
    assert (filled["departure"] > now).all()


def test_dates_pandas_cannot_compute_in_raise_forecast_error(fitted):
    """Years 2300 and 1600, or a time asked about at pandas' last day, once raised pandas'
    OutOfBoundsDatetime many frames deep (found by an outside test); a ForecastError now names
    the argument and the range."""
    from nowblock.forecast import OnlineNeedsForecaster

    for year in ("2300", "1600"):
        far = _sessions(days=10).assign(  # microsecond timestamps reach these years
            arrival=lambda d: d["arrival"].dt.as_unit("us") + (pd.Timestamp(f"{year}-01-01") - pd.Timestamp("2024-09-01")),
            departure=lambda d: d["departure"].dt.as_unit("us") + (pd.Timestamp(f"{year}-01-01") - pd.Timestamp("2024-09-01")))
        with pytest.raises(ForecastError, match=r"sessions.arrival: .* outside the range .*1677-09-21 to 2262-04-11"):
            SessionNeedsForecaster().fit(far)
        with pytest.raises(ForecastError, match="sessions.arrival: .* outside the range"):
            ArrivalForecaster().fit(far)
        t = pd.Timestamp(f"{year}-01-01T12:00", tz="UTC")
        with pytest.raises(ForecastError, match="cars.arrival: .* outside the range"):
            fitted.predict_needs(_cars("CP1", t), pd.Timestamp("2024-10-15", tz=TZ))
    late = pd.Timestamp("2262-04-11T20:00", tz="UTC")
    for est in (fitted, OnlineNeedsForecaster()):
        with pytest.raises(ForecastError, match="time: 2262-04-11T20:00:00\\+00:00 is outside the range"):
            est.predict_needs(_cars("CP1", late - pd.Timedelta("1h")), late)
    arrivals = ArrivalForecaster().fit(_sessions(days=14))
    with pytest.raises(ForecastError, match="horizon: .* runs past"):
        arrivals.predict(pd.Timestamp("2262-04-08T20:00", tz="UTC"), "2D")
    # a long stay near the end of the range ends at pandas' last timestamp, it does not wrap round
    edge = pd.Timestamp("2262-04-09", tz="UTC")
    got = SessionNeedsForecaster(fallback_remaining="30D").fit(_sessions()).predict_needs(
        _cars("CP1", edge - pd.Timedelta("400D")), edge)
    assert (got["departure"] > edge + pd.Timedelta("2D")).all()


def _home_18_to_07(first: str, last: str, cp: str) -> pd.DataFrame:
    """A resident's sessions at ``cp``: every day from ``first`` to ``last``, 18:00 to 07:00 the
    next morning by the local clock (TZ), 10 kWh each."""
    rows = []
    for k, day in enumerate(pd.date_range(first, last, freq="D")):
        arr = pd.Timestamp(f"{day:%Y-%m-%d} 18:00").tz_localize(TZ)
        dep = pd.Timestamp(f"{day + pd.Timedelta(days=1):%Y-%m-%d} 07:00").tz_localize(TZ)
        rows.append((f"s{k}", cp, arr.tz_convert("UTC"), dep.tz_convert("UTC"), 10.0))
    return pd.DataFrame(rows, columns=["session_id", "charge_point_id", "arrival", "departure", "energy_kwh"])


@pytest.mark.parametrize("anchor_day, switch", [("2026-03-28", "spring"), ("2026-10-24", "autumn")])
def test_departure_keeps_the_local_clock_across_a_dst_switch(anchor_day, switch):
    """A resident who always leaves at 07:00 local time leaves at 07:00 the morning after a DST
    switch too. Stays were learnt and added as elapsed hours, so the night of 29 March (23 h)
    was forecast to end at 08:00 CEST, an hour after the car had gone, and 25 October (25 h) at
    06:00 CET (found by an outside test)."""
    hist = _home_18_to_07("2025-10-01", "2026-12-20", "CP2")
    for day in (anchor_day, "2026-06-10", "2026-12-01"):
        now = pd.Timestamp(f"{day} 18:30").tz_localize(TZ)
        past = hist[hist["departure"] < now]
        got = SessionNeedsForecaster(track=False).fit(past).predict_needs(
            _cars("CP2", pd.Timestamp(f"{day} 18:00").tz_localize(TZ)), now)
        want = pd.Timestamp(f"{pd.Timestamp(day) + pd.Timedelta(days=1):%Y-%m-%d} 07:00").tz_localize(TZ)
        for col in ("departure", "departure_q0.1", "departure_q0.9"):
            assert got[col].iloc[0] == want, (switch, day, col, got[col].iloc[0].tz_convert(TZ))


def test_wall_clock_round_trip_reads_dst_hours_early():
    """Calendar.wall_ns / from_wall_ns: the needs forecaster's stays are wall-clock hours; a wall
    time the clock shows twice is read as its first instant, one it skips as the instant before."""
    cal = Calendar()
    utc = pd.DatetimeIndex(["2026-10-25T00:30Z", "2026-10-25T01:30Z", "2026-03-29T00:30Z", "2026-07-01T12:00Z"]).as_unit("ns")
    wall = cal.wall_ns(utc.asi8)
    assert list(pd.DatetimeIndex(wall.astype("datetime64[ns]")).strftime("%m-%d %H:%M")) == [
        "10-25 02:30", "10-25 02:30", "03-29 01:30", "07-01 14:00"]
    back = pd.DatetimeIndex(cal.from_wall_ns(wall).astype("datetime64[ns]")).tz_localize("UTC")
    assert list(back) == [utc[0], utc[0], utc[2], utc[3]]  # the repeated hour: its first instant
    skipped = pd.Timestamp("2026-03-29T02:30").as_unit("ns").value  # no such wall time in Berlin
    t = pd.Timestamp(int(cal.from_wall_ns([skipped])[0]), tz="UTC")
    assert pd.Timestamp("2026-03-29T00:59Z") < t < pd.Timestamp("2026-03-29T01:00Z")


def test_expected_arrivals_stay_by_the_local_clock_across_a_dst_switch():
    """Expected cars that arrive at 18:00 and leave at 07:00 local time stay 12 h on the night of
    29 March and 14 h on that of 25 October; their stay was learnt and given in elapsed hours,
    13 h every night, so they were planned to leave at 08:00 and 06:00 (found by an outside test)."""
    hist = _home_18_to_07("2026-01-05", "2026-12-20", "CP1")
    for day, hours in (("2026-03-28", 12.0), ("2026-06-10", 13.0), ("2026-10-24", 14.0)):
        fc = ArrivalForecaster().fit(hist[hist["departure"] < pd.Timestamp(day, tz=TZ)]).predict(
            pd.Timestamp(f"{day} 18:00", tz=TZ), 1)
        assert fc["dwell_h"].iloc[0] == pytest.approx(hours, abs=0.01), day


def test_a_session_without_a_departure_tells_the_arrival_forecaster_nothing_about_stays():
    """Found by a review: one session whose departure is missing (still plugged in) made the stay
    learnt for its slot 284,170 h once departures were read as local wall-clock times."""
    from nowblock.forecast.arrivals import ArrivalForecaster

    t = pd.date_range("2026-03-02 18:00", periods=10, freq="1D", tz="Europe/Berlin")
    s = pd.DataFrame({"arrival": t, "departure": t + pd.Timedelta(hours=13), "energy_kwh": 10.0})
    s.loc[9, "departure"] = pd.NaT
    s.loc[8, "departure"] = s.loc[8, "arrival"] - pd.Timedelta(hours=1)  # leaves before it came
    p = ArrivalForecaster(step="1h").fit(s).predict(pd.Timestamp("2026-03-16 18:00", tz="Europe/Berlin"), "1h")
    assert p["dwell_h"].iloc[0] == pytest.approx(13.0)
