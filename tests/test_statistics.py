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
