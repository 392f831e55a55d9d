"""Studies: a grid of blocks x policies x options, each cell a simulation, run on Ray.

``nowblock.study(...)`` (:func:`~nowblock.studies.runner.study`) and ``nowblock study
STUDY.toml`` run a :class:`~nowblock.studies.spec.Study` and return one tidy table (one row per
cell: its parameters and every metric), written as Parquet; :func:`plot_study` draws it.
The layer sits above the simulator and below the command line.
"""

from __future__ import annotations

from nowblock.studies.plot import plot_study
from nowblock.studies.runner import run_cell, study
from nowblock.studies.spec import DEFAULT_STUDY, SIMULATE_KEYS, Cell, Study, StudyError

__all__ = ["DEFAULT_STUDY", "SIMULATE_KEYS", "Cell", "Study", "StudyError", "plot_study", "run_cell", "study"]
