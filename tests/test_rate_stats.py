"""The C++ medians, binned fits and histogram counts (nlp_adagrad.rate_stats) against their
NumPy reference, on data with what snapshots meet (missing and zero rates, unused tokens,
weights of 0, ties, empty groups, values on bin edges); the build's fallback; the library
without torch."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from nlp_adagrad import rate_stats
from nlp_adagrad.fits import NUM_FIT_BINS, binned_fit, log_of


def _rates(rng, n):
    """Log-normal rates with what a snapshot holds besides: never updated (NaN), rates of 0
    (overflowed accumulators), infinities, and repeats."""
    values = rng.lognormal(-3, 1.5, n)
    kind = rng.integers(0, 20, n)
    values[kind == 0] = np.nan
    values[kind == 1] = 0.0
    values[kind == 2] = np.inf
    values[kind == 3] = values[0]
    return values


def test_the_library_builds_here():
    """CI's machines have g++: the fallback must not hide a broken build."""
    assert rate_stats.library() is not None, rate_stats._load()


def test_medians_are_the_numpy_reference_exactly():
    rng = np.random.default_rng(0)
    lib = rate_stats.library()
    for trial in range(200):
        n = int(rng.integers(1, 400))
        values = _rates(rng, n)
        weights = rng.choice([0.0, 1.0, 2.5, 40.0], n) if trial % 3 else np.full(n, 7.0)
        weights[rng.integers(0, 10, n) == 0] = 0.0
        groups = [rng.choice(n, int(rng.integers(0, n + 1)), replace=False) for _ in range(4)]
        groups.append(np.zeros(0, np.int64))
        spans = rate_stats.Groups.of(groups, [True, False, True, True, False])
        for w in (weights, None):
            with pytest.MonkeyPatch.context() as numpy_only:
                numpy_only.setattr(rate_stats, "library", lambda: None)
                expected = rate_stats.medians(values, spans, w)
            assert rate_stats.library() is lib
            np.testing.assert_equal(rate_stats.medians(values, spans, w), expected)


def test_medians_by_hand():
    values = np.array([4.0, np.nan, 1.0, 3.0, 2.0, np.inf])
    everything = np.arange(6)
    assert rate_stats.median(values) == 2.5  # the mean of the middle two finite ones
    assert rate_stats.median(values, np.array([0, 2, 3])) == 3.0
    weights = np.array([1.0, 1.0, 1.0, 1.0, 10.0, 1.0])
    halves = rate_stats.Groups.of([everything, everything, everything[:2]], [True, False, True])
    assert rate_stats.medians(values, halves, weights)[:2] == [2.0, 2.5]
    assert rate_stats.medians(values, halves, np.full(6, 3.0))[0] == 2.0  # the lower middle
    assert np.isnan(rate_stats.medians(values, halves, np.zeros(6))[0])  # weight 0: only shown


