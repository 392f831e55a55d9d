"""The forecaster: the block's base load, each car's needs, and the cars still to come.

Estimators (pandas in, pandas out) live in :mod:`.base_load`, :mod:`.needs` and
:mod:`.arrivals`; the Numba kernels they call, each with a slow reference, in :mod:`.kernels`.
See docs/forecast.md.

The names below are imported on first use (PEP 562), so a process that only forecasts base
load never imports the needs and arrivals modules: part of keeping the first forecast in a
fresh process under a second (docs/bench_forecast.md).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ArrivalForecaster": "arrivals",
    "DEFAULT_QUANTILES": "base_load",
    "BaseLoadForecaster": "base_load",
    "SeasonalNaiveForecaster": "base_load",
    "SimilarDayForecaster": "base_load",
    "quantile_column": "base_load",
    "Calendar": "calendar",
    "ForecastError": "calendar",
    "SessionNeedsForecaster": "needs",
    "OnlineNeedsForecaster": "online",
}

__all__ = [
    "DEFAULT_QUANTILES", "ArrivalForecaster", "BaseLoadForecaster", "Calendar", "ForecastError",
    "OnlineNeedsForecaster", "SeasonalNaiveForecaster", "SessionNeedsForecaster", "SimilarDayForecaster", "quantile_column",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"nowblock.forecast.{_LAZY[name]}"), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'nowblock.forecast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
