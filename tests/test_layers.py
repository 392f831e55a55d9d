"""The package's shape: imports point down the layers, and no module imports itself in a circle.

The layers are drawn in ``nowblock/__init__.py`` and written as an import-linter contract in
pyproject.toml (``lint-imports`` checks it from the command line too). A contract on layers
cannot see a circle inside one layer, so :func:`test_no_import_cycles` looks for those.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("nowblock", exclude_type_checking_imports=True, cache_dir=None)


def test_layer_contract_is_kept(capsys):
    import logging

    from importlinter.cli import lint_imports

    # import-linter configures logging with disable_existing_loggers: without restoring, every
    # nowblock logger stayed disabled for the rest of the run (tests after this one that read
    # the log saw nothing).
    loggers = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    was = [lg.disabled for lg in loggers]
    try:
        code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    finally:
        for lg, d in zip(loggers, was):
            lg.disabled = d
    assert code == 0, capsys.readouterr().out


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            nxt = edges[node]
            if i < len(nxt):
                work.append((node, i + 1))
                w = nxt[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[node] = min(low[node], index[w])
                continue
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle():
    g = grimp.ImportGraph()
    for m in ("a", "a.x", "a.y", "a.z"):
        g.add_module(m)
    g.add_import(importer="a.x", imported="a.y")
    g.add_import(importer="a.y", imported="a.x")
    g.add_import(importer="a.z", imported="a.x")
    assert _cycles(g) == [["a.x", "a.y"]]


def test_old_module_paths_still_import_with_a_warning():
    import importlib
    import warnings

    for old, new in (("nowblock.site", "nowblock.block.site"), ("nowblock.interface", "nowblock.seam"),
                     ("nowblock.optimize.policy", "nowblock.milp.policy")):
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mod = importlib.import_module(old)
        assert mod is importlib.import_module(new)
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    sys.modules.pop("nowblock.synth", None)
    with pytest.warns(DeprecationWarning):
        from nowblock.synth import day_ahead_prices, generate_block  # noqa: F401 - two new homes, one old name
