"""The block's electrical site: a tree of fuses and the charging points behind them.

Everything a schedule must respect is derivable from a :class:`Site`: for any per-charging-point
currents and car phase counts, :meth:`Site.fuse_phase_currents_a` gives the current on every
fuse phase, and :meth:`Site.phase_incidence` gives the matrix that maps one to the other (the
constraint matrix the optimizer and the heuristics share).
"""

from __future__ import annotations

import itertools
import logging
import math
import tomllib
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import tomli_w

log = logging.getLogger(__name__)

PHASES = ("L1", "L2", "L3")
#: Top-level keys of a site file; anything else is kept in :attr:`Site.extra` with a warning
#: (``api`` is read by ``nowblock serve``).
SITE_KEYS = ("name", "voltage_v", "timezone", "max_unbalance_a", "fuses", "charge_points")
EXTENSION_KEYS = ("api",)
_VALID_ROTATIONS = {"".join(p) for p in itertools.permutations(PHASES)}


def _read_only(a: np.ndarray) -> np.ndarray:
    # A Site's cached arrays are shared by every snapshot, the safety net and the simulator's
    # overload metric: one policy's in-place slip (``room = site.limits_a; room -= load``)
    # raised every limit, so that nothing was made safe and the overload went unreported.
    a.flags.writeable = False
    return a


class SiteError(ValueError):
    """A site file or site object that cannot describe a real block; the message names the key."""


class SiteFileNotFoundError(SiteError, FileNotFoundError):
    """The site file does not exist (a :class:`SiteError` and a :class:`FileNotFoundError`)."""


#: [A] per phase: above what a low-voltage connection carries (a 2500 kVA transformer, the
#: largest usual on the low-voltage side, gives about 3600 A at 400 V). Beyond is refused, unless
#: the charging points below the fuse could draw that much together (an aggregate cap: warned).
MAX_FUSE_CURRENT_A = 4000.0
#: [A] per phase: AC charging (IEC 61851-1, IEC 62196-2) tops out at 63 A per phase in Europe,
#: 80 A in North America. A charging point rated above this is refused.
MAX_CHARGE_POINT_CURRENT_A = 80.0
#: [V] phase to neutral: 230 V in Europe, 120 or 277 V in North America. Outside this range is
#: refused (400 V is Europe's line-to-line voltage, the usual mistake).
VOLTAGE_RANGE_V = (100.0, 300.0)

_FUSE_KEYS = {"id", "parent", "max_current_a"}
_CP_KEYS = {"id", "fuse", "max_current_a", "min_current_a", "phases", "phase_rotation", "caps", "password_hash"}
_CAP_KEYS = {"start", "end", "max_current_a"}


@dataclass(frozen=True)
class CapWindow:
    """A cap on one charging point's current inside a daily time window.

    Used for grid-operator dimming (section 14a EnWG: 4.2 kW) or a site's own rules.
    ``start`` and ``end`` are local wall-clock times "HH:MM"; ``end`` before ``start`` wraps
    past midnight. ``max_current_a`` [A] per phase.
    """

    start: str
    end: str
    max_current_a: float


@dataclass(frozen=True)
class Fuse:
    """A fuse (or the grid connection, the root) with a per-phase limit ``max_current_a`` [A]."""

    id: str
    max_current_a: tuple[float, float, float]
    parent: str | None = None


@dataclass(frozen=True)
class ChargePoint:
    """One charging point (OCPP identity ``id``) behind fuse ``fuse``.

    ``min_current_a``/``max_current_a`` [A] per phase; ``phases`` 1 or 3 is how the charger is
    connected; ``phase_rotation`` names the grid phase wired to the charger's L1, L2, L3, so a
    single-phase car (which draws on the charger's L1) loads grid phase ``phase_rotation[0:2]``.
    ``password_hash`` is an optional OCPP security-profile-1 hash (see ``nowblock.ocpp``).
    """

    id: str
    fuse: str
    max_current_a: float = 32.0
    min_current_a: float = 6.0
    phases: int = 3
    phase_rotation: str = "L1L2L3"
    caps: tuple[CapWindow, ...] = ()
    password_hash: str | None = None

    @property
    def grid_phases(self) -> tuple[int, int, int]:
        """Grid phase index (0..2) wired to the charger's L1, L2, L3."""
        r = self.phase_rotation
        return tuple(PHASES.index(r[i : i + 2]) for i in (0, 2, 4))  # type: ignore[return-value]


