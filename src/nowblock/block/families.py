"""Session families from public charging statistics: the ground algorithms are measured on.

Four families of charging sessions for any :class:`~nowblock.block.site.Site`:

* ``"now_block"``: the embedded residential generator (:func:`nowblock.block.synth.generate_sessions`):
  one regular car per wallbox with habits a forecaster can learn.
* ``"residential_elaad"``: ElaadNL's published distributions of home charging ("private"):
  arrival time of day (workdays and weekends), connection time and energy per session.
* ``"public_elaad"``: the same for ElaadNL's public charging points ("public").
* ``"workplace_acn"``: a Gaussian mixture of (arrival hour, stay, energy) fitted by the ACN team to
  the weekday sessions of JPL's workplace garage (ACN-Data, Lee, Li & Low 2019), with a
  ``user_departure`` column: the departure a driver would type into the app, drawn from the
  ratio of entered to real stay seen in ACN-Data.

The few published numbers ship in ``nowblock/data/session_families.json`` (no download at run
time); docs/scenario.md names every source and every assumption. :func:`family_sessions` makes a
sessions frame, :func:`family_site` a block sized by wallbox count and connection size, and
:func:`family_scenario` a whole :class:`~nowblock.block.scenario.Scenario` (with an optional
history of earlier weeks for fitting a needs forecaster). Deterministic for a seed: every day
draws from its own stream ``(seed, family, date)``, so a week is the same week whether or not
earlier days are generated with it.

How the marginals are kept. ElaadNL publishes three marginal distributions and, per arrival
half hour, the mean connection time. Arrival, connection time and energy are tied by a Gaussian
copula: the connection time's normal score is correlated (``rho``, fitted to the mean connection
time per arrival hour) with the rank of that conditional mean at the car's arrival, and the
energy's score with the connection time's (:data:`ENERGY_STAY_RHO`, assumed). The marginals stay
exactly the published ones; only sessions that could not physically take their energy at the
car's full power in their stay are cut to what they could (see docs/scenario.md for how many).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nowblock.block.scenario import Scenario
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.block.synth import (
    FLEET,
    CarModel,
    TIMEZONE,
    _grid,
    _local_start,
    _localize,
    _quota,
    _workdays,
    day_ahead_prices,
    generate_sessions,
    household_load_kw,
)

#: Names :func:`family_sessions` knows.
FAMILIES = ("now_block", "residential_elaad", "public_elaad", "workplace_acn")

#: Correlation of the normal scores of connection time and energy (*assumed*: ElaadNL publishes
#: the marginals only; a longer stay tends to carry more energy, and a recorded session's energy
#: must fit into its stay at the car's power).
ENERGY_STAY_RHO = 0.6

_DATA = Path(__file__).resolve().parent.parent / "data" / "session_families.json"
_K_FAMILY = 11  # stream key, distinct from synth's 0..4
_MIN_STAY_H = 0.25
_LEVELS = np.linspace(0.0, 1.0, 201)


@dataclass(frozen=True)
class FamilyRates:
    """How often cars come: per charging point and day [1/day], workdays and weekends.

    ``per_point``: each charging point has its own car, plugging in at most once a day with
    this probability (residential); otherwise arrivals are a Poisson stream for the whole site
    at ``rate x n_charge_points`` a day, each car taking a free charging point at random and
    going away when none is free (public, workplace).
    """

    workday: float
    weekend: float
    per_point: bool


#: Default arrival rates (*assumed*, see docs/scenario.md).
RATES = {
    "residential_elaad": FamilyRates(0.6, 0.5, per_point=True),
    "public_elaad": FamilyRates(1.2, 0.9, per_point=False),
    "workplace_acn": FamilyRates(1.0, 0.0, per_point=False),
}


@functools.lru_cache(maxsize=1)
def published() -> dict:
    """The shipped parameters (``nowblock/data/session_families.json``), sources included."""
    return json.loads(_DATA.read_text(encoding="utf-8"))


# ---- distributions -------------------------------------------------------------------------------
_ERF = np.frompyfunc(math.erf, 1, 1)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _ERF(np.asarray(z, dtype=float) / math.sqrt(2.0)).astype(float))


def _norm_ppf(u: np.ndarray) -> np.ndarray:
    from statistics import NormalDist

    nd = NormalDist()
    u = np.clip(np.asarray(u, dtype=float), 1e-12, 1 - 1e-12)
    return np.array([nd.inv_cdf(x) for x in u.ravel()]).reshape(u.shape)


def elaad_quantile(kind: str, what: str, level) -> np.ndarray:
    """ElaadNL quantile of ``what`` ("connection_h" [h] or "energy_kwh" [kWh]) for ``kind``
    ("private" or "public") at ``level`` (0..1), linear between the published percent points.

    ElaadNL tabulates, for p = 0..100 % of charging events, the value that p % of events reach
    or exceed; the quantile at level ``1 - p/100`` is that value.
    """
    d = published()["elaad"]
    levels = 1.0 - np.asarray(d["exceedance_pct"], dtype=float)[::-1] / 100.0
    values = np.asarray(d[what][kind], dtype=float)[::-1]
    return np.interp(np.asarray(level, dtype=float), levels, values)


def _minute_weights(kind: str, weekend: bool) -> np.ndarray:
    """Probability of each minute of the day (1440) as an arrival time, from the hourly shares."""
    key = "arrival_pct_per_hour_weekend" if weekend else "arrival_pct_per_hour_weekday"
    hourly = np.asarray(published()["elaad"][key][kind], dtype=float)
    w = np.repeat(hourly / hourly.sum() / 60.0, 60)
    return w / w.sum()


def _mean_stay_at(kind: str, minutes: np.ndarray) -> np.ndarray:
    """ElaadNL mean connection time [h] for arrivals at ``minutes`` past midnight (periodic)."""
    t = published()["elaad"]["mean_connection_h_by_arrival"]
    x = np.asarray(t["arrival_h"], dtype=float) * 60.0
    y = np.asarray(t[kind], dtype=float)
    return np.interp(np.asarray(minutes, dtype=float), np.r_[x - 1440.0, x, x + 1440.0], np.r_[y, y, y])


@functools.lru_cache(maxsize=8)
def _arrival_score_table(kind: str, weekend: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each minute of the day: where its mean connection time ranks among arrivals
    (cumulative arrival probability below it, and its own probability), so that a uniform
    draw inside its slot is uniform over all arrivals."""
    w = _minute_weights(kind, weekend)
    m = _mean_stay_at(kind, np.arange(1440))
    order = np.argsort(m, kind="stable")
    below = np.empty(1440)
    below[order] = np.cumsum(w[order]) - w[order]
    return below, w


