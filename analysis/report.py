"""The analysis stage: tables, figures and OUTPUT/report/{index.html, report.md} from the per-sample
Parquet, plus (when the models can be loaded) model costs, transfer attacks and decision slices.

The report is a list of sections (text, tables, figures) rendered twice: Markdown beside the PNGs,
and one self-contained HTML page with the PNGs embedded, readable offline; for a paper, every table
is also a booktabs LaTeX file (NAME.tex) and every figure a PDF and an SVG, with figures.tex holding
their captions. Models are named by short labels (method, sparsity, architecture, seed), the Models
section keys them to their ids; accuracies are fractions (0-1) everywhere, with 95 % Wilson intervals.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from apgrid.analysis import plots
from apgrid.analysis.names import MODEL_ID_COLUMNS, model_labels
from apgrid.analysis.parallel import iter_models, map_models
from apgrid.analysis.samples import Samples, as_samples, streamed_quantile
from apgrid.analysis.settings import AnalysisSettings
from apgrid.analysis.tables import (
    comparison_table,
    findings,
    leaderboard,
    model_table,
    reevaluation_table,
    security_curve,
    seed_table,
    thin_ice_rows,
)
from apgrid.analysis.thin_ice import pruned_pairs


@dataclass
class ModelAccess:
    """How the analysis reaches the models and the test set (the grid supplies it)."""

    load: Callable[[str], object]  # model_id -> eval-mode nn.Module, masks folded in
    test_data: Callable[[int], tuple]  # n -> (x, y) the first n test samples
    input_shape: tuple[int, ...]
    device: object  # torch.device
    cards: dict[str, dict] = field(default_factory=dict)
    log: Callable[[str], None] = print


@dataclass
class Figure:
    path: Path  # the PNG; its PDF and SVG beside it
    caption: str


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    # (caption, table, name): the table is also written as NAME.tex
    tables: list[tuple[str, pd.DataFrame, str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


UNITS = "Accuracies are fractions of the test samples (0–1); brackets: 95 % Wilson intervals."


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return "–"
        return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.3f}"
    return str(v)


def _markdown_table(df: pd.DataFrame) -> str:
    def esc(text):  # |ε| in a header would end a Markdown cell
        return str(text).replace("|", "\\|")

    head = "| " + " | ".join(esc(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(esc(_cell(v)) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", "", *[t + "\n" for t in s.text]]
        for caption, table, _ in s.tables:
            lines += [
                f"**{caption}**" if caption else "",
                "",
                _markdown_table(table) if len(table) else "_(empty)_",
                "",
            ]
        for f in s.figures:
            lines += [f"![{f.path.stem}]({f.path.name})", "", f"*{f.caption}*", ""]
        lines.append("")
    return "\n".join(lines)


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.3em}
nav a{margin-right:1em}figure{display:inline-block;margin:.3em;max-width:100%;vertical-align:top}
figcaption{font-size:12px;color:#444;max-width:660px}"""


def render_html(title: str, sections: list[Section]) -> str:
    def image(f: Figure) -> str:
        data = base64.b64encode(f.path.read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(f.caption)}">'

    nav = "".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(sections))
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><nav>{nav}</nav>",
    ]
    for i, s in enumerate(sections):
        parts.append(f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>')
        parts += [f"<p>{_inline(t)}</p>" for t in s.text]
        for caption, table, _ in s.tables:
            if caption:
                parts.append(f"<h3>{html.escape(caption)}</h3>")
            parts.append(_html_table(table) if len(table) else "<p><em>(empty)</em></p>")
        parts += [
            f"<figure>{image(f)}<figcaption>{html.escape(f.caption)}</figcaption></figure>" for f in s.figures
        ]
        parts.append("</section>")
    return "\n".join(parts + ["</body></html>"])


def _inline(text: str) -> str:
    """Escape, then turn the Markdown `code` and **bold** spans used in the texts into HTML."""
    out = html.escape(text)
    for mark, tag in (("**", "strong"), ("`", "code")):
        pieces = out.split(mark)
        out = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(pieces))
    return out


# -- the sections -------------------------------------------------------------------------------


