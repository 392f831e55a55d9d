"""The routes of the HTTP API (FastAPI): reads, operator writes, the live stream, metrics.

Reads return the public objects of :mod:`nowblock.control.status` (their OpenAPI schema is
generated from them); writes take the bodies of :mod:`nowblock.api.models`, are validated in
full (422 naming the field, nothing changed), stored, and make the controller step at once.
See docs/api.md for every endpoint with examples.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterable
from typing import Any

import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from nowblock.api.auth import bearer
from nowblock.api.models import CapRequest, DimmingRequest, MinimumPower, NeedsRequest, ServiceRequest
from nowblock.api.page import mount_page
from nowblock.block.para14a import guaranteed_power_kw, simultaneity_factor
from nowblock.control.operator import OperatorInputError
from nowblock.store.base import StoreUnavailable
from nowblock.control.status import (
    BlockState,
    CapInfo,
    CarState,
    ChargePointState,
    DimmingInfo,
    History,
    NeedsInfo,
    OperatorInfo,
    SiteInfo,
    StepInfo,
    history_view,
    operator_view,
    step_view,
)

FORMULA = "P_min,14a = 4.2 kW + (n - 1) x GZF(n) x 4.2 kW"
SOURCE = "BNetzA BK6-22-300 (27 Nov 2023), Anlage 1, Ziffer 4.5.2 (control through an energy management system)"


def _unprocessable(field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [{"loc": ["body", field], "msg": message,
                                                               "type": "value_error"}]})


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its JSON-ish spelling.

    Parameters
    ----------
    value : Any
        Decoded JSON (dicts, lists, strings, numbers), e.g. a validation error's ``input``.

    Returns
    -------
    Any
        The same structure; NaN, +inf and -inf become the strings ``"NaN"``, ``"Infinity"``
        and ``"-Infinity"`` (what Python's ``json.dumps`` sent), everything else unchanged.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _invalid_request(errors) -> JSONResponse:
    """FastAPI's 422 for a refused request, whatever the client sent.

    Python's ``json`` module (and so Starlette's ``Request.json``) decodes ``NaN`` and
    ``Infinity``; validation refuses them, but FastAPI's own handler echoes them back in
    ``input``, and a strict JSON encoder cannot write them: the client got a 500 and a dropped
    connection instead of the 422 naming the field.

    Parameters
    ----------
    errors : sequence of dict
        ``RequestValidationError.errors()``: ``loc`` names the field, ``input`` what was sent.

    Returns
    -------
    JSONResponse
        422 with ``detail`` as FastAPI writes it, non-finite numbers as strings.
    """
    return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(errors))})


def duplicate_key(body: bytes) -> str | None:
    """The first key given twice in one object of a JSON body, or None.

    Python's ``json`` module (and so FastAPI) keeps the last of two equal keys: without this
    check ``{"limit_a": 10, "limit_a": 40}`` set 40 A without a word.

    Parameters
    ----------
    body : bytes
        The request body as sent.

    Returns
    -------
    str or None
        The duplicated key (the first found); None when there is none, or when the body is
        not JSON at all (validation says so).
    """
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and not found:
                found.append(key)
            seen.add(key)
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except (ValueError, UnicodeDecodeError):
        return None
    return found[0] if found else None


def max_step_age_s(ctl) -> float:
    """[s] How old the last completed step may be before ``/api/health`` says ``degraded``.

    Three control periods, plus two dispatch waits (``send_wait_s``) that one step may spend
    on chargers answering slowly: a healthy loop steps at least once a period, so only steps
    that fail (a failed step is not in ``history``) or a loop that stopped let it age past this.

    Parameters
    ----------
    ctl : Controller
        Its ``period_s`` [s] and ``config.send_wait_s`` [s] are read.

    Returns
    -------
    float
        [s] on the controller's clock.
    """
    send_wait_s = float(getattr(getattr(ctl, "config", None), "send_wait_s", 0.0) or 0.0)
    return 3.0 * float(ctl.period_s) + 2.0 * send_wait_s


def create_app(api) -> FastAPI:
    """The FastAPI application of ``api`` (a :class:`nowblock.api.server.BlockApi`)."""
    ctl = api.controller
    # redirect_slashes=False: a path with a trailing slash ("/api/caps/") is 404, not a 307 to
    # the path without it, which a client following it would repeat a DELETE, PUT or POST to.
    app = FastAPI(title="nowblock", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False,
                  description="Live state, binding limits, caps and section 14a dimming of one nowblock block. "
                              "Units are in the field names; times are ISO 8601 UTC.")

    def reader(request: Request) -> None:
        host = request.client.host if request.client else None
        if not api.tokens.may_read(host, bearer(request.headers.get("authorization"))):
            raise HTTPException(401, "a token is needed to read (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    def writer(request: Request) -> None:
        if not api.tokens.hashes:
            raise HTTPException(401, "no API token is configured: writes are refused (see docs/api.md)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not api.tokens.verify(bearer(request.headers.get("authorization"))):
            raise HTTPException(401, "missing or wrong token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(OperatorInputError)
    async def _refused(request: Request, exc: OperatorInputError):
        return _unprocessable(exc.field, exc.message)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable):
        # The database is down or does not answer: nothing was changed; say why (not a bare 500).
        return JSONResponse(status_code=503, headers={"Retry-After": "5"},
                            content={"detail": f"the store (database) is unavailable, nothing was changed: {exc}"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _invalid_request(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # "PUT /api/cars/CP1:1/needs/" matches only the GET route of the car "CP1:1/needs/" (session
        # ids may hold "/"), which made it 405: a trailing slash is 404 on every route alike.
        if exc.status_code == 405 and request.url.path.endswith("/"):
            exc = StarletteHTTPException(404, "Not Found")
        return await http_exception_handler(request, exc)

    async def unique_keys(request: Request) -> None:
        """422 naming a key the JSON body gives twice (after the token check: a stranger gets 401)."""
        key = duplicate_key(await request.body())
        if key is not None:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", key), "input": None,
                                           "msg": f"key {key!r} is given more than once; give each field once"}])

    read = [Depends(reader)]
    write = [Depends(writer), Depends(unique_keys)]

    @app.get("/openapi.json", dependencies=read, include_in_schema=False)
    def openapi() -> dict:
        """The OpenAPI description (readable like every other read)."""
        return app.openapi()

    # ---- reads ------------------------------------------------------------------------------
    started = ctl.clock()  # before the first step, health counts the step's age from here

    @app.get("/api/health", dependencies=read, tags=["read"])
    def health(response: Response) -> dict:
        """Whether the block is being controlled: 200 ``ok`` (or ``starting`` before the first
        step), 503 ``degraded`` when the latest control step failed, the last completed step is
        older than ``max_step_age_s`` (the loop stopped) or the store (database) is unavailable;
        ``problems`` says why."""
        now = ctl.clock()
        last = ctl.history[-1] if ctl.history else None
        limit_s = max_step_age_s(ctl)
        age_s = (now - (last.time if last is not None else started)).total_seconds()
        problems = []
        if age_s > limit_s:
            what = "the last control step" if last is not None else "the start, and no control step yet"
            problems.append(f"{age_s:.0f} s since {what} (more than {limit_s:.0f} s): control steps fail or "
                            "the loop has stopped; chargers keep their last limits until they expire")
        failed = int(getattr(ctl, "failed_steps", 0))
        if failed:  # at the first failure, not only once the last good step is old
            when, why = ctl.last_failure
            problems.append(f"the last {failed} control step(s) failed (latest at {when.isoformat()}: {why}); "
                            "chargers keep their last limits until they expire")
        down = getattr(ctl.store, "unavailable", None)
        if down:  # every charger message that must be stored is refused until it is back
            since, why = down
            problems.append(f"the store (database) is unavailable since {since.isoformat()}: {why}; charger "
                            "messages that must be stored are answered with an error (the chargers retry them); "
                            "control steps go on")
        if problems:
            response.status_code = 503  # what an uptime check or a load balancer acts on
        return {"status": "degraded" if problems else ("ok" if last is not None else "starting"),
                "time": now.isoformat(), "site": ctl.site.name,
                "last_step": None if last is None else last.time.isoformat(),
                "last_step_age_s": None if last is None else round(age_s, 3),
                "max_step_age_s": round(limit_s, 3), "problems": problems}

    @app.get("/api/site", response_model=SiteInfo, dependencies=read, tags=["read"])
    def site() -> SiteInfo:
        """The fuse tree with ratings [A per phase], the charging points and the section 14a minimum."""
        return api.site_info

    @app.get("/api/state", response_model=BlockState, dependencies=read, tags=["read"])
    def state(plan_hours: float = Query(4.0, gt=0, le=48)) -> Response:
        """Everything now: fuse phases (measured and planned against the limit), base load, charging
        points, cars (needs, plan, binding limit), last step, alarms, operator inputs."""
        return Response(api.state_json(plan_hours), media_type="application/json")

    @app.get("/api/charge-points", response_model=list[ChargePointState], dependencies=read, tags=["read"])
    def charge_points() -> list[ChargePointState]:
        """Every charging point: status, connection, profile in force, accepted limit, meter values."""
        return api.state().charge_points

    @app.get("/api/charge-points/{cp_id}", response_model=ChargePointState, dependencies=read, tags=["read"])
    def charge_point(cp_id: str) -> ChargePointState:
        """One charging point."""
        for c in api.state().charge_points:
            if c.id == cp_id:
                return c
        raise HTTPException(404, f"unknown charging point {cp_id!r}")

    @app.get("/api/cars", response_model=list[CarState], dependencies=read, tags=["read"])
    def cars(plan_hours: float = Query(4.0, gt=0, le=48)) -> list[CarState]:
        """Every plugged-in car: needs, plan, and which limit binds it by how much."""
        return api.state(plan_hours).cars

    # Session ids are ``<charge point>:<transaction id>``, and an OCPP 2.0.1 transactionId is any
    # string up to 36 characters, "/" included ("fleet/42"): ``:path`` lets the id span
    # segments (sent raw or as %2F, which the server decodes before routing). The routes that end
    # in "/needs" match greedily, so "CP2:fleet/42/needs" is the needs of "CP2:fleet/42".
    @app.get("/api/cars/{session_id:path}", response_model=CarState, dependencies=read, tags=["read"])
    def car(session_id: str, plan_hours: float = Query(24.0, gt=0, le=48)) -> CarState:
        """One car (session id ``<charge point>:<transaction>``; it may contain "/")."""
        for c in api.state(plan_hours).cars:
            if c.session_id == session_id:
                return c
        raise HTTPException(404, f"no running session {session_id!r}")

    @app.get("/api/steps", response_model=list[StepInfo], dependencies=read, tags=["read"])
    def steps(limit: int = Query(50, ge=1, le=500)) -> list[StepInfo]:
        """The last control steps, newest last: policy, status, solve time, fallback, held back."""
        return [step_view(r) for r in ctl.history[-limit:]]

    @app.get("/api/alarms", dependencies=read, tags=["read"])
    def alarms() -> dict:
        """Overloads going on now and the recent alarms (overloads, cars not following)."""
        st = api.state()
        return {"active": st.alarms_active, "recent": st.alarms_recent}

    @app.get("/api/history", response_model=History, dependencies=read, tags=["read"])
    async def history(hours: float = Query(24.0, gt=0, le=24 * 14), bucket_s: float = Query(300.0, ge=10, le=86400),
                      charge_points: bool = False) -> History:
        """Measured charging current per fuse phase (and power per charging point) from the store."""
        if ctl.store is None or not callable(getattr(ctl.store, "recent_meter_values", None)):
            raise HTTPException(503, "no store with history attached to this controller")
        until = ctl.clock()
        since = until - pd.Timedelta(hours=hours)
        return await asyncio.to_thread(history_view, ctl.store, ctl.site, since=since, until=until,
                                       bucket_s=bucket_s, charge_points=charge_points)

    @app.get("/api/operator", response_model=OperatorInfo, dependencies=read, tags=["read"])
    def operator() -> OperatorInfo:
        """Caps, dimmings, residents' needs and charging points out of service."""
        return operator_view(ctl.operator, ctl.clock())

    @app.get("/api/dimming/minimum", response_model=MinimumPower, dependencies=read, tags=["read"])
    def minimum(devices: int | None = Query(None, ge=1, le=100_000)) -> MinimumPower:
        """The section 14a minimum power for ``devices`` (default: the site's controllable devices)."""
        n = devices or ctl.operator.devices
        return MinimumPower(devices=n, simultaneity_factor=simultaneity_factor(n),
                            guaranteed_power_kw=round(guaranteed_power_kw(n), 6), formula=FORMULA, source=SOURCE)

    # ---- writes -----------------------------------------------------------------------------
    @app.post("/api/caps", response_model=CapInfo, status_code=201, dependencies=write, tags=["write"])
    def add_cap(body: CapRequest) -> CapInfo:
        """Cap a fuse (null: the grid connection) [A per phase] for a time window; in the next TxProfiles."""
        c = ctl.operator.add_cap(body.fuse_id, body.max_current_a, start=body.start, end=body.end,
                                 duration_s=body.duration_s, source=body.source, reason=body.reason)
        api.changed()
        return next(x for x in operator_view(ctl.operator, ctl.clock()).caps if x.cap_id == c.cap_id)

    @app.delete("/api/caps/{cap_id}", status_code=204, dependencies=write, tags=["write"])
    def remove_cap(cap_id: str) -> Response:
        """End a cap now."""
        if not ctl.operator.remove_cap(cap_id):
            raise HTTPException(404, f"no cap {cap_id!r}")
        api.changed()
        return Response(status_code=204)

    @app.post("/api/dimming", response_model=DimmingInfo, status_code=201, dependencies=write, tags=["write"])
    def dim(body: DimmingRequest) -> DimmingInfo:
        """Section 14a EnWG: cap the charging power at max(power_kw, P_min,14a) for a time window."""
        d = ctl.operator.set_dimming(body.power_kw, start=body.start, end=body.end, duration_s=body.duration_s,
                                     devices=body.devices, reason=body.reason)
        api.changed()
        return next(x for x in operator_view(ctl.operator, ctl.clock()).dimmings if x.dimming_id == d.dimming_id)

    @app.delete("/api/dimming/{dimming_id}", status_code=204, dependencies=write, tags=["write"])
    def undim(dimming_id: str) -> Response:
        """End a dimming now."""
        if not ctl.operator.remove_dimming(dimming_id):
            raise HTTPException(404, f"no dimming {dimming_id!r}")
        api.changed()
        return Response(status_code=204)

    def _needs(session_id: str, body: NeedsRequest) -> NeedsInfo:
        tx = next((t for t in ctl.state.running() if t.session_id == session_id), None)
        if tx is None:
            raise HTTPException(404, f"no running session {session_id!r}")
        o = ctl.operator.set_needs(session_id, tx.cp_id, departure=body.departure, energy_kwh=body.energy_kwh)
        api.changed()
        return NeedsInfo(o.session_id, o.charge_point_id, o.departure, o.energy_kwh, o.entered_at)

    def _session_at(cp_id: str, connector_id: int | None) -> str:
        """The one running session at ``cp_id`` (on ``connector_id``); 404 or 409 otherwise."""
        if cp_id not in ctl.site.charge_point_ids:
            raise HTTPException(404, f"unknown charging point {cp_id!r}")
        txs = [t for t in ctl.state.running(cp_id) if connector_id in (None, t.connector_id)]
        if len(txs) != 1:
            raise HTTPException(409, f"{len(txs)} running sessions at {cp_id!r}"
                                     + ("" if txs else ": no car is plugged in") + "; give connector_id" * (len(txs) > 1))
        return txs[0].session_id

    def _clear_needs(session_id: str) -> Response:
        if not ctl.operator.clear_needs(session_id):
            raise HTTPException(404, f"no needs entered for {session_id!r}")
        api.changed()
        return Response(status_code=204)

    @app.put("/api/cars/{session_id:path}/needs", response_model=NeedsInfo, dependencies=write, tags=["write"])
    def set_needs(session_id: str, body: NeedsRequest) -> NeedsInfo:
        """A resident's needs for a running session (replace estimates until the session ends)."""
        return _needs(session_id, body)

    @app.put("/api/charge-points/{cp_id}/needs", response_model=NeedsInfo, dependencies=write, tags=["write"])
    def set_needs_at(cp_id: str, body: NeedsRequest, connector_id: int | None = Query(None, ge=1)) -> NeedsInfo:
        """The same for the car plugged in at a charging point (what a resident knows)."""
        return _needs(_session_at(cp_id, connector_id), body)

    @app.delete("/api/cars/{session_id:path}/needs", status_code=204, dependencies=write, tags=["write"])
    def clear_needs(session_id: str) -> Response:
        """Forget a resident's needs."""
        return _clear_needs(session_id)

    @app.delete("/api/charge-points/{cp_id}/needs", status_code=204, dependencies=write, tags=["write"])
    def clear_needs_at(cp_id: str, connector_id: int | None = Query(None, ge=1)) -> Response:
        """The same for the car plugged in at a charging point."""
        return _clear_needs(_session_at(cp_id, connector_id))

    @app.put("/api/charge-points/{cp_id}/service", response_model=OperatorInfo, dependencies=write, tags=["write"])
    def service(cp_id: str, body: ServiceRequest) -> OperatorInfo:
        """Take a charging point out of service (its cars get 0 A) or put it back."""
        if cp_id not in ctl.site.charge_point_ids:
            raise HTTPException(404, f"unknown charging point {cp_id!r}")
        ctl.operator.set_in_service(cp_id, body.in_service, reason=body.reason)
        api.changed()
        return operator_view(ctl.operator, ctl.clock())

    # ---- stream and metrics ----------------------------------------------------------------------
    @app.get("/api/stream", response_class=EventSourceResponse, dependencies=read, tags=["read"])
    async def stream(request: Request) -> AsyncIterable[ServerSentEvent]:
        """Server-Sent Events of every change (``ocpp``, ``meter``, ``step``, ``operator``, ``dropped``)."""
        client = api.hub.connect()
        try:
            yield ServerSentEvent(event="hello", data={"time": ctl.clock().isoformat(), "site": ctl.site.name},
                                  retry=2000)
            while True:
                try:
                    msg = await asyncio.wait_for(client.queue.get(), api.keepalive_s)
                except asyncio.TimeoutError:
                    yield ServerSentEvent(comment="keep-alive")
                    continue
                if msg is None:
                    return
                if client.dropped:
                    yield ServerSentEvent(event="dropped", data={"dropped": client.dropped})
                    client.dropped = 0
                yield ServerSentEvent(event=msg[0], raw_data=msg[1])
        finally:
            api.hub.disconnect(client)

    @app.get("/metrics", dependencies=read, tags=["read"], response_class=Response)
    def metrics() -> Response:
        """Prometheus text format: step time, fallbacks, fuse margins, connections, stale meters."""
        return Response(generate_latest(api.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    mount_page(app)  # the operator page at / (docs/operator-page.md)
    return app
