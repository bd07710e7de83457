"""Drift statistics checked against scipy (and against the reference module's binning) on random data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from mlcycle_runtime import reference
from mlcycle_runtime.drift import stats

SEEDS = [0, 1, 2]


def histogram_pairs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[features, bins] count pairs: identical, shifted, with empty bins on either side and on both."""
    rng = np.random.default_rng(seed)
    base = rng.integers(50, 500, size=10).astype(float)
    shifted = np.roll(base, 3) + rng.integers(0, 50, size=10)
    sparse_ref = base.copy()
    sparse_ref[[0, 4]] = 0  # the reference never saw two bins
    sparse_cur = base.copy()
    sparse_cur[[2, 7, 9]] = 0
    both_empty = base.copy()
    both_empty[5] = 0
    ref = np.stack([base, base, sparse_ref, base, both_empty, rng.integers(0, 5, size=10).astype(float)])
    cur = np.stack([base * 3, shifted, base, sparse_cur, both_empty * 2, rng.integers(0, 5, size=10).astype(float)])
    return ref, cur


@pytest.mark.parametrize("seed", SEEDS)
def test_psi_is_symmetric_kl_of_floored_shares(seed: int) -> None:
    ref, cur = histogram_pairs(seed)
    got = stats.psi(ref, cur)
    for i in range(ref.shape[0]):
        p = np.maximum(ref[i] / ref[i].sum(), stats.PSI_EPSILON)
        q = np.maximum(cur[i] / cur[i].sum(), stats.PSI_EPSILON)
        assert got[i] == pytest.approx(np.sum(rel_entr(q, p) + rel_entr(p, q)), rel=1e-12, abs=1e-15)
    assert got[0] == pytest.approx(0.0, abs=1e-12)  # same shares, three times the traffic
    assert got[1] > 0.1


def test_psi_of_a_bin_the_reference_never_saw_is_large_but_finite() -> None:
    score = stats.psi(np.array([100.0, 100.0, 0.0]), np.array([90.0, 90.0, 20.0]))
    assert np.isfinite(score) and score > 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_jensen_shannon_matches_scipy(seed: int) -> None:
    ref, cur = histogram_pairs(seed)
    got = stats.jensen_shannon(ref, cur)
    for i in range(ref.shape[0]):
        assert got[i] == pytest.approx(jensenshannon(ref[i], cur[i], base=2), rel=1e-12, abs=1e-12)
    assert got[0] == pytest.approx(0.0, abs=1e-7)
    assert stats.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: the maximum in base 2


@pytest.mark.parametrize("seed", SEEDS)
def test_chi_squared_matches_chi2_contingency_without_empty_bins(seed: int) -> None:
    ref, cur = histogram_pairs(seed)
    statistic, pvalue = stats.chi_squared(ref, cur)
    for i in range(ref.shape[0]):
        keep = (ref[i] + cur[i]) > 0
        want = sps.chi2_contingency(np.stack([ref[i, keep], cur[i, keep]]), correction=False)
        assert statistic[i] == pytest.approx(want.statistic, rel=1e-10)
        assert pvalue[i] == pytest.approx(want.pvalue, rel=1e-8, abs=1e-300)
    assert pvalue[0] == pytest.approx(1.0)
    assert pvalue[1] < 1e-6


def test_chi_squared_edge_cases() -> None:
    statistic, pvalue = stats.chi_squared([10, 0, 0], [5, 0, 0])  # everything in one bin on both sides
    assert statistic == 0.0 and pvalue == 1.0
    statistic, pvalue = stats.chi_squared([10, 5], [0, 0])  # no live traffic: nothing to test
    assert np.isnan(statistic) and np.isnan(pvalue)


