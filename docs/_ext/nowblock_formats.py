"""The file formats of nowblock as data, and a Sphinx directive that renders them as tables.

Defaults and limits are read from the code (the dataclass defaults, the validation constants),
so the page cannot drift from what the readers accept; tests/test_docs.py checks the key sets
against the readers and tries every documented limit.

In a page::

    ```{nowblock-format} site
    ```
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Field:
    """One key of a file (or one column): what it holds, in which unit, its default and limits."""

    key: str
    type: str
    unit: str = ""
    default: Any = "required"  # a value, "required", "optional", or a callable giving the value
    allowed: str = ""
    meaning: str = ""

    def default_text(self) -> str:
        v = self.default() if callable(self.default) else self.default
        if v in ("required", "optional"):
            return v
        if isinstance(v, str):
            # A string default is shown as TOML writes it; any other type's default is given in
            # TOML already ("[]", '["equal"]'), and a default in parentheses is prose.
            return f'"{v}"' if self.type == "string" and not v.startswith("(") else v
        if isinstance(v, float) and v.is_integer():
            return f"{v:g}"
        return str(v)


def _dc_default(cls_path: str, name: str) -> Callable[[], Any]:
    def get():
        mod, cls = cls_path.rsplit(".", 1)
        import importlib

        klass = getattr(importlib.import_module(mod), cls)
        return next(f.default for f in dataclasses.fields(klass) if f.name == name)

    return get


def _const(mod: str, name: str, fmt: Callable[[Any], str] = str) -> str:
    import importlib

    return fmt(getattr(importlib.import_module(mod), name))


def _site_tables() -> dict[str, list[Field]]:
    site = "nowblock.block.site"
    lo, hi = _const(site, "VOLTAGE_RANGE_V", lambda r: r)
    fuse_max = _const(site, "MAX_FUSE_CURRENT_A", lambda v: f"{v:g}")
    cp_max = _const(site, "MAX_CHARGE_POINT_CURRENT_A", lambda v: f"{v:g}")
    return {
        "site": [
            Field("name", "string", default="site", meaning="The block's name (plots, logs, the HTTP API)."),
            Field("voltage_v", "number", "V", _dc_default(f"{site}.Site", "voltage_v"), f"{lo:g} .. {hi:g}",
                  "Phase-to-neutral voltage: 230 in Europe (400 V is line to line)."),
            Field("timezone", "string", "", _dc_default(f"{site}.Site", "timezone"), "an IANA name",
                  "The site's time zone: cap windows are local wall-clock times, and every file "
                  "nowblock writes gives times in this zone with their offset."),
            Field("max_unbalance_a", "number", "A", "optional", ">= 0",
                  "Largest difference between the most and least loaded phase of the grid "
                  "connection's charging current (VDE-AR-N 4100: 20 A, i.e. 4.6 kVA at 230 V). "
                  "Unset: no limit."),
            Field("fuses", "array of tables", "", "required", "at least one",
                  "`[[fuses]]`: the fuse tree. Exactly one fuse has no parent: the grid connection."),
            Field("charge_points", "array of tables", "", "[]", "",
                  "`[[charge_points]]`: the charging points, each behind one fuse."),
            Field("api", "table", "", "optional", "",
                  "`[api]`: settings of the HTTP API of `nowblock serve` (below)."),
        ],
        "fuse": [
            Field("id", "string", default="required", allowed="unique among fuses",
                  meaning="The fuse's name."),
            Field("parent", "string", default="optional", allowed="the id of another fuse",
                  meaning="The fuse upstream. Left out for the grid connection (the root)."),
            Field("max_current_a", "number or [L1, L2, L3]", "A", "required", f"> 0, <= {fuse_max} (see meaning)",
                  "Rating per phase; one number means the same on all three phases. Above "
                  f"{fuse_max} A is more than a low-voltage connection carries: refused, unless the charging "
                  "points below the fuse could draw that much together (then it is an aggregate cap, "
                  "accepted with a warning)."),
        ],
        "charge_point": [
            Field("id", "string", default="required", allowed="unique",
                  meaning="The OCPP identity: the charger connects to `ws://host:port/<id>`."),
            Field("fuse", "string", default="required", allowed="the id of a fuse",
                  meaning="The fuse it sits behind (every fuse up to the grid connection carries its current)."),
            Field("max_current_a", "number", "A", _dc_default(f"{site}.ChargePoint", "max_current_a"),
                  f"> 0, <= {cp_max}", "Most current per phase the charging point may give, over all its "
                                        "connectors/EVSEs together (AC charging: at most 63 A in Europe, 80 A "
                                        "in North America)."),
            Field("min_current_a", "number", "A", _dc_default(f"{site}.ChargePoint", "min_current_a"),
                  ">= 0, <= max_current_a",
                  "Least current a charging car may be given (IEC 61851: 6 A); below it the car gets 0."),
            Field("phases", "integer", "", _dc_default(f"{site}.ChargePoint", "phases"), "1 or 3",
                  "How many phases the charging point is connected with."),
            Field("phase_rotation", "string", "", _dc_default(f"{site}.ChargePoint", "phase_rotation"),
                  "a permutation of L1L2L3",
                  "The grid phases wired to the charger's L1, L2, L3: a 1-phase car on a charger "
                  "wired `L2L3L1` loads grid phase L2."),
            Field("caps", "array of tables", "", "[]", "",
                  "`[[charge_points.caps]]`: a lower maximum inside a daily time window (below)."),
            Field("password_hash", "string", "", "optional", "",
                  "OCPP security profile 1: hash of the charger's password (docs: OCPP page)."),
        ],
        "cap": [
            Field("start", "string", "local time", "required", '"HH:MM", 00:00 .. 24:00',
                  "Start of the window, local wall-clock time of the site's `timezone`."),
            Field("end", "string", "local time", "required", '"HH:MM"',
                  "End of the window; an end before the start wraps past midnight."),
            Field("max_current_a", "number", "A", "required", ">= 0",
                  "Most current per phase inside the window (for example section 14a EnWG dimming); a "
                  "simulation step or plan slot that overlaps the window at all is capped."),
        ],
        "api": [
            Field("token_hashes", "array of strings", "", "[]", '"sha256:<hex>"',
                  "Hashes of the bearer tokens allowed to write through the HTTP API "
                  "(`nowblock serve --http-port`); also `--http-token-hash` and the environment."),
        ],
    }


def _sessions_table() -> list[Field]:
    from nowblock.block.sessions import LARGE_BATTERY_KWH, MAX_ENERGY_KWH, OPTIONAL_DEFAULTS, TIME_MAX, TIME_MIN
    from nowblock.block.site import MAX_CHARGE_POINT_CURRENT_A as cp_max

    d = OPTIONAL_DEFAULTS
    return [
        Field("session_id", "string", "", "required", "unique", "The session's name."),
        Field("charge_point_id", "string", "", "required", "an `id` of the site's charging points",
              "Where the car plugs in."),
        Field("arrival", "timestamp", "ISO 8601 with offset", "required",
              f"{TIME_MIN:%Y-%m-%d} .. {TIME_MAX:%Y-%m-%d} UTC",
              "When the car plugs in, e.g. `2026-03-02T18:00:00+01:00`. A time without an offset is refused."),
        Field("departure", "timestamp", "ISO 8601 with offset", "required", "after arrival, <= "
              f"{TIME_MAX:%Y-%m-%d} UTC",
              "When the car leaves. Sessions on one charging point must not overlap. An export's open end "
              "(`9999-12-31`) is refused: nowblock computes in pandas' nanosecond timestamps."),
        Field("energy_kwh", "number", "kWh", "required", f">= 0, <= {MAX_ENERGY_KWH:g}",
              f"Energy the car asks for. Above {LARGE_BATTERY_KWH:g} kWh (a large car battery), or above "
              "what the car can draw in its stay, is accepted with a warning; above "
              f"{MAX_ENERGY_KWH:g} kWh it is refused (Wh given as kWh?)."),
        Field("max_current_a", "number", "A", d["max_current_a"], f"> 0, <= {cp_max:g}",
              "The car's own limit per phase (the charging point's may be lower). Above "
              f"{cp_max:g} A, more than AC charging carries, it is refused (mA given as A?)."),
        Field("phases", "integer", "", d["phases"], "1, 2 or 3", "How many phases the car charges on."),
        Field("priority", "number", "", d["priority"], ">= 0",
              "Weight of this session's shortfall when not every car can be served."),
        Field("draw_fraction", "number", "", d["draw_fraction"], "0 .. 1",
              "Simulation only: the car draws this fraction of what it is offered. Policies never see it."),
    ]


def _series_tables() -> dict[str, list[Field]]:
    from nowblock.block.scenario import MAX_PRICE_EUR_PER_KWH as price_max
    from nowblock.block.scenario import PLAUSIBLE_PRICE_EUR_PER_KWH as price_warn
    from nowblock.block.sessions import TIME_MAX, TIME_MIN

    when = f"unique, {TIME_MIN:%Y-%m-%d} .. {TIME_MAX:%Y-%m-%d} UTC"
    return {
        "base_load": [
            Field("time", "timestamp", "ISO 8601 with offset", "required", when,
                  "Start of the interval the value holds for (until the next row)."),
            Field("kw", "number", "kW", "required", "",
                  "The block's load other than charging, net of local generation (negative when it "
                  "feeds in). Spread evenly over the three phases of the grid connection."),
        ],
        "prices": [
            Field("time", "timestamp", "ISO 8601 with offset", "required", when,
                  "Start of the interval the price holds for."),
            Field("eur_per_kwh", "number", "EUR/kWh", "required", f"-{price_max:g} .. {price_max:g}",
                  "Price of energy drawn in that interval (used by cost_eur and the MILP's objective). "
                  f"Beyond {price_max:g} EUR/kWh either way it is refused (EUR/MWh given as EUR/kWh?); beyond "
                  f"{price_warn:g} EUR/kWh it is warned about (a scarcity hour, or ct/kWh)."),
        ],
    }


#: How a Python default's type is called in a TOML file.
_TOML_TYPE = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}


def _study_tables() -> dict[str, list[Field]]:
    from nowblock.block.synth import generate_parts
    from nowblock.studies.spec import SIMULATE_KEYS

    gen = inspect.signature(generate_parts).parameters
    sim_defaults = inspect.signature(__import__("nowblock.sim.simulator", fromlist=["simulate"]).simulate).parameters
    return {
        "study": [
            Field("name", "string", "", "(the file's name without .toml)", "", "The study's name (plots, output folder)."),
            Field("policies", "array of strings", "", '["equal"]', "policy names",
                  "Policies to run in every cell: uncontrolled, equal, edf, llf, milp."),
            Field("scenario", "table or array of tables", "", "{}, or none with scenario_dirs", "",
                  "`[scenario]`: parameters of the default block's generator (below); a list value is an "
                  "axis of the grid. `[[scenario]]` gives several grids. Left out with `scenario_dirs`, the "
                  "study runs the folders alone."),
            Field("scenario_dirs", "array of strings", "", "[]", "scenario folders",
                  "Scenario folders (relative to the study file), each one more scenario."),
            Field("simulate", "table", "", "{}", "",
                  "`[simulate]`: options of `nowblock.simulate` (below); a list value is an axis."),
            Field("policy_options", "table of tables", "", "{}", "",
                  "`[policy_options.<policy>]`: keyword options of that policy (e.g. the MILP's)."),
        ],
        "study_scenario": [
            Field(k, _TOML_TYPE.get(type(p.default).__name__, "number") if p.default is not None else "number", "",
                  p.default if p.default is not None else "optional", "", "")
            for k, p in gen.items()
        ],
        "study_simulate": [
            Field(k, "number" if k == "days" else "string" if isinstance(sim_defaults[k].default, str)
                  or sim_defaults[k].default is None
                  else _TOML_TYPE.get(type(sim_defaults[k].default).__name__, "number"), "",
                  sim_defaults[k].default if sim_defaults[k].default is not None else "optional", "", "")
            for k in SIMULATE_KEYS
        ],
    }


#: What each units hint in the generator's parameter table means (the names carry the units).
_GENERATOR_MEANING = {
    "n_charge_points": "Wallboxes in the block.",
    "n_households": "Flats (default: 2.5 per wallbox).",
    "grid_current_a": "Grid connection rating per phase [A]; default: sized from the reference week.",
    "days": "Days generated.",
    "start": "First day (local midnight of the site's zone).",
    "seed": "Random seed: the same seed gives the same block.",
    "step": "Spacing of the base-load and price series.",
    "congestion": "How far below the uncontrolled peak the default connection is sized (0 .. 1).",
    "n_feeders": "Feeder fuses under the grid connection.",
    "share_22kw": "Share of 22 kW (32 A, 3-phase) wallboxes.",
    "annual_kwh_per_household": "Yearly consumption of one flat [kWh].",
    "load_profile": "BDEW standard load profile of the flats.",
    "surcharge_eur_per_kwh": "Taxes and fees added to the day-ahead price [EUR/kWh].",
    "max_unbalance_a": "Phase unbalance limit of the site [A]; unset: none.",
}

_SIMULATE_MEANING = {
    "step": "Control step (a pandas offset such as 5min).",
    "horizon": "How far ahead base load and prices reach in each step.",
    "start": "First simulated time (default: the first arrival).",
    "end": "End of the simulated window (default: the last departure).",
    "days": "Calendar days to simulate from start in the site's time zone, instead of end "
            "(as nowblock simulate --days).",
    "needs": "known: the policy sees real departures and energies; unknown: it estimates them.",
    "current_step_a": "Pilot-signal granularity [A].",
}


def tables() -> dict[str, list[Field]]:
    """Every documented table: name -> fields (defaults and limits read from the code)."""
    out: dict[str, list[Field]] = {}
    out.update(_site_tables())
    out["sessions"] = _sessions_table()
    out.update(_series_tables())
    study = _study_tables()
    study["study_scenario"] = [dataclasses.replace(f, meaning=_GENERATOR_MEANING.get(f.key, ""))
                               for f in study["study_scenario"]]
    study["study_simulate"] = [dataclasses.replace(f, meaning=_SIMULATE_MEANING.get(f.key, ""))
                               for f in study["study_simulate"]]
    out.update(study)
    return out


# ---- Sphinx --------------------------------------------------------------------------------------
def _table_node(directive, fields: list[Field]):
    from docutils import nodes

    headers = ["key", "type", "unit", "default", "allowed", "meaning"]
    widths = [14, 12, 9, 10, 14, 41]
    table = nodes.table(classes=["nowblock-format"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    for w in widths:
        group += nodes.colspec(colwidth=w)
    head = nodes.thead()
    group += head
    row = nodes.row()
    for h in headers:
        row += nodes.entry("", nodes.paragraph(text=h))
    head += row
    body = nodes.tbody()
    group += body
    for f in fields:
        row = nodes.row()
        row += nodes.entry("", nodes.paragraph("", "", nodes.literal(text=f.key)))
        for text in (f.type, f.unit, f.default_text(), f.allowed):
            row += nodes.entry("", nodes.paragraph(text=text))
        inline, messages = directive.state.inline_text(f.meaning, directive.lineno)
        row += nodes.entry("", nodes.paragraph("", "", *inline), *messages)
        body += row
    return table


def _directive():
    from docutils.parsers.rst import Directive

    class FormatTable(Directive):
        """``{nowblock-format} NAME``: the table NAME of :func:`tables`."""

        required_arguments = 1
        has_content = False

        def run(self):
            name = self.arguments[0]
            all_tables = tables()
            if name not in all_tables:
                raise self.error(f"nowblock-format: unknown table {name!r}; known: {', '.join(all_tables)}")
            return [_table_node(self, all_tables[name])]

    return FormatTable


def setup(app):
    app.add_directive("nowblock-format", _directive())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
