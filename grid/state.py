"""OUTPUT/grid.json: a grid's identity (name, fingerprint), its stages' states, the tracking store
it logs to and how often a driver ran it. Written atomically; read by every command."""

from __future__ import annotations

import json
from pathlib import Path

from apgrid.grid.errors import GridError

STAGES = ("checkpoints", "dense", "prune", "evaluate", "analyze")


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
    return f"sqlite:///{own}" if own.is_file() else None


def set_stage(output: Path, stage: str, status: str) -> None:
    state = read_state(output)
    state.setdefault("stages", {})[stage] = status
    write_state(output, state)
