"""Base-load estimators: seasonality, holidays, quantiles, short and gappy history, the hook."""

import numpy as np
import pandas as pd
import pytest

from nowblock.forecast import (
    BaseLoadForecaster,
    Calendar,
    ForecastError,
    SeasonalNaiveForecaster,
    SimilarDayForecaster,
)

TZ = "Europe/Berlin"


def _shape(idx: pd.DatetimeIndex, holidays_as_sunday: bool = True) -> np.ndarray:
    """A clear weekly pattern: workdays peak in the evening, Sundays (and holidays) at noon."""
    local = idx.tz_convert(TZ)
    h = (local.hour + local.minute / 60).to_numpy()
    dtype = Calendar().day_types((local.tz_localize(None).normalize() - pd.Timestamp("1970-01-01")).days.to_numpy())
    workday = 1.0 + 2.0 * np.exp(-0.5 * ((h - 19) / 1.5) ** 2)
    sunday = 1.0 + 2.0 * np.exp(-0.5 * ((h - 12) / 1.5) ** 2)
    saturday = 1.5 + 0 * h
    return np.where(dtype == 6, sunday, np.where(dtype == 5, saturday, workday))


def _series(start="2024-08-01", days=56, noise=0.1, seed=0, step="15min"):
    idx = pd.date_range(start, periods=int(days * pd.Timedelta("1D") / pd.Timedelta(step)), freq=step, tz=TZ)
    rng = np.random.default_rng(seed)
    return pd.Series(_shape(idx) + noise * rng.standard_normal(len(idx)), index=idx, name="kw")


def _q_cols(df):
    return sorted((c for c in df.columns if c.startswith("q")), key=lambda c: float(c[1:]))


@pytest.fixture(scope="module")
def history():
    return _series()


def test_similar_day_learns_daily_and_weekly_seasonality(history):
    fit = SimilarDayForecaster().fit(history.iloc[:-672])
    fc = fit.predict("7D")
    truth = _shape(fc.index)
    assert fc.index[0] == history.index[-672]
    assert len(fc) == 672 and list(fc.columns[:1]) == ["kw"]
    mae = np.abs(fc["kw"].to_numpy() - truth).mean()
    assert mae < 0.1  # the pattern spans 2 kW; noise sd is 0.1
    # weekday and Sunday shapes differ where they should
    local = fc.index.tz_convert(TZ)
    evening = fc["kw"][(local.day_of_week == 2) & (local.hour == 19)].mean()
    sunday_evening = fc["kw"][(local.day_of_week == 6) & (local.hour == 19)].mean()
    assert evening > sunday_evening + 1.0


def test_similar_day_beats_seasonal_naive_on_noisy_load():
    s = _series(noise=0.6, days=63, seed=1)
    hist, fut = s.iloc[:-672], s.iloc[-672:].to_numpy()
    sd = SimilarDayForecaster().fit(hist).predict(672)["kw"].to_numpy()
    sn = SeasonalNaiveForecaster().fit(hist).predict(672)["kw"].to_numpy()
    assert np.abs(fut - sd).mean() < 0.8 * np.abs(fut - sn).mean()


def test_holiday_is_forecast_like_a_sunday():
    # German Unity Day, Thursday 2024-10-03, is a public holiday in NRW
    s = _series(start="2024-08-01", days=63)
    hist = s[s.index < pd.Timestamp("2024-10-03", tz=TZ)]
    local = lambda fc: fc.index.tz_convert(TZ)  # noqa: E731
    with_hol = SimilarDayForecaster().fit(hist).predict("24h")
    no_hol = SimilarDayForecaster(calendar=Calendar(country=None)).fit(hist).predict("24h")
    assert (local(with_hol).date == pd.Timestamp("2024-10-03").date()).all()
    noon, evening = local(with_hol).hour == 12, local(with_hol).hour == 19
    assert with_hol["kw"][noon].mean() > with_hol["kw"][evening].mean() + 1.0  # Sunday shape
    assert no_hol["kw"][evening].mean() > no_hol["kw"][noon].mean() + 1.0  # plain Thursday
    truth = _shape(with_hol.index)
    assert np.abs(with_hol["kw"] - truth).mean() < np.abs(no_hol["kw"] - truth).mean() / 3


