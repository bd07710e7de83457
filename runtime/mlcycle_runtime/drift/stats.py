"""Drift statistics, vectorized: on histograms (reference counts vs live counts with the same bins) and on raw
samples (columns of a reference matrix vs columns of a current one).

Histogram functions take counts shaped [bins] or [features, bins] (features with fewer bins are padded with
empty bins, see `pad`; a bin empty on both sides changes no statistic) and return one value per feature. Raw
functions take float matrices [rows, features], treat NaN as missing and return one value per column.
Binning follows `mlcycle_runtime.reference`: bin `searchsorted(edges, v, side="right")`, NaN is missing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2, kstwo, kstwobign

# PSI divides by the reference share of each bin, so an empty bin on either side would make it infinite; the
# usual remedy is a floor on the shares. 1e-4 keeps one bin that is empty in the reference but holds 10% of the
# live traffic at PSI ~0.8 (clearly drifted) rather than infinity.
PSI_EPSILON = 1e-4

# Rows per block when a row-major matrix is binned: one feature of a block (256 KiB of float32) stays in L2
# while it is compared with every edge.
BLOCK_ROWS = 65536

# Above this effective sample size, kstwo's exact tail is too slow to evaluate (see _ks_pvalue).
EXACT_KS_N = 10_000
KS_TAIL = 0.05

T = TypeVar("T")


# --- histograms -----------------------------------------------------------------------------------------------


def _counts(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape:
        raise ValueError(f"reference and current histograms differ in shape: {ref.shape} vs {cur.shape}")
    if ref.ndim not in (1, 2) or ref.shape[-1] == 0:
        raise ValueError(f"histograms must be shaped [bins] or [features, bins], got {ref.shape}")
    if (ref < 0).any() or (cur < 0).any():
        raise ValueError("histogram counts must not be negative")
    return ref, cur


def _shares(counts: np.ndarray) -> np.ndarray:
    """Counts as shares of their row; a row with no counts becomes NaN (nothing to compare)."""
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / total, np.nan)


def _scalar(value: np.ndarray) -> np.ndarray | float:
    return float(value) if value.ndim == 0 else value


def psi(reference: np.ndarray, current: np.ndarray, epsilon: float = PSI_EPSILON) -> np.ndarray | float:
    """Population stability index, sum((c - r) * ln(c / r)) over bins, with shares floored at `epsilon`.

    It is the symmetric KL divergence KL(c||r) + KL(r||c) of the floored shares; NaN when a side has no counts.
    """
    ref, cur = _counts(reference, current)
    r = np.maximum(_shares(ref), epsilon)
    c = np.maximum(_shares(cur), epsilon)
    return _scalar(np.sum((c - r) * np.log(c / r), axis=-1))


def jensen_shannon(reference: np.ndarray, current: np.ndarray) -> np.ndarray | float:
    """Jensen-Shannon distance with base 2 (0 = same, 1 = disjoint), as scipy.spatial.distance.jensenshannon."""
    ref, cur = _counts(reference, current)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _scalar(np.asarray(jensenshannon(ref, cur, base=2, axis=-1)))


def chi_squared(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray | float, np.ndarray | float]:
    """(statistic, p-value) of Pearson's chi-squared test that both histograms come from one distribution.

    It is scipy.stats.chi2_contingency(np.stack([reference, current]), correction=False) on the bins that are
    not empty on both sides: a test of homogeneity, so the reference is treated as the sample it is and a bin
    the reference never saw does not make the statistic infinite. The p-value is 1 when one bin holds
    everything on both sides and NaN when a side is empty.
    """
    ref, cur = _counts(reference, current)
    table = np.stack([ref, cur], axis=-2)  # [..., 2, bins]
    rows = table.sum(axis=-1, keepdims=True)
    cols = table.sum(axis=-2, keepdims=True)
    total = rows.sum(axis=-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = rows * cols / total
        terms = np.where(cols > 0, (table - expected) ** 2 / expected, 0.0)
    statistic = terms.sum(axis=(-2, -1))
    dof = (cols > 0).sum(axis=(-2, -1)) - 1
    empty = (rows == 0).any(axis=(-2, -1))
    statistic = np.where(empty, np.nan, statistic)
    pvalue = np.where(empty, np.nan, np.where(dof > 0, chi2.sf(statistic, np.maximum(dof, 1)), 1.0))
    return _scalar(statistic), _scalar(pvalue)


def _ks_pvalue(statistic: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Two-sided asymptotic p-value, as scipy.stats.ks_2samp(method="asymp"): kstwo.sf(D, round(nm / (n + m))).

    kstwo takes about a second per value in its tail for large samples, so where the effective sample size is
    over EXACT_KS_N and Stephens' corrected limiting distribution says p < KS_TAIL, that approximation is used
    instead (relative error under 0.3% for p >= 1e-3 there; verdicts at usual thresholds are unchanged).
    """
    statistic = np.asarray(statistic, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    valid = (n > 0) & (m > 0) & np.isfinite(statistic)
    with np.errstate(invalid="ignore", divide="ignore"):
        en = np.where(valid, np.round(n * m / (n + m)), 1.0)
        d = np.where(valid, statistic, 0.0)
        root = np.sqrt(en)
        p = kstwobign.sf((root + 0.12 + 0.11 / root) * d)
    exact = valid & ((en <= EXACT_KS_N) | (p >= KS_TAIL))
    if exact.any():
        p = np.where(exact, 0.0, p)
        p[exact] = kstwo.sf(d[exact], en[exact])
    return np.where(valid, np.clip(p, 0.0, 1.0), np.nan)


def ks_binned(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray | float, np.ndarray | float]:
    """(statistic, p-value) of the two-sample KS test computed from histograms: an approximation.

    The CDFs are known only at the bin edges, so the statistic is the largest CDF gap at an edge (never more
    than the KS statistic of the raw data, so the p-value errs towards "no drift"); the p-value is the
    asymptotic one of ks_2samp with the histogram totals as sample sizes.
    """
    ref, cur = _counts(reference, current)
    gap = np.abs(np.cumsum(_shares(ref), axis=-1) - np.cumsum(_shares(cur), axis=-1))
    statistic = gap.max(axis=-1)
    return _scalar(statistic), _scalar(_ks_pvalue(statistic, ref.sum(axis=-1), cur.sum(axis=-1)))


def wasserstein_binned(reference: np.ndarray, current: np.ndarray, edges: np.ndarray) -> np.ndarray | float:
    """Wasserstein-1 distance (in the feature's units) from histograms: an approximation.

    The integral of |F_ref - F_cur| over the inner bins, with each distribution taken as uniform within a
    bin, so the CDFs are linear between edges; the two open-ended outer bins have no width and add nothing.
    `edges` are the inner edges, shaped [..., bins - 1] (pad a feature's edges by repeating its last one).
    """
    ref, cur = _counts(reference, current)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.shape[-1] != ref.shape[-1] - 1:
        raise ValueError(f"{ref.shape[-1]} bins need {ref.shape[-1] - 1} inner edges, got {edges.shape[-1]}")
    if (np.diff(edges, axis=-1) < 0).any():
        raise ValueError("bin edges must be sorted")
    gap = np.cumsum(_shares(ref), axis=-1) - np.cumsum(_shares(cur), axis=-1)  # the gap at each inner edge
    a, b = gap[..., :-2], gap[..., 1:-1]
    width = np.diff(edges, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # The integral of |a + (b - a) t| for t in [0, 1]: a trapezoid, or two triangles when the gap changes sign.
        same_sign = a * b >= 0
        area = np.where(same_sign, (np.abs(a) + np.abs(b)) / 2,
                        (a * a + b * b) / (2 * (np.abs(a) + np.abs(b))))
    return _scalar(np.sum(area * width, axis=-1))


def pad(histograms: Sequence[Sequence[float]]) -> np.ndarray:
    """Ragged per-feature counts as one [features, max bins] matrix, padded with empty bins."""
    width = max((len(h) for h in histograms), default=0)
    out = np.zeros((len(histograms), width), dtype=np.float64)
    for i, h in enumerate(histograms):
        out[i, :len(h)] = h
    return out


# --- raw samples ----------------------------------------------------------------------------------------------


def _workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _per_column(fn: Callable[[int], T], columns: int) -> list[T]:
    """Run `fn` over columns on a few threads: numpy's sort and searchsorted release the GIL."""
    workers = min(_workers(), columns)
    if workers <= 1:
        return [fn(j) for j in range(columns)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, range(columns)))


def _matrix(values: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be shaped [rows, features], got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _pair(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, cur = _matrix(reference, "reference"), _matrix(current, "current")
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} features and current {cur.shape[1]}")
    dtype = np.result_type(ref.dtype, cur.dtype)
    return ref.astype(dtype, copy=False), cur.astype(dtype, copy=False)


def _sorted_valid(column: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A column sorted (into `out` when given), without its NaNs (sorting puts them last)."""
    if out is None:
        ordered = np.sort(column)
    else:
        ordered = out
        ordered[:] = column
        ordered.sort()
    if ordered.size and np.isnan(ordered[-1]):
        return ordered[:np.searchsorted(ordered, np.nan, side="left")]
    return ordered


def _largest_gap(x: np.ndarray, y: np.ndarray) -> int:
    """max |F_x - F_y| * len(x) * len(y) over the values of x (sorted, NaN-free), in exact integers.

    The CDFs are read at the last of each run of equal values, chunk by chunk so that the temporaries stay in
    cache and each chunk searches only the slice of y its values span.
    """
    nx, ny = x.size, y.size
    best = 0
    for start in range(0, nx, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, nx)
        seg = x[start:stop]
        ends = np.empty(seg.size, dtype=bool)
        np.not_equal(seg[:-1], seg[1:], out=ends[:-1])
        ends[-1] = stop == nx or seg[-1] != x[stop]
        at = np.flatnonzero(ends)
        if at.size == 0:
            continue
        values = seg[at]
        lo = np.searchsorted(y, values[0], side="right")
        hi = np.searchsorted(y, values[-1], side="right")
        below = lo + np.searchsorted(y[lo:hi], values, side="right")
        gap = (at + start + 1) * ny - below * nx
        best = max(best, int(gap.max()), -int(gap.min()))
    return best


def _ks_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided KS statistic of two sorted NaN-free samples: the largest CDF gap at any observed value."""
    if a.size == 0 or b.size == 0:
        return np.nan
    return max(_largest_gap(a, b), _largest_gap(b, a)) / (a.size * b.size)


# Float32 values widened to float64 leave the low 29 mantissa bits zero: bit 0 carries which sample a value came
# from, so one sort orders both samples together. Infinities are moved to a finite power of two first (bit 0 of
# an infinity would make it NaN); every finite float32 lies strictly between -BIG and BIG.
_BIG = 2.0**997


def _ks_float32(a: np.ndarray, b: np.ndarray, keys: np.ndarray) -> tuple[float, int, int]:
    """(KS statistic, valid a, valid b) of two float32 columns with one sort of both, labels in bit 0.

    `keys` is a float64 scratch buffer of len(a) + len(b), reused across columns: fresh 16 MB arrays per column
    cost page faults that serialize the threads.
    """
    keys[:a.size], keys[a.size:] = a, b
    nan = np.isnan(keys)
    np.clip(keys, -_BIG, _BIG, out=keys)
    keys += 0.0  # -0.0 becomes +0.0, so equal values share one bit pattern
    keys.view(np.uint64)[a.size:] |= np.uint64(1)
    if nan.any():
        n, m = a.size - int(np.count_nonzero(nan[:a.size])), b.size - int(np.count_nonzero(nan[a.size:]))
        keys = keys[~nan]
    else:
        n, m = a.size, b.size
    if n == 0 or m == 0:
        return np.nan, n, m
    keys.sort()
    bits = keys.view(np.uint64)
    best, from_b = 0, 0
    for start in range(0, n + m, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n + m)
        seg = bits[start:stop]
        labels = seg & np.uint64(1)
        seen_b = from_b + np.cumsum(labels, dtype=np.int64)
        from_b = int(seen_b[-1])
        # Evaluate the CDFs after the last of each run of equal values (labels differ only in bit 0).
        ends = np.empty(seg.size, dtype=bool)
        value = seg >> np.uint64(1)
        np.not_equal(value[:-1], value[1:], out=ends[:-1])
        ends[-1] = stop == n + m or value[-1] != bits[stop] >> np.uint64(1)
        at = np.flatnonzero(ends)
        b_below = seen_b[at]
        a_below = at + (start + 1) - b_below
        gap = a_below * m - b_below * n
        if gap.size:
            best = max(best, int(gap.max()), -int(gap.min()))
    return best / (n * m), n, m


def ks_2samp(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(statistic, p-value) per column of the two-sided two-sample KS test, NaNs dropped per column.

    The statistic is exactly scipy.stats.ks_2samp's; the p-value is its asymptotic one (method="asymp", which
    scipy's default also uses once a sample exceeds 10,000 values). float32 columns are merged with one sort;
    other columns are sorted and the CDFs read with searchsorted at the ends of runs of ties.
    """
    ref, cur = _pair(reference, current)
    scratch = threading.local()

    def column(j: int) -> tuple[float, int, int]:
        if ref.dtype == np.float32:
            if not hasattr(scratch, "keys"):
                scratch.keys = np.empty(ref.shape[0] + cur.shape[0], dtype=np.float64)
            return _ks_float32(ref[:, j], cur[:, j], scratch.keys)
        if not hasattr(scratch, "a"):
            scratch.a, scratch.b = np.empty(ref.shape[0], ref.dtype), np.empty(cur.shape[0], cur.dtype)
        a, b = _sorted_valid(ref[:, j], scratch.a), _sorted_valid(cur[:, j], scratch.b)
        return _ks_sorted(a, b), a.size, b.size

    results = _per_column(column, ref.shape[1])
    statistic = np.array([r[0] for r in results], dtype=np.float64)
    n = np.array([r[1] for r in results])
    m = np.array([r[2] for r in results])
    return statistic, _ks_pvalue(statistic, n, m)


def _wasserstein_sorted(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 or b.size == 0:
        return np.nan
    points = np.sort(np.concatenate([a, b])).astype(np.float64)
    deltas = np.diff(points)
    inner = points[:-1]
    gap = np.searchsorted(a, inner, side="right") / a.size - np.searchsorted(b, inner, side="right") / b.size
    return float(np.sum(np.abs(gap) * deltas))


def wasserstein(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance per column (the area between the two empirical CDFs), NaNs dropped per column,
    as scipy.stats.wasserstein_distance."""
    ref, cur = _pair(reference, current)

    def column(j: int) -> float:
        a, b = _sorted_valid(ref[:, j]), _sorted_valid(cur[:, j])
        return _wasserstein_sorted(a.astype(np.float64), b.astype(np.float64))

    return np.array(_per_column(column, ref.shape[1]), dtype=np.float64)


def _thresholds(edges: Sequence[float], dtype: np.dtype) -> np.ndarray:
    """Edges in the data's dtype such that `v < t` there equals `v < edge` in float64 for every value v."""
    exact = np.asarray(edges, dtype=np.float64)
    if dtype == np.float64:
        return exact
    rounded = exact.astype(dtype)
    # An edge that rounds down would let a value between the two fall on the wrong side: step up one ulp.
    return np.where(rounded.astype(np.float64) < exact, np.nextafter(rounded, dtype.type(np.inf)), rounded)


def bin_counts(values: np.ndarray, edges: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(counts [features, max bins], missing [features]) of a matrix binned against each feature's edges.

    Bin i of a feature holds edges[i-1] <= v < edges[i] (searchsorted side="right", as the router bins), so a
    feature with k edges has k + 1 bins and the rest of its row is padding; NaN counts as missing. Counts are
    taken as the number of values below each edge, one comparison pass per edge over cache-sized blocks.
    """
    x = _matrix(values, "values")
    if len(edges) != x.shape[1]:
        raise ValueError(f"{len(edges)} edge lists for {x.shape[1]} features")
    for j, e in enumerate(edges):
        if np.any(np.diff(np.asarray(e, dtype=np.float64)) < 0):
            raise ValueError(f"edges of feature {j} are not sorted")
    thresholds = [_thresholds(e, x.dtype) for e in edges]
    width = max((len(t) for t in thresholds), default=0)
    below = np.zeros((x.shape[1], width), dtype=np.int64)
    missing = np.zeros(x.shape[1], dtype=np.int64)

    def count(j: int, column: np.ndarray) -> None:
        missing[j] += np.count_nonzero(np.isnan(column))
        for k, t in enumerate(thresholds[j]):
            below[j, k] += np.count_nonzero(column < t)

    if x.flags.f_contiguous:
        for j in range(x.shape[1]):
            count(j, x[:, j])
    else:
        for start in range(0, x.shape[0], BLOCK_ROWS):
            block = np.ascontiguousarray(x[start:start + BLOCK_ROWS].T)
            for j in range(x.shape[1]):
                count(j, block[j])
    valid = x.shape[0] - missing
    for j, t in enumerate(thresholds):
        below[j, len(t):] = valid[j]  # padding: nothing lies between the last edge and the padded ones
    cumulative = np.concatenate([np.zeros((x.shape[1], 1), dtype=np.int64), below, valid[:, None]], axis=1)
    return np.diff(cumulative, axis=1), missing


__all__ = ["PSI_EPSILON", "bin_counts", "chi_squared", "jensen_shannon", "ks_2samp", "ks_binned", "pad", "psi",
           "wasserstein", "wasserstein_binned"]
