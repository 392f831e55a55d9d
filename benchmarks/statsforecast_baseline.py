"""statsforecast baselines (AutoETS, MSTL) on the same splits as bench_forecast.py.

Standalone on purpose: statsforecast pins pandas < 3, so it runs in its own virtual environment
and never in nowblock's (see docs/bench_forecast.md):

    python -m venv /opt/sfvenv && /opt/sfvenv/bin/pip install statsforecast
    /opt/sfvenv/bin/python benchmarks/statsforecast_baseline.py SERIES.csv ORIGINS.json OUT.json

SERIES.csv: ``time,kw`` at 15 min; ORIGINS.json: {"origins": [row, ...], "history": rows,
"horizon": rows, "timing_horizon": rows, "ets_history": rows}. Writes per-origin forecasts and timings to OUT.json.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import pandas as pd


def main(series_csv: str, origins_json: str, out_json: str) -> None:
    """Fit AutoETS (daily season) and MSTL (daily + weekly) at each origin; write forecasts."""
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS

    warnings.filterwarnings("ignore")
    y = pd.read_csv(series_csv)["kw"].to_numpy(float)
    spec = json.load(open(origins_json))
    hist_n, horizon = int(spec["history"]), int(spec["horizon"])
    # AutoETS with a 96-slot season fits 96 seasonal states: on a year of data it takes
    # minutes per fit, so it sees the last ``ets_history`` rows (4 weeks by default).
    models = {
        "AutoETS": (lambda: AutoETS(season_length=96), int(spec.get("ets_history", 4 * 672))),
        "MSTL": (lambda: MSTL(season_length=[96, 672], trend_forecaster=AutoETS(model="ZZN")), hist_n),
    }
    out = {"forecasts": {k: [] for k in models}, "seconds_per_fit_predict_24h": {}}
    for name, (make, n_hist) in models.items():
        for o in spec["origins"]:
            df = pd.DataFrame({"unique_id": "s", "ds": np.arange(o - n_hist, o), "y": y[o - n_hist:o]})
            sf = StatsForecast(models=[make()], freq=1, n_jobs=1)
            fc = sf.forecast(df=df, h=horizon)
            out["forecasts"][name].append(fc[fc.columns[-1]].to_numpy(float).tolist())
        # timing: fit + predict 24 h on a year of history, warm (after the loop above compiled)
        o = spec["origins"][-1]
        df = pd.DataFrame({"unique_id": "s", "ds": np.arange(o - n_hist, o), "y": y[o - n_hist:o]})
        t = []
        for _ in range(3):
            t0 = time.perf_counter()
            StatsForecast(models=[make()], freq=1, n_jobs=1).forecast(df=df, h=int(spec["timing_horizon"]))
            t.append(time.perf_counter() - t0)
        out["seconds_per_fit_predict_24h"][name] = float(np.median(t))
    json.dump(out, open(out_json, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
