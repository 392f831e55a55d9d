"""The operator page at ``/`` of the HTTP port: one HTML file, its script and the vendored charts.

No build step and no CDN: every asset is package data (``nowblock/api/static/`` for the page,
``nowblock/sim/web/`` for uPlot and the chart code it shares with the simulation report), so
the page works on a machine without internet. The page itself holds no data; what it shows it
reads from the API with the reader's rights (docs/operator-page.md).
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from nowblock.sim.report import WEB_DIR

STATIC_DIR = files("nowblock.api") / "static"


def _directory(resource) -> Path:
    """A real folder for a package-data resource (they are plain folders in a normal install)."""
    with as_file(resource) as path:
        return Path(path)


def mount_page(app: FastAPI) -> None:
    """Serve the operator page at ``/``, its files under ``/static/`` and the charts under ``/static/lib/``."""
    index = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def page() -> HTMLResponse:
        """The operator page (static; its data comes from the API)."""
        return HTMLResponse(index, headers={"Cache-Control": "no-cache"})

    # /static/lib before /static: the first matching mount answers.
    app.mount("/static/lib", StaticFiles(directory=_directory(WEB_DIR)), name="lib")
    app.mount("/static", StaticFiles(directory=_directory(STATIC_DIR)), name="static")
