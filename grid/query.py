"""`apgrid query`: MLflow's own filter syntax over a grid's runs, filtered by the tracking server.

    tags.method = 'hydra' and metrics.aa_acc > 0.5          MLflow's syntax, passed through
    method = 'hydra' and sparsity >= 0.9 and aa_acc > 0.5   apgrid's short names as aliases
    method IN ('hydra', 'lwm-global') or arch LIKE 'resnet%'

MLflow's search takes `and` only, compares tags and params as text (=, !=, LIKE, ILIKE) and
metrics as numbers. What it cannot express is done correctly here, never answered with an empty
table: `or` runs each side on the server and unites the runs; `IN` / `NOT IN` over tags and params
become `or` / `and` of equalities; parentheses group clauses (`(a or b) and c` runs as `a and c`,
`b and c`). Short names: a metric apgrid logs (aa_acc, clean_acc, sparsity, ...) reads
`metrics.NAME`, a run attribute (status, run_name, ...) `attributes.NAME`, any other apgrid tag
`tags.NAME`; an unknown short name is refused, and the prefixed forms reach anything MLflow holds.
`--table` filters a report CSV with the same syntax.
"""

from __future__ import annotations

import operator
import re
import sqlite3
from dataclasses import dataclass
from difflib import get_close_matches

import pandas as pd

from apgrid.errors import ApgridError, short_reason
from apgrid.grid.errors import GridError
from apgrid.grid.runlist import StoredRun, sqlite_store, stored_model_runs

DEFAULT_COLUMNS = [
    "stage",
    "model_id",
    "method",
    "arch",
    "sparsity",
    "seed",
    "status",
    "attempt",
    "clean_acc",
    "pgd_acc",
    "aa_acc",
    "fmn_acc_at_eps",
    "measured_sparsity",
]
# Short names apgrid writes: tags on every model run, metrics of the stages, run attributes.
TAG_NAMES = (
    "stage",
    "model_id",
    "dense_model_id",
    "role",
    "method",
    "arch",
    "dataset",
    "seed",
    "config_hash",
    "pipeline",
    "structured",
    "scope",
    "criterion",
    "attempt",
    "level",
    "grid",
    "ray_trial_id",
    "samples_uri",
    "logged_by",
    "ended_by",
)
METRIC_NAMES = (
    "sparsity",
    "clean_acc",
    "pgd_acc",
    "aa_acc",
    "pgd_acc_on_aa_samples",
    "aa_samples",
    "fmn_acc_at_eps",
    "fmn_found_rate",
    "num_samples",
    "measured_sparsity",
    "test_clean_acc",
    "train_loss",
    "train_adv_acc",
    "epoch",
    "parameters",
    "nonzero_parameters",
    "model_size_bits",
    "peak_rss_mb",
    "admm_residual",
)
ATTRIBUTE_NAMES = ("status", "run_name", "run_id", "start_time", "end_time", "user_id", "artifact_uri")
PREFIXES = (
    "tags.",
    "tag.",
    "metrics.",
    "metric.",
    "params.",
    "param.",
    "attributes.",
    "attribute.",
    "attr.",
    "run.",
    "datasets.",
    "dataset.",
)

TOKEN = re.compile(
    r"""\s*(?:
    (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<open>\() | (?P<close>\)) | (?P<comma>,)
  | (?P<name>(?:[A-Za-z_][\w]*\.)?(?:`[^`]+`|"[^"]+"|[A-Za-z_][\w.\-]*))
)""",
    re.VERBOSE,
)
WORDS = {"and", "or", "in", "not", "like", "ilike", "is", "null"}


class QueryError(ApgridError, ValueError):
    pass


@dataclass(frozen=True)
class Clause:
    name: str  # as written: a short name or a prefixed MLflow key
    op: str  # = != < <= > >= LIKE ILIKE IN NOT IN IS NULL IS NOT NULL
    values: tuple = ()  # the literal(s): str or float

    def mlflow(self, name: str) -> str:
        if self.op in ("IS NULL", "IS NOT NULL"):
            return f"{name} {self.op}"
        if self.op in ("IN", "NOT IN"):
            return f"{name} {self.op} ({', '.join(_literal(v) for v in self.values)})"
        return f"{name} {self.op} {_literal(self.values[0])}"


