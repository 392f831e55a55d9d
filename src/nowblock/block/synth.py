"""The embedded, seeded NOW-Block: a residential block in Dortmund with shared wallboxes.

:func:`generate_parts` builds the parts of a whole scenario (``Scenario.default()`` and
:func:`nowblock.block.scenario.generate_block` wrap them); each part is usable on its own: :func:`block_site` (fuses and wallboxes), :func:`generate_sessions`
(residential sessions for any site), :func:`household_load_kw` (BDEW standard load profile,
scaled and made noisy) and :func:`day_ahead_prices` (a day-ahead-shaped dynamic tariff).
Where each distribution comes from, and what is assumed, is written in docs/scenario.md.

Every random draw comes from a stream keyed by ``(seed, purpose, index)`` and filled day by
day, so a longer period does not change the days before: the first week of a 30-day scenario
has the same sessions as the 7-day one (apart from stays cut at the end). The fleet mix is
shared out by quota over the whole block, so a block of another size has other cars.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nowblock.block.site import ChargePoint, Fuse, Site

TIMEZONE = "Europe/Berlin"
_SLOT = pd.Timedelta("15min")

# Stream keys: rng = default_rng([seed, key, index]).
_K_SITE, _K_CAR, _K_DAYS, _K_LOAD, _K_PRICE = 0, 1, 2, 3, 4


# ---- the fleet ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CarModel:
    """A class of car: how it charges and what it holds.

    ``phases`` and ``max_current_a`` [A per phase] are the on-board charger's; ``usable_kwh``
    and ``kwh_per_km`` (at the plug, charging losses included) are ranges drawn uniformly.
    """

    name: str
    share: float
    phases: int
    max_current_a: float
    usable_kwh: tuple[float, float]
    kwh_per_km: tuple[float, float]
    plug_in_hybrid: bool = False


#: Assumed mix of a German residential fleet around 2025 (see docs/scenario.md).
FLEET: tuple[CarModel, ...] = (
    CarModel("BEV, 11 kW three-phase", 0.60, 3, 16.0, (50.0, 82.0), (0.16, 0.21)),
    CarModel("BEV, 22 kW three-phase", 0.07, 3, 32.0, (50.0, 90.0), (0.17, 0.22)),
    CarModel("BEV, three-phase, owner limit 10 A", 0.05, 3, 10.0, (55.0, 75.0), (0.16, 0.20)),
    CarModel("BEV, 7.4 kW single-phase", 0.12, 1, 32.0, (40.0, 62.0), (0.15, 0.19)),
    CarModel("BEV, 7.4 kW two-phase", 0.06, 2, 16.0, (30.0, 36.0), (0.15, 0.18)),
    CarModel("PHEV, 3.7 kW single-phase", 0.10, 1, 16.0, (9.0, 14.0), (0.19, 0.24), plug_in_hybrid=True),
)


@dataclass(frozen=True)
class CarHabits:
    """One charging point's regular car and its owner's habits (hours are local time [h])."""

    charge_point_id: str
    model: CarModel
    usable_kwh: float
    kwh_per_km: float
    draw_fraction: float
    commuter: bool
    arrival_mean_h: float
    arrival_sd_h: float
    departure_mean_h: float
    departure_sd_h: float
    km_per_day_median: float
    plug_in_probability: float


def _quota(shares, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` category indices in proportion to ``shares`` (largest remainder), in random order.

    Quotas rather than independent draws, so that a block of two dozen cars always has its
    single-phase cars, its 22 kW cars and its cars that draw less than offered.
    """
    w = np.asarray(shares, dtype=float)
    exact = w / w.sum() * n
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(w)), counts))


