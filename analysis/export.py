"""A grid's models as RobustBench model-info JSON, in RobustBench's tree:
OUT/<dataset>/<threat model>/<name>.json, as its model_info/cifar10/Linf/Carmon2019Unlabeled.json.

Every field RobustBench's files carry (RobustBench/robustbench model_info/*/*/*.json and
robustbench/leaderboard/leaderboard.html.j2): link, name, authors, additional_data,
number_forward_passes, dataset, venue, architecture, eps ("8/255"), clean_acc, reported,
autoattack_acc (percentages as strings, "89.69"), external (the template's "AA + external
accuracy"), footnote, unreliable. What a grid cannot know (the paper's title, authors, venue,
link) is empty unless the user's names file gives it; apgrid's own fields (method, sparsity,
taxonomy, PGD and FMN accuracy, FMN distance quantiles) go under "apgrid"."""

from __future__ import annotations

import difflib
import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from apgrid.analysis.tables import model_table
from apgrid.errors import ApgridError, show_value

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

# What a names file may set per model id: RobustBench's descriptive fields, and `file`, the JSON's
# name in the tree (RobustBench's model name, e.g. Sehwag2020Hydra; default: the model id).
TEXT_FIELDS = ("file", "name", "authors", "venue", "link", "footnote")
FLAG_FIELDS = ("additional_data", "unreliable")
NAME_FIELDS = (*TEXT_FIELDS, *FLAG_FIELDS, "reported", "number_forward_passes")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class ExportError(ApgridError, ValueError):
    """A names file that cannot be used: one line naming the file, the model and the field."""


def eps_text(eps: float) -> str:
    """8/255 for the usual image budgets, the decimal otherwise (RobustBench writes '8/255')."""
    fraction = Fraction(eps).limit_denominator(255)
    return (
        f"{fraction.numerator}/{fraction.denominator}"
        if fraction.denominator == 255 and abs(float(fraction) - eps) < 1e-9
        else f"{eps:g}"
    )


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}" if np.isfinite(fraction) else ""


def readable_name(row: pd.Series) -> str:
    """What a model is, in words, when the user names it nothing: method, sparsity, arch, seed."""
    if row["role"] == "dense":
        return f"{row['arch']}, dense ({row['method']}), seed {row['seed']}"
    return f"{row['method']} at {float(row['sparsity']):.0%} sparsity, {row['arch']}, seed {row['seed']}"


def attacks_robust_acc(rows: pd.DataFrame) -> float:
    """Accuracy on the AutoAttack samples when AutoAttack, PGD and FMN (at eps) all count: a
    sample is robust only if none of them broke it. NaN where AutoAttack ran on none."""
    attacked = rows[rows["aa_correct"].notna()]
    if attacked.empty:
        return float("nan")
    eps = float(attacked["eps"].iloc[0])
    fmn = attacked["fmn_eps_bounded"].astype(float).fillna(np.inf)
    robust = attacked["aa_correct"].astype(bool) & attacked["pgd_correct"].astype(bool) & (fmn > eps)
    return float(robust.mean())


def model_info(row: pd.Series, rows: pd.DataFrame, card: dict, given: dict | None = None) -> dict:
    from apgrid.trainables.attacks import AUTOATTACK_ENSEMBLES

    given = given or {}
    reported = card.get("reported") or {}
    correct = rows["clean_correct"].astype(bool)
    distances = rows.loc[correct, "fmn_eps"].astype(float).abs().dropna()
    quantiles = {
        f"q{int(q * 100)}": float(distances.quantile(q)) if len(distances) else None for q in QUANTILES
    }
    version, attacks = rows["autoattack_version"].iloc[0], rows["autoattack_attacks"].iloc[0]
    partial = attacks != ",".join(AUTOATTACK_ENSEMBLES[version])
    footnote = (
        f"apgrid: AutoAttack {version} ({attacks}) on {int(row['aa_samples'])} of "
        f"{int(row['num_samples'])} test samples"
    )
    info = {
        "link": "",
        "name": readable_name(row),
        "authors": "",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": row["dataset"],
        "venue": "",
        "architecture": row["arch"],
        "eps": eps_text(float(row["eps"])),
        "clean_acc": percent(row["clean_acc"]),
        "reported": f"{100 * reported['robust']:.2f}" if "robust" in reported else "",
        "autoattack_acc": percent(row["aa_acc"]),
        "external": percent(attacks_robust_acc(rows)),
        "footnote": footnote,
        # RobustBench flags an evaluation it does not trust; a subset of the ensemble is one
        "unreliable": bool(partial),
    }
    info.update({k: v for k, v in given.items() if k != "file"})
    if isinstance(info["reported"], (int, float)):
        info["reported"] = f"{info['reported']:.2f}"
    info["apgrid"] = {
        "model_id": row["model_id"],
        "dense_model_id": row["dense_model_id"],
        "role": row["role"],
        "method": row["method"],
        "norm": row["norm"],
        "sparsity": float(row["sparsity"]),
        "sparsity_measured": float(row["sparsity_measured"]),
        "taxonomy": card.get("taxonomy"),
        "reported": reported or None,
        "pgd_acc": float(row["pgd_acc"]),
        "fmn_acc_at_eps": float(row["fmn_acc_at_eps"]),
        "external": "AutoAttack, PGD and FMN together, on the AutoAttack samples",
        "aa_samples": int(row["aa_samples"]),
        "num_samples": int(row["num_samples"]),
        "fmn_eps_quantiles": quantiles,
        "config_hash": card.get("config_hash"),
    }
    return info


