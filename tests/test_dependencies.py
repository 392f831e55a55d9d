"""Every third-party package the source imports is declared in pyproject.toml.

Found in session 37: the rounding's sparse products imported scipy, which no dependency
declared; the test extra brought it in (so the suite passed) while the README's first command,
a plain install, failed with ``No module named 'scipy'``.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_names(src: Path) -> dict[str, str]:
    """Top-level module names imported anywhere under ``src`` -> one file importing it."""
    names: dict[str, str] = {}
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found = [node.module.split(".")[0]]
            else:
                continue
            for name in found:
                names.setdefault(name, str(path.relative_to(ROOT)))
    return names


def _declared(spec_list) -> set[str]:
    """Distribution names (normalised) of requirement strings."""
    return {re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0].lower().replace("_", "-") for s in spec_list}


def _required_by(dists: set[str]) -> set[str]:
    """What the installed ``dists`` require, and so on (not under an extra): a plain install
    brings those too (fastapi's starlette and pydantic, ocpp's jsonschema)."""
    out: set[str] = set()
    todo = set(dists)
    while todo:  # and what those require (fastapi -> pydantic -> pydantic-core)
        d = todo.pop()
        try:
            reqs = requires(d) or []
        except PackageNotFoundError:
            continue
        new = _declared(r for r in reqs if "extra ==" not in r) - out - set(dists)
        out |= new
        todo |= new
    return out


def test_every_imported_package_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = _declared(project["dependencies"])
    base |= _required_by(base)
    extras = set().union(*(_declared(v) for v in project.get("optional-dependencies", {}).values()))
    dists = packages_distributions()
    undeclared = {}
    for name, where in _imported_top_names(ROOT / "src").items():
        if name in sys.stdlib_module_names or name in ("nowblock", "__future__"):
            continue
        owners = {d.lower().replace("_", "-") for d in dists.get(name, [name])}
        if not owners & (base | extras):
            undeclared[name] = (where, sorted(owners))
    assert not undeclared, f"imported but declared in no dependency or extra of pyproject.toml: {undeclared}"