def _draw_habits(cp_id: str, model: CarModel, commuter: bool, low_draw: bool, rng: np.random.Generator) -> CarHabits:
    if commuter:
        arr_mu = float(np.clip(rng.normal(17.6, 1.0), 15.5, 20.5))
        arr_sd = float(rng.uniform(0.4, 1.0))
        dep_mu = float(np.clip(rng.normal(7.2, 0.6), 5.5, 9.0))
        dep_sd = float(rng.uniform(0.25, 0.6))
        km = float(np.exp(rng.normal(np.log(38.0), 0.45)))
    else:  # home office, part time, retired: daytime arrivals, later departures
        arr_mu = float(rng.uniform(11.0, 16.0))
        arr_sd = float(rng.uniform(1.5, 3.0))
        dep_mu = float(np.clip(rng.normal(9.0, 1.0), 7.0, 11.5))
        dep_sd = float(rng.uniform(0.5, 1.2))
        km = float(np.exp(rng.normal(np.log(22.0), 0.5)))
    # Hybrids plug in nearly every day (small battery); BEV owners every one to three days.
    p_plug = float(rng.uniform(0.8, 0.98)) if model.plug_in_hybrid else float(rng.uniform(0.35, 0.9))
    draw = float(rng.uniform(0.7, 0.95)) if low_draw else 1.0
    return CarHabits(
        charge_point_id=cp_id,
        model=model,
        usable_kwh=float(rng.uniform(*model.usable_kwh)),
        kwh_per_km=float(rng.uniform(*model.kwh_per_km)),
        draw_fraction=round(draw, 3),
        commuter=commuter,
        arrival_mean_h=arr_mu,
        arrival_sd_h=arr_sd,
        departure_mean_h=dep_mu,
        departure_sd_h=dep_sd,
        km_per_day_median=km,
        plug_in_probability=p_plug,
    )


def car_habits(site: Site, seed: int = 42) -> list[CarHabits]:
    """The regular car of every charging point of ``site`` (one per point).

    The fleet mix (:data:`FLEET`), the 70 % commuters and the 15 % of cars that draw less than
    offered are shared out by quota; each car's own numbers are drawn from its own stream.
    """
    n = len(site.charge_points)
    rng = np.random.default_rng([seed, _K_CAR])
    models = _quota([m.share for m in FLEET], n, rng)
    commuter = _quota([0.7, 0.3], n, rng) == 0
    low_draw = _quota([0.85, 0.15], n, rng) == 1
    return [
        _draw_habits(
            cp.id, FLEET[models[j]], bool(commuter[j]), bool(low_draw[j]), np.random.default_rng([seed, _K_CAR, j])
        )
        for j, cp in enumerate(site.charge_points)
    ]


# ---- calendar ----------------------------------------------------------------------------------
def _local_start(start) -> pd.Timestamp:
    t = pd.Timestamp(start)
    t = t.tz_localize(TIMEZONE) if t.tz is None else t.tz_convert(TIMEZONE)
    return t.normalize()


def _workdays(first_day: pd.Timestamp, n_days: int) -> np.ndarray:
    """True for Monday-to-Friday days that are not a public holiday in North Rhine-Westphalia."""
    days = pd.date_range(first_day.tz_localize(None), periods=n_days, freq="D")
    hol = _nrw_holidays(tuple(sorted(set(days.year))))
    return (days.day_of_week < 5) & ~days.normalize().isin(pd.DatetimeIndex(list(hol)))


@functools.lru_cache(maxsize=16)
def _nrw_holidays(years: tuple[int, ...]) -> tuple:
    import holidays

    return tuple(holidays.country_holidays("DE", subdiv="NW", years=list(years)).keys())


def _localize(naive: np.ndarray) -> pd.DatetimeIndex:
    """Local wall-clock times to UTC; a time in the spring-forward gap moves forward, an
    ambiguous autumn time is read as the first (summer-time) occurrence."""
    idx = pd.DatetimeIndex(naive)
    return idx.tz_localize(TIMEZONE, ambiguous=np.ones(len(idx), dtype=bool), nonexistent="shift_forward").tz_convert(
        "UTC"
    )