def export(
    samples: pd.DataFrame, cards: dict[str, dict], folder: Path, names: dict[str, dict] | None = None
) -> list[Path]:
    """Write FOLDER/<dataset>/<norm>/<file>.json for every evaluated model (`names`: per model id,
    the fields the user set, load_names); returns the paths."""
    names = names or {}
    table = model_table(samples)
    paths = [
        folder / row["dataset"] / row["norm"] / f"{json_name(row['model_id'], names)}.json"
        for _, row in table.iterrows()
    ]
    twice = sorted({str(p) for p in paths if paths.count(p) > 1})
    if twice:
        raise ExportError(f"names: two models would write {twice[0]}; give each its own 'file'")
    for path, (_, row) in zip(paths, table.iterrows()):
        rows = samples[samples["model_id"] == row["model_id"]]
        info = model_info(row, rows, cards.get(row["model_id"], {}), names.get(row["model_id"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2) + "\n")
    return paths


def json_name(model_id: str, names: dict[str, dict]) -> str:
    """The file's name in the tree: the user's `file`, else the model id."""
    return names.get(model_id, {}).get("file", model_id)


def load_names(path: Path, model_ids) -> dict[str, dict]:
    """A names file (YAML or JSON): model id -> {file, name, authors, venue, link, footnote,
    additional_data, unreliable, reported, number_forward_passes}, every entry checked."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ExportError(f"names: cannot read {path} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0]
        raise ExportError(f"names: {path} is not YAML or JSON ({reason})") from None
    if not isinstance(raw, dict):
        raise ExportError(f"names: {path} must map model ids to their fields, got {type(raw).__name__}")
    ids = sorted(model_ids)
    return {str(model_id): checked_entry(path, str(model_id), entry, ids) for model_id, entry in raw.items()}


def checked_entry(path, model_id: str, entry, ids: list[str]) -> dict:
    if model_id not in ids:
        close = difflib.get_close_matches(model_id, ids, n=3, cutoff=0.3) or ids[:3]
        raise ExportError(f"names: {path}: no model {model_id!r} in the grid; closest: {', '.join(close)}")
    if not isinstance(entry, dict):
        raise ExportError(f"names: {path}: {model_id} must map fields to values, got {show_value(entry)}")
    for field, value in entry.items():
        where = f"names: {path}: {model_id}.{field}"
        if field not in NAME_FIELDS:
            raise ExportError(f"{where}: unknown field; allowed: {', '.join(NAME_FIELDS)}")
        if field in TEXT_FIELDS and not isinstance(value, str):
            raise ExportError(f"{where}: must be text, got {show_value(value)}")
        if field in FLAG_FIELDS and not isinstance(value, bool):
            raise ExportError(f"{where}: {show_value(value)} is not true or false")
        if field == "file" and not FILE_NAME.fullmatch(value):
            raise ExportError(f"{where}: {show_value(value)} is not a file name (letters, digits, _ . + -)")
        if field == "number_forward_passes" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ExportError(f"{where}: must be a whole number, got {show_value(value)}")
        if field == "reported" and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
            raise ExportError(f"{where}: a robust accuracy in percent, like 62.24, got {show_value(value)}")
    return dict(entry)
