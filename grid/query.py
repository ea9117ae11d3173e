"""`apgrid query`: a small filter language over MLflow runs, on top of mlflow.search_runs.

    method='hydra' and sparsity>=0.9 and aa_acc>0.5

Each clause is NAME OP VALUE (OP one of = != < <= > >=), joined by `and`. Quoted values compare as
tags; numbers compare as metrics when NAME is a metric, else as numeric tags (compared in Python,
since MLflow stores tags as strings).
"""

from __future__ import annotations

import re

import pandas as pd

from grid.errors import GridError

CLAUSE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(=|!=|<=|>=|<|>)\s*(.+?)\s*$")
DEFAULT_COLUMNS = ["stage", "model_id", "method", "arch", "sparsity", "seed", "status", "attempt",
                   "clean_acc", "pgd_acc", "aa_acc", "fmn_acc_at_eps", "measured_sparsity"]


class QueryError(ValueError):
    pass


def parse_where(where: str) -> list[tuple[str, str, str]]:
    if not where.strip():
        return []
    clauses = []
    for part in re.split(r"\s+and\s+", where.strip(), flags=re.IGNORECASE):
        m = CLAUSE.match(part)
        if not m:
            raise QueryError(f"--where: cannot read '{part}'; expected NAME OP VALUE, "
                             f"OP one of = != < <= > >=")
        clauses.append(m.groups())
    return clauses


def query_runs(uri: str, experiment: str | None, where: str, columns: str | None) -> pd.DataFrame:
    import mlflow

    clauses = parse_where(where)
    mlflow.set_tracking_uri(uri)
    try:
        names = [experiment] if experiment else None
        runs = mlflow.search_runs(experiment_names=names, search_all_experiments=names is None,
                                  filter_string="tags.level = 'model'", max_results=50000)
    except Exception as exc:
        raise GridError(f"tracking_uri: {uri} cannot be queried ({str(exc).splitlines()[0][:160]})") from None
    flat = _flatten(runs)
    return _select(flat, clauses, columns, [c for c in DEFAULT_COLUMNS if c in flat.columns])


def read_table(output, name: str, where: str = "", columns: str | None = None) -> pd.DataFrame:
    """An analysis table from OUTPUT/report, filtered like runs."""
    path = output / "report" / f"{name}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in (output / "report").glob("*.csv"))
        raise QueryError(f"--table: {name} not in {output / 'report'}; "
                         + (f"known: {', '.join(known)}" if known else "run `apgrid analyze` first"))
    table = pd.read_csv(path)
    return _select(table, parse_where(where), columns, list(table.columns))


def _select(table: pd.DataFrame, clauses, columns: str | None, default: list[str]) -> pd.DataFrame:
    """Rows matching every clause, with the named columns (or `default`)."""
    known = lambda: ", ".join(sorted(table.columns))  # noqa: E731
    for name, op, value in clauses:
        if name not in table.columns:
            raise QueryError(f"--where: unknown field '{name}'; known: {known()}")
        table = table[_compare(table[name], op, value)]
    cols = [c.strip() for c in columns.split(",")] if columns else default
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise QueryError(f"--columns: unknown {', '.join(missing)}; known: {known()}")
    return table[cols].reset_index(drop=True)


def _flatten(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty:
        return pd.DataFrame(columns=DEFAULT_COLUMNS)
    out = pd.DataFrame({"run_id": runs["run_id"], "status": runs["status"],
                        "start_time": runs["start_time"]})
    for col in runs.columns:
        for prefix in ("tags.", "metrics.", "params."):
            if col.startswith(prefix) and not col.startswith("tags.mlflow."):
                out[col[len(prefix):]] = runs[col]
    return out


def _compare(series: pd.Series, op: str, raw: str) -> pd.Series:
    value: object = raw.strip("'\"")
    if raw[0] not in "'\"":
        try:
            value = float(raw)
            series = pd.to_numeric(series, errors="coerce")
        except ValueError:
            pass
    ops = {"=": series.eq, "!=": series.ne, "<": series.lt, "<=": series.le, ">": series.gt,
           ">=": series.ge}
    return ops[op](value).fillna(False).astype(bool)


def format_runs(runs: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return runs.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return runs.to_json(orient="records", indent=1)
    if runs.empty:
        return "(no runs match)"
    return runs.to_string(index=False, float_format=lambda v: f"{v:.4f}")