def _literal(value) -> str:
    return repr(value) if isinstance(value, float) else "'" + value.replace("'", "''") + "'"


def tokenize(where: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(where.rstrip()):
        m = TOKEN.match(where, pos)
        if not m:
            raise QueryError(
                f"--where: cannot read {where[pos : pos + 20].strip()!r}; expected "
                f"NAME OP VALUE clauses joined by and / or"
            )
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "name" and text.lower() in WORDS:
            kind, text = "word", text.lower()
        tokens.append((kind, text))
        pos = m.end()
    return tokens


MAX_CONJUNCTIONS = 64  # each runs as one MLflow search: (a or b) and (c or d) and ... multiplies


def parse_where(where: str) -> list[list[Clause]]:
    """The filter as a disjunction of conjunctions: [[clause and clause] or [clause] ...];
    parentheses group clauses, and `and` binds tighter than `or`, as in SQL."""
    tokens = tokenize(where)
    if not tokens:
        return []
    groups, i = _disjunction(tokens, 0)
    if i < len(tokens):
        kind, text = tokens[i]
        if kind == "close":
            raise QueryError("--where: a ')' closes no '('")
        raise QueryError(f"--where: expected 'and' or 'or' before {text!r}")
    if len(groups) > MAX_CONJUNCTIONS:
        raise QueryError(
            f"--where: the filter expands to {len(groups)} MLflow searches (at most {MAX_CONJUNCTIONS}); "
            f"use IN lists in place of or-groups"
        )
    return groups


def _word(tokens, i, word: str) -> bool:
    return i < len(tokens) and tokens[i] == ("word", word)


def _disjunction(tokens, i) -> tuple[list[list[Clause]], int]:
    groups, i = _conjunction(tokens, i)
    while _word(tokens, i, "or"):
        more, i = _conjunction(tokens, _not_at_end(tokens, i + 1))
        groups = groups + more
    return groups, i


def _conjunction(tokens, i) -> tuple[list[list[Clause]], int]:
    groups, i = _factor(tokens, i)
    while _word(tokens, i, "and"):
        more, i = _factor(tokens, _not_at_end(tokens, i + 1))
        groups = [a + b for a in groups for b in more]  # (a or b) and c = (a and c) or (b and c)
    return groups, i


def _factor(tokens, i) -> tuple[list[list[Clause]], int]:
    if i < len(tokens) and tokens[i][0] == "open":
        groups, i = _disjunction(tokens, _not_at_end(tokens, i + 1))
        if i >= len(tokens) or tokens[i][0] != "close":
            raise QueryError("--where: a '(' is not closed")
        return groups, i + 1
    clause, i = _clause(tokens, i)
    return [[clause]], i


def _not_at_end(tokens, i) -> int:
    if i >= len(tokens):
        raise QueryError("--where: the filter ends with 'and' / 'or' / '('")
    return i


def _clause(tokens, i) -> tuple[Clause, int]:
    def at(j):
        return tokens[j] if j < len(tokens) else ("end", "")

    kind, name = at(i)
    if kind != "name":
        raise QueryError(f"--where: expected a field name, got {name or 'the end'!r}")
    kind, text = at(i + 1)
    if kind == "op":
        if text == "=" and at(i + 2) == ("op", "="):
            raise QueryError(f"--where: use = to compare (MLflow's filter syntax has no ==): {name} = ...")
        value = _value(at(i + 2))
        return Clause(name, "!=" if text == "<>" else text, (value,)), i + 3
    words = []
    j = i + 1
    while at(j)[0] == "word" and at(j)[1] in ("not", "in", "like", "ilike", "is", "null"):
        words.append(at(j)[1])
        j += 1
    op = " ".join(words).upper()
    if op in ("IS NULL", "IS NOT NULL"):
        return Clause(name, op), j
    if op in ("LIKE", "ILIKE"):
        value = _value(at(j))
        if not isinstance(value, str):
            raise QueryError(f"--where: {op} needs a quoted pattern, e.g. {name} {op} 'res%'")
        return Clause(name, op, (value,)), j + 1
    if op in ("IN", "NOT IN"):
        if at(j)[0] != "open":
            raise QueryError(f"--where: {op} needs a list in parentheses, e.g. {name} {op} ('a', 'b')")
        values, j = [], j + 1
        while True:
            values.append(_value(at(j)))
            kind = at(j + 1)[0]
            j += 2
            if kind == "close":
                return Clause(name, op, tuple(values)), j
            if kind != "comma":
                raise QueryError(f"--where: the {op} list of {name} is not closed")
    raise QueryError(
        f"--where: expected an operator after {name} (= != < <= > >= LIKE ILIKE IN NOT IN IS NULL)"
    )


def _value(token):
    kind, text = token
    if kind == "string":
        return text[1:-1].replace(text[0] * 2, text[0])
    if kind == "number":
        return float(text)
    raise QueryError(f"--where: expected a value (a number or a quoted text), got {text or 'the end'!r}")


# -- MLflow -----------------------------------------------------------------------------------------


def mlflow_name(clause: Clause) -> str:
    """The MLflow key of a clause's field: prefixed names as written, short names resolved."""
    name = clause.name
    if name.lower().startswith(PREFIXES):
        return name
    if name in METRIC_NAMES:
        return f"metrics.{name}"
    if name in ATTRIBUTE_NAMES:
        return f"attributes.{name}"
    if name in TAG_NAMES:
        return f"tags.{name}"
    raise QueryError(
        f"--where: unknown field '{name}'; short names: "
        f"{', '.join(sorted(TAG_NAMES + METRIC_NAMES + ATTRIBUTE_NAMES))} (or MLflow's "
        f"own: tags.NAME, metrics.NAME, params.NAME, attributes.NAME)"
    )


def mlflow_filters(groups: list[list[Clause]]) -> list[str]:
    """One MLflow filter string per conjunction; IN over tags and params (which MLflow's search
    does not take) becomes one conjunction per value, NOT IN an `and` of inequalities."""
    filters = []
    for group in groups or [[]]:
        expanded = [[]]
        for clause in group:
            name = mlflow_name(clause)
            native_in = name.lower().startswith(
                ("attributes.", "attribute.", "attr.", "run.", "datasets.", "dataset.")
            )
            if clause.op == "IN" and not native_in:
                expanded = [
                    parts + [Clause(clause.name, "=", (v,)).mlflow(name)]
                    for parts in expanded
                    for v in clause.values
                ]
            elif clause.op == "NOT IN" and not native_in:
                expanded = [
                    parts + [Clause(clause.name, "!=", (v,)).mlflow(name) for v in clause.values]
                    for parts in expanded
                ]
            else:
                expanded = [parts + [clause.mlflow(name)] for parts in expanded]
        filters += [" and ".join(["tags.level = 'model'", *parts]) for parts in expanded]
    return filters


def query_runs(uri: str, experiment: str | None, where: str, columns: str | None) -> pd.DataFrame:
    """The grid's model runs that match `where`, filtered by the tracking server, page by page,
    with the named columns (default: DEFAULT_COLUMNS). A column the matched runs lack (a metric
    of another stage, a tag no run has yet) is shown empty; a name no run could hold is refused."""
    flat = search_model_runs(uri, experiment, where)
    if not columns:
        return _columns(flat, None, [c for c in DEFAULT_COLUMNS if c in flat.columns])
    written = [c.strip() for c in columns.split(",")]
    for name in written:
        if _bare(name) not in flat.columns and not _run_field(name):
            raise QueryError(_unknown_column(name, [*flat.columns, *SHORT_NAMES]))
    return flat.reindex(columns=[_bare(c) for c in written]).reset_index(drop=True)


SHORT_NAMES = TAG_NAMES + METRIC_NAMES + ATTRIBUTE_NAMES
# MLflow keys that hold numbers written as text: one type in runs(), models() and JSON
INTEGER_TAGS = ("seed", "attempt")


def _bare(name: str) -> str:
    """The flat column of a name: `tags.method` -> `method`, `params.lr` -> `lr`."""
    if name.lower().startswith(PREFIXES):
        name = name.split(".", 1)[1]
    return name.strip('`"')


def _run_field(name: str) -> bool:
    """Whether some run could hold this column: one of apgrid's short names, an MLflow key
    named with its prefix (tags.NAME, params.NAME, ...), or a spec parameter (dotted)."""
    return name in SHORT_NAMES or "." in name


def _unknown_column(name: str, known) -> str:
    close = get_close_matches(name, sorted(set(map(str, known))), n=3)
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else f"; known: {', '.join(sorted(set(map(str, known))))}"
    )
    return f"--columns: unknown column '{name}'{hint}"