# ---- sessions ----------------------------------------------------------------------------------
def generate_sessions(
    site: Site,
    days: int = 7,
    start="2026-03-02",
    seed: int = 42,
    habits: list[CarHabits] | None = None,
) -> pd.DataFrame:
    """Residential charging sessions for every charging point of ``site``.

    Each charging point has one regular car (:func:`car_habits`). Day by day (local time,
    Europe/Berlin, public holidays of North Rhine-Westphalia count as Sundays) the car drives,
    comes home at its habitual hour (weekdays) or at a flatter time (weekends), and plugs in
    with its habitual probability, asking for the energy [kWh] of the kilometres driven since
    its last charge, truncated to its usable battery. It leaves the next morning (or after the
    weekend). Arrivals fall in ``[start, start + days)``; departures may run into the next day.

    Returns the sessions frame of the contract (columns session_id, charge_point_id, arrival,
    departure in UTC, energy_kwh, max_current_a [A], phases, priority, draw_fraction).
    """
    if days < 1:
        raise ValueError(f"days: must be >= 1, got {days}")
    first = _local_start(start)
    habits = car_habits(site, seed) if habits is None else habits
    # Days past the end too, so the last departures know whether their morning is a workday.
    workday = _workdays(first, days + 8)
    day0 = first.tz_localize(None).to_datetime64()
    rows: list[tuple] = []
    for j, h in enumerate(habits):
        # Two streams filled day by day, so day d's draws do not depend on the period length.
        u = np.random.default_rng([seed, _K_DAYS, j, 0]).random((days, 6))
        z = np.random.default_rng([seed, _K_DAYS, j, 1]).standard_normal((days, 4))
        # Kilometres per day: the car's habit times day-to-day spread; weekends vary more.
        km = h.km_per_day_median * np.exp(np.where(workday[:days], 0.35 * z[:, 0], 0.7 * z[:, 0] - 0.1))
        acc_km = 0.0
        free_from_h = -np.inf  # hours since day0 when the car left its last session
        n = 0
        for d in range(days):
            if free_from_h >= 24.0 * (d + 1):  # still plugged in over this whole day
                continue
            acc_km += km[d]
            if workday[d]:
                arr_h = h.arrival_mean_h + h.arrival_sd_h * z[d, 1]
            else:
                arr_h = 15.0 + 3.5 * z[d, 1]
            arr_h = float(np.clip(arr_h, 6.0, 23.5))
            if 24.0 * d + arr_h < free_from_h + 1.0:  # back home less than an hour after leaving
                continue
            p = h.plug_in_probability * (1.0 if workday[d] else 0.75)
            energy = min(acc_km * h.kwh_per_km, (1.0 if h.model.plug_in_hybrid else 0.9) * h.usable_kwh)
            # Range anxiety: past half the battery, the car is plugged in whatever the routine.
            if energy < 1.0 or (u[d, 0] >= p and energy < 0.5 * h.usable_kwh):
                continue
            if not h.commuter and arr_h < 15.0 and u[d, 1] < 0.35:
                dep_abs_h = 24.0 * d + arr_h + 1.5 + 3.5 * u[d, 2]  # a daytime top-up
            else:
                dd = d + 1
                while not workday[dd] and dd < d + 3 and u[d, 2 + dd - d] < 0.3:
                    dd += 1  # the car stays plugged in over a weekend day it is not used
                if workday[dd]:
                    dep_h = np.clip(h.departure_mean_h + h.departure_sd_h * z[d, 2], 4.5, 11.0)
                else:
                    dep_h = np.clip(10.5 + 1.8 * z[d, 3], 7.0, 15.0)
                dep_abs_h = 24.0 * dd + float(dep_h)
            n += 1
            energy_kwh = np.floor(energy * 100.0) / 100.0  # floor: never above the truncation
            rows.append((f"{h.charge_point_id}-{n:03d}", j, 24.0 * d + arr_h, dep_abs_h, energy_kwh))
            free_from_h = dep_abs_h
            acc_km = 0.0
    if not rows:
        return _empty_sessions()
    sid, cp_j, arr_h, dep_h, energy = map(np.array, zip(*rows))
    to_ns = lambda hours: day0 + np.round(hours * 60.0).astype("timedelta64[m]")  # noqa: E731
    arrival, departure = _localize(to_ns(arr_h)), _localize(to_ns(dep_h))
    departure = departure.where(departure > arrival, arrival + pd.Timedelta("15min"))
    df = pd.DataFrame(
        {
            "session_id": sid.astype(str),
            "charge_point_id": [habits[k].charge_point_id for k in cp_j],
            "arrival": arrival,
            "departure": departure,
            "energy_kwh": energy.astype(float),
            "max_current_a": [habits[k].model.max_current_a for k in cp_j],
            "phases": np.array([habits[k].model.phases for k in cp_j], dtype=np.int64),
            "priority": 1.0,
            "draw_fraction": [habits[k].draw_fraction for k in cp_j],
        }
    )
    return df.sort_values(["arrival", "charge_point_id"], kind="stable").reset_index(drop=True)