def _thin_ice_display(table2: pd.DataFrame) -> pd.DataFrame:
    def auc(row, name):
        return f"{row[f'auc_{name}']:.3f} [{row[f'ci_low_{name}']:.3f}, {row[f'ci_high_{name}']:.3f}]"

    out = table2[["model_id", "S00", "S01", "S10", "S11"]].copy()  # the label names method, arch, sparsity
    out["AUC ε(S10)<ε(S11) [95% CI]"] = [auc(r, "S10<S11") for _, r in table2.iterrows()]
    out["p (1-sided)"] = table2["p_S10<S11"]
    out["p (2-sided)"] = table2["p2_S10<S11"]
    out["AUC |ε(S01)|<|ε(S00)| [95% CI]"] = [auc(r, "|S01|<|S00|") for _, r in table2.iterrows()]
    out["p (1-sided) "] = table2["p_|S01|<|S00|"]
    out["p (2-sided) "] = table2["p2_|S01|<|S00|"]
    out["McNemar p clean"] = table2["mcnemar_p_clean"]
    out["McNemar p AA"] = table2["mcnemar_p_aa"]
    out["AUC S10<S11 bounded"] = table2["auc_S10<S11_bounded"]
    out["AUC |S01|<|S00| bounded"] = table2["auc_|S01|<|S00|_bounded"]
    out["AUC |S01|<|S00| untargeted"] = table2["auc_|S01|<|S00|_untargeted"]
    out["dense FMN overstated"] = table2["dense_fmn_overstated"]
    return out


