"""The forecaster: the block's base load, each car's needs, and the cars still to come.

Estimators (pandas in, pandas out) live in :mod:`.base_load`, :mod:`.needs` and
:mod:`.arrivals`; the Numba kernels they call, each with a slow reference, in :mod:`.kernels`.
See docs/forecast.md.
"""

from nowblock.forecast.arrivals import ArrivalForecaster
from nowblock.forecast.base_load import (
    DEFAULT_QUANTILES,
    BaseLoadForecaster,
    SeasonalNaiveForecaster,
    SimilarDayForecaster,
    quantile_column,
)
from nowblock.forecast.calendar import Calendar, ForecastError
from nowblock.forecast.needs import SessionNeedsForecaster

__all__ = [
    "DEFAULT_QUANTILES", "ArrivalForecaster", "BaseLoadForecaster", "Calendar", "ForecastError",
    "SeasonalNaiveForecaster", "SessionNeedsForecaster", "SimilarDayForecaster", "quantile_column",
]
