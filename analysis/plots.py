"""Figures as PNG files with a PDF and an SVG of each beside them, for papers (matplotlib, no display
needed). Accuracies are fractions (0-1), as in every table of the report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from apgrid.analysis.names import model_label
from apgrid.analysis.thin_ice import POPULATIONS
from apgrid.analysis.transfer import UNBOUNDED_ATTACKS

# SVG text stays text (searchable, editable, in the paper's font) instead of glyph outlines
matplotlib.rcParams["svg.fonttype"] = "none"
VECTOR_FORMATS = ("pdf", "svg")

COLORS = {"S00": "tab:gray", "S01": "tab:green", "S10": "tab:red", "S11": "tab:blue"}
LEGEND_MODELS = 12  # security curves: models named in the legend (more overflow its 4 inches)


def thin_ice_scatter(joined: pd.DataFrame, title: str, threat_eps: float, path: Path) -> Path:
    """Figure 2 of the thin-ice paper: dense logit margin vs signed FMN ε, one colour a population;
    the threat model's ε (and its negative, for misclassified samples) dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for pop in POPULATIONS:
        part = joined[joined["population"] == pop]
        ax.scatter(
            part["eps"],
            part["dense_margin"],
            s=10,
            alpha=0.7,
            color=COLORS[pop],
            label=f"{pop} ({len(part)})",
            rasterized=True,  # thousands of points: an image inside the PDF/SVG, axes and text vector
        )
    ax.axvline(0, color="black", lw=0.5)
    ax.axhline(0, color="black", lw=0.5)
    for sign in (1, -1):
        ax.axvline(
            sign * threat_eps,
            color="tab:red",
            ls="--",
            lw=0.8,
            label=f"threat ε = ±{threat_eps:.4g}" if sign > 0 else "_nolegend_",
        )
    ax.set_xlabel("ε: signed FMN distance to the dense boundary")
    ax.set_ylabel("dense logit margin  z_y − max z_j")
    ax.set_title(title, fontsize=9)
    # a correct sample has ε > 0 and margin > 0, a wrong one both < 0: the upper left stays empty
    # (and "best" would search the thousands of points for a free corner, figure by figure)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def security_curves(
    lines: list[tuple[pd.Series, np.ndarray, float]], grid: np.ndarray, threat_eps: float, path: Path
) -> Path:
    """Robust accuracy vs ε from FMN, every model of one architecture overlaid: per model its
    first row (role, method, sparsity, norm), its curve over `grid` and its AutoAttack accuracy
    at the threat ε, a cross in the model's colour (NaN: none). The legend names the first
    LEGEND_MODELS models and counts the others (a legend of hundreds fills the figure and takes
    seconds to lay out)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (first, curve, aa) in enumerate(lines):
        label = model_label(first["method"], first["arch"], first["sparsity"], first["seed"], first["role"])
        if i >= LEGEND_MODELS:
            label = "_nolegend_"
        (line,) = ax.plot(
            grid,
            curve,
            lw=2 if first["role"] == "dense" else 1,
            color="black" if first["role"] == "dense" else None,
            label=label,
        )
        if np.isfinite(aa):
            ax.plot([threat_eps], [aa], marker="x", markersize=8, color=line.get_color())
    if len(lines) > LEGEND_MODELS:
        ax.plot([], [], " ", label=f"… {len(lines) - LEGEND_MODELS} more models")
    ax.axvline(threat_eps, color="tab:red", ls="--", lw=0.8, label=f"threat ε = {threat_eps:.4g}")
    ax.set_xlabel(f"ε ({lines[0][0]['norm']})")
    ax.set_ylabel("robust accuracy (FMN, fraction)")
    ax.set_ylim(0, 1)
    # "best" scans every line for the emptiest corner: seconds with hundreds of curves, which fall
    # from the top left, so the top right is free
    ax.legend(fontsize=7, loc="best" if len(lines) <= LEGEND_MODELS else "upper right")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """The PNG at `path` and a PDF and an SVG beside it, each cut to the figure's drawn extent
    (titles and labels wider than the figure are kept, not clipped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # the drawn extent measured once, not by each savefig (a draw each: a third of the time)
    drawn = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.05)
    fig.savefig(path, dpi=110, bbox_inches=drawn)
    for fmt in VECTOR_FORMATS:
        fig.savefig(path.with_suffix(f".{fmt}"), bbox_inches=drawn)
    plt.close(fig)
    return path


@torch.inference_mode()
def _region(model, x0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, span: np.ndarray) -> np.ndarray:
    """Predicted class at x0 + a u + b v for every (b, a) of the grid (rows b, columns a)."""
    device = next(model.parameters()).device
    a, b = np.meshgrid(span, span)
    coeff_a = torch.as_tensor(a.ravel(), dtype=x0.dtype).view(-1, 1, 1, 1)
    coeff_b = torch.as_tensor(b.ravel(), dtype=x0.dtype).view(-1, 1, 1, 1)
    points = (x0 + coeff_a * u + coeff_b * v).clamp(0, 1)
    preds = [model(points[i : i + 512].to(device)).argmax(1).cpu() for i in range(0, len(points), 512)]
    return torch.cat(preds).numpy().reshape(a.shape)


