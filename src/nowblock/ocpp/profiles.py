"""Charging profiles: building them for OCPP 1.6 and 2.0.1, and evaluating OCPP stacking.

Builders return snake_case dicts that the ``ocpp`` library's ``call.SetChargingProfile``
payloads accept (it converts keys to camelCase). Every profile carries ``validTo`` and a
schedule ``duration``, so a profile the central system forgets to refresh expires instead
of holding a stale limit. Limits in amperes are floored (never rounded up) to 0.1 A, the
resolution OCPP 1.6 allows.

The evaluation half (:class:`Profile`, :func:`active_limit_a`, :func:`composite_schedule_a`,
:func:`clear_matching`) implements the stacking rules both versions share: inside one
purpose the valid profile with the highest ``stackLevel`` whose schedule covers the instant
wins; a TxProfile of the running transaction overrides TxDefaultProfile; the charger limit is
the minimum of that and the station maximum (ChargePointMaxProfile / ChargingStationMaxProfile).
The simulated chargers obey profiles through these functions, and tests compare a charger's
GetCompositeSchedule answer against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import numpy as np

from nowblock.seam.safety import failsafe_current_a as _failsafe_share_a
from nowblock.block.site import Site

TX = "TxProfile"
TX_DEFAULT = "TxDefaultProfile"
MAX_16 = "ChargePointMaxProfile"
MAX_201 = "ChargingStationMaxProfile"
MAX_PURPOSES = (MAX_16, MAX_201)
EXTERNAL = "ChargingStationExternalConstraints"  # 2.0.1: limits set by others (NotifyChargingLimit)

#: Profile ids and stack levels the central system uses, so a new limit replaces the old one
#: (same id) instead of piling up. Per connector/EVSE ``c``: Tx ``1000 + c`` (stack level 1); the
#: fallback TxDefault standing in for a refused TxProfile ``100 + c`` (stack level 1, so it
#: neither collides with nor replaces the idle default: K01.FR.06 of 2.0.1 rejects a second
#: profile of the same purpose, stack level and EVSE); a controller's idle default ``200 + c``
#: (TxDefault, stack level 0); the fail-safe default 100 on connector 0 (stack level 0); the
#: station maximum 1 (stack level 0) and the fallback station maximum 2 (stack level 1).
STATION_MAX_ID = 1
FALLBACK_MAX_ID = 2  # a station maximum sent only because nothing else was accepted (stack level 1)
TX_DEFAULT_ID_BASE = 100
IDLE_DEFAULT_ID_BASE = 200  # a controller's low default on an idle connector (TxDefault, stack level 0)
FALLBACK_DEFAULT_STACK_LEVEL = 1  # the fallback TxDefault 100 + c: above the idle default and the fail-safe
TX_ID_BASE = 1000
STACK_LEVEL = {MAX_16: 0, MAX_201: 0, TX_DEFAULT: 0, TX: 1}

LIMIT_STEP = 0.1  # OCPP 1.6 limits: multipleOf 0.1
#: [s] How far before now a profile's ``validFrom`` and ``startSchedule`` lie. A single-period
#: schedule may start any time before now, and a station whose clock lags ours further than
#: this ignores the profile until its clock gets there (60 s let a station one hour behind
#: ignore every profile, the fail-safe included, until its offset could be estimated).
CLOCK_SKEW_S = 86400


def utcnow() -> datetime:
    """Now as a timezone-aware UTC datetime."""
    return datetime.now(timezone.utc)


def iso(t: datetime) -> str:
    """OCPP timestamp (UTC, 'Z', milliseconds)."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(s: str | datetime | None) -> datetime | None:
    """Parse an OCPP timestamp (RFC 3339: "T"/"Z" in either case); naive values are taken as UTC."""
    if s is None or isinstance(s, datetime):
        return s if s is None or s.tzinfo else s.replace(tzinfo=timezone.utc)
    if s[-1:] in ("Z", "z"):  # fromisoformat knows no lower-case "z" (RFC 3339 allows it)
        s = s[:-1] + "+00:00"
    t = datetime.fromisoformat(s)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def floor_step(value: float, step: float = LIMIT_STEP) -> float:
    """Floor ``value`` to a multiple of ``step`` (rounding down never overloads a fuse)."""
    return round(math.floor(value / step + 1e-9) * step, 6)


def limit_value(current_a: float, unit: str, phases: int, voltage_v: float) -> float:
    """The schedule limit for ``current_a`` [A per phase]: amps, or watts when ``unit`` is 'W'."""
    if unit == "W":
        return floor_step(max(current_a, 0.0) * phases * voltage_v, 1.0)
    return floor_step(max(current_a, 0.0))


