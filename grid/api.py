"""The Python API behind `apgrid.open`, `apgrid.launch` and `apgrid.evaluate`: a grid's results as
DataFrames, its models as modules, and the grid's evaluation of any model."""

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
    def model_store(self):
        """The grid's models (apgrid.grid.store.ModelStore); on object storage, fetched into the
        working folder as they are read."""
        from apgrid.grid.objectstore import ObjectResults
        from apgrid.grid.store import ModelStore

        return ModelStore(self.output, ObjectResults(self.uri, self.name) if self.uri else None)

    def load_model(self, model_id: str, device: str = "cpu"):
        """The model `model_id` as the grid stored it: a torch.nn.Module with its masks applied
        (pruned weights stay zero), in eval mode, on `device`."""
        from apgrid.trainables.data import DATASETS

        store = self.model_store
        if not store.exists(model_id):
            raise GridError(unknown_model(model_id, store, self.output))
        info = DATASETS[self.spec.dataset.name]
        model = store.load_model(model_id, info.image_shape, info.num_classes)
        return model.to(device).eval()

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


def unknown_model(model_id: str, store, output: Path) -> str:
    """One line for an id the grid does not hold: the closest ids it does (else a few of them)."""
    import difflib

    ids = store.ids()
    if not ids:
        return f"load_model: {output} holds no trained model yet"
    close = difflib.get_close_matches(str(model_id), ids, n=3, cutoff=0.3) or ids[:3]
    more = f" (of {len(ids)})" if len(ids) > len(close) else ""
    return f"load_model: no model {model_id!r} in {output}; closest ids{more}: {', '.join(close)}"


def evaluate(
    model,
    dataset: str = "cifar10",
    threat_model=None,
    *,
    root: str | None = None,
    download: bool = False,
    num_samples: int | None = None,
    device: str = "auto",
    batch_size: int | str = "auto",
    name: str = "model",
    arch: str | None = None,
    signed_fmn: bool = True,
    **evaluation,
) -> pd.DataFrame:
    """The grid's evaluation of any model (see apgrid.evaluate): one row per test sample, the
    columns and types of the grid's Parquet rows."""
    import torch

    from apgrid.trainables.data import load_dataset
    from apgrid.trainables.evaluation import evaluate_model
    from apgrid.trainables.fields import choice
    from apgrid.trainables.masks import measured_sparsity
    from apgrid.trainables.models import resolve_device

    if not isinstance(model, torch.nn.Module):
        raise GridError(f"model: must be a torch.nn.Module, got {type(model).__name__}")
    evaluation = {**evaluation, "num_samples": num_samples, "batch_size": batch_size}
    data, threat, settings = evaluation_inputs(dataset, threat_model, root, download, evaluation)
    ds = load_dataset(data.name, data.root, data.download)
    n = settings.num_samples or len(ds.y_test)
    if n > len(ds.y_test):
        raise GridError(f"num_samples: {n} is above {data.name}'s {len(ds.y_test)} test samples")
    run_on = resolve_device(choice(device, "device", ("auto", "cpu", "cuda")))
    x, y = ds.x_test[:n], ds.y_test[:n]
    with evaluation_mode(model, run_on):
        check_model_fits(model, x, ds.num_classes, run_on, data.name)
        rows = evaluate_model(model, x, y, threat, settings, signed_fmn, run_on)
        sparsity = measured_sparsity(model)
    identity = {
        "grid": None,
        "model_id": name,
        "dense_model_id": None,
        "role": "dense" if signed_fmn else "pruned",
        "dataset": data.name,
        "arch": arch or type(model).__name__,
        "method": None,
        "sparsity": sparsity,
        "sparsity_measured": sparsity,
        "seed": None,
    }
    return as_sample_rows(rows.assign(**identity))


def evaluation_inputs(dataset, threat_model, root, download, evaluation: dict):
    """The dataset, threat model and evaluation settings, checked by the spec's own parsers so
    that a bad value gets the spec's one line."""
    from apgrid.grid.spec import _dataset, _evaluation, _threat

    data = _dataset({"name": dataset, "root": root, "download": download})
    if threat_model is None:  # the dataset's usual budget
        threat_model = {"norm": "Linf", "eps": 0.1 if data.name == "digits" else "8/255"}
    elif isinstance(threat_model, str):
        norm, sep, eps = threat_model.partition(":")
        if not sep:
            raise GridError(
                f"threat_model: {threat_model!r} is not NORM:EPS, like Linf:8/255; "
                f"norms: Linf, L2 (or a mapping {{norm, eps}})"
            )
        threat_model = {"norm": norm.strip(), "eps": decimal_or_text(eps.strip())}
    threat = _threat(threat_model)
    settings = _evaluation({k: v for k, v in evaluation.items() if v is not None}).settings
    return data, threat, settings


def decimal_or_text(text: str):
    """0.1 as a number; a fraction like 8/255 stays text for the spec's parser to read."""
    try:
        return float(text)
    except ValueError:
        return text


def check_model_fits(model, x, num_classes: int, device, dataset: str) -> None:
    """One sample through the model: it must take the dataset's images and give its classes."""
    import torch

    from apgrid.errors import short_reason

    shape = "x".join(map(str, x.shape[1:]))
    try:
        with torch.inference_mode():
            logits = model(x[:1].to(device))
    except Exception as exc:  # a shape mismatch, a dtype, ...: whatever the model raises
        raise GridError(f"model: does not take {dataset}'s {shape} images ({short_reason(exc)})") from None
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise GridError(
            f"model: gives outputs of shape {tuple(logits.shape)} on one image; "
            f"{dataset} needs (1, {num_classes}) logits"
        )


class evaluation_mode:
    """The model in eval mode on `device` for the evaluation, then back as it was."""

    def __init__(self, model, device):
        self.model, self.device = model, device

    def __enter__(self):
        first = next(self.model.parameters(), None)
        self.was = (self.model.training, first.device if first is not None else None)
        self.model.to(self.device).eval()

    def __exit__(self, *exc):
        training, device = self.was
        if device is not None:
            self.model.to(device)
        self.model.train(training)


def as_sample_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with the grid's Parquet columns, in its order and types (SAMPLE_SCHEMA), as
    `Grid.samples()` reads them."""
    import pyarrow as pa

    from apgrid.grid.store import PARTITION_COLUMNS, SAMPLE_SCHEMA

    keys = rows[list(PARTITION_COLUMNS)].reset_index(drop=True)
    table = pa.Table.from_pandas(rows[SAMPLE_SCHEMA.names], schema=SAMPLE_SCHEMA, preserve_index=False)
    return pd.concat([keys, table.to_pandas()], axis=1)
