"""What the HTTP API does with awkward input and in bad times: non-finite numbers in a JSON body,
booleans, strings and Unix seconds where numbers and times belong, session ids with a "/", and
a health check while every control step fails. Runs against a live block like test_api.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import httpx
import pandas as pd
import pytest
from test_api import AUTH, _operator_rows, _site, block

from nowblock.api import BlockApi
from nowblock.control import attach
from nowblock.ocpp.server import CentralSystem
from nowblock.sim.chargers import Car
from nowblock.testing import eventually

pytestmark = pytest.mark.slow

LATER = "2030-01-01T10:00:00+00:00"


def _strict_json(text: str):
    """``text`` decoded as standard JSON (NaN and Infinity are not JSON: refused)."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


# Python's json.dumps writes these (allow_nan=True is its default); validation refuses them.
NON_FINITE = [
    ("post", "/api/caps", '{"max_current_a": NaN, "duration_s": 60}', "max_current_a", "NaN"),
    ("post", "/api/caps", '{"max_current_a": Infinity, "duration_s": 60}', "max_current_a", "Infinity"),
    ("post", "/api/caps", '{"max_current_a": [10, -Infinity, 10], "duration_s": 60}', "max_current_a", None),
    ("post", "/api/caps", '{"max_current_a": 10, "duration_s": NaN}', "duration_s", "NaN"),
    ("post", "/api/caps", '{"max_current_a": 10, "duration_s": 60, "extra": Infinity}', "extra", "Infinity"),
    ("post", "/api/dimming", '{"power_kw": -Infinity, "duration_s": 60}', "power_kw", "-Infinity"),
    ("post", "/api/dimming", '{"power_kw": 5, "devices": NaN, "duration_s": 60}', "devices", "NaN"),
    ("put", "/api/cars/CP1:1/needs", '{"departure": "%s", "energy_kwh": NaN}' % LATER, "energy_kwh", "NaN"),
    ("put", "/api/charge-points/CP1/needs", '{"departure": "%s", "energy_kwh": Infinity}' % LATER, "energy_kwh",
     "Infinity"),
]

# Pydantic's lax mode turned these into numbers and times: true a 1 A cap, false a 0 A cap.
LAX = [
    ("post", "/api/caps", {"max_current_a": True, "duration_s": 60}, "max_current_a"),
    ("post", "/api/caps", {"max_current_a": False, "duration_s": 60}, "max_current_a"),
    ("post", "/api/caps", {"max_current_a": "20", "duration_s": 60}, "max_current_a"),
    ("post", "/api/caps", {"max_current_a": [20, True, 20], "duration_s": 60}, "max_current_a"),
    ("post", "/api/caps", {"max_current_a": 20, "duration_s": True}, "duration_s"),
    ("post", "/api/caps", {"max_current_a": 20, "duration_s": "60"}, "duration_s"),
    ("post", "/api/caps", {"max_current_a": 20, "end": 1893456000}, "end"),
    ("post", "/api/caps", {"max_current_a": 20, "end": "1893456000"}, "end"),
    ("post", "/api/caps", {"max_current_a": 20, "end": 1893456000.5}, "end"),
    ("post", "/api/caps", {"max_current_a": 20, "start": 1893456000, "duration_s": 60}, "start"),
    ("post", "/api/caps", {"max_current_a": 20, "start": True, "duration_s": 60}, "start"),
    ("post", "/api/dimming", {"power_kw": True, "duration_s": 60}, "power_kw"),
    ("post", "/api/dimming", {"power_kw": "5", "duration_s": 60}, "power_kw"),
    ("post", "/api/dimming", {"power_kw": 5, "devices": True, "duration_s": 60}, "devices"),
    ("post", "/api/dimming", {"power_kw": 5, "devices": "2", "duration_s": 60}, "devices"),
    ("post", "/api/dimming", {"power_kw": 5, "end": 1893456000}, "end"),
    ("put", "/api/cars/CP1:1/needs", {"departure": LATER, "energy_kwh": True}, "energy_kwh"),
    ("put", "/api/cars/CP1:1/needs", {"departure": LATER, "energy_kwh": "5"}, "energy_kwh"),
    ("put", "/api/cars/CP1:1/needs", {"departure": 1893456000, "energy_kwh": 5}, "departure"),
    ("put", "/api/charge-points/CP1/service", {"in_service": 0}, "in_service"),
    ("put", "/api/charge-points/CP1/service", {"in_service": "false"}, "in_service"),
]


