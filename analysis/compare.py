"""Two evaluations of the same test samples side by side: two models, or one model in two grids
(before and after a change of code, machine or recipe). Paired per sample, so the differences
are tested as the thin-ice paper tests dense against pruned: McNemar's exact test on the
discordant samples (McNemar 1947)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from apgrid.analysis.thin_ice import mcnemar

FLAGS = ("clean_correct", "pgd_correct", "aa_correct")


def compare_rows(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Per-sample comparison of two models' rows on their shared samples."""
    joined = a.set_index("sample_idx").join(
        b.set_index("sample_idx"), how="inner", lsuffix="_a", rsuffix="_b"
    )
    out = {"shared_samples": len(joined)}
    for flag in FLAGS:
        both = joined[[f"{flag}_a", f"{flag}_b"]].dropna()
        x, y = both[f"{flag}_a"].astype(bool), both[f"{flag}_b"].astype(bool)
        name = flag.removesuffix("_correct")
        out[f"{name}_acc_a"] = float(x.mean()) if len(both) else np.nan
        out[f"{name}_acc_b"] = float(y.mean()) if len(both) else np.nan
        out[f"{name}_differ"] = int((x != y).sum())
        if flag == "aa_correct":
            test = mcnemar(x.to_numpy(), y.to_numpy())
            out.update(aa_only_a=test.lost, aa_only_b=test.gained, aa_mcnemar_p=test.p_value)
    eps_a, eps_b = joined["fmn_eps_a"].astype(float), joined["fmn_eps_b"].astype(float)
    found = eps_a.notna() & eps_b.notna()
    out["fmn_eps_differ"] = int(
        (~np.isclose(eps_a[found], eps_b[found], rtol=1e-5, atol=1e-7)).sum()
        + (eps_a.isna() != eps_b.isna()).sum()
    )
    out["fmn_eps_median_diff"] = float((eps_b[found] - eps_a[found]).median()) if found.any() else np.nan
    return out


def compare_models(a: pd.DataFrame, b: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per (model of a, model of b) pair."""
    rows = []
    for id_a, id_b in pairs:
        rows_a, rows_b = a[a["model_id"] == id_a], b[b["model_id"] == id_b]
        rows.append({"model_a": id_a, "model_b": id_b, **compare_rows(rows_a, rows_b)})
    return pd.DataFrame(rows)