@pytest.mark.parametrize("seed", SEEDS)
def test_binned_ks_is_the_edge_restricted_statistic_with_scipys_asymptotic_p(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=3000), rng.normal(0.2, 1.0, size=2000)
    edges = np.quantile(a, np.linspace(0, 1, 21)[1:-1])
    ref = reference.histogram_numeric(a, list(edges)).counts
    cur = reference.histogram_numeric(b, list(edges)).counts
    statistic, pvalue = stats.ks_binned(ref, cur)
    # The statistic of the raw data restricted to the edges, which never exceeds the raw one.
    at_edges = np.abs(np.searchsorted(np.sort(a), edges, side="left") / a.size
                      - np.searchsorted(np.sort(b), edges, side="left") / b.size).max()
    assert statistic == pytest.approx(at_edges, rel=1e-12)
    assert statistic <= sps.ks_2samp(a, b).statistic + 1e-12
    want = sps.ks_2samp(a, b, method="asymp")
    assert pvalue == pytest.approx(sps.kstwo.sf(statistic, round(a.size * b.size / (a.size + b.size))), rel=1e-9)
    assert pvalue >= want.pvalue  # a smaller statistic: a larger (more conservative) p-value


def test_binned_wasserstein_approaches_scipy_on_fine_bins() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0, 10, size=200_000), rng.uniform(1, 10, size=200_000)
    edges = np.linspace(0, 10, 201)  # outer bins empty, 0.05 wide inner bins
    ref = reference.histogram_numeric(a, list(edges)).counts
    cur = reference.histogram_numeric(b, list(edges)).counts
    assert stats.wasserstein_binned(ref, cur, edges) == pytest.approx(sps.wasserstein_distance(a, b), rel=1e-2)
    assert stats.wasserstein_binned(ref, ref, edges) == pytest.approx(0.0, abs=1e-12)


def test_binned_wasserstein_is_exact_for_uniform_bins() -> None:
    # Mass spread evenly inside each bin: the piecewise-linear CDF is exact, including where the CDFs cross.
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    ref, cur = np.array([0, 4, 0, 4, 0]), np.array([0, 0, 8, 0, 0])
    points = np.linspace(0, 3, 300_001)
    dens_ref = np.where((points < 1) | (points >= 2), 0.5 / 1, 0) * (points < 3)
    dens_cur = np.where((points >= 1) & (points < 2), 1.0, 0)
    want = sps.wasserstein_distance(points, points, dens_ref, dens_cur)
    assert stats.wasserstein_binned(ref, cur, edges) == pytest.approx(want, rel=1e-3)