@pytest.mark.parametrize("n", [64, 65, 1000, 1001])
def test_many_values_select_their_medians_by_bins_as_numpy_does(n):
    """Past 64 values the C++ counts a group into bins of its range before it selects (the
    k-th's bin, again and again): the medians stay np.median's on values all equal, all but
    one equal, spanning 600 decades or more than a double holds, a few subnormals apart, and
    in runs of ties."""
    rng = np.random.default_rng(n)
    cases = {
        "equal": np.full(n, 0.25),
        "all but one": np.r_[np.full(n - 1, 3.0), 1e-9],
        "all but one above": np.r_[np.full(n - 1, 3.0), 7.0],
        "600 decades": np.r_[10.0 ** rng.uniform(-300, 300, n - 2), 1e-300, 1e300],
        "wider than a double": np.r_[rng.uniform(-1, 1, n - 2), -1.5e308, 1.5e308],
        "subnormals": 5e-324 * rng.integers(1, 5, n),
        "ties": rng.integers(0, 5, n) / 4.0,
        "one outlier": np.r_[rng.uniform(1, 2, n - 1), 1e12],
    }
    for name, values in cases.items():
        everything = rate_stats.Groups.of([np.arange(n)] * 2, [True, False])
        uniform = rate_stats.medians(values, everything, np.full(n, 2.0))
        assert uniform == [np.sort(values)[(n - 1) // 2], np.median(values)], name


def test_binned_fits_are_the_numpy_reference():
    """The same bins, and the line within 1e-12: the bins' sums add up in point order in both
    (np.bincount's), the means over at most 20 bins in another order. In a third of the
    trials the points come sorted, as a view's do (by count): runs of one bin, summed in
    registers, cross the C++ blocks of 1,024 points with left-out points inside them."""
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(0, 3000))
        x = np.floor(rng.pareto(1.0, n)) if trial % 2 else rng.integers(0, 1000, n)
        if trial % 3 == 0:
            x = np.sort(x)[::-1] if trial % 2 else np.sort(x)
        rates = _rates(rng, n) if n else np.zeros(0)
        weights = rng.choice([0.0, 1.0, 3.0, 250.0], n) if trial % 4 else None
        log_x, log_rates = log_of(x), log_of(rates)
        native = rate_stats.binned_fit(log_x, log_rates, NUM_FIT_BINS, weights)
        reference = rate_stats._binned_fit(log_x, log_rates, NUM_FIT_BINS, weights)
        assert (native is None) == (reference is None)
        if native is None:
            continue
        np.testing.assert_array_equal(native[2], reference[2])
        np.testing.assert_array_equal(native[3], reference[3])
        np.testing.assert_allclose(native[:2], reference[:2], rtol=1e-12, atol=1e-12)


def test_binned_fit_is_undefined_without_two_bins_of_points():
    for x, rates in [
        ([], []),
        ([0, 0.5], [1.0, 2.0]),  # x < 1
        ([3, 3, 3], [1.0, 2.0, 3.0]),  # one value of x
        ([1, 10], [np.nan, 0.1]),  # one point left
    ]:
        fitted = rate_stats.binned_fit(log_of(x), log_of(rates), NUM_FIT_BINS)
        assert fitted is None and rate_stats._binned_fit(log_of(x), log_of(rates), 20, None) is None
    assert binned_fit(np.array([1, 100]), np.array([1.0, 0.1])).slope == pytest.approx(-0.5)


def test_without_a_compiler_numpy_computes_them_and_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    rate_stats._load.cache_clear()
    rate_stats._warn_once.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="nlp_adagrad.rate_stats"):
            assert rate_stats.library() is None and rate_stats.library() is None
            assert rate_stats.median(np.array([3.0, 1.0, 2.0])) == 2.0
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "no-such-compiler" in warnings[0], warnings
        assert "NumPy computes them" in warnings[0]
        assert not list(tmp_path.rglob("*.so"))
    finally:
        rate_stats._load.cache_clear()
        rate_stats._warn_once.cache_clear()


def test_a_fresh_cache_builds_the_library_and_loads_it_without_torch(tmp_path):
    """As the telemetry process does (it never imports torch), on a machine where nothing
    built it yet."""
    code = (
        "import sys\n"
        "from nlp_adagrad import rate_stats\n"
        "assert rate_stats.library() is not None\n"
        "print(rate_stats.library_path(), 'torch' in sys.modules)\n"
    )
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    path, imported_torch = out.stdout.split()
    assert path.startswith(str(tmp_path)) and imported_torch == "False"
    assert [p.name for p in (tmp_path / "nlp_adagrad").iterdir()] == [path.rsplit("/", 1)[1]]


def test_a_compiler_without_openmp_still_builds_the_library(tmp_path):
    """Where -fopenmp does not build (Apple's clang, clang without libomp) the library is built
    without it: the same numbers, its summaries on one thread whatever they are given."""
    compiler = tmp_path / "no-openmp-g++"
    compiler.write_text('#!/bin/sh\ncase " $* " in *" -fopenmp "*) exit 1;; esac\nexec g++ "$@"\n')
    compiler.chmod(0o755)
    code = (
        "import numpy as np\n"
        "from nlp_adagrad import rate_stats\n"
        "assert rate_stats.library() is not None\n"
        "rates = [np.arange(1.0, 50.0), np.arange(2.0, 51.0)]\n"
        "logs = [np.log(r) for r in rates]\n"
        "groups = rate_stats.Groups.of([np.arange(49)], [False])\n"
        "args = (rates, logs, logs, logs[0], groups, None, 20)\n"
        "one, two = rate_stats.summaries(*args), rate_stats.summaries(*args, threads=2)\n"
        "assert (one == two).all() and one[:, 0].tolist() == [25.0, 26.0], one\n"
        "print(rate_stats.library_path())\n"
    )
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "CXX": str(compiler)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    built = subprocess.run(["ldd", out.stdout.strip()], capture_output=True, text=True).stdout
    assert "libgomp" not in built


