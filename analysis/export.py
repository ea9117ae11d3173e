"""A grid's models as RobustBench model-info JSON files (one per model), so a result can go to a
leaderboard: RobustBench's fields (clean and AutoAttack accuracy in percent as strings, the
threat model, eps, architecture, what the paper reported) plus apgrid's own under "apgrid"
(method, sparsity, taxonomy, PGD and FMN accuracy, FMN distance quantiles, samples)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from apgrid.analysis.tables import model_table

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def eps_text(eps: float) -> str:
    """8/255 for the usual image budgets, the decimal otherwise (RobustBench writes '8/255')."""
    fraction = Fraction(eps).limit_denominator(255)
    return (
        f"{fraction.numerator}/{fraction.denominator}"
        if fraction.denominator == 255 and abs(float(fraction) - eps) < 1e-9
        else f"{eps:g}"
    )


def model_info(row: pd.Series, rows: pd.DataFrame, card: dict) -> dict:
    reported = card.get("reported") or {}
    correct = rows["clean_correct"].astype(bool)
    distances = rows.loc[correct, "fmn_eps"].astype(float).abs().dropna()
    quantiles = {
        f"q{int(q * 100)}": float(distances.quantile(q)) if len(distances) else None for q in QUANTILES
    }
    return {
        "name": row["model_id"],
        "link": "",
        "authors": "",
        "venue": "",
        "dataset": row["dataset"],
        "threat_model": row["norm"],
        "eps": eps_text(float(row["eps"])),
        "architecture": row["arch"],
        "additional_data": False,
        "number_forward_passes": 1,
        "clean_acc": f"{100 * row['clean_acc']:.2f}",
        "reported": f"{100 * reported['robust']:.2f}" if "robust" in reported else "",
        "autoattack_acc": f"{100 * row['aa_acc']:.2f}" if np.isfinite(row["aa_acc"]) else "",
        "footnote": (
            f"apgrid: AutoAttack {rows['autoattack_version'].iloc[0]} on "
            f"{int(row['aa_samples'])} of {int(row['num_samples'])} test samples"
        ),
        "apgrid": {
            "model_id": row["model_id"],
            "dense_model_id": row["dense_model_id"],
            "role": row["role"],
            "method": row["method"],
            "sparsity": float(row["sparsity"]),
            "sparsity_measured": float(row["sparsity_measured"]),
            "taxonomy": card.get("taxonomy"),
            "reported": reported or None,
            "pgd_acc": float(row["pgd_acc"]),
            "fmn_acc_at_eps": float(row["fmn_acc_at_eps"]),
            "aa_samples": int(row["aa_samples"]),
            "num_samples": int(row["num_samples"]),
            "fmn_eps_quantiles": quantiles,
            "config_hash": card.get("config_hash"),
        },
    }


def export(samples: pd.DataFrame, cards: dict[str, dict], folder: Path) -> list[Path]:
    """Write FOLDER/<model_id>.json for every evaluated model; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for _, row in model_table(samples).iterrows():
        rows = samples[samples["model_id"] == row["model_id"]]
        info = model_info(row, rows, cards.get(row["model_id"], {}))
        path = folder / f"{row['model_id']}.json"
        path.write_text(json.dumps(info, indent=2))
        paths.append(path)
    return paths