# Python's json module keeps the last of two equal keys: these set 40 A, 7 kW ... without a word.
DUPLICATE_KEYS = [
    ("post", "/api/caps", '{"max_current_a": 10, "max_current_a": 40, "duration_s": 60}', "max_current_a"),
    ("post", "/api/caps", '{"max_current_a": 10, "duration_s": 60, "duration_s": 6000}', "duration_s"),
    ("post", "/api/dimming", '{"power_kw": 5, "power_kw": 7, "duration_s": 60}', "power_kw"),
    ("put", "/api/cars/CP1:1/needs", '{"departure": "%s", "energy_kwh": 5, "energy_kwh": 50}' % LATER, "energy_kwh"),
    ("put", "/api/charge-points/CP1/needs", '{"departure": "%s", "departure": "%s", "energy_kwh": 5}' % (LATER, LATER),
     "departure"),
    ("put", "/api/charge-points/CP1/service", '{"in_service": true, "in_service": false}', "in_service"),
]


async def _with_a_car(b) -> dict:
    await b.sims[0].plug_in(Car())
    await eventually(lambda: b.ctl.state.running(), 5)
    return (await b.http.get("/api/operator")).json()


async def test_non_finite_numbers_are_422_naming_the_field(tmp_path):
    async with block(tmp_path) as b:
        before = await _with_a_car(b)
        for method, path, raw, field, shown in NON_FINITE:
            r = await b.http.request(method, path, content=raw, headers={**AUTH, "Content-Type": "application/json"})
            assert r.status_code == 422, (path, raw, r.status_code, r.text)
            detail = _strict_json(r.text)["detail"]  # standard JSON, whatever came in
            named = [d for d in detail if len(d["loc"]) > 1 and d["loc"][1] == field]
            assert named, (raw, detail)
            if shown is not None:  # the value sent, spelt as it was sent
                assert any(d.get("input") == shown for d in named), (raw, named)
        assert (await b.http.get("/api/operator")).json() == before
        assert _operator_rows(b.db) == []