def test_histogram_counts_are_the_numpy_reference_exactly():
    """`histograms` of arrays in one call, each the NumPy reference's: counts and range exactly,
    sums within 1e-12 (added in lanes); arrays with no finite value give None."""
    rng = np.random.default_rng(2)
    width = 0.05
    for trial in range(25):
        arrays = []
        for _ in range(int(rng.integers(1, 8))):
            n = int(rng.integers(0, 5000))
            values = log_of(_rates(rng, n)) if rng.random() < 0.5 else rng.normal(0, 3, n)
            values[: n // 10] = np.round(values[: n // 10] / width) * width  # on the edges
            arrays.append(values)
        if trial % 5 == 0:  # wider than the first try's room, beside narrow ones
            arrays.append(np.array([-1e3, 1e3, np.nan]))
        if trial % 3 == 0:
            arrays.append(np.array([np.nan, -np.inf]))
        for values, native in zip(arrays, rate_stats.histograms(arrays, width), strict=True):
            reference = rate_stats._histogram(values, width)
            assert (native is None) == (reference is None)
            if native is not None:
                np.testing.assert_array_equal(native.counts, reference.counts)
                exact = (native.low, native.high, native.num, native.first)
                assert exact == (reference.low, reference.high, reference.num, reference.first)
                scale = np.abs(values[np.isfinite(values)]).sum()  # what cancels in the sum
                np.testing.assert_allclose(native.sum, reference.sum, rtol=0, atol=1e-12 * scale)
                np.testing.assert_allclose(native.sum_squares, reference.sum_squares, rtol=1e-12)


def test_snapshots_numbers_in_one_call_are_the_reference(monkeypatch):
    """`summaries`: per snapshot the medians and both slopes, as the separate calls give them,
    the same bits on one thread or shared out over several, and NumPy's within 1e-12."""
    rng = np.random.default_rng(3)
    for trial in range(12):
        n = int(rng.integers(1, 3000))
        snapshots = int(rng.integers(1, 9))
        rates = [_rates(rng, n) for _ in range(snapshots)]
        log_rates = [log_of(r) for r in rates]
        log_updates = [log_of(rng.integers(0, 200, n)) for _ in range(snapshots)]
        log_counts = log_of(rng.pareto(1.0, n) + 1)
        weights = rng.choice([0.0, 2.0, 9.0], n) if trial % 2 else None
        groups = rate_stats.Groups.of(
            [rng.choice(n, int(rng.integers(0, n + 1)), replace=False) for _ in range(3)],
            [True, False, True],
        )
        args = (rates, log_rates, log_updates, log_counts, groups, weights, NUM_FIT_BINS)
        one = rate_stats.summaries(*args)
        np.testing.assert_equal(rate_stats.summaries(*args, threads=2), one)
        np.testing.assert_equal(rate_stats.summaries(*args, threads=3), one)
        for k in range(snapshots):
            np.testing.assert_equal(one[k, :3], rate_stats.medians(rates[k], groups, weights))
            for slot, log_x in ((3, log_updates[k]), (4, log_counts)):
                fit = rate_stats.binned_fit(log_x, log_rates[k], NUM_FIT_BINS, weights)
                np.testing.assert_equal(one[k, slot], np.nan if fit is None else fit[0])
        with monkeypatch.context() as numpy_only:
            numpy_only.setattr(rate_stats, "library", lambda: None)
            reference = rate_stats.summaries(*args)
        np.testing.assert_equal(one[:, :3], reference[:, :3])
        np.testing.assert_allclose(one[:, 3:], reference[:, 3:], rtol=1e-12, atol=1e-12)
