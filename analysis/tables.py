"""Tables from the per-sample rows: model summaries, the re-evaluation table (Table 1 of the
thin-ice paper) and the thin-ice table (its Table 2)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from apgrid.analysis.parallel import map_models
from apgrid.analysis.samples import Samples, as_samples
from apgrid.analysis.thin_ice import (
    group_pairs,
    mcnemar,
    pair_groups,
    population_shares,
    thin_ice_tests,
    with_bounds,
)
from apgrid.trainables.methods import PRUNING_METHODS

MODEL_COLUMNS = [
    "model_id",
    "dense_model_id",
    "role",
    "dataset",
    "arch",
    "method",
    "sparsity",
    "sparsity_measured",
    "seed",
    "norm",
    "eps",
]


def summarize(rows: pd.DataFrame, eps: float) -> dict[str, float]:
    """Model-level metrics from one model's rows. FMN robust accuracy at eps counts a sample as
    robust when it is classified correctly and FMN's distance exceeds eps (or FMN found none)."""
    n = len(rows)
    rows = with_bounds(rows)
    correct = rows["clean_correct"].astype(bool)
    fmn_eps = rows["fmn_eps"].astype(float).fillna(np.inf)
    found = rows.loc[correct, "fmn_found"].astype(bool)
    attacked = rows[rows["aa_correct"].notna()]  # AutoAttack may run on the first N samples only
    return {
        "clean_acc": correct.sum() / n,
        "pgd_acc": rows["pgd_correct"].sum() / n,
        "aa_acc": attacked["aa_correct"].astype(bool).mean() if len(attacked) else float("nan"),
        "pgd_acc_on_aa_samples": (
            attacked["pgd_correct"].astype(bool).mean() if len(attacked) else float("nan")
        ),
        # thin-ice Table 1: "A.A. Acc." and "A.A. Rob." are read on the same (first 1,000) samples
        "clean_acc_on_aa_samples": (
            attacked["clean_correct"].astype(bool).mean() if len(attacked) else float("nan")
        ),
        "aa_samples": len(attacked),
        "fmn_acc_at_eps": (correct & (fmn_eps > eps)).sum() / n,
        "fmn_found_rate": float(found.mean()) if len(found) else float("nan"),
        "fmn_overstated": int(rows["fmn_overstated"].sum()),
        **ho_fmn_metrics(rows, correct, eps),
        "num_samples": n,
    }


