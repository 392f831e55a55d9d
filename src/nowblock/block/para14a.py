"""Section 14a EnWG: the minimum power a grid operator must leave controllable devices.

The Federal Network Agency's determination BK6-22-300 (27 November 2023, in force since
1 January 2024), Anlage 1, lets a distribution system operator reduce the grid draw of
controllable consumption devices (*steuerbare Verbrauchseinrichtungen*: among them every
non-public charging point above 4.2 kW) down to a guaranteed minimum ``P_min,14a``.

When several devices behind one grid connection are controlled through **one energy
management system** (Anlage 1, Ziffer 4.4 b), Ziffer 4.5.2 sets the minimum for all of them
together; for devices that are not heat pumps or air conditioning above 11 kW::

    P_min,14a = 4.2 kW + (n_steuVE - 1) x GZF x 4.2 kW

with the simultaneity factor GZF of the table in Ziffer 4.5.2 (0.8 for two devices, then
0.75, 0.7, 0.65, 0.6, 0.55, 0.5, and 0.45 from nine devices on; the term vanishes for one
device, which keeps the 4.2 kW of Ziffer 4.5.1). The energy management system may share that
total among the devices as it likes. The other reading found in secondary sources,
``n x 4.2 kW x GZF``, is *not* the determination's: it gives 6.72 kW instead of 7.56 kW for two
devices. docs/api.md gives the citation and the table this module is tested against.

Everything here is power [kW]; how much current that is depends on how many phases each car
draws on (:func:`nowblock.loop.caps.power_cap_phase_currents_a`).
"""

from __future__ import annotations

import numpy as np

#: [kW] Ziffer 4.5.1: the minimum of one device, and the 4.2 kW of both Ziffer 4.5.2 formulas.
MIN_POWER_PER_DEVICE_KW = 4.2

#: [kW] Ziffer 2.4.1: a charging point is a controllable device only above this rating.
DEVICE_THRESHOLD_KW = 4.2

#: Ziffer 4.5.2: simultaneity factor by number of devices (index 0: one device, where it
#: multiplies nothing; the last entry holds for nine devices and more).
SIMULTANEITY_FACTORS = (1.0, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45)


def simultaneity_factor(n_devices: int) -> float:
    """The simultaneity factor (GZF) of BK6-22-300 Anlage 1 Ziffer 4.5.2 for ``n_devices``.

    Parameters
    ----------
    n_devices : int
        Controllable devices behind the energy management system (>= 1).

    Returns
    -------
    float
        1.0 for one device, 0.8 for two, ... 0.5 for eight, 0.45 for nine and more.
    """
    n = int(n_devices)
    if n < 1:
        raise ValueError(f"n_devices: at least one device, got {n_devices!r}")
    return SIMULTANEITY_FACTORS[min(n, len(SIMULTANEITY_FACTORS)) - 1]


def guaranteed_power_kw(n_devices: int, *, per_device_kw: float = MIN_POWER_PER_DEVICE_KW) -> float:
    """[kW] ``P_min,14a`` for ``n_devices`` charging points behind one energy management system.

    ``4.2 kW + (n - 1) x GZF(n) x 4.2 kW`` (BK6-22-300 Anlage 1 Ziffer 4.5.2): 4.2 kW for one
    device, 7.56 kW for two, 15.12 kW for five, 24.99 kW for twelve.

    Parameters
    ----------
    n_devices : int
        Controllable devices (>= 1).
    per_device_kw : float
        [kW] The per-device minimum (4.2 kW in the determination).

    Examples
    --------
    >>> round(guaranteed_power_kw(2), 3)
    7.56
    """
    n = int(n_devices)
    return float(per_device_kw + (n - 1) * simultaneity_factor(n) * per_device_kw)


def controllable_devices(rated_power_kw) -> int:
    """How many charging points count as controllable devices: those rated above 4.2 kW.

    Parameters
    ----------
    rated_power_kw : array-like
        [kW] Each charging point's rating (max current x phases x voltage).
    """
    p = np.asarray(rated_power_kw, dtype=float)
    return int((p > DEVICE_THRESHOLD_KW + 1e-9).sum())
