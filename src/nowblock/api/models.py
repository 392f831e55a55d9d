"""Request bodies of the HTTP API (pydantic: the validation errors name the field, 422).

Responses are the public objects of :mod:`nowblock.control.status`; these are only what a
client sends. Unknown fields are refused (a misspelt ``max_curent_a`` must not pass unnoticed).

Numbers, flags and times are strict. FastAPI validates the decoded JSON in pydantic's Python
mode, whose lax rules would turn ``true`` into 1 A (and ``false`` into a 0 A cap that stops all
charging), ``"20"`` into 20 A and ``1893456000`` into a time. So a number field takes a JSON
number only (an integer where a float is expected is fine: ``20`` is 20.0 A), a flag a JSON
boolean only, and a time an ISO 8601 string with an offset only; anything else is a 422 naming
the field.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

# A calendar date and a time of day: what ISO 8601 looks like. Pydantic would also read a
# string of digits as Unix seconds, which is as ambiguous as the bare number.
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_time(value: Any) -> Any:
    """Let only ISO 8601 strings (and datetimes, from Python callers) through to the parser.

    Parameters
    ----------
    value : Any
        What the client sent for a time field.

    Returns
    -------
    Any
        ``value`` unchanged; :class:`pydantic.AwareDatetime` then parses it and requires the offset.

    Raises
    ------
    ValueError
        For numbers, booleans and strings that are not an ISO 8601 date and time.
    """
    if isinstance(value, datetime) or (isinstance(value, str) and _ISO_TIME.match(value.strip())):
        return value
    raise ValueError("a time is an ISO 8601 string with an offset, e.g. 2030-01-01T10:00:00+00:00 "
                     "(not a number of seconds)")


# Strict floats accept JSON integers (20 is 20.0) but never booleans or strings.
Amps = Annotated[float, Field(strict=True, ge=0.0, le=1e5, allow_inf_nan=False)]
Time = Annotated[AwareDatetime, BeforeValidator(_iso_time)]
Seconds = Annotated[float, Field(strict=True, gt=0, le=366 * 86400, allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CapRequest(_Body):
    """A cap on a fuse (or the whole block) for a time window: the grid operator's signal."""

    fuse_id: str | None = Field(None, description="fuse id; empty or null: the grid connection (whole block)")
    max_current_a: Amps | Annotated[list[Amps], Field(min_length=3, max_length=3)] = Field(
        description="[A] per phase: one value for all three, or [L1, L2, L3]")
    start: Time | None = Field(None, description="from (ISO 8601 with offset); default now")
    end: Time | None = Field(None, description="until (ISO 8601 with offset); or give duration_s")
    duration_s: Seconds | None = Field(None, description="[s] length")
    source: str = Field("grid_operator", max_length=100)
    reason: str = Field("", max_length=500)


class DimmingRequest(_Body):
    """A section 14a EnWG reduction of the charging power for a time window."""

    power_kw: float = Field(strict=True, ge=0.0, le=1e5, allow_inf_nan=False,
                            description="[kW] charging power the grid operator asks for (raised to the "
                                        "guaranteed minimum P_min,14a when below it)")
    devices: int | None = Field(None, strict=True, ge=1, le=100_000,
                                description="controllable devices behind the energy management system "
                                            "(default: the site's charging points above 4.2 kW)")
    start: Time | None = Field(None, description="from (ISO 8601 with offset); default now")
    end: Time | None = Field(None, description="until (ISO 8601 with offset); or give duration_s")
    duration_s: Seconds | None = Field(None, description="[s] length")
    reason: str = Field("", max_length=500)


class NeedsRequest(_Body):
    """A car's needs entered by a resident: when it leaves, how much energy this session in total."""

    departure: Time = Field(description="departure (ISO 8601 with offset), in the future")
    energy_kwh: float = Field(strict=True, ge=0.0, le=1000.0, allow_inf_nan=False,
                              description="[kWh] energy wanted in this session in total")


class ServiceRequest(_Body):
    """Take a charging point out of service (its cars get 0 A) or put it back."""

    in_service: bool = Field(strict=True, description="false: out of service (a JSON boolean, not 0 or \"no\")")
    reason: str = Field("", max_length=500)


class MinimumPower(BaseModel):
    """The section 14a minimum for ``devices`` devices (BK6-22-300 Anlage 1 Ziffer 4.5.2)."""

    devices: int
    simultaneity_factor: float
    guaranteed_power_kw: float
    formula: str
    source: str