def test_holiday_in_history_does_not_spoil_the_weekday_profile():
    s = _series(start="2024-08-01", days=72)
    hist = s[s.index < pd.Timestamp("2024-10-10", tz=TZ)]  # next Thursday after the holiday
    last_same_type = dict(alphas_a=(1.0,), blends=(1.0,), half_widths=("0min",))
    fc = SimilarDayForecaster(**last_same_type).fit(hist).predict("24h")
    fc_no = SimilarDayForecaster(**last_same_type, calendar=Calendar(country=None)).fit(hist).predict("24h")
    truth = _shape(fc.index)
    # with holidays the profile comes from the last real Thursday; without, from the holiday
    assert np.abs(fc["kw"].to_numpy() - truth).mean() < 0.25
    assert np.abs(fc_no["kw"].to_numpy() - truth).mean() > 0.5


@pytest.mark.parametrize("model", [SimilarDayForecaster, SeasonalNaiveForecaster])
@pytest.mark.parametrize("seed", [0, 1])
def test_quantiles_are_monotone_and_cover(model, seed):
    s = _series(noise=0.5, days=70, seed=seed)
    fc = model().fit(s.iloc[:-672 * 2]).predict(672 * 2)
    cols = _q_cols(fc)
    assert cols == ["q0.05", "q0.1", "q0.5", "q0.9", "q0.95"]
    q = fc[cols].to_numpy()
    assert (np.diff(q, axis=1) >= 0).all()
    assert ((fc["q0.05"] <= fc["kw"]) & (fc["kw"] <= fc["q0.95"])).all()
    y = s.iloc[-672 * 2:].to_numpy()
    cover90 = (y <= fc["q0.9"].to_numpy()).mean()
    cover10 = (y <= fc["q0.1"].to_numpy()).mean()
    assert abs(cover90 - 0.9) < 0.06 and abs(cover10 - 0.1) < 0.06


def test_custom_quantiles_and_mean_point(history):
    fc = SimilarDayForecaster(quantiles=(0.8, 0.99), point="mean").fit(history).predict(8)
    assert list(fc.columns) == ["kw", "q0.8", "q0.99"]
    with pytest.raises(ForecastError, match="quantiles"):
        SimilarDayForecaster(quantiles=(0.5, 1.0))


@pytest.mark.parametrize("model", [SimilarDayForecaster, SeasonalNaiveForecaster])
def test_short_history_degrades_gracefully(model, history):
    with pytest.raises(ForecastError, match="finite readings"):
        model().fit(history.iloc[:3])
    for n in (12, 96, 3 * 96, 10 * 96):  # three hours, a day, three days, ten days
        fc = model().fit(history.iloc[:n]).predict("24h")
        assert len(fc) == 96 and np.isfinite(fc.to_numpy()).all(), n


@pytest.mark.parametrize("model", [SimilarDayForecaster, SeasonalNaiveForecaster])
def test_gappy_history_never_leaks_nan(model, history):
    s = history.copy()
    rng = np.random.default_rng(5)
    s.iloc[rng.random(len(s)) < 0.2] = np.nan
    s.iloc[1000:1500] = np.nan  # five days missing in a row
    s = s.drop(s.index[2000:2300])  # and three days absent from the index
    s.iloc[-200:] = np.nan  # the last two days unknown
    fc = model().fit(s).predict("3D")
    assert np.isfinite(fc.to_numpy()).all()
    assert np.abs(fc["kw"].to_numpy() - _shape(fc.index)).mean() < 0.4