@dataclass(frozen=True)
class Site:
    """A block: fuses (a tree whose root is the grid connection), charging points, voltage.

    ``voltage_v`` [V] is phase to neutral. ``max_unbalance_a`` [A], if set, limits the
    difference between the most and least loaded phase of the grid connection's charging
    current (VDE-AR-N 4100: 4.6 kVA, that is 20 A at 230 V).
    """

    name: str
    fuses: tuple[Fuse, ...]
    charge_points: tuple[ChargePoint, ...]
    voltage_v: float = 230.0
    max_unbalance_a: float | None = None
    timezone: str = "Europe/Berlin"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fuses", tuple(self.fuses))
        object.__setattr__(self, "charge_points", tuple(self.charge_points))
        _validate(self)
        # The grid connection goes first, so row block 0 of every constraint matrix is the root.
        roots = [i for i, f in enumerate(self.fuses) if f.parent is None]
        if roots[0] != 0:
            i = roots[0]
            object.__setattr__(self, "fuses", (self.fuses[i],) + self.fuses[:i] + self.fuses[i + 1 :])

    # ---- lookups -------------------------------------------------------------------------
    @cached_property
    def fuse_ids(self) -> list[str]:
        """Fuse ids; index 0 is the root (grid connection), the others in file order."""
        return [f.id for f in self.fuses]

    @cached_property
    def charge_point_ids(self) -> list[str]:
        """Charging point ids in file order."""
        return [c.id for c in self.charge_points]

    @cached_property
    def root(self) -> Fuse:
        """The grid connection: the first fuse without a parent."""
        return next(f for f in self.fuses if f.parent is None)

    def charge_point(self, cp_id: str) -> ChargePoint:
        """The charging point with OCPP identity ``cp_id`` (KeyError if unknown)."""
        return self.charge_points[self._cp_index[cp_id]]

    @cached_property
    def _cp_index(self) -> dict[str, int]:
        return {c.id: i for i, c in enumerate(self.charge_points)}

    def cp_index(self, cp_ids) -> np.ndarray:
        """Positions of ``cp_ids`` in :attr:`charge_points` (KeyError naming an unknown id)."""
        return np.array([self._cp_index[c] for c in cp_ids], dtype=np.int64)

    @cached_property
    def limits_a(self) -> np.ndarray:
        """Per-phase fuse ratings [A], shape (n_fuses, 3)."""
        return _read_only(np.array([f.max_current_a for f in self.fuses], dtype=float))

    @cached_property
    def cp_min_current_a(self) -> np.ndarray:
        """Minimum current per charging point [A], shape (n_cp,)."""
        return _read_only(np.array([c.min_current_a for c in self.charge_points], dtype=float))

    @cached_property
    def cp_max_current_a(self) -> np.ndarray:
        """Maximum current per charging point [A], shape (n_cp,)."""
        return _read_only(np.array([c.max_current_a for c in self.charge_points], dtype=float))

    @cached_property
    def cp_phases(self) -> np.ndarray:
        """Number of phases each charging point is connected with, shape (n_cp,)."""
        return _read_only(np.array([c.phases for c in self.charge_points], dtype=np.int64))

    @cached_property
    def has_caps(self) -> bool:
        """Whether any charging point has a cap in a time window."""
        return any(c.caps for c in self.charge_points)

    @cached_property
    def cp_grid_phases(self) -> np.ndarray:
        """Grid phase index (0..2) wired to each charging point's L1, L2, L3, shape (n_cp, 3)."""
        return _read_only(np.array([c.grid_phases for c in self.charge_points], dtype=np.int64).reshape(-1, 3))

    @cached_property
    def ancestry(self) -> np.ndarray:
        """Boolean (n_fuses, n_cp): True where the fuse carries the charging point's current."""
        idx = {f: i for i, f in enumerate(self.fuse_ids)}
        parent = {f.id: f.parent for f in self.fuses}
        m = np.zeros((len(self.fuses), len(self.charge_points)), dtype=bool)
        for j, cp in enumerate(self.charge_points):
            f: str | None = cp.fuse
            while f is not None:
                m[idx[f], j] = True
                f = parent[f]
        return _read_only(m)

    def phase_usage(self, cp_index: np.ndarray, car_phases: np.ndarray) -> np.ndarray:
        """Which grid phases each (charging point, car) pair loads: bool (n, 3).

        A car with ``k`` phases on a charger with ``m`` phases draws on the charger's first
        ``min(k, m)`` phases; the rotation maps them to grid phases.
        """
        cp_index = np.asarray(cp_index, dtype=np.int64)
        car_phases = np.asarray(car_phases, dtype=np.int64)
        rot = self.cp_grid_phases[cp_index]
        k = np.minimum(car_phases, self.cp_phases[cp_index])
        used = np.zeros((len(cp_index), 3), dtype=bool)
        for i in range(3):  # charger phase i is used when the car has more than i phases
            active = k > i
            used[np.nonzero(active)[0], rot[active, i]] = True
        return used

    def phase_incidence(self, cp_index: np.ndarray, car_phases: np.ndarray) -> np.ndarray:
        """Matrix (n_fuses * 3, n) mapping per-car current [A] to fuse-phase current [A].

        Row ``f * 3 + p`` is fuse ``f``, grid phase ``p``; column ``j`` is the ``j``-th car,
        plugged in at charging point ``cp_index[j]`` with ``car_phases[j]`` phases.
        """
        cp_index = np.asarray(cp_index, dtype=np.int64)
        used = self.phase_usage(cp_index, car_phases)  # (n, 3)
        anc = self.ancestry[:, cp_index]  # (F, n)
        return (anc[:, None, :] & used.T[None, :, :]).reshape(len(self.fuses) * 3, -1).astype(float)

    def fuse_phase_currents_a(
        self, current_a: np.ndarray, cp_index: np.ndarray, car_phases: np.ndarray
    ) -> np.ndarray:
        """Current on every fuse phase [A], shape (n_fuses, 3), from per-car currents [A]."""
        a = self.phase_incidence(cp_index, car_phases)
        return (a @ np.asarray(current_a, dtype=float)).reshape(len(self.fuses), 3)

    def base_load_phase_current_a(self, base_load_kw: np.ndarray | float) -> np.ndarray:
        """Per-phase current [A] of the block's other load, spread evenly over three phases.

        Shape ``(..., 3)`` for a ``(...)``-shaped ``base_load_kw`` [kW]; it loads the root
        fuse only (household load is metered behind the grid connection).
        """
        p = np.asarray(base_load_kw, dtype=float)
        i = p * 1000.0 / (3.0 * self.voltage_v)
        return np.repeat(i[..., None], 3, axis=-1)

    def cap_current_a(self, times, step=None) -> np.ndarray:
        """Per-charging-point cap [A] from time windows, shape (len(times), n_cp); inf if none.

        Parameters
        ----------
        times : sequence of timestamps
            Instants, or the starts of steps.
        step : Timedelta or array-like of float, optional
            The steps' length (one Timedelta, or seconds per time): a step is capped by every
            window it overlaps, not only by the one its start lies in (a window from 17:10 capped
            the 15-minute step from 17:00 only at 17:15, a step late: an outside test). None:
            the windows the instants lie in.
        """
        idx = _to_local_index(times, self.timezone)
        sec = (idx.hour * 3600 + idx.minute * 60 + idx.second).to_numpy().astype(float)
        if step is None:
            span = np.zeros(len(idx))
        elif np.ndim(step) == 0:
            import pandas as pd

            span = np.full(len(idx), pd.Timedelta(step).total_seconds())
        else:
            span = np.asarray(step, dtype=float)
        out = np.full((len(idx), len(self.charge_points)), np.inf)
        for j, cp in enumerate(self.charge_points):
            for w in cp.caps:
                inside = _overlaps(sec, span, 60.0 * _hhmm(w.start), 60.0 * _hhmm(w.end))
                out[inside, j] = np.minimum(out[inside, j], w.max_current_a)
        return out

    def current_to_kw(self, current_a, n_phases) -> np.ndarray:
        """Power [kW] of a car drawing ``current_a`` [A] per phase on ``n_phases`` phases."""
        return np.asarray(current_a, dtype=float) * np.asarray(n_phases) * self.voltage_v / 1000.0

    # ---- TOML -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Site":
        """Build a site from the parsed TOML table (see ARCHITECTURE.md for the keys).

        Raises :class:`SiteError` naming the key (for example ``charge_points[3].max_current_a``)
        for a missing or malformed entry, and for an unknown key in a fuse or charging-point
        table (a misspelt rating must not silently fall back to its default).
        """
        if not isinstance(d, dict):
            raise SiteError(f"site: expected a table, got {type(d).__name__}")
        fuse_list = _req(d, "fuses", "site")
        if not isinstance(fuse_list, list):
            raise SiteError(f"fuses: expected an array of tables ([[fuses]]), got {type(fuse_list).__name__}")
        fuses = []
        for i, f in enumerate(fuse_list):
            where = f"fuses[{i}]"
            _known_keys(f, _FUSE_KEYS, where)
            parent = f.get("parent")
            fuses.append(
                Fuse(
                    id=_str(_req(f, "id", where), f"{where}.id"),
                    max_current_a=_three(_req(f, "max_current_a", where), f"{where}.max_current_a"),
                    parent=None if parent is None else _str(parent, f"{where}.parent"),
                )
            )
        cp_list = d.get("charge_points", [])
        if not isinstance(cp_list, list):
            raise SiteError(
                f"charge_points: expected an array of tables ([[charge_points]]), got {type(cp_list).__name__}"
            )
        cps = []
        for i, c in enumerate(cp_list):
            where = f"charge_points[{i}]"
            _known_keys(c, _CP_KEYS, where)
            caps_list = c.get("caps", [])
            if not isinstance(caps_list, list):
                raise SiteError(f"{where}.caps: expected an array of tables, got {type(caps_list).__name__}")
            caps = []
            for k, w in enumerate(caps_list):
                wk = f"{where}.caps[{k}]"
                _known_keys(w, _CAP_KEYS, wk)
                win = CapWindow(
                    start=_str(_req(w, "start", wk), f"{wk}.start"),
                    end=_str(_req(w, "end", wk), f"{wk}.end"),
                    max_current_a=_num(_req(w, "max_current_a", wk), f"{wk}.max_current_a"),
                )
                if win.start.strip() == win.end.strip():
                    # An empty window, or the whole day? Either reading surprises someone (an
                    # outside test wrote 06:00-06:00 for a 0 A cap, which capped nothing).
                    raise SiteError(f"{wk}: start and end are both {win.start!r}: an empty window; for the "
                                    f"whole day write start = \"00:00\", end = \"24:00\"")
                caps.append(win)
            phases = _num(c.get("phases", 3), f"{where}.phases")
            if phases != int(phases):
                raise SiteError(f"{where}.phases: must be 1 or 3, got {phases}")
            pw = c.get("password_hash")
            cps.append(
                ChargePoint(
                    id=_str(_req(c, "id", where), f"{where}.id"),
                    fuse=_str(_req(c, "fuse", where), f"{where}.fuse"),
                    max_current_a=_num(c.get("max_current_a", 32.0), f"{where}.max_current_a"),
                    min_current_a=_num(c.get("min_current_a", 6.0), f"{where}.min_current_a"),
                    phases=int(phases),
                    phase_rotation=_str(c.get("phase_rotation", "L1L2L3"), f"{where}.phase_rotation"),
                    caps=tuple(caps),
                    password_hash=None if pw is None else _str(pw, f"{where}.password_hash"),
                )
            )
        known = set(SITE_KEYS)
        for k in sorted(set(d) - known - set(EXTENSION_KEYS)):
            # Kept (a newer nowblock or another tool may read it), but a misspelt key must not
            # silently fall back to the default.
            log.warning("site: unknown top-level key %r is ignored (known: %s)", k,
                        ", ".join(SITE_KEYS + EXTENSION_KEYS))
        unbalance = d.get("max_unbalance_a")
        site = cls(
            name=_str(d.get("name", "site"), "name"),
            fuses=tuple(fuses),
            charge_points=tuple(cps),
            voltage_v=_num(d.get("voltage_v", 230.0), "voltage_v"),
            max_unbalance_a=None if unbalance is None else _num(unbalance, "max_unbalance_a"),
            timezone=_str(d.get("timezone", "Europe/Berlin"), "timezone"),
            extra={k: v for k, v in d.items() if k not in known},
        )
        _warn_points_that_cannot_charge(site)
        return site

    @classmethod
    def from_toml(cls, path: str | Path) -> "Site":
        """Read a site file; raises :class:`SiteError` naming the bad key."""
        p = Path(path)
        if not p.exists():
            raise SiteFileNotFoundError(f"{p}: no such site file")
        try:
            with open(p, "rb") as fh:
                d = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise SiteError(f"{p}: not valid TOML ({exc})") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise SiteError(f"{p}: cannot read site file ({exc})") from exc
        try:
            return cls.from_dict(d)
        except SiteError as exc:
            raise SiteError(f"{p}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The site as a TOML-ready table (optional keys only when set)."""
        d: dict[str, Any] = {"name": self.name, "voltage_v": self.voltage_v, "timezone": self.timezone}
        if self.max_unbalance_a is not None:
            d["max_unbalance_a"] = self.max_unbalance_a
        d.update(self.extra)
        d["fuses"] = []
        for f in self.fuses:
            t: dict[str, Any] = {"id": f.id}
            if f.parent is not None:
                t["parent"] = f.parent
            t["max_current_a"] = list(f.max_current_a)
            d["fuses"].append(t)
        d["charge_points"] = []
        for c in self.charge_points:
            t = {
                "id": c.id,
                "fuse": c.fuse,
                "max_current_a": c.max_current_a,
                "min_current_a": c.min_current_a,
                "phases": c.phases,
                "phase_rotation": c.phase_rotation,
            }
            if c.caps:
                t["caps"] = [{"start": w.start, "end": w.end, "max_current_a": w.max_current_a} for w in c.caps]
            if c.password_hash:
                t["password_hash"] = c.password_hash
            d["charge_points"].append(t)
        return d

    def to_toml(self, path: str | Path) -> None:
        """Write the site file."""
        Path(path).write_text(tomli_w.dumps(self.to_dict()))

    def with_root_limit(self, max_current_a: float) -> "Site":
        """A copy whose grid connection is rated ``max_current_a`` [A] on every phase."""
        fuses = tuple(
            replace(f, max_current_a=(max_current_a,) * 3) if f.parent is None else f for f in self.fuses
        )
        return replace(self, fuses=fuses)


# ---- helpers -------------------------------------------------------------------------------
def _req(d: dict, key: str, where: str):
    if not isinstance(d, dict):
        raise SiteError(f"{where}: expected a table, got {type(d).__name__}")
    if key not in d:
        raise SiteError(f"{where}.{key}: missing")
    return d[key]


def _known_keys(d, allowed: set[str], where: str) -> None:
    if not isinstance(d, dict):
        raise SiteError(f"{where}: expected a table, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SiteError(f"{where}.{unknown[0]}: unknown key (expected one of {sorted(allowed)})")


def _num(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SiteError(f"{where}: expected a number, got {v!r}")
    return float(v)


def _str(v, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise SiteError(f"{where}: expected a non-empty string, got {v!r}")
    return v


def _three(v, where: str) -> tuple[float, float, float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v, v, v]
    if isinstance(v, (list, tuple)) and len(v) != 3:
        raise SiteError(f"{where}: expected three per-phase values [L1, L2, L3] (or one number for all three), "
                        f"got {v!r}")
    if not isinstance(v, (list, tuple)):
        # A quoted number ("25") is text in TOML: "expected three per-phase values" hid that one
        # number is allowed as well.
        raise SiteError(f"{where}: expected a number [A] (the same on all three phases) or three per-phase numbers "
                        f"[L1, L2, L3], got {v!r}" + (" (text: write it without quotes)" if isinstance(v, str) else ""))
    return tuple(_num(x, where) for x in v)  # type: ignore[return-value]


def _hhmm(s: str) -> int:
    """Minutes after local midnight of "HH:MM" (00:00 to 24:00); ValueError otherwise."""
    h, m = s.split(":")
    minutes = int(h) * 60 + int(m)
    if len(m) != 2 or not (0 <= int(m) < 60) or not (0 <= minutes <= 24 * 60):
        raise ValueError(f"not a time of day: {s!r}")
    return minutes


def _to_local_index(times, tz: str):
    import pandas as pd

    idx = pd.DatetimeIndex(times)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    return idx.tz_convert(tz)


def _validate(site: Site) -> None:
    if not site.fuses:
        raise SiteError("fuses: a site needs at least one fuse (the grid connection)")
    # Comparisons are written so that NaN fails them, and ratings must be finite: TOML allows
    # nan and inf, and either would silently switch a limit off.
    lo_v, hi_v = VOLTAGE_RANGE_V
    if not (lo_v <= site.voltage_v <= hi_v):
        raise SiteError(f"voltage_v: expected the phase-to-neutral voltage, {lo_v:g}..{hi_v:g} V (230 in Europe; "
                        f"400 V is line to line), got {site.voltage_v:g}")
    if site.max_unbalance_a is not None and not (0 <= site.max_unbalance_a < math.inf):
        raise SiteError(f"max_unbalance_a: must be >= 0 and finite, got {site.max_unbalance_a}")
    try:
        ZoneInfo(site.timezone)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise SiteError(f"timezone: unknown time zone {site.timezone!r} (an IANA name like 'Europe/Berlin')") from exc
    seen: set[str] = set()
    for i, f in enumerate(site.fuses):
        if f.id in seen:
            raise SiteError(f"fuses[{i}].id: duplicate fuse id {f.id!r}")
        seen.add(f.id)
        if any(not (0 < x < math.inf) for x in f.max_current_a):
            raise SiteError(f"fuses[{i}].max_current_a: ratings must be positive and finite, got {list(f.max_current_a)}")
    parent = {f.id: f.parent for f in site.fuses}
    for i, f in enumerate(site.fuses):
        if f.parent is not None and f.parent not in parent:
            raise SiteError(f"fuses[{i}].parent: unknown fuse {f.parent!r} (dangling parent of {f.id!r})")
    for i, f in enumerate(site.fuses):
        path, cur = [f.id], f.parent
        while cur is not None:
            if cur in path:
                raise SiteError(f"fuses[{i}].parent: cycle {' -> '.join(path + [cur])}")
            path.append(cur)
            cur = parent[cur]
    roots = [f for f in site.fuses if f.parent is None]
    if len(roots) != 1:
        raise SiteError(
            f"fuses: exactly one fuse must have no parent (the grid connection); found {[f.id for f in roots]}"
        )
    cps: set[str] = set()
    for i, c in enumerate(site.charge_points):
        where = f"charge_points[{i}]"
        if c.id in cps:
            raise SiteError(f"{where}.id: duplicate charging point id {c.id!r}")
        cps.add(c.id)
        if c.fuse not in parent:
            raise SiteError(f"{where}.fuse: unknown fuse {c.fuse!r} for charging point {c.id!r}")
        if c.phases not in (1, 3):
            raise SiteError(f"{where}.phases: must be 1 or 3, got {c.phases}")
        if c.phase_rotation not in _VALID_ROTATIONS:
            raise SiteError(
                f"{where}.phase_rotation: {c.phase_rotation!r} is not a permutation of L1L2L3"
            )
        if not (0 < c.max_current_a <= MAX_CHARGE_POINT_CURRENT_A):
            raise SiteError(f"{where}.max_current_a: expected 0 < A per phase <= {MAX_CHARGE_POINT_CURRENT_A:g} "
                            f"(AC charging: at most 63 A in Europe, 80 A in North America), got {c.max_current_a:g}")
        if not (c.min_current_a >= 0):
            raise SiteError(f"{where}.min_current_a: must be >= 0, got {c.min_current_a}")
        if c.min_current_a > c.max_current_a:
            raise SiteError(
                f"{where}.min_current_a: {c.min_current_a} A is above max_current_a {c.max_current_a} A"
            )
        for k, w in enumerate(c.caps):
            try:
                _hhmm(w.start), _hhmm(w.end)
            except ValueError as exc:
                raise SiteError(f"{where}.caps[{k}]: start/end must be 'HH:MM', got {w.start!r}, {w.end!r}") from exc
            if not (0 <= w.max_current_a < math.inf):
                raise SiteError(f"{where}.caps[{k}].max_current_a: must be >= 0 and finite, got {w.max_current_a}")
    _check_large_ratings(site, parent)


def _warn_points_that_cannot_charge(site: "Site") -> None:
    """Warn about a charging point whose minimum current [A] is above what a fuse on its way to the
    grid allows on the grid phase its first phase is wired to (its rotation's first): no car, not
    even a 1-phase one alone, can ever charge there, and every plan gives it 0 A. An outside test
    found such a block planned as all zeros with nothing said. Only for a site read from a file or
    a table: the loop derives sites with reserved room every step, where a point may rightly have
    none for a while."""
    rating = {f.id: f.max_current_a for f in site.fuses}
    parent = {f.id: f.parent for f in site.fuses}
    for c in site.charge_points:
        p = PHASES.index(c.phase_rotation[:2])
        cur = c.fuse
        while cur is not None:
            if rating[cur][p] < c.min_current_a:
                log.warning("charging point %s: its minimum %g A is above fuse %s's %g A on %s (its first phase): "
                            "no car can ever charge there", c.id, c.min_current_a, cur, rating[cur][p], PHASES[p])
                break
            cur = parent[cur]


def _overlaps(start_s: np.ndarray, span_s: np.ndarray, s: float, e: float) -> np.ndarray:
    """Whether each step [start, start + span) of the day (seconds after local midnight; span 0:
    the instant) meets the daily window [s, e) (seconds; past midnight when e < s)."""
    day = 86400.0
    windows = [(s, e)] if s <= e else [(s, day), (0.0, e)]
    hit = np.zeros(len(start_s), dtype=bool)
    for k in (-1.0, 0.0, 1.0):  # the window on the day before, the same day and the day after
        for a, b in windows:
            a, b = a + k * day, b + k * day
            hit |= np.where(span_s > 0, (start_s < b) & (start_s + span_s > a), (start_s >= a) & (start_s < b))
    return hit | (span_s >= day) & (windows[0][1] > windows[0][0])


def _check_large_ratings(site: "Site", parent: dict) -> None:
    """Refuse a fuse rated above what a low-voltage connection carries unless the charging points
    below it could draw that much together: then it is a deliberate aggregate cap (a benchmark
    block of thousands of points, a contract of several transformers) and only warned about;
    otherwise it is most likely a power (W, kW) written as a current."""
    below: dict[str, float] = {f.id: 0.0 for f in site.fuses}
    for c in site.charge_points:
        cur = c.fuse
        while cur is not None:
            below[cur] += c.max_current_a
            cur = parent[cur]
    for i, f in enumerate(site.fuses):
        top = max(f.max_current_a)
        if top <= MAX_FUSE_CURRENT_A:
            continue
        if top > below[f.id]:
            raise SiteError(f"fuses[{i}].max_current_a: {top:g} A per phase is more than a low-voltage connection "
                            f"carries (expected at most {MAX_FUSE_CURRENT_A:g} A, or at most the {below[f.id]:g} A its "
                            f"charging points draw together; a rating in A per phase, not W or kW)")
        log.warning("fuse %s: %g A per phase is more than a low-voltage connection carries (%g A); taken as an "
                    "aggregate cap over its charging points", f.id, top, MAX_FUSE_CURRENT_A)
