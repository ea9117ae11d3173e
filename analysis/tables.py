"""Tables from the per-sample rows: model summaries, the re-evaluation table (Table 1 of the
thin-ice paper) and the thin-ice table (its Table 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.thin_ice import join_dense_pruned, population_shares, thin_ice_tests

MODEL_COLUMNS = ["model_id", "dense_model_id", "role", "dataset", "arch", "method", "sparsity",
                 "sparsity_measured", "seed", "norm", "eps"]


def summarize(rows: pd.DataFrame, eps: float) -> dict[str, float]:
    """Model-level metrics from one model's rows. FMN robust accuracy at eps counts a sample as
    robust when it is classified correctly and FMN's distance exceeds eps (or FMN found none)."""
    n = len(rows)
    correct = rows["clean_correct"].astype(bool)
    fmn_eps = rows["fmn_eps"].astype(float).fillna(np.inf)
    found = rows.loc[correct, "fmn_found"].astype(bool)
    attacked = rows[rows["aa_correct"].notna()]  # AutoAttack may run on the first N samples only
    return {"clean_acc": correct.sum() / n, "pgd_acc": rows["pgd_correct"].sum() / n,
            "aa_acc": attacked["aa_correct"].astype(bool).mean() if len(attacked) else float("nan"),
            "pgd_acc_on_aa_samples": (attacked["pgd_correct"].astype(bool).mean()
                                      if len(attacked) else float("nan")),
            "aa_samples": len(attacked),
            "fmn_acc_at_eps": (correct & (fmn_eps > eps)).sum() / n,
            "fmn_found_rate": float(found.mean()) if len(found) else float("nan"),
            "num_samples": n}


def model_table(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per model: its identity columns and summary metrics."""
    out = []
    for model_id, rows in samples.groupby("model_id", sort=False):
        first = rows.iloc[0]
        out.append({**{c: first[c] for c in MODEL_COLUMNS}, **summarize(rows, float(first["eps"]))})
    table = pd.DataFrame(out)
    return table.sort_values(["role", "arch", "method", "sparsity", "seed"], ignore_index=True)


def reevaluation_table(models: pd.DataFrame) -> pd.DataFrame:
    """Table 1 layout: robust accuracy as the original papers report it (PGD) vs AutoAttack."""
    t = models[["model_id", "method", "arch", "sparsity", "sparsity_measured", "clean_acc",
                "pgd_acc", "aa_acc", "fmn_acc_at_eps"]].copy()
    t["drop"] = models["pgd_acc_on_aa_samples"] - t["aa_acc"]  # on the same samples
    t["fmn_weaker_than_aa"] = t["fmn_acc_at_eps"] > t["aa_acc"]
    return t


def thin_ice_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Table 2 layout: for each pruned model vs its dense parent, population shares and the two
    AUC / one-sided Mann-Whitney tests."""
    by_model = dict(tuple(samples.groupby("model_id", sort=False)))
    rows = []
    for model_id, pruned in by_model.items():
        first = pruned.iloc[0]
        if first["role"] != "pruned" or first["dense_model_id"] not in by_model:
            continue
        joined = join_dense_pruned(by_model[first["dense_model_id"]], pruned)
        shares = population_shares(joined)
        tests = thin_ice_tests(joined)
        rows.append({
            "model_id": model_id, "method": first["method"], "arch": first["arch"],
            "sparsity": first["sparsity"], **shares,
            "auc_S10<S11": tests["S10<S11"].auc, "p_S10<S11": tests["S10<S11"].p_value,
            "auc_|S01|<|S00|": tests["|S01|<|S00|"].auc,
            "p_|S01|<|S00|": tests["|S01|<|S00|"].p_value,
            "n_S10": tests["S10<S11"].n_x, "n_S11": tests["S10<S11"].n_y,
            "n_S01": tests["|S01|<|S00|"].n_x, "n_S00": tests["|S01|<|S00|"].n_y,
            "dense_fmn_not_found": int((~joined["eps_found"]).sum()),
        })
    return pd.DataFrame(rows)


def security_curve(rows: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    """Robust accuracy vs ε from FMN distances: correct and distance > ε (a failed FMN counts as
    robust at every ε, the attacker's best effort having found nothing)."""
    correct = rows["clean_correct"].astype(bool).to_numpy()
    dist = rows["fmn_eps"].astype(float).abs().fillna(np.inf).to_numpy()
    return np.array([(correct & (dist > e)).mean() for e in grid])
