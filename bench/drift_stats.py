"""Drift statistics at scale: PSI, Jensen-Shannon and chi-squared (binning of the live rows included) and the
two-sample KS test (raw live rows against a raw reference sample of the same size), vectorized
(`mlcycle_runtime.drift.stats`) beside a per-feature scipy/numpy loop on the same data in the same run.

Data: float32 (the dtype of the router's and trainer's matrices), standard normal, with one feature in five
shifted by 0.05 in the live rows; reference bin edges are the deciles of the reference sample. Prints a table
with the DESIGN.md targets and the peak RSS; asserts nothing.

    .venv/bin/python bench/drift_stats.py                      # 1M rows x 50 features
    .venv/bin/python bench/drift_stats.py --rows 20000 --features 5   # CI-sized
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable

import numpy as np
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from mlcycle_runtime.drift import stats
from mlcycle_runtime.reference import bin_numeric, quantile_edges

TARGETS = {"psi": 1.0, "js": 1.0, "chi2": 1.0, "ks": 10.0}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def loop_bins(values: np.ndarray, edges: list[list[float]]) -> np.ndarray:
    """The per-feature baseline: the reference module's searchsorted binning and a bincount per column."""
    width = max(len(e) for e in edges) + 1
    out = np.zeros((values.shape[1], width))
    for j, e in enumerate(edges):
        idx = bin_numeric(values[:, j], e)
        out[j, :len(e) + 1] = np.bincount(idx[idx >= 0], minlength=len(e) + 1)
    return out


def loop_psi(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    out = []
    for r, c in zip(ref, cur, strict=True):
        p, q = np.maximum(r / r.sum(), stats.PSI_EPSILON), np.maximum(c / c.sum(), stats.PSI_EPSILON)
        out.append(np.sum(rel_entr(q, p) + rel_entr(p, q)))
    return np.array(out)


def loop_js(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    return np.array([jensenshannon(r, c, base=2) for r, c in zip(ref, cur, strict=True)])


def loop_chi2(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    out = []
    for r, c in zip(ref, cur, strict=True):
        keep = (r + c) > 0
        out.append(sps.chi2_contingency(np.stack([r[keep], c[keep]]), correction=False).pvalue)
    return np.array(out)


def loop_ks(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    return np.array([sps.ks_2samp(ref[:, j], cur[:, j]).pvalue for j in range(ref.shape[1])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="live rows (and reference rows)")
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the scipy loops (they take a minute)")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    print(f"data: {args.rows:,} rows x {args.features} features, float32; reference sample of the same size; "
          f"{len(os.sched_getaffinity(0))} CPUs, numpy {np.__version__}")
    reference = rng.standard_normal((args.rows, args.features), dtype=np.float32)
    live = rng.standard_normal((args.rows, args.features), dtype=np.float32)
    live[:, ::5] += np.float32(0.05)
    edges = [quantile_edges(reference[:, j]) for j in range(args.features)]
    ref_counts, _ = stats.bin_counts(reference, edges)  # what reference.json holds: built once, at training
    print(f"setup done, peak RSS {peak_rss_mib():,.0f} MiB\n")

    rows: list[tuple[str, float, float | None, float | None, float]] = []
    t_bin, (cur_counts, _) = timed(lambda: stats.bin_counts(live, edges))
    t_psi, psi = timed(lambda: stats.psi(ref_counts, cur_counts))
    t_js, js = timed(lambda: stats.jensen_shannon(ref_counts, cur_counts))
    t_chi, (_, chi) = timed(lambda: stats.chi_squared(ref_counts, cur_counts))
    t_ks, (_, ks) = timed(lambda: stats.ks_2samp(reference, live))
    rss_vectorized = peak_rss_mib()

    base: dict[str, tuple[float, np.ndarray]] = {}
    if not args.no_baseline:
        tb_bin, loop_counts = timed(lambda: loop_bins(live, edges))
        for name, fn in (("psi", loop_psi), ("js", loop_js), ("chi2", loop_chi2)):
            seconds, values = timed(lambda fn=fn: fn(ref_counts, loop_counts))
            base[name] = (tb_bin + seconds, values)
        base["bin"] = (tb_bin, loop_counts)
        base["ks"] = timed(lambda: loop_ks(reference, live))

    def add(label: str, key: str, seconds: float, values: np.ndarray | None, target: float | None) -> None:
        loop = base.get(key)
        # Absolute: KS p-values of shifted features are ~1e-100, where relative differences mean nothing.
        diff = float(np.nanmax(np.abs(values - loop[1]))) if loop is not None and values is not None else None
        rows.append((label, seconds, loop[0] if loop else None, diff, target or float("nan")))

    add("binning 1 matrix", "bin", t_bin, cur_counts.astype(float), None)
    add("PSI (incl. binning)", "psi", t_bin + t_psi, psi, TARGETS["psi"])
    add("Jensen-Shannon (incl. binning)", "js", t_bin + t_js, js, TARGETS["js"])
    add("chi-squared p (incl. binning)", "chi2", t_bin + t_chi, chi, TARGETS["chi2"])
    add("KS p, raw vs raw", "ks", t_ks, ks, TARGETS["ks"])

    print(f"{'statistic':32} {'vectorized s':>13} {'scipy loop s':>13} {'speed-up':>9} {'max abs diff':>13} "
          f"{'target s':>9}")
    for label, seconds, loop_s, diff, target in rows:
        loop_text = f"{loop_s:13.3f}" if loop_s is not None else f"{'-':>13}"
        speed = f"{loop_s / seconds:8.1f}x" if loop_s else f"{'-':>9}"
        diff_text = f"{diff:13.1e}" if diff is not None else f"{'-':>13}"
        target_text = f"{'<= ' + format(target, 'g'):>9}" if target == target else f"{'':>9}"
        print(f"{label:32} {seconds:13.3f} {loop_text} {speed} {diff_text} {target_text}")
    print(f"\npeak RSS: {rss_vectorized:,.0f} MiB after the vectorized statistics, {peak_rss_mib():,.0f} MiB at the "
          "end (the input matrices alone are "
          f"{2 * reference.nbytes / 2**20:,.0f} MiB)")
    print("drifted features (KS p < 0.01): "
          f"{int(np.sum(ks < 0.01))} of {args.features} (shifted: {len(range(0, args.features, 5))})")


if __name__ == "__main__":
    main()