def _schedule(limit: float, unit: str, start: datetime, duration_s: int, phases: int | None, v201: bool) -> dict:
    period = {"start_period": 0, "limit": limit}
    if phases is not None:
        period["number_phases"] = int(phases)
    s = {"charging_rate_unit": unit, "charging_schedule_period": [period], "duration": int(duration_s),
         "start_schedule": iso(start)}
    if v201:
        s["id"] = 1
    return s


def build_profile(
    version: str,
    purpose: str,
    current_a: float,
    *,
    connector_id: int,
    now: datetime | None = None,
    validity_s: int = 900,
    unit: str = "A",
    phases: int = 3,
    voltage_v: float = 230.0,
    transaction_id: str | int | None = None,
    profile_id: int | None = None,
    stack_level: int | None = None,
    number_phases: int | None = None,
) -> dict:
    """One Absolute charging profile limiting to ``current_a`` [A] for ``validity_s`` [s].

    In watts (``unit`` 'W') the limit is ``current_a`` x ``phases`` x ``voltage_v`` and the
    period's ``numberPhases`` is ``number_phases`` (default ``phases``): the phases the car may
    use, which may be more than the power counts on.

    ``version`` is "1.6" or "2.0.1"; ``purpose`` one of TxProfile, TxDefaultProfile,
    ChargePointMaxProfile (1.6) / ChargingStationMaxProfile (2.0.1; either name is accepted
    and translated). A TxProfile needs ``transaction_id`` (int in 1.6, str in 2.0.1). The
    result is the ``cs_charging_profiles`` (1.6) or ``charging_profile`` (2.0.1) payload.
    """
    v201 = version != "1.6"
    if purpose in MAX_PURPOSES:
        purpose = MAX_201 if v201 else MAX_16
    if purpose == TX and transaction_id is None:
        raise ValueError("a TxProfile needs the transaction id it applies to")
    now = now or utcnow()
    # Start well in the past so a charger whose clock lags ours still applies it now.
    start = now - timedelta(seconds=CLOCK_SKEW_S)
    if profile_id is None:
        profile_id = {TX: TX_ID_BASE + connector_id, TX_DEFAULT: TX_DEFAULT_ID_BASE + connector_id}.get(
            purpose, STATION_MAX_ID
        )
    level = STACK_LEVEL[purpose] if stack_level is None else stack_level
    limit = limit_value(current_a, unit, phases, voltage_v)
    sched = _schedule(limit, unit, start, validity_s + CLOCK_SKEW_S,
                      None if unit == "A" else (number_phases or phases), v201)
    prof = {
        "stack_level": level,
        "charging_profile_purpose": purpose,
        "charging_profile_kind": "Absolute",
        "valid_from": iso(start),
        "valid_to": iso(now + timedelta(seconds=validity_s)),
    }
    if v201:
        prof.update(id=profile_id, charging_schedule=[sched])
        if transaction_id is not None and purpose == TX:
            prof["transaction_id"] = str(transaction_id)
    else:
        prof.update(charging_profile_id=profile_id, charging_schedule=sched)
        if transaction_id is not None and purpose == TX:
            prof["transaction_id"] = int(transaction_id)
    return prof


def in_station_clock(profile: dict, offset_s: float) -> dict:
    """A copy of ``profile`` (as built by :func:`build_profile`) whose ``valid_from``,
    ``valid_to`` and ``start_schedule`` are moved by ``offset_s`` [s], the station's clock minus
    ours, so that they mean the same instants by the station's clock."""
    if not offset_s:
        return profile
    d = timedelta(seconds=float(offset_s))

    def move(x: dict) -> dict:
        return {k: (iso(parse_time(v) + d) if k in ("valid_from", "valid_to", "start_schedule") and v else v)
                for k, v in x.items()}

    out = move(profile)
    sched = profile["charging_schedule"]
    out["charging_schedule"] = [move(x) for x in sched] if isinstance(sched, list) else move(sched)
    return out


def shifted(p: "Profile", d: timedelta) -> "Profile":
    """``p`` with its absolute times (``valid_from``, ``valid_to``, ``start_schedule``) moved by ``d``."""
    def mv(t):
        return None if t is None else t + d
    return replace(p, valid_from=mv(p.valid_from), valid_to=mv(p.valid_to), start_schedule=mv(p.start_schedule))


