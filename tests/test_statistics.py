"""Thin-ice statistics against scipy / scikit-learn on a constructed fixture."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from apgrid.analysis.tables import security_curve, thin_ice_table
from apgrid.analysis.thin_ice import auc_smaller, join_dense_pruned, population_shares, thin_ice_tests
from tests.helpers import thin_ice_rows


def test_auc_and_p_equal_sklearn_and_scipy():
    dense, pruned = thin_ice_rows()
    joined = join_dense_pruned(dense, pruned)
    tests = thin_ice_tests(joined)
    e = joined.set_index("population")["eps"]
    s10, s11 = e[e.index == "S10"].to_numpy(), e[e.index == "S11"].to_numpy()
    labels = np.r_[np.zeros(len(s10)), np.ones(len(s11))]
    assert tests["S10<S11"].auc == pytest.approx(roc_auc_score(labels, np.r_[s10, s11]))
    assert tests["S10<S11"].p_value == pytest.approx(mannwhitneyu(s10, s11, alternative="less").pvalue)
    s01, s00 = np.abs(e[e.index == "S01"].to_numpy()), np.abs(e[e.index == "S00"].to_numpy())
    labels = np.r_[np.zeros(len(s01)), np.ones(len(s00))]
    assert tests["|S01|<|S00|"].auc == pytest.approx(roc_auc_score(labels, np.r_[s01, s00]))
    assert tests["S10<S11"].auc > 0.8 and tests["S10<S11"].p_value < 1e-6


def test_auc_with_ties_and_no_effect():
    same = np.array([0.1, 0.2, 0.2, 0.3])
    assert auc_smaller(same, same).auc == pytest.approx(0.5)
    assert auc_smaller(np.array([0.1]), np.array([0.2])).auc == 1.0
    assert np.isnan(auc_smaller(np.array([]), same).auc)


def test_populations_and_shares():
    dense, pruned = thin_ice_rows()
    joined = join_dense_pruned(dense, pruned)
    shares = population_shares(joined)
    assert sum(shares.values()) == pytest.approx(1.0)
    expected = ((dense.clean_correct) & (~pruned.clean_correct)).mean()
    assert shares["S10"] == pytest.approx(expected)


def test_failed_fmn_is_left_out_not_counted_as_zero():
    dense, pruned = thin_ice_rows()
    dense.loc[:9, "fmn_eps"] = np.nan
    dense.loc[:9, "fmn_found"] = False
    samples = pd.concat(
        [
            dense.assign(
                model_id="d", dense_model_id="d", role="dense", method="dense", arch="a", sparsity=0.0
            ),
            pruned.assign(
                model_id="p", dense_model_id="d", role="pruned", method="m", arch="a", sparsity=0.9
            ),
        ]
    )
    table = thin_ice_table(samples)
    assert table.loc[0, "dense_fmn_not_found"] == 10
    assert table.loc[0, "n_S10"] + table.loc[0, "n_S11"] <= (dense.clean_correct).sum()


def test_security_curve_is_monotone_and_starts_at_clean_accuracy():
    dense, _ = thin_ice_rows()
    grid = np.linspace(0, 0.5, 50)
    curve = security_curve(dense, grid)
    assert curve[0] == pytest.approx(dense.clean_correct.mean())
    assert np.all(np.diff(curve) <= 0)


# -- Table 2's AUC intervals: DeLong's variance against the bootstrap -------------------------


def test_delong_interval_by_hand():
    """x = 1, 2, 3 and y = 2, 4: of the six pairs, x < y in 4 and one tie, AUC = 4.5/6 = 3/4. The
    y placements (share of x below, ties half) are 1.5/3 and 3/3, the x placements (share of y
    above) 2/2, 1.5/2 and 1/2: var(AUC) = var(.5, 1)/2 + var(1, .75, .5)/3 = .125/2 + .0625/3
    = 1/12. x = 1, 3, 5 and y = 2, 4, 6: AUC = 6/9, placements 1/3, 2/3, 1 on both sides,
    var = (1/9)/3 + (1/9)/3 = 2/27. Upper ends past 1 are clipped."""
    from apgrid.analysis.thin_ice import delong_interval

    z = 1.959963984540054
    low, high = delong_interval(np.array([1.0, 2, 3]), np.array([2.0, 4]))
    assert low == pytest.approx(0.75 - z * np.sqrt(1 / 12)) and high == 1.0
    low, high = delong_interval(np.array([1.0, 3, 5]), np.array([2.0, 4, 6]))
    assert low == pytest.approx(2 / 3 - z * np.sqrt(2 / 27)) and high == 1.0
    test = auc_smaller(np.array([1.0, 3, 5]), np.array([2.0, 4, 6]))  # DeLong is the default
    assert (test.auc, test.ci_low, test.ci_high) == pytest.approx((2 / 3, low, 1.0))


def test_delong_interval_equals_its_pairwise_definition():
    """The placements from midranks equal DeLong's structural components counted pair by pair
    (psi = 1 if x < y, 1/2 if equal), ties included."""
    from apgrid.analysis.thin_ice import delong_interval

    rng = np.random.default_rng(1)
    for n_x, n_y in ((5, 7), (40, 25), (120, 300)):
        x, y = np.round(rng.normal(0, 1, n_x), 1), np.round(rng.normal(0.3, 1, n_y), 1)  # ties
        psi = (x[:, None] < y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        auc = psi.mean()
        variance = psi.mean(axis=0).var(ddof=1) / n_y + psi.mean(axis=1).var(ddof=1) / n_x
        half = 1.959963984540054 * np.sqrt(variance)
        assert delong_interval(x, y) == pytest.approx((max(0, auc - half), min(1, auc + half)), abs=1e-12)


@pytest.mark.parametrize(
    "population",
    ["normal shift", "skewed distances, unequal sizes", "few distinct values (ties)", "near separation"],
)
def test_delong_and_bootstrap_intervals_agree(population):
    """On synthetic populations of Table 2's sizes, DeLong's 95 % interval and the percentile
    bootstrap's (2,000 resamples, as the setting `analysis.auc_interval: bootstrap` computes it)
    agree: each end within 0.015 (about half the interval's half-width at these sizes) and
    widths within 15 %."""
    rng = np.random.default_rng(7)
    x, y = {
        "normal shift": lambda: (rng.normal(0, 1, 300), rng.normal(0.4, 1, 300)),
        "skewed distances, unequal sizes": lambda: (rng.gamma(2, 0.02, 150), rng.gamma(2.6, 0.02, 1200)),
        "few distinct values (ties)": lambda: (rng.integers(0, 5, 400) / 4, rng.integers(1, 6, 500) / 4),
        "near separation": lambda: (rng.normal(0, 1, 200), rng.normal(2.5, 1, 200)),
    }[population]()
    delong = auc_smaller(x, y, interval="delong")
    boot = auc_smaller(x, y, resamples=2000, interval="bootstrap", seed=3)
    assert delong.auc == boot.auc and delong.p_value == boot.p_value
    assert delong.ci_low == pytest.approx(boot.ci_low, abs=0.015)
    assert delong.ci_high == pytest.approx(boot.ci_high, abs=0.015)
    width = boot.ci_high - boot.ci_low
    assert delong.ci_high - delong.ci_low == pytest.approx(width, rel=0.15)


def test_delong_interval_covers_the_true_auc():
    """As the bootstrap's test: X ~ N(0,1), Y ~ N(0.5,1), AUC = Phi(0.5/sqrt 2), 40 data sets of
    60 each; a 95 % interval covers it in at least 34."""
    from scipy.stats import norm

    true_auc = norm.cdf(0.5 / np.sqrt(2))
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(40):
        t = auc_smaller(rng.normal(0, 1, 60), rng.normal(0.5, 1, 60))
        assert t.ci_low <= t.auc <= t.ci_high
        covered += t.ci_low <= true_auc <= t.ci_high
    assert covered >= 34


def test_bootstrap_interval_needs_resamples_and_none_skips_the_interval():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 1, 50), rng.normal(1, 1, 50)
    assert np.isnan(auc_smaller(x, y, resamples=0, interval="bootstrap").ci_low)
    assert np.isnan(auc_smaller(x, y, interval=None).ci_high)
    with pytest.raises(ValueError, match="interval"):
        auc_smaller(x, y, interval="jackknife")


def test_streamed_quantile_is_pandas_quantile():
    """The security curves' ε range: the 95th percentile of |ε| over an architecture's models,
    from chunks (one model's rows each) without holding them: exact on float64, within float32
    rounding on float32 (pandas interpolates those in float32)."""
    from apgrid.analysis.samples import streamed_quantile

    rng = np.random.default_rng(4)
    for trial in range(60):
        dtype = np.float32 if trial % 2 else np.float64
        values = rng.gamma(2, 0.02, int(rng.integers(1, 2000))).astype(dtype)
        if trial % 3 == 0:
            values[rng.random(len(values)) < 0.1] = np.nan  # FMN found nothing: left out
        if trial % 5 == 0:
            values = np.round(values, 2).astype(dtype)  # ties
        chunks = np.array_split(values, int(rng.integers(1, 10)))
        for q in (0.95, 0.5, 0.0, 1.0):
            want = float(pd.Series(values).quantile(q))
            got = streamed_quantile(lambda chunks=chunks: iter(chunks), q)
            if dtype == np.float64:
                assert got == want or (np.isnan(got) and np.isnan(want))
            else:
                assert got == pytest.approx(want, rel=1e-6, nan_ok=True)
    assert np.isnan(streamed_quantile(lambda: iter([np.array([np.nan])]), 0.95))