def _empty_sessions() -> pd.DataFrame:
    t = pd.DatetimeIndex([], tz="UTC")
    return pd.DataFrame(
        {
            "session_id": pd.Series([], dtype=str),
            "charge_point_id": pd.Series([], dtype=str),
            "arrival": t,
            "departure": t,
            "energy_kwh": pd.Series([], dtype=float),
            "max_current_a": pd.Series([], dtype=float),
            "phases": pd.Series([], dtype=np.int64),
            "priority": pd.Series([], dtype=float),
            "draw_fraction": pd.Series([], dtype=float),
        }
    )


# ---- household load ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _slp_year_kw_per_mwh(year: int, profile: str) -> pd.Series:
    """One year of a BDEW household profile on naive local 15-min wall-clock times,
    as mean power [kW] per MWh of annual consumption."""
    from demandlib import bdew

    hol = {d: "" for d in _nrw_holidays((year,))}
    if profile == "h0":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pandas deprecation warnings are not ours to show
            # demandlib 0.2.2 calls warnings.simplefilter("error") inside ElecSlp, which turns
            # pandas' own deprecation warnings into exceptions; keep its filters local and quiet.
            original = warnings.simplefilter
            warnings.simplefilter = lambda *a, **k: original("ignore")  # type: ignore[assignment]
            try:
                slp = bdew.ElecSlp(year=year, holidays=hol)
            finally:
                warnings.simplefilter = original  # type: ignore[assignment]
        # Fractions of the annual energy per quarter hour -> mean power per MWh/a.
        s = slp.get_profiles("h0_dyn")["h0_dyn"] * 4.0 * 1000.0
    elif profile == "h25":
        idx = pd.date_range(f"{year}-01-01", f"{year}-12-31 23:45", freq="15min")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # demandlib's pandas deprecation warnings
            h25 = bdew.H25(idx, holidays=hol)
        s = pd.Series(h25, index=idx) / 1000.0  # kW per GWh/a -> per MWh/a
    else:
        raise ValueError(f"load_profile: expected 'h0' or 'h25', got {profile!r}")
    s = s.astype(float)
    s.index = pd.DatetimeIndex(s.index).tz_localize(None)
    return s


def _grid(first: pd.Timestamp, days: int, step) -> pd.DatetimeIndex:
    end = (first.tz_localize(None) + pd.Timedelta(days=days)).tz_localize(TIMEZONE)
    return pd.date_range(first, end, freq=step, inclusive="left").tz_convert("UTC")


def _to_step(s15: pd.Series, times: pd.DatetimeIndex, step) -> pd.Series:
    """A quarter-hour series on ``times``: averaged into coarser steps, held for finer ones."""
    step = pd.Timedelta(step)
    if step == _SLOT:
        return s15.reindex(times)
    if step > _SLOT:
        return s15.resample(step, origin=times[0]).mean().reindex(times)
    return s15.reindex(times, method="ffill")


