"""The simulated stations answer the central system's configuration requests as a station would.

The central system asks every station to sample Current.Import (1.6 ChangeConfiguration of
MeterValuesSampledData, 2.0.1 SetVariables of SampledDataCtrlr.TxUpdatedMeasurands); the
simulator had no handler for either and the ``ocpp`` library logged a traceback per station.
"""

import logging

import pytest

from nowblock.ocpp import profiles as pr
from nowblock.sim import chargers as chargers_mod
from nowblock.sim.chargers import Car
from nowblock.testing import central_system, chargers, eventually, make_test_site

VERSIONS = ["1.6", "2.0.1"]
ENERGY = "Energy.Active.Import.Register"


def ocpp_errors(caplog) -> list[str]:
    return [r.getMessage()[:200] for r in caplog.records if r.name.startswith("ocpp") and r.levelno >= logging.ERROR]


async def last_meter(events) -> dict:
    """The reading of the last meter event queued on ``events`` (read until none came for 0.3 s)."""
    last = None
    while True:
        try:
            ev = await events.get(timeout=0.3)
        except TimeoutError:
            assert last is not None, "no meter event"
            return last
        if ev.kind == "meter":
            last = ev.data


def config_calls(sim) -> list[str]:
    return [a for a, _ in sim.received if a in ("ChangeConfiguration", "SetVariables")]


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_station_reporting_current_import_is_not_asked_and_logs_no_error(version, caplog):
    caplog.set_level(logging.INFO)
    async with central_system(make_test_site(1, grid_a=63)) as cs:
        async with chargers(cs, dict(cp_id="CP1", version=version)) as (sim,):
            # the central system asks for the measurand right after the fail-safe
            await eventually(lambda: any(p.purpose == pr.TX_DEFAULT for p in sim.profiles))
            await sim.plug_in(Car())
            await sim.send_meter_now()
    assert ocpp_errors(caplog) == []
    assert config_calls(sim) == []  # its configuration already says it samples Current.Import
    assert not any("does not sample Current.Import" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_station_sampling_energy_only_adopts_current_import_when_asked(version, caplog):
    caplog.set_level(logging.INFO)
    site = make_test_site(1, grid_a=63)
    # Without the central system's request the station reports its energy register and nothing else.
    async with central_system(site, ask_currents=False) as cs:
        events = cs.events()
        async with chargers(cs, dict(cp_id="CP1", version=version, measurands=[ENERGY])) as (sim,):
            await sim.plug_in(Car())
            await sim.send_meter_now()
            reading = await last_meter(events)
            assert "energy_wh" in reading and "current_l1_a" not in reading and config_calls(sim) == []
    # With it, the station accepts the measurand and its next meter values carry the current per phase.
    async with central_system(site) as cs:
        async with chargers(cs, dict(cp_id="CP1", version=version, measurands=[ENERGY])) as (sim,):
            await eventually(lambda: "Current.Import" in sim.measurands)
            assert sim.measurands == [ENERGY, "Current.Import"]
            assert config_calls(sim) == ["ChangeConfiguration" if version == "1.6" else "SetVariables"]
            events = cs.events()
            await sim.plug_in(Car(max_current_a=16))
            await sim.send_meter_now()
            reading = await last_meter(events)
            assert "power_w" not in reading  # only what was asked for
            assert [reading[f"current_l{i}_a"] for i in (1, 2, 3)] == pytest.approx([sim.draw_a()] * 3, abs=0.01)
    assert ocpp_errors(caplog) == []
    assert not any("does not sample Current.Import" in r.getMessage() for r in caplog.records)


async def test_change_configuration_answers_by_the_1_6_spec():
    from ocpp.v16 import call

    async with central_system(make_test_site(1), ask_currents=False) as cs:
        async with chargers(cs, dict(cp_id="CP1", version="1.6")) as (sim,):
            conn = cs.connection("CP1")

            async def change(key, value):
                return str((await conn._call(call.ChangeConfiguration(key=key, value=value))).status)

            assert await change("NoSuchKey", "1") == "NotSupported"
            assert await change("ChargingScheduleAllowedChargingRateUnit", "Power") == "Rejected"  # read-only
            assert await change("MeterValuesSampledData", f"{ENERGY},Voltage") == "Rejected"  # not modelled
            assert await change("MeterValuesSampledData", "") == "Rejected"
            assert sim.measurands == list(chargers_mod.MEASURANDS)  # unchanged
            assert await change("MeterValuesSampledData", f"{ENERGY}, Current.Import") == "Accepted"
            assert sim.measurands == [ENERGY, "Current.Import"]
            res = await conn._call(call.GetConfiguration(key=["MeterValuesSampledData", "NoSuchKey"]))
            assert res.configuration_key == [
                {"key": "MeterValuesSampledData", "readonly": False, "value": f"{ENERGY},Current.Import"}]
            assert res.unknown_key == ["NoSuchKey"]


async def test_set_variables_answers_by_the_2_0_1_spec():
    from ocpp.v201 import call

    async with central_system(make_test_site(1), ask_currents=False) as cs:
        async with chargers(cs, dict(cp_id="CP1", version="2.0.1")) as (sim,):
            conn = cs.connection("CP1")

            def item(comp, var, value, **kw):
                return {"component": {"name": comp}, "variable": {"name": var}, "attribute_value": value, **kw}

            res = await conn._call(call.SetVariables(set_variable_data=[
                item("NoSuchCtrlr", "X", "1"),
                item("SampledDataCtrlr", "NoSuchVariable", "1"),
                item("SmartChargingCtrlr", "RateUnit", "W"),  # read-only
                item("SampledDataCtrlr", "TxUpdatedMeasurands", "Voltage"),  # not modelled
                item("SampledDataCtrlr", "TxUpdatedMeasurands", ENERGY, attribute_type="Target"),
            ]))
            assert [r["attribute_status"] for r in res.set_variable_result] == [
                "UnknownComponent", "UnknownVariable", "Rejected", "Rejected", "NotSupportedAttributeType"]
            assert sim.measurands == list(chargers_mod.MEASURANDS)  # unchanged
            res = await conn._call(call.SetVariables(set_variable_data=[
                item("SampledDataCtrlr", "TxUpdatedMeasurands", f"{ENERGY},Current.Import")]))
            assert res.set_variable_result[0]["attribute_status"] == "Accepted"
            assert sim.measurands == [ENERGY, "Current.Import"]
            res = await conn._call(call.GetVariables(get_variable_data=[
                {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedMeasurands"}}]))
            assert res.get_variable_result[0]["attribute_value"] == f"{ENERGY},Current.Import"