def test_bad_input_raises_clear_errors(history):
    with pytest.raises(ForecastError, match="timezone-aware"):
        SimilarDayForecaster().fit(history.tz_localize(None))
    with pytest.raises(ForecastError, match="does not divide a day"):
        idx = pd.date_range("2024-01-01", periods=500, freq="7min", tz=TZ)
        SimilarDayForecaster().fit(pd.Series(1.0, index=idx))
    with pytest.raises(ForecastError, match="before predict"):
        SimilarDayForecaster().predict(4)
    with pytest.raises(ForecastError, match="horizon"):
        SimilarDayForecaster().fit(history).predict(0)


def test_dst_change_keeps_local_pattern():
    s = _series(start="2024-09-01", days=70)  # runs past 2024-10-27, the autumn change
    fc = SimilarDayForecaster().fit(s[s.index < pd.Timestamp("2024-10-26", tz=TZ)]).predict("48h")
    assert len(fc) == 192 and np.isfinite(fc.to_numpy()).all()
    assert np.abs(fc["kw"].to_numpy() - _shape(fc.index)).mean() < 0.15


def test_hook_uses_only_the_past_and_refits_daily(history, monkeypatch):
    hook = BaseLoadForecaster()
    poisoned = history.copy()
    now = history.index[-300] + pd.Timedelta("5min")
    poisoned[poisoned.index > now] = 1e6  # the future must not be looked at
    fits = []
    real_fit = hook.model.fit
    monkeypatch.setattr(hook.model, "fit", lambda h: fits.append(h.index[-1]) or real_fit(h))
    fc = hook.predict(poisoned, now, "12h")
    assert fc.index[0] == now.floor("15min") and len(fc) == 48
    assert fc.max() < 10 and np.isfinite(fc.to_numpy()).all()
    assert fc.iloc[0] == history[now.floor("15min")]  # the present is measured, not forecast
    hook.predict(poisoned, now + pd.Timedelta("1h"), "12h")
    assert len(fits) == 1  # same day: no refit, only the level term moves
    hook.predict(poisoned, now + pd.Timedelta("1D"), "12h")
    assert len(fits) == 2


def test_hook_quantile_option_and_degenerate_histories(history):
    now = history.index[-100]
    point = BaseLoadForecaster().predict(history, now, "6h")
    upper = BaseLoadForecaster(quantile=0.95).predict(history, now, "6h")
    assert (upper.iloc[1:] > point.iloc[1:]).all()
    empty = BaseLoadForecaster().predict(history.iloc[:0], now, "6h")
    assert len(empty) == 0
    few = BaseLoadForecaster().predict(history.iloc[:2], history.index[1], "1h")
    assert len(few) == 4 and np.isfinite(few.to_numpy()).all()
    with pytest.raises(ForecastError, match="unknown base-load model"):
        BaseLoadForecaster("prophet")
    with pytest.raises(ForecastError, match="no quantile"):
        BaseLoadForecaster(SimilarDayForecaster(quantiles=(0.9,)), quantile=0.95)


def test_holiday_table_cached_on_disk(tmp_path, monkeypatch):
    import holidays

    from nowblock.forecast import calendar as C

    def truth(subdiv, years):
        return sorted((d - pd.Timestamp("1970-01-01").date()).days
                      for d in holidays.country_holidays("DE", subdiv=subdiv, years=years))

    monkeypatch.setenv("NOWBLOCK_CACHE_DIR", str(tmp_path))
    C._holiday_year.cache_clear()
    assert C._holiday_days("DE", "NW", 2023, 2024).tolist() == truth("NW", [2023, 2024])
    assert len(list(tmp_path.glob("holidays-*-DE-NW-202[34].npy"))) == 2  # one table per year
    (file,) = tmp_path.glob("holidays-*-DE-NW-2024.npy")
    np.save(file, np.array([123], dtype=np.int64))  # what is on disk is what is used ...
    C._holiday_year.cache_clear()
    assert C._holiday_days("DE", "NW", 2023, 2024).tolist() == truth("NW", 2023) + [123]
    file.write_bytes(b"garbage")  # ... and an unreadable file is rebuilt from `holidays`
    C._holiday_year.cache_clear()
    assert C._holiday_days("DE", "NW", 2023, 2024).tolist() == truth("NW", [2023, 2024])
    monkeypatch.setenv("NOWBLOCK_CACHE_DIR", "")  # empty: no disk cache at all
    C._holiday_year.cache_clear()
    assert C._holiday_days("DE", "BY", 2024, 2024).tolist() == truth("BY", 2024)
    assert not list(tmp_path.glob("*BY*"))
    C._holiday_year.cache_clear()


