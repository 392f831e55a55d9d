"""What people tell the live block: caps, section 14a dimming, residents' needs, points out of service.

:class:`OperatorInputs` keeps every such input in one place, persists it in the store (it
survives a restart) and applies it to each live observation (:meth:`OperatorInputs.apply`),
so the shared control step plans with it like with anything else the block reports:

* a **cap** on a fuse (the grid connection for the whole block) for a time window: the fuse
  counts as rated ``min(rating, cap)`` (:func:`nowblock.loop.caps.capped_site`);
* a **section 14a dimming** by the grid operator: the charging power of all charging points
  is capped at ``max(requested, P_min,14a)`` for a time window, the guaranteed minimum of
  BK6-22-300 Anlage 1 Ziffer 4.5.2 for the block's controllable devices
  (:mod:`nowblock.block.para14a`), shared by phase as the cars load them;
* a car's **needs** (departure, energy) entered by a resident: they replace estimated needs;
* a charging point **out of service**: its cars are planned at 0 A until it is back.

Every write is checked completely, then stored, then applied in memory: a refused input
changes nothing, and a store failure leaves memory as it was. Inputs are keyed, so a repeated
write replaces (idempotent).
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import pandas as pd

from nowblock.block.para14a import controllable_devices, guaranteed_power_kw
from nowblock.block.site import Site
from nowblock.loop.caps import POWER_CAP_FUSE_ID, capped_site, phase_demand_a, power_cap_phase_currents_a
from nowblock.loop.observation import Observation

log = logging.getLogger(__name__)


class OperatorInputError(ValueError):
    """An operator input refused; ``field`` names the offending field (nothing was changed)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Cap:
    """A cap [A per phase] on fuse ``fuse_id`` from ``start`` to ``end`` (UTC)."""

    cap_id: str
    fuse_id: str
    max_current_a: tuple[float, float, float]
    start: pd.Timestamp
    end: pd.Timestamp
    source: str = "grid_operator"
    reason: str = ""

    def active(self, now: pd.Timestamp) -> bool:
        """In force at ``now``."""
        return self.start <= now < self.end


@dataclass(frozen=True)
class Dimming:
    """A section 14a reduction of the charging power from ``start`` to ``end`` (UTC).

    ``requested_power_kw`` [kW] is what the grid operator asked for; ``devices`` the number of
    controllable devices it applies to; ``guaranteed_power_kw`` [kW] their minimum
    ``P_min,14a``; ``power_kw`` [kW] the cap applied: the larger of the two.
    """

    dimming_id: str
    requested_power_kw: float
    devices: int
    guaranteed_power_kw: float
    power_kw: float
    start: pd.Timestamp
    end: pd.Timestamp
    reason: str = ""

    def active(self, now: pd.Timestamp) -> bool:
        """In force at ``now``."""
        return self.start <= now < self.end


@dataclass(frozen=True)
class NeedsOverride:
    """A resident's needs for a running session: departure (UTC) and energy [kWh] in total."""

    session_id: str
    charge_point_id: str
    departure: pd.Timestamp | None
    energy_kwh: float | None
    entered_at: pd.Timestamp


@dataclass(frozen=True)
class OutOfService:
    """A charging point taken out of service at ``since`` (its cars get 0 A)."""

    charge_point_id: str
    since: pd.Timestamp
    reason: str = ""


@dataclass(frozen=True)
class Applied:
    """What :meth:`OperatorInputs.apply` did to the last observation.

    ``fuse_caps_a`` fuse id -> [A per phase] caps in force; ``charging_cap_a`` [A per phase] the
    dimming's per-phase share (None when no dimming is in force); ``capped_fuses`` the fuse
    ids of the effective site whose rating is a cap (for :func:`nowblock.loop.binding.binding_limits`).
    """

    time: pd.Timestamp
    fuse_caps_a: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    dimming: Dimming | None = None
    charging_cap_a: tuple[float, float, float] | None = None
    capped_fuses: tuple[str, ...] = ()
    out_of_service: tuple[str, ...] = ()
    needs_overridden: tuple[str, ...] = ()


_KINDS = ("cap", "dimming", "needs", "out_of_service")


