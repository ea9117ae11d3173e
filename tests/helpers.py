"""Data builders shared by several test modules (fixtures live in conftest.py)."""

import numpy as np
import pandas as pd


def thin_ice_rows(seed=0, n=400):
    """A dense and a pruned model's rows where the pruned one loses the samples near the dense
    boundary (the thin-ice paper's claim, built in)."""
    rng = np.random.default_rng(seed)
    dense_correct = rng.random(n) < 0.8
    eps = np.where(dense_correct, rng.gamma(2, 0.05, n), -rng.gamma(2, 0.05, n))
    # the pruned model loses the samples near the dense boundary (the paper's claim, built in)
    pruned_correct = np.where(
        dense_correct, eps > rng.uniform(0, 0.08, n), np.abs(eps) < rng.uniform(0, 0.05, n)
    )
    base = {"sample_idx": np.arange(n), "label": rng.integers(0, 10, n)}
    dense = pd.DataFrame(
        {**base, "clean_correct": dense_correct, "fmn_eps": eps, "fmn_found": True, "logit_margin": eps * 10}
    )
    pruned = pd.DataFrame(
        {**base, "clean_correct": pruned_correct, "fmn_eps": 0.0, "fmn_found": True, "logit_margin": 0.0}
    )
    return dense, pruned