def _stay_scores(kind: str, minute: np.ndarray, weekend: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Normal score of each arrival's rank in expected connection time (standard normal overall)."""
    out = np.empty(len(minute))
    for wk in (False, True):
        sel = weekend == wk
        if sel.any():
            below, w = _arrival_score_table(kind, wk)
            out[sel] = _norm_ppf(below[minute[sel]] + u[sel] * w[minute[sel]])
    return out


@functools.lru_cache(maxsize=4)
def stay_arrival_rho(kind: str) -> float:
    """Copula correlation [-] between arrival and connection time for ElaadNL ``kind``.

    Fitted once (fixed seed, 40,000 workday arrivals) so that the mean connection time per
    arrival hour is closest, in the arrival-weighted mean square, to ElaadNL's published mean
    connection time per arrival time. Cached per process (about 0.1 s).
    """
    rng = np.random.default_rng(12345)
    n = 40_000
    minute = rng.choice(1440, size=n, p=_minute_weights(kind, False))
    za = _stay_scores(kind, minute, np.zeros(n, dtype=bool), rng.random(n))
    eps = rng.standard_normal(n)
    hour = minute // 60
    target = np.array([_mean_stay_at(kind, np.arange(h * 60, h * 60 + 60)).mean() for h in range(24)])
    count = np.bincount(hour, minlength=24)
    best, best_err = 0.0, np.inf
    for rho in np.round(np.arange(0.0, 0.96, 0.05), 2):
        stay = elaad_quantile(kind, "connection_h", _norm_cdf(rho * za + math.sqrt(1 - rho**2) * eps))
        mean = np.bincount(hour, weights=stay, minlength=24) / np.maximum(count, 1)
        err = float(np.sum(count * (mean - target) ** 2))
        if err < best_err:
            best, best_err = float(rho), err
    return best


def _gmm():
    d = published()["acn_jpl"]
    w = np.asarray(d["weights"], dtype=float)
    return w / w.sum(), np.asarray(d["means"], dtype=float), np.asarray(d["covariances"], dtype=float)


def acn_jpl_sample(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws of (arrival [h since midnight], stay [h], energy [kWh]) from the JPL mixture.

    Draws with an arrival outside the day, a stay under 15 min or over 24 h, or an energy under
    0.5 kWh are drawn again (up to 20 rounds, then clipped): the mixture's tails are not
    sessions.
    """
    w, mu, cov = _gmm()
    chol = np.linalg.cholesky(cov + 1e-9 * np.eye(3))
    out = np.empty((n, 3))
    todo = np.arange(n)
    for _ in range(20):
        if len(todo) == 0:
            break
        k = rng.choice(len(w), size=len(todo), p=w)
        x = mu[k] + np.einsum("kij,kj->ki", chol[k], rng.standard_normal((len(todo), 3)))
        out[todo] = x
        bad = (x[:, 0] < 0) | (x[:, 0] >= 24) | (x[:, 1] < _MIN_STAY_H) | (x[:, 1] > 24) | (x[:, 2] < 0.5)
        todo = todo[bad]
    out[:, 0] = np.clip(out[:, 0], 0.0, 24.0 - 1e-6)
    out[:, 1] = np.clip(out[:, 1], _MIN_STAY_H, 24.0)
    out[:, 2] = np.maximum(out[:, 2], 0.5)
    return out


def user_stay_ratio(u) -> np.ndarray:
    """Entered stay / real stay [-] at quantile levels ``u`` (ACN-Data, JPL; see the data file)."""
    d = published()["acn_jpl"]["user_stay_ratio"]
    return np.interp(np.asarray(u, dtype=float), d["quantile_levels"], d["ratio"])


# ---- sessions -----------------------------------------------------------------------------------
def _draw_day(family: str, n: int, weekend: bool, rng: np.random.Generator) -> tuple:
    """``n`` sessions of one day: arrival minute, stay [h], energy [kWh], the energy's quantile
    level (NaN where the energy is not from a published table), entered stay [h] or NaN."""
    if family == "workplace_acn":
        x = acn_jpl_sample(n, rng)
        user = x[:, 1] * user_stay_ratio(rng.random(n))
        return np.floor(x[:, 0] * 60.0).astype(np.int64), x[:, 1], x[:, 2], np.full(n, np.nan), user
    kind = "private" if family == "residential_elaad" else "public"
    minute = rng.choice(1440, size=n, p=_minute_weights(kind, weekend))
    u, e1, e2 = rng.random(n), rng.standard_normal(n), rng.standard_normal(n)
    rho = stay_arrival_rho(kind)
    z_stay = rho * _stay_scores(kind, minute, np.full(n, weekend), u) + math.sqrt(1 - rho**2) * e1
    stay = np.maximum(elaad_quantile(kind, "connection_h", _norm_cdf(z_stay)), _MIN_STAY_H)
    z_energy = ENERGY_STAY_RHO * z_stay + math.sqrt(1 - ENERGY_STAY_RHO**2) * e2
    level = _norm_cdf(z_energy)
    return minute, stay, elaad_quantile(kind, "energy_kwh", level), level, np.full(n, np.nan)


def family_sessions(site: Site, family: str, days: int = 7, start="2026-03-02", seed: int = 42,
                    fleet: tuple[CarModel, ...] = FLEET) -> pd.DataFrame:
    """Charging sessions of ``family`` for every charging point of ``site``.

    Parameters
    ----------
    site : Site
        The block; sessions use its charging points.
    family : str
        One of :data:`FAMILIES`.
    days : int
        Days with arrivals, from local midnight of ``start`` (Europe/Berlin wall-clock time:
        the published hours of day are read as local time; public holidays of North
        Rhine-Westphalia count as weekend days).
    start : date-like
        First day.
    seed : int
        Everything is deterministic for a seed.
    fleet : tuple of CarModel
        The cars and their shares (default: the German fleet of :data:`nowblock.block.synth.FLEET`).
        Residential: one car per charging point by quota; public and workplace: a car per
        session, among those whose battery holds its energy.

    Returns
    -------
    DataFrame
        The sessions frame of the contract (session_id, charge_point_id, arrival, departure
        in UTC, energy_kwh [kWh], max_current_a [A], phases, priority, draw_fraction), sorted
        by arrival; ``workplace_acn`` adds ``user_departure`` (UTC): the departure the driver
        would enter. Departures fall at most one day after the last arrival day. Energy is
        at most what the car takes at full power in its stay (and its battery's size).
    """
    if family not in FAMILIES:
        raise ValueError(f"family: unknown {family!r}; choose one of {', '.join(FAMILIES)}")
    if days < 1:
        raise ValueError(f"days: must be >= 1, got {days}")
    if family == "now_block":
        return generate_sessions(site, days=days, start=start, seed=seed)  # its own fleet and habits
    first = _local_start(start)
    weekend = ~_workdays(first, days)
    rates = RATES[family]
    n_cp = len(site.charge_points)
    fam = FAMILIES.index(family)
    # Residential: one car per charging point, its model by quota; elsewhere a car per session.
    fleet_rng = np.random.default_rng([seed, _K_FAMILY, fam, 0])
    cp_model = _quota([m.share for m in fleet], n_cp, fleet_rng)
    shares = np.array([m.share for m in fleet]) / sum(m.share for m in fleet)
    battery_kwh = np.array([m.usable_kwh[1] for m in fleet])
    kind = "private" if family == "residential_elaad" else "public"
    free_from = np.full(n_cp, -np.inf)  # minutes since day 0 when each point is free again
    count = np.zeros(n_cp, dtype=np.int64)
    rows: list[tuple] = []
    # Days draw from streams keyed by their date, so a week is the same week whether or not
    # history days are generated before it (only who still occupies a point carries over).
    day0 = (first.tz_localize(None).normalize() - pd.Timestamp("1970-01-01")).days
    for d in range(days):
        rng = np.random.default_rng([seed, _K_FAMILY, fam, 1, day0 + d])
        rate = rates.weekend if weekend[d] else rates.workday
        if rates.per_point:
            plug = rng.random(n_cp) < rate
            n = n_cp
        else:
            n = int(rng.poisson(rate * n_cp))
        minute, stay, energy, level, user = _draw_day(family, n, bool(weekend[d]), rng)
        pick, pick_car = rng.random(n), rng.random(n)
        t0 = 1440.0 * d + minute + np.floor(rng.random(n) * 60.0) / 60.0  # seconds within the minute
        for i in np.argsort(t0, kind="stable"):
            if rates.per_point:
                j = int(i)
                if not plug[j] or free_from[j] + 60.0 > t0[i]:
                    continue  # not plugged in today, still plugged in, or left less than an hour ago
                model = fleet[cp_model[j]]
                if energy[i] > model.usable_kwh[1]:
                    # This car's battery cannot take the draw: the same rank within what it can.
                    top = np.interp(model.usable_kwh[1], elaad_quantile(kind, "energy_kwh", _LEVELS), _LEVELS)
                    energy[i] = float(elaad_quantile(kind, "energy_kwh", level[i] * top))
            else:
                free = np.flatnonzero(free_from <= t0[i])
                if len(free) == 0:
                    continue  # every point taken: the car goes elsewhere
                j = int(free[int(pick[i] * len(free))])
                # A session this large came from a car whose battery holds it (shares otherwise).
                fits = np.where(battery_kwh >= energy[i], shares, 0.0)
                p = fits / fits.sum() if fits.sum() > 0 else shares
                model = fleet[min(int(np.searchsorted(np.cumsum(p), pick_car[i] * p.sum())), len(fleet) - 1)]
            t1 = t0[i] + 60.0 * stay[i]
            free_from[j] = t1
            count[j] += 1
            rows.append((j, count[j], t0[i], t1, energy[i], user[i], fleet.index(model)))
    return _frame(site, rows, first, days, family == "workplace_acn", fleet)


def _frame(site: Site, rows: list[tuple], first: pd.Timestamp, days: int, with_user: bool,
           fleet: tuple[CarModel, ...]) -> pd.DataFrame:
    cols = ["session_id", "charge_point_id", "arrival", "departure", "energy_kwh", "max_current_a", "phases",
            "priority", "draw_fraction"] + (["user_departure"] if with_user else [])
    if not rows:
        t = pd.DatetimeIndex([], tz="UTC")
        return pd.DataFrame({c: (t if c in ("arrival", "departure", "user_departure") else []) for c in cols})
    j, k, t0, t1, energy, user, model = (np.array(c) for c in zip(*rows))
    t1 = np.minimum(t1, 1440.0 * (days + 1))  # the stay is cut where the scenario's series end
    day0 = first.tz_localize(None).to_datetime64()
    to_ts = lambda minutes: _localize(day0 + np.round(minutes * 60.0).astype("timedelta64[s]"))  # noqa: E731
    cps = site.charge_points
    car_a = np.array([fleet[m].max_current_a for m in model])
    phases = np.minimum(np.array([fleet[m].phases for m in model]), site.cp_phases[j])
    kw = site.current_to_kw(np.minimum(car_a, site.cp_max_current_a[j]), phases)
    battery = np.array([fleet[m].usable_kwh[1] for m in model])
    arrival, departure = to_ts(t0), to_ts(t1)
    # A departure that local-time conversion moved onto its arrival keeps a minimal stay.
    departure = departure.where(departure > arrival, arrival + pd.Timedelta("1min"))
    stay_h = (departure - arrival).total_seconds().to_numpy() / 3600.0
    # A recorded session's energy is what the car took: never more than full power for the stay.
    energy = np.floor(np.minimum.reduce([energy, kw * stay_h, battery]) * 100.0) / 100.0
    df = pd.DataFrame({
        "session_id": [f"{cps[a].id}-{b:03d}" for a, b in zip(j, k)],
        "charge_point_id": [cps[a].id for a in j],
        "arrival": arrival,
        "departure": departure,
        "energy_kwh": energy,
        "max_current_a": car_a,
        "phases": np.array([fleet[m].phases for m in model], dtype=np.int64),
        "priority": 1.0,
        "draw_fraction": 1.0,
    })
    if with_user:
        user_t1 = t0 + 60.0 * np.maximum(user, _MIN_STAY_H)
        df["user_departure"] = to_ts(user_t1)
    return df.sort_values(["arrival", "charge_point_id"], kind="stable").reset_index(drop=True)


# ---- site and scenario ---------------------------------------------------------------------------
def family_site(n_charge_points: int = 24, connection_fraction: float = 0.1, charger_current_a: float = 16.0,
                min_current_a: float = 6.0, max_unbalance_a: float | None = None, name: str = "family-block") -> Site:
    """A block of ``n_charge_points`` three-phase wallboxes of ``charger_current_a`` [A] (16 A:
    11 kW) directly behind one grid connection rated ``connection_fraction`` of their total.

    Parameters
    ----------
    n_charge_points : int
        Wallboxes.
    connection_fraction : float
        Grid connection [A per phase] as a fraction (0..1] of the wallboxes' summed rating, for
        example 0.1, 0.2 or 1/3; rounded to 0.1 A and at least one wallbox at full current.
    charger_current_a, min_current_a : float
        Each wallbox's maximum and minimum current [A per phase] (IEC 61851: 6 A minimum).
    max_unbalance_a : float, optional
        Phase unbalance limit at the grid connection [A].
    name : str
        Site name.

    Returns
    -------
    Site
        Phase rotation L1L2L3, L2L3L1, L3L1L2, ... from one wallbox to the next (single-phase
        cars spread over the phases), Europe/Berlin, 230 V. No sub-feeders: the connection is the
        only limit besides the wallboxes themselves.
    """
    if n_charge_points < 1:
        raise ValueError(f"n_charge_points: must be >= 1, got {n_charge_points}")
    if not 0 < connection_fraction <= 1:
        raise ValueError(f"connection_fraction: must be in (0, 1], got {connection_fraction}")
    grid_a = max(round(connection_fraction * n_charge_points * charger_current_a, 1), charger_current_a)
    rotations = ("L1L2L3", "L2L3L1", "L3L1L2")
    width = max(len(str(n_charge_points)), 2)
    cps = tuple(
        ChargePoint(id=f"CP{j + 1:0{width}d}", fuse="grid", max_current_a=float(charger_current_a),
                    min_current_a=float(min_current_a), phases=3, phase_rotation=rotations[j % 3])
        for j in range(n_charge_points)
    )
    return Site(name=name, fuses=(Fuse("grid", (float(grid_a),) * 3),), charge_points=cps, voltage_v=230.0,
                max_unbalance_a=max_unbalance_a, timezone=TIMEZONE)


def family_scenario(family: str, n_charge_points: int = 24, connection_fraction: float = 0.1, days: int = 7,
                    start="2026-03-02", seed: int = 42, history_days: int = 0, n_households: int = 0,
                    step="15min", fleet: tuple[CarModel, ...] = FLEET) -> Scenario:
    """A whole scenario: :func:`family_site`, :func:`family_sessions`, prices and optional base load.

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES`.
    n_charge_points, connection_fraction : int, float
        See :func:`family_site`.
    days : int
        Days with arrivals from local midnight of ``start``; prices (and base load) run one day
        longer so the last cars can finish.
    start : date-like
        First simulated day.
    seed : int
        Seed of sessions, prices and base load.
    history_days : int
        Days of the same family generated before ``start`` in the same run (same cars, same
        streams): sessions that left by ``start`` go to ``scenario.meta["history"]`` (a
        sessions frame, for example to fit a :class:`nowblock.forecast.SessionNeedsForecaster`);
        sessions that span ``start`` are in neither.
    n_households : int
        Flats whose BDEW household load is the base load (0: no base load, the connection is all
        for charging).
    step : str
        Spacing of prices and base load.
    fleet : tuple of CarModel
        See :func:`family_sessions`.

    Returns
    -------
    Scenario
        ``meta`` holds the family, sizes, ``grid_current_a`` and the seed.
    """
    if history_days < 0:
        raise ValueError(f"history_days: must be >= 0, got {history_days}")
    site = family_site(n_charge_points, connection_fraction)
    first = _local_start(start)
    t_first = first.tz_convert("UTC")
    gen_first = (first.tz_localize(None) - pd.Timedelta(days=history_days)).tz_localize(TIMEZONE)
    sess = family_sessions(site, family, days=days + history_days, start=gen_first, seed=seed, fleet=fleet)
    history = sess[sess["departure"] <= t_first].reset_index(drop=True)
    sess = sess[sess["arrival"] >= t_first].reset_index(drop=True)
    times = _grid(first, days + 1, step)
    end = times[-1] + pd.Timedelta(step)
    over = sess["departure"] > end
    if over.any():  # history days move the series' end; keep stays inside the scenario
        sess.loc[over, "departure"] = end
    prices = day_ahead_prices(times, seed=seed)
    base = household_load_kw(times, n_households, seed=seed) if n_households > 0 else None
    meta = {"generator": "nowblock.block.families.family_scenario", "family": family, "seed": seed,
            "n_charge_points": n_charge_points, "connection_fraction": connection_fraction,
            "grid_current_a": site.root.max_current_a[0], "days": days, "start": first.isoformat(),
            "history_days": history_days}
    if history_days:
        meta["history"] = history
    return Scenario(site, sess, base_load=base, prices=prices, name=f"{family}-{n_charge_points}cp", meta=meta)


__all__ = ["ENERGY_STAY_RHO", "FAMILIES", "RATES", "FamilyRates", "acn_jpl_sample", "elaad_quantile",
           "family_scenario", "family_site", "family_sessions", "published", "stay_arrival_rho", "user_stay_ratio"]
