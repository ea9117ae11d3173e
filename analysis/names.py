"""The report's table names: the one list the CLI, the Python API and the report name them from
(no imports: the CLI reads it at start)."""

# Every table the report writes, one CSV each (OUTPUT/report/NAME.csv)
TABLES = {
    "table1_reevaluation": "robustness as reported vs AutoAttack (thin-ice Table 1)",
    "table2_thin_ice": "the thin-ice populations, AUCs and tests (thin-ice Table 2)",
    "leaderboard": "methods ranked by AutoAttack per cell (the survey's)",
    "comparisons": "the survey's two findings, cell by cell",
    "findings": "the findings' verdicts",
    "seeds": "mean and deviation over seeds",
    "costs": "parameters, size, latency (needs the models)",
    "transfer": "transfer attacks from the dense models (needs the models)",
    "methods": "each method's departures from its authors' recipe",
    "models": "one row per model",
}
SUMMARY_TABLES = ("table1_reevaluation", "table2_thin_ice", "leaderboard", "costs", "transfer")

# Table columns that hold a model id, shown as its label in the report's tables and figures
MODEL_ID_COLUMNS = {
    "model_id": "model",
    "dense_model_id": "dense parent",
    "source": "source",
    "target": "target",
}


def model_label(method, arch, sparsity, seed, role: str = "pruned") -> str:
    """A short readable name for a model: method, sparsity, architecture, seed
    ("hydra 95% cifar-tiny s0", "dense cifar-tiny s0"); the report's key maps it to the id."""
    parts = ["dense" if role == "dense" else str(method)]
    if role != "dense" and _given(sparsity):
        parts.append(f"{float(sparsity) * 100:.4g}%")
    parts.append(str(arch))
    if _given(seed):
        parts.append(f"s{int(float(seed))}")
    return " ".join(parts)


def model_labels(rows) -> dict[str, str]:
    """model_id -> label for rows of (model_id, role, method, arch, sparsity, seed); labels two
    models share (other options, other checkpoints) get the end of their id's hash."""
    labels = {
        r["model_id"]: model_label(r["method"], r["arch"], r["sparsity"], r["seed"], r["role"]) for r in rows
    }
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {
        model_id: label if counts[label] == 1 else f"{label} #{model_id.rsplit('-', 1)[-1][:6]}"
        for model_id, label in labels.items()
    }


def _given(value) -> bool:
    return value is not None and value == value and value != ""  # NaN != NaN
