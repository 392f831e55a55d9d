"""The sessions frame: one row per charging session, validated against a site.

Columns (the outside contract): ``session_id`` (str), ``charge_point_id`` (str), ``arrival``,
``departure`` (tz-aware timestamps), ``energy_kwh`` (requested) and the optional
``max_current_a`` (the car's own limit per phase [A]), ``phases`` (1, 2 or 3: how many phases
the car charges on), ``priority`` (weight of this session's shortfall, default 1). The
optional ``draw_fraction`` (0..1, default 1) tells the simulator that a car draws less than it
is offered; policies never see it.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextvars import ContextVar
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nowblock.block.csvrows import field_count_error, scan_csv, separator_hint

if TYPE_CHECKING:
    from nowblock.block.site import Site

log = logging.getLogger(__name__)

REQUIRED = ("session_id", "charge_point_id", "arrival", "departure", "energy_kwh")
OPTIONAL_DEFAULTS = {"max_current_a": 32.0, "phases": 3, "priority": 1.0, "draw_fraction": 1.0}

#: [kWh] More than any vehicle's battery holds (passenger cars: up to about 200 kWh; heavy
#: electric trucks: up to about 1000 kWh): a request above it is refused, most likely Wh.
MAX_ENERGY_KWH = 1000.0
#: [kWh] About the largest passenger-car battery: a request above it is accepted with a warning.
LARGE_BATTERY_KWH = 200.0
#: Earliest and latest arrival or departure [UTC]: the simulator, the optimizer and the
#: forecasters compute in pandas' nanosecond timestamps (1677-09-21 to 2262-04-11), with two
#: days kept free at each end for a day's horizon; a later time (an export's "open end",
#: 9999-12-31) stopped them with OutOfBoundsDatetime deep inside.
TIME_MIN = pd.Timestamp("1677-09-23", tz="UTC")
TIME_MAX = pd.Timestamp("2262-04-09", tz="UTC")
#: Why a time before TIME_MIN or after TIME_MAX is refused, for error messages.
OUTSIDE_TIMES = (f"is outside the times nowblock computes in ({TIME_MIN:%Y-%m-%d} to {TIME_MAX:%Y-%m-%d} UTC, "
                 f"pandas' nanosecond timestamps)")


def aware_time(t, what: str, *, none_means: str = "the default") -> pd.Timestamp:
    """One time argument (``start``, ``end``) checked: timezone-aware and within the range.

    The one check of ``nb.simulate``'s ``start``/``end`` and ``nb.optimize``'s ``start`` (each
    had a copy with its own wording). Read as UTC, a time without an offset moved a Dortmund
    window by one or two hours without a word; a number is nanoseconds since 1970 to pandas.

    Parameters
    ----------
    t : pandas.Timestamp, datetime.datetime or str
        A timezone-aware time, or ISO 8601 text with a UTC offset such as
        ``"2026-03-02T18:00+01:00"``.
    what : str
        The argument's name, first in every message.
    none_means : str
        What passing None instead gives, for the NaT message (e.g. ``"the first arrival"``).

    Returns
    -------
    pandas.Timestamp
        ``t`` in its own time zone.

    Raises
    ------
    TypeError
        A number.
    ValueError
        Text pandas cannot read as a time, NaT, a time without an offset, or one outside
        :data:`TIME_MIN` .. :data:`TIME_MAX` (:data:`OUTSIDE_TIMES`).
    """
    if isinstance(t, (bool, int, float, np.integer, np.floating)):
        raise TypeError(f"{what}: expected a timezone-aware time such as '2026-03-02T18:00+01:00', "
                        f"got the number {t!r}")
    try:
        ts = pd.Timestamp(t)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what}: cannot read {t!r} as a time ({exc}); expected ISO 8601 with a UTC "
                         f"offset, like 2026-03-02T18:00+01:00, or a timezone-aware Timestamp") from exc
    if ts is pd.NaT:
        raise ValueError(f"{what}: missing (NaT); pass a timezone-aware time, or None for {none_means}")
    if ts.tz is None:
        raise ValueError(f"{what}: must be timezone-aware: {t!s} has no UTC offset (a local time is ambiguous "
                         f"twice a year); give one, like 2026-03-02T18:00+01:00, or a timezone-aware Timestamp")
    if not TIME_MIN <= ts <= TIME_MAX:  # beyond, a step or slot grid stopped with OutOfBoundsDatetime
        raise ValueError(f"{what}: {ts.tz_convert('UTC').isoformat()} {OUTSIDE_TIMES}")
    return ts


class SessionsError(ValueError):
    """A sessions frame with a bad row; the message names the row and the session_id.

    Rows of a ``sessions.csv`` are counted as an editor shows them (the header is line 1);
    rows of a DataFrame by their index label.
    """


#: How the rows being validated are named in errors (set by validate_sessions for its call).
_ROW_LABELS: ContextVar = ContextVar("_ROW_LABELS", default=None)


def _row_name(df: pd.DataFrame, i: int) -> str:
    """The ``i``-th row (position) as the user sees it: ``line N`` of a CSV, else ``row <label>``."""
    name = _ROW_LABELS.get()
    where = name(i) if name is not None else f"row {i}"
    sid = df["session_id"].iloc[i]
    if _is_missing(sid):  # the session_id itself is what is wrong: naming it would print nan
        return where
    return f"{where} (session_id={sid!r})"


def _row_name_in(df: pd.DataFrame, i: int) -> str:
    """Row ``i`` of a sessions CSV being read: ``line N (session_id=...)``."""
    sid = df["session_id"].iloc[i] if "session_id" in df.columns else None
    return f"line {i + 2}" + ("" if _is_missing(sid) else f" (session_id={sid!r})")


def _is_missing(value) -> bool:
    """True for a missing or blank cell (None, NaN, NA, NaT, or only spaces)."""
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or another array-like cell is present, not missing
        return False


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    """``df[col]`` as floats; a value that is present but not a number raises naming its row."""
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce").astype(float)
    bad = (num.isna() & raw.notna()).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise SessionsError(f"{_row_name(df, i)}: {col} is not a number ({raw.iloc[i]!r})")
    return num


def _to_utc(df: pd.DataFrame, col: str) -> pd.Series:
    """Column ``col`` as UTC timestamps; a missing, unparsable or naive value raises naming its row."""
    raw = df[col]
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        ts = raw
    elif pd.api.types.is_datetime64_dtype(raw.dtype):
        i = int(np.argmax(raw.notna().to_numpy())) if raw.notna().any() else 0
        raise SessionsError(f"{_row_name(df, i)}: {col} {raw.iloc[i]} has no timezone (timestamps must be tz-aware)")
    else:
        # Strings or Python objects: look at every value, since one column may mix offsets
        # (+01:00 and +02:00 across a DST change) and a single naive value must be caught.
        parsed = []
        for i, v in enumerate(raw.tolist()):
            if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
                raise SessionsError(f"{_row_name(df, i)}: {col} is missing")
            try:
                t = pd.Timestamp(v)
            except (ValueError, TypeError) as exc:
                raise SessionsError(f"{_row_name(df, i)}: {col} {v!r} is not a timestamp ({exc})") from exc
            if t is pd.NaT:
                raise SessionsError(f"{_row_name(df, i)}: {col} is missing")
            if t.tz is None:
                raise SessionsError(f"{_row_name(df, i)}: {col} {v!r} has no UTC offset (expected ISO 8601 with "
                                f"one, like 2026-03-02T18:00+01:00)")
            parsed.append(t.tz_convert("UTC"))
        ts = pd.Series(pd.DatetimeIndex(parsed, tz="UTC"), index=raw.index)
    bad = ts.isna().to_numpy()
    if bad.any():
        raise SessionsError(f"{_row_name(df, int(np.argmax(bad)))}: {col} is missing")
    return ts.dt.tz_convert("UTC")


def validate_sessions(sessions: pd.DataFrame, site: "Site | None" = None, *,
                      row_labels=None) -> pd.DataFrame:
    """Check and normalise a sessions frame; return a new frame with every optional column.

    Parameters
    ----------
    sessions : pandas.DataFrame
        The sessions frame (columns in the module docstring and in docs/formats.md).
    site : Site, optional
        With a site, every ``charge_point_id`` must be one of its charging points, and each
        request is compared with what the charging point can deliver in the stay.
    row_labels : sequence of str, optional
        How each row is named in an error (default ``row <index label>``;
        :func:`read_sessions_csv` passes ``line N``).

    Returns
    -------
    pandas.DataFrame
        A new frame sorted by arrival, timestamps in UTC, every optional column filled.

    Raises
    ------
    SessionsError
        Naming the first bad row: a missing column, a timestamp without a UTC offset,
        departure not after arrival, negative, missing or impossible energy (above
        :data:`MAX_ENERGY_KWH`) [kWh], an unknown charging point, phases not in {1, 2, 3}, a
        non-positive current limit [A] or one above what a charging point may be rated
        (:data:`~nowblock.block.site.MAX_CHARGE_POINT_CURRENT_A`, 80 A per phase: mA given for
        A), or two sessions on one charging point at the same time. Nothing in the input is
        modified.

    Notes
    -----
    Implausible but possible requests are logged once as a warning (logger
    ``nowblock.block.sessions``): above :data:`LARGE_BATTERY_KWH`, above what the car could
    draw in its stay at its charging point's maximum current, or a car maximum
    (``max_current_a`` [A]) below its charging point's ``min_current_a`` [A] (such a car is
    offered the minimum and draws its own maximum; often a power in kW given as a current).
    Each warning names the first such row; it is not repeated when
    the same sessions are validated again (say, by :class:`~nowblock.block.scenario.Scenario`
    after :func:`read_sessions_csv`).
    """
    if not isinstance(sessions, pd.DataFrame):
        raise SessionsError(f"sessions: expected a pandas DataFrame, got {type(sessions).__name__}")
    missing = [c for c in REQUIRED if c not in sessions.columns]
    if missing:
        raise SessionsError(f"sessions: missing column(s) {missing} (required: {', '.join(REQUIRED)})"
                            f"{_did_you_mean(sessions.columns, missing)}{separator_hint(sessions.columns)}")
    _check_unknown_columns(sessions.columns)
    if row_labels is not None:
        labels = row_labels
        token = _ROW_LABELS.set(lambda i: labels[i])
    else:
        index = sessions.index
        token = _ROW_LABELS.set(lambda i: f"row {index[i]!r}" if isinstance(index[i], str) else f"row {index[i]}")
    try:
        return _validate(sessions.copy().reset_index(drop=True), site)
    finally:
        _ROW_LABELS.reset(token)


def _max_charge_point_current_a() -> float:
    """[A per phase] The site file's bound on a charging point, imported when first needed: the
    forecasters import this module, and ``nowblock.block.site`` must stay out of their import."""
    from nowblock.block.site import MAX_CHARGE_POINT_CURRENT_A

    return MAX_CHARGE_POINT_CURRENT_A


#: Every column the sessions frame knows; any other is kept as it is (an export's own columns).
KNOWN_COLUMNS = REQUIRED + tuple(OPTIONAL_DEFAULTS)
#: The sessions frame's number columns: where a decimal comma can split a value
#: (:func:`~nowblock.block.csvrows.scan_csv`), each with the values it takes: a pair joined
#: into a value :func:`validate_sessions` refuses (``3,1`` in phases) is not suggested.
NUMERIC_COLUMNS = {
    "energy_kwh": lambda v: 0 <= v <= MAX_ENERGY_KWH,
    "max_current_a": lambda v: 0 < v <= _max_charge_point_current_a(),
    "phases": lambda v: v in (1, 2, 3),
    "priority": lambda v: v >= 0,
    "draw_fraction": lambda v: 0 <= v <= 1,
}
#: Columns nowblock's own generators add and nothing validates (the ``workplace_acn`` family's
#: stated departure): kept without a warning.
KEPT_COLUMNS = ("user_departure",)


#: Words that name the other end of a quantity: ``min_current_a`` is not a misspelling of
#: ``max_current_a`` (difflib: 0.846), it is another quantity.
_COUNTERPARTS = {frozenset(p) for p in (("min", "max"), ("lower", "upper"), ("start", "end"), ("first", "last"),
                                        ("from", "to"), ("in", "out"))}
_QUALIFIERS = {w for p in _COUNTERPARTS for w in p}


def _other_quantity(column: str, known: str) -> bool:
    """True if ``column`` names another quantity than ``known``, however alike they look: a
    counterpart word in its place (``min_current_a``), or a qualifier left out (``current_a``)."""
    a, b = column.split("_"), known.split("_")
    if len(a) == len(b):
        return any(frozenset((x, y)) in _COUNTERPARTS for x, y in zip(a, b) if x != y)
    if len(a) < len(b) and all(w in b for w in a):
        return any(w in _QUALIFIERS for w in b if w not in a)
    return False


def _near(column, known) -> str | None:
    """The known column ``column`` is most likely a misspelling of (difflib), or None.

    Never a known column's counterpart: ``min_current_a`` and ``current_a`` were refused as
    ``max_current_a`` misspelt; ``max_curent_a`` still is one."""
    import difflib

    col = str(column).strip().lower()
    hits = difflib.get_close_matches(col, list(known), n=3, cutoff=0.8)
    return next((h for h in hits if not _other_quantity(col, h)), None)


def _did_you_mean(columns, wanted) -> str:
    """`` (did you mean 'a' for 'b'?)`` for columns that look like misspellings of ``wanted``."""
    pairs = [(w, c) for c in columns if c not in KNOWN_COLUMNS for w in [_near(c, wanted)] if w]
    return f"; did you mean {', '.join(f'{w!r} for {c!r}' for w, c in pairs)}?" if pairs else ""


def _check_unknown_columns(columns) -> None:
    """Refuse a column that is a near miss of a known one that is absent; warn once of others.

    A misspelt optional column (``max_curent_a``, ``phase``) was dropped without a word: a car
    limited to 16 A was simulated at 20 A, a 1-phase car on 3 phases. Other columns are kept
    (an export's own, such as ``id_tag``): the contract names the columns it reads, not a closed
    set, so they are warned about once, not refused.
    """
    unknown = [c for c in columns if c not in KNOWN_COLUMNS and c not in KEPT_COLUMNS]
    if not unknown:
        return
    absent = [c for c in KNOWN_COLUMNS if c not in columns]
    near = [(c, _near(c, absent)) for c in unknown]
    typo = [(c, k) for c, k in near if k is not None]
    if typo:
        c, k = typo[0]
        raise SessionsError(f"sessions: unknown column {c!r}: did you mean {k!r}? (columns read: "
                            f"{', '.join(KNOWN_COLUMNS)}; a misspelt optional column would be dropped and its "
                            f"default used)")
    key = ("columns", tuple(map(str, unknown)))
    if key not in _warned and len(_warned) < 1000:
        _warned.add(key)
        log.warning("sessions: column(s) %s are not read (kept as they are); the columns read are %s",
                    ", ".join(map(repr, unknown)), ", ".join(KNOWN_COLUMNS))


def _validate(df: pd.DataFrame, site: "Site | None") -> pd.DataFrame:
    MAX_CHARGE_POINT_CURRENT_A = _max_charge_point_current_a()
    for col in ("session_id", "charge_point_id"):
        gone = (df[col].isna() | (df[col].astype(str).str.strip() == "")).to_numpy()
        if gone.any():
            raise SessionsError(f"{_row_name(df, int(np.argmax(gone)))}: {col} is missing")
        df[col] = df[col].astype(str)
    dup = df["session_id"].duplicated()
    if dup.any():
        raise SessionsError(f"{_row_name(df, int(np.argmax(dup.to_numpy())))}: duplicate session_id")
    for col in ("arrival", "departure"):
        df[col] = _to_utc(df, col)
        out = ((df[col] < TIME_MIN) | (df[col] > TIME_MAX)).to_numpy()
        if out.any():
            i = int(np.argmax(out))
            raise SessionsError(f"{_row_name(df, i)}: {col} {df[col].iloc[i].isoformat()} is outside the times nowblock "
                                f"computes in ({TIME_MIN:%Y-%m-%d} to {TIME_MAX:%Y-%m-%d} UTC); a stay without "
                                f"a known end needs a departure all the same")
    for col, default in OPTIONAL_DEFAULTS.items():
        if col not in df.columns:
            df[col] = default
        # An empty cell means the default; anything else that is not a number is an error.
        df[col] = _numeric(df, col).fillna(default)
    df["energy_kwh"] = _numeric(df, "energy_kwh")
    fractional = (df["phases"] != df["phases"].round()).to_numpy()
    if fractional.any():
        raise SessionsError(f"{_row_name(df, int(np.argmax(fractional)))}: phases must be 1, 2 or 3")
    df["phases"] = df["phases"].astype(np.int64)

    # Here, not at the top: the forecasters import this module for its time range, and must stay
    # light (tests/test_forecast_base_load.py::test_base_load_import_stays_light).
    checks = [
        (df["departure"] <= df["arrival"], "departure is not after arrival"),
        (df["energy_kwh"].isna(), "energy_kwh is missing"),
        (np.isinf(df["energy_kwh"]), "energy_kwh must be finite"),
        (~(df["energy_kwh"] >= 0), "energy_kwh must be a number >= 0"),
        (df["energy_kwh"] > MAX_ENERGY_KWH,
         f"energy_kwh is above {MAX_ENERGY_KWH:g} kWh, more than any vehicle battery holds (cars: up to about "
         f"{LARGE_BATTERY_KWH:g} kWh); expected kWh, was it given in Wh?"),
        (~df["phases"].isin([1, 2, 3]), "phases must be 1, 2 or 3"),
        (~((df["max_current_a"] > 0) & np.isfinite(df["max_current_a"])), "max_current_a must be > 0"),
        # The site file's bound on a charging point: a car's maximum above it is no current of
        # AC charging (16000 was accepted: mA for A).
        (df["max_current_a"] > MAX_CHARGE_POINT_CURRENT_A,
         f"max_current_a is above {MAX_CHARGE_POINT_CURRENT_A:g} A per phase, more than AC charging carries (at "
         f"most 63 A in Europe, 80 A in North America); expected A per phase, was it given in mA?"),
        (~(df["priority"] >= 0), "priority must be >= 0"),
        (~((df["draw_fraction"] >= 0) & (df["draw_fraction"] <= 1)), "draw_fraction must be in [0, 1]"),
    ]
    if site is not None:
        known = set(site.charge_point_ids)
        checks.append((~df["charge_point_id"].isin(known), "unknown charge_point_id"))
    for mask, msg in checks:
        m = mask.to_numpy()
        if m.any():
            i = int(np.argmax(m))
            extra = f" ({df['charge_point_id'].iloc[i]!r})" if msg.startswith("unknown") else ""
            if msg.startswith("energy_kwh is above"):
                extra = f" (got {df['energy_kwh'].iloc[i]:g})"
            if msg.startswith("max_current_a is above"):
                extra = f" (got {df['max_current_a'].iloc[i]:g})"
            raise SessionsError(f"{_row_name(df, i)}: {msg}{extra}")

    # Two sessions on one charging point must not overlap: sort per point, compare neighbours.
    order = df.sort_values(["charge_point_id", "arrival"], kind="stable")
    same_cp = order["charge_point_id"].to_numpy()[1:] == order["charge_point_id"].to_numpy()[:-1]
    overlap = order["arrival"].to_numpy()[1:] < order["departure"].to_numpy()[:-1]
    clash = np.nonzero(same_cp & overlap)[0]
    if len(clash):
        a, b = order.index[clash[0]], order.index[clash[0] + 1]
        raise SessionsError(
            f"{_row_name(df, int(b))}: overlaps session {df['session_id'].iloc[a]!r} "
            f"on charge point {df['charge_point_id'].iloc[b]!r}"
        )
    _warn_implausible(df, site)
    return df.sort_values("arrival", kind="stable").reset_index(drop=True)


_warned: set[tuple] = set()  # each warning once a process, however often a frame is validated


def _warn_implausible(df: pd.DataFrame, site: "Site | None") -> None:
    """Log (once) requests that are possible in a file but unlikely to be meant."""
    energy = df["energy_kwh"].to_numpy(float)
    stay_h = ((df["departure"] - df["arrival"]).dt.total_seconds() / 3600.0).to_numpy(float)
    car_max = df["max_current_a"].to_numpy(float)
    current = car_max
    phases = df["phases"].to_numpy(np.int64)
    voltage = 230.0
    cp_min = np.zeros(len(df))
    if site is not None:
        voltage = site.voltage_v
        j = site.cp_index(df["charge_point_id"])
        current = np.minimum(current, site.cp_max_current_a[j])
        phases = np.minimum(phases, site.cp_phases[j])
        cp_min = site.cp_min_current_a[j]
    most_kwh = stay_h * current * phases * voltage / 1000.0
    sids = df["session_id"].to_numpy(object)
    notes = []
    big = np.nonzero(energy > LARGE_BATTERY_KWH)[0]
    if len(big):
        i = int(big[0])
        notes.append(("battery", big, f"{len(big)} session(s) ask for more than a large car battery "
                                      f"({LARGE_BATTERY_KWH:g} kWh); first {_row_name(df, i)}: {energy[i]:g} kWh"))
    short = np.nonzero(energy > most_kwh * (1 + 1e-9) + 1e-9)[0]
    if len(short):
        i = int(short[0])
        notes.append(("stay", short,
                      f"{len(short)} session(s) ask for more than the car can draw in its stay; first "
                      f"{_row_name(df, i)}: {energy[i]:g} kWh, at most {most_kwh[i]:.1f} kWh in "
                      f"{stay_h[i]:.1f} h at {current[i]:g} A on {phases[i]} phase(s); no policy can meet "
                      f"them, so demand_met stays below 1"))
    low = np.nonzero((car_max < cp_min) & (energy > 0))[0]
    if len(low):
        i = int(low[0])
        notes.append(("below_min", low,
                      f"{len(low)} session(s) have a car maximum below their charging point's minimum current; "
                      f"first {_row_name(df, i)}: max_current_a {car_max[i]:g} A, but "
                      f"{df['charge_point_id'].iloc[i]} offers at least {cp_min[i]:g} A (IEC 61851). Such a car is "
                      f"offered the minimum and draws its own maximum; max_current_a is a current per "
                      f"phase in A, not a power in kW"))
    # Keyed by the set of sessions found, not by how the first is named: a frame read from a file
    # is checked again by Scenario (sorted by arrival, rows numbered from 0), and the user should
    # read each warning once, naming the line of the file.
    for kind, rows, note in notes:
        key = (kind, frozenset(sids[rows].tolist()))
        if key not in _warned and len(_warned) < 1000:
            _warned.add(key)
            log.warning("sessions: %s", note)


def read_sessions_csv(path, site: "Site | None" = None) -> pd.DataFrame:
    """Read ``sessions.csv`` (ISO 8601 timestamps with offset) and validate it.

    A timestamp without an offset is reported by its line, never read as UTC. Errors name the
    file and the line as an editor shows it (the header is line 1). ``session_id`` and
    ``charge_point_id`` are read as text as written (``NA`` or ``null`` is a name, only an empty
    cell is missing); in the other columns pandas' usual NA strings mean missing.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file.
    site : Site, optional
        The site the sessions must fit (see :func:`validate_sessions`).

    Returns
    -------
    pandas.DataFrame
        The validated sessions frame (UTC timestamps).
    """
    try:
        return _read_sessions_csv(path, site)
    except SessionsError as exc:
        raise SessionsError(f"{path}: {exc}") from exc


#: Cells pandas reads as missing by default ("NA", "null", "nan", ...): still missing in every
#: column but the ids, where they are names (a charging point may well be called "NA").
_NA_STRINGS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
               "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
_ID_COLUMNS = ("session_id", "charge_point_id")


def _read_sessions_csv(path, site: "Site | None") -> pd.DataFrame:
    try:
        # The header first: pandas applies its NA strings to every column unless each column
        # but the ids is given them by name.
        columns = pd.read_csv(path, nrows=0).columns
        na = {c: list(_NA_STRINGS) for c in columns if c not in _ID_COLUMNS}
        # index_col=False: a row with a field more than the header (a decimal comma) made pandas
        # take the first column for the index and shift every other one.
        with warnings.catch_warnings():  # its "loss of data" warning: such a row is refused below
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            df = pd.read_csv(path, dtype={c: str for c in _ID_COLUMNS}, keep_default_na=False, na_values=na,
                             index_col=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        bad = scan_csv(path, REQUIRED, NUMERIC_COLUMNS)[0] if isinstance(path, (str, os.PathLike)) else None
        raise SessionsError(field_count_error(bad) if bad else f"cannot read sessions ({exc})") from exc
    bad, starts = scan_csv(path, REQUIRED, NUMERIC_COLUMNS) if isinstance(path, (str, os.PathLike)) else (None, None)
    if bad is not None and not separator_hint(df.columns):  # a ';' file: the separator hint says more
        raise SessionsError(field_count_error(bad))
    for col in ("arrival", "departure"):
        if col not in df.columns:
            continue
        text = df[col].astype("string")
        if text.str.contains(ISO_OFFSET_RE, regex=True).fillna(False).all():
            try:  # fast path; whatever fails here is reported row by row in validate_sessions
                df[col] = pd.to_datetime(text, format="ISO8601", utc=True)
            except (ValueError, TypeError):
                continue
            if site is not None:
                warn_foreign_offsets(text, df[col], site.timezone, f"{path}: {col}",
                                     lambda i: _row_name_in(df, i))
    if starts is None or len(starts) != len(df) or starts == list(range(2, len(df) + 2)):
        starts = None  # one record a line: line = position + 2, no list kept
    return validate_sessions(df, site, row_labels=_Lines(starts))


def warn_foreign_offsets(text: pd.Series, times, tz: str | None, what: str, name) -> int:
    """Warn once when times carry a UTC offset that is not the site zone's at that instant.

    Such a time is a valid instant, so it is read as written; but ``18:00+05:00`` in a Berlin
    file is 14:00 local time, most likely a local time with a wrong offset (an arrival moved by
    3 h without a word, outside test). ``Z`` and ``+00:00`` (UTC written as such) are not warned about.

    Parameters
    ----------
    text : pandas.Series
        The times as written (strings).
    times : pandas.Series or DatetimeIndex
        The same times, parsed, timezone-aware.
    tz : str or None
        The site's time zone; None: nothing to compare with.
    what : str
        The file (or column) for the message.
    name : callable
        Row position -> how the row is named (``line N``).

    Returns
    -------
    int
        How many times carry a foreign offset.
    """
    if tz is None or not len(text):
        return 0
    m = text.astype("string").str.strip().str.extract(r"([+-])(\d{2}):?(\d{2})$")
    hours = pd.to_numeric(m[1], errors="coerce").to_numpy(float, na_value=np.nan)
    minutes = pd.to_numeric(m[2], errors="coerce").to_numpy(float, na_value=np.nan)
    written = (hours * 60 + minutes) * np.where((m[0] == "-").fillna(False).to_numpy(bool), -1, 1)
    idx = pd.DatetimeIndex(times)
    # Times near pandas' ends overflow in a zone: they are refused by the range check anyway.
    inside = np.asarray((idx >= TIME_MIN) & (idx <= TIME_MAX), dtype=bool)
    zone = np.full(len(idx), np.nan)
    sub = idx[inside]
    zone[inside] = ((sub.tz_convert(tz).tz_localize(None) - sub.tz_convert("UTC").tz_localize(None))
                    / pd.Timedelta(minutes=1)).to_numpy(float)
    odd = np.nonzero(inside & np.isfinite(written) & (written != 0) & (written != zone))[0]
    if not len(odd):
        return 0
    i = int(odd[0])
    key = ("offset", what, len(odd), str(text.iloc[i]))
    if key not in _warned and len(_warned) < 1000:
        _warned.add(key)
        local = idx[i].tz_convert(tz)
        log.warning("%s: %d time(s) carry a UTC offset that is not %s's at that instant; first %s: %r is %s local "
                    "time (%s). Read as the instant written; if it is a local time, its offset is wrong",
                    what, len(odd), tz, name(i), str(text.iloc[i]), local.strftime("%Y-%m-%d %H:%M"),
                    local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:])
    return int(len(odd))


class _Lines:
    """Row position -> "line N" of the CSV file (the header is line 1): each record's first
    line from :func:`scan_csv` when a record spans lines or blank lines are skipped (records
    were counted, and a row after a quoted newline was named a line too early), else
    position + 2 without a list."""

    def __init__(self, starts: list[int] | None = None) -> None:
        self.starts = starts

    def __getitem__(self, i: int) -> str:
        return f"line {self.starts[i] if self.starts is not None else i + 2}"


#: A timestamp that ends in a UTC offset ("Z", "+01:00", "+0100"): the only kind sessions.csv accepts.
ISO_OFFSET_RE = r"(?:Z|[+-]\d{2}:?\d{2})$"


def iso_times(times, tz: str | None = None) -> list[str]:
    """ISO 8601 text with the UTC offset (``2026-03-02T18:00:00+01:00``) of tz-aware ``times``.

    The one time format of every file nowblock writes: the site's time zone ``tz`` (the
    frame's own zone if None), always with its offset, so each value is exact on its own.

    Parameters
    ----------
    times : array-like of tz-aware timestamps
        A DatetimeIndex, a Series or a list.
    tz : str, optional
        An IANA time zone such as ``"Europe/Berlin"``.

    Returns
    -------
    list of str
        One string per time; missing times give an empty string.
    """
    idx = pd.DatetimeIndex(times)
    if idx.tz is None:
        raise ValueError("iso_times: times must be timezone-aware")
    if tz is not None:
        idx = idx.tz_convert(tz)
    text = pd.Series(idx.strftime("%Y-%m-%dT%H:%M:%S%z"), dtype="string").fillna("")
    # strftime gives +0100; ISO 8601's extended form (the one pandas reads back) is +01:00.
    out = (text.str[:-2] + ":" + text.str[-2:]).where(text != "", "").tolist()
    # Whole seconds keep the short form (files written before stay byte for byte the same); a
    # time with a fraction of a second keeps it, else a short session written and read back
    # could end before it starts.
    frac_ns = np.nan_to_num(np.asarray(idx.microsecond, dtype=float)) * 1000 + np.nan_to_num(
        np.asarray(idx.nanosecond, dtype=float))
    for i in np.nonzero(frac_ns > 0)[0]:
        t = out[i]
        cut = len(t) - 6  # before the offset "+01:00"
        out[i] = f"{t[:cut]}.{int(frac_ns[i]):09d}".rstrip("0") + t[cut:]
    return out


def write_sessions_csv(sessions: pd.DataFrame, path, tz: str | None = None) -> None:
    """Write a sessions frame as CSV with ISO 8601 timestamps that carry their offset.

    ``tz`` (for example the site's ``Europe/Berlin``) writes local times, easier to read;
    the default keeps the frame's own timezone (UTC after validation).
    """
    df = sessions.copy()
    for col in ("arrival", "departure"):
        df[col] = iso_times(df[col], tz)
    df.to_csv(path, index=False)
