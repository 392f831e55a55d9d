"""The live block as plain, public Python objects: what the HTTP API serialises, for anyone.

A grid tool that embeds the controller reads the same objects without HTTP::

    from nowblock.control.status import block_state, site_view
    state = block_state(controller)           # BlockState: fuses, charging points, cars, control
    state.cars[0].binding.kind                # "fuse", "cap", "own_max", ...

Every quantity carries its unit in its name; times are timezone-aware UTC. The objects are
frozen dataclasses built from the controller's last step (plan, binding limits, estimated
needs), the central system's live state (status, meter values, profiles the chargers accepted)
and the operator's inputs; :func:`block_state` only reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from nowblock.block.para14a import DEVICE_THRESHOLD_KW, guaranteed_power_kw
from nowblock.block.site import PHASES, Site
from nowblock.control.failsafe import first_limit_a
from nowblock.ocpp.profiles import IDLE_DEFAULT_ID_BASE, TX, TX_DEFAULT, TX_DEFAULT_ID_BASE
from nowblock.seam import root_index


# ---- the site -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FuseInfo:
    """A fuse of the site: ``max_current_a`` [A] per phase L1, L2, L3 (its rating)."""

    id: str
    parent: str | None
    max_current_a: list[float]
    charge_point_ids: list[str]


@dataclass(frozen=True)
class ChargePointInfo:
    """A charging point as the site file describes it."""

    id: str
    fuse: str
    max_current_a: float
    min_current_a: float
    phases: int
    phase_rotation: str
    max_power_kw: float
    controllable_device: bool  # section 14a: rated above 4.2 kW


@dataclass(frozen=True)
class SiteInfo:
    """The block: fuse tree (the first fuse is the grid connection), ratings, charging points.

    ``guaranteed_power_kw`` [kW] is the section 14a minimum for ``controllable_devices`` behind
    one energy management system (BK6-22-300 Anlage 1 Ziffer 4.5.2).
    """

    name: str
    voltage_v: float
    timezone: str
    max_unbalance_a: float | None
    grid_connection: str
    fuses: list[FuseInfo]
    charge_points: list[ChargePointInfo]
    controllable_devices: int
    guaranteed_power_kw: float


def site_view(site: Site) -> SiteInfo:
    """The site as a :class:`SiteInfo`."""
    power = site.cp_max_current_a * site.cp_phases * site.voltage_v / 1000.0
    cps = [ChargePointInfo(c.id, c.fuse, c.max_current_a, c.min_current_a, c.phases, c.phase_rotation,
                           round(float(p), 3), bool(p > DEVICE_THRESHOLD_KW + 1e-9))
           for c, p in zip(site.charge_points, power)]
    n = sum(c.controllable_device for c in cps)
    under = {f.id: [site.charge_point_ids[j] for j in np.nonzero(site.ancestry[i])[0]]
             for i, f in enumerate(site.fuses)}
    return SiteInfo(site.name, site.voltage_v, site.timezone, site.max_unbalance_a, site.root.id,
                    [FuseInfo(f.id, f.parent, list(f.max_current_a), under[f.id]) for f in site.fuses], cps, n,
                    round(guaranteed_power_kw(max(n, 1)), 3))


# ---- live state ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhaseLoad:
    """One fuse phase now [A]: its rating, the cap in force (None: none), the limit that applies
    (the lower), what is measured (charging plus, on the grid connection, the other load) and
    what is planned (the setpoints of the last step plus the other load), and the margins."""

    phase: str
    rating_a: float
    cap_a: float | None
    limit_a: float
    measured_a: float
    planned_a: float
    measured_margin_a: float
    planned_margin_a: float


@dataclass(frozen=True)
class FuseLoad:
    """A fuse's three phases now."""

    id: str
    phases: list[PhaseLoad]


@dataclass(frozen=True)
class ProfileInForce:
    """The charging profile that sets a connector's limit now, as the central system knows it.

    ``kind``: ``tx`` (the controller's TxProfile for the running transaction), ``idle_default``
    (an idle connector kept low), ``fallback_default`` (a connector default a fallback left),
    ``failsafe`` (the station-wide fail-safe TxDefaultProfile), ``station_max``; ``limit_a`` [A].
    """

    kind: str
    purpose: str
    profile_id: int
    limit_a: float
    valid_to: datetime | None