# ---- evaluation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    """One schedule period: from ``start_s`` [s] after the schedule start, ``limit`` in ``unit``."""

    start_s: float
    limit: float
    number_phases: int | None = None


@dataclass(frozen=True)
class Profile:
    """A charging profile installed on ``connector_id`` (0: the whole station), normalized."""

    id: int
    connector_id: int
    stack_level: int
    purpose: str
    kind: str = "Absolute"
    recurrency_kind: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: str | None = None
    start_schedule: datetime | None = None
    duration_s: float | None = None
    unit: str = "A"
    periods: tuple[Period, ...] = field(default_factory=tuple)

    @classmethod
    def from_payload(cls, connector_id: int, p: dict) -> "Profile":
        """From a received (snake_case) 1.6 ``cs_charging_profiles`` or 2.0.1 ``charging_profile``."""
        sched = p["charging_schedule"]
        if isinstance(sched, list):  # 2.0.1: one to three schedules; the first is the AC one
            sched = sched[0]
        periods = tuple(
            Period(float(q["start_period"]), float(q["limit"]), q.get("number_phases"))
            for q in sorted(sched["charging_schedule_period"], key=lambda q: q["start_period"])
        )
        tx = p.get("transaction_id")
        return cls(
            id=int(p.get("charging_profile_id", p.get("id"))),
            connector_id=int(connector_id),
            stack_level=int(p["stack_level"]),
            purpose=str(p["charging_profile_purpose"]),
            kind=str(p.get("charging_profile_kind", "Absolute")),
            recurrency_kind=p.get("recurrency_kind"),
            valid_from=parse_time(p.get("valid_from")),
            valid_to=parse_time(p.get("valid_to")),
            transaction_id=None if tx is None else str(tx),
            start_schedule=parse_time(sched.get("start_schedule")),
            duration_s=None if sched.get("duration") is None else float(sched["duration"]),
            unit=str(sched.get("charging_rate_unit", "A")),
            periods=periods,
        )

    def limit_at(self, t: datetime, tx_start: datetime | None, voltage_v: float, phases: int) -> float | None:
        """Limit [A per phase] this profile sets at ``t``, or None when it does not apply then.

        A limit in watts is spread over the phases the car uses, ``phases`` (pass 1 when they
        are unknown: the most one phase may carry), at most the period's ``numberPhases``."""
        if self.valid_from is not None and t < self.valid_from:
            return None
        if self.valid_to is not None and t >= self.valid_to:
            return None
        start = self._start(t, tx_start)
        if start is None:
            return None
        elapsed = (t - start).total_seconds()
        if elapsed < 0 or (self.duration_s is not None and elapsed >= self.duration_s):
            return None
        current = [q for q in self.periods if q.start_s <= elapsed]
        if not current:
            return None
        q = current[-1]
        if self.unit == "W":
            n = max(min(q.number_phases or phases, phases), 1)
            return q.limit / (voltage_v * n)
        return q.limit

    def _start(self, t: datetime, tx_start: datetime | None) -> datetime | None:
        if self.kind == "Relative":
            return tx_start if tx_start is not None else t
        if self.kind == "Recurring":
            if self.start_schedule is None:
                return None
            period = timedelta(days=7 if self.recurrency_kind == "Weekly" else 1)
            k = math.floor((t - self.start_schedule) / period)
            return self.start_schedule + k * period
        return self.start_schedule if self.start_schedule is not None else t

    def breakpoints(self, t0: datetime, t1: datetime, tx_start: datetime | None) -> list[datetime]:
        """Instants in [t0, t1) where this profile's limit may change."""
        pts = [x for x in (self.valid_from, self.valid_to) if x is not None]
        starts = []
        if self.kind == "Recurring" and self.start_schedule is not None:
            s = self._start(t0, tx_start)
            while s is not None and s < t1:
                starts.append(s)
                s += timedelta(days=7 if self.recurrency_kind == "Weekly" else 1)
        else:
            s = self._start(t0, tx_start)
            if s is not None:
                starts.append(s)
        for s in starts:
            pts += [s + timedelta(seconds=q.start_s) for q in self.periods]
            if self.duration_s is not None:
                pts.append(s + timedelta(seconds=self.duration_s))
        return [x for x in pts if t0 <= x < t1]


def _best(candidates: list[Profile], t, tx_start, voltage_v, phases) -> float | None:
    # Highest stack level first; on a tie a connector-specific profile beats one on connector 0.
    for p in sorted(candidates, key=lambda p: (p.stack_level, p.connector_id != 0), reverse=True):
        lim = p.limit_at(t, tx_start, voltage_v, phases)
        if lim is not None:
            return lim
    return None