def test_histogram_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        stats.psi([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="negative"):
        stats.jensen_shannon([1, -2], [1, 2])
    with pytest.raises(ValueError, match="inner edges"):
        stats.wasserstein_binned([1, 2, 3], [1, 2, 3], [0.5])


def test_pad_adds_empty_bins_that_change_nothing() -> None:
    ref, cur = stats.pad([[5, 5], [1, 2, 3]]), stats.pad([[9, 1], [3, 2, 1]])
    assert ref.shape == (2, 3) and ref[0, 2] == 0
    assert stats.psi(ref, cur)[0] == pytest.approx(stats.psi([5, 5], [9, 1]))
    assert stats.chi_squared(ref, cur)[1][0] == pytest.approx(stats.chi_squared([5, 5], [9, 1])[1])


# --- raw samples ----------------------------------------------------------------------------------------------


def raw_pair(seed: int, dtype: type, n: int = 4000, m: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Columns: continuous, shifted, heavy ties (integers), identical samples, with NaNs, with infinities."""
    rng = np.random.default_rng(seed)
    ref = np.column_stack([rng.normal(size=n), rng.normal(size=n), rng.integers(0, 5, n), rng.normal(size=n),
                           rng.normal(size=n), rng.normal(size=n)]).astype(dtype)
    cur = np.column_stack([rng.normal(size=m), rng.normal(0.3, 1.2, m), rng.integers(1, 6, m), ref[:m, 3],
                           rng.normal(size=m), rng.normal(size=m)]).astype(dtype)
    ref[rng.choice(n, 300, replace=False), 4] = np.nan
    cur[rng.choice(m, 100, replace=False), 4] = np.nan
    ref[:10, 5], cur[:7, 5] = np.inf, -np.inf
    ref[10, 2], cur[10, 2] = -0.0, 0.0  # signed zeros are equal values
    return ref, cur


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", SEEDS)
def test_ks_matches_scipy(seed: int, dtype: type) -> None:
    ref, cur = raw_pair(seed, dtype)
    statistic, pvalue = stats.ks_2samp(ref, cur)
    for j in range(ref.shape[1]):
        a, b = ref[:, j], cur[:, j]
        want = sps.ks_2samp(a[~np.isnan(a)], b[~np.isnan(b)], method="asymp")
        assert statistic[j] == pytest.approx(want.statistic, rel=1e-12, abs=1e-15)
        assert pvalue[j] == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)
    assert pvalue[1] < 1e-6 and pvalue[2] < 1e-6  # shifted, and integers moved up by one


def test_ks_of_a_sample_against_itself_is_zero() -> None:
    x = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    statistic, pvalue = stats.ks_2samp(x, x[::-1])
    assert np.all(statistic == 0) and np.all(pvalue == 1)


def test_ks_p_values_for_large_samples_stay_close_to_scipy() -> None:
    # Above EXACT_KS_N the tail uses the corrected limiting distribution instead of kstwo (seconds per value).
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(60_000, 2)).astype(np.float32)
    cur = np.column_stack([rng.normal(size=60_000), rng.normal(0.02, 1, 60_000)]).astype(np.float32)
    statistic, pvalue = stats.ks_2samp(ref, cur)
    for j in range(2):
        want = sps.ks_2samp(ref[:, j], cur[:, j], method="asymp")
        assert statistic[j] == pytest.approx(want.statistic, rel=1e-12)
        assert pvalue[j] == pytest.approx(want.pvalue, rel=5e-3)


def test_ks_of_an_all_missing_column_is_nan() -> None:
    ref = np.array([[1.0, np.nan], [2.0, np.nan]], dtype=np.float32)
    statistic, pvalue = stats.ks_2samp(ref, ref)
    assert statistic[0] == 0 and np.isnan(statistic[1]) and np.isnan(pvalue[1])


@pytest.mark.parametrize("seed", SEEDS)
def test_wasserstein_matches_scipy(seed: int) -> None:
    ref, cur = raw_pair(seed, np.float64)
    got = stats.wasserstein(ref[:, :5], cur[:, :5])
    for j in range(5):
        a, b = ref[:, j], cur[:, j]
        assert got[j] == pytest.approx(sps.wasserstein_distance(a[~np.isnan(a)], b[~np.isnan(b)]), rel=1e-9)
    assert got[3] < got[1]


def test_raw_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="2 features and current 3"):
        stats.ks_2samp(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shaped"):
        stats.wasserstein(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))


# --- binning --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bin_counts_match_the_reference_binning(dtype: type, order: str) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(150_000, 4)).astype(dtype)
    values[::97, 1] = np.nan
    values[:5, 2] = [np.inf, -np.inf, 0.1, 0.1, 0.1]
    # An edge that is not a float32 value, and float32 values on both sides of it.
    edge = 0.7  # float32(0.7) lies below 0.7
    values[5:8, 3] = [np.float32(edge), np.nextafter(np.float32(edge), np.float32(1)), edge]
    edges = [list(np.quantile(values[:, 0], [0.1, 0.5, 0.9])), [-1.0, 0.0, 1.0], [0.1], [-0.5, edge, edge, 2.0]]
    counts, missing = stats.bin_counts(np.asarray(values, order=order), edges)
    assert counts.shape == (4, 5)
    for j in range(4):
        want = reference.histogram_numeric(values[:, j].astype(np.float64), edges[j])
        assert counts[j, :want.bins].tolist() == want.counts
        assert counts[j, want.bins:].sum() == 0
        assert missing[j] == want.missing


def test_bin_counts_rejects_unsorted_edges() -> None:
    with pytest.raises(ValueError, match="not sorted"):
        stats.bin_counts(np.zeros((3, 1)), [[1.0, 0.0]])
    with pytest.raises(ValueError, match="edge lists"):
        stats.bin_counts(np.zeros((3, 2)), [[1.0]])


def test_histogram_stats_on_binned_raw_data_see_a_shift() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(20_000, 2))
    cur = np.column_stack([rng.normal(size=20_000), rng.normal(1.0, 1.0, 20_000)])
    edges = [reference.quantile_edges(ref[:, j]) for j in range(2)]
    ref_counts, _ = stats.bin_counts(ref, edges)
    cur_counts, _ = stats.bin_counts(cur, edges)
    scores = stats.psi(ref_counts, cur_counts)
    assert scores[0] < 0.01 < 0.2 < scores[1]
    assert stats.chi_squared(ref_counts, cur_counts)[1][1] < 1e-6