def ho_fmn_columns(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """HO-FMN's own distances and the ensemble's (the per-sample minimum of FMN's and HO-FMN's),
    NaN where they did not run. Rows written before the ensemble had its column stored the
    ensemble in fmn_eps_ho: there it is read as the ensemble, and HO-FMN's own is unknown."""
    nan = pd.Series(np.nan, index=rows.index)
    ho = rows["fmn_eps_ho"].astype(float) if "fmn_eps_ho" in rows else nan
    ensemble = rows["fmn_eps_ensemble"].astype(float) if "fmn_eps_ensemble" in rows else nan
    older = ensemble.isna() & ho.notna()  # a new row with HO-FMN's distance has an ensemble too
    return ho.where(~older), ensemble.where(~older, ho)


def ho_fmn_metrics(rows: pd.DataFrame, correct: pd.Series, eps: float) -> dict[str, float]:
    """HO-FMN's robust accuracy at eps from its own distances, on how many samples it found a
    closer or a farther point than FMN, and on how many it overstates the distance (PGD or
    AutoAttack broke them at eps, as `fmn_overstated` counts FMN's); the same accuracy and
    overstatements for the ensemble of FMN and HO-FMN. Nothing for what did not run (older rows
    have no HO-FMN of its own, or no column at all)."""
    from apgrid.trainables.evaluation import fmn_bounds

    plain = rows["fmn_eps"].astype(float).fillna(np.inf)
    aa = rows["aa_correct"].astype("boolean").fillna(True).to_numpy(dtype=bool)
    right = correct.to_numpy(dtype=bool)
    out = {}
    for name, dist in zip(("ho", "ensemble"), ho_fmn_columns(rows)):
        if dist.isna().all():
            continue
        dist = dist.fillna(np.inf)
        overstated, _ = fmn_bounds(right, rows["pgd_correct"].to_numpy(dtype=bool), aa, dist.to_numpy(), eps)
        out[f"fmn_{name}_acc_at_eps"] = (correct & (dist > eps)).sum() / len(rows)
        out[f"fmn_{name}_overstated"] = int(overstated.sum())
        if name == "ho":
            out["fmn_ho_closer_than_fmn"] = int((correct & (dist < plain)).sum())
            out["fmn_ho_farther_than_fmn"] = int((correct & (dist > plain)).sum())
    return out


def model_table(samples: pd.DataFrame | Samples, workers: int | None = None) -> pd.DataFrame:
    """One row per model: its identity columns and summary metrics (one model's rows read at a
    time, on `workers` processes: analysis.parallel)."""
    samples = as_samples(samples)
    out = []
    for model_id, (first, summary) in zip(
        samples.model_ids, map_models(_model_summary, samples.model_ids, samples, workers)
    ):
        samples.remember_first(model_id, first)  # read in a worker: later steps need not read it again
        out.append(summary)
    table = pd.DataFrame(out)
    return table.sort_values(["role", "arch", "method", "sparsity", "seed"], ignore_index=True)


def _model_summary(samples: Samples, model_id: str) -> tuple[pd.Series, dict]:
    rows = samples.rows(model_id)
    first = rows.iloc[0]
    return first, {**{c: first[c] for c in MODEL_COLUMNS}, **summarize(rows, float(first["eps"]))}


def reevaluation_table(models: pd.DataFrame, reported: dict | None = None) -> pd.DataFrame:
    """Table 1 of the thin-ice paper: the robust accuracy a model's paper reported against
    AutoAttack's on the same model, and the drop reported - AutoAttack (the paper's quantity);
    for a model apgrid retrained (a method's `reported`), the paper's own drop (`paper_drop`,
    reported - the paper's AutoAttack on the authors' model) instead.
    A model with no reported number (trained by apgrid) has no drop; its PGD-10 - AutoAttack gap
    on the same samples is another quantity and is named so."""
    reported = reported or {}
    t = models[
        [
            "model_id",
            "method",
            "arch",
            "sparsity",
            "sparsity_measured",
            "clean_acc",
            "clean_acc_on_aa_samples",
            "aa_samples",
            "pgd_acc",
            "aa_acc",
            "fmn_acc_at_eps",
        ]
    ].copy()
    t["reported_clean"] = [reported.get(m, {}).get("clean", np.nan) for m in t["model_id"]]
    t["reported_robust"] = [reported.get(m, {}).get("robust", np.nan) for m in t["model_id"]]
    t["reported_attack"] = [reported.get(m, {}).get("attack", "") for m in t["model_id"]]
    # the paper's drop on this very model: a checkpoint's, not a retraining's (its paper's model
    # is the authors', so reported - AA would mix two models)
    same_model = [not reported.get(m, {}).get("retrained", False) for m in t["model_id"]]
    t["drop_reported_minus_aa"] = (t["reported_robust"] - t["aa_acc"]).where(same_model)
    # the paper's own drop, where the entry carries its AutoAttack figure for the authors' model
    t["reported_aa_robust"] = [reported.get(m, {}).get("aa_robust", np.nan) for m in t["model_id"]]
    t["paper_drop"] = t["reported_robust"] - t["reported_aa_robust"]
    t["pgd10_minus_aa"] = models["pgd_acc_on_aa_samples"] - t["aa_acc"]  # on the same samples
    t["fmn_weaker_than_aa"] = t["fmn_acc_at_eps"] > t["aa_acc"]
    samples_of = {"clean_acc_on_aa_samples": "aa_samples", "aa_acc": "aa_samples"}
    for column in ("clean_acc", "clean_acc_on_aa_samples", "pgd_acc", "aa_acc", "fmn_acc_at_eps"):
        t[f"{column}_low"], t[f"{column}_high"] = wilson_intervals(
            t[column], models[samples_of.get(column, "num_samples")]
        )
    return t


def wilson_intervals(accuracy: pd.Series, n: pd.Series) -> tuple[list[float], list[float]]:
    """95 % Wilson intervals of accuracies measured on n samples each (the leaderboard's and the
    transfer table's); NaN where nothing was measured."""
    from apgrid.analysis.transfer import proportion_interval

    bounds = [
        proportion_interval(int(round(a * k)), int(k)) if k and not np.isnan(a) else (np.nan, np.nan)
        for a, k in zip(accuracy.astype(float), n.fillna(0).astype(int))
    ]
    return [b[0] for b in bounds], [b[1] for b in bounds]


def thin_ice_table(
    samples: pd.DataFrame | Samples, resamples: int = 1000, interval: str = "delong"
) -> pd.DataFrame:
    """Table 2 layout: for each pruned model vs its dense parent, population shares, the two AUC
    tests with 95 % intervals (DeLong's, or `interval="bootstrap"` with `resamples`) and one- and
    two-sided Mann-Whitney p-values, and McNemar's test of dense-vs-pruned disagreement on clean and
    on AutoAttack correctness."""
    return pd.DataFrame([row for row, _ in thin_ice_rows(samples, resamples, interval)])


def thin_ice_rows(
    samples: pd.DataFrame | Samples,
    resamples: int = 1000,
    interval: str = "delong",
    draw: Callable[[int, str, pd.DataFrame], object] | None = None,
    workers: int | None = None,
) -> list[tuple[dict, object]]:
    """Table 2's row of every pruned model with its dense parent, and what `draw(i, model_id,
    joined)` returned for the i-th (a figure's path, or None), on `workers` processes, a dense
    parent and its children to a task."""
    samples = as_samples(samples)
    tasks, first = [], 0
    for dense_id, pruned_ids in pair_groups(samples):
        tasks.append((first, dense_id, pruned_ids))
        first += len(pruned_ids)
    done = map_models(_group_rows, tasks, (samples, resamples, interval, draw), workers)
    return [pair for group in done for pair in group]


def _group_rows(shared, task) -> list[tuple[dict, object]]:
    samples, resamples, interval, draw = shared
    first, dense_id, pruned_ids = task
    out = []
    for i, (model_id, row, joined) in enumerate(group_pairs(samples, dense_id, pruned_ids), first):
        drawn = draw(i, model_id, joined) if draw is not None else None
        out.append((thin_ice_row(model_id, row, joined, resamples, interval), drawn))
    return out


def thin_ice_row(
    model_id: str, first: pd.Series, joined: pd.DataFrame, resamples: int = 1000, interval: str = "delong"
) -> dict:
    """Table 2's row of one pruned model, from its rows joined with its dense parent's."""
    tests = thin_ice_tests(joined, resamples, interval=interval)
    # the other readings of ε: their AUC and one-sided p only
    bounded = thin_ice_tests(joined, column="eps_bounded", interval=None, two_sided=False)
    untargeted = thin_ice_tests(joined, column="eps_untargeted", interval=None, two_sided=False)
    row = {
        "model_id": model_id,
        "method": first["method"],
        "arch": first["arch"],
        "sparsity": first["sparsity"],
        "seed": first.get("seed"),
        **population_shares(joined),
    }
    for name, test in tests.items():
        row.update(
            {
                f"auc_{name}": test.auc,
                f"ci_low_{name}": test.ci_low,
                f"ci_high_{name}": test.ci_high,
                f"p_{name}": test.p_value,
                f"p2_{name}": test.p_two_sided,
            }
        )
    # the same tests with distances bounded by what PGD / AutoAttack proved, and |S01|<|S00|
    # with the untargeted reading of a misclassified sample's eps
    row.update(
        {
            "auc_S10<S11_bounded": bounded["S10<S11"].auc,
            "p_S10<S11_bounded": bounded["S10<S11"].p_value,
            "auc_|S01|<|S00|_bounded": bounded["|S01|<|S00|"].auc,
            "p_|S01|<|S00|_bounded": bounded["|S01|<|S00|"].p_value,
            "auc_|S01|<|S00|_untargeted": untargeted["|S01|<|S00|"].auc,
            "p_|S01|<|S00|_untargeted": untargeted["|S01|<|S00|"].p_value,
            "dense_fmn_overstated": int(joined["eps_overstated"].sum()),
        }
    )
    row.update(
        {
            "n_S10": tests["S10<S11"].n_x,
            "n_S11": tests["S10<S11"].n_y,
            "n_S01": tests["|S01|<|S00|"].n_x,
            "n_S00": tests["|S01|<|S00|"].n_y,
            "dense_fmn_not_found": int((~joined["eps_found"]).sum()),
            "mcnemar_p_clean": mcnemar(joined["dense_correct"], joined["pruned_correct"]).p_value,
        }
    )
    both = joined[joined["dense_aa"].notna() & joined["pruned_aa"].notna()]
    row["mcnemar_p_aa"] = (
        mcnemar(both["dense_aa"].astype(bool), both["pruned_aa"].astype(bool)).p_value
        if len(both)
        else float("nan")
    )
    return row


def seed_table(models: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of each (arch, method, sparsity) cell; std is NaN with one seed."""
    metrics = ["clean_acc", "pgd_acc", "aa_acc", "fmn_acc_at_eps"]
    keys = ["arch", "role", "method", "sparsity"]
    grouped = models.groupby(keys, dropna=False)[metrics]
    table = grouped.mean().add_suffix("_mean").join(grouped.std().add_suffix("_std"))
    table.insert(0, "seeds", models.groupby(keys, dropna=False).size())
    return table.reset_index()


CELL = ["dataset", "arch", "structure", "sparsity"]


def leaderboard(
    models: pd.DataFrame, taxonomy: dict[str, dict], samples: pd.DataFrame | Samples | None = None
) -> pd.DataFrame:
    """The survey's leaderboard (Piras et al. 2024, Sec. 5): per dataset x architecture x structure
    and sparsity, methods ranked by AutoAttack robust accuracy (then clean), with their taxonomy.
    Mean over seeds; the dense model of each architecture is listed as the reference. With the
    per-sample rows, every cell gets a 95 % Wilson interval of its AutoAttack accuracy (all its
    seeds' samples pooled), and each rank McNemar's exact test against the next one on their
    shared samples: is rank k really above rank k+1?"""
    pruned = models[models["role"] == "pruned"]
    if pruned.empty:
        return pd.DataFrame()
    tax = pd.DataFrame([{"method": m, **taxonomy.get(m, {})} for m in pruned["method"].unique()])
    for col in ("pipeline", "structured", "scope", "criterion"):
        if col not in tax:
            tax[col] = None
    measured = ["sparsity_measured"] if "sparsity_measured" in pruned else []
    cells = (
        pruned.groupby(["dataset", "arch", "method", "sparsity"], as_index=False)[
            ["clean_acc", "aa_acc", *measured]
        ]
        .mean()
        .merge(tax, on="method", how="left")
    )
    cells["structure"] = cells["structured"].map({True: "structured", False: "unstructured"}).fillna("?")
    cells = cells.sort_values(
        ["dataset", "arch", "structure", "sparsity", "aa_acc", "clean_acc"],
        ascending=[True, True, True, True, False, False],
    )
    cells["rank"] = cells.groupby(["dataset", "arch", "structure", "sparsity"]).cumcount() + 1
    dense = models[models["role"] == "dense"].groupby("arch")[["clean_acc", "aa_acc"]].mean()
    cells["dense_clean_acc"] = cells["arch"].map(dense["clean_acc"])
    cells["dense_aa_acc"] = cells["arch"].map(dense["aa_acc"])
    # fractions, as every accuracy of the report
    cells["clean / AA"] = [f"{c:.3f} / {a:.3f}" for c, a in zip(cells["clean_acc"], cells["aa_acc"])]
    extra = []
    if samples is not None:
        cells = _intervals_and_adjacent_tests(cells.reset_index(drop=True), models, samples)
        extra = ["clean_low", "clean_high", "aa_low", "aa_high", "p_above_next"]
    return cells[
        [
            "dataset",
            "arch",
            "structure",
            "sparsity",
            "rank",
            "method",
            "pipeline",
            "scope",
            "criterion",
            "clean / AA",
            "clean_acc",
            "aa_acc",
            *measured,
            "dense_clean_acc",
            "dense_aa_acc",
            *extra,
        ]
    ].reset_index(drop=True)


class CellFlags:
    """AutoAttack correctness of the pruned models of a (method, arch, sparsity), indexed by
    (seed, sample_idx), every seed's rows of the cell in the order the models appear; read when
    asked (McNemar's tests pair two cells' samples) and the last few kept."""

    def __init__(self, samples: pd.DataFrame | Samples):
        self.samples = as_samples(samples)
        self.members: dict[tuple, list[str]] = {}
        for model_id in self.samples.model_ids:
            first = self.samples.first(model_id)
            if first["role"] == "pruned" and not pd.isna(first["sparsity"]):
                key = (first["method"], first["arch"], first["sparsity"])
                self.members.setdefault(key, []).append(model_id)
        self._kept: dict[tuple, pd.Series] = {}

    def __call__(self, cell: pd.Series) -> pd.Series:
        key = (cell["method"], cell["arch"], cell["sparsity"])
        if key not in self._kept:
            if len(self._kept) >= 4:
                self._kept.pop(next(iter(self._kept)))
            self._kept[key] = self._read(key)
        return self._kept[key]

    def _read(self, key: tuple) -> pd.Series:
        parts = [
            rows[rows["aa_correct"].notna()]
            for _, rows in self.samples.each(["seed", "sample_idx", "aa_correct"], self.members.get(key, []))
        ]
        if not parts:
            index = pd.MultiIndex.from_arrays([[], []], names=["seed", "sample_idx"])
            return pd.Series([], dtype=bool, index=index)
        rows = pd.concat(parts) if len(parts) > 1 else parts[0]
        return rows.set_index(["seed", "sample_idx"])["aa_correct"].astype(bool)


def _intervals_and_adjacent_tests(cells: pd.DataFrame, models: pd.DataFrame, samples) -> pd.DataFrame:
    """Each cell's Wilson intervals of its AutoAttack and clean accuracies (its pruned models'
    counts, all seeds pooled, from the model table: aa_acc on aa_samples, clean_acc on
    num_samples) and McNemar's test against the next rank."""
    pruned = models[models["role"] == "pruned"]
    counts = (
        pruned.assign(
            aa_hits=(pruned["aa_acc"] * pruned["aa_samples"]).round().fillna(0),
            clean_hits=(pruned["clean_acc"] * pruned["num_samples"]).round(),
        )
        .groupby(["method", "arch", "sparsity"])[["aa_hits", "aa_samples", "clean_hits", "num_samples"]]
        .sum()
    )
    keys = list(zip(cells["method"], cells["arch"], cells["sparsity"]))
    for name, n in (("aa", "aa_samples"), ("clean", "num_samples")):
        pooled = counts.reindex(keys)
        accuracy = (pooled[f"{name}_hits"] / pooled[n]).reset_index(drop=True)
        cells[f"{name}_low"], cells[f"{name}_high"] = wilson_intervals(
            accuracy, pooled[n].reset_index(drop=True)
        )
    flags = CellFlags(samples)
    p_next = []
    for i, cell in cells.iterrows():
        nxt = i + 1
        same = nxt < len(cells) and all(cells.loc[nxt, c] == cell[c] for c in CELL)
        if not same:
            p_next.append(np.nan)
            continue
        a, b = flags(cell).align(flags(cells.loc[nxt]), join="inner")
        p_next.append(mcnemar(a.to_numpy(), b.to_numpy()).p_value if len(a) else np.nan)
    cells["p_above_next"] = p_next
    return cells


def findings(leader: pd.DataFrame, samples: pd.DataFrame | Samples, alpha: float = 0.05) -> pd.DataFrame:
    """The survey's two findings, tested on this grid's cells (Piras et al. 2024, Sec. 6):
    (a) methods that optimise layer-wise sparsity (global scope) beat uniform, layer-wise ones:
        per cell, the best global method against the best local one, McNemar's exact test;
    (b) LWM with a global allocation (lwm-global, lamp) matches the complex methods: per cell,
        the better of the two against the best other method; 'matches' = not significantly worse.
    Returns one row per (finding, cell) with the accuracies, the discordant counts and p."""
    rows = []
    if leader.empty or "aa_acc" not in leader:
        return pd.DataFrame()
    simple = {"lwm-global", "lamp"}
    flags = CellFlags(samples)
    for key, cell in leader.groupby(CELL):
        contests = []
        best_global = cell[cell["scope"] == "global"].head(1)
        best_local = cell[cell["scope"] == "local"].head(1)
        if len(best_global) and len(best_local):
            contests.append(("a: global beats local", best_global.iloc[0], best_local.iloc[0]))
        lwm = cell[cell["method"].isin(simple)].head(1)
        complex_ = cell[~cell["method"].isin(simple | {"lwm-local", "random"})].head(1)
        if len(lwm) and len(complex_):
            contests.append(("b: global LWM matches complex", lwm.iloc[0], complex_.iloc[0]))
        for finding, x, y in contests:
            fx, fy = flags(x).align(flags(y), join="inner")
            test = mcnemar(fx.to_numpy(), fy.to_numpy())
            rows.append(
                {
                    "finding": finding,
                    **dict(zip(CELL, key)),
                    "method_a": x["method"],
                    "method_b": y["method"],
                    "aa_a": x["aa_acc"],
                    "aa_b": y["aa_acc"],
                    "only_a": test.lost,
                    "only_b": test.gained,
                    "p": test.p_value,
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    a = table["finding"].str.startswith("a")
    table["supports"] = np.where(
        a,
        (table["aa_a"] > table["aa_b"]) & (table["p"] < alpha),
        ~((table["aa_a"] < table["aa_b"]) & (table["p"] < alpha)),
    )
    return table


def comparison_table(leader: pd.DataFrame) -> pd.DataFrame:
    """Local vs global scope and one criterion vs another, as the survey compares them: the mean
    AutoAttack accuracy of each group over the cells (arch, structure, sparsity) where both exist."""
    if leader.empty:
        return pd.DataFrame()
    rows = []
    for factor in ("scope", "criterion"):
        pivot = leader.pivot_table(
            index=["dataset", "arch", "structure", "sparsity"], columns=factor, values="aa_acc", aggfunc="max"
        )
        for a in pivot.columns:
            for b in pivot.columns:
                if a >= b:
                    continue
                both = pivot[[a, b]].dropna()
                if len(both):
                    diff = both[a] - both[b]
                    rows.append(
                        {
                            "factor": factor,
                            "a": a,
                            "b": b,
                            "cells": len(both),
                            "mean_aa_a": both[a].mean(),
                            "mean_aa_b": both[b].mean(),
                            "a_wins": int((diff > 0).sum()),
                            "b_wins": int((diff < 0).sum()),
                        }
                    )
    return pd.DataFrame(rows)


def security_curve(rows: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    """Robust accuracy vs ε from FMN distances: correct and distance > ε (a failed FMN counts as
    robust at every ε, the attacker's best effort having found nothing)."""
    correct = rows["clean_correct"].astype(bool).to_numpy()
    dist = rows["fmn_eps"].astype(float).abs().fillna(np.inf).to_numpy()
    return np.array([(correct & (dist > e)).mean() for e in grid])


def cost_table(models: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """Model costs beside their dense parent's: sizes in MB, latency, and the real speed-up."""
    t = models[["model_id", "dense_model_id", "role", "arch", "method", "sparsity"]].merge(
        costs, on="model_id"
    )
    mb = 1024**2
    t["file_MB"] = t["file_bytes"] / mb
    t["sparse_MB"] = t["sparse_bytes"] / mb
    t["quantized_MB"] = t["quantized_bytes"] / mb
    parent = t.set_index("model_id")
    base = t["dense_model_id"].where(t["dense_model_id"].isin(parent.index), t["model_id"])
    t["params_kept"] = t["nonzero"] / base.map(parent["nonzero"])
    t["file_ratio"] = t["file_bytes"] / base.map(parent["file_bytes"])
    t["speedup"] = base.map(parent["latency_ms"]) / t["latency_ms"]
    t["throughput_samples_per_s"] = t["throughput"]  # the unit in the name, as latency_ms's
    structured = t["method"].map(lambda m: getattr(PRUNING_METHODS.get(m), "structured", None))
    t["kind"] = np.where(
        t["role"] == "dense",
        "dense",
        np.where(
            structured.eq(True),
            "structured: filters removed",
            "unstructured: masks, dense kernels",
        ),
    )
    return t[
        [
            "model_id",
            "arch",
            "method",
            "sparsity",
            "kind",
            "parameters",
            "nonzero",
            "params_kept",
            "file_MB",
            "sparse_MB",
            "quantized_MB",
            "file_ratio",
            "latency_ms",
            "throughput_samples_per_s",
            "speedup",
            "device",
        ]
    ]