@dataclass(frozen=True)
class ConnectorState:
    """A connector (1.6) or EVSE (2.0.1): status, the profile in force and the limit the charger
    accepted [A] (by OCPP stacking of the profiles it accepted; None: no profile limits it), the
    last dispatch, and the running session's meter values."""

    connector_id: int
    status: str
    error_code: str | None
    session_id: str | None
    profile: ProfileInForce | None
    accepted_limit_a: float | None
    last_wanted_a: float | None
    last_dispatch_time: datetime | None
    measured_current_a: list[float | None]
    power_kw: float | None
    energy_kwh: float | None
    soc_percent: float | None


@dataclass(frozen=True)
class ChargePointState:
    """A charging point now: connection, OCPP version, last heard from, in service, connectors.

    ``failsafe_a`` [A] is the fail-safe default it should hold; ``failsafe_missing`` says the
    central system does not know it to hold one (it gets it again in the background)."""

    id: str
    connected: bool
    version: str | None
    last_seen: datetime | None
    in_service: bool
    failsafe_a: float
    failsafe_missing: bool
    station_max_a: float | None
    connectors: list[ConnectorState]


@dataclass(frozen=True)
class Binding:
    """Which limit binds a car and by how much (see :mod:`nowblock.loop.binding`)."""

    kind: str
    limit: str
    room_a: float
    held_back_a: float
    slack_a: float | None
    limit_a: float | None


@dataclass(frozen=True)
class CarState:
    """A plugged-in car (a running session).

    ``needs_source``: ``reported`` (by the car), ``resident`` (entered through the API) or
    ``estimated``; ``departure``/``energy_requested_kwh`` [kWh] are the needs the last step
    planned with, and before a step has planned the car (after a restart, until the first step)
    the needs known for it: the resident's, else the car's own report, both restored from the
    store (null only where neither is known). ``setpoint_a`` [A] the limit the last step set
    for it; ``plan_current_a`` [A] its plan from ``plan_start`` every ``plan_step_s`` [s];
    ``trusted`` False with ``untrusted_reason``
    (stale, over_draw, holding, offline) when its charger is not seen to follow its limit.
    """

    session_id: str
    charge_point_id: str
    connector_id: int
    arrival: datetime
    departure: datetime | None
    energy_requested_kwh: float | None
    energy_delivered_kwh: float
    needs_source: str
    phases: int
    max_current_a: float
    measured_current_a: float | None
    setpoint_a: float | None
    plan_start: datetime | None
    plan_step_s: float | None
    plan_current_a: list[float]
    trusted: bool
    untrusted_reason: str | None
    binding: Binding | None


@dataclass(frozen=True)
class StepInfo:
    """One control step: policy that decided, status (``ok``, ``empty``, ``failed: ...``,
    ``time-out ...``), whether the fallback answered, seconds per stage, cars and total current
    [A], why the block is below its limits (``held_back``), and count of cars by binding kind."""

    time: datetime
    reason: str
    policy: str
    status: str
    fallback: bool
    seconds: dict[str, float]
    step_s: float
    cars: int
    total_current_a: float
    untrusted: int
    held_back: dict
    binding_counts: dict[str, int]


@dataclass(frozen=True)
class CapInfo:
    """A cap [A per phase] on a fuse for a time window (``active`` now or scheduled)."""

    cap_id: str
    fuse_id: str
    max_current_a: list[float]
    start: datetime
    end: datetime
    source: str
    reason: str
    active: bool


@dataclass(frozen=True)
class DimmingInfo:
    """A section 14a dimming: requested and guaranteed minimum power [kW], the cap applied
    (``power_kw``, the larger), the devices counted, its window, and the per-phase current
    share in force now [A] (empty when not active)."""

    dimming_id: str
    requested_power_kw: float
    devices: int
    guaranteed_power_kw: float
    power_kw: float
    start: datetime
    end: datetime
    reason: str
    active: bool
    phase_current_a: list[float]


@dataclass(frozen=True)
class NeedsInfo:
    """A resident's needs for a running session."""

    session_id: str
    charge_point_id: str
    departure: datetime | None
    energy_kwh: float | None
    entered_at: datetime


@dataclass(frozen=True)
class OperatorInfo:
    """The operator's inputs: caps, dimmings, residents' needs, charging points out of service."""

    caps: list[CapInfo]
    dimmings: list[DimmingInfo]
    needs: list[NeedsInfo]
    out_of_service: list[str]


