"""A grid's model runs as (stage, status, attempt, model id), for `apgrid status`: read straight
from the default SQLite store when the grid has one (no MLflow import, which costs seconds), else
through MLflow's client."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import NamedTuple

MODEL_RUNS = """
SELECT r.status,
       (SELECT value FROM tags WHERE run_uuid = r.run_uuid AND key = 'stage'),
       (SELECT value FROM tags WHERE run_uuid = r.run_uuid AND key = 'attempt'),
       (SELECT value FROM tags WHERE run_uuid = r.run_uuid AND key = 'model_id')
FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
WHERE e.name = ? AND r.lifecycle_stage = 'active'
  AND EXISTS (SELECT 1 FROM tags WHERE run_uuid = r.run_uuid AND key = 'level' AND value = 'model')
ORDER BY r.start_time
"""


class ModelRun(NamedTuple):
    stage: str
    status: str
    attempt: int
    model_id: str | None


def model_runs(uri: str, experiment: str) -> list[ModelRun]:
    path = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and Path(path).is_file():
        try:
            return _from_sqlite(Path(path), experiment)
        except sqlite3.Error:  # a store MLflow laid out otherwise: ask MLflow
            pass
    return _from_mlflow(uri, experiment)


def _from_sqlite(path: Path, experiment: str) -> list[ModelRun]:
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute(MODEL_RUNS, (experiment,)).fetchall()
    finally:
        db.close()
    return [
        ModelRun(stage or "?", status, int(attempt or 1), model_id)
        for status, stage, attempt, model_id in rows
    ]


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
