"""What a study is: a grid of scenarios x policies x simulation options, and its cells.

A study file (TOML)::

    name = "connection-sizes"
    policies = ["uncontrolled", "equal", "edf", "milp"]
    scenario_dirs = ["blocks/north"]      # optional scenario folders, relative to this file

    [scenario]            # parameters of Scenario.default(...); a list is an axis of the grid
    days = 3
    grid_current_a = [100, 125, 160]

    [simulate]            # options of nowblock.simulate(...); a list is an axis too
    step = "5min"

    [policy_options.milp] # keyword options of one policy (nowblock.get_policy)
    time_limit_s = 10.0

``[[scenario]]`` (an array of tables) gives several grids, taken together. Each cell is one
(scenario, policy, simulate options) combination and has a stable ``cell_id``: a hash of what
it runs (for a folder, of the folder's files), so a re-run recognises finished cells.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

#: simulate() keywords a study may set (the others take Python objects, not TOML values).
#: ``days`` as ``nowblock simulate --days``: calendar days in the site's zone, so a study of
#: scenario folders can simulate their first week (``end`` is an instant; across a daylight
#: saving switch ``start`` + 7 x 24 h is an hour off).
SIMULATE_KEYS = ("step", "horizon", "start", "end", "days", "needs", "current_step_a")
#: Top-level keys of a study file (docs/formats.md lists them; tests/test_docs.py compares).
STUDY_KEYS = ("name", "policies", "scenario", "scenario_dirs", "simulate", "policy_options")

#: The scenario folder files whose bytes identify a folder scenario.
_SCENARIO_FILES = ("site.toml", "sessions.csv", "base_load.csv", "prices.csv")

DEFAULT_STUDY = Path(__file__).with_name("default.toml")


class StudyError(ValueError):
    """A study file or specification that cannot be run (names the key at fault)."""


def _generator_keys() -> tuple[str, ...]:
    from nowblock.block.synth import generate_parts

    return tuple(inspect.signature(generate_parts).parameters)


def _grid(table: Mapping[str, Any]) -> list[dict]:
    """The cartesian product of a table whose list values are axes (scalars are fixed)."""
    keys = list(table)
    axes = [v if isinstance(v, (list, tuple)) else [v] for v in table.values()]
    for k, a in zip(keys, axes):
        if len(a) == 0:
            raise StudyError(f"{k}: an empty list makes an empty study")
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def _folder_digest(path: Path) -> str:
    h = hashlib.sha256()
    for name in _SCENARIO_FILES:
        f = path / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One simulation of a study: a scenario, a policy, and the options of both.

    ``scenario`` holds either generator parameters (for ``Scenario.default``) or
    ``{"dir": folder}``; ``simulate`` the keywords for ``nowblock.simulate``.
    """

    scenario: dict
    policy: str
    simulate: dict = field(default_factory=dict)
    policy_options: dict = field(default_factory=dict)
    scenario_digest: str = ""

    @property
    def cell_id(self) -> str:
        """A stable hash of what the cell runs (16 hex digits)."""
        what = {"scenario": self.scenario, "digest": self.scenario_digest, "policy": self.policy,
                "simulate": self.simulate, "policy_options": self.policy_options}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def parameters(self) -> dict:
        """The cell's parameters as flat table columns (``scenario.*``, ``simulate.*``)."""
        row = {f"scenario.{k}": v for k, v in self.scenario.items()}
        row.update({f"simulate.{k}": v for k, v in self.simulate.items()})
        row["policy"] = self.policy
        row["policy_options"] = json.dumps(self.policy_options, sort_keys=True) if self.policy_options else ""
        return row


