"""Sphinx configuration of the nowblock documentation.

Build it (warnings are errors, as in the tests):  python3 -m sphinx -W --keep-going -b html docs site
Pages are Markdown (MyST); the API reference comes from the numpydoc docstrings; the file-format
tables come from the code (docs/_ext/nowblock_formats.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))

import nowblock  # noqa: E402

project = "nowblock"
author = "the nowblock authors"
copyright = "the nowblock authors, Apache License 2.0"
version = release = nowblock.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "nowblock_formats",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "site", "Thumbs.db", ".DS_Store", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# numpydoc renders the Parameters/Returns sections the docstrings are written in.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "none"  # the numpydoc sections give the types, with units
autodoc_member_order = "bysource"
autosummary_generate = False
nitpicky = False

intersphinx_mapping = {}  # no network at build time: cross references stay inside the project

html_theme = "pydata_sphinx_theme"
html_title = f"nowblock {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_static_path: list[str] = []
html_show_sourcelink = False