def household_load_kw(
    times: pd.DatetimeIndex,
    n_households: int,
    annual_kwh_per_household: float = 2500.0,
    seed: int = 42,
    profile: str = "h0",
) -> pd.Series:
    """Aggregate household load [kW] of ``n_households`` flats at ``times`` (tz-aware, 15-min).

    The BDEW standard load profile (``"h0"``: the 1999 H0 with its dynamisation function;
    ``"h25"``: the 2025 revision), via demandlib, with the public holidays of North
    Rhine-Westphalia, looked up at local wall-clock time and scaled to
    ``n_households * annual_kwh_per_household`` [kWh/a]. The SLP is the mean of very many
    homes; a block of ``n`` homes scatters around it, so it is multiplied by a day level
    (sd 5 %) and an AR(1) quarter-hour noise (lag-1 correlation 0.6, sd 1/sqrt(n)).
    """
    times = pd.DatetimeIndex(times)
    if times.tz is None:
        raise ValueError("times: must be timezone-aware")
    if n_households <= 0 or len(times) == 0:
        return pd.Series(0.0, index=times, name="kw")
    local = times.tz_convert(TIMEZONE).tz_localize(None)
    wall = local.floor("15min")
    prof = pd.concat([_slp_year_kw_per_mwh(int(y), profile) for y in sorted(set(wall.year))])
    base = prof.reindex(wall).to_numpy() * (n_households * annual_kwh_per_household / 1000.0)
    rng = np.random.default_rng([seed, _K_LOAD])
    days = (local.normalize() - local[0].normalize()).days.to_numpy()
    day_level = 1.0 + 0.05 * rng.standard_normal(int(days.max()) + 1)
    eps = rng.standard_normal(len(times)) * np.sqrt(1 - 0.6**2)
    ar = _ar1(eps, 0.6)
    noise = 1.0 + ar / np.sqrt(n_households)
    kw = base * day_level[days] * np.clip(noise, 0.3, None)
    return pd.Series(np.round(kw, 3), index=times, name="kw")


def _ar1(eps: np.ndarray, phi: float) -> np.ndarray:
    """x[t] = phi * x[t-1] + eps[t] with x[-1] = 0 (a plain loop: series are at most a few
    ten thousand steps, and scipy.signal.lfilter is not worth a dependency here)."""
    out = np.empty(len(eps))
    x = 0.0
    for i, e in enumerate(eps.tolist()):
        x = phi * x + e
        out[i] = x
    return out


# ---- prices ------------------------------------------------------------------------------------
# Typical hourly shape of the German day-ahead price [EUR/MWh] on a late-winter workday and
# on a weekend, before the midday solar dip (assumed; see docs/scenario.md).
_SPOT_WORKDAY = np.array(
    [85, 80, 78, 76, 78, 86, 105, 130, 135, 120, 104, 95, 90, 88, 92, 100, 112, 130, 148, 152, 136, 116, 104, 94],
    dtype=float,
)
_SPOT_WEEKEND = np.array(
    [84, 78, 74, 70, 68, 68, 72, 82, 92, 96, 92, 86, 80, 78, 82, 92, 106, 124, 140, 142, 128, 110, 100, 90],
    dtype=float,
)


def day_ahead_prices(
    times: pd.DatetimeIndex,
    seed: int = 42,
    surcharge_eur_per_kwh: float = 0.20,
) -> pd.Series:
    """A day-ahead-shaped dynamic tariff [EUR/kWh] at ``times`` (tz-aware, 15-min steps).

    Spot: a workday or weekend hourly shape (morning and evening peaks, cheap nights) with a
    midday solar dip that deepens towards summer and varies day by day, a day level that
    wanders like wind output (AR(1), sd 20 %), and quarter-hour noise (the day-ahead market
    has traded 15-min products since October 2025). The end-customer price adds
    ``surcharge_eur_per_kwh`` [EUR/kWh] for grid fees, levies and taxes.
    """
    times = pd.DatetimeIndex(times)
    if times.tz is None:
        raise ValueError("times: must be timezone-aware")
    if len(times) == 0:
        return pd.Series([], index=times, dtype=float, name="eur_per_kwh")
    local = times.tz_convert(TIMEZONE).tz_localize(None)
    rng = np.random.default_rng([seed, _K_PRICE])
    first = local[0].normalize()
    n_days = int((local[-1].normalize() - first).days) + 1
    workday = _workdays(first.tz_localize(TIMEZONE), n_days)
    day = (local.normalize() - first).days.to_numpy()
    hour = local.hour.to_numpy() + local.minute.to_numpy() / 60.0
    # Interpolate the hourly shape so quarter hours move smoothly between hourly values.
    hours_ext = np.arange(25) + 0.5
    shape_w = np.interp(hour, hours_ext - 1.0, np.r_[_SPOT_WORKDAY[-1], _SPOT_WORKDAY])
    shape_e = np.interp(hour, hours_ext - 1.0, np.r_[_SPOT_WEEKEND[-1], _SPOT_WEEKEND])
    spot = np.where(workday[day], shape_w, shape_e)
    # Solar dip: deepest in June, shallow in December; sunny and cloudy days differ.
    season = 0.5 - 0.5 * np.cos(2 * np.pi * (local.day_of_year.to_numpy() - 172 + 182.5) / 365.25)
    sun_day = rng.uniform(0.3, 1.0, n_days)
    dip = (0.15 + 0.45 * season) * sun_day[day] * np.exp(-0.5 * ((hour - 13.0) / 2.2) ** 2)
    spot = spot * (1.0 - dip)
    level = np.exp(0.2 * _ar1(rng.standard_normal(n_days) * np.sqrt(1 - 0.7**2), 0.7))
    spot = spot * level[day] + 4.0 * rng.standard_normal(len(times))
    eur = spot / 1000.0 + surcharge_eur_per_kwh
    return pd.Series(np.round(eur, 5), index=times, name="eur_per_kwh")