class OperatorInputs:
    """The operator's inputs for one site (see the module docstring).

    Parameters
    ----------
    site : Site
    store : Store, optional
        Where inputs are kept (``save_operator_input`` / ``delete_operator_input`` /
        ``load_operator_inputs``); they are loaded from it now.
    clock : callable, optional
        UTC now (default: the wall clock).
    """

    def __init__(self, site: Site, store=None, *, clock: Callable[[], pd.Timestamp] | None = None) -> None:
        self.site = site
        self.store = store if callable(getattr(store, "save_operator_input", None)) else None
        self.clock = clock or (lambda: pd.Timestamp.now(tz="UTC"))
        self.caps: dict[str, Cap] = {}
        self.dimmings: dict[str, Dimming] = {}
        self.needs: dict[str, NeedsOverride] = {}
        self.out_of_service: dict[str, OutOfService] = {}
        self.last_applied: Applied | None = None
        self.listeners: list[Callable[[str, dict], None]] = []  # (what, data) after every change
        if self.store is not None:
            self._load()

    # ---- reading ------------------------------------------------------------------------------
    @property
    def devices(self) -> int:
        """Controllable devices of the site (charging points rated above 4.2 kW, section 14a)."""
        s = self.site
        return max(1, controllable_devices(s.cp_max_current_a * s.cp_phases * s.voltage_v / 1000.0))

    def caps_at(self, now: pd.Timestamp) -> list[Cap]:
        """Caps in force at ``now``."""
        return [c for c in self.caps.values() if c.active(now)]

    def dimming_at(self, now: pd.Timestamp) -> Dimming | None:
        """The section 14a dimming in force at ``now`` (the lowest if several overlap), or None."""
        on = [d for d in self.dimmings.values() if d.active(now)]
        return min(on, key=lambda d: d.power_kw) if on else None

    def next_change_after(self, now: pd.Timestamp) -> pd.Timestamp | None:
        """The next time a cap or dimming starts or ends after ``now`` (the loop steps then)."""
        times = [t for x in (*self.caps.values(), *self.dimmings.values()) for t in (x.start, x.end) if t > now]
        return min(times) if times else None

    # ---- writing ------------------------------------------------------------------------------
    def add_cap(self, fuse_id: str | None, max_current_a, *, start=None, end=None, duration_s: float | None = None,
                cap_id: str | None = None, source: str = "grid_operator", reason: str = "") -> Cap:
        """Cap fuse ``fuse_id`` (None: the grid connection) at ``max_current_a`` [A per phase: one
        value or three] from ``start`` (default now) to ``end`` (or for ``duration_s`` [s])."""
        now = self.clock()
        fid = self.site.root.id if fuse_id in (None, "") else str(fuse_id)
        if fid not in self.site.fuse_ids:
            raise OperatorInputError("fuse_id", f"unknown fuse {fid!r} (one of {self.site.fuse_ids})")
        amps = _three_amps(max_current_a, "max_current_a")
        t0, t1 = _window(now, start, end, duration_s)
        cap = Cap(cap_id or _new_id(), fid, amps, t0, t1, str(source or "grid_operator"), str(reason or ""))
        self._persist("cap", cap.cap_id, _cap_data(cap), now)
        self.caps[cap.cap_id] = cap
        self._changed("cap", {"cap": _cap_data(cap)})
        return cap

    def remove_cap(self, cap_id: str) -> bool:
        """End a cap now (it is deleted); returns whether it existed."""
        if cap_id not in self.caps:
            return False
        self._unpersist("cap", cap_id)
        del self.caps[cap_id]
        self._changed("cap_removed", {"cap_id": cap_id})
        return True

    def set_dimming(self, power_kw: float, *, start=None, end=None, duration_s: float | None = None,
                    devices: int | None = None, dimming_id: str | None = None, reason: str = "") -> Dimming:
        """Apply a section 14a reduction: the charging power is capped at ``max(power_kw,
        P_min,14a(devices))`` [kW] (``devices`` defaults to the site's controllable devices)."""
        now = self.clock()
        p = _finite(power_kw, "power_kw", min_value=0.0)
        n = self.devices if devices is None else devices
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise OperatorInputError("devices", f"a whole number of devices >= 1, got {devices!r}")
        t0, t1 = _window(now, start, end, duration_s)
        floor = round(guaranteed_power_kw(int(n)), 6)
        d = Dimming(dimming_id or _new_id(), p, int(n), floor, max(p, floor), t0, t1, str(reason or ""))
        self._persist("dimming", d.dimming_id, _dimming_data(d), now)
        self.dimmings[d.dimming_id] = d
        self._changed("dimming", {"dimming": _dimming_data(d)})
        return d

    def remove_dimming(self, dimming_id: str) -> bool:
        """End a dimming now; returns whether it existed."""
        if dimming_id not in self.dimmings:
            return False
        self._unpersist("dimming", dimming_id)
        del self.dimmings[dimming_id]
        self._changed("dimming_removed", {"dimming_id": dimming_id})
        return True

    def set_needs(self, session_id: str, charge_point_id: str, *, departure=None,
                  energy_kwh: float | None = None) -> NeedsOverride:
        """A resident's needs for running session ``session_id``: departure (tz-aware, in the
        future) and the energy [kWh] wanted in this session in total. Both are needed: needs
        known only in part are estimated as a whole by the control step."""
        now = self.clock()
        if departure is None:
            raise OperatorInputError("departure", "give the departure (and energy_kwh)")
        if energy_kwh is None:
            raise OperatorInputError("energy_kwh", "give the energy wanted (and the departure)")
        dep = _timestamp(departure, "departure")
        if dep <= now:
            raise OperatorInputError("departure", f"must be in the future, got {dep.isoformat()}")
        e = _finite(energy_kwh, "energy_kwh", min_value=0.0, max_value=1000.0)
        o = NeedsOverride(str(session_id), str(charge_point_id), dep, e, now)
        self._persist("needs", o.session_id, _needs_data(o), now)
        self.needs[o.session_id] = o
        self._changed("needs", {"needs": _needs_data(o)})
        return o

    def clear_needs(self, session_id: str) -> bool:
        """Forget a resident's needs (estimates or the car's own report apply again)."""
        if session_id not in self.needs:
            return False
        self._unpersist("needs", session_id)
        del self.needs[session_id]
        self._changed("needs_cleared", {"session_id": session_id})
        return True

    def set_in_service(self, charge_point_id: str, in_service: bool, *, reason: str = "") -> OutOfService | None:
        """Take a charging point out of service (its cars get 0 A) or put it back."""
        cp = str(charge_point_id)
        if cp not in self.site.charge_point_ids:
            raise OperatorInputError("charge_point_id", f"unknown charging point {cp!r}")
        if not isinstance(in_service, bool):
            raise OperatorInputError("in_service", f"true or false, got {in_service!r}")
        now = self.clock()
        if in_service:
            if cp in self.out_of_service:
                self._unpersist("out_of_service", cp)
                del self.out_of_service[cp]
                self._changed("in_service", {"charge_point_id": cp, "in_service": True})
            return None
        o = self.out_of_service.get(cp) or OutOfService(cp, now, str(reason or ""))
        self._persist("out_of_service", cp, {"since": o.since.isoformat(), "reason": o.reason}, now)
        self.out_of_service[cp] = o
        self._changed("in_service", {"charge_point_id": cp, "in_service": False})
        return o

    # ---- applying -----------------------------------------------------------------------------
    def apply(self, obs: Observation) -> Observation:
        """``obs`` with the inputs in force at ``obs.time`` applied (see the module docstring)."""
        now = obs.time
        self._expire(now)
        cars = obs.cars
        overridden: list[str] = []
        if len(cars) and (self.needs or self.out_of_service):
            cars = cars.copy()
            mine = [s for s in self.needs if s in cars.index]
            if mine:
                # In nanoseconds: the live frame's column may be in seconds, and pandas refuses to
                # set a departure with a fraction of a second into it (every step failed then).
                cars["departure"] = pd.to_datetime(cars["departure"], utc=True).dt.as_unit("ns")
            for sid in mine:
                o = self.needs[sid]
                try:
                    cars.loc[sid, "departure"] = pd.Timestamp(o.departure).tz_convert("UTC").as_unit("ns")
                    cars.loc[sid, "energy_requested_kwh"] = o.energy_kwh
                    cars.loc[sid, "needs_known"] = True
                    overridden.append(sid)
                except Exception:  # noqa: BLE001 - one resident's needs must not stop the caps below
                    log.exception("%s: the needs entered could not be applied; planning without them", sid)
            off = cars["charge_point_id"].isin(list(self.out_of_service)).to_numpy()
            if off.any():
                cars.loc[off, "max_current_a"] = 0.0
        fuse_caps: dict[str, tuple[float, float, float]] = {}
        for c in self.caps_at(now):
            prev = fuse_caps.get(c.fuse_id, (math.inf,) * 3)
            fuse_caps[c.fuse_id] = tuple(min(a, b) for a, b in zip(prev, c.max_current_a))  # type: ignore[assignment]
        dim = self.dimming_at(now)
        charging_cap = None
        if dim is not None:
            on = cars["connected"].to_numpy(bool) if "connected" in cars else np.ones(len(cars), bool)
            demand = phase_demand_a(obs.site, cars["cp_index"].to_numpy(np.int64)[on],
                                    cars["phases"].to_numpy(np.int64)[on], cars["max_current_a"].to_numpy(float)[on])
            charging_cap = tuple(float(v) for v in power_cap_phase_currents_a(dim.power_kw, obs.site.voltage_v, demand))
        site = capped_site(obs.site, fuse_caps_a=fuse_caps, charging_cap_a=charging_cap)
        capped = [f for f, c in fuse_caps.items() if np.any(np.asarray(c) < np.asarray(obs.site.fuses[
            obs.site.fuse_ids.index(f)].max_current_a))]
        if charging_cap is not None:
            capped.append(POWER_CAP_FUSE_ID)
        self.last_applied = Applied(now, fuse_caps, dim, charging_cap, tuple(capped), tuple(sorted(self.out_of_service)),
                                    tuple(overridden))
        if site is obs.site and cars is obs.cars:
            return obs
        return replace(obs, site=site, cars=cars)

    def forget_sessions(self, running) -> None:
        """Drop residents' needs of sessions that no longer run."""
        keep = set(running)
        for sid in [s for s in self.needs if s not in keep]:
            self.clear_needs(sid)

    # ---- internals ----------------------------------------------------------------------------
    def _expire(self, now: pd.Timestamp) -> None:
        for cid in [k for k, c in self.caps.items() if c.end <= now]:
            self.remove_cap(cid)
        for did in [k for k, d in self.dimmings.items() if d.end <= now]:
            self.remove_dimming(did)

    def _persist(self, kind: str, key: str, data: dict, now: pd.Timestamp) -> None:
        if self.store is not None:
            self.store.save_operator_input(kind, key, data, time=now)

    def _unpersist(self, kind: str, key: str) -> None:
        if self.store is not None:
            self.store.delete_operator_input(kind, key)

    def _changed(self, what: str, data: dict) -> None:
        for fn in list(self.listeners):
            try:
                fn(what, data)
            except Exception:  # noqa: BLE001 - a listener must not undo a stored input
                log.exception("operator listener failed")

    def _load(self) -> None:
        for row in self.store.load_operator_inputs():
            kind, key, d = row["kind"], row["key"], row["data"]
            try:
                if kind == "cap":
                    if d["fuse_id"] not in self.site.fuse_ids:
                        raise KeyError(f"fuse {d['fuse_id']!r} not in the site")
                    self.caps[key] = Cap(key, d["fuse_id"], tuple(d["max_current_a"]), pd.Timestamp(d["start"]),
                                         pd.Timestamp(d["end"]), d.get("source", ""), d.get("reason", ""))
                elif kind == "dimming":
                    self.dimmings[key] = Dimming(key, float(d["requested_power_kw"]), int(d["devices"]),
                                                 float(d["guaranteed_power_kw"]), float(d["power_kw"]),
                                                 pd.Timestamp(d["start"]), pd.Timestamp(d["end"]), d.get("reason", ""))
                elif kind == "needs":
                    self.needs[key] = NeedsOverride(key, d["charge_point_id"], _opt_ts(d.get("departure")),
                                                    d.get("energy_kwh"), pd.Timestamp(d["entered_at"]))
                elif kind == "out_of_service":
                    if key in self.site.charge_point_ids:
                        self.out_of_service[key] = OutOfService(key, pd.Timestamp(d["since"]), d.get("reason", ""))
                else:
                    log.warning("unknown operator input kind %r in the store; ignored", kind)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("stored operator input %s/%s unusable (%r); ignored", kind, key, exc)
        if self.caps or self.dimmings or self.needs or self.out_of_service:
            log.info("restored operator inputs: %d caps, %d dimmings, %d needs, %d out of service",
                     len(self.caps), len(self.dimmings), len(self.needs), len(self.out_of_service))


