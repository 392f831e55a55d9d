"""Request bodies of the HTTP API (pydantic: the validation errors name the field, 422).

Responses are the public objects of :mod:`nowblock.control.status`; these are only what a
client sends. Unknown fields are refused (a misspelt ``max_curent_a`` must not pass unnoticed).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Amps = Annotated[float, Field(ge=0.0, le=1e5, allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CapRequest(_Body):
    """A cap on a fuse (or the whole block) for a time window: the grid operator's signal."""

    fuse_id: str | None = Field(None, description="fuse id; empty or null: the grid connection (whole block)")
    max_current_a: Amps | Annotated[list[Amps], Field(min_length=3, max_length=3)] = Field(
        description="[A] per phase: one value for all three, or [L1, L2, L3]")
    start: AwareDatetime | None = Field(None, description="from (ISO 8601 with offset); default now")
    end: AwareDatetime | None = Field(None, description="until (ISO 8601 with offset); or give duration_s")
    duration_s: float | None = Field(None, gt=0, le=366 * 86400, allow_inf_nan=False, description="[s] length")
    source: str = Field("grid_operator", max_length=100)
    reason: str = Field("", max_length=500)


class DimmingRequest(_Body):
    """A section 14a EnWG reduction of the charging power for a time window."""

    power_kw: float = Field(ge=0.0, le=1e5, allow_inf_nan=False,
                            description="[kW] charging power the grid operator asks for (raised to the "
                                        "guaranteed minimum P_min,14a when below it)")
    devices: int | None = Field(None, ge=1, le=100_000, description="controllable devices behind the energy "
                                "management system (default: the site's charging points above 4.2 kW)")
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    duration_s: float | None = Field(None, gt=0, le=366 * 86400, allow_inf_nan=False)
    reason: str = Field("", max_length=500)


class NeedsRequest(_Body):
    """A car's needs entered by a resident: when it leaves, how much energy this session in total."""

    departure: AwareDatetime = Field(description="departure (ISO 8601 with offset), in the future")
    energy_kwh: float = Field(ge=0.0, le=1000.0, allow_inf_nan=False,
                              description="[kWh] energy wanted in this session in total")


class ServiceRequest(_Body):
    """Take a charging point out of service (its cars get 0 A) or put it back."""

    in_service: bool
    reason: str = Field("", max_length=500)


class MinimumPower(BaseModel):
    """The section 14a minimum for ``devices`` devices (BK6-22-300 Anlage 1 Ziffer 4.5.2)."""

    devices: int
    simultaneity_factor: float
    guaranteed_power_kw: float
    formula: str
    source: str
