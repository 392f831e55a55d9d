"""Running a study: every cell one ``nowblock.simulate`` call, as a Ray task, into one table.

By default :func:`study` starts a local Ray in this process (``num_cpus`` = ``workers`` or
the machine's cores, no dashboard) and stops it at the end; with ``address`` it joins an
existing cluster (every node needs the same nowblock installed with the ``study`` extra); if
Ray is already initialised in this process, it uses that one and leaves it running.
``engine="process"`` runs the cells one after another in this process, without Ray.

The output folder (``out``) holds::

    study.json                 the study as run
    cells/<cell_id>.parquet    one row per finished cell, written as each cell finishes
    timeseries/cell_id=<id>/   each cell's time series, with ``timeseries=True``
    results.parquet            the whole table, written at the end

A re-run with the same folder skips the cells whose row says ``ok`` (failed cells run again).
A cell that raises is a row with ``status = "error"`` and its error; the study goes on.

Numba kernels compile once per worker process, not once per cell: Ray reuses its worker
processes from task to task, the MILP's :meth:`~nowblock.milp.MilpPolicy.warm_up` compiles (or
loads from numba's on-disk cache, shared by every process of a node) on the first cell a
worker runs and returns at once afterwards. ``warm_up_seconds`` in the table shows it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from nowblock.studies.spec import Cell, Study, StudyError

log = logging.getLogger(__name__)

#: Columns every row has, before the cell's parameters and metrics.
BOOK_COLUMNS = ("cell_id", "status", "error", "policy", "policy_options")
#: Bookkeeping columns, last.
_LAST_COLUMNS = ("warm_up_seconds", "cell_seconds", "cell_cpu_seconds", "worker_pid", "worker_host", "finished_at", "traceback")


# ---- one cell ------------------------------------------------------------------------------------
def _scenario_of(cell: Cell, scenario=None):
    from nowblock.block.scenario import Scenario

    if scenario is not None:
        return scenario
    if "dir" in cell.scenario:
        return Scenario.from_dir(cell.scenario["dir"])
    return Scenario.default(**cell.scenario)


def run_cell(cell: Cell, scenario=None, *, timeseries: bool = False) -> tuple[dict, pd.DataFrame | None]:
    """Run one cell here and return its table row (and time series if asked).

    Never raises for the cell's own failure: the row then has ``status = "error"`` and
    ``error`` / ``traceback``. ``scenario`` is the cell's scenario when the caller has it
    already (a folder read once for many cells).

    Returns
    -------
    row : dict
        Parameters, facts of the scenario (``grid_current_a`` [A], ``voltage_v`` [V],
        ``n_charge_points``),
        every metric of :attr:`nowblock.SimulationResult.metrics`, and the bookkeeping
        ``warm_up_seconds`` [s], ``cell_seconds`` [s] (wall), ``cell_cpu_seconds`` [s] (this
        process's CPU time), ``worker_pid``, ``worker_host``.
    timeseries : DataFrame or None
        The simulation's time series (UTC), with ``timeseries=True``.
    """
    from nowblock.policies import get_policy
    from nowblock.sim.simulator import simulate

    t0, cpu0 = time.perf_counter(), time.process_time()
    row: dict[str, Any] = {"cell_id": cell.cell_id, "status": "ok", "error": None, "traceback": None,
                           **cell.parameters()}
    ts = None
    warm_s = 0.0
    try:
        scn = _scenario_of(cell, scenario)
        row.update(scenario_name=scn.name, grid_current_a=float(min(scn.site.root.max_current_a)),
                   voltage_v=float(scn.site.voltage_v), n_charge_points=len(scn.site.charge_points))
        pol = get_policy(cell.policy, **cell.policy_options)
        warm = getattr(pol, "warm_up", None)
        if callable(warm):  # once per process: later cells in this worker return at once
            t_w = time.perf_counter()
            warm()
            warm_s = time.perf_counter() - t_w
        res = simulate(scn, pol, **cell.simulate)
        row.update({k: v for k, v in res.metrics.items() if k != "policy"})
        if timeseries:
            ts = res.timeseries
    except Exception as exc:  # noqa: BLE001 - a failed cell is a row, not the end of the study
        row.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    row.update(warm_up_seconds=warm_s, cell_seconds=time.perf_counter() - t0,
               cell_cpu_seconds=time.process_time() - cpu0, worker_pid=os.getpid(),
               worker_host=socket.gethostname(), finished_at=pd.Timestamp.now(tz="UTC"))
    return row, ts


def _error_row(cell: Cell, exc: BaseException) -> dict:
    """The row of a cell whose worker failed outside :func:`run_cell` (a crash, a lost node)."""
    return {"cell_id": cell.cell_id, "status": "error", "error": f"{type(exc).__name__}: {str(exc)[:2000]}",
            "traceback": None, **cell.parameters(), "finished_at": pd.Timestamp.now(tz="UTC")}


# ---- the output folder ---------------------------------------------------------------------------
class _Folder:
    """The study's output folder: one file a finished cell, written atomically."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            (self.path / "cells").mkdir(parents=True, exist_ok=True)

    def _ts_dir(self, cell_id: str) -> Path:
        return self.path / "timeseries" / f"cell_id={cell_id}"

    def finished(self, cells: list[Cell], *, need_timeseries: bool) -> dict[str, dict]:
        """Rows of cells already done (status ok, time series there if needed), by cell id."""
        if self.path is None:
            return {}
        wanted, done = {c.cell_id for c in cells}, {}
        for f in sorted((self.path / "cells").glob("*.parquet")):
            try:
                rows = pd.read_parquet(f).to_dict("records")
            except Exception as exc:  # noqa: BLE001 - a torn file: run that cell again
                log.warning("%s unreadable (%s): its cell runs again", f, exc)
                continue
            for r in rows:
                cid = r.get("cell_id")
                if cid in wanted and r.get("status") == "ok":
                    if need_timeseries and not (self._ts_dir(cid) / "part-0.parquet").is_file():
                        continue
                    done[cid] = r
        return done

    def write_cell(self, row: dict, ts: pd.DataFrame | None) -> None:
        if self.path is None:
            return
        if ts is not None:
            d = self._ts_dir(row["cell_id"])
            d.mkdir(parents=True, exist_ok=True)
            _atomic_parquet(ts.rename_axis("time").reset_index(), d / "part-0.parquet")
        _atomic_parquet(pd.DataFrame([row]), self.path / "cells" / f"{row['cell_id']}.parquet")

    def write_results(self, table: pd.DataFrame, study: Study) -> None:
        if self.path is None:
            return
        (self.path / "study.json").write_text(json.dumps(study.to_dict(), indent=2, default=str) + "\n")
        _atomic_parquet(table, self.path / "results.parquet")


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)  # a reader or a resumed run never sees half a file


