"""OCPP 2.0.1 handlers: translate each message to a state update, answer, defer any CALL."""

from __future__ import annotations

import logging
from datetime import timedelta

from ocpp.routing import on
from ocpp.v201 import ChargePoint as _ChargePoint201
from ocpp.v201 import call, call_result
from ocpp.v201.enums import Action

from nowblock.ocpp import edge
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.connection import CsmsConnection, profile_status
from nowblock.ocpp.meter import parse_meter_values
from nowblock.ocpp.profiles import iso, parse_time

log = logging.getLogger(__name__)


class ChargePoint201(CsmsConnection, _ChargePoint201):
    """The central system's end of one OCPP 2.0.1 connection (EVSE ids play connector ids)."""

    version = "2.0.1"

    # ---- incoming ---------------------------------------------------------------------------
    @on(Action.boot_notification)
    def on_boot_notification(self, charging_station, reason, **kwargs):
        self.state.on_boot(self.id, vendor=charging_station.get("vendor_name"),
                           model=charging_station.get("model"),
                           firmware=charging_station.get("firmware_version"), reason=reason)
        self.defer(lambda: self.central.after_boot(self.id))
        return call_result.BootNotification(current_time=iso(self.state.clock()), interval=self.central.heartbeat_s,
                                            status="Accepted")

    @on(Action.heartbeat)
    def on_heartbeat(self, **kwargs):
        self.state.touch(self.id)
        return call_result.Heartbeat(current_time=iso(self.state.clock()))

    @on(Action.status_notification)
    def on_status_notification(self, timestamp, connector_status, evse_id, connector_id, **kwargs):
        edge.check_time(timestamp, "timestamp")  # schema format date-time: "yesterday" is a FormatViolation
        edge.check_connector(evse_id, "evseId")
        edge.check_connector(connector_id)
        self.state.on_status(self.id, evse_id, connector_status)
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_token, **kwargs):
        self.state.touch(self.id)
        return call_result.Authorize(id_token_info={"status": self.central.authorize(self.id, id_token["id_token"])})

    @on(Action.transaction_event)
    def on_transaction_event(self, event_type, timestamp, trigger_reason, seq_no, transaction_info,
                             meter_value=None, evse=None, id_token=None, number_of_phases_used=None, **kwargs):
        tid = transaction_info["transaction_id"]
        now = self.state.clock()
        off = edge.station_offset_s(self.state.stations[self.id].clock)  # its stamps are in its clock
        stamp = edge.event_time(timestamp, now, "timestamp", self.id, off)
        when = edge.in_our_clock(stamp, now, off)  # its record is in ours (Transaction)
        reading, ts = parse_meter_values(meter_value or [], now, self.id, off)
        t = self.state.transaction(self.id, tid)
        if evse is not None:  # a transaction runs on an EVSE 1..32; 0 is the station itself
            edge.check_connector(evse.get("id"), "evse.id", allow_zero=False)
        later = []  # events subscribers see once the answer is out (start first, then its meter values)
        if t is None and event_type in ("Started", "Updated"):
            # An Updated for a transaction we never saw started (we were down) opens it here, on
            # the EVSE it names, or on the only EVSE it can be on (see _evse_for_unknown).
            evse_id = evse["id"] if evse is not None else self._evse_for_unknown(event_type, tid)
            if evse_id is not None:
                t = self.state.on_start(self.id, evse_id, tid, start=when, meter_start_wh=reading.get("energy_wh"),
                                        id_tag=(id_token or {}).get("id_token"), publish=False)
                later.append(t.start_event)
        info = {"status": self.central.authorize(self.id, id_token["id_token"])} if id_token else None
        if t is None:
            log.warning("%s: TransactionEvent %s for unknown transaction %s", self.id, event_type, tid)
            return call_result.TransactionEvent(id_token_info=info)
        if number_of_phases_used:
            n_used = int(number_of_phases_used)
            if t.phases_used is not None and n_used > t.phases_used:
                # More phases than it was planned on: the controller steps at once (state.on_meter
                # sees the phase count already raised, so the reading says so itself).
                if reading:
                    reading = {**reading, "phases_up": True}
                else:
                    self.state.emit("needs", self.id, t.connector_id, tid, phases_used=n_used)
            t.phases_used = n_used
        if reading:
            taken = when if ts is None else edge.meter_time(ts, now, self.id, off)
            # One queued while offline names a transaction it ran then (a rebooted station's old
            # one revived by it got three TxProfiles, Rejected): it revives no orphan.
            ev = self.state.on_meter(self.id, t.connector_id, tid, reading, taken, publish=not later,
                                     queued=kwargs.get("offline") is True, stamp=stamp if ts is None else ts)
            if later and ev is not None:
                later.append(ev)
        else:
            if kwargs.get("offline") is True:
                self.state.touch(self.id)
            else:
                self.state.on_named(self.id, tid)  # it runs it: no orphan of a reconnect (touches it)
        if later:
            self.defer(lambda: [self.state.publish(e) for e in later])
        if event_type == "Ended":
            self.state.on_stop(self.id, tid, stop=when, meter_stop_wh=reading.get("energy_wh"),
                               reason=transaction_info.get("stopped_reason", "Local"))
            self.defer(lambda: self.central.after_stop(self.id, t.connector_id))
        return call_result.TransactionEvent(id_token_info=info)

    def _evse_for_unknown(self, event_type: str, tid: str) -> int | None:
        """The EVSE of a transaction we do not know whose event names none, or None.

        A station names the EVSE in the first TransactionEventRequest of a transaction, so an
        event without one is about a transaction whose start we missed (we were down), a station
        that forgot it, or a broken one. Guessing EVSE 1 made it supersede the transaction running
        there: that car kept drawing under its TxProfile while its room was given away. It is
        opened only where it cannot be anywhere else: the station has one EVSE known (none known:
        EVSE 1), and nothing runs there. Otherwise it is not opened (logged); a real one shows up on
        its EVSE's meter values and status, and its EVSE keeps the default it holds.
        """
        st = self.state.stations.get(self.id)
        known = sorted(c for c in (st.connectors if st is not None else {}) if c > 0)
        if len(known) <= 1:
            evse_id = known[0] if known else 1
            running = self.state.running_on(self.id, evse_id)
            if running is None:
                return evse_id
            why = f"EVSE {evse_id} runs transaction {running.transaction_id}"
        else:
            why = f"the station has EVSEs {known}"
        log.warning("%s: TransactionEvent %s for unknown transaction %s names no EVSE and %s: not opened "
                    "(the running transactions stay)", self.id, event_type, tid, why)
        return None

    @on(Action.meter_values)
    def on_meter_values(self, evse_id, meter_value, **kwargs):
        edge.check_connector(evse_id, "evseId")
        now = self.state.clock()
        off = edge.station_offset_s(self.state.stations[self.id].clock)
        reading, ts = parse_meter_values(meter_value, now, self.id, off)
        self.state.on_meter(self.id, evse_id, None, reading, edge.meter_time(ts, now, self.id, off),
                            stamp=edge.station_stamp(ts, now, off))
        return call_result.MeterValues()

    @on(Action.notify_ev_charging_needs)
    def on_notify_ev_charging_needs(self, charging_needs, evse_id, **kwargs):
        ac = charging_needs.get("ac_charging_parameters") or {}
        dc = charging_needs.get("dc_charging_parameters") or {}
        wh = ac.get("energy_amount", dc.get("energy_amount"))
        edge.check_connector(evse_id, "evseId", allow_zero=False)
        departure = edge.departure_time(charging_needs.get("departure_time"), self.state.clock(), self.id)
        if wh is not None and wh < 0:
            log.warning("%s: negative energyAmount %s refused", self.id, wh)
            return call_result.NotifyEVChargingNeeds(status="Rejected")
        ev_max, ev_min = (_current(ac.get(k)) for k in ("ev_max_current", "ev_min_current"))
        t = self.state.on_needs(
            self.id, evse_id, departure=departure, energy_kwh=None if wh is None else wh / 1000.0,
            ev_max_current_a=ev_max, ev_min_current_a=ev_min,
            phases=_DECLARED_PHASES.get(str(charging_needs.get("requested_energy_transfer"))),
        )
        if t is None:
            return call_result.NotifyEVChargingNeeds(status="Rejected")
        return call_result.NotifyEVChargingNeeds(status="Accepted")

    @on(Action.notify_charging_limit)
    def on_notify_charging_limit(self, charging_limit, charging_schedule=None, evse_id=None, **kwargs):
        log.info("%s: external charging limit from %s on EVSE %s", self.id,
                 charging_limit.get("charging_limit_source"), evse_id)
        if evse_id is not None:
            edge.check_connector(evse_id, "evseId")
        now = self.state.clock()
        for i, sched in enumerate(charging_schedule or []):
            prof = {"id": -(i + 1), "stack_level": 0, "charging_profile_purpose": pr.EXTERNAL,
                    "charging_profile_kind": "Absolute", "charging_schedule": [sched]}
            try:  # evaluate once: a schedule dated 9999 or lasting 10^15 s must fail here, not in a control step
                p = pr.Profile.from_payload(evse_id or 0, prof)
                p.limit_at(now, None, 230.0, 3)
                p.breakpoints(now, now + timedelta(days=2), None)
                if p.start_schedule is not None and not edge.plausible(p.start_schedule, now):
                    raise ValueError(f"startSchedule {p.start_schedule} implausible")
            except (ValueError, TypeError, OverflowError, KeyError) as exc:
                log.warning("%s: external charging schedule ignored: %s", self.id, exc)
                continue
            self.state.on_profile_accepted(self.id, evse_id or 0, prof)
        self.state.touch(self.id)
        return call_result.NotifyChargingLimit()

    @on(Action.cleared_charging_limit)
    def on_cleared_charging_limit(self, charging_limit_source, evse_id=None, **kwargs):
        self.state.on_profiles_cleared(self.id, purpose=pr.EXTERNAL,
                                       connector_id=evse_id)
        return call_result.ClearedChargingLimit()

    @on(Action.report_charging_profiles)
    def on_report_charging_profiles(self, request_id, charging_limit_source, charging_profile, evse_id, **kwargs):
        log.info("%s: %d charging profiles reported on EVSE %s (source %s)", self.id, len(charging_profile),
                 evse_id, charging_limit_source)
        self.state.touch(self.id)
        return call_result.ReportChargingProfiles()

    @on(Action.notify_report)
    def on_notify_report(self, request_id, generated_at, seq_no, **kwargs):
        self.state.touch(self.id)
        return call_result.NotifyReport()

    @on(Action.notify_event)
    def on_notify_event(self, generated_at, seq_no, event_data, **kwargs):
        self.state.touch(self.id)
        return call_result.NotifyEvent()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id, **kwargs):
        log.info("%s: DataTransfer from vendor %s ignored", self.id, vendor_id)
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(self, status, **kwargs):
        log.info("%s: firmware %s", self.id, status)
        return call_result.FirmwareStatusNotification()

    @on(Action.log_status_notification)
    def on_log_status_notification(self, status, **kwargs):
        log.info("%s: log upload %s", self.id, status)
        return call_result.LogStatusNotification()

    @on(Action.security_event_notification)
    def on_security_event_notification(self, type, timestamp, **kwargs):
        log.warning("%s: security event %s at %s", self.id, type, timestamp)
        return call_result.SecurityEventNotification()

    # ---- outgoing ---------------------------------------------------------------------------
    async def set_profile(self, connector_id: int, profile: dict) -> str:
        """SetChargingProfile on EVSE ``connector_id``; returns Accepted or Rejected."""
        # Built by profiles.build_profile and tested against the official schema: not checked again here.
        res = await self._call(call.SetChargingProfile(evse_id=connector_id, charging_profile=profile),
                               validate=False)
        return profile_status(res)

    async def clear_profiles(self, *, profile_id=None, connector_id=None, purpose=None, stack_level=None) -> str:
        """ClearChargingProfile by id or by criteria (none: all); returns Accepted or Unknown."""
        if purpose in pr.MAX_PURPOSES:
            purpose = pr.MAX_201
        crit = {k: v for k, v in {"evse_id": connector_id, "charging_profile_purpose": purpose,
                                  "stack_level": stack_level}.items() if v is not None}
        res = await self._call(call.ClearChargingProfile(charging_profile_id=profile_id,
                                                         charging_profile_criteria=crit or None))
        return str(res.status)

    async def composite_schedule(self, connector_id: int, duration_s: int, unit: str | None = "A") -> dict:
        """GetCompositeSchedule, normalized: status, start (datetime), unit, periods [(start_s, limit)]."""
        res = await self._call(call.GetCompositeSchedule(duration=int(duration_s), evse_id=connector_id,
                                                         charging_rate_unit=unit))
        sched = res.schedule or {}
        periods = [(float(p["start_period"]), float(p["limit"])) for p in sched.get("charging_schedule_period", [])]
        return {"status": str(res.status), "start": parse_time(sched.get("schedule_start")),
                "unit": sched.get("charging_rate_unit", unit), "periods": periods}

    async def ensure_measurand(self, measurand: str = "Current.Import") -> str:
        """Add ``measurand`` to SampledDataCtrlr.TxUpdatedMeasurands, keeping what is sampled
        already. Returns "present" when it was sampled already, else the SetVariables
        attribute status (Accepted, Rejected, RebootRequired, UnknownComponent, ...)."""
        var = {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedMeasurands"}}
        res = await self._call(call.GetVariables(get_variable_data=[var]))
        got = next((r for r in res.get_variable_result or [] if r.get("attribute_status") == "Accepted"), None)
        items = [x.strip() for x in str((got or {}).get("attribute_value") or "").split(",") if x.strip()]
        if measurand in items:
            return "present"
        value = ",".join(items + [measurand]) if items else f"Energy.Active.Import.Register,{measurand}"
        res = await self._call(call.SetVariables(set_variable_data=[{**var, "attribute_value": value}]))
        return str(next(iter(res.set_variable_result or []), {}).get("attribute_status", "Rejected"))

    async def ask_clock(self) -> str | None:
        """The station's date and time as it answers GetVariables ClockCtrlr.DateTime (a
        required variable of OCPP 2.0.1: "contains the current date and time"); None when it
        does not answer it Accepted with a value."""
        res = await self._call(call.GetVariables(get_variable_data=[{
            "component": {"name": "ClockCtrlr"}, "variable": {"name": "DateTime"}}]))
        for r in res.get_variable_result or []:
            if r.get("attribute_status") == "Accepted" and r.get("attribute_value"):
                return str(r["attribute_value"])
        return None

    async def probe_rate_unit(self) -> str:
        """'A' or 'W' from SmartChargingCtrlr.RateUnit (A when unknown)."""
        res = await self._call(call.GetVariables(get_variable_data=[{
            "component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "RateUnit"}}]))
        for r in res.get_variable_result or []:
            value = str(r.get("attribute_value") or "")
            if r.get("attribute_status") == "Accepted" and value:
                return "A" if "A" in value.split(",") else "W"
        return "A"


#: Phases a car loads by the energy transfer it requests (a DC charger draws on all its AC phases).
_DECLARED_PHASES = {"AC_single_phase": 1, "AC_two_phase": 2, "AC_three_phase": 3, "DC": 3}


def _current(x) -> float | None:
    # An EV current [A] outside 0..1000 is a broken report, not a car; treated as not given.
    return float(x) if x is not None and 0 <= x <= 1000 else None