def test_base_load_import_stays_light():
    # The first forecast in a fresh process must stay under a second (docs/bench_forecast.md):
    # importing the base-load forecaster must not drag in the rest of nowblock or `holidays`.
    import subprocess
    import sys

    code = ("import sys; from nowblock.forecast import SimilarDayForecaster; import nowblock as nb; "
            "heavy = [m for m in ('nowblock.block.site', 'nowblock.sim', 'nowblock.forecast.needs', "
            "'nowblock.forecast.arrivals', 'holidays.countries', 'pyomo') if m in sys.modules]; "
            "print(heavy); assert nb.Site.__name__ == 'Site' and 'nowblock.block.site' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_seasonal_naive_one_day_from_utc_midnight_is_not_biased():
    """One day of history starting at 00:00 UTC (01:00 in Berlin): each slot of the next day
    is the reading a day earlier at the same local time. The in-sample residuals once included
    the night hour before 01:00 forecast as the history's mean (-3 kW), which pulled the median
    ~2 kW down to the history's minimum for half the day (found by an outside test)."""
    idx = pd.date_range("2026-01-05", periods=96, freq="15min", tz="UTC")
    h = (idx.tz_convert(TZ).hour + idx.tz_convert(TZ).minute / 60).to_numpy()
    s = pd.Series(5 + 3 * np.sin((h - 6) / 24 * 2 * np.pi), index=idx)
    fc = SeasonalNaiveForecaster().fit(s).predict("24h")
    day_before = s.reindex(fc.index - pd.Timedelta("1D")).to_numpy()
    assert np.abs(fc["kw"].to_numpy()[:92] - day_before[:92]).max() < 1e-9  # 01:00 .. 23:45 local
    assert abs(fc["kw"].mean() - s.mean()) < 0.05


@pytest.mark.parametrize("start", ["2300-01-01", "1600-01-01"])
def test_dates_pandas_cannot_compute_in_raise_forecast_error(start):
    """Beyond pandas' nanosecond range (1677-09-21 .. 2262-04-11) the forecasters once raised
    pandas' OutOfBoundsDatetime many frames deep (found by an outside test)."""
    idx = pd.date_range(start, periods=96 * 3, freq="15min", tz="UTC", unit="s")
    s = pd.Series(1.0, index=idx)
    for model in (SimilarDayForecaster(), SeasonalNaiveForecaster()):
        with pytest.raises(ForecastError, match=r"history: .* outside the range .*1677-09-21 to 2262-04-11"):
            model.fit(s)
    ok = _series(days=3)
    with pytest.raises(ForecastError, match="start: .* outside the range"):
        SeasonalNaiveForecaster().fit(ok).predict(4, start=pd.Timestamp(start, tz="UTC"))
    with pytest.raises(ForecastError, match="now: .* outside the range"):
        BaseLoadForecaster().predict(ok, pd.Timestamp(start, tz="UTC"), "1h")
    late = _series(start="2262-04-01", days=8)  # inside the range; 24 h from its end is not
    with pytest.raises(ForecastError, match="horizon: '24h' .* runs past 2262-04-09"):
        SeasonalNaiveForecaster().fit(late).predict("24h")
