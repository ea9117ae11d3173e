"""A grid's model runs read straight from the default SQLite store when the grid has one (no MLflow
import, which costs seconds), else through MLflow's client: as (stage, status, attempt, model id)
for `apgrid status`, and whole (attributes, tags, params, metrics) for `apgrid query`."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import NamedTuple


class ModelRun(NamedTuple):
    stage: str
    status: str
    attempt: int
    model_id: str | None


def model_runs(uri: str, experiment: str) -> list[ModelRun]:
    path = sqlite_store(uri)
    if path is not None:
        try:
            stored = stored_model_runs(path, experiment, kinds=("tags",)) or []
        except sqlite3.Error:  # a store MLflow laid out otherwise: ask MLflow
            pass
        else:
            return [
                ModelRun(
                    r.tags.get("stage", "?"),
                    r.attributes["status"],
                    int(r.tags.get("attempt") or 1),
                    r.tags.get("model_id"),
                )
                for r in stored
            ]
    return _from_mlflow(uri, experiment)


def _from_mlflow(uri: str, experiment: str) -> list[ModelRun]:
    from apgrid.grid.tracking import Tracker

    runs = Tracker(uri, experiment, create=False).runs("tags.level = 'model'")
    return [
        ModelRun(
            r.data.tags.get("stage", "?"),
            r.info.status,
            int(r.data.tags.get("attempt", "1")),
            r.data.tags.get("model_id"),
        )
        for r in runs
    ]


class StoredRun(NamedTuple):
    """One run as MLflow holds it: attributes, tags, params and latest metrics, each by name."""

    attributes: dict
    tags: dict
    params: dict
    metrics: dict


def sqlite_store(uri: str) -> Path | None:
    """The file of a `sqlite:///` store that exists, else None (a server, or no store yet)."""
    path = Path(uri.removeprefix("sqlite:///"))
    return path if uri.startswith("sqlite:///") and path.is_file() else None


def stored_model_runs(
    path: Path, experiment: str | None, kinds=("tags", "params", "metrics")
) -> list[StoredRun] | None:
    """The active model runs of `experiment` (every active experiment when None), oldest first,
    read from the SQLite file as MLflow's search would return them, with the `kinds` of values
    asked (status needs tags only); None when there is no such experiment. sqlite3.Error when
    the file is not laid out as MLflow's schema."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        if experiment is None:
            ids = [
                r[0]
                for r in db.execute("SELECT experiment_id FROM experiments WHERE lifecycle_stage = 'active'")
            ]
        else:
            ids = [
                r[0]
                for r in db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (experiment,))
            ]
            if not ids:
                return None
        marks = ",".join("?" * len(ids))
        runs = db.execute(
            "SELECT run_uuid, name, status, start_time, end_time, user_id, artifact_uri FROM runs "
            f"WHERE experiment_id IN ({marks}) AND lifecycle_stage = 'active' ORDER BY start_time",
            ids,
        ).fetchall()
        chosen = f"SELECT run_uuid FROM runs WHERE experiment_id IN ({marks}) AND lifecycle_stage = 'active'"
        values = {}
        for kind, sql in (
            ("tags", "SELECT run_uuid, key, value FROM tags"),
            ("params", "SELECT run_uuid, key, value FROM params"),
            (
                "metrics",
                "SELECT run_uuid, key, CASE WHEN is_nan THEN 'NaN' ELSE value END FROM latest_metrics",
            ),
        ):
            if kind not in kinds:
                continue
            for run, key, value in db.execute(f"{sql} WHERE run_uuid IN ({chosen})", ids):
                values.setdefault((kind, run), {})[key] = float(value) if kind == "metrics" else value
    finally:
        db.close()
    found = []
    for run_id, name, status, start, end, user, artifacts in runs:
        tags = values.get(("tags", run_id), {})
        if tags.get("level") != "model":
            continue
        attributes = {
            "status": status,
            "run_name": name,
            "run_id": run_id,
            "start_time": start,
            "end_time": end,
            "user_id": user,
            "artifact_uri": artifacts,
        }
        found.append(
            StoredRun(
                attributes, tags, values.get(("params", run_id), {}), values.get(("metrics", run_id), {})
            )
        )
    return found