def _table(rows: Iterable[dict], order: list[str]) -> pd.DataFrame:
    """The tidy table: one row per cell in the study's order; bookkeeping columns first."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return pd.DataFrame(columns=list(BOOK_COLUMNS))
    df = df.set_index("cell_id").reindex([c for c in order if c in set(df["cell_id"])]).reset_index()
    first = [c for c in BOOK_COLUMNS if c in df.columns]
    params = [c for c in df.columns if c.startswith(("scenario.", "simulate."))]
    last = [c for c in _LAST_COLUMNS if c in df.columns]
    return df[first + params + [c for c in df.columns if c not in {*first, *params, *last}] + last]


# ---- engines --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _ray(address: str | None, workers: int | None):
    """Ray for the study: the process's own if initialised, else a local one or a cluster."""
    try:
        import ray
    except ImportError as exc:
        raise StudyError("studies on Ray need the study extra: pip install 'nowblock[study]' "
                         "(or engine='process' to run the cells here, one by one)") from exc
    if ray.is_initialized():
        yield ray
        return
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=int(workers or os.cpu_count() or 1), object_store_memory=256 * 1024**2, **quiet)
    except (ConnectionError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise StudyError(f"cannot start or reach {where}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a cluster address nobody answers at (ray.init would retry for minutes)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():  # "auto" and the like: Ray resolves them itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise StudyError(f"cannot reach the Ray cluster at {address}: {exc}") from exc


def _run_on_ray(todo: list[Cell], scenarios: dict, *, address, workers, timeseries, on_done) -> None:
    with _ray(address, workers) as ray:
        remote = ray.remote(num_cpus=1, max_retries=1)(run_cell)
        refs = {k: ray.put(s) for k, s in scenarios.items() if s is not None}
        pending = {}
        for c in todo:
            scn = refs.get(c.scenario.get("dir")) if "dir" in c.scenario else None
            pending[remote.remote(c, scn, timeseries=timeseries)] = c
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    row, ts = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a crashed worker fails its cell only
                    row, ts = _error_row(cell, exc), None
                on_done(row, ts)


def _run_here(todo: list[Cell], scenarios: dict, *, timeseries, on_done) -> None:
    for c in todo:
        on_done(*run_cell(c, scenarios.get(c.scenario.get("dir")), timeseries=timeseries))


def _read_folders(cells: list[Cell]) -> dict:
    """Each scenario folder read once here (a cluster's workers may not see this disk)."""
    from nowblock.block.scenario import Scenario

    out = {}
    for c in cells:
        d = c.scenario.get("dir")
        if d is not None and d not in out:
            try:
                out[d] = Scenario.from_dir(d)
            except Exception as exc:  # noqa: BLE001 - its cells fail with this error in run_cell
                log.warning("scenario folder %s: %s", d, exc)
                out[d] = None
    return out


# ---- the entry point ----------------------------------------------------------------------------
def study(spec: Study | str | Path | dict | None = None, *, out: str | Path | None = None,
          address: str | None = None, workers: int | None = None, engine: str = "ray",
          timeseries: bool = False, progress: bool = True, **grid) -> pd.DataFrame:
    """Run a study and return its table (one row per cell).

    Parameters
    ----------
    spec : Study, path, dict or "default", optional
        The study: an object, a study file (TOML), the file's structure as a dict, or
        "default" for the embedded one. Without it, the keywords in ``grid`` make one
        (``scenario``, ``policies``, ``scenario_dirs``, ``simulate``, ``policy_options``, ``name``).
    out : path, optional
        Output folder (see the module docstring); a re-run with the same one skips finished
        cells. Without it nothing is written and nothing is resumed.
    address : str, optional
        A Ray cluster's address; by default a local Ray is started in this process.
    workers : int, optional
        The local Ray's ``num_cpus`` (one cell a CPU); default: every core.
    engine : "ray" or "process"
        "process" runs the cells one after another in this process, without Ray.
    timeseries : bool
        Also keep each cell's time series (``out/timeseries``, partitioned by ``cell_id``).
    progress : bool
        A progress bar over cells on stderr.

    Returns
    -------
    DataFrame
        ``cell_id``, ``status`` ("ok" or "error"), ``error``, the cell's parameters
        (``policy``, ``scenario.*``, ``simulate.*``), facts of its scenario, every metric of
        :func:`nowblock.simulate` and the bookkeeping columns of :func:`run_cell`.
    """
    st = _as_study(spec, grid)
    if engine not in ("ray", "process"):
        raise StudyError(f"engine: expected 'ray' or 'process', got {engine!r}")
    cells = st.cells()
    folder = _Folder(out)
    done = folder.finished(cells, need_timeseries=timeseries)
    todo = [c for c in cells if c.cell_id not in done]
    rows = dict(done)
    bar = _progress(len(cells), len(done), st.name, enabled=progress)
    failed = 0

    def on_done(row: dict, ts) -> None:
        nonlocal failed
        rows[row["cell_id"]] = row
        folder.write_cell(row, ts)
        failed += row["status"] != "ok"
        bar.update(1)
        if failed:
            bar.set_postfix(failed=failed)

    try:
        scenarios = _read_folders(todo)
        if not todo:
            pass
        elif engine == "process":
            _run_here(todo, scenarios, timeseries=timeseries, on_done=on_done)
        else:
            _run_on_ray(todo, scenarios, address=address, workers=workers, timeseries=timeseries, on_done=on_done)
    finally:
        bar.close()
        table = _table(rows.values(), [c.cell_id for c in cells])
        folder.write_results(table, st)
    table.attrs.update(study=st.name, skipped=len(done), ran=len(todo))
    return table


def _as_study(spec, grid: dict) -> Study:
    if spec is not None and grid:
        raise StudyError(f"give a study or its keywords, not both (got {sorted(grid)})")
    if isinstance(spec, Study):
        return spec
    if spec is None:
        return Study(**grid)
    if isinstance(spec, dict):
        return Study.from_dict(spec)
    if str(spec) == "default":
        return Study.default()
    return Study.from_toml(spec)


class _NoBar:
    def update(self, n): pass
    def set_postfix(self, **kw): pass
    def close(self): pass


def _progress(total: int, initial: int, name: str, *, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the study extra brings tqdm; without it, no bar
        return _NoBar()
    return tqdm(total=total, initial=initial, desc=name, unit="cell", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True)