def search_model_runs(uri: str, experiment: str | None, where: str = "") -> pd.DataFrame:
    """Every column of the model runs matching `where`: run attributes (run_id, run_name, status,
    start_time, ...), tags, params and metrics by their names. A grid's own SQLite store is read
    directly when MLflow's search would answer the filter alike (importing MLflow and opening its
    store take seconds); a filter MLflow might refuse, and any other store, go to MLflow."""
    groups = parse_where(where)
    filters = mlflow_filters(groups)  # unknown names refused here, whichever reader answers
    path = sqlite_store(uri)
    if path is not None and all(_local_key(c) for group in groups for c in group):
        try:
            runs = stored_model_runs(path, experiment)
        except sqlite3.Error:  # not laid out as this MLflow's schema: MLflow reads it
            runs = False
        if runs is None:
            raise QueryError(f"--experiment: no experiment '{experiment}' at {uri}")
        if runs is not False:
            return _table([r for r in runs if any(all(_holds(r, c) for c in g) for g in groups or [[]])])
    return _table(_mlflow_search(uri, experiment, filters))


def _mlflow_search(uri: str, experiment: str | None, filters: list[str]) -> list[StoredRun]:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(uri)
    try:
        if experiment:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise QueryError(f"--experiment: no experiment '{experiment}' at {uri}")
            ids = [found.experiment_id]
        else:
            ids = [e.experiment_id for e in client.search_experiments()]
        runs = {}
        for text in filters:
            token = None
            while True:
                page = client.search_runs(ids, filter_string=text, max_results=1000, page_token=token)
                runs.update((run.info.run_id, run) for run in page)
                token = page.token
                if not token:
                    break
    except MlflowException as exc:
        if exc.error_code == "INVALID_PARAMETER_VALUE":  # the filter, not the server
            raise QueryError(f"--where: MLflow refused it ({short_reason(exc)})") from None
        raise GridError(f"tracking_uri: {uri} cannot be queried ({short_reason(exc)})") from None
    except QueryError:
        raise
    except Exception as exc:
        raise GridError(f"tracking_uri: {uri} cannot be queried ({short_reason(exc)})") from None
    return [
        StoredRun(
            {name: getattr(run.info, name, None) for name in ATTRIBUTE_NAMES},
            run.data.tags,
            run.data.params,
            run.data.metrics,
        )
        for run in sorted(runs.values(), key=lambda r: r.info.start_time)
    ]