def decision_slices(
    dense,
    pruned,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    populations: list[str],
    title: str,
    path: Path,
    resolution: int = 41,
) -> Path:
    """Figure 1 of the thin-ice paper as real 2-D slices: for each sample, the plane through it
    spanned by its FMN direction on the dense model (u, horizontal) and a random orthogonal
    direction (v); where the dense and the pruned model classify it correctly."""
    fig, axes = plt.subplots(1, len(x), figsize=(max(5.0, 3.2 * len(x)), 3.4), squeeze=False)
    gen = torch.Generator().manual_seed(0)
    for ax, xi, yi, adv, pop in zip(axes[0], x, y, x_adv, populations):
        u = adv - xi
        size = float(u.abs().max()) or 1e-3
        v = torch.randn(u.shape, generator=gen)
        v -= (v * u).sum() / (u * u).sum().clamp_min(1e-12) * u  # orthogonal to u
        v *= size / float(v.abs().max())
        span = np.linspace(-2.5, 2.5, resolution)  # in units of the FMN step's Linf size
        dense_ok = _region(dense, xi, u, v, span) == int(yi)
        pruned_ok = _region(pruned, xi, u, v, span) == int(yi)
        extent = (span[0] * size, span[-1] * size, span[0] * size, span[-1] * size)
        ax.imshow(dense_ok, origin="lower", extent=extent, cmap="Greys", vmin=0, vmax=2.5, alpha=0.8)
        ax.contour(
            span * size, span * size, dense_ok.astype(float), levels=[0.5], colors="black", linewidths=1.2
        )
        if pruned_ok.any():  # hatched where the pruned model is right; its boundary dashed
            ax.contourf(
                span * size,
                span * size,
                pruned_ok.astype(float),
                levels=[0.5, 1.5],
                colors="none",
                hatches=["////"],
            )
            ax.contour(
                span * size,
                span * size,
                pruned_ok.astype(float),
                levels=[0.5],
                colors="tab:red",
                linewidths=1.2,
                linestyles="--",
            )
        ax.plot([0], [0], marker="*", color=COLORS.get(pop, "tab:blue"), markersize=12)
        ax.set_title(f"{pop}, label {int(yi)}", fontsize=9)
        ax.set_xlabel("FMN direction (Linf)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.locator_params(nbins=5)  # ticks such as -0.015 run into each other at 7 points
    axes[0][0].set_ylabel("random orthogonal direction", fontsize=8)
    fig.suptitle(
        f"{title}\nshaded: dense correct (black: its boundary); hatched: pruned correct "
        f"(red dashed: its boundary)",
        fontsize=8,
    )
    return _save(fig, path)


def transfer_heatmap(
    table: pd.DataFrame, source: str, path: Path, labels: dict[str, str] | None = None
) -> Path:
    """Accuracy of each target (columns) under each attack (rows) crafted on one source model: the
    attacks bounded by the threat ε first, then, below a rule and marked, the unbounded minimum-norm
    ones (CW, DeepFool), whose accuracies are not comparable with the bounded ones'."""
    labels = labels or {}
    part = table[table["source"] == source]
    pivot = part.pivot_table(index="attack", columns="target", values="adv_acc", sort=False)
    unbounded = [a for a in pivot.index if a in UNBOUNDED_ATTACKS]
    pivot = pivot.loc[[a for a in pivot.index if a not in UNBOUNDED_ATTACKS] + unbounded]
    names = [labels.get(c, _short(c)) for c in pivot.columns]
    # height: the rows, the title, and the target names written at 45 degrees below them
    label_room = 0.05 * max(len(n) for n in names)
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * pivot.shape[1], 1.0 + 0.45 * pivot.shape[0] + label_room))
    image = ax.imshow(pivot.to_numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(pivot.to_numpy()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    if unbounded and len(unbounded) < len(pivot):
        ax.axhline(len(pivot) - len(unbounded) - 0.5, color="black", lw=2)
    ax.set_xticks(range(pivot.shape[1]), names, rotation=45, ha="right", fontsize=7)
    rows = [f"{a} (unbounded)" if a in UNBOUNDED_ATTACKS else f"{a} (≤ ε)" for a in pivot.index]
    ax.set_yticks(range(pivot.shape[0]), rows, fontsize=8)
    ax.set_title(
        f"accuracy on adversarial examples crafted on {labels.get(source, _short(source))}", fontsize=8
    )
    fig.colorbar(image, ax=ax, fraction=0.03, label="accuracy (fraction)")
    return _save(fig, path)


def _short(model_id: str) -> str:
    """Model ids end in a hash; the figure keeps the readable part (when no label is given)."""
    return model_id.rsplit("-", 1)[0]
