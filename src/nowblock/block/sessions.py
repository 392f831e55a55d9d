"""The sessions frame: one row per charging session, validated against a site.

Columns (the outside contract): ``session_id`` (str), ``charge_point_id`` (str), ``arrival``,
``departure`` (tz-aware timestamps), ``energy_kwh`` (requested) and the optional
``max_current_a`` (the car's own limit per phase [A]), ``phases`` (1, 2 or 3: how many phases
the car charges on), ``priority`` (weight of this session's shortfall, default 1). The
optional ``draw_fraction`` (0..1, default 1) tells the simulator that a car draws less than it
is offered; policies never see it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from nowblock.block.site import Site

REQUIRED = ("session_id", "charge_point_id", "arrival", "departure", "energy_kwh")
OPTIONAL_DEFAULTS = {"max_current_a": 32.0, "phases": 3, "priority": 1.0, "draw_fraction": 1.0}


class SessionsError(ValueError):
    """A sessions frame with a bad row; the message names the row (by session_id)."""


def _row_name(df: pd.DataFrame, i: int) -> str:
    return f"row {i} (session_id={df['session_id'].iloc[i]!r})"


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
                raise SessionsError(f"{_row_name(df, i)}: {col} {v!r} has no timezone (timestamps must be tz-aware)")
            parsed.append(t.tz_convert("UTC"))
        ts = pd.Series(pd.DatetimeIndex(parsed, tz="UTC"), index=raw.index)
    bad = ts.isna().to_numpy()
    if bad.any():
        raise SessionsError(f"{_row_name(df, int(np.argmax(bad)))}: {col} is missing")
    return ts.dt.tz_convert("UTC")


def validate_sessions(sessions: pd.DataFrame, site: "Site | None" = None) -> pd.DataFrame:
    """Check and normalise a sessions frame; return a new frame with every optional column.

    Raises :class:`SessionsError` naming the first bad row: a missing column, a timestamp
    without a timezone, departure not after arrival, negative or missing energy [kWh], an
    unknown charging point, phases not in {1, 2, 3}, a non-positive current limit [A], or two
    sessions on one charging point at the same time. Nothing in the input is modified.
    """
    if not isinstance(sessions, pd.DataFrame):
        raise SessionsError(f"sessions: expected a pandas DataFrame, got {type(sessions).__name__}")
    missing = [c for c in REQUIRED if c not in sessions.columns]
    if missing:
        raise SessionsError(f"sessions: missing column(s) {missing}")
    df = sessions.copy().reset_index(drop=True)
    for col in ("session_id", "charge_point_id"):
        gone = (df[col].isna() | (df[col].astype(str).str.strip() == "")).to_numpy()
        if gone.any():
            i = int(np.argmax(gone))
            raise SessionsError(f"row {i} (session_id={df['session_id'].iloc[i]!r}): {col} is missing")
        df[col] = df[col].astype(str)
    dup = df["session_id"].duplicated()
    if dup.any():
        raise SessionsError(f"{_row_name(df, int(np.argmax(dup.to_numpy())))}: duplicate session_id")
    for col in ("arrival", "departure"):
        df[col] = _to_utc(df, col)
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

    checks = [
        (df["departure"] <= df["arrival"], "departure is not after arrival"),
        (~((df["energy_kwh"] >= 0) & np.isfinite(df["energy_kwh"])), "energy_kwh must be a number >= 0"),
        (~df["phases"].isin([1, 2, 3]), "phases must be 1, 2 or 3"),
        (~((df["max_current_a"] > 0) & np.isfinite(df["max_current_a"])), "max_current_a must be > 0"),
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
    return df.sort_values("arrival", kind="stable").reset_index(drop=True)


def read_sessions_csv(path, site: "Site | None" = None) -> pd.DataFrame:
    """Read ``sessions.csv`` (ISO 8601 timestamps with offset) and validate it.

    A timestamp without an offset is reported by its row, never read as UTC.
    """
    try:
        df = pd.read_csv(path, dtype={"session_id": str, "charge_point_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SessionsError(f"{path}: cannot read sessions ({exc})") from exc
    for col in ("arrival", "departure"):
        if col not in df.columns:
            continue
        text = df[col].astype("string")
        if text.str.contains(ISO_OFFSET_RE, regex=True).fillna(False).all():
            try:  # fast path; whatever fails here is reported row by row in validate_sessions
                df[col] = pd.to_datetime(text, format="ISO8601", utc=True)
            except (ValueError, TypeError):
                pass
    return validate_sessions(df, site)


#: A timestamp that ends in a UTC offset ("Z", "+01:00", "+0100"): the only kind sessions.csv accepts.
ISO_OFFSET_RE = r"(?:Z|[+-]\d{2}:?\d{2})$"


def write_sessions_csv(sessions: pd.DataFrame, path, tz: str | None = None) -> None:
    """Write a sessions frame as CSV with ISO 8601 timestamps that carry their offset.

    ``tz`` (for example the site's ``Europe/Berlin``) writes local times, easier to read;
    the default keeps the frame's own timezone (UTC after validation).
    """
    df = sessions.copy()
    for col in ("arrival", "departure"):
        t = pd.DatetimeIndex(df[col])
        if tz is not None:
            t = t.tz_convert(tz)
        df[col] = [x.isoformat() for x in t]
    df.to_csv(path, index=False)
