"""The documentation site: it builds with warnings as errors, its file-format tables match the
readers, every documented limit is enforced, and every Python example on its pages runs.

Examples are the ```python fences of docs/**/*.md. A page's fences run in order in one namespace
(a later fence may use what an earlier one made), in a fresh working directory; top-level
``await`` is allowed. A fence may be left out only by a MyST comment line directly above it,
``% not executed: <reason>``; the reasons are listed by ``test_skipped_examples_say_why``.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import logging
import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

import nowblock as nb
from nowblock.block import sessions as sessions_mod
from nowblock.block import site as site_mod

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import nowblock_formats  # noqa: E402

FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"^%\s*not executed:\s*(.*)$")


def python_fences(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, skip reason or None) of every ```python fence of ``page``."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.match(before)
        out.append((line, m.group(2), skip.group(1).strip() if skip else None))
    return out


PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
EXAMPLE_PAGES = [p for p in PAGES if any(s is None for _, _, s in python_fences(p))]


# ---- the site ------------------------------------------------------------------------------------
DOC_TOOLS = ("sphinx", "myst_parser", "numpydoc", "pydata_sphinx_theme", "sphinxarg")


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    import importlib.util

    missing = [m for m in DOC_TOOLS if importlib.util.find_spec(m) is None]
    if missing:  # the README's test command installs them (the docs extra is part of the test extra)
        if os.environ.get("CI"):
            pytest.fail(f"the docs extra is not installed ({', '.join(missing)} missing)")
        pytest.skip(f"the docs extra is not installed ({', '.join(missing)} missing): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
                        "-d", str(out / ".doctrees"), str(DOCS), str(out / "html")],
                       capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0, f"sphinx failed (warnings are errors):\n{r.stdout}\n{r.stderr}"
    return out / "html"


def test_site_builds_with_every_page(built_site):
    for page in PAGES:
        rel = page.relative_to(DOCS).with_suffix(".html")
        assert (built_site / rel).is_file(), f"{rel} not built"
    for page in ("getting-started", "concepts", "formats", "howto/own-block", "howto/own-policy",
                 "howto/real-chargers", "howto/pyomo-block", "reference/api", "reference/cli", "changelog"):
        text = (DOCS / f"{page}.md").read_text()
        assert not re.search(r"\bTODO\b", text), f"{page}.md has a TODO"
        assert len(text) > 600, f"{page}.md is a placeholder"


def test_formats_page_shows_every_documented_key(built_site):
    html = (built_site / "formats.html").read_text()
    for name, fields in nowblock_formats.tables().items():
        for f in fields:
            assert f"<span class=\"pre\">{f.key}</span>" in html, (name, f.key)
    assert "16000" not in html and f"{site_mod.MAX_FUSE_CURRENT_A:g}" in html


def test_cli_reference_lists_every_option(built_site):
    html = (built_site / "reference" / "cli.html").read_text()
    from nowblock.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            for opt in action.option_strings:
                assert opt in html, (name, opt)


def test_api_reference_documents_the_public_names(built_site):
    html = (built_site / "reference" / "api.html").read_text()
    for name in nb.__all__:  # documented under nowblock or under the subpackage that holds it
        assert re.search(rf'id="nowblock(\.\w+)*\.{name}"', html), name
    for name in ("nowblock.seam.make_safe", "nowblock.seam.BlockSnapshot", "nowblock.milp.pyomo_model.build_block",
                 "nowblock.policies.get_policy"):
        assert f'id="{name}"' in html, name


# ---- file formats against the readers ------------------------------------------------------------
def keys(table: str) -> list[str]:
    return [f.key for f in nowblock_formats.tables()[table]]


def test_format_tables_list_exactly_the_keys_the_readers_accept():
    from nowblock.block.synth import generate_parts
    from nowblock.studies.spec import SIMULATE_KEYS, STUDY_KEYS

    assert set(keys("site")) == set(site_mod.SITE_KEYS) | set(site_mod.EXTENSION_KEYS)
    assert set(keys("fuse")) == site_mod._FUSE_KEYS
    assert set(keys("charge_point")) == site_mod._CP_KEYS
    assert set(keys("cap")) == site_mod._CAP_KEYS
    assert keys("sessions") == [*sessions_mod.REQUIRED, *sessions_mod.OPTIONAL_DEFAULTS]
    assert keys("base_load") == ["time", "kw"] and keys("prices") == ["time", "eur_per_kwh"]
    assert set(keys("study")) == set(STUDY_KEYS)
    assert keys("study_scenario") == list(inspect.signature(generate_parts).parameters)
    assert keys("study_simulate") == list(SIMULATE_KEYS)
    from nowblock.api.auth import token_hashes

    assert keys("api") == ["token_hashes"]
    assert token_hashes({"api": {"token_hashes": ["sha256:" + "0" * 64]}}, env={}) == ["sha256:" + "0" * 64]


def test_every_table_row_says_what_it_means():
    for name, fields in nowblock_formats.tables().items():
        for f in fields:
            assert f.meaning.strip(), (name, f.key)


MINIMAL_SITE = """
[[fuses]]
id = "grid"
max_current_a = 100
[[charge_points]]
id = "CP01"
fuse = "grid"
"""


def documented_default(table: str, key: str):
    f = next(f for f in nowblock_formats.tables()[table] if f.key == key)
    text = f.default_text()
    return text.strip('"')


def test_documented_defaults_are_what_a_minimal_site_gets(tmp_path):
    (tmp_path / "site.toml").write_text(MINIMAL_SITE)
    site = nb.Site.from_toml(tmp_path / "site.toml")
    assert documented_default("site", "name") == site.name
    assert float(documented_default("site", "voltage_v")) == site.voltage_v
    assert documented_default("site", "timezone") == site.timezone
    assert site.max_unbalance_a is None and documented_default("site", "max_unbalance_a") == "optional"
    cp = site.charge_points[0]
    assert float(documented_default("charge_point", "max_current_a")) == cp.max_current_a
    assert float(documented_default("charge_point", "min_current_a")) == cp.min_current_a
    assert int(documented_default("charge_point", "phases")) == cp.phases
    assert documented_default("charge_point", "phase_rotation") == cp.phase_rotation
    assert cp.caps == () and cp.password_hash is None


def test_documented_session_defaults_are_what_a_minimal_frame_gets():
    site = nb.Site("s", [nb.Fuse("grid", (100.0,) * 3)], [nb.ChargePoint("CP01", "grid")])
    t = pd.Timestamp("2026-03-02 18:00", tz="Europe/Berlin")
    df = nb.validate_sessions(pd.DataFrame({"session_id": ["a"], "charge_point_id": ["CP01"], "arrival": [t],
                                            "departure": [t + pd.Timedelta("8h")], "energy_kwh": [10.0]}), site)
    for key in sessions_mod.OPTIONAL_DEFAULTS:
        assert float(documented_default("sessions", key)) == float(df[key].iloc[0]), key


def site_toml(**changes) -> str:
    """MINIMAL_SITE with top-level, fuse or charge point values changed."""
    d = tomllib.loads(MINIMAL_SITE)
    for k, v in changes.items():
        where, _, key = k.partition("__")
        if where == "top":
            d[key] = v
        elif where == "fuse":
            d["fuses"][0][key] = v
        else:
            d["charge_points"][0][key] = v
    import tomli_w

    return tomli_w.dumps(d)


_LO_V, _HI_V = site_mod.VOLTAGE_RANGE_V
_FUSE_MAX = site_mod.MAX_FUSE_CURRENT_A
_CP_MAX = site_mod.MAX_CHARGE_POINT_CURRENT_A


@pytest.mark.parametrize("changes, ok", [
    ({"top__voltage_v": _LO_V}, True), ({"top__voltage_v": _HI_V}, True),
    ({"top__voltage_v": _LO_V - 1}, False), ({"top__voltage_v": _HI_V + 1}, False),
    ({"top__max_unbalance_a": 0.0}, True), ({"top__max_unbalance_a": -1.0}, False),
    ({"top__timezone": "Europe/Lisbon"}, True), ({"top__timezone": "Mars/Olympus"}, False),
    ({"fuse__max_current_a": _FUSE_MAX}, True), ({"fuse__max_current_a": _FUSE_MAX + 1}, False),
    ({"fuse__max_current_a": 0.0}, False), ({"fuse__max_current_a": [63, 63, 40]}, True),
    ({"cp__max_current_a": _CP_MAX}, True), ({"cp__max_current_a": _CP_MAX + 1}, False),
    ({"cp__max_current_a": 0.0}, False),
    ({"cp__min_current_a": 0.0}, True), ({"cp__min_current_a": -1.0}, False),
    ({"cp__min_current_a": 33.0}, False),  # above max_current_a (32 A by default)
    ({"cp__phases": 1}, True), ({"cp__phases": 2}, False),
    ({"cp__phase_rotation": "L3L1L2"}, True), ({"cp__phase_rotation": "L1L1L2"}, False),
    ({"cp__caps": [{"start": "17:00", "end": "21:00", "max_current_a": 6}]}, True),
    ({"cp__caps": [{"start": "22:00", "end": "06:00", "max_current_a": 0}]}, True),
    ({"cp__caps": [{"start": "17h", "end": "21:00", "max_current_a": 6}]}, False),
    ({"cp__caps": [{"start": "17:00", "end": "21:00", "max_current_a": -1}]}, False),
    ({"cp__colour": "red"}, False),  # unknown keys in a charge point are refused
])
def test_documented_site_limits_are_enforced(tmp_path, changes, ok):
    (tmp_path / "site.toml").write_text(site_toml(**changes))
    if ok:
        nb.Site.from_toml(tmp_path / "site.toml")
    else:
        with pytest.raises(nb.SiteError):
            nb.Site.from_toml(tmp_path / "site.toml")


def _one_session(**changes) -> pd.DataFrame:
    t = pd.Timestamp("2026-03-02 18:00", tz="Europe/Berlin")
    row = {"session_id": "a", "charge_point_id": "CP01", "arrival": t, "departure": t + pd.Timedelta("12h"),
           "energy_kwh": 10.0, **changes}
    return pd.DataFrame({k: [v] for k, v in row.items()})


@pytest.mark.parametrize("changes, outcome", [
    ({"energy_kwh": 0.0}, "ok"), ({"energy_kwh": -1.0}, "error"),
    ({"energy_kwh": sessions_mod.MAX_ENERGY_KWH + 1}, "error"),
    ({"energy_kwh": sessions_mod.LARGE_BATTERY_KWH + 1}, "warning"),
    ({"phases": 2}, "ok"), ({"phases": 4}, "error"),
    ({"max_current_a": 16.0}, "ok"), ({"max_current_a": 0.0}, "error"),
    ({"priority": 0.0}, "ok"), ({"priority": -1.0}, "error"),
    ({"draw_fraction": 1.0}, "ok"), ({"draw_fraction": 1.5}, "error"),
    ({"charge_point_id": "CP99"}, "error"),
    ({"departure": pd.Timestamp("2026-03-02 17:00", tz="Europe/Berlin")}, "error"),
    ({"departure": "9999-12-31T23:59:59Z"}, "error"),
    ({"departure": sessions_mod.TIME_MAX.isoformat()}, "ok"),
    ({"arrival": (sessions_mod.TIME_MIN - pd.Timedelta("1s")).isoformat()}, "error"),
])
def test_documented_session_limits_are_enforced(caplog, monkeypatch, changes, outcome):
    monkeypatch.setattr(sessions_mod, "_warned", set())  # each warning is logged once a process
    site = nb.Site("s", [nb.Fuse("grid", (100.0,) * 3)], [nb.ChargePoint("CP01", "grid", max_current_a=32)])
    frame = _one_session(**changes)
    if outcome == "error":
        with pytest.raises(nb.SessionsError):
            nb.validate_sessions(frame, site)
        return
    with caplog.at_level(logging.WARNING, logger="nowblock.block.sessions"):
        nb.validate_sessions(frame, site)
    warned = any(r.levelno >= logging.WARNING for r in caplog.records)
    assert warned == (outcome == "warning"), caplog.text


def test_times_without_offset_are_refused_as_documented(tmp_path):
    scn_dir = tmp_path / "scn"
    scn_dir.mkdir()
    (scn_dir / "site.toml").write_text(MINIMAL_SITE)
    (scn_dir / "sessions.csv").write_text("session_id,charge_point_id,arrival,departure,energy_kwh\n"
                                          "a,CP01,2026-03-02T18:00:00,2026-03-03T07:00:00+01:00,10\n")
    with pytest.raises(nb.SessionsError, match="line 2.*no UTC offset"):
        nb.Scenario.from_dir(scn_dir)


# ---- the examples --------------------------------------------------------------------------------
def run_example(code: str, namespace: dict, where: str) -> None:
    compiled = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    result = eval(compiled, namespace)  # noqa: S307 - the project's own documentation
    if inspect.iscoroutine(result):
        asyncio.run(result)


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=[str(p.relative_to(DOCS)) for p in EXAMPLE_PAGES])
def test_python_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs_example__"}
    ran = 0
    for line, code, skip in python_fences(page):
        if skip is None:
            run_example(code, namespace, f"{page.relative_to(ROOT)}:{line}")
            ran += 1
    assert ran > 0


def test_skipped_examples_say_why():
    skipped = [(p.relative_to(DOCS), line, why) for p in PAGES for line, _, why in python_fences(p) if why is not None]
    for page, line, why in skipped:
        assert len(why) > 10, f"{page}:{line}: a skipped example needs its reason"
    # The how-to pages and the start pages are examples to copy: none of them may be skipped.
    assert not [s for s in skipped if str(s[0]).startswith(("howto", "getting", "concepts", "formats"))]
    total = sum(len(python_fences(p)) for p in PAGES)
    assert len(skipped) <= total // 3, f"{len(skipped)} of {total} examples are not executed: {skipped}"


def test_no_fence_is_a_stray_python_block():
    # ```py / ```python3 / ```pycon would escape the example runner.
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            assert m.group(1) not in ("py", "python3", "pycon", "ipython"), (page, m.group(1))


def test_dataclass_defaults_used_by_the_tables_exist():
    # The tables read defaults from the dataclasses by field name: a renamed field must fail here.
    names = {f.name for f in dataclasses.fields(nb.ChargePoint)} | {f.name for f in dataclasses.fields(nb.Site)}
    for table in ("site", "charge_point"):
        for f in nowblock_formats.tables()[table]:
            if callable(f.default):
                assert f.key in names and f.default_text() not in ("", "None"), (table, f.key)
    assert not math.isnan(float(documented_default("site", "voltage_v")))
