"""The forecaster's Numba kernels against their slow pure-Python references on small inputs."""

import numpy as np
import pytest

from nowblock.forecast import kernels as K

SEEDS = [0, 1, 2]


def _matrix(rng, n_days=24, n_slots=8, nan_share=0.1):
    y = rng.gamma(2.0, 1.0, (n_days, n_slots)) + np.sin(np.arange(n_slots))[None, :]
    y[rng.random(y.shape) < nan_share] = np.nan
    return y


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("half_width", [0, 1, 3])
def test_smooth_nan(seed, half_width):
    y = _matrix(np.random.default_rng(seed), 3, 10, 0.3).ravel()
    np.testing.assert_allclose(K.smooth_nan(y, half_width), K.smooth_nan_ref(y, half_width), equal_nan=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_ewma_profiles(seed):
    rng = np.random.default_rng(seed)
    y = _matrix(rng)
    key = rng.integers(0, 3, len(y))
    f, st = K.ewma_profiles(y, key, 3, 0.3)
    f_ref, st_ref = K.ewma_profiles_ref(y, key, 3, 0.3)
    np.testing.assert_allclose(f, f_ref, equal_nan=True)
    np.testing.assert_allclose(st, st_ref, equal_nan=True)
    assert np.isnan(f[0]).all()  # the first day has nothing before it


@pytest.mark.parametrize("seed", SEEDS)
def test_combine_profiles(seed):
    rng = np.random.default_rng(seed)
    fa, fb, fg = (_matrix(rng, 6, 5, 0.4) for _ in range(3))
    out = K.combine_profiles(fa, fb, fg, 0.3, -1.0)
    np.testing.assert_allclose(out, K.combine_profiles_ref(fa, fb, fg, 0.3, -1.0))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_day_level(seed):
    rng = np.random.default_rng(seed)
    y, f = _matrix(rng), _matrix(rng)
    np.testing.assert_allclose(K.day_level(y, f, 3), K.day_level_ref(y, f, 3))


def test_similar_day_components():
    rng = np.random.default_rng(4)
    y = _matrix(rng, 16, 6, 0.2)
    dtype = np.arange(16, dtype=np.int64) % 7
    dclass = np.where(dtype <= 4, 0, dtype - 4).astype(np.int64)
    got = K.similar_day_components(y, dtype, dclass, 0.3, 0.2, 0.1, 1)
    for a, b in zip(got, K.similar_day_components_ref(y, dtype, dclass, 0.3, 0.2, 0.1, 1)):
        np.testing.assert_allclose(a, b, equal_nan=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_fit_similar_day(seed):
    rng = np.random.default_rng(seed)
    y = _matrix(rng, 30, 6, 0.05)
    dtype = np.arange(30, dtype=np.int64) % 7
    dclass = np.where(dtype <= 4, 0, dtype - 4).astype(np.int64)
    args = (y, dtype, dclass, np.array([0.2, 0.6, 1.0]), np.array([0.1, 0.4]), 0.1, np.array([0, 1], np.int64),
            np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.9]), 2, 14)
    got = K.fit_similar_day(*args)
    ref = K.fit_similar_day_ref(*args)
    assert got[:5] == ref[:5]
    assert got[5] == pytest.approx(ref[5])



