"""OUTPUT/grid.json: a grid's identity (name, fingerprint), its stages' states, the tracking store
it logs to and how often a driver ran it. Written atomically; read by every command."""

from __future__ import annotations

import json
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlparse

from apgrid.grid.errors import GridError

STAGES = ("checkpoints", "dense", "prune", "evaluate", "analyze")
ARTIFACTS = "mlartifacts"  # the folder's own SQLite store keeps its runs' artifacts here
# MLflow's columns that hold an absolute artifact URI (logged_models: MLflow 3)
ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
)


def state_path(output: Path) -> Path:
    return Path(output) / "grid.json"


def read_state(output: Path) -> dict:
    path = state_path(output)
    if not path.is_file():
        raise GridError(f"output: {output} holds no apgrid grid (no grid.json)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GridError(f"output: {path} is not a grid state (unreadable JSON)") from None


def write_state(output: Path, state: dict) -> None:
    from apgrid.grid.store import atomic_write_json  # here: the store imports torch; readers need not

    atomic_write_json(state_path(output), state)


def tracking_uri(output: Path, state: dict) -> str | None:
    """The grid's MLflow store: the URI it was launched with, or, for the default store, the
    SQLite file inside the folder as it is now (a copied or moved folder queries its own store).
    None when the grid has no store yet."""
    uri = state.get("tracking_uri")
    own = Path(output) / "mlflow.db"
    # older grids recorded the default store by its absolute path
    default = uri is None or (uri.startswith("sqlite:///") and uri.endswith("/mlflow.db") and own.is_file())
    if not default:
        return uri
    if not own.is_file():
        return None
    follow_folder(output)
    return f"sqlite:///{own}"


def follow_folder(output: Path) -> None:
    """Point the folder's own MLflow store at the folder where it is now. MLflow records artifact
    locations as absolute URIs: in a moved folder they would name a place that is gone (artifacts
    list as [] and fail to download), in a copy the original (a resumed copy would log into it).
    Samples tags written as absolute paths by older grids become relative to the folder. A store
    that cannot be written (a read-only copy) is left as it is: its runs still read."""
    db = Path(output) / "mlflow.db"
    if not db.is_file():  # connecting would create it
        return
    here = (Path(output) / ARTIFACTS).resolve().as_uri()
    try:
        with closing(sqlite3.connect(db, timeout=30)) as con, con:
            found = con.execute("SELECT artifact_location FROM experiments").fetchall()
            moved = [old for (old,) in found if old.endswith(f"/{ARTIFACTS}") and old != here]
            for old in moved:
                _repoint(con, old, here)
    except sqlite3.Error:
        return
    if moved and "apgrid.grid.tracking" in sys.modules:  # this process may hold the old locations
        sys.modules["apgrid.grid.tracking"].forget_artifact_locations()


def _repoint(con: sqlite3.Connection, old: str, new: str) -> None:
    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table, column in ARTIFACT_COLUMNS:
        if table in tables:
            con.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                (new, len(old) + 1, old, len(old) + 1, f"{old}/"),
            )
    folder = unquote(urlparse(old).path).removesuffix(ARTIFACTS)  # ends with "/"
    con.execute(
        "UPDATE tags SET value = substr(value, ?) WHERE key = 'samples_uri' AND substr(value, 1, ?) = ?",
        (len(folder) + 1, len(folder), folder),
    )


def set_stage(output: Path, stage: str, status: str) -> None:
    state = read_state(output)
    state.setdefault("stages", {})[stage] = status
    write_state(output, state)
