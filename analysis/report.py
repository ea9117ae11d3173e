"""The analysis stage: tables, figures and OUTPUT/report/report.md from the per-sample Parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.tables import model_table, reevaluation_table, thin_ice_table
from analysis.thin_ice import join_dense_pruned
from analysis import plots


def _markdown(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.2e}" if 0 < abs(v) < 1e-3 else floats.format(v)
        return str(v)
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def write_report(samples: pd.DataFrame, folder: Path, grid_name: str) -> dict[str, Path]:
    """Write CSV tables, PNG figures and report.md; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    models = model_table(samples)
    table1 = reevaluation_table(models)
    table2 = thin_ice_table(samples)
    paths = {"models.csv": folder / "models.csv", "table1.csv": folder / "table1_reevaluation.csv",
             "table2.csv": folder / "table2_thin_ice.csv"}
    models.to_csv(paths["models.csv"], index=False)
    table1.to_csv(paths["table1.csv"], index=False)
    table2.to_csv(paths["table2.csv"], index=False)

    eps = float(samples["eps"].iloc[0])
    figures = []
    for arch, rows in samples.groupby("arch"):
        figures.append(plots.security_curves(rows, eps, folder / f"security_curve_{arch}.png"))
    by_model = dict(tuple(samples.groupby("model_id", sort=False)))
    scatters = []
    for model_id, pruned in by_model.items():
        first = pruned.iloc[0]
        if first["role"] == "pruned" and first["dense_model_id"] in by_model:
            joined = join_dense_pruned(by_model[first["dense_model_id"]], pruned)
            scatters.append(plots.thin_ice_scatter(joined, model_id, folder / f"fig2_{model_id}.png"))
    for i, p in enumerate(figures + scatters):
        paths[f"figure{i}"] = p

    threat = f"{samples['norm'].iloc[0]}, ε = {eps:.6g}"
    weak = table1[table1["fmn_weaker_than_aa"]]["model_id"].tolist()
    lines = [
        f"# apgrid report: {grid_name}", "",
        f"{len(models)} models ({(models['role'] == 'dense').sum()} dense, "
        f"{(models['role'] == 'pruned').sum()} pruned), {int(models['num_samples'].iloc[0])} test "
        f"samples each; threat model {threat}; AutoAttack "
        f"`{samples['autoattack_version'].iloc[0]}`, PGD-{int(samples['pgd_steps'].iloc[0])}, "
        f"FMN {int(samples['fmn_steps'].iloc[0])} steps.", "",
        "## Table 1: robustness as reported (PGD) vs AutoAttack", "",
        "`drop` = PGD accuracy − AutoAttack accuracy. `fmn_acc_at_eps` is read off the FMN security "
        "curve at the threat ε.", "",
        _markdown(table1), "",
    ]
    if weak:
        lines += [f"**FMN is weaker than AutoAttack** (higher accuracy at the threat ε) on: "
                  f"{', '.join(weak)}. Its security curves overstate robustness there; raise "
                  f"`evaluation.fmn_steps`.", ""]
    lines += [
        "## Table 2: samples on thin ice", "",
        "Populations S_ab: a = dense model correct on the clean sample, b = pruned model correct. "
        "ε = the dense model's signed FMN distance (negative where the dense model is wrong). "
        "AUC = P(first population's ε < second's); p = one-sided Mann-Whitney U "
        "(H1: the first is stochastically smaller). Samples where the dense FMN found nothing are "
        "left out of the tests (`dense_fmn_not_found`).", "",
        _markdown(table2) if len(table2) else "_No pruned model with its dense parent evaluated._", "",
        "## Security curves", "",
        *[f"![security curve]({p.name})" for p in figures], "",
        "## Figure 2: dense logit margin vs ε per population", "",
        *[f"![{p.stem}]({p.name})" for p in scatters], "",
        "## Models", "", _markdown(models), "",
    ]
    paths["report.md"] = folder / "report.md"
    paths["report.md"].write_text("\n".join(lines))
    return paths