def active_limit_a(
    profiles: list[Profile],
    connector_id: int,
    t: datetime,
    *,
    transaction_id: str | int | None = None,
    tx_start: datetime | None = None,
    voltage_v: float = 230.0,
    phases: int = 3,
) -> float | None:
    """The limit [A per phase] that OCPP stacking gives ``connector_id`` at ``t``; None if unlimited.

    ``transaction_id`` is the running transaction (None when idle): TxProfiles only apply to
    it (a 1.6 TxProfile without a transaction id applies to whichever one is running).
    """
    tx = None if transaction_id is None else str(transaction_id)
    station = [p for p in profiles if p.purpose in MAX_PURPOSES]
    external = [p for p in profiles if p.purpose == EXTERNAL and p.connector_id in (0, connector_id)]
    limits = [_best(station, t, tx_start, voltage_v, phases), _best(external, t, tx_start, voltage_v, phases)]
    tx_lim = None
    if tx is not None:
        mine = [p for p in profiles if p.purpose == TX and p.connector_id == connector_id
                and p.transaction_id in (None, tx)]
        tx_lim = _best(mine, t, tx_start, voltage_v, phases)
    if tx_lim is None:
        defaults = [p for p in profiles if p.purpose == TX_DEFAULT and p.connector_id in (0, connector_id)]
        tx_lim = _best(defaults, t, tx_start, voltage_v, phases)
    limits.append(tx_lim)
    known = [x for x in limits if x is not None]
    return min(known) if known else None


def composite_schedule_a(
    profiles: list[Profile],
    connector_id: int,
    t0: datetime,
    duration_s: float,
    **kw,
) -> list[tuple[float, float | None]]:
    """Composite schedule from ``t0`` for ``duration_s`` [s]: (offset [s], limit [A] or None)."""
    t1 = t0 + timedelta(seconds=duration_s)
    pts = {t0}
    for p in profiles:
        pts.update(p.breakpoints(t0, t1, kw.get("tx_start")))
    out: list[tuple[float, float | None]] = []
    for t in sorted(pts):
        lim = active_limit_a(profiles, connector_id, t, **kw)
        if not out or out[-1][1] != lim:
            out.append(((t - t0).total_seconds(), lim))
    return out


def replaces(new: Profile, old: Profile) -> bool:
    """Whether installing ``new`` removes ``old``: the same id, or the same purpose, stack level
    and connector (the replacement rule of both versions)."""
    return old.id == new.id or (old.purpose == new.purpose and old.stack_level == new.stack_level
                                and old.connector_id == new.connector_id)


def add_profile(profiles: list[Profile], new: Profile) -> list[Profile]:
    """Install ``new`` (see :func:`replaces`)."""
    return [p for p in profiles if not replaces(new, p)] + [new]


def clear_matching(
    profiles: list[Profile],
    *,
    profile_id: int | None = None,
    connector_id: int | None = None,
    purpose: str | None = None,
    stack_level: int | None = None,
) -> tuple[list[Profile], int]:
    """Remove profiles as ClearChargingProfile asks: by id if given, else by every given criterion.

    Returns (remaining profiles, number removed); no argument clears everything.
    """
    if purpose in MAX_PURPOSES:
        purposes = set(MAX_PURPOSES)
    else:
        purposes = None if purpose is None else {purpose}

    def match(p: Profile) -> bool:
        if profile_id is not None:
            return p.id == profile_id
        return (
            (connector_id is None or p.connector_id == connector_id)
            and (purposes is None or p.purpose in purposes)
            and (stack_level is None or p.stack_level == stack_level)
        )

    keep = [p for p in profiles if not match(p)]
    return keep, len(profiles) - len(keep)


# ---- fail-safe share --------------------------------------------------------------------------
def failsafe_current_a(site: Site, step_a: float = LIMIT_STEP) -> np.ndarray:
    """Per charging point [A]: a limit that keeps every fuse safe if all charge at once.

    :func:`nowblock.seam.failsafe_current_a` with no other load, floored to ``step_a``
    [A]: each fuse phase's rating split evenly among the charging points that load it (every
    phase of a three-phase point, whatever car plugs in), the smallest share over a point's
    fuse path, capped at its maximum; a share below the point's minimum becomes 0.
    """
    return _failsafe_share_a(site, 0.0, step_a=step_a).to_numpy(float)