# ---- helpers -------------------------------------------------------------------------------------
def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _finite(v, name: str, *, min_value: float | None = None, max_value: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise OperatorInputError(name, f"a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise OperatorInputError(name, f"a finite number, got {v!r}")
    if min_value is not None and f < min_value:
        raise OperatorInputError(name, f"must be >= {min_value:g}, got {f:g}")
    if max_value is not None and f > max_value:
        raise OperatorInputError(name, f"must be <= {max_value:g}, got {f:g}")
    return f


def _three_amps(v, name: str) -> tuple[float, float, float]:
    vals = list(v) if isinstance(v, (list, tuple)) else [v] * 3
    if len(vals) != 3:
        raise OperatorInputError(name, f"one value or three per-phase values [L1, L2, L3], got {v!r}")
    return tuple(_finite(x, name, min_value=0.0, max_value=1e5) for x in vals)  # type: ignore[return-value]


def _timestamp(v, name: str) -> pd.Timestamp:
    try:
        t = pd.Timestamp(v)
    except (TypeError, ValueError) as exc:
        raise OperatorInputError(name, f"not a timestamp: {v!r}") from exc
    if pd.isna(t):
        raise OperatorInputError(name, "missing timestamp")
    if t.tzinfo is None:
        raise OperatorInputError(name, f"needs a time zone (e.g. 2026-01-05T18:00:00+01:00), got {v!r}")
    if not (1970 <= t.year <= 2200):
        raise OperatorInputError(name, f"year out of range: {v!r}")
    return t.tz_convert("UTC")


def _opt_ts(v) -> pd.Timestamp | None:
    return None if v is None else pd.Timestamp(v)


def _window(now: pd.Timestamp, start, end, duration_s) -> tuple[pd.Timestamp, pd.Timestamp]:
    t0 = now if start is None else _timestamp(start, "start")
    if end is not None and duration_s is not None:
        raise OperatorInputError("duration_s", "give end or duration_s, not both")
    if end is not None:
        t1 = _timestamp(end, "end")
    elif duration_s is not None:
        secs = _finite(duration_s, "duration_s", min_value=1.0, max_value=366 * 86400.0)
        t1 = t0 + pd.Timedelta(seconds=secs)
    else:
        raise OperatorInputError("end", "a cap needs an end (or duration_s): a forgotten cap would hold for ever")
    if t1 <= t0:
        raise OperatorInputError("end", f"must be after start ({t0.isoformat()}), got {t1.isoformat()}")
    if t1 <= now:
        raise OperatorInputError("end", f"already over ({t1.isoformat()})")
    return t0, t1


def _cap_data(c: Cap) -> dict:
    d = asdict(c)
    d["max_current_a"] = list(c.max_current_a)
    d["start"], d["end"] = c.start.isoformat(), c.end.isoformat()
    return d


def _dimming_data(x: Dimming) -> dict:
    d = asdict(x)
    d["start"], d["end"] = x.start.isoformat(), x.end.isoformat()
    return d


def _needs_data(o: NeedsOverride) -> dict:
    return {"session_id": o.session_id, "charge_point_id": o.charge_point_id,
            "departure": None if o.departure is None else o.departure.isoformat(),
            "energy_kwh": o.energy_kwh, "entered_at": o.entered_at.isoformat()}
