"""Numba kernels of the forecaster: plain ndarrays in, plain ndarrays out, no pandas, no I/O.

Each kernel ``name`` has a slow pure-Python twin ``name_ref`` with the same contract; the tests
compare the two on small inputs. Matrices of load are (day, slot of the day) in local time
with NaN for missing readings (see :mod:`nowblock.forecast.calendar`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# --------------------------------------------------------------------------------------------
# smoothing and exponentially weighted day profiles


@njit(cache=True)
def smooth_nan(y, half_width):
    """Triangular moving average of 1-D ``y`` over +-``half_width`` samples, skipping NaN.

    Returns NaN only where no finite sample lies in the window.
    """
    n = y.shape[0]
    out = np.empty(n)
    if half_width <= 0:
        out[:] = y
        return out
    for i in range(n):
        s = 0.0
        wsum = 0.0
        for k in range(-half_width, half_width + 1):
            j = i + k
            if j >= 0 and j < n:
                v = y[j]
                if v == v:
                    w = half_width + 1 - abs(k)
                    s += w * v
                    wsum += w
        out[i] = s / wsum if wsum > 0 else np.nan
    return out


def smooth_nan_ref(y, half_width):
    """Reference for :func:`smooth_nan`."""
    y = list(map(float, y))
    if half_width <= 0:
        return np.array(y)
    out = []
    for i in range(len(y)):
        num = den = 0.0
        for k in range(-half_width, half_width + 1):
            if 0 <= i + k < len(y) and not math.isnan(y[i + k]):
                w = half_width + 1 - abs(k)
                num += w * y[i + k]
                den += w
        out.append(num / den if den else math.nan)
    return np.array(out)


@njit(cache=True)
def ewma_profiles(y, key, n_keys, alpha):
    """Exponentially weighted day profile per key (day type or class), updated day by day.

    ``y`` (n_days, n_slots), ``key`` (n_days,) ints in [0, n_keys), ``alpha`` in (0, 1].
    Returns ``(f, state)``: ``f[d]`` is the profile of ``key[d]`` before day ``d`` was seen
    (the day-ahead forecast of day ``d``; NaN where that key had no finite value yet) and
    ``state`` (n_keys, n_slots) the profiles after the last day. NaN readings do not update.
    """
    n, s_n = y.shape
    state = np.full((n_keys, s_n), np.nan)
    f = np.empty((n, s_n))
    for d in range(n):
        k = key[d]
        for s in range(s_n):
            p = state[k, s]
            f[d, s] = p
            v = y[d, s]
            if v == v:
                if p == p:
                    state[k, s] = p + alpha * (v - p)
                else:
                    state[k, s] = v
    return f, state


def ewma_profiles_ref(y, key, n_keys, alpha):
    """Reference for :func:`ewma_profiles`."""
    n, s_n = len(y), len(y[0])
    state = [[math.nan] * s_n for _ in range(n_keys)]
    f = []
    for d in range(n):
        k = int(key[d])
        f.append(list(state[k]))
        for s in range(s_n):
            v = float(y[d][s])
            if not math.isnan(v):
                p = state[k][s]
                state[k][s] = v if math.isnan(p) else p + alpha * (v - p)
    return np.array(f), np.array(state)


@njit(cache=True)
def _combine(a, b, g, blend, fallback):
    if a == a and b == b:
        return blend * a + (1.0 - blend) * b
    if b == b:
        return b
    if a == a:
        return a
    if g == g:
        return g
    return fallback


@njit(cache=True)
def combine_profiles(fa, fb, fg, blend, fallback):
    """Blend day-type profile ``fa`` and day-class profile ``fb`` (same shape, any rank-2).

    Where one is NaN the other is used, then the all-days profile ``fg``, then ``fallback``:
    the result has no NaN.
    """
    n, s_n = fa.shape
    out = np.empty((n, s_n))
    for d in range(n):
        for s in range(s_n):
            out[d, s] = _combine(fa[d, s], fb[d, s], fg[d, s], blend, fallback)
    return out


def combine_profiles_ref(fa, fb, fg, blend, fallback):
    """Reference for :func:`combine_profiles`."""
    out = np.empty(np.shape(fa))
    for idx in np.ndindex(out.shape):
        a, b, g = fa[idx], fb[idx], fg[idx]
        if not math.isnan(a) and not math.isnan(b):
            out[idx] = blend * a + (1 - blend) * b
        else:
            out[idx] = next((v for v in (b, a, g) if not math.isnan(v)), fallback)
    return out


# --------------------------------------------------------------------------------------------
# the similar-day model: fitting (grid search on day-ahead errors) and the level term


@njit(cache=True)
def _nanmean(x):
    s = 0.0
    c = 0
    for v in x.ravel():
        if v == v:
            s += v
            c += 1
    return s / c if c else np.nan


@njit(cache=True)
def similar_day_components(y, day_type, day_class, alpha_a, alpha_b, alpha_g, half_width):
    """Day-ahead profile forecasts of the similar-day model for one parameter set.

    Returns ``(fa, fb, fg, state_a, state_b, state_g)``: forecasts per day from the day-type
    profile (7 keys), the day-class profile (3 keys) and the all-days profile, each learnt on
    ``y`` smoothed over +-``half_width`` slots; and the profiles after the last day.
    """
    n, s_n = y.shape
    ys = smooth_nan(y.ravel(), half_width).reshape(n, s_n)
    fa, sa = ewma_profiles(ys, day_type, 7, alpha_a)
    fb, sb = ewma_profiles(ys, day_class, 3, alpha_b)
    fg, sg = ewma_profiles(ys, np.zeros(n, np.int64), 1, alpha_g)
    return fa, fb, fg, sa, sb, sg


def similar_day_components_ref(y, day_type, day_class, alpha_a, alpha_b, alpha_g, half_width):
    """Reference for :func:`similar_day_components`."""
    y = np.asarray(y, float)
    n, s_n = y.shape
    ys = smooth_nan_ref(y.ravel(), int(half_width)).reshape(n, s_n)
    fa, sa = ewma_profiles_ref(ys, day_type, 7, alpha_a)
    fb, sb = ewma_profiles_ref(ys, day_class, 3, alpha_b)
    fg, sg = ewma_profiles_ref(ys, [0] * n, 1, alpha_g)
    return fa, fb, fg, sa, sb, sg


@njit(cache=True)
def day_level(y, f, n_level):
    """Level error per day: mean of ``y - f`` over the last ``n_level`` finite slots of the
    previous day (0 where none); used to shift a day-ahead profile towards recent load."""
    n, s_n = y.shape
    r = np.zeros(n)
    for d in range(1, n):
        s_sum = 0.0
        c = 0
        for s in range(s_n - 1, -1, -1):
            v = y[d - 1, s]
            p = f[d - 1, s]
            if v == v and p == p:
                s_sum += v - p
                c += 1
                if c >= n_level:
                    break
        r[d] = s_sum / c if c else 0.0
    return r


def day_level_ref(y, f, n_level):
    """Reference for :func:`day_level`."""
    r = [0.0]
    for d in range(1, len(y)):
        diffs = [y[d - 1][s] - f[d - 1][s] for s in range(len(y[0]))
                 if not math.isnan(y[d - 1][s]) and not math.isnan(f[d - 1][s])]
        tail = diffs[-n_level:]
        r.append(sum(tail) / len(tail) if tail else 0.0)
    return np.array(r)


@njit(cache=True)
def fit_similar_day(y, day_type, day_class, alphas_a, alphas_b, alpha_g, half_widths, blends, rhos,
                    n_level, eval_start):
    """Grid search of the similar-day model on day-ahead mean absolute error.

    Evaluates every (half_width, alpha_a, alpha_b, blend) on days ``eval_start..`` of ``y``
    (n_days, n_slots), then the level decay ``rho`` (forecast at step h adds ``rho**h`` times
    the previous day's closing level error) for the best of them. Returns
    ``(i_width, i_a, i_b, i_blend, i_rho, best_mae)``.
    """
    n, s_n = y.shape
    fallback = _nanmean(y)
    best = np.inf
    bw = 0
    ba = 0
    bb = 0
    bl = 0
    for iw in range(half_widths.shape[0]):
        ys = smooth_nan(y.ravel(), half_widths[iw]).reshape(n, s_n)
        fg, _ = ewma_profiles(ys, np.zeros(n, np.int64), 1, alpha_g)
        fas = np.empty((alphas_a.shape[0], n, s_n))
        for ia in range(alphas_a.shape[0]):
            fa_i, _ = ewma_profiles(ys, day_type, 7, alphas_a[ia])
            fas[ia] = fa_i
        fbs = np.empty((alphas_b.shape[0], n, s_n))
        for ib in range(alphas_b.shape[0]):
            fb_i, _ = ewma_profiles(ys, day_class, 3, alphas_b[ib])
            fbs[ib] = fb_i
        for ia in range(alphas_a.shape[0]):
            for ib in range(alphas_b.shape[0]):
                for il in range(blends.shape[0]):
                    err = 0.0
                    cnt = 0
                    for d in range(eval_start, n):
                        for s in range(s_n):
                            v = y[d, s]
                            if v == v:
                                p = _combine(fas[ia, d, s], fbs[ib, d, s], fg[d, s], blends[il], fallback)
                                err += abs(v - p)
                                cnt += 1
                    mae = err / cnt if cnt else np.inf
                    if mae < best:
                        best = mae
                        bw, ba, bb, bl = iw, ia, ib, il
    fa, fb, fg, _, _, _ = similar_day_components(y, day_type, day_class, alphas_a[ba], alphas_b[bb],
                                                 alpha_g, half_widths[bw])
    f = combine_profiles(fa, fb, fg, blends[bl], fallback)
    r = day_level(y, f, n_level)
    best_rho = 0
    best_rho_mae = np.inf
    for ir in range(rhos.shape[0]):
        err = 0.0
        cnt = 0
        for d in range(eval_start, n):
            decay = 1.0
            for s in range(s_n):
                decay *= rhos[ir]
                v = y[d, s]
                if v == v:
                    err += abs(v - (f[d, s] + decay * r[d]))
                    cnt += 1
        mae = err / cnt if cnt else np.inf
        if mae < best_rho_mae:
            best_rho_mae = mae
            best_rho = ir
    return bw, ba, bb, bl, best_rho, min(best, best_rho_mae)


def fit_similar_day_ref(y, day_type, day_class, alphas_a, alphas_b, alpha_g, half_widths, blends, rhos,
                        n_level, eval_start):
    """Reference for :func:`fit_similar_day` (same search, built from the reference kernels)."""
    y = np.asarray(y, float)
    n, s_n = y.shape
    fallback = float(np.nanmean(y))
    results = []
    for iw, w in enumerate(half_widths):
        ys = smooth_nan_ref(y.ravel(), int(w)).reshape(n, s_n)
        fg, _ = ewma_profiles_ref(ys, [0] * n, 1, alpha_g)
        for ia, a in enumerate(alphas_a):
            fa, _ = ewma_profiles_ref(ys, day_type, 7, a)
            for ib, b in enumerate(alphas_b):
                fb, _ = ewma_profiles_ref(ys, day_class, 3, b)
                for il, bl in enumerate(blends):
                    f = combine_profiles_ref(fa, fb, fg, bl, fallback)
                    ev = y[eval_start:]
                    ok = ~np.isnan(ev)
                    mae = float(np.abs(ev - f[eval_start:])[ok].mean()) if ok.any() else math.inf
                    results.append((mae, iw, ia, ib, il, f))
    mae, iw, ia, ib, il, f = min(results, key=lambda t: t[0])  # first minimum, like the kernel
    r = day_level_ref(y, f, n_level)
    best = (math.inf, 0)
    for ir, rho in enumerate(rhos):
        decay = rho ** np.arange(1, s_n + 1)
        pred = f + r[:, None] * decay[None, :]
        ev = y[eval_start:]
        ok = ~np.isnan(ev)
        m = float(np.abs(ev - pred[eval_start:])[ok].mean()) if ok.any() else math.inf
        if m < best[0]:
            best = (m, ir)
    return iw, ia, ib, il, best[1], min(mae, best[0])


# --------------------------------------------------------------------------------------------
# quantiles


@njit(cache=True)
def _quantile_sorted(xs, q):
    # numpy's default ("linear") definition on an already sorted array
    n = xs.shape[0]
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


@njit(cache=True)
def group_quantiles(values, group, n_groups, qs, min_count):
    """Quantiles ``qs`` (ascending) of finite ``values`` per ``group`` (ints in [0, n_groups)).

    A group with fewer than ``min_count`` finite values gets the quantiles of all values.
    Returns (n_groups, len(qs)), non-decreasing along each row; NaN only if no value is finite.
    """
    nq = qs.shape[0]
    out = np.empty((n_groups, nq))
    ok = np.isfinite(values)
    pooled = np.sort(values[ok])
    pooled_q = np.full(nq, np.nan)
    if pooled.shape[0]:
        for j in range(nq):
            pooled_q[j] = _quantile_sorted(pooled, qs[j])
    # sort once by group, then each group's values sit in one run
    v = values[ok]
    g_of = group[ok]
    order = np.argsort(g_of, kind="mergesort")
    v = v[order]
    g_of = g_of[order]
    bounds = np.searchsorted(g_of, np.arange(n_groups + 1))
    for g in range(n_groups):
        sel = np.sort(v[bounds[g]:bounds[g + 1]])
        for j in range(nq):
            out[g, j] = _quantile_sorted(sel, qs[j]) if sel.shape[0] >= min_count else pooled_q[j]
        for j in range(1, nq):
            if out[g, j] < out[g, j - 1]:
                out[g, j] = out[g, j - 1]
    return out


def group_quantiles_ref(values, group, n_groups, qs, min_count):
    """Reference for :func:`group_quantiles` (numpy's quantile)."""
    values = np.asarray(values, float)
    ok = np.isfinite(values)
    pooled = np.quantile(values[ok], qs) if ok.any() else np.full(len(qs), np.nan)
    out = []
    for g in range(n_groups):
        sel = values[ok & (np.asarray(group) == g)]
        out.append(np.quantile(sel, qs) if len(sel) >= min_count else pooled)
    return np.maximum.accumulate(np.array(out, float), axis=1)


@njit(cache=True)
def weighted_quantiles_sorted(values, weights, qs):
    """Weighted quantiles of ``values`` (sorted ascending) with ``weights`` (>= 0).

    Each value stands at the middle of its weight on the cumulative scale (Hazen), linear in
    between, clamped to the extremes. NaN if the weights sum to 0.
    """
    n = values.shape[0]
    nq = qs.shape[0]
    out = np.full(nq, np.nan)
    total = weights.sum()
    if n == 0 or total <= 0:
        return out
    cum = 0.0
    prev_p = -1.0
    prev_v = 0.0
    j = 0
    for i in range(n):
        w = weights[i]
        if w <= 0:
            continue
        p = (cum + 0.5 * w) / total
        cum += w
        v = values[i]
        while j < nq and qs[j] <= p:
            if prev_p < 0:
                out[j] = v
            else:
                out[j] = prev_v + (v - prev_v) * (qs[j] - prev_p) / (p - prev_p)
            j += 1
        prev_p = p
        prev_v = v
    while j < nq:
        out[j] = prev_v
        j += 1
    return out


def weighted_quantiles_sorted_ref(values, weights, qs):
    """Reference for :func:`weighted_quantiles_sorted` (numpy interpolation)."""
    v = np.asarray(values, float)
    w = np.asarray(weights, float)
    keep = w > 0
    v, w = v[keep], w[keep]
    if w.sum() <= 0:
        return np.full(len(qs), np.nan)
    p = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(qs, p, v)


@njit(cache=True)
def similar_day_fit_all(y, day_type, day_class, alphas_a, alphas_b, alpha_g, half_widths, blends, rhos,
                        n_level, eval_start, search_from, quantile_days, qs, min_count):
    """The whole fit of the similar-day model in one call (one cached kernel to load in a fresh
    process instead of five).

    With ``search_from >= 0`` the grid is searched (:func:`fit_similar_day`) on days
    ``search_from..`` of ``y`` (n_days, n_slots), else the middle of each grid is taken. Then
    the profiles learn from all of ``y`` (:func:`similar_day_components`), and the
    out-of-sample day-ahead residuals of the last ``quantile_days`` days (level term
    included) give per-hour quantile offsets (:func:`group_quantiles`, 24 groups).
    Returns ``(i_width, i_a, i_b, i_blend, i_rho, mean, f, state_a, state_b, state_g,
    offsets)`` with ``f`` the day-ahead profile forecast of every day [same unit as y].
    """
    n, s_n = y.shape
    if search_from >= 0:
        iw, ia, ib, il, ir, _ = fit_similar_day(y[search_from:], day_type[search_from:], day_class[search_from:],
                                                alphas_a, alphas_b, alpha_g, half_widths, blends, rhos,
                                                n_level, eval_start)
    else:
        iw = half_widths.shape[0] // 2
        ia = alphas_a.shape[0] // 2
        ib = alphas_b.shape[0] // 2
        il = blends.shape[0] // 2
        ir = rhos.shape[0] // 2
    mean = _nanmean(y)
    fa, fb, fg, sa, sb, sg = similar_day_components(y, day_type, day_class, alphas_a[ia], alphas_b[ib],
                                                    alpha_g, half_widths[iw])
    f = combine_profiles(fa, fb, fg, blends[il], mean)
    r = day_level(y, f, n_level)
    d0 = max(1, n - quantile_days)
    m = max(n - d0, 0) * s_n
    resid = np.empty(m)
    group = np.empty(m, np.int64)
    k = 0
    for d in range(d0, n):
        decay = 1.0
        for s in range(s_n):
            decay *= rhos[ir]
            resid[k] = y[d, s] - (f[d, s] + r[d] * decay)
            group[k] = (s * 24) // s_n
            k += 1
    off = group_quantiles(resid, group, 24, qs, min_count)
    return iw, ia, ib, il, ir, mean, f, sa, sb, sg, off


# --------------------------------------------------------------------------------------------
# seasonal naive


@njit(cache=True)
def seasonal_naive_at(y, day, slot, period_days, fallback):
    """Seasonal naive value for (``day``, ``slot``) pairs from matrix ``y`` (n_days, n_slots).

    Takes the latest finite reading ``period_days`` back (then 2x, 3x, ...); if none, the
    latest finite reading at that slot on any earlier day; then ``fallback``.
    """
    n = y.shape[0]
    out = np.empty(day.shape[0])
    for i in range(day.shape[0]):
        d = day[i]
        s = slot[i]
        v = np.nan
        k = d - period_days
        while k >= 0:
            if k < n and y[k, s] == y[k, s]:
                v = y[k, s]
                break
            k -= period_days
        if v != v:
            k = min(d - 1, n - 1)
            while k >= 0:
                if y[k, s] == y[k, s]:
                    v = y[k, s]
                    break
                k -= 1
        out[i] = v if v == v else fallback
    return out


def seasonal_naive_at_ref(y, day, slot, period_days, fallback):
    """Reference for :func:`seasonal_naive_at`."""
    y = np.asarray(y, float)
    out = []
    for d, s in zip(day, slot):
        cands = [k for k in range(d - period_days, -1, -period_days) if k < len(y)]
        cands += list(range(min(d - 1, len(y) - 1), -1, -1))
        vals = [y[k, s] for k in cands if not math.isnan(y[k, s])]
        out.append(vals[0] if vals else fallback)
    return np.array(out)


# --------------------------------------------------------------------------------------------
# session needs: kernel-weighted neighbours


@njit(cache=True)
def _circ_hours(a, b):
    d = abs(a - b) % 24.0
    return min(d, 24.0 - d)


@njit(cache=True)
def needs_weights(q_cp, q_tag, q_kind, q_hour, q_gap, cp, tag, kind, hour, gap,
                  bandwidth_h, lam_cp, lam_tag, lam_kind, bandwidth_gap):
    """Weights of history sessions as neighbours of one query session.

    Gaussian in circular arrival-hour distance (``bandwidth_h`` [h]) times: 1 for the same id
    tag (both known) or the same charging point (tags unknown), ``lam_tag`` for the same
    point but another known tag, ``lam_cp`` for another point; times ``lam_kind`` if the kind
    of day differs; times a Gaussian in log(1 + hours since the charging point's previous
    session) with ``bandwidth_gap`` (0 disables it; a gap < 0 is unknown and neutral). Tags < 0
    are unknown.
    """
    n = cp.shape[0]
    w = np.empty(n)
    lq = math.log1p(q_gap) if q_gap >= 0 else 0.0
    for i in range(n):
        dh = _circ_hours(q_hour, hour[i]) / bandwidth_h
        k = math.exp(-0.5 * dh * dh)
        if q_tag >= 0 and tag[i] >= 0:
            if q_tag == tag[i]:
                who = 1.0
            elif q_cp == cp[i]:
                who = lam_tag
            else:
                who = lam_cp
        elif q_cp == cp[i]:
            who = 1.0
        else:
            who = lam_cp
        if q_kind != kind[i]:
            who *= lam_kind
        if bandwidth_gap > 0 and q_gap >= 0 and gap[i] >= 0:
            dg = (lq - math.log1p(gap[i])) / bandwidth_gap
            who *= math.exp(-0.5 * dg * dg)
        w[i] = k * who
    return w


def needs_weights_ref(q_cp, q_tag, q_kind, q_hour, q_gap, cp, tag, kind, hour, gap,
                      bandwidth_h, lam_cp, lam_tag, lam_kind, bandwidth_gap):
    """Reference for :func:`needs_weights`."""
    out = []
    for c, t, kd, h, g in zip(cp, tag, kind, hour, gap):
        d = abs(q_hour - h) % 24.0
        d = min(d, 24.0 - d) / bandwidth_h
        if q_tag >= 0 and t >= 0:
            who = 1.0 if q_tag == t else (lam_tag if q_cp == c else lam_cp)
        else:
            who = 1.0 if q_cp == c else lam_cp
        if kd != q_kind:
            who *= lam_kind
        if bandwidth_gap > 0 and q_gap >= 0 and g >= 0:
            who *= math.exp(-0.5 * ((math.log1p(q_gap) - math.log1p(g)) / bandwidth_gap) ** 2)
        out.append(math.exp(-0.5 * d * d) * who)
    return np.array(out)


@njit(cache=True)
def needs_quantiles(q_cp, q_tag, q_kind, q_hour, q_gap, q_elapsed_h, q_delivered_kwh,
                    cp, tag, kind, hour, gap, dwell_h, energy_kwh, order_dwell, order_energy,
                    params_dwell, params_energy, qs):
    """Conditional quantiles of dwell [h] and energy [kWh] for query sessions.

    For each query (arrays of length m) the neighbours are weighted by :func:`needs_weights`
    with ``params_*`` = (bandwidth_h, lam_cp, lam_tag, lam_kind, bandwidth_gap), one set per
    target; only neighbours that stayed longer than the query's elapsed time count for dwell,
    and only those that took more than the energy delivered so far count for energy (the car
    is still there, and still wanting). ``order_*`` sort the history by each target. Returns
    two (m, len(qs)) arrays, NaN where no neighbour qualifies (the caller falls back).
    """
    m = q_cp.shape[0]
    nq = qs.shape[0]
    out_d = np.empty((m, nq))
    out_e = np.empty((m, nq))
    d_sorted = dwell_h[order_dwell]
    e_sorted = energy_kwh[order_energy]
    p, r = params_dwell, params_energy
    for j in range(m):
        w = needs_weights(q_cp[j], q_tag[j], q_kind[j], q_hour[j], q_gap[j], cp, tag, kind, hour, gap,
                          p[0], p[1], p[2], p[3], p[4])
        wd = w[order_dwell] * (d_sorted > q_elapsed_h[j])
        out_d[j] = weighted_quantiles_sorted(d_sorted, wd, qs)
        w = needs_weights(q_cp[j], q_tag[j], q_kind[j], q_hour[j], q_gap[j], cp, tag, kind, hour, gap,
                          r[0], r[1], r[2], r[3], r[4])
        we = w[order_energy] * (e_sorted > q_delivered_kwh[j])
        out_e[j] = weighted_quantiles_sorted(e_sorted, we, qs)
    return out_d, out_e


@njit(cache=True)
def needs_loo_error(cp, tag, kind, hour, gap, target, order, queries, grid):
    """Leave-one-out mean absolute error of the weighted median of ``target`` (sorted by
    ``order``) for each row of ``grid`` (bandwidth_h, lam_cp, lam_tag, lam_kind,
    bandwidth_gap), over the history rows in ``queries`` (each gets weight 0 for itself).
    A query whose neighbours all weigh 0 counts as an error of 1e9.

    The weights are those of :func:`needs_weights`, factored so that each query computes its
    Gaussians once per distinct bandwidth rather than once per grid row: a grid of a few
    hundred rows then costs little more than multiplications.
    """
    n = cp.shape[0]
    n_rows = grid.shape[0]
    t_sorted = target[order]
    cp_s, tag_s, kind_s, hour_s, gap_s = cp[order], tag[order], kind[order], hour[order], gap[order]
    ub = np.unique(grid[:, 0])
    ug = np.unique(grid[:, 4])
    rb = np.searchsorted(ub, grid[:, 0])
    rg = np.searchsorted(ug, grid[:, 4])
    kh = np.empty((ub.shape[0], n))
    kg = np.empty((ug.shape[0], n))
    who_kind = np.empty(n)  # 0: same person / point, 1: same point, other tag, 2: other point
    same_kind = np.empty(n, np.bool_)
    self_pos = np.empty(n, np.int64)
    for k in range(n):
        self_pos[order[k]] = k
    err = np.zeros(n_rows)
    w = np.empty(n)
    for qi in range(queries.shape[0]):
        i = queries[qi]
        lq = math.log1p(gap[i]) if gap[i] >= 0 else 0.0
        for k in range(n):
            dh = _circ_hours(hour[i], hour_s[k])
            for b in range(ub.shape[0]):
                x = dh / ub[b]
                kh[b, k] = math.exp(-0.5 * x * x)
            for g in range(ug.shape[0]):
                if ug[g] > 0 and gap[i] >= 0 and gap_s[k] >= 0:
                    x = (lq - math.log1p(gap_s[k])) / ug[g]
                    kg[g, k] = math.exp(-0.5 * x * x)
                else:
                    kg[g, k] = 1.0
            if tag[i] >= 0 and tag_s[k] >= 0:
                who_kind[k] = 0 if tag[i] == tag_s[k] else (1 if cp[i] == cp_s[k] else 2)
            else:
                who_kind[k] = 0 if cp[i] == cp_s[k] else 2
            same_kind[k] = kind[i] == kind_s[k]
        me = self_pos[i]
        for r in range(n_rows):
            lam_cp, lam_tag, lam_kind = grid[r, 1], grid[r, 2], grid[r, 3]
            b, g = rb[r], rg[r]
            total = 0.0
            for k in range(n):
                wk = who_kind[k]
                who = 1.0 if wk == 0 else (lam_tag if wk == 1 else lam_cp)
                if not same_kind[k]:
                    who *= lam_kind
                w[k] = kh[b, k] * who * kg[g, k]
                total += w[k]
            total -= w[me]
            w[me] = 0.0
            # weighted median, Hazen positions as in weighted_quantiles_sorted
            md = np.nan
            if total > 0:
                cum = 0.0
                prev_p = -1.0
                prev_v = 0.0
                for k in range(n):
                    wk = w[k]
                    if wk <= 0:
                        continue
                    p = (cum + 0.5 * wk) / total
                    cum += wk
                    v = t_sorted[k]
                    if p >= 0.5:
                        md = v if prev_p < 0 else prev_v + (v - prev_v) * (0.5 - prev_p) / (p - prev_p)
                        break
                    prev_p = p
                    prev_v = v
                if md != md:
                    md = prev_v
            err[r] += abs(md - target[i]) if md == md else 1e9
    return err / max(queries.shape[0], 1)


# --------------------------------------------------------------------------------------------
# arrivals


@njit(cache=True)
def decayed_day_mean(x, key, n_keys, decay):
    """Mean of the rows of ``x`` (n_days, n_slots) per ``key``, day ``d`` weighted
    ``decay ** (n_days - 1 - d)`` (recent days count more). Rows of a key never seen are NaN."""
    n, s_n = x.shape
    num = np.zeros((n_keys, s_n))
    den = np.zeros(n_keys)
    for d in range(n):
        w = decay ** (n - 1 - d)
        k = key[d]
        den[k] += w
        for s in range(s_n):
            num[k, s] += w * x[d, s]
    out = np.full((n_keys, s_n), np.nan)
    for k in range(n_keys):
        if den[k] > 0:
            for s in range(s_n):
                out[k, s] = num[k, s] / den[k]
    return out


def decayed_day_mean_ref(x, key, n_keys, decay):
    """Reference for :func:`decayed_day_mean`."""
    x = np.asarray(x, float)
    n = len(x)
    out = np.full((n_keys, x.shape[1]), np.nan)
    for k in range(n_keys):
        rows = [d for d in range(n) if key[d] == k]
        if rows:
            w = np.array([decay ** (n - 1 - d) for d in rows])
            out[k] = (w[:, None] * x[rows]).sum(0) / w.sum()
    return out


@njit(cache=True)
def circular_smooth(x, half_width):
    """Triangular smoothing of each row of ``x`` over +-``half_width`` slots, wrapping around
    midnight (the day is a circle for arrival rates). Keeps each row's sum."""
    n, s_n = x.shape
    out = np.zeros((n, s_n))
    norm = 0.0
    for k in range(-half_width, half_width + 1):
        norm += half_width + 1 - abs(k)
    for r in range(n):
        for s in range(s_n):
            acc = 0.0
            for k in range(-half_width, half_width + 1):
                acc += (half_width + 1 - abs(k)) * x[r, (s + k) % s_n]
            out[r, s] = acc / norm
    return out


def circular_smooth_ref(x, half_width):
    """Reference for :func:`circular_smooth`."""
    x = np.asarray(x, float)
    ks = np.arange(-half_width, half_width + 1)
    w = (half_width + 1 - np.abs(ks)).astype(float)
    return sum(wi * np.roll(x, -k, axis=1) for k, wi in zip(ks, w)) / w.sum()