@dataclass
class Study:
    """A grid of scenarios x policies x simulate options (see the module docstring).

    Parameters
    ----------
    scenario : dict or list of dict, optional
        Generator grids: parameters of :func:`nowblock.block.synth.generate_parts`, a list
        value being an axis. ``{}`` is the default block alone, ``[]`` no generated block.
        Left out, it is ``{}`` without ``scenario_dirs`` and ``[]`` with them (the folders
        alone), as in a study file without ``[scenario]``.
    policies : list of str
        Policy names (:data:`nowblock.policies.POLICY_NAMES`).
    scenario_dirs : list of path
        Scenario folders, each a scenario of the study besides the generated ones (if any).
    simulate : dict
        ``nowblock.simulate`` keywords (:data:`SIMULATE_KEYS`), a list value being an axis.
    policy_options : dict
        Per policy name, its keyword options.
    name : str
        The study's name (plots, logs).
    """

    scenario: dict | list | None = None
    policies: list = field(default_factory=lambda: ["equal"])
    scenario_dirs: list = field(default_factory=list)
    simulate: dict = field(default_factory=dict)
    policy_options: dict = field(default_factory=dict)
    name: str = "study"

    def __post_init__(self) -> None:
        from nowblock.policies import POLICY_NAMES

        # None means "not given": the keywords, a dict and a study file must agree that folders
        # alone make the study, and the default block is there only when nothing else is.
        if self.scenario is None:
            self.scenario = [] if self.scenario_dirs else {}
        if isinstance(self.policies, str):
            self.policies = [self.policies]
        if not self.policies:
            raise StudyError("policies: name at least one policy")
        for p in self.policies:
            if not isinstance(p, str) or p.strip().lower() not in POLICY_NAMES:
                raise StudyError(f"policies: unknown policy {p!r}; choose from {', '.join(POLICY_NAMES)}")
        grids = self.scenario if isinstance(self.scenario, list) else [self.scenario]
        if not self.scenario_dirs and not grids:
            raise StudyError("scenario: give generator parameters or scenario_dirs")
        allowed = _generator_keys()
        for g in grids:
            if not isinstance(g, Mapping):
                raise StudyError(f"scenario: expected a table of generator parameters, got {g!r}")
            bad = sorted(set(g) - set(allowed))
            if bad:
                raise StudyError(f"scenario: unknown generator parameter(s) {bad}; known: {', '.join(allowed)}")
        bad = sorted(set(self.simulate) - set(SIMULATE_KEYS))
        if bad:
            raise StudyError(f"simulate: unknown option(s) {bad}; a study may set {', '.join(SIMULATE_KEYS)}")
        _check_days(self.simulate)
        _check_durations(self.simulate)
        for p, opts in self.policy_options.items():
            if p.strip().lower() not in POLICY_NAMES or not isinstance(opts, Mapping):
                raise StudyError(f"policy_options.{p}: expected a table for one of {', '.join(POLICY_NAMES)}")
        for d in self.scenario_dirs:
            if not (Path(d) / "site.toml").is_file():
                raise StudyError(f"scenario_dirs: {d} is not a scenario folder (no site.toml)")

    @classmethod
    def from_toml(cls, path: str | Path) -> "Study":
        """Read a study file; ``scenario_dirs`` are relative to the file's folder."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise StudyError(f"{p}: cannot read the study file ({exc})") from exc
        return cls.from_dict(data, base=p.parent, default_name=p.stem)

    @classmethod
    def from_dict(cls, data: Mapping, *, base: Path | None = None, default_name: str = "study") -> "Study":
        """A study from the study file's structure (``scenario_dirs`` relative to ``base``)."""
        known = set(STUDY_KEYS)
        bad = sorted(set(data) - known)
        if bad:
            raise StudyError(f"unknown key(s) {bad} in the study; known: {', '.join(sorted(known))}")
        dirs = [str((base / d).resolve()) if base is not None else str(d) for d in data.get("scenario_dirs", [])]
        return cls(scenario=_iso(data.get("scenario")), policies=list(data.get("policies", ["equal"])),
                   scenario_dirs=dirs, simulate=_iso(dict(data.get("simulate", {}))),
                   policy_options=dict(data.get("policy_options", {})), name=str(data.get("name", default_name)))

    @classmethod
    def default(cls) -> "Study":
        """The embedded default study: 3 connection sizes x 4 policies on the default block."""
        return cls.from_toml(DEFAULT_STUDY)

    def to_dict(self) -> dict:
        """The study file's structure (for writing it next to the results)."""
        out = {"name": self.name, "policies": list(self.policies), "scenario": self.scenario,
               "scenario_dirs": [str(d) for d in self.scenario_dirs], "simulate": self.simulate,
               "policy_options": self.policy_options}
        # ``scenario`` stays unless it is what leaving it out gives: with folders, ``{}`` (the
        # default block besides them) differs from the default ``[]`` and must survive a re-read.
        implied = [] if self.scenario_dirs else {}
        return {k: v for k, v in out.items()
                if (v != implied if k == "scenario" else v not in ({}, [], ""))}

    def cells(self) -> list[Cell]:
        """Every cell, in a stable order: scenarios, then simulate options, then policies."""
        scenarios: list[tuple[dict, str]] = []
        grids = self.scenario if isinstance(self.scenario, list) else [self.scenario]
        for g in grids:
            scenarios += [(params, "") for params in _grid(g)]
        for d in self.scenario_dirs:
            scenarios.append(({"dir": str(Path(d).resolve())}, _folder_digest(Path(d))))
        options = _grid(self.simulate) if self.simulate else [{}]
        cells = []
        for (params, digest), opts, policy in itertools.product(scenarios, options, self.policies):
            key = policy.strip().lower()
            cells.append(Cell(scenario=params, policy=key, simulate=opts,
                              policy_options=dict(self.policy_options.get(key, {})), scenario_digest=digest))
        ids = [c.cell_id for c in cells]
        if len(set(ids)) != len(ids):
            raise StudyError("the study lists the same cell twice (a repeated value on an axis?)")
        return cells


def _check_days(simulate: Mapping[str, Any]) -> None:
    """Refuse ``[simulate] days`` that no cell could run: with ``end``, or not a positive number
    (every cell would end in simulate's ValueError, after the study started)."""
    if "days" not in simulate:
        return
    if "end" in simulate:
        raise StudyError("simulate: give end or days, not both")
    values = simulate["days"] if isinstance(simulate["days"], (list, tuple)) else [simulate["days"]]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise StudyError(f"simulate.days: expected a positive number of calendar days, got {v!r}")


def _check_durations(simulate: Mapping[str, Any]) -> None:
    """Refuse a ``[simulate] step`` or ``horizon`` that is not a positive duration with its unit
    (``step = 5`` in TOML is a number: every cell ended in simulate's error, after the study
    started), with simulate's own check and words."""
    from nowblock.milp.inputs import check_duration

    for key in ("step", "horizon"):
        if key not in simulate:
            continue
        for v in simulate[key] if isinstance(simulate[key], (list, tuple)) else [simulate[key]]:
            try:
                check_duration(v, key)
            except (TypeError, ValueError) as exc:
                raise StudyError(f"simulate.{exc}") from None


def _iso(value):
    """``value`` with every TOML date/time in it as ISO 8601 text (what ``simulate`` and the
    scenario generator read): an axis mixing a string and a TOML datetime could not be written to
    Parquet (an outside test: the study stopped with ArrowTypeError, results.parquet never written)."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return [_iso(v) for v in value]
    if isinstance(value, dict):
        return {k: _iso(v) for k, v in value.items()}
    return value
