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
from scipy.stats import binomtest, bootstrap, mannwhitneyu, norm, rankdata

from apgrid.analysis.samples import Samples, as_samples
from apgrid.analysis.settings import AUC_INTERVALS

POPULATIONS = ("S00", "S01", "S10", "S11")


def with_bounds(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with fmn_overstated and fmn_eps_bounded (derived for rows written before the
    evaluation recorded them): a distance is never above what PGD or AutoAttack proved."""
    if "fmn_eps_bounded" in rows and rows["fmn_eps_bounded"].notna().any():
        return rows
    from apgrid.trainables.evaluation import fmn_bounds

    if not {"pgd_correct", "aa_correct", "eps"} <= set(rows.columns):  # no attack to bound by
        return rows.assign(fmn_overstated=False, fmn_eps_bounded=rows["fmn_eps"].astype(float))
    aa = rows["aa_correct"].astype("boolean").fillna(True).to_numpy(dtype=bool)
    overstated, bounded = fmn_bounds(
        rows["clean_correct"].to_numpy(dtype=bool),
        rows["pgd_correct"].to_numpy(dtype=bool),
        aa,
        rows["fmn_eps"].to_numpy(dtype=float),
        float(rows["eps"].iloc[0]),
    )
    return rows.assign(fmn_overstated=overstated, fmn_eps_bounded=bounded)


def join_dense_pruned(dense: pd.DataFrame, pruned: pd.DataFrame) -> pd.DataFrame:
    """One row per sample: dense and pruned correctness, the population, the dense ε and margin."""
    d = with_bounds(dense).set_index("sample_idx")
    p = pruned.set_index("sample_idx")
    if not d.index.equals(p.index):
        missing = d.index.symmetric_difference(p.index)
        raise ValueError(f"dense and pruned rows cover different samples ({len(missing)} differ)")
    joined = pd.DataFrame(
        {
            "label": d["label"],
            "dense_correct": d["clean_correct"].astype(bool),
            "pruned_correct": p["clean_correct"].astype(bool),
            "eps": d["fmn_eps"].astype(float),
            "eps_bounded": d["fmn_eps_bounded"].astype(float),
            "eps_overstated": d["fmn_overstated"].astype(bool),
            "eps_untargeted": (
                d["fmn_eps_untargeted"].astype(float) if "fmn_eps_untargeted" in d else np.nan
            ),
            "eps_found": d["fmn_found"].astype(bool),
            "dense_margin": d["logit_margin"].astype(float),
            "dense_aa": d["aa_correct"].astype("boolean") if "aa_correct" in d else pd.NA,
            "pruned_aa": p["aa_correct"].astype("boolean") if "aa_correct" in p else pd.NA,
        }
    )
    codes = 2 * joined["dense_correct"].to_numpy(dtype=int) + joined["pruned_correct"].to_numpy(dtype=int)
    joined["population"] = np.array(POPULATIONS)[codes]  # S_ab: a dense correct, b pruned correct
    return joined.reset_index()


# what join_dense_pruned reads of each model
DENSE_COLUMNS = (
    "sample_idx",
    "label",
    "clean_correct",
    "pgd_correct",
    "aa_correct",
    "logit_margin",
    "eps",
    "fmn_eps",
    "fmn_found",
    "fmn_overstated",
    "fmn_eps_bounded",
    "fmn_eps_untargeted",
)
PRUNED_COLUMNS = ("sample_idx", "clean_correct", "aa_correct")


def pair_groups(samples: Samples) -> list[tuple[str, list[str]]]:
    """(dense parent, its pruned models) for every pruned model whose dense parent was evaluated
    too, in the order the models appear; a parent is listed again when other models came between
    its children."""
    known = set(samples.model_ids)
    groups: list[tuple[str, list[str]]] = []
    for model_id in samples.model_ids:
        first = samples.first(model_id)
        if first["role"] != "pruned" or first["dense_model_id"] not in known:
            continue
        if not groups or groups[-1][0] != first["dense_model_id"]:
            groups.append((first["dense_model_id"], []))
        groups[-1][1].append(model_id)
    return groups


def group_pairs(samples: Samples, dense_id: str, pruned_ids: list[str]):
    """(model_id, its first row, joined rows) of each of one dense parent's pruned models: the
    parent's rows read once, only the columns the join takes."""
    dense = samples.rows(dense_id, DENSE_COLUMNS)
    for model_id in pruned_ids:
        pruned = samples.rows(model_id, PRUNED_COLUMNS)
        yield model_id, samples.first(model_id), join_dense_pruned(dense, pruned)


def pruned_pairs(samples: pd.DataFrame | Samples):
    """(model_id, its first row, joined rows) for every pruned model whose dense parent was
    evaluated too, in the order the models appear; one pair's rows read at a time."""
    samples = as_samples(samples)
    for dense_id, pruned_ids in pair_groups(samples):
        yield from group_pairs(samples, dense_id, pruned_ids)


def population_shares(joined: pd.DataFrame) -> dict[str, float]:
    population = joined["population"].to_numpy()
    return {pop: int((population == pop).sum()) / len(joined) for pop in POPULATIONS}


NAN = float("nan")


@dataclass(frozen=True)
class AucTest:
    auc: float  # P(X < Y) + 0.5 P(X = Y), X from the "closer" population
    p_value: float  # one-sided Mann-Whitney U, H1: X is stochastically smaller than Y
    n_x: int
    n_y: int
    p_two_sided: float = NAN  # H1: the two distributions differ
    ci_low: float = NAN  # 95 % interval of the AUC: DeLong's or the bootstrap's (AUC_INTERVALS)
    ci_high: float = NAN


def _auc(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC = U_y / (n_x n_y), vectorised over leading axes for the bootstrap."""
    u_y = mannwhitneyu(y, x, axis=axis, method="asymptotic").statistic
    return u_y / (x.shape[axis] * y.shape[axis])


def auc_smaller(
    x: np.ndarray,
    y: np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    interval: str | None = "delong",
    two_sided: bool = True,
) -> AucTest:
    """AUC that a value of x is smaller than one of y, the Mann-Whitney U tests behind it (the
    two-sided one unless `two_sided=False`) and a 95 % interval: DeLong's (`interval="delong"`),
    a bootstrap one with x and y resampled independently (`"bootstrap"`, `resamples` times; 0
    skips it) or none (None)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        return AucTest(NAN, NAN, len(x), len(y))
    u_y, p = mannwhitneyu(y, x, alternative="greater")  # U of y = #pairs(y > x) + ties/2
    p_two = mannwhitneyu(y, x, alternative="two-sided").pvalue if two_sided else NAN
    low = high = NAN
    if interval is not None and interval not in AUC_INTERVALS:
        raise ValueError(f"interval: {interval!r}; one of {', '.join(AUC_INTERVALS)} or None")
    if min(len(x), len(y)) >= 2:
        if interval == "delong":
            low, high = delong_interval(x, y)
        elif interval == "bootstrap" and resamples:
            ci = bootstrap(
                (x, y),
                _auc,
                n_resamples=resamples,
                method="percentile",
                vectorized=True,
                batch=max(1, 2_000_000 // (len(x) + len(y))),
                rng=np.random.default_rng(seed),
            )
            low, high = float(ci.confidence_interval.low), float(ci.confidence_interval.high)
    return AucTest(float(u_y / (len(x) * len(y))), float(p), len(x), len(y), float(p_two), low, high)


def delong_interval(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The interval of AUC = P(X < Y) + P(X = Y)/2 from DeLong, DeLong & Clarke-Pearson (1988)'s
    variance of the Mann-Whitney statistic for two independent samples: each y's placement (the
    share of x below it, ties counting half) and each x's (the share of y above it) average to the
    AUC, and var(AUC) = var(y placements)/n_y + var(x placements)/n_x. Placements from midranks
    (Sun & Xu 2014): three sorts, no n_x * n_y matrix. Normal approximation, clipped to [0, 1]
    (as R's pROC does); needs two values on each side."""
    n_x, n_y = len(x), len(y)
    ranks = rankdata(np.concatenate([x, y]))
    y_placements = (ranks[n_x:] - rankdata(y)) / n_x
    x_placements = 1.0 - (ranks[:n_x] - rankdata(x)) / n_y
    auc = y_placements.mean()
    variance = y_placements.var(ddof=1) / n_y + x_placements.var(ddof=1) / n_x
    half = norm.ppf(0.5 + level / 2) * np.sqrt(variance)
    return float(max(0.0, auc - half)), float(min(1.0, auc + half))


@dataclass(frozen=True)
class McNemarTest:
    lost: int  # dense right, pruned wrong (S10 for clean accuracy)
    gained: int  # dense wrong, pruned right (S01)
    p_value: float  # exact two-sided McNemar: binomial test of lost vs gained at 1/2


def mcnemar(dense_correct: np.ndarray, pruned_correct: np.ndarray) -> McNemarTest:
    """McNemar's exact test that dense and pruned models err equally often on paired samples
    (McNemar 1947): only the discordant pairs carry information."""
    d = np.asarray(dense_correct, dtype=bool)
    p = np.asarray(pruned_correct, dtype=bool)
    lost, gained = int((d & ~p).sum()), int((~d & p).sum())
    if lost + gained == 0:
        return McNemarTest(lost, gained, 1.0)
    return McNemarTest(lost, gained, float(binomtest(lost, lost + gained, 0.5).pvalue))


def thin_ice_tests(
    joined: pd.DataFrame,
    resamples: int = 1000,
    column: str = "eps",
    interval: str | None = "delong",
    two_sided: bool = True,
) -> dict[str, AucTest]:
    """Table 2's two tests: ε(S10) < ε(S11) and |ε(S01)| < |ε(S00)| on one reading of ε
    (`column`: eps, eps_bounded or eps_untargeted); samples without a distance are left out and
    counted beside the table."""
    eps = joined[column].to_numpy(dtype=float)
    population = joined["population"].to_numpy()

    def test(x, y):
        return auc_smaller(x, y, resamples, interval=interval, two_sided=two_sided)

    return {
        "S10<S11": test(eps[population == "S10"], eps[population == "S11"]),
        "|S01|<|S00|": test(np.abs(eps[population == "S01"]), np.abs(eps[population == "S00"])),
    }