@dataclass(frozen=True)
class BlockState:
    """The whole block now (what ``GET /api/state`` returns)."""

    time: datetime
    site: str
    base_load_kw: float
    fuses: list[FuseLoad]
    charge_points: list[ChargePointState]
    cars: list[CarState]
    last_step: StepInfo | None
    alarms_active: list[dict]
    alarms_recent: list[dict]
    operator: OperatorInfo
    connected: int
    stale_meters: int


# ---- builders -------------------------------------------------------------------------------------
def _f(v) -> float | None:
    """A finite float or None (JSON has no NaN)."""
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _t(v) -> datetime | None:
    # Always UTC on the way out (docs/api.md): a station's own offset (+14:00) was echoed as sent.
    if v is None:
        return None
    if isinstance(v, datetime) and not isinstance(v, pd.Timestamp) and v.tzinfo is not None:
        return v.astimezone(timezone.utc)
    if not isinstance(v, datetime) and pd.isna(v):
        return None
    return pd.Timestamp(v).tz_convert("UTC").to_pydatetime() if pd.Timestamp(v).tzinfo else pd.Timestamp(
        v).tz_localize("UTC").to_pydatetime()


def step_view(res) -> StepInfo:
    """A :class:`~nowblock.control.controller.StepResult` as a :class:`StepInfo`."""
    counts: dict[str, int] = {}
    if res.binding is not None and len(res.binding):
        counts = {str(k): int(v) for k, v in res.binding["binding"].value_counts().items()}
    x = res.current_a
    return StepInfo(_t(res.time), res.reason, res.policy, res.status, not str(res.status).startswith(("ok", "empty")),
                    {k: round(float(v), 6) for k, v in res.seconds.items()}, round(float(sum(res.seconds.values())), 6),
                    int(len(x)), round(float(np.nansum(x.to_numpy(float))), 3) if len(x) else 0.0,
                    len(res.reserved), dict(res.held_back), counts)


def _profile_in_force(st, connector_id: int, tx_id: str | None, now: datetime, voltage_v: float):
    best = None
    station_max = None
    for p in st.profiles:
        if not p.periods or (p.valid_to is not None and p.valid_to <= now) or (
                p.valid_from is not None and p.valid_from > now):
            continue
        if p.purpose not in (TX, TX_DEFAULT):
            if p.connector_id == 0:
                station_max = p
            continue
        if p.connector_id not in (0, connector_id):
            continue
        # By OCPP stacking (the station applies that one): a TxProfile first, then the
        # TxDefault of the highest stack level, a connector's own before connector 0's.
        if p.purpose == TX:
            if tx_id is None or (p.transaction_id not in (None, tx_id)):
                continue
            kind, rank = "tx", (0, 0, 0)
        else:
            rank = (1, -p.stack_level, int(p.connector_id == 0))
            if p.connector_id == connector_id and p.id >= IDLE_DEFAULT_ID_BASE:
                kind = "idle_default"
            elif p.connector_id == connector_id and p.id >= TX_DEFAULT_ID_BASE:
                kind = "fallback_default"
            else:
                kind = "failsafe"
        if best is None or rank < best[0]:
            best = (rank, p, kind)
    prof = None if best is None else ProfileInForce(best[2], best[1].purpose, best[1].id,
                                                    round(first_limit_a(best[1], voltage_v), 3), best[1].valid_to)
    return prof, (None if station_max is None else round(first_limit_a(station_max, voltage_v), 3))