COMPARE = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
NUMBER_OPS = tuple(COMPARE)
TEXT_OPS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN")
KINDS = {
    "tag": "tags",
    "param": "params",
    "metric": "metrics",
    "attribute": "attributes",
    "attr": "attributes",
}


def _local_key(clause: Clause) -> tuple[str, str] | None:
    """(kind, key) of a clause that is answered here exactly as MLflow's search answers it:
    numbers compared with metrics and times, text with tags, params and text attributes. None
    for the rest (IS NULL, datasets, a type MLflow refuses), which MLflow answers or refuses."""
    kind, key = mlflow_name(clause).split(".", 1)
    kind, key = KINDS.get(kind.lower().rstrip("s"), kind.lower()), key.strip('`"')
    numbers = all(isinstance(v, float) for v in clause.values)
    texts = all(isinstance(v, str) for v in clause.values)
    if kind == "metrics" or (kind == "attributes" and key in ("start_time", "end_time")):
        return (kind, key) if numbers and clause.op in NUMBER_OPS else None
    if kind in ("tags", "params") or (kind == "attributes" and key in ATTRIBUTE_NAMES):
        return (kind, key) if texts and clause.op in TEXT_OPS else None
    return None


def _holds(run: StoredRun, clause: Clause) -> bool:
    kind, key = _local_key(clause)
    value = getattr(run, kind).get(key)
    if value is None or value != value:  # absent (or NaN): no comparison holds, as in SQL
        return False
    op, values = clause.op, clause.values
    if op in ("IN", "NOT IN"):
        return (value in values) == (op == "IN")
    if op in ("LIKE", "ILIKE"):
        return re.fullmatch(like_pattern(values[0]), value, re.S | (re.I if op == "ILIKE" else 0)) is not None
    return COMPARE[op](value, values[0])


