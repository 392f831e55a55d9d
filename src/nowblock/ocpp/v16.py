"""OCPP 1.6J handlers: translate each message to a state update, answer, defer any CALL."""

from __future__ import annotations

import logging
from decimal import Decimal

from ocpp.routing import on
from ocpp.v16 import ChargePoint as _ChargePoint16
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from nowblock.ocpp import edge
from nowblock.ocpp.connection import CsmsConnection, profile_status
from nowblock.ocpp.meter import parse_meter_values
from nowblock.ocpp.profiles import iso, parse_time

log = logging.getLogger(__name__)
_ACCEPTED = {"status": "Accepted"}


class ChargePoint16(CsmsConnection, _ChargePoint16):
    """The central system's end of one OCPP 1.6J connection."""

    version = "1.6"

    # ---- incoming ---------------------------------------------------------------------------
    @on(Action.boot_notification)
    def on_boot_notification(self, charge_point_vendor, charge_point_model, **kwargs):
        self.state.on_boot(self.id, vendor=charge_point_vendor, model=charge_point_model,
                           firmware=kwargs.get("firmware_version"))
        self.defer(lambda: self.central.after_boot(self.id))
        return call_result.BootNotification(current_time=iso(self.state.clock()), interval=self.central.heartbeat_s,
                                            status="Accepted")

    @on(Action.heartbeat)
    def on_heartbeat(self, **kwargs):
        self.state.touch(self.id)
        return call_result.Heartbeat(current_time=iso(self.state.clock()))

    @on(Action.status_notification)
    def on_status_notification(self, connector_id, error_code, status, timestamp=None, **kwargs):
        edge.check_time(timestamp, "timestamp")  # optional; when given, a date-time (else FormationViolation)
        edge.check_connector(connector_id)
        self.state.on_status(self.id, connector_id, status, error_code)
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag, **kwargs):
        self.state.touch(self.id)
        return call_result.Authorize(id_tag_info={"status": self.central.authorize(self.id, id_tag)})

    @on(Action.start_transaction)
    def on_start_transaction(self, connector_id, id_tag, meter_start, timestamp, **kwargs):
        edge.check_connector(connector_id, allow_zero=False)
        now = self.state.clock()
        # In its clock, judged around its now; its record is in ours (Transaction).
        off = edge.station_offset_s(self.state.stations[self.id].clock)
        start = edge.in_our_clock(edge.event_time(timestamp, now, "timestamp", self.id, off), now, off)
        meter_start_wh = edge.check_energy_wh(meter_start, "meterStart")
        tid = self.state.new_transaction_id()
        t = self.state.on_start(self.id, connector_id, tid, start=start,
                                meter_start_wh=meter_start_wh, id_tag=id_tag, publish=False)
        self.defer(lambda: self.state.publish(t.start_event))
        return call_result.StartTransaction(transaction_id=tid,
                                            id_tag_info={"status": self.central.authorize(self.id, id_tag)})

    @on(Action.stop_transaction)
    def on_stop_transaction(self, meter_stop, timestamp, transaction_id, reason=None, transaction_data=None,
                            id_tag=None, **kwargs):
        now = self.state.clock()
        off = edge.station_offset_s(self.state.stations[self.id].clock)
        stop = edge.in_our_clock(edge.event_time(timestamp, now, "timestamp", self.id, off), now, off)
        meter_stop_wh = edge.check_energy_wh(meter_stop, "meterStop")
        t = self.state.transaction(self.id, transaction_id)
        if t is None:
            log.warning("%s: StopTransaction for unknown transaction %s", self.id, transaction_id)
        elif transaction_data:
            reading, ts = parse_meter_values(transaction_data, now, self.id, off)
            self.state.on_meter(self.id, t.connector_id, transaction_id, reading, edge.meter_time(ts, now, self.id, off),
                                stamp=edge.station_stamp(ts, now, off))
        self.state.on_stop(self.id, transaction_id, stop=stop, meter_stop_wh=meter_stop_wh, reason=reason or "Local")
        if t is not None:
            self.defer(lambda: self.central.after_stop(self.id, t.connector_id))
        info = {"status": self.central.authorize(self.id, id_tag)} if id_tag else None
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.meter_values)
    def on_meter_values(self, connector_id, meter_value, transaction_id=None, **kwargs):
        edge.check_connector(connector_id)
        now = self.state.clock()
        # Its stamps are in its clock: judged there, dated in ours by its known offset.
        off = edge.station_offset_s(self.state.stations[self.id].clock)
        reading, ts = parse_meter_values(meter_value, now, self.id, off)
        # Replayed after a reboot, one queued before it names a transaction the reboot ended:
        # it revived its orphan (two or three TxProfiles Rejected, /tmp/s37/h1/repro3_queued_revive.py).
        self.state.on_meter(self.id, connector_id, transaction_id, reading, edge.meter_time(ts, now, self.id, off),
                            queued=self.state.before_boot(self.id, ts), stamp=edge.station_stamp(ts, now, off))
        return call_result.MeterValues()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id, **kwargs):
        log.info("%s: DataTransfer from vendor %s ignored", self.id, vendor_id)
        self.state.touch(self.id)
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status_notification(self, status, **kwargs):
        log.info("%s: diagnostics %s", self.id, status)
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(self, status, **kwargs):
        log.info("%s: firmware %s", self.id, status)
        return call_result.FirmwareStatusNotification()

    # ---- outgoing ---------------------------------------------------------------------------
    async def set_profile(self, connector_id: int, profile: dict) -> str:
        """SetChargingProfile; returns the status (Accepted, Rejected, NotSupported)."""
        # Built by profiles.build_profile and tested against the official schema: not checked again here.
        res = await self._call(call.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=profile),
                               validate=False)
        return profile_status(res)

    async def clear_profiles(self, *, profile_id=None, connector_id=None, purpose=None, stack_level=None) -> str:
        """ClearChargingProfile by id or by criteria (none: all); returns Accepted or Unknown."""
        res = await self._call(call.ClearChargingProfile(id=profile_id, connector_id=connector_id,
                                                         charging_profile_purpose=purpose, stack_level=stack_level))
        return str(res.status)

    async def composite_schedule(self, connector_id: int, duration_s: int, unit: str | None = "A") -> dict:
        """GetCompositeSchedule, normalized: status, start (datetime), unit, periods [(start_s, limit)]."""
        res = await self._call(call.GetCompositeSchedule(connector_id=connector_id, duration=int(duration_s),
                                                         charging_rate_unit=unit))
        sched = res.charging_schedule or {}
        periods = [(float(p["start_period"]), _num(p["limit"])) for p in sched.get("charging_schedule_period", [])]
        return {"status": str(res.status), "start": parse_time(res.schedule_start or sched.get("start_schedule")),
                "unit": sched.get("charging_rate_unit", unit), "periods": periods}

    async def ensure_measurand(self, measurand: str = "Current.Import") -> str:
        """Add ``measurand`` to MeterValuesSampledData, keeping what is sampled already.

        Returns "present" when it was sampled already, else the ChangeConfiguration status
        (Accepted, Rejected, RebootRequired, NotSupported). OCPP 1.6's default samples the energy
        register only: without a current per phase the loop cannot see a car drawing more than
        its limit."""
        res = await self._call(call.GetConfiguration(key=["MeterValuesSampledData"]))
        now = next((str(kv.get("value") or "") for kv in res.configuration_key or []
                    if kv.get("key") == "MeterValuesSampledData"), "")
        items = [x.strip() for x in now.split(",") if x.strip()]
        if measurand in items:
            return "present"
        value = ",".join(items + [measurand]) if items else f"Energy.Active.Import.Register,{measurand}"
        res = await self._call(call.ChangeConfiguration(key="MeterValuesSampledData", value=value))
        return str(res.status)

    async def ask_clock(self) -> None:
        """Ask for a timestamped message: TriggerMessage MeterValues of connector 1 (OCPP 1.6
        has no way to read a station's clock; a MeterValue's timestamp is required, the other
        messages it may trigger carry none or an optional one). The station sends it after its
        answer, as a CALL whose timestamp the clock estimate takes (``ClockOffset``); returns
        None (the time is not in the answer). Logged when not Accepted."""
        res = await self._call(call.TriggerMessage(requested_message="MeterValues", connector_id=1))
        if str(res.status) != "Accepted":
            log.info("%s: TriggerMessage MeterValues answered %s: its clock stays unknown until it stamps a "
                     "message", self.id, res.status)
        return None

    async def probe_rate_unit(self) -> str:
        """'A' or 'W' from ChargingScheduleAllowedChargingRateUnit (A when unknown)."""
        res = await self._call(call.GetConfiguration(key=["ChargingScheduleAllowedChargingRateUnit"]))
        for kv in res.configuration_key or []:
            value = str(kv.get("value", ""))
            if kv.get("key") == "ChargingScheduleAllowedChargingRateUnit" and value:
                return "A" if "Current" in value or "A" in value.split(",") else "W"
        return "A"


def _num(x) -> float:
    # 1.6 schedules are parsed with Decimal (the schema's 0.1 resolution); the optimizer wants floats.
    return float(x) if isinstance(x, (Decimal, int, float, str)) else float("nan")