@pytest.mark.parametrize("search_from", [-1, 0, 5])
def test_similar_day_fit_all_is_the_references_chained(search_from):
    rng = np.random.default_rng(7)
    n, s_n = 40, 24  # one slot per hour: each residual group is one slot
    y = _matrix(rng, n, s_n, 0.05)
    dtype = np.arange(n, dtype=np.int64) % 7
    dclass = np.where(dtype <= 4, 0, dtype - 4).astype(np.int64)
    grids = (np.array([0.2, 0.6, 1.0]), np.array([0.1, 0.4]), 0.1, np.array([0, 1], np.int64),
             np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.9]))
    qs = np.array([0.1, 0.5, 0.9])
    got = K.similar_day_fit_all(y, dtype, dclass, *grids, 2, 14, search_from, 20, qs, 5)
    aa, ab, ag, widths, blends, rhos = grids
    if search_from >= 0:
        sl = slice(search_from, None)
        idx = K.fit_similar_day_ref(y[sl], dtype[sl], dclass[sl], *grids, 2, 14)[:5]
    else:
        idx = tuple(len(g) // 2 for g in (widths, aa, ab, blends, rhos))
    assert tuple(got[:5]) == tuple(idx)
    iw, ia, ib, il, ir = idx
    mean = np.nanmean(y)
    fa, fb, fg, sa, sb, sg = K.similar_day_components_ref(y, dtype, dclass, aa[ia], ab[ib], ag, widths[iw])
    f = K.combine_profiles_ref(fa, fb, fg, blends[il], mean)
    r = K.day_level_ref(y, f, 2)
    pred = f[20:] + r[20:, None] * rhos[ir] ** np.arange(1, s_n + 1)[None, :]
    resid = (y[20:] - pred).ravel()
    off = K.group_quantiles_ref(resid, np.tile(np.arange(s_n), n - 20), 24, qs, 5)
    assert got[5] == pytest.approx(mean)
    for a, b in zip(got[6:], (f, sa, sb, sg, off)):
        np.testing.assert_allclose(a, b, equal_nan=True)

@pytest.mark.parametrize("seed", SEEDS)
def test_group_quantiles(seed):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=200)
    v[rng.random(200) < 0.1] = np.nan
    g = rng.integers(0, 5, 200)
    g[g == 4] = 3  # group 4 stays empty: pooled quantiles
    qs = np.array([0.05, 0.5, 0.9, 0.95])
    got = K.group_quantiles(v, g, 5, qs, 10)
    np.testing.assert_allclose(got, K.group_quantiles_ref(v, g, 5, qs, 10))
    assert (np.diff(got, axis=1) >= 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_quantiles(seed):
    rng = np.random.default_rng(seed)
    v = np.sort(rng.normal(size=30))
    w = rng.random(30) * (rng.random(30) < 0.7)
    qs = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    got = K.weighted_quantiles_sorted(v, w, qs)
    np.testing.assert_allclose(got, K.weighted_quantiles_sorted_ref(v, w, qs))
    assert np.isnan(K.weighted_quantiles_sorted(v, np.zeros(30), qs)).all()
    # equal weights: the median of an odd sample is its middle value
    assert K.weighted_quantiles_sorted(v[:5], np.ones(5), np.array([0.5]))[0] == pytest.approx(v[2])


@pytest.mark.parametrize("seed", SEEDS)
def test_seasonal_naive_at(seed):
    rng = np.random.default_rng(seed)
    y = _matrix(rng, 20, 4, 0.3)
    day = rng.integers(0, 30, 40).astype(np.int64)
    slot = rng.integers(0, 4, 40).astype(np.int64)
    got = K.seasonal_naive_at(y, day, slot, 7, -1.0)
    np.testing.assert_allclose(got, K.seasonal_naive_at_ref(y, day, slot, 7, -1.0))


def _needs_history(rng, n):
    cp, tag, kind = rng.integers(0, 3, n), rng.integers(-1, 3, n), rng.integers(0, 3, n)
    hour, gap = rng.uniform(0, 24, n), np.where(rng.random(n) < 0.2, -1.0, rng.uniform(0, 80, n))
    return cp, tag, kind, hour, gap, rng.uniform(0.5, 20, n), rng.uniform(1, 30, n)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bw_gap", [0.0, 0.5])
def test_needs_kernels(seed, bw_gap):
    rng = np.random.default_rng(seed)
    cp, tag, kind, hour, gap, dwell, energy = _needs_history(rng, 40)
    prm = (1.5, 0.05, 0.3, 0.2, bw_gap)
    w = K.needs_weights(1, 2, 0, 23.5, 20.0, cp, tag, kind, hour, gap, *prm)
    np.testing.assert_allclose(w, K.needs_weights_ref(1, 2, 0, 23.5, 20.0, cp, tag, kind, hour, gap, *prm))
    od, oe = np.argsort(dwell), np.argsort(energy)
    qs = np.array([0.1, 0.5, 0.9])
    queries = [(0, -1, 0, 8.0, -1.0), (1, 2, 1, 18.0, 30.0), (2, 0, 2, 0.5, 2.0)]
    q_el, q_del = np.array([0.0, 12.0, 25.0]), np.array([0.0, 10.0, 0.0])
    qd, qe = K.needs_quantiles(*(np.array(c) for c in zip(*queries)), q_el, q_del, cp, tag, kind, hour, gap,
                               dwell, energy, od, oe, np.array(prm), np.array(prm), qs)
    for j, q in enumerate(queries):
        wj = K.needs_weights_ref(*q, cp, tag, kind, hour, gap, *prm)
        ref_d = K.weighted_quantiles_sorted_ref(dwell[od], (wj * (dwell > q_el[j]))[od], qs)
        ref_e = K.weighted_quantiles_sorted_ref(energy[oe], (wj * (energy > q_del[j]))[oe], qs)
        np.testing.assert_allclose(qd[j], ref_d, equal_nan=True)
        np.testing.assert_allclose(qe[j], ref_e, equal_nan=True)
    assert np.isnan(qd[2]).all()  # nobody stayed longer than 25 h


def test_needs_loo_error():
    rng = np.random.default_rng(3)
    cp, tag, kind, hour, gap, dwell, energy = _needs_history(rng, 25)
    od = np.argsort(dwell)
    queries = np.array([0, 5, 9, 17, 24], np.int64)
    # rows share bandwidths in any order: the kernel computes each distinct Gaussian once
    grid = np.array([[1.0, 0.1, 0.5, 0.2, 0.0], [3.0, 0.1, 0.5, 1.0, 0.5], [1.0, 0.02, 0.05, 1.0, 0.5],
                     [3.0, 0.5, 1.0, 0.05, 0.0], [0.5, 1e-4, 0.3, 0.3, 2.0]])
    err = K.needs_loo_error(cp, tag, kind, hour, gap, dwell, od, queries, grid)
    ref = []
    for row in grid:
        tot = 0.0
        for i in queries:
            w = K.needs_weights_ref(cp[i], tag[i], kind[i], hour[i], gap[i], cp, tag, kind, hour, gap, *row)
            w[i] = 0.0
            tot += abs(K.weighted_quantiles_sorted_ref(dwell[od], w[od], [0.5])[0] - dwell[i])
        ref.append(tot / len(queries))
    np.testing.assert_allclose(err, ref)


@pytest.mark.parametrize("seed", SEEDS)
def test_arrival_kernels(seed):
    rng = np.random.default_rng(seed)
    x = rng.poisson(0.5, (15, 12)).astype(float)
    key = rng.integers(0, 3, 15)
    np.testing.assert_allclose(K.decayed_day_mean(x, key, 4, 0.9), K.decayed_day_mean_ref(x, key, 4, 0.9), equal_nan=True)
    sm = K.circular_smooth(x, 2)
    np.testing.assert_allclose(sm, K.circular_smooth_ref(x, 2))
    np.testing.assert_allclose(sm.sum(axis=1), x.sum(axis=1))  # smoothing keeps the daily count
