"""Figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.tables import security_curve  # noqa: E402
from analysis.thin_ice import POPULATIONS  # noqa: E402

COLORS = {"S00": "tab:gray", "S01": "tab:green", "S10": "tab:red", "S11": "tab:blue"}


def thin_ice_scatter(joined: pd.DataFrame, title: str, path: Path) -> Path:
    """Figure 2 of the thin-ice paper: dense logit margin vs signed FMN ε, one colour a population."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for pop in POPULATIONS:
        part = joined[joined["population"] == pop]
        ax.scatter(part["eps"], part["dense_margin"], s=10, alpha=0.7, color=COLORS[pop],
                   label=f"{pop} ({len(part)})")
    ax.axvline(0, color="black", lw=0.5)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("ε: signed FMN distance to the dense boundary")
    ax.set_ylabel("dense logit margin  z_y − max z_j")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def security_curves(samples: pd.DataFrame, threat_eps: float, path: Path) -> Path:
    """Robust accuracy vs ε from FMN, every model of one architecture overlaid."""
    max_eps = max(threat_eps * 3, float(samples["fmn_eps"].abs().quantile(0.95)))
    grid = np.linspace(0, max_eps, 200)
    fig, ax = plt.subplots(figsize=(6, 4))
    for model_id, rows in samples.groupby("model_id", sort=False):
        first = rows.iloc[0]
        label = "dense" if first["role"] == "dense" else f"{first['method']} {first['sparsity']:.0%}"
        ax.plot(grid, security_curve(rows, grid), lw=2 if first["role"] == "dense" else 1,
                color="black" if first["role"] == "dense" else None, label=label)
    ax.axvline(threat_eps, color="tab:red", ls="--", lw=0.8, label=f"threat ε = {threat_eps:.4g}")
    ax.set_xlabel(f"ε ({samples['norm'].iloc[0]})")
    ax.set_ylabel("robust accuracy (FMN)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