def block_state(controller, now: pd.Timestamp | None = None, *, plan_hours: float = 4.0) -> BlockState:
    """The block now as a :class:`BlockState` (reads only; cheap enough to call per request).

    Parameters
    ----------
    controller : Controller
        The running controller (its central system's live state, last step, operator inputs).
    now : pandas.Timestamp, optional
        Default: the controller's clock.
    plan_hours : float
        [h] How much of each car's plan to include.
    """
    now = pd.Timestamp(now) if now is not None else controller.clock()
    t = now.to_pydatetime()
    site: Site = controller.site
    state = controller.state
    last = controller.history[-1] if controller.history else None
    op = controller.operator
    v = site.voltage_v

    # Charging points, connectors, sessions (straight from the live state: no pandas per row).
    failsafe = dict(zip(controller.failsafe_a.index.tolist(), controller.failsafe_a.to_numpy(float).tolist()))
    missing = set(controller.failsafe_missing(now)) if state.stations else set()
    cps: list[ChargePointState] = []
    measured_car: dict[str, tuple[float, ...]] = {}
    stale = 0
    connected = 0
    for cp in site.charge_points:
        st = state.stations.get(cp.id)
        if st is None:
            continue
        connected += bool(st.connected)
        cons = []
        station_max = None
        for c in sorted({k for k in st.connectors if k > 0} | {1}):
            con = st.connector(c) if c in st.connectors else None
            tx = state.running_on(cp.id, c)
            prof, smax = _profile_in_force(st, c, None if tx is None else tx.transaction_id, t, v)
            station_max = smax if smax is not None else station_max
            rec = st.dispatch.get(c)
            try:
                acc = state.applied_limit_a(cp.id, c, t)
            except Exception:  # noqa: BLE001 - a malformed profile must not break the view
                acc = None
            if tx is not None:
                measured_car[tx.session_id] = tx.current_a
                # The control step's rule (LoopSettings.stale_after_s; a car with no meter value
                # yet only once its session is that old; none on an offline station, counted as
                # offline): the count said "1 stale meter" while no car was flagged stale.
                ref = tx.last_meter if tx.last_meter is not None else tx.start
                if st.connected and (t - ref).total_seconds() > controller.settings.stale_after_s:
                    stale += 1
            cons.append(ConnectorState(
                c, con.status if con else "Unknown", con.error_code if con else None,
                None if tx is None else tx.session_id, prof, _f(acc),
                None if rec is None else _f(rec.wanted_a), None if rec is None else _t(rec.time),
                [_f(x) for x in tx.current_a] if tx is not None else [None, None, None],
                None if tx is None else _f(tx.power_w / 1000.0),
                None if tx is None else round(tx.energy_delivered_kwh, 4),
                None if tx is None else _f(tx.soc_percent)))
        cps.append(ChargePointState(cp.id, bool(st.connected), st.version, _t(st.last_seen),
                                    cp.id not in op.out_of_service, float(failsafe.get(cp.id, 0.0)),
                                    cp.id in missing, station_max, cons))

    # Cars: the last step's view (needs after estimation, binding), live meter values on top.
    cars: list[CarState] = []
    plan = controller.plan
    plan_rows = None
    if plan is not None and len(plan):
        plan_rows = plan[plan.index >= plan.index[0]]
        slot_s = float((plan.index[1] - plan.index[0]).total_seconds()) if len(plan) > 1 else None
        if slot_s:
            plan_rows = plan_rows.iloc[: max(1, int(plan_hours * 3600 / slot_s))]
    else:
        slot_s = None
    running = {tx.session_id: tx for tx in state.running()}
    untrusted = last.context.untrusted if last is not None and last.context is not None else {}
    # Columns read once as plain lists (a .loc per car cost 0.25 ms: half a second at 2,000 cars).
    ctx = _rows(last.context.cars if last is not None and last.context is not None else None,
                ("departure", "energy_requested_kwh", "phases", "max_current_a"))
    bind = _rows(last.binding if last is not None else None, ("binding", "limit", "room_a", "held_back_a",
                                                              "slack_a", "limit_a"))
    counted = last.targets_a if last is not None and last.targets_a is not None else (
        last.current_a if last is not None else None)
    counted = {} if counted is None else dict(zip(counted.index.tolist(), counted.to_numpy(float).tolist()))
    plan_pos, plan_values, plan_start = {}, None, None
    if plan_rows is not None and len(plan_rows):
        plan_pos = {c: i for i, c in enumerate(plan_rows.columns)}
        plan_values = np.round(plan_rows.to_numpy(float), 2).T.tolist()
        plan_start = _t(plan_rows.index[0])
    for sid, tx in running.items():
        row = ctx.get(sid)
        resident = op.needs.get(sid)
        if resident is not None:
            source = "resident"
        elif tx.departure is not None and not math.isnan(tx.energy_requested_kwh):
            source = "reported"
        else:
            source = "estimated"
        # Before a step has planned this car (after a restart, until the first step), the needs
        # known now: the resident's (restored from the store), else the car's own.
        departure = tx.departure if resident is None else resident.departure
        energy_kwh = tx.energy_requested_kwh if resident is None else resident.energy_kwh
        cp = site.charge_point(tx.cp_id)
        r = bind.get(sid)
        b = None if r is None else Binding(str(r[0]), str(r[1]), float(r[2]), float(r[3]), _f(r[4]), _f(r[5]))
        meas = [x for x in measured_car.get(sid, ()) if not math.isnan(x)]
        j = plan_pos.get(sid)
        cars.append(CarState(
            sid, tx.cp_id, tx.connector_id, _t(tx.start),
            _t(row[0]) if row is not None else _t(departure),
            _f(row[1]) if row is not None else _f(energy_kwh),
            round(tx.energy_delivered_kwh, 4), source,
            int(row[2]) if row is not None else int(min(tx.phases_used or cp.phases, cp.phases)),
            float(row[3]) if row is not None else float(cp.max_current_a),
            max(meas) if meas else None, _f(counted.get(sid)),
            plan_start if j is not None else None, slot_s if j is not None else None,
            plan_values[j] if j is not None else [],
            sid not in untrusted, untrusted.get(sid), b))

    # Fuse phases: measured from the meter values now, planned from the last step.
    base_kw = float(last.snapshot.base_load_kw.iloc[0]) if last is not None and last.snapshot is not None and len(
        last.snapshot.base_load_kw) else 0.0
    idx, ph, meas_a, plan_a = [], [], [], []
    cp_pos = {c: i for i, c in enumerate(site.charge_point_ids)}
    for c in cars:
        idx.append(cp_pos[c.charge_point_id])
        ph.append(c.phases)
        meas_a.append(c.measured_current_a or 0.0)
        plan_a.append(c.setpoint_a or 0.0)
    rows = len(site.fuses)
    measured = site.fuse_phase_currents_a(np.array(meas_a), np.array(idx, np.int64), np.array(ph, np.int64)) if cars \
        else np.zeros((rows, 3))
    planned = site.fuse_phase_currents_a(np.array(plan_a), np.array(idx, np.int64), np.array(ph, np.int64)) if cars \
        else np.zeros((rows, 3))
    r = root_index(site)
    base_a = site.base_load_phase_current_a(base_kw)
    measured[r] += base_a
    planned[r] += base_a
    caps_now = op.last_applied.fuse_caps_a if op.last_applied is not None else {}
    fuses = []
    for i, f in enumerate(site.fuses):
        cap = caps_now.get(f.id)
        phases = []
        for p in range(3):
            c = None if cap is None or not math.isfinite(cap[p]) else float(cap[p])
            lim = float(f.max_current_a[p]) if c is None else min(float(f.max_current_a[p]), c)
            phases.append(PhaseLoad(PHASES[p], float(f.max_current_a[p]), c, lim, round(float(measured[i, p]), 3),
                                    round(float(planned[i, p]), 3), round(lim - float(measured[i, p]), 3),
                                    round(lim - float(planned[i, p]), 3)))
        fuses.append(FuseLoad(f.id, phases))

    return BlockState(t, site.name, round(base_kw, 3), fuses, cps, cars, None if last is None else step_view(last),
                      [_jsonable(a) for a in controller.active_overloads], [_jsonable(a) for a in controller.alarms[-50:]],
                      operator_view(op, now), connected, stale)