async def test_duplicate_keys_are_422_naming_the_key(tmp_path):
    async with block(tmp_path) as b:
        before = await _with_a_car(b)
        for method, path, raw, key in DUPLICATE_KEYS:
            json_headers = {"Content-Type": "application/json"}
            r = await b.http.request(method, path, content=raw, headers={**AUTH, **json_headers})
            assert r.status_code == 422, (path, raw, r.status_code, r.text)
            detail = r.json()["detail"]
            assert [d["loc"] for d in detail] == [["body", key]] and key in detail[0]["msg"], (raw, detail)
            # Without the token it is still 401 first: the body of a stranger is not judged.
            assert (await b.http.request(method, path, content=raw, headers=json_headers)).status_code == 401
        assert (await b.http.get("/api/operator")).json() == before
        assert _operator_rows(b.db) == []
        # Each key once: accepted as before.
        r = await b.http.post("/api/caps", content='{"max_current_a": 20, "duration_s": 60}',
                              headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 201, r.text


async def test_trailing_slashes_are_404_never_a_redirect(tmp_path):
    """``DELETE /api/caps/`` was a 307 to ``/api/caps``: a client following it repeats the DELETE
    elsewhere. Every route's trailing-slash form, with every method it has, is 404."""
    from starlette.routing import Route

    async with block(tmp_path) as b:
        await _with_a_car(b)
        r = await b.http.post("/api/caps", json={"max_current_a": 20, "duration_s": 600}, headers=AUTH)
        cap_id = r.json()["cap_id"]
        ids = {"{session_id:path}": "CP1:1", "{cp_id}": "CP1", "{cap_id}": cap_id, "{dimming_id}": "x"}
        tried = []
        for route in b.api.app.routes:
            if not isinstance(route, Route) or route.path == "/":
                continue
            path = route.path
            for name, value in ids.items():
                path = path.replace(name, value)
            for method in sorted(route.methods - {"HEAD"}):
                body = {} if method in ("POST", "PUT") else None
                r = await b.http.request(method, path + "/", json=body, headers=AUTH)
                tried.append((method, path + "/", r.status_code))
        for method in ("DELETE", "GET", "POST"):
            r = await b.http.request(method, "/api/caps/", headers=AUTH)
            tried.append((method, "/api/caps/", r.status_code))
        assert {("DELETE", f"/api/caps/{cap_id}/"), ("PUT", "/api/cars/CP1:1/needs/")} <= {t[:2] for t in tried}
        assert [t for t in tried if t[2] != 404] == [], tried
        assert [c["cap_id"] for c in (await b.http.get("/api/operator")).json()["caps"]] == [cap_id]  # not deleted
        # The forms without the slash answer as before.
        assert (await b.http.delete(f"/api/caps/{cap_id}", headers=AUTH)).status_code == 204
        assert (await b.http.put("/api/cars/CP1:1", json={}, headers=AUTH)).status_code == 405
        assert (await b.http.delete("/api/caps/nope", headers=AUTH)).status_code == 404
        r = await b.http.delete("/api/caps/nope")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


async def test_booleans_strings_and_unix_seconds_are_refused(tmp_path):
    async with block(tmp_path) as b:
        before = await _with_a_car(b)
        for method, path, body, field in LAX:
            r = await b.http.request(method, path, json=body, headers=AUTH)
            assert r.status_code == 422, (path, body, r.status_code, r.text)
            assert field in [d["loc"][1] for d in r.json()["detail"] if len(d["loc"]) > 1], (body, r.json())
        assert (await b.http.get("/api/operator")).json() == before
        assert _operator_rows(b.db) == []

        # A JSON integer is still a number of amperes, kilowatts or seconds.
        r = await b.http.post("/api/caps", json={"fuse_id": "feeder", "max_current_a": 20, "duration_s": 60},
                              headers=AUTH)
        assert r.status_code == 201 and r.json()["max_current_a"] == [20.0] * 3, r.text
        r = await b.http.post("/api/caps", json={"max_current_a": [30, 30.5, 31], "end": LATER}, headers=AUTH)
        assert r.status_code == 201 and r.json()["max_current_a"] == [30.0, 30.5, 31.0], r.text
        r = await b.http.post("/api/dimming", json={"power_kw": 5, "devices": 2, "duration_s": 60}, headers=AUTH)
        assert r.status_code == 201 and r.json()["devices"] == 2, r.text
        r = await b.http.put("/api/charge-points/CP1/service", json={"in_service": True}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert [x["kind"] for x in _operator_rows(b.db)].count("cap") == 2


async def test_session_ids_with_a_slash(tmp_path):
    """An OCPP 2.0.1 transactionId may contain "/": its car is addressed raw or with %2F."""
    async with block(tmp_path, versions=["1.6", "2.0.1", "1.6"]) as b:
        b.sims[1]._tx_counter = iter(["fleet/42"])  # the simulator's ids are "<cp>-<counter>-<seconds>"
        await b.sims[1].plug_in(Car())
        await eventually(lambda: b.ctl.state.running("CP2"), 5)
        sid = b.ctl.state.running("CP2")[0].session_id
        assert sid.startswith("CP2:CP2-fleet/42-")
        await eventually(lambda: any(c.session_id == sid for c in b.api.state().cars), 5)
        encoded = sid.replace("/", "%2F")
        for s in (sid, encoded):
            r = await b.http.get(f"/api/cars/{s}")
            assert r.status_code == 200 and r.json()["session_id"] == sid, (s, r.text)
        assert (await b.http.get("/api/cars/CP2:fleet/43")).status_code == 404
        dep = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=3)).floor("s").isoformat()
        for s in (sid, encoded):
            r = await b.http.put(f"/api/cars/{s}/needs", json={"departure": dep, "energy_kwh": 7}, headers=AUTH)
            assert r.status_code == 200 and r.json()["session_id"] == sid, (s, r.text)
            assert (await b.http.delete(f"/api/cars/{s}/needs", headers=AUTH)).status_code == 204
            assert b.ctl.operator.needs == {}
        assert (await b.http.delete(f"/api/cars/{sid}/needs", headers=AUTH)).status_code == 404  # none left

        # By charging point: PUT and DELETE alike.
        r = await b.http.put("/api/charge-points/CP2/needs", json={"departure": dep, "energy_kwh": 7}, headers=AUTH)
        assert r.status_code == 200 and r.json()["session_id"] == sid, r.text
        assert set(b.ctl.operator.needs) == {sid}
        assert (await b.http.delete("/api/charge-points/CP2/needs", params={"connector_id": 1},
                                    headers=AUTH)).status_code == 204
        assert b.ctl.operator.needs == {}
        assert (await b.http.delete("/api/charge-points/CP2/needs", headers=AUTH)).status_code == 404
        assert (await b.http.delete("/api/charge-points/CP3/needs", headers=AUTH)).status_code == 409  # no car
        assert (await b.http.delete("/api/charge-points/CP9/needs", headers=AUTH)).status_code == 404
        assert (await b.http.delete("/api/charge-points/CP2/needs")).status_code == 401
        assert _operator_rows(b.db) == []
        spec = (await b.http.get("/openapi.json")).json()["paths"]
        assert {"put", "delete"} <= set(spec["/api/cars/{session_id}/needs"])
        assert {"put", "delete"} <= set(spec["/api/charge-points/{cp_id}/needs"])
        assert "/api/cars/{session_id}" in spec


