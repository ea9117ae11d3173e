"""The "samples on thin ice" statistics (Piras et al. 2023, arXiv 2310.08073, Sec. 4).

Populations S_ab over the test samples: a = the dense model classifies the clean sample correctly,
b = the pruned model does. ε is the dense model's signed FMN distance: positive, the distance to its
boundary, for samples it gets right; negative, minus the distance that makes it right, otherwise.
The paper's claims: samples the pruned model loses (S10) lie closer to the dense boundary than those
it keeps (S11), and samples it gains (S01) are closer than those it still misses (S00).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

POPULATIONS = ("S00", "S01", "S10", "S11")


def join_dense_pruned(dense: pd.DataFrame, pruned: pd.DataFrame) -> pd.DataFrame:
    """One row per sample: dense and pruned correctness, the population, the dense ε and margin."""
    d = dense.set_index("sample_idx")
    p = pruned.set_index("sample_idx")
    if not d.index.equals(p.index):
        missing = d.index.symmetric_difference(p.index)
        raise ValueError(f"dense and pruned rows cover different samples ({len(missing)} differ)")
    joined = pd.DataFrame({
        "label": d["label"],
        "dense_correct": d["clean_correct"].astype(bool),
        "pruned_correct": p["clean_correct"].astype(bool),
        "eps": d["fmn_eps"].astype(float),
        "eps_found": d["fmn_found"].astype(bool),
        "dense_margin": d["logit_margin"].astype(float),
    })
    joined["population"] = ("S" + joined["dense_correct"].astype(int).astype(str)
                            + joined["pruned_correct"].astype(int).astype(str))
    return joined.reset_index()


def population_shares(joined: pd.DataFrame) -> dict[str, float]:
    counts = joined["population"].value_counts()
    return {pop: counts.get(pop, 0) / len(joined) for pop in POPULATIONS}


@dataclass(frozen=True)
class AucTest:
    auc: float        # P(X < Y) + 0.5 P(X = Y), X from the "closer" population
    p_value: float    # one-sided Mann-Whitney U, H1: X is stochastically smaller than Y
    n_x: int
    n_y: int


def auc_smaller(x: np.ndarray, y: np.ndarray) -> AucTest:
    """AUC that a value of x is smaller than one of y, with the Mann-Whitney U test behind it."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        return AucTest(float("nan"), float("nan"), len(x), len(y))
    u_y, p = mannwhitneyu(y, x, alternative="greater")  # U of y = #pairs(y > x) + ties/2
    return AucTest(u_y / (len(x) * len(y)), float(p), len(x), len(y))


def thin_ice_tests(joined: pd.DataFrame) -> dict[str, AucTest]:
    """Table 2's two tests: ε(S10) < ε(S11) and |ε(S01)| < |ε(S00)| (samples whose dense FMN
    failed have no ε and are left out; their count is reported beside the table)."""
    eps = joined.set_index("population")["eps"]
    pick = lambda pop: eps[eps.index == pop].to_numpy()  # noqa: E731
    return {"S10<S11": auc_smaller(pick("S10"), pick("S11")),
            "|S01|<|S00|": auc_smaller(np.abs(pick("S01")), np.abs(pick("S00")))}