def _rows(frame: pd.DataFrame | None, columns) -> dict:
    """``{index: (values of columns)}`` of a frame, read column-wise (times as datetimes)."""
    if frame is None or len(frame) == 0:
        return {}
    cols = []
    for c in columns:
        col = frame[c]
        if isinstance(col.dtype, pd.DatetimeTZDtype):
            cols.append([None if pd.isna(x) else x for x in col.dt.tz_convert("UTC").dt.to_pydatetime()])
        else:
            cols.append(col.tolist())
    return dict(zip(frame.index.tolist(), zip(*cols)))


def operator_view(op, now: pd.Timestamp) -> OperatorInfo:
    """The operator inputs (:class:`~nowblock.control.operator.OperatorInputs`) as an :class:`OperatorInfo`."""
    applied = op.last_applied
    caps = [CapInfo(c.cap_id, c.fuse_id, list(c.max_current_a), _t(c.start), _t(c.end), c.source, c.reason,
                    c.active(now)) for c in sorted(op.caps.values(), key=lambda c: c.start)]
    dims = []
    for d in sorted(op.dimmings.values(), key=lambda d: d.start):
        share = list(applied.charging_cap_a) if applied is not None and applied.dimming is not None and \
            applied.dimming.dimming_id == d.dimming_id and applied.charging_cap_a is not None else []
        dims.append(DimmingInfo(d.dimming_id, d.requested_power_kw, d.devices, d.guaranteed_power_kw, d.power_kw,
                                _t(d.start), _t(d.end), d.reason, d.active(now), [round(x, 3) for x in share]))
    needs = [NeedsInfo(o.session_id, o.charge_point_id, _t(o.departure), o.energy_kwh, _t(o.entered_at))
             for o in op.needs.values()]
    return OperatorInfo(caps, dims, needs, sorted(op.out_of_service))


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (pd.Timestamp, datetime)):
            out[k] = _t(v)
        elif isinstance(v, (float, np.floating)):
            out[k] = _f(v)
        elif isinstance(v, np.integer):
            out[k] = int(v)
        else:
            out[k] = v
    return out