async def test_health_is_degraded_while_every_step_fails(tmp_path, caplog):
    async with block(tmp_path) as b:
        await eventually(lambda: b.ctl.history, 5)
        r = await b.http.get("/api/health")
        assert r.status_code == 200 and r.json()["status"] == "ok", r.text

        def fail(now):
            raise RuntimeError("broken observation")

        b.ctl.source.observe = fail  # every step raises from now on (the loop logs it and goes on)
        try:
            for _ in range(80):  # degraded at the first failed step (the period is 1 s)
                r = await b.http.get("/api/health")
                if r.status_code != 200:
                    break
                assert r.json()["status"] == "ok"
                await asyncio.sleep(0.25)
            assert r.status_code == 503, ("health stayed ok while every step failed", r.text)
            h = r.json()
            assert h["status"] == "degraded" and any("broken observation" in p for p in h["problems"]), h
            assert b.ctl.failed_steps >= 1 and h["last_step"] is not None
            assert "control step failed" in caplog.text  # the loop went on, every step raised
            for _ in range(80):  # and the last good step ages past 3 periods and 2 dispatch waits
                h = (await b.http.get("/api/health")).json()
                if h["last_step_age_s"] > h["max_step_age_s"]:
                    break
                await asyncio.sleep(0.25)
            assert len(h["problems"]) == 2 and h["status"] == "degraded", h
        finally:
            del b.ctl.source.observe
        # Steps succeed again: healthy again.
        await eventually(lambda: b.ctl.history and (b.ctl.clock() - b.ctl.history[-1].time).total_seconds() < 1, 10)
        r = await b.http.get("/api/health")
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["problems"] == [], r.text
        assert r.json()["max_step_age_s"] == pytest.approx(3 * 1.0 + 2 * b.ctl.config.send_wait_s)


async def test_health_before_the_first_step(tmp_path):
    """A controller that never steps: ``starting`` at first, ``degraded`` once a step is overdue."""
    cs = CentralSystem(_site(), port=0)
    ctl = attach(cs, db=str(tmp_path / "block.sqlite"), policy="edf", period_s=0.2)
    ctl.config = dataclasses.replace(ctl.config, send_wait_s=0.0)  # overdue after 3 x 0.2 s
    api = BlockApi(ctl)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app, client=("127.0.0.1", 1)),
                                     base_url="http://test") as h:
            r = await h.get("/api/health")
            assert r.status_code == 200 and r.json()["status"] == "starting" and r.json()["last_step"] is None
            await asyncio.sleep(0.8)
            r = await h.get("/api/health")
            assert r.status_code == 503 and r.json()["status"] == "degraded", r.text
            assert "no control step yet" in r.json()["problems"][0]
    finally:
        await api.stop()
        await ctl.stop()



def test_times_go_out_in_utc_whatever_offset_a_station_sent():
    """Found by an outside test: ``/api/cars`` echoed the station's own offset (``+14:00``)
    where docs/api.md promises UTC."""
    from datetime import datetime, timedelta, timezone

    from nowblock.control.status import _t

    t = _t(datetime(2026, 12, 7, 23, 0, tzinfo=timezone(timedelta(hours=14))))
    assert t.utcoffset() == timedelta(0) and t == datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)