# ---- site --------------------------------------------------------------------------------------
def block_site(
    n_charge_points: int = 24,
    grid_current_a: float = 250.0,
    feeder_current_a: float | list[float] | None = None,
    n_feeders: int | None = None,
    share_22kw: float = 0.2,
    max_unbalance_a: float | None = None,
    seed: int = 42,
) -> Site:
    """The block's wiring: a grid connection rated ``grid_current_a`` [A per phase], one or two
    feeders (two garages), and ``n_charge_points`` wallboxes.

    Wallboxes are three-phase, 11 kW (16 A) or, a share ``share_22kw`` of them, 22 kW (32 A);
    minimum current 6 A (IEC 61851). The electrician rotates the phases from one wallbox to
    the next (L1L2L3, L2L3L1, L3L1L2, ...) so single-phase cars spread over the grid phases.
    A feeder defaults to the smallest standard NH fuse rating that carries 30 % of its
    wallboxes' total current [A] (and at least one wallbox at full current): a garage
    sub-distribution sized for load management, not for every car at once.
    """
    if n_charge_points < 1:
        raise ValueError(f"n_charge_points: must be >= 1, got {n_charge_points}")
    rng = np.random.default_rng([seed, _K_SITE])
    n_feeders = (2 if n_charge_points >= 4 else 1) if n_feeders is None else int(n_feeders)
    n22 = int(round(share_22kw * n_charge_points))
    is22 = np.zeros(n_charge_points, dtype=bool)
    is22[rng.choice(n_charge_points, size=n22, replace=False)] = True
    width = len(str(n_charge_points))
    feeder_of = np.minimum(np.arange(n_charge_points) * n_feeders // n_charge_points, n_feeders - 1)
    feeder_ids = [f"feeder-{chr(ord('a') + k)}" for k in range(n_feeders)]
    rotations = ["L1L2L3", "L2L3L1", "L3L1L2"]
    cps = []
    for j in range(n_charge_points):
        pos = int(np.sum(feeder_of[:j] == feeder_of[j]))  # position within its garage
        cps.append(
            ChargePoint(
                id=f"CP{j + 1:0{max(width, 2)}d}",
                fuse=feeder_ids[feeder_of[j]],
                max_current_a=32.0 if is22[j] else 16.0,
                min_current_a=6.0,
                phases=3,
                phase_rotation=rotations[pos % 3],
            )
        )
    cp_max = np.array([c.max_current_a for c in cps])
    if feeder_current_a is None:
        feeder_a = [_nh_size(max(0.3 * cp_max[feeder_of == k].sum(), cp_max.max())) for k in range(n_feeders)]
    else:
        feeder_a = list(np.broadcast_to(np.asarray(feeder_current_a, dtype=float), (n_feeders,)))
    fuses = [Fuse("grid", (float(grid_current_a),) * 3)]
    fuses += [Fuse(fid, (float(a),) * 3, parent="grid") for fid, a in zip(feeder_ids, feeder_a)]
    return Site(
        name="now-block-dortmund",
        fuses=tuple(fuses),
        charge_points=tuple(cps),
        voltage_v=230.0,
        max_unbalance_a=max_unbalance_a,
        timezone=TIMEZONE,
    )


#: Standard NH fuse ratings [A] (IEC 60269 / DIN VDE 0636).
NH_RATINGS_A = (35, 50, 63, 80, 100, 125, 160, 200, 250, 315, 400, 500, 630, 800, 1000, 1250)


def _nh_size(current_a: float) -> float:
    """The smallest standard NH rating [A] at or above ``current_a``; beyond the table, 50 A steps."""
    for r in NH_RATINGS_A:
        if r >= current_a:
            return float(r)
    return float(50.0 * np.ceil(current_a / 50.0))


def uncontrolled_phase_current_a(
    site: Site, sessions: pd.DataFrame, times: pd.DatetimeIndex
) -> np.ndarray:
    """Fuse-phase current [A] at ``times`` if every car charged at full power on arrival.

    Shape (len(times), n_fuses, 3). Each car draws ``min(car, charger) * draw_fraction`` [A]
    from arrival until its energy is in or it leaves (no taper, no losses): an estimate for
    sizing the connection, not a simulation.
    """
    times = pd.DatetimeIndex(times)
    out = np.zeros((len(times), len(site.fuses) * 3))
    if len(sessions) == 0 or len(times) == 0:
        return out.reshape(len(times), len(site.fuses), 3)
    cp = site.cp_index(sessions["charge_point_id"])
    phases = np.minimum(sessions["phases"].to_numpy(np.int64), site.cp_phases[cp])
    current = np.minimum(sessions["max_current_a"].to_numpy(float), site.cp_max_current_a[cp])
    current = current * sessions["draw_fraction"].to_numpy(float)
    kw = site.current_to_kw(current, phases)
    arr = pd.DatetimeIndex(sessions["arrival"])
    dep = pd.DatetimeIndex(sessions["departure"])
    full = arr + pd.to_timedelta(sessions["energy_kwh"].to_numpy(float) / np.maximum(kw, 1e-9), unit="h")
    stop = dep.where(dep < full, full)
    t_ns = times.as_unit("ns").asi8
    i0 = np.searchsorted(t_ns, arr.as_unit("ns").asi8)
    i1 = np.searchsorted(t_ns, stop.as_unit("ns").asi8)
    inc = site.phase_incidence(cp, sessions["phases"].to_numpy(np.int64)) * current  # (F*3, n)
    delta = np.zeros((len(times) + 1, inc.shape[0]))
    np.add.at(delta, i0, inc.T)
    np.add.at(delta, i1, -inc.T)
    out = np.cumsum(delta[:-1], axis=0)
    return out.reshape(len(times), len(site.fuses), 3)


# ---- the whole block ---------------------------------------------------------------------------
#: Days of the reference week the default grid connection is sized from [d].
SIZING_DAYS = 7


def generate_parts(
    n_charge_points: int = 24,
    n_households: int | None = None,
    grid_current_a: float | None = None,
    days: int = 7,
    start="2026-03-02",
    seed: int = 42,
    step="15min",
    congestion: float = 0.35,
    n_feeders: int | None = None,
    share_22kw: float = 0.2,
    annual_kwh_per_household: float = 2500.0,
    load_profile: str = "h0",
    surcharge_eur_per_kwh: float = 0.20,
    max_unbalance_a: float | None = None,
) -> dict:
    """The parts of the NOW-Block scenario: a residential block in Dortmund (Europe/Berlin).

    Returns the keyword arguments of :class:`nowblock.block.scenario.Scenario`: ``site``,
    ``sessions``, ``base_load`` [kW], ``prices`` [EUR/kWh], ``name`` and ``meta``.

    ``n_charge_points`` wallboxes (see :func:`block_site`), each with a regular car
    (:func:`generate_sessions`); ``n_households`` flats (default 2.5 per wallbox, 60 for 24)
    whose load follows the BDEW profile ``load_profile`` (:func:`household_load_kw`); a
    day-ahead-shaped tariff (:func:`day_ahead_prices`); ``days`` days from local midnight of
    ``start``, series at ``step`` spacing and running one day past the last arrival day.

    The grid connection is rated ``grid_current_a`` [A per phase] if given (pass a small value
    for a congested variant). Otherwise it is sized from the reference week (the first
    :data:`SIZING_DAYS` days of the same block, whatever ``days`` is, so a shorter or longer
    run simulates the same site): it sits a fraction
    ``congestion`` of the way down from the worst phase of uncontrolled charging plus household
    load towards the household peak, rounded to 5 A. So with every car charging at full power
    the evening peak overloads it clearly (by ``congestion`` of the charging peak), while the
    household load alone stays well below it. Deterministic for a given ``seed``.
    """
    if n_households is None:
        n_households = int(round(2.5 * n_charge_points))
    if not 0.0 <= congestion < 1.0:
        raise ValueError(f"congestion: must be in [0, 1), got {congestion}")
    first = _local_start(start)
    site = block_site(
        n_charge_points,
        grid_current_a=1.0 if grid_current_a is None else grid_current_a,
        n_feeders=n_feeders,
        share_22kw=share_22kw,
        max_unbalance_a=max_unbalance_a,
        seed=seed,
    )
    sessions = generate_sessions(site, days=days, start=first, seed=seed)
    times15 = _grid(first, days + 1, _SLOT)
    end = times15[-1] + _SLOT
    sessions["departure"] = sessions["departure"].where(sessions["departure"] <= end, end)
    load15 = household_load_kw(times15, n_households, annual_kwh_per_household, seed=seed, profile=load_profile)
    prices15 = day_ahead_prices(times15, seed=seed, surcharge_eur_per_kwh=surcharge_eur_per_kwh)
    times = _grid(first, days + 1, step)
    base_load = _to_step(load15, times, step).rename("kw")
    prices = _to_step(prices15, times, step).rename("eur_per_kwh")

    meta: dict = {
        "generator": "nowblock.block.scenario.generate_block",
        "seed": seed,
        "n_charge_points": n_charge_points,
        "n_households": n_households,
        "days": days,
        "start": first.isoformat(),
        "load_profile": load_profile,
    }
    minutes = _grid(first, days + 1, "1min")
    base_a = site.base_load_phase_current_a(load15.reindex(minutes, method="ffill").to_numpy())  # (T, 3)
    ev_a = uncontrolled_phase_current_a(site, sessions, minutes)
    base_peak_a = float(base_a.max())
    total_peak_a = float((ev_a[:, 0, :] + base_a).max())
    if grid_current_a is None and days != SIZING_DAYS:
        # The site must not depend on the simulated window: size it from the reference week.
        ref = generate_parts(n_charge_points=n_charge_points, n_households=n_households, days=SIZING_DAYS,
                             start=start, seed=seed, step=step, congestion=congestion, n_feeders=n_feeders,
                             share_22kw=share_22kw, annual_kwh_per_household=annual_kwh_per_household,
                             load_profile=load_profile, surcharge_eur_per_kwh=surcharge_eur_per_kwh,
                             max_unbalance_a=max_unbalance_a)
        grid_current_a = ref["meta"]["grid_current_a"]
        meta["grid_sized_from_days"] = SIZING_DAYS
    elif grid_current_a is None:
        meta["grid_sized_from_days"] = SIZING_DAYS
        grid_current_a = base_peak_a + (1.0 - congestion) * (total_peak_a - base_peak_a)
        grid_current_a = max(
            5.0 * round(grid_current_a / 5.0),
            5.0 * np.ceil(1.1 * base_peak_a / 5.0),
            float(site.cp_max_current_a.max()),  # at least one car at full current
        )
    site = site.with_root_limit(float(grid_current_a))
    meta.update(
        grid_current_a=float(grid_current_a),
        base_peak_a=round(base_peak_a, 2),
        uncontrolled_peak_a=round(total_peak_a, 2),
    )
    return dict(site=site, sessions=sessions, base_load=base_load, prices=prices, name="now-block-dortmund", meta=meta)


__all__ = [
    "FLEET",
    "CarHabits",
    "CarModel",
    "block_site",
    "car_habits",
    "day_ahead_prices",
    "generate_parts",
    "generate_sessions",
    "household_load_kw",
    "uncontrolled_phase_current_a",
]