# ---- history from the store -------------------------------------------------------------------------
@dataclass(frozen=True)
class FusePhaseSeries:
    """Measured charging current [A] on one fuse phase, one value per bucket (NaN: no data -> None)."""

    fuse_id: str
    phase: str
    limit_a: float
    current_a: list[float | None]


@dataclass(frozen=True)
class ChargePointSeries:
    """A charging point's mean power [kW] per bucket (None: no meter value)."""

    charge_point_id: str
    power_kw: list[float | None]


@dataclass(frozen=True)
class History:
    """The recent past from the store: bucket start times, per fuse phase the measured charging
    current (the block's other load is not metered here), per charging point the power."""

    since: datetime
    until: datetime
    bucket_s: float
    times: list[datetime]
    fuses: list[FusePhaseSeries]
    charge_points: list[ChargePointSeries] = field(default_factory=list)


def history_view(store, site: Site, *, since: pd.Timestamp, until: pd.Timestamp, bucket_s: float = 300.0,
                 charge_points: bool = False) -> History:
    """Meter values from ``since`` to ``until`` averaged into buckets of ``bucket_s`` [s].

    Currents are per charger phase in the meter values; the charging point's phase rotation
    maps them to grid phases, and every fuse above it carries them.
    """
    df = store.recent_meter_values(since, until, bucket_s=bucket_s)
    grid = pd.date_range(since.floor(f"{int(bucket_s)}s"), until, freq=f"{int(bucket_s)}s", inclusive="left")
    n_t = len(grid)
    load = np.full((len(site.fuses), 3, n_t), np.nan)
    cp_power: dict[str, list] = {}
    if len(df):
        df = df[df["station_id"].isin(site.charge_point_ids)]
        pos = grid.get_indexer(pd.DatetimeIndex(df["time"]))
        ok = pos >= 0
        df, pos = df[ok], pos[ok]
        cp_idx = site.cp_index(df["station_id"])
        rot = site.cp_grid_phases[cp_idx]  # (n, 3): grid phase of charger phase k
        cur = np.nan_to_num(df[["current_l1_a", "current_l2_a", "current_l3_a"]].to_numpy(float), nan=0.0)
        per_grid = np.zeros((len(df), 3))
        for k in range(3):
            np.add.at(per_grid, (np.arange(len(df)), rot[:, k]), cur[:, k])
        anc = site.ancestry[:, cp_idx]  # (F, n)
        have = np.zeros(n_t, bool)
        have[pos] = True
        load[:, :, have] = 0.0
        for f in range(len(site.fuses)):
            sel = anc[f]
            for p in range(3):
                np.add.at(load[f, p], pos[sel], per_grid[sel, p])
        if charge_points:
            for cp_id, j, pkw in zip(df["station_id"], pos, df["power_kw"].to_numpy(float)):
                cp_power.setdefault(cp_id, [None] * n_t)[j] = _f(pkw)
    fuses = [FusePhaseSeries(fid, PHASES[p], float(site.limits_a[i, p]),
                             [None if not np.isfinite(x) else round(float(x), 3) for x in load[i, p]])
             for i, fid in enumerate(site.fuse_ids) for p in range(3)]
    cps = [ChargePointSeries(k, v) for k, v in cp_power.items()] if charge_points else []
    return History(_t(since), _t(until), float(bucket_s), [_t(x) for x in grid], fuses, cps)