def like_pattern(pattern: str) -> str:
    """SQL's LIKE pattern as a regular expression: % any run of characters, _ one."""
    return "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)


def _table(runs: list[StoredRun]) -> pd.DataFrame:
    """One row per run: attributes, then tags (MLflow's own left out), params and metrics."""
    rows = []
    for run in runs:
        row = {name: run.attributes.get(name) for name in ATTRIBUTE_NAMES}
        row.update({k: v for k, v in run.tags.items() if not k.startswith("mlflow.")})
        row.update(run.params)
        row.update(run.metrics)
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else DEFAULT_COLUMNS)
    for name in INTEGER_TAGS:
        if name in table.columns:
            table[name] = pd.to_numeric(table[name], errors="coerce").astype("Int64")
    return table


# -- report tables ----------------------------------------------------------------------------------


def read_table(output, name: str, where: str = "", columns: str | None = None) -> pd.DataFrame:
    """An analysis table from OUTPUT/report, filtered with the same syntax."""
    path = output / "report" / f"{name}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in (output / "report").glob("*.csv"))
        raise QueryError(
            f"--table: {name} not in {output / 'report'}; "
            + (f"known: {', '.join(known)}" if known else "run `apgrid analyze` first")
        )
    table = pd.read_csv(path)
    groups = parse_where(where)
    if groups:
        keep = pd.Series(False, index=table.index)
        for group in groups:
            match = pd.Series(True, index=table.index)
            for clause in group:
                match &= _matches(table, clause)
            keep |= match
        table = table[keep]
    return _columns(table, columns, list(table.columns))


def _matches(table: pd.DataFrame, clause: Clause) -> pd.Series:
    name = clause.name.split(".", 1)[1] if clause.name.lower().startswith(PREFIXES) else clause.name
    name = name.strip('`"')
    if name not in table.columns:
        raise QueryError(f"--where: unknown field '{clause.name}'; known: {', '.join(sorted(table.columns))}")
    column = table[name]
    numeric = clause.values and all(isinstance(v, float) for v in clause.values)
    if numeric:
        column = pd.to_numeric(column, errors="coerce")
    else:
        column = column.astype("string")
    op, values = clause.op, clause.values
    if op == "IS NULL":
        return column.isna()
    if op == "IS NOT NULL":
        return column.notna()
    if op in ("IN", "NOT IN"):
        hit = column.isin(values)
        return (hit if op == "IN" else ~hit).fillna(False).astype(bool)
    if op in ("LIKE", "ILIKE"):
        pattern = "^" + like_pattern(values[0]) + "$"
        return column.str.match(pattern, case=op == "LIKE").fillna(False).astype(bool)
    ops = {"=": column.eq, "!=": column.ne, "<": column.lt, "<=": column.le, ">": column.gt, ">=": column.ge}
    return ops[op](values[0]).fillna(False).astype(bool)


def _columns(table: pd.DataFrame, columns: str | None, default: list[str]) -> pd.DataFrame:
    cols = [_bare(c.strip()) for c in columns.split(",")] if columns else default
    for name in cols:
        if name not in table.columns:
            raise QueryError(_unknown_column(name, table.columns))
    return table[cols].reset_index(drop=True)


def format_runs(runs: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return runs.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return runs.to_json(orient="records", indent=1)
    if runs.empty:
        return "(no runs match)"
    return runs.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def resolve_model(selector: str, ids) -> str:
    """A model id from what a user types: the id itself, or a unique prefix or shell pattern
    (`hydra-sp95`, `dense-*seed1*`); an ambiguous or unmatched selector is refused, with the
    candidates."""
    import fnmatch

    ids = sorted(set(ids))
    if selector in ids:
        return selector
    found = [m for m in ids if m.startswith(selector) or fnmatch.fnmatchcase(m, selector)]
    if len(found) == 1:
        return found[0]
    if found:
        raise QueryError(f"model '{selector}' is ambiguous: it matches {', '.join(found)}")
    close = get_close_matches(selector, ids, n=3, cutoff=0.4)
    raise QueryError(
        f"no model '{selector}'; "
        + (f"did you mean {', '.join(close)}?" if close else f"models: {', '.join(ids)}")
    )
