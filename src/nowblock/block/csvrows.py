"""The rows of a CSV file as written: which record starts on which line, and what a row with
a field too many or too few most likely has wrong (a decimal comma, a separator at the row's
end, a ';'-separated file). Shared by ``sessions.csv`` and the time series ``base_load.csv``
and ``prices.csv``.
"""

from __future__ import annotations

import re

#: A decimal comma splits a number into a whole number and bare digits (``12,75``).
_INT_RE, _DIGITS_RE = re.compile(r"[+-]?\d+"), re.compile(r"\d+")


def separator_hint(columns) -> str:
    """A hint when a CSV was read as one column: its header holds ``;`` or a tab (a German Excel
    export writes ``;`` and decimal commas), else ``""``."""
    if len(columns) == 1 and any(sep in str(columns[0]) for sep in (";", "\t")):
        return ("; the header was read as one column: the file looks separated by ';' or tabs (a spreadsheet "
                "saved with a European locale?): nowblock reads comma-separated values with a decimal point")
    return ""


def scan_csv(path, required, numeric=()) -> tuple[tuple | None, list[int] | None]:
    """Each record's first line in CSV ``path``, and the first record with more fields than
    the header or with fewer and a ``required`` column among those missing.

    pandas fills a short row with NaN (the error then spoke of a bad value, not of a missing
    field); a long one (a decimal comma, ``30,5``) it refused with its own words ("Expected 5
    fields in line 3, saw 6") or, when every row had one more, took the first column for the
    index and shifted the rest ("departure 30 has no UTC offset"). Lines are the file's: a
    quoted value over two lines counts two, a blank line (which pandas skips) one.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file.
    required : sequence of str
        Columns a short row must still reach.
    numeric : sequence of str, or mapping of str to callable
        Number columns: in a long row, a whole number in one of them followed by a field of
        bare digits (``12,75``) may be a decimal comma. A mapping gives each column a test of
        the joined number (float -> bool): a pair whose number the column refuses (``3,1`` in
        ``phases``, which must be 1, 2 or 3) is no decimal comma to suggest.

    Returns
    -------
    bad : (int, int, int, bool, list) or None
        The bad record's first line (the header is line 1), its fields, the header's fields,
        whether the fields past the header's are all empty (a separator at the row's end), and
        the possible decimal commas: (column, next column or None, integer part, digits after).
        None are named when every row is full (its last column given) and has exactly one empty
        field past the header's: an export ending each row with ','. Read as decimal commas,
        every row would have one and its last column empty; ``12,75,,,`` (empty optional
        fields) keeps its pair.
    starts : list of int or None
        The first line of each record pandas reads (blank lines skipped), in order; None when
        the file could not be scanned.
    """
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = csv.reader(fh)
            header = next(rows, None)
            if header is None:
                return None, None
            n = len(header)
            valid = numeric if hasattr(numeric, "get") else dict.fromkeys(numeric, lambda v: True)
            need = max((header.index(c) for c in required if c in header), default=-1) + 1
            starts, bad, every_trailing = [], None, True
            line = rows.line_num + 1  # the line the next record starts on
            for row in rows:
                if row:
                    starts.append(line)
                    every_trailing = (every_trailing and len(row) == n + 1 and not row[n].strip()
                                      and bool(row[n - 1].strip()))
                    if bad is None and (len(row) > n or len(row) < min(need, n)):
                        pairs = [(header[i], header[i + 1] if i + 1 < n else None, row[i].strip(), row[i + 1].strip())
                                 for i in range(min(n, len(row) - 1)) if len(row) > n and header[i] in valid
                                 and _INT_RE.fullmatch(row[i].strip()) and _DIGITS_RE.fullmatch(row[i + 1].strip())
                                 and valid[header[i]](float(f"{row[i].strip()}.{row[i + 1].strip()}"))]
                        bad = (line, len(row), n, len(row) > n and not any(f.strip() for f in row[n:]), pairs)
                line = rows.line_num + 1
            if bad is not None and every_trailing:
                bad = bad[:4] + ([],)
            return bad, starts
    except (OSError, UnicodeDecodeError, csv.Error):  # pandas reads it, or says why not
        return None, None


def field_count_error(bad: tuple) -> str:
    """What :func:`scan_csv`'s bad row has wrong, for messages.

    An empty field past the header's is a separator at the row's end (a spreadsheet's export),
    not a decimal comma: every row of ``time,kw`` ending in ``,`` was named a decimal comma.
    Unless a number in it is followed by bare digits: ``12,75,,,`` under a header whose last
    columns are optional is either, and was named a trailing separator alone; removing the
    ',' at the end, as the message said, read energy_kwh 12 and max_current_a 75 in silence.

    Parameters
    ----------
    bad : tuple
        :func:`scan_csv`'s ``bad``.

    Returns
    -------
    str
        The message, starting with ``line N``.
    """
    line, fields, n, trailing, pairs = bad
    head = f"line {line}: {fields} fields, the header has {n}"
    quoted = " or ".join(f"'{a},{b}' in {col}" for col, _, a, b in pairs)
    if trailing and pairs:
        col, nxt, a, b = pairs[0]
        return (f"{head}: a decimal comma or a trailing separator: if {quoted} is one number, write it with a decimal "
                f"point ({a}.{b}: nowblock reads comma-separated values with a decimal point); if the row ends with "
                f"an empty field after the last column, remove that ','. Check which before editing: removing the ',' "
                f"at the end alone reads {col} {a} and {nxt} {b}")
    if trailing:
        return (f"{head}: the row ends with a trailing separator (an empty field after the last column); remove the "
                f"',' at the end of the rows")
    if fields > n:
        return (f"{head}: the row has more fields than the header (a decimal comma? nowblock reads comma-separated "
                f"values with a decimal point, 30.5 not 30,5" + (f"; {quoted}?" if quoted else "") + ")")
    return f"line {line}: {fields} field(s), the header has {n}: a value or a separator is missing"
