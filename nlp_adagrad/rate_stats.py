"""The medians and binned log-log fits that make up most of a snapshot's summaries, and its
histograms' counts, computed in C++ (csrc/rate_stats.cpp, through ctypes) where NumPy took
~30 calls per fit, a gather per median and ~10 passes per histogram: ~0.3 ms of Python a
snapshot, which the loop pays itself when training takes every core
(telemetry_writer.InlineSink).

The library is built once per machine with g++ (no torch: the telemetry process, which never
imports torch, loads it too, so every sink writes the same numbers) into
~/.cache/nlp_adagrad; `scripts/setup.sh` builds it, and so does the first run that finds it
missing. Where it does not build, NumPy computes the same numbers with one warning: the
reference that the tests hold the C++ to (medians and histogram counts equal, fits and
histogram sums within 1e-12).
`python -m nlp_adagrad.rate_stats` builds it and says where.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from nlp_adagrad.kernels import cache_home, report_build

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "rate_stats.cpp"
# vector loops of this machine's instructions (without -march each ceil was a call into
# libm, and a division that might trap or set errno kept a loop from vectors: the histograms'
# counts took longer than NumPy's); the same bits as without: no -ffast-math, no contraction
# into fused multiply-adds, so nothing is reassociated
FLAGS = [
    *("-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off"),
    *("-std=c++17", "-shared", "-fPIC"),
    # rate_stats_summaries' threads: one libgomp.so.1 serves a process, whichever loaded it
    # first; in the trainer, which imports torch first, torch's, so the loop's summaries go to
    # the training threads' own team (the telemetry process never starts one)
    "-fopenmp",
]
BUILD_SECONDS = 120
# bins a histogram's counts have room for at first: a log10 rate's histogram at 0.05 a bin
# takes 20 a decade
HISTOGRAM_BINS = 4096
# a histogram's numbers before its counts (rate_stats_histograms): low, high, num, first, bins,
# sum, sum of squares
HISTOGRAM_HEADER = 7


@dataclass(frozen=True)
class Groups:
    """Groups of positions into a view's arrays, concatenated once for one C++ call:
    group g is positions[offsets[g]:offsets[g + 1]]; `weighted[g]` whether its median
    weighs the values when weights are given."""

    positions: np.ndarray  # int64
    offsets: np.ndarray  # int64, one more than the groups
    weighted: np.ndarray  # uint8

    @classmethod
    def of(cls, groups: list[np.ndarray], weighted: list[bool]) -> Groups:
        sizes = [len(g) for g in groups]
        return cls(
            positions=np.concatenate([np.zeros(0, np.int64), *groups]).astype(np.int64),
            offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            weighted=np.array(weighted, dtype=np.uint8),
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, g: int) -> np.ndarray:
        return self.positions[self.offsets[g] : self.offsets[g + 1]]


def medians(values: np.ndarray, groups: Groups, weights: np.ndarray | None = None) -> list[float]:
    """Per group, the median of its finite values: np.median's without weights (or for a
    group not `weighted`); with them the weighted lower median of the values of weight > 0
    (a sample's: tokens of weight 0 are only shown), the lower middle when the weights are
    all the same. NaN for a group with none."""
    values, weights = _doubles(values), _doubles(weights)
    lib = library()
    if lib is None:
        return [
            _median(values[p], None if weights is None or not by else weights[p])
            for p, by in zip(groups, groups.weighted)
        ]
    out = np.empty(len(groups))
    lib.rate_stats_medians(
        values.ctypes.data,
        _address(weights),
        groups.positions.ctypes.data,
        groups.offsets.ctypes.data,
        groups.weighted.ctypes.data,
        len(groups),
        out.ctypes.data,
    )
    return out.tolist()


def median(values: np.ndarray, positions: np.ndarray | None = None) -> float:
    """The median of the finite values at `positions` (all of them by default)."""
    positions = np.arange(len(values)) if positions is None else positions
    return medians(values, Groups.of([positions], [False]))[0]


def binned_fit(
    log_x: np.ndarray, log_y: np.ndarray, num_bins: int, weights: np.ndarray | None = None
) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    """(slope, intercept, bin means of log_x, of log_y) of the least-squares line through
    the bins that hold points, num_bins equal bins of log_x; over the points with log_x >= 0,
    a finite log_y and, with weights, weight > 0 (means weighted). None when there are no
    points, one value of log_x or points in one bin only (fits.binned_fit says why)."""
    log_x, log_y, weights = _doubles(log_x), _doubles(log_y), _doubles(weights)
    lib = library()
    if lib is None:
        return _binned_fit(log_x, log_y, num_bins, weights)
    bins, line = np.empty((2, num_bins)), np.empty(2)
    full = lib.rate_stats_binned_fit(
        log_x.ctypes.data,
        log_y.ctypes.data,
        _address(weights),
        len(log_x),
        num_bins,
        bins[0].ctypes.data,
        bins[1].ctypes.data,
        line.ctypes.data,
    )
    if full == 0:
        return None
    return float(line[0]), float(line[1]), bins[0, :full].copy(), bins[1, :full].copy()


def summaries(
    rates: list[np.ndarray],
    log_rates: list[np.ndarray],
    log_updates: list[np.ndarray],
    log_counts: np.ndarray,
    groups: Groups,
    weights: np.ndarray | None,
    num_bins: int,
    threads: int = 1,
) -> np.ndarray:
    """The numbers of snapshots of one view in one call, a row each: the groups' `medians`
    of its rates, then the slopes of `binned_fit`s of its log rates against its log updates
    and against `log_counts` (NaN where a line is undefined). The C++ shares the snapshots
    out over `threads` threads (OpenMP: in the trainer, torch's team), with the same bits."""
    weights, log_counts = _doubles(weights), _doubles(log_counts)
    arrays = [[_doubles(a) for a in arrays] for arrays in (rates, log_rates, log_updates)]
    out = np.empty((len(rates), len(groups) + 2))
    lib = library()
    if lib is None:
        for row, rate, log_rate, log_update in zip(out, *arrays):
            row[: len(groups)] = medians(rate, groups, weights)
            for slot, log_x in ((-2, log_update), (-1, log_counts)):
                fit = _binned_fit(log_x, log_rate, num_bins, weights)
                row[slot] = float("nan") if fit is None else fit[0]
        return out
    rate_at, log_rate_at, log_update_at = (_addresses(a) for a in arrays)  # kept alive there
    lib.rate_stats_summaries(
        len(rates),
        rate_at.ctypes.data,
        log_rate_at.ctypes.data,
        log_update_at.ctypes.data,
        log_counts.ctypes.data,
        _address(weights),
        len(log_counts),
        groups.positions.ctypes.data,
        groups.offsets.ctypes.data,
        groups.weighted.ctypes.data,
        len(groups),
        num_bins,
        threads,
        out.ctypes.data,
    )
    return out


@dataclass
class Histogram:
    """A histogram of the finite values in bins `width` wide on the multiples of width: bin k
    holds `counts[k]` values v with ceil(v / width) == first + k."""

    low: float
    high: float
    num: int
    first: int
    counts: np.ndarray  # float64
    sum: float  # of the finite values
    sum_squares: float


def histograms(arrays: list[np.ndarray], width: float) -> list[Histogram | None]:
    """The histogram of each array's finite values, in one call; None for an array with
    none finite."""
    arrays = [_doubles(a).reshape(-1) for a in arrays]
    lib = library()
    if lib is None:
        return [_histogram(values, width) for values in arrays]
    addresses = _addresses(arrays)
    sizes = np.array([len(a) for a in arrays], dtype=np.int64)
    capacity = HISTOGRAM_BINS
    while True:  # once more, with room, for a range wider than HISTOGRAM_BINS bins
        out = np.empty((len(arrays), HISTOGRAM_HEADER + capacity))
        most = lib.rate_stats_histograms(
            len(arrays), addresses.ctypes.data, sizes.ctypes.data, width, capacity, out.ctypes.data
        )
        if most <= capacity:
            break
        capacity = most
    found = []
    for row in out:
        low, high, num, first, bins, total, squares = row[:HISTOGRAM_HEADER].tolist()
        counts = row[HISTOGRAM_HEADER : HISTOGRAM_HEADER + int(bins)]
        binned = Histogram(low, high, int(num), int(first), counts, total, squares)
        found.append(binned if bins else None)
    return found


def _doubles(array: np.ndarray | None) -> np.ndarray | None:
    """The array as the C++ reads it: contiguous float64 (no copy where it is); None stays."""
    return None if array is None else np.ascontiguousarray(array, dtype=np.float64)


def _address(array: np.ndarray | None) -> int | None:
    """Its data's address for a ctypes call; None (a null pointer) for None."""
    return None if array is None else array.ctypes.data


def _addresses(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays' data addresses as one array, for a C++ argument that takes an array of
    pointers (the arrays must outlive the call)."""
    return np.array([a.ctypes.data for a in arrays], dtype=np.uintp)


# ------------------------------------------------------------------ NumPy: the reference


def _histogram(values: np.ndarray, width: float) -> Histogram | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    low, high = float(values.min()), float(values.max())
    # division by a positive width and ceil keep order, so the extreme bins are those of
    # the extreme values
    first = math.ceil(low / width)
    counts = np.bincount((np.ceil(values / width) - first).astype(np.int64)).astype(np.float64)
    return Histogram(
        low, high, len(values), first, counts, float(values.sum()), float(values @ values)
    )


def _median(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    keep = np.isfinite(values)
    if weights is not None:
        keep &= weights > 0
    values = values[keep]
    if not len(values):
        return float("nan")
    if weights is None:
        return float(np.median(values))
    weights = weights[keep]
    if weights.min() == weights.max():  # a bucket's draw: one weight, the lower middle
        k = (len(values) - 1) // 2
        return float(np.partition(values, k)[k])
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _binned_fit(
    log_x: np.ndarray, log_y: np.ndarray, num_bins: int, weights: np.ndarray | None
) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    keep = (log_x >= 0) & np.isfinite(log_y)
    if weights is not None:
        keep &= weights > 0
        weights = weights[keep]
    lx, ly = log_x[keep], log_y[keep]
    if len(lx) == 0 or lx.min() == lx.max():
        return None
    low, span = lx.min(), lx.max() - lx.min()
    which = np.minimum(((lx - low) / span * num_bins).astype(np.int64), num_bins - 1)
    n = np.bincount(which, weights=weights, minlength=num_bins)
    full = n > 0
    if full.sum() < 2:
        return None
    wx = lx if weights is None else lx * weights
    wy = ly if weights is None else ly * weights
    bin_x = np.bincount(which, weights=wx, minlength=num_bins)[full] / n[full]
    bin_y = np.bincount(which, weights=wy, minlength=num_bins)[full] / n[full]
    dx = bin_x - bin_x.mean()
    slope = float(dx @ (bin_y - bin_y.mean()) / (dx @ dx))  # least squares, closed form
    return slope, float(bin_y.mean() - slope * bin_x.mean()), bin_x, bin_y


# ------------------------------------------------------------------------------ the build


def library_path() -> Path:
    """Where the library is: named by the digest of its source and flags, so a changed source
    is a new build, and checkouts with the same one share it."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    return cache_home() / "nlp_adagrad" / f"rate_stats_{digest}.so"


def _compile(compiler: str, flags: list[str], out: Path) -> None:
    subprocess.run(
        [compiler, *flags, str(SOURCE), "-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )


@cache
def _load() -> ctypes.CDLL | str:
    """The library, built first where it is missing, or why it could not be."""
    path = library_path()
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            # built beside it and renamed into place: a process that loads it at the same
            # time (the telemetry process) finds the whole file or none
            partial = path.with_suffix(f".{os.getpid()}.partial")
            compiler = os.environ.get("CXX", "g++")
            try:
                _compile(compiler, FLAGS, partial)
            except subprocess.CalledProcessError:
                # a compiler without OpenMP (Apple's clang, clang without libomp): the same
                # library, whose summaries then take one thread whatever they are given
                _compile(compiler, [f for f in FLAGS if f != "-fopenmp"], partial)
            os.replace(partial, path)
        lib = ctypes.CDLL(str(path))
    except subprocess.CalledProcessError as e:
        return f"{e.cmd[0]} failed: {(e.stderr.strip().splitlines() or ['?'])[-1]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    address, size = ctypes.c_void_p, ctypes.c_int64
    lib.rate_stats_medians.argtypes = [address] * 5 + [size, address]
    lib.rate_stats_medians.restype = None
    lib.rate_stats_binned_fit.argtypes = [address, address, address, size, size] + [address] * 3
    lib.rate_stats_binned_fit.restype = size
    lib.rate_stats_summaries.argtypes = (
        [size] + [address] * 5 + [size] + [address] * 3 + [size, size, size, address]
    )
    lib.rate_stats_summaries.restype = None
    lib.rate_stats_histograms.argtypes = [size, address, address, ctypes.c_double, size, address]
    lib.rate_stats_histograms.restype = size
    return lib


def library() -> ctypes.CDLL | None:
    """The C++ library, or None (NumPy computes instead) where it does not build; that is
    said once per process."""
    built = _load()
    if isinstance(built, str):
        _warn_once(built)
        return None
    return built


@cache
def _warn_once(reason: str) -> None:
    log.warning("the C++ rate statistics do not build (%s); NumPy computes them, slower", reason)


if __name__ == "__main__":
    sys.exit(report_build("C++ rate statistics", _load(), str(library_path())))
