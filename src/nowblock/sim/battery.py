"""How much current a simulated car accepts: a CC-CV-like taper near full.

A real car takes what its battery management allows. Below ``taper_soc`` it takes up to its
own maximum (the constant-current phase); above, the accepted current falls linearly towards
``floor_fraction`` of the maximum at 100 % state of charge (a linear stand-in for the
constant-voltage phase). The simulator knows only the requested energy of a session, not the
car's battery, so the model assumes a capacity and a target state of charge and starts each
session at ``target - energy / capacity``.

All functions are vectorised over sessions (plain ndarrays in, ndarrays out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TaperBattery:
    """A per-session battery with a linear taper above ``taper_soc``.

    Parameters
    ----------
    capacity_kwh : float
        Assumed usable capacity [kWh] (a mid-size battery electric car); a session that
        requests more than ``target_soc - min_start_soc`` of it gets a bigger battery.
    target_soc : float
        State of charge [0..1] a session ends at when it gets all it requested (residential
        users commonly set 80-90 %).
    taper_soc : float
        State of charge [0..1] above which the accepted current falls.
    floor_fraction : float
        Accepted current at 100 % as a fraction of the car's maximum.
    min_start_soc : float
        Lowest state of charge [0..1] a session starts at.
    """

    capacity_kwh: float = 60.0
    target_soc: float = 0.9
    taper_soc: float = 0.8
    floor_fraction: float = 0.1
    min_start_soc: float = 0.05

    def __post_init__(self) -> None:
        if not (0.0 < self.min_start_soc < self.target_soc <= 1.0):
            raise ValueError("TaperBattery: need 0 < min_start_soc < target_soc <= 1")
        if not (0.0 < self.taper_soc <= 1.0) or not (0.0 <= self.floor_fraction <= 1.0):
            raise ValueError("TaperBattery: taper_soc in (0, 1] and floor_fraction in [0, 1]")
        if not self.capacity_kwh > 0:
            raise ValueError("TaperBattery: capacity_kwh must be positive")

    def capacities_kwh(self, energy_kwh: np.ndarray) -> np.ndarray:
        """Battery capacity [kWh] assumed for sessions requesting ``energy_kwh`` [kWh]."""
        e = np.asarray(energy_kwh, dtype=float)
        return np.maximum(self.capacity_kwh, e / (self.target_soc - self.min_start_soc))

    def start_soc(self, energy_kwh: np.ndarray, capacity_kwh: np.ndarray) -> np.ndarray:
        """State of charge [0..1] at plug-in, so that ``energy_kwh`` [kWh] ends at the target."""
        return self.target_soc - np.asarray(energy_kwh, dtype=float) / np.asarray(capacity_kwh, dtype=float)

    def accepted_fraction(self, soc: np.ndarray) -> np.ndarray:
        """Fraction [0..1] of its maximum current a car at ``soc`` [0..1] accepts."""
        soc = np.asarray(soc, dtype=float)
        if self.taper_soc >= 1.0:
            return np.ones_like(soc)
        t = np.clip((soc - self.taper_soc) / (1.0 - self.taper_soc), 0.0, 1.0)
        return 1.0 - t * (1.0 - self.floor_fraction)

    def accepted_current_a(self, soc: np.ndarray, max_current_a: np.ndarray) -> np.ndarray:
        """Most current [A] per phase a car at ``soc`` [0..1] with maximum ``max_current_a`` [A] takes."""
        return self.accepted_fraction(soc) * np.asarray(max_current_a, dtype=float)
