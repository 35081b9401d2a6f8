"""Telemetry math: slopes, buckets and rare/common summaries on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from nlp_adagrad.config import TelemetryConfig
from nlp_adagrad.telemetry import binned_fit, count_buckets, make_spec, summarize


def test_binned_fit_recovers_a_power_law_whatever_the_token_mix():
    rng = np.random.default_rng(0)
    # many rare tokens, few common ones: binning keeps the rare ones from deciding alone
    x = np.floor(rng.pareto(1.0, 20000) + 1)
    y = 3.0 * x**-0.5 * np.exp(rng.normal(0, 0.05, len(x)))
    fit = binned_fit(x, y)
    assert fit.slope == pytest.approx(-0.5, abs=0.02)
    assert np.exp(fit.intercept) == pytest.approx(3.0, rel=0.05)


def test_binned_fit_ignores_missing_rates_and_needs_two_bins():
    x = np.array([1, 10, 100, 5])
    y = np.array([1.0, 0.1, 0.01, np.nan])
    assert binned_fit(x, y).slope == pytest.approx(-1.0)
    assert binned_fit(np.array([3, 3]), np.array([1.0, 2.0])) is None


def test_count_buckets_are_decades():
    assert count_buckets(np.array([0, 1, 9, 10, 99, 100, 12345])).tolist() == [
        "unseen",
        "count_1e0",
        "count_1e0",
        "count_1e1",
        "count_1e1",
        "count_1e2",
        "count_1e4",
    ]


def test_summary_separates_rare_from_common():
    tokens = ["[UNK]"] + [f"t{i}" for i in range(1, 301)]
    counts = np.array([0] + [1000 - i for i in range(1, 101)] + [3] * 200)
    cfg = TelemetryConfig(
        rare_max_count=5, common_top_k=100, follow_per_bucket=2, tokens=["t7", "nope"]
    )
    spec, missing = make_spec(tokens, counts, cfg, seed=0)
    assert missing == ["nope"] and spec.followed["t7"] == 7
    assert spec.common.sum() == 100 and spec.rare.sum() == 200
    eff_lr = np.where(spec.rare, 10.0, 0.5)
    eff_lr[0] = np.nan
    updates = np.where(counts > 0, 1, 0)
    out = summarize(spec, eff_lr, updates)
    assert out["eff_lr/rare"] == 10.0 and out["eff_lr/common"] == 0.5
    assert out["eff_lr/bucket/count_1e0"] == 10.0
    # followed tokens: seeded sample per bucket, the same every time
    assert make_spec(tokens, counts, cfg, seed=0)[0].followed == spec.followed
