"""Welch's interval against scipy's own Welch t-test on known samples."""

import pytest
from scipy import stats

from tipslab.dashboards.stats import NO_SPREAD, NO_VALUES, ONE_SEED, welch

SAMPLES = [
    ([81.2, 80.9, 81.5, 81.1, 80.7], [78.3, 78.9, 77.8, 78.4, 78.0]),  # a clear difference
    ([1.0, 2.0, 3.0], [2.0, 5.0, 7.0]),  # a null one: the interval straddles 0
    ([0.52, 0.48, 0.61], [0.40, 0.43, 0.39, 0.47, 0.41, 0.44, 0.38]),  # unequal n and variance
    ([10.0, 10.0, 10.0], [9.0, 11.5, 12.0, 8.5]),  # no spread on one side: df = n_b - 1
]


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy on the sample without spread
@pytest.mark.parametrize("a,b", SAMPLES)
def test_interval_and_degrees_of_freedom_match_scipys_welch_test(a, b):
    d = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert d.delta == pytest.approx(sum(a) / len(a) - sum(b) / len(b), abs=1e-12)
    assert d.df == pytest.approx(float(ref.df), abs=1e-9)
    assert d.delta / d.se == pytest.approx(float(ref.statistic), abs=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (d.low, d.high) == (pytest.approx(float(ci.low), abs=1e-9), pytest.approx(float(ci.high), abs=1e-9))
    # Real exactly when scipy's two-sided p is below 0.05, i.e. its interval excludes zero.
    assert d.real == (float(ref.pvalue) < 0.05) == (ci.low > 0 or ci.high < 0)


def test_a_real_difference_and_a_null_one():
    real, null = welch(*SAMPLES[0]), welch(*SAMPLES[1])
    assert real.real and real.low > 0 and real.better("max") and not real.better("min")
    assert not null.real and null.low < 0 < null.high and null.better("max") is None


def test_other_levels_match_scipy():
    a, b = SAMPLES[2]
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.99)
    d = welch(a, b, level=0.99)
    assert (d.low, d.high) == (pytest.approx(float(ci.low), abs=1e-9), pytest.approx(float(ci.high), abs=1e-9))


def test_no_interval_where_the_samples_cannot_give_one():
    one = welch([12.5], [20.0, 22.0])
    assert (one.delta, one.low, one.high, one.df, one.reason) == (-8.5, None, None, None, ONE_SEED)
    assert not one.real and one.better("max") is None
    assert welch([20.0, 22.0], [1.0]).reason == ONE_SEED
    # Neither side varies: the Welch df is 0/0 (scipy answers t = inf with a stand-in df; we give no interval).
    flat = welch([3.0, 3.0, 3.0], [1.0, 1.0])
    assert (flat.delta, flat.low, flat.df, flat.reason, flat.real) == (2.0, None, None, NO_SPREAD, False)
    assert welch([], [1.0, 2.0]).reason == NO_VALUES and welch([], [1.0]).delta is None


def test_missing_values_are_left_out_and_not_counted():
    a, b = [81.2, None, 80.9, float("nan"), 81.5], [78.3, 78.9, 77.8]
    d, clean = welch(a, b), welch([81.2, 80.9, 81.5], b)
    assert (d.n_a, d.n_b) == (3, 3) and (d.delta, d.low, d.high) == (clean.delta, clean.low, clean.high)
