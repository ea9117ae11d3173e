"""The Python API behind `apgrid.open` and `apgrid.launch`: a grid's results as DataFrames."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from apgrid.grid.errors import GridError
from apgrid.trainables.fields import remote_output


class Grid:
    """A grid's output folder, read: per-sample rows, models, MLflow runs, report tables."""

    def __init__(self, output: str | Path):
        from apgrid.grid.objectstore import grid_folder
        from apgrid.grid.state import read_state

        self.output = grid_folder(output)  # for an s3:// URI, its local working folder
        self.uri = str(output) if remote_output(output) else None
        self.state = read_state(self.output)
        self.name = self.state["name"]

    def __repr__(self) -> str:
        done = [s for s, status in self.state.get("stages", {}).items() if status == "done"]
        return f"Grid({self.name!r}, {str(self.output)!r}, done: {', '.join(done) or 'nothing'})"

    @property
    def spec(self):
        """The validated spec the grid was launched with (apgrid.grid.spec.GridSpec)."""
        from apgrid.grid.runner import load_grid_spec

        return load_grid_spec(self.uri or self.output)

    def samples(self, **where) -> pd.DataFrame:
        """One row per (model, test sample); keyword filters keep rows whose column equals the
        value, or is one of a list of values: g.samples(method=["hydra", "lamp"], sparsity=0.9)."""
        from apgrid.grid.objectstore import ObjectResults
        from apgrid.grid.store import read_samples

        rows = ObjectResults(self.uri, self.name).read_samples() if self.uri else read_samples(self.output)
        for column, value in where.items():
            if column not in rows.columns:
                raise GridError(f"samples: no column '{column}'; columns: {', '.join(rows.columns)}")
            values = value if isinstance(value, (list, tuple, set)) else [value]
            rows = rows[rows[column].isin(values)]
        return rows.reset_index(drop=True)

    def models(self) -> pd.DataFrame:
        """One row per evaluated model: identity, taxonomy-free summary metrics (clean_acc,
        pgd_acc, aa_acc, fmn_acc_at_eps, ...), as the report's `models` table."""
        from apgrid.analysis.tables import model_table

        samples = self._samples()  # one model's rows at a time
        return model_table(samples) if samples.model_ids else pd.DataFrame()

    def _samples(self):
        from apgrid.grid.objectstore import ObjectResults
        from apgrid.grid.store import open_samples

        return ObjectResults(self.uri, self.name).open_samples() if self.uri else open_samples(self.output)

    def runs(self, where: str = "") -> pd.DataFrame:
        """The grid's MLflow model runs matching an MLflow filter (apgrid query's syntax)."""
        from apgrid.grid.query import search_model_runs
        from apgrid.grid.state import tracking_uri

        uri = tracking_uri(self.output, self.state)
        if uri is None:
            raise GridError(f"runs: {self.output} has no MLflow runs yet")
        return search_model_runs(uri, self.name, where)

    def table(self, name: str) -> pd.DataFrame:
        """A report table, one of apgrid.analysis.names.TABLES; run `apgrid analyze` (or the
        grid's analyze stage) first."""
        from apgrid.grid.query import read_table

        return read_table(self.output, name)

    @property
    def report(self) -> Path:
        return self.output / "report" / "index.html"


def launch(spec=None, output=None, until: str | None = None, log=print) -> Grid:
    """Validate and run a grid (see apgrid.launch)."""
    from apgrid.grid.runner import launch as run
    from apgrid.grid.spec import load_spec, parse_spec

    if isinstance(spec, dict):
        parsed = parse_spec({**spec, **({"output": str(output)} if output else {})})
    else:
        parsed = load_spec(spec, output=None if output is None else str(output))
    return Grid(run(parsed, log=log, until=until))
