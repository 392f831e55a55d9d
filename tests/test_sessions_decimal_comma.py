"""A decimal comma in a row whose optional trailing fields are empty (outside test s37 F1).

``s3,CP01,...,12,75,,,`` under a header with max_current_a, phases and priority was named a
trailing separator alone, and the message's edit (remove the ',' at the end) read energy_kwh
12 kWh and max_current_a 75 A without a word. Such a row is either: the message names both
causes, quotes the pair, and says what removing the ',' alone would read.
"""

import re

import pytest

from nowblock.block.scenario import ScenarioError, read_base_load_csv
from nowblock.block.sessions import SessionsError, read_sessions_csv
from nowblock.block.site import ChargePoint, Fuse, Site

HEAD = "session_id,charge_point_id,arrival,departure,energy_kwh,max_current_a,phases,priority\n"
STAY1 = "2026-07-01T18:00:00+02:00,2026-07-02T06:00:00+02:00"
STAY2 = "2026-07-02T18:00:00+02:00,2026-07-03T06:00:00+02:00"


def _site() -> Site:
    return Site(name="t", fuses=(Fuse("grid", (63.0,) * 3),),
                charge_points=(ChargePoint("CP01", "grid", max_current_a=32.0),), voltage_v=230.0,
                timezone="Europe/Berlin")


def _error(tmp_path, text: str) -> str:
    path = tmp_path / "sessions.csv"
    path.write_text(text)
    with pytest.raises(SessionsError) as err:
        read_sessions_csv(path, _site())
    return str(err.value)


def test_a_decimal_comma_before_empty_optional_fields_names_both_causes(tmp_path):
    msg = _error(tmp_path, HEAD + f"s1,CP01,{STAY1},8.5,,,\n" + f"s2,CP01,{STAY2},12,75,,,\n")
    assert "line 3: 9 fields, the header has 8" in msg
    assert "decimal comma" in msg and "trailing separator" in msg
    assert "'12,75' in energy_kwh" in msg and "12.75" in msg
    # what the old message's edit would have read, said before anyone makes it
    assert "reads energy_kwh 12 and max_current_a 75" in msg
    assert "remove the ',' at the end of the rows" not in msg


def test_following_the_message_is_never_a_silent_change(tmp_path):
    # The message's unconditional edit is gone; the decimal point it names reads the value meant.
    path = tmp_path / "sessions.csv"
    msg = _error(tmp_path, HEAD + f"s1,CP01,{STAY1},12,75,,,\n")
    point = re.search(r"write it with a decimal point \((\d+\.\d+)", msg).group(1)
    path.write_text(HEAD + f"s1,CP01,{STAY1},{point},,\n")
    assert read_sessions_csv(path, _site())["energy_kwh"].iloc[0] == 12.75


def test_a_trailing_separator_alone_is_still_named_alone(tmp_path):
    for row in (f"s1,CP01,{STAY1},12.5,,,,\n", f"s1,CP01,{STAY1},12,,,,\n",
                # ids of bare digits are no decimal comma: only number columns are looked at
                f"17,CP01,{STAY1},12.5,16,,,\n"):
        msg = _error(tmp_path, HEAD + row)
        assert "trailing separator" in msg and "decimal comma" not in msg, row


def test_an_export_of_full_rows_each_ending_in_a_separator_names_the_separator_alone(tmp_path):
    # Every row's last column given and one empty field after it: a spreadsheet's trailing ','.
    # Read as decimal commas, each row would hold one and leave priority empty.
    rows = [f"s1,CP01,{STAY1},12.5,16,3,1,\n", f"s2,CP01,{STAY2},20.0,32,1,2,\n"]
    for text in (HEAD + rows[0], HEAD + "".join(rows)):
        msg = _error(tmp_path, text)
        assert "line 2: 9 fields, the header has 8" in msg
        assert "trailing separator" in msg and "decimal comma" not in msg and "'16,3'" not in msg
    # the edit it names reads every row as meant
    path = tmp_path / "sessions.csv"
    path.write_text(HEAD + "".join(r.replace(",\n", "\n") for r in rows))
    got = read_sessions_csv(path, _site())
    assert got["max_current_a"].tolist() == [16.0, 32.0] and got["phases"].tolist() == [3, 1]
    assert got["priority"].tolist() == [1.0, 2.0]


def test_a_pair_its_column_refuses_is_not_suggested(tmp_path):
    # 16,3 may be 16.3 A; 3,1 cannot be phases (1, 2 or 3), 5,2 no draw_fraction (0..1), 1200,5
    # no energy (<= 1000 kWh): the message quotes only what the column would take
    msg = _error(tmp_path, HEAD + f"s0,CP01,{STAY2},8.5,,,\n" + f"s1,CP01,{STAY1},12.5,16,3,1,\n")
    assert "'16,3' in max_current_a" in msg and "'3,1'" not in msg and "trailing separator" in msg
    head = "session_id,charge_point_id,arrival,departure,energy_kwh,draw_fraction,note\n"
    msg = _error(tmp_path, head + f"s0,CP01,{STAY2},8.5,1,x\n" + f"s1,CP01,{STAY1},1200,5,2,\n")
    assert "'5,2'" not in msg and "'1200,5'" not in msg and "decimal comma" not in msg
    assert "trailing separator" in msg
    path = tmp_path / "sessions.csv"  # the phases read back as the pair would be refused
    path.write_text(HEAD + f"s1,CP01,{STAY1},12.5,16,3.1,\n")
    with pytest.raises(SessionsError, match="phases must be 1, 2 or 3"):
        read_sessions_csv(path, _site())


def test_a_decimal_comma_with_a_field_too_many_quotes_the_pair(tmp_path):
    msg = _error(tmp_path, "session_id,charge_point_id,arrival,departure,energy_kwh\n" + f"s1,CP01,{STAY1},20,5\n")
    assert "a decimal comma?" in msg and "'20,5' in energy_kwh" in msg and "trailing" not in msg


def test_a_series_file_follows_the_same_rule(tmp_path):
    path = tmp_path / "base_load.csv"
    path.write_text("time,kw,note\n2026-07-01T18:00:00+02:00,3,5,\n2026-07-01T19:00:00+02:00,4,,\n")
    with pytest.raises(ScenarioError) as err:
        read_base_load_csv(path, _site())
    msg = str(err.value)
    assert "line 2: 4 fields, the header has 3" in msg and "decimal comma or a trailing separator" in msg
    assert "'3,5' in kw" in msg and "reads kw 3 and note 5" in msg
    # the time column's digits are not a number column's
    path.write_text("time,kw,note\n2026-07-01T18:00:00+02:00,3.5,,\n")
    with pytest.raises(ScenarioError, match="trailing separator") as err:
        read_base_load_csv(path, _site())
    assert "decimal comma" not in str(err.value)