def _with_interval(value: float, low: float, high: float) -> str:
    return "–" if pd.isna(value) else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _table1_display(table1: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as it fits a page: the model's label (its id in the key), each accuracy with its
    95 % Wilson interval; the reported columns only when a model has them, the clean accuracy
    on AutoAttack's samples only when AutoAttack ran on fewer than all."""

    def interval(column):
        return [
            _with_interval(r[column], r[f"{column}_low"], r[f"{column}_high"]) for _, r in table1.iterrows()
        ]

    out = pd.DataFrame({"model_id": table1["model_id"], "sparsity measured": table1["sparsity_measured"]})
    out["clean [95% CI]"] = interval("clean_acc")
    if (table1["clean_acc_on_aa_samples"] != table1["clean_acc"]).any():
        out["clean on AA samples [95% CI]"] = interval("clean_acc_on_aa_samples")
    out["AutoAttack [95% CI]"] = interval("aa_acc")
    out["PGD [95% CI]"] = interval("pgd_acc")
    out["FMN at ε [95% CI]"] = interval("fmn_acc_at_eps")
    if table1["reported_robust"].notna().any():
        out["reported robust"] = table1["reported_robust"]
        out["reported − AA"] = table1["drop_reported_minus_aa"]
    if table1["paper_drop"].notna().any():
        out["paper's drop"] = table1["paper_drop"]
    out["PGD − AA"] = table1["pgd10_minus_aa"]
    out["FMN weaker than AA"] = table1["fmn_weaker_than_aa"]
    return out


def _figure2_caption(label: str, eps: float) -> str:
    return (
        f"Figure 2, {label}: the dense parent's logit margin against its signed FMN distance ε of each "
        f"test sample, one colour per population S_ab (a: dense correct, b: pruned correct; counts "
        f"in the legend); dashed red: the threat model's ε = ±{eps:.4g}."
    )


def _verdict_text(verdicts: pd.DataFrame) -> str:
    """Whether this grid supports the survey's two findings, in a sentence each."""
    if verdicts.empty:
        return (
            "The survey's findings need global and local methods (a) and LWM-global or LAMP "
            "beside a complex method (b) in a cell: not in this grid."
        )
    out = []
    for finding, rows in verdicts.groupby("finding"):
        out.append(
            f"**{finding}**: supported in {int(rows['supports'].sum())} of {len(rows)} cells "
            f"(McNemar, α = 0.05; p from {rows['p'].min():.2g} to {rows['p'].max():.2g})."
        )
    return " ".join(out)


def statistics_sections(
    samples: Samples,
    models: pd.DataFrame,
    folder: Path,
    settings: AnalysisSettings,
    reported: dict | None = None,
    labels: dict[str, str] | None = None,
) -> tuple[list[Section], dict[str, pd.DataFrame]]:
    from apgrid.trainables.methods import PRUNING_METHODS

    labels = labels or {}
    eps = float(samples.first(samples.model_ids[0])["eps"])
    table1 = reevaluation_table(models, reported)
    limit = settings.figure2_models

    def figure2(i: int, model_id: str, joined: pd.DataFrame) -> Figure | None:
        if limit is not None and i >= limit:
            return None
        label = labels.get(model_id, model_id)
        path = plots.thin_ice_scatter(joined, label, eps, folder / f"fig2_{model_id}.png")
        return Figure(path, _figure2_caption(label, eps))

    # Table 2 and Figure 2, one dense parent and its pruned models read at a time, per process
    pairs = thin_ice_rows(
        samples, settings.bootstrap_resamples, settings.auc_interval, figure2, settings.workers
    )
    table2 = pd.DataFrame([row for row, _ in pairs])
    scatters = [figure for _, figure in pairs if figure is not None]
    seeds = seed_table(models)
    taxonomy = {m.name: m.taxonomy for m in PRUNING_METHODS.values()}
    leader = leaderboard(models, taxonomy, samples)
    verdicts = findings(leader, samples)
    compare = comparison_table(leader)
    tables = {
        "models": models,
        "table1_reevaluation": table1,
        "table2_thin_ice": table2,
        "seeds": seeds,
        "leaderboard": leader,
        "comparisons": compare,
        "findings": verdicts,
    }
    aa_acc = dict(zip(models["model_id"], models["aa_acc"]))
    curves = security_curve_figures(samples, aa_acc, eps, folder, settings.workers)

    weak = [labels.get(m, m) for m in table1[table1["fmn_weaker_than_aa"]]["model_id"]]
    s1 = Section(
        "Table 1: robustness as reported vs AutoAttack",
        [
            UNITS,
            "`drop_reported_minus_aa` = the robust accuracy the model's paper reported (`reported_robust`, "
            "with its attack) − AutoAttack's on the same model: the thin-ice paper's drop, for checkpoints "
            "whose entry carries `reported`; for a model apgrid retrained from a method's `reported` "
            "entry it is left empty (the paper's model is the authors'), and `paper_drop` = "
            "`reported_robust` − the AutoAttack accuracy the paper measured on the authors' own model "
            "(`reported_aa_robust`): the paper's drop, beside apgrid's `pgd10_minus_aa`. "
            "`pgd10_minus_aa` = apgrid's PGD accuracy − AutoAttack's on "
            "the samples AutoAttack ran on: a different quantity (no paper reported it). "
            "`clean_acc_on_aa_samples` is the clean accuracy on those same `aa_samples` (the paper's "
            "A.A. Acc. beside its A.A. Rob.). "
            "`fmn_acc_at_eps` is read off the FMN security curve at the threat ε. "
            "The columns of the CSV that do not fit a page (intervals' bounds, reported attacks) are "
            "in table1_reevaluation.csv.",
        ],
        [("Robustness as reported vs AutoAttack", _table1_display(table1), "table1_reevaluation")],
    )
    if table1["reported_robust"].isna().all():
        s1.text.append("No model carries a reported robust accuracy, so the reported columns are left out.")
    if weak:
        s1.text.append(
            f"**FMN is weaker than AutoAttack** (higher accuracy at the threat ε) on: "
            f"{', '.join(weak)}. Its security curves overstate robustness there; raise "
            f"`evaluation.fmn_steps`."
        )
    s2 = Section(
        "Table 2: samples on thin ice",
        [
            "Populations S_ab: a = dense model correct on the clean sample, b = pruned model correct "
            "(shares of the test samples). ε = the dense model's signed FMN distance. AUC = P(first "
            f"population's ε < second's), with {_interval_text(settings)}. The paper's hypotheses are "
            "directional, so the test is the **one-sided** Mann-Whitney U; the two-sided p is beside it. "
            "McNemar: exact test that dense and pruned models err equally often (discordant pairs), on "
            "clean and on AutoAttack correctness. Samples whose dense FMN found nothing are left out of "
            "the AUCs (column `dense_fmn_not_found` of table2_thin_ice.csv).",
            "**Two checks on ε.** A distance is never above what an attack proved: where PGD or "
            "AutoAttack broke a sample at the threat ε and FMN reported more (or nothing), FMN "
            "overstated it (`dense FMN overstated` counts them on the dense model) and its distance is "
            "at most ε; the *bounded* AUCs use min(ε_FMN, ε) there. A misclassified sample's negative ε "
            "has two readings: minus the distance that makes the dense model predict the true label "
            "(targeted; the default, the paper's definition: how far the sample is from being right) "
            "and minus the distance out of its predicted class (untargeted: how far from its current "
            "boundary); the *untargeted* AUC tests |S01| < |S00| under the second.",
        ],
        [("Samples on thin ice", _thin_ice_display(table2), "table2_thin_ice")] if len(table2) else [],
        scatters,
    )
    if not len(table2):
        s2.text.append("_No pruned model with its dense parent evaluated._")
    elif len(scatters) < len(table2):
        s2.text.append(
            f"Figure 2 is drawn for the first {len(scatters)} of the {len(table2)} pruned models "
            "(`analysis.figure2_models`); the table holds every one."
        )
    s2.title += " (Figure 2: dense logit margin vs ε per population)"
    several = bool((seeds["seeds"] > 1).any())
    s3 = Section(
        "Across seeds",
        [
            "Mean and standard deviation over seeds of each architecture × method × sparsity."
            if several
            else "Every cell of this grid has one seed, so there is no spread to show; "
            "add seeds to `dense.seeds` for mean ± std."
        ],
        [("Mean and standard deviation over seeds", seeds, "seeds")] if several else [],
    )
    s4 = Section(
        "Leaderboard (taxonomy)",
        [
            "Per dataset × architecture × structure × sparsity, methods ranked by AutoAttack robust "
            "accuracy (ties: clean accuracy), mean over seeds, with the survey's taxonomy. "
            "The comparison table pits local vs global scope and criteria against each other on the "
            "cells where both exist (best method of each group per cell). `aa_low`–`aa_high` and "
            "`clean_low`–`clean_high`: 95 % Wilson intervals of the AutoAttack and clean accuracies "
            "(fractions, as everywhere in this report); `p_above_next`: McNemar's exact test of a "
            "rank against the next on their shared samples (small: the order is real).",
            _off_target(leader),
            _verdict_text(verdicts),
        ],
        [
            ("Ranking", leader, "leaderboard"),
            ("Local vs global, criterion vs criterion", compare, "comparisons"),
            ("The survey's findings, cell by cell", verdicts, "findings"),
        ],
    )
    s5 = Section(
        "Security curves",
        [
            "Robust accuracy vs ε from the per-sample FMN distances, dense (black) and pruned overlaid "
            "per architecture (accuracy as a fraction of the test samples); × marks AutoAttack's "
            "accuracy at the threat ε. A curve above its × at "
            "the threat ε means FMN was weaker than AutoAttack there."
        ],
        figures=curves,
    )
    return [s1, s2, s3, s4, s5], tables


def _interval_text(settings: AnalysisSettings) -> str:
    if settings.auc_interval == "bootstrap":
        return (
            f"a 95 % percentile bootstrap interval ({settings.bootstrap_resamples} resamples of each "
            "population)"
        )
    return (
        "a 95 % interval from DeLong's variance (DeLong et al. 1988: the Mann-Whitney AUC's "
        "variance from each sample's placement among the other population; normal approximation, "
        "clipped to [0, 1]; `analysis.auc_interval: bootstrap` for a bootstrap one)"
    )


def security_curve_figures(
    samples: Samples, aa_acc: dict[str, float], eps: float, folder: Path, workers: int | None = None
) -> list[Figure]:
    """One figure per architecture, its models' FMN security curves overlaid up to the larger of
    3 ε and the 95th percentile of their |ε_FMN|: each model's rows read twice (the percentile,
    then its curve), none held."""
    by_arch: dict[str, list[str]] = {}
    for model_id in samples.model_ids:
        arch = samples.first(model_id)["arch"]
        if not pd.isna(arch):
            by_arch.setdefault(arch, []).append(model_id)
    figures = []
    for arch in sorted(by_arch):
        ids = by_arch[arch]

        def each(fn, ids=ids):  # fn of each model's |ε_FMN|, in the workers, folded as they come
            return iter_models(_of_distances, ids, (samples, fn), workers)

        grid = np.linspace(0, max(eps * 3, streamed_quantile(None, 0.95, each)), 200)
        curves = map_models(_security_curve_of, ids, (samples, grid), workers)
        lines = [
            (samples.first(model_id), curve, aa_acc.get(model_id, float("nan")))
            for model_id, curve in zip(ids, curves)
        ]
        path = plots.security_curves(lines, grid, eps, folder / f"security_curve_{arch}.png")
        norm = lines[0][0]["norm"]
        caption = (
            f"Security curves of the {arch} models: robust accuracy (fraction of the test samples) "
            f"against the {norm} radius ε from the per-sample FMN distances, the dense model in black; "
            f"×: AutoAttack's accuracy at the threat ε = {eps:.4g} (dashed)."
        )
        figures.append(Figure(path, caption))
    return figures


def _of_distances(shared: tuple[Samples, Callable], model_id: str):
    samples, fn = shared
    return fn(np.abs(samples.rows(model_id, ["fmn_eps"])["fmn_eps"].to_numpy(dtype=float)))


def _security_curve_of(shared: tuple[Samples, np.ndarray], model_id: str) -> np.ndarray:
    samples, grid = shared
    return security_curve(samples.rows(model_id, ["clean_correct", "fmn_eps"]), grid)


def cost_section(
    models: pd.DataFrame, access: ModelAccess, settings: AnalysisSettings, cache: Path
) -> tuple[Section, pd.DataFrame]:
    from apgrid.analysis.costs import model_cost
    from apgrid.analysis.tables import cost_table

    rows = []
    for model_id in models["model_id"]:

        def measure(model_id=model_id):
            access.log(f"[analyze] costs of {model_id}")
            return model_cost(
                access.load(model_id), access.input_shape, access.device, settings.cost_batch_size
            ).as_dict()

        cost = _cached(
            cache / "costs" / f"{model_id}.json",
            measure,
            {"batch": settings.cost_batch_size, "device": str(access.device)},
        )
        card = access.cards.get(model_id, {})
        quantized = card.get("config", {}).get("options", {}).get("bits")  # ATMC's k bits
        bits = card.get("metrics", {}).get("model_size_bits") if quantized else None
        rows.append({"model_id": model_id, **cost, "quantized_bytes": bits / 8 if bits else np.nan})
    table = cost_table(models, pd.DataFrame(rows))
    text = [
        "Parameters and non-zeros counted on the stored weights; `file_MB` = the fp32 state dict "
        "as saved, `sparse_MB` = one bit per weight plus the fp32 non-zeros, `quantized_MB` = "
        "ATMC's k-bit size where recorded. Latency = median of 10 forward passes on a batch "
        f"of {settings.cost_batch_size} on `{access.device}`, `throughput_samples_per_s` = that batch "
        "over that latency; speed-up vs the dense parent.",
        "**Structured pruning** removes filters: the dense file and the kernels really shrink. "
        "**Unstructured** masks only zero weights: dense kernels run at the same speed, so a "
        "speed-up near 1× is the honest result, and the size gain needs a sparse format.",
    ]
    return Section("Cost of the models", text, [("Cost of the models", table, "costs")]), table


def transfer_section(
    models: pd.DataFrame,
    access: ModelAccess,
    settings: AnalysisSettings,
    folder: Path,
    cache: Path,
    eps: float,
) -> tuple[Section, pd.DataFrame]:
    from apgrid.analysis.transfer import UNBOUNDED_ATTACKS, transfer_table

    labels = dict(zip(models["model_id"], models["label"])) if "label" in models else {}
    dense = models[models["role"] == "dense"]["model_id"].tolist()
    targets = models["model_id"].tolist()
    n = settings.transfer_samples or int(models["num_samples"].min())  # default: every evaluated
    key = {"attacks": list(settings.transfer_attacks), "n": n, "targets": targets, "eps": eps}

    def compute():
        x, y = access.test_data(n)
        loaded = {m: access.load(m) for m in targets}
        return transfer_table(
            {m: loaded[m] for m in dense}, loaded, x, y, eps, settings.transfer_attacks, log=access.log
        ).to_dict("records")

    table = pd.DataFrame(_cached(cache / "transfer.json", compute, key))
    figures = [
        Figure(
            plots.transfer_heatmap(table, source, folder / f"transfer_{source}.png", labels),
            f"Accuracy (fraction) of every model on adversarial examples crafted on "
            f"{labels.get(source, source)}: the attacks bounded by the threat ε = {eps:.4g} above the "
            f"rule, the unbounded minimum-norm CW-L2 and DeepFool-L2 below it, marked (unbounded).",
        )
        for source in dense
    ]
    text = [
        f"Adversarial examples crafted on each dense (base) model — FGSM, BIM, PGD, APGD-CE "
        f"and a universal perturbation within the threat ε; CW-L2 (κ = 5) and DeepFool-L2 "
        f"unbounded — on the first {n} test samples, and each model's "
        f"accuracy on them (`adv_acc`, with its 95 % Wilson interval `adv_acc_low`–"
        f"`adv_acc_high`; the source's own row is the white-box accuracy). "
        f"`fooled` = share of the samples the target got right clean that it gets wrong. "
        f"CW and DeepFool are marked (unbounded): their accuracies are not comparable with the "
        f"bounded attacks'. {UNITS}"
    ]
    matrix = (
        table.pivot_table(
            index=["source", "attack"], columns="target", values="adv_acc", sort=False
        ).reset_index()
        if len(table)
        else table
    )
    matrix.columns = [labels.get(str(c), str(c)) for c in matrix.columns]
    if "attack" in matrix:
        matrix["attack"] = [f"{a} (unbounded)" if a in UNBOUNDED_ATTACKS else a for a in matrix["attack"]]
    return Section(
        "Transfer attacks",
        text,
        [
            ("Accuracy on transferred examples", matrix, "transfer_matrix"),
            ("Transfer attacks, every cell", table, "transfer"),
        ],
        figures,
    ), table


def slice_section(
    samples: Samples,
    access: ModelAccess,
    settings: AnalysisSettings,
    folder: Path,
    labels: dict[str, str] | None = None,
) -> Section:
    import torch

    from apgrid.trainables.attacks import fmn

    figures = []
    for model_id, first, joined in pruned_pairs(samples):
        picked = pd.concat(
            [
                joined[(joined["population"] == pop) & joined["eps_found"]].head(settings.slice_samples)
                for pop in ("S10", "S01")
            ]
        )
        if picked.empty:
            continue
        access.log(f"[analyze] decision slices of {model_id}")
        x_all, y_all = access.test_data(int(picked["sample_idx"].max()) + 1)
        idx = torch.from_numpy(np.array(picked["sample_idx"], dtype=np.int64))
        x, y = x_all[idx], y_all[idx]
        dense = access.load(first["dense_model_id"])
        kwargs = dict(norm=str(first["norm"]), steps=int(first["fmn_steps"]), step_size=1.0)
        # S10: the dense model is right, FMN towards its boundary; S01: it is wrong, targeted FMN
        # towards the true label (the thin-ice paper's negative ε)
        x_adv = torch.cat(
            [
                fmn(dense, x[i : i + 1], y[i : i + 1], **kwargs, target=None if pop == "S10" else int(y[i]))[
                    2
                ]
                for i, pop in enumerate(picked["population"])
            ]
        )
        label = (labels or {}).get(model_id, model_id)
        path = plots.decision_slices(
            dense,
            access.load(model_id),
            x,
            y,
            x_adv,
            picked["population"].tolist(),
            label,
            folder / f"fig1_{model_id}.png",
        )
        caption = (
            f"Figure 1, {label}: decision regions in the plane through each sample spanned by its FMN "
            f"direction on the dense parent and a random orthogonal direction (input units); shaded "
            f"where the dense model is right (black: its boundary), hatched where the pruned one is "
            f"(red dashed: its boundary)."
        )
        figures.append(Figure(path, caption))
    return Section(
        "Figure 1: decision regions around samples on thin ice",
        [
            "The plane through each sample spanned by its FMN direction on the dense model and a random "
            "orthogonal direction (targeted at the true label for S01, as for their negative ε); axes "
            "in input units. S10 samples (lost by pruning) sit just inside the dense boundary, which "
            "the pruned boundary (red) cuts across; S01 (gained) just outside it."
        ],
        figures=figures,
    )


def _cached(path: Path, compute, key: dict):
    """JSON cache keyed by the settings that produced it: reanalysing does not remeasure."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "value": value}, default=float))
    return value


# -- entry point --------------------------------------------------------------------------------


def write_report(
    samples: pd.DataFrame | Samples,
    folder: Path,
    grid_name: str,
    settings: AnalysisSettings = AnalysisSettings(),
    access: ModelAccess | None = None,
    reported: dict | None = None,
    deviations: dict[str, list[str]] | None = None,
    cache: Path | None = None,
) -> dict[str, Path]:
    """Write CSV tables (and each table as LaTeX), figures (PNG, PDF, SVG; captions in
    figures.tex), report.md and a self-contained index.html; returns the paths written. Without
    `access` (no models at hand) the sections that need models are left out, and the report says
    so. `deviations`: per method, where the grid trained it unlike its
    authors (the model cards'). `cache`: where measurements are kept (default: beside `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    cache = cache or folder.parent / "analysis_cache"
    samples = as_samples(samples)
    models = model_table(samples, settings.workers)
    labels = model_labels(models.to_dict("records"))
    models.insert(1, "label", models["model_id"].map(labels))
    sections, tables = statistics_sections(samples, models, folder, settings, reported, labels)
    first = samples.first(samples.model_ids[0])  # the grid's settings, as every row holds them
    eps = float(first["eps"])
    if access is None:
        sections.append(
            Section(
                "Costs, transfer attacks, decision slices",
                ["Not computed: the models were not available to this analysis."],
            )
        )
    else:
        sections.append(slice_section(samples, access, settings, folder, labels))
        if settings.transfer_attacks:
            section, tables["transfer"] = transfer_section(models, access, settings, folder, cache, eps)
            sections.append(section)
        if settings.costs:
            section, tables["costs"] = cost_section(models, access, settings, cache)
            sections.append(section)
    if deviations:
        section, tables["methods"] = methods_section(deviations)
        sections.append(section)
    for section in sections:
        section.tables = [
            (caption, _labelled(table, labels), name) for caption, table, name in section.tables
        ]
    sections.append(_key_section(models))

    threat = f"{first['norm']}, ε = {eps:.6g}"
    intro = Section(
        "Summary",
        [
            f"{len(models)} model{'s' * (len(models) != 1)} ({(models['role'] == 'dense').sum()} dense, "
            f"{(models['role'] == 'pruned').sum()} pruned), {int(models['num_samples'].iloc[0])} test "
            f"samples each; threat model {threat}; AutoAttack "
            f"`{first['autoattack_version']}`{_autoattack_subset(first)}, "
            f"PGD-{int(first['pgd_steps'])}, "
            f"FMN {int(first['fmn_steps'])} steps{_which_fmn(samples, models, settings.workers)}. "
            f"Every table is also a CSV and a LaTeX file (booktabs) beside this page, every figure a "
            f"PNG, a PDF and an SVG (captions in figures.tex); models are named by their labels "
            f"(method, sparsity, architecture, seed), keyed to their ids in the Models section. "
            f"{UNITS} Settings: {json.dumps(asdict(settings))}."
        ],
    )
    sections.insert(0, intro)

    paths = {}
    for name, table in tables.items():
        paths[f"{name}.csv"] = folder / f"{name}.csv"
        table.to_csv(paths[f"{name}.csv"], index=False)
    paths.update(write_latex(sections, folder))
    for i, figure in enumerate(f for s in sections for f in s.figures):
        paths[f"figure{i}"] = figure.path
    title = f"apgrid report: {grid_name}"
    paths["report.md"] = folder / "report.md"
    paths["report.md"].write_text(render_markdown(title, sections))
    paths["index.html"] = folder / "index.html"
    paths["index.html"].write_text(render_html(title, sections))
    return paths


def _labelled(table: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """The table as shown: model ids in its id columns replaced by the models' labels."""
    present = {c: shown for c, shown in MODEL_ID_COLUMNS.items() if c in table}
    if not present:
        return table
    table = table.assign(**{c: table[c].map(lambda m: labels.get(m, m)) for c in present})
    return table.rename(columns=present)


def _key_section(models: pd.DataFrame) -> Section:
    """The key from the labels the report names models by to their ids (and their parents)."""
    labels = dict(zip(models["model_id"], models["label"]))
    key = models[["label", "model_id", "role"]].assign(
        dense_parent=models["dense_model_id"].map(lambda m: labels.get(m, m)),
        samples=models["num_samples"],
    )
    text = (
        "The label of each model in the tables and figures, and its id (the MLflow run's "
        "`model_id` tag, the Parquet partition, `apgrid query --where \"model_id='…'\"`). Every "
        "model's metrics are in models.csv."
    )
    return Section("Models", [text], [("Model key: labels and ids", key, "model_key")])


# -- LaTeX ----------------------------------------------------------------------------------------

LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}
LATEX_UNICODE = {
    "ε": r"$\varepsilon$",
    "−": "$-$",
    "–": "--",
    "×": r"$\times$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "±": r"$\pm$",
    "→": r"$\rightarrow$",
}
LATEX_PREAMBLE = "% needs \\usepackage{booktabs} and \\usepackage{adjustbox}; written by apgrid analyze\n"


def latex_text(text) -> str:
    """Text as LaTeX: its special characters escaped, ε and the dashes spelt out."""
    out = "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))
    for char, spelt in LATEX_UNICODE.items():
        out = out.replace(char, spelt)
    return out


def latex_table(table: pd.DataFrame, caption: str, name: str) -> str:
    """A booktabs table (pandas' Styler) with its caption and label tab:NAME, its cells formatted
    as the report's and shrunk to the line width when wider."""
    shown = table.map(lambda v: latex_text(_cell(v)))
    shown.columns = [latex_text(c) for c in table.columns]
    styler = shown.style.hide(axis="index")
    body = styler.to_latex(
        column_format="l" + "r" * (len(table.columns) - 1),
        hrules=True,
        caption=latex_text(caption),
        label=f"tab:{name}",
        position_float="centering",
    )
    body = body.replace("\\begin{tabular}", "\\begin{adjustbox}{max width=\\linewidth}\n\\begin{tabular}")
    return LATEX_PREAMBLE + body.replace("\\end{tabular}", "\\end{tabular}\n\\end{adjustbox}")


def latex_figures(figures: list[Figure]) -> str:
    """A figure environment per figure: its PDF and its caption."""
    parts = [
        f"\\begin{{figure}}[htbp]\n\\centering\n"
        f"\\includegraphics[width=\\linewidth]{{{f.path.with_suffix('.pdf').name}}}\n"
        f"\\caption{{{latex_text(f.caption)}}}\n\\label{{fig:{f.path.stem}}}\n\\end{{figure}}\n"
        for f in figures
    ]
    return "% needs \\usepackage{graphicx}; written by apgrid analyze\n" + "\n".join(parts)


def write_latex(sections: list[Section], folder: Path) -> dict[str, Path]:
    """NAME.tex for every non-empty table shown, figures.tex for every figure."""
    paths = {}
    for section in sections:
        for caption, table, name in section.tables:
            if len(table):
                paths[f"{name}.tex"] = folder / f"{name}.tex"
                paths[f"{name}.tex"].write_text(latex_table(table, caption or section.title, name))
    paths["figures.tex"] = folder / "figures.tex"
    paths["figures.tex"].write_text(latex_figures([f for s in sections for f in s.figures]))
    return paths


def methods_section(deviations: dict[str, list[str]]) -> tuple[Section, pd.DataFrame]:
    """Each pruning method of the grid and where it was trained unlike its authors' recipe."""
    table = pd.DataFrame(
        [
            {"method": method, "deviations": len(found), "unlike its authors": "; ".join(found) or "–"}
            for method, found in sorted(deviations.items())
        ]
    )
    text = (
        "Each method's recipe as its authors run it is recorded with a source per value "
        "(`apgrid list methods NAME`); this grid departs from it where listed (grid value — authors')."
    )
    caption = "Methods against their authors' recipes"
    return Section(caption, [text], [(caption, table, "methods")]), table


def _off_target(leader: pd.DataFrame) -> str:
    """The cells whose models are sparser or denser than their target by more than a point: a
    rank there compares unlike budgets (R-ADMM on conv layers only, Flying Bird+'s moving one)."""
    if leader.empty or "sparsity_measured" not in leader:
        return ""
    off = leader[(leader["sparsity_measured"] - leader["sparsity"]).abs() > 0.01]
    if off.empty:
        return "Every model is at its cell's sparsity (within a point)."
    listed = "; ".join(
        f"{r.method} at {r.sparsity:.0%} measured {r.sparsity_measured:.1%}" for r in off.itertuples()
    )
    return f"**Not at their cell's sparsity** (their rank compares unlike budgets): {listed}."


def _ho_fmn_config(samples: Samples, model_id: str) -> str | None:
    rows = samples.rows(model_id, ["fmn_ho_config"])
    configs = rows["fmn_ho_config"].dropna() if "fmn_ho_config" in rows else ()
    return configs.iloc[0] if len(configs) else None


def _which_fmn(samples: Samples, models: pd.DataFrame, workers: int | None = None) -> str:
    """Which FMN ran: plain FMN alone, or HO-FMN beside it with each model's tuned attack and,
    over `models` (the model table), the samples each of FMN, HO-FMN and their ensemble
    overstated."""
    configs = map_models(_ho_fmn_config, samples.model_ids, samples, workers)
    picks = {m: c for m, c in zip(samples.model_ids, configs) if c is not None}
    if not picks:
        return " (plain FMN)"
    listed = "; ".join(f"{m}: {c}" for m, c in picks.items())

    def count(column: str) -> int:
        return int(models[column].sum()) if column in models else 0

    own = (
        f"HO-FMN's own distances give `fmn_ho_acc_at_eps` (closer than FMN's on "
        f"{count('fmn_ho_closer_than_fmn')} samples, farther on {count('fmn_ho_farther_than_fmn')}), "
        if "fmn_ho_acc_at_eps" in models and models["fmn_ho_acc_at_eps"].notna().any()
        else "HO-FMN's own distances were not recorded (rows written before they were), "
    )
    ho = f"HO-FMN on {count('fmn_ho_overstated')}, " if "fmn_ho_overstated" in models else ""
    return (
        f" (plain FMN and HO-FMN, the attack tuned per model: {listed}; {own}and the ensemble of "
        f"the two, the smaller distance per sample, `fmn_ensemble_acc_at_eps`; over all models the "
        f"distance of samples that PGD or AutoAttack broke at ε was overstated by FMN on "
        f"{count('fmn_overstated')}, {ho}the ensemble on "
        f"{count('fmn_ensemble_overstated')})"
    )


def _autoattack_subset(first: pd.Series) -> str:
    """' (apgd-ce, apgd-t only)' when the grid ran part of the version's ensemble (as the first
    row says), else ''."""
    from apgrid.trainables.attacks import AUTOATTACK_ENSEMBLES

    if "autoattack_attacks" not in first:  # rows written before the column existed: all ran
        return ""
    ran = first["autoattack_attacks"].split(",")
    if tuple(ran) == AUTOATTACK_ENSEMBLES[first["autoattack_version"]]:
        return ""
    return f" ({', '.join(ran)} only)"
