"""MLflow tracking, all of it from the driver process.

Experiment = grid name; one grid run; one run per (model, stage) nested under it. Trials never talk
to MLflow themselves: a Tune callback on the driver opens, fills and closes their runs, so concurrent
trials cannot race on the SQLite schema and a crashed attempt is always closed as FAILED. Runs left
RUNNING by a killed driver are closed as KILLED when the grid resumes.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from apgrid.errors import ApgridError, short_reason
from apgrid.grid.plan import ModelPlan
from apgrid.grid.progress import DriverCallback
from apgrid.trainables.methods import PRUNING_METHODS

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# MLflow prints a run's URL when it ends on a server: one line per model would bury apgrid's progress
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


PAGE_SIZE = 1000  # runs per search call; every search pages until the store has no more
PARAMS_PER_CALL = 100  # MLflow's limit on the params of one log_batch
MODEL_FOLDER = "model"  # a trained model's run artifact: mlflow.pytorch.load_model("runs:/<id>/model")
DATASET_CONTEXT = {"dense": "training", "prune": "training", "evaluate": "evaluation"}


class TrackingError(ApgridError, RuntimeError):
    """The tracking server or store cannot be reached or written."""


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def forget_artifact_locations() -> None:
    """MLflow caches each run's artifact location by run id alone, for the whole process. A copied
    grid's runs have the original's ids: without this, a process that touched one folder would log
    the other's artifacts into it (apgrid.launch or resume of a copy, in one Python session)."""
    from mlflow.tracking._tracking_service import utils

    getattr(utils, "_artifact_repos_cache", {}).clear()


def check_reachable(uri: str) -> None:
    """Fail fast, before anything starts, when the tracking URI cannot be used."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        if folder.exists() and not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking_uri: {folder} is not writable")
        return  # created on first use, in the output folder
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingError(f"tracking_uri: {uri} is unreachable ({short_reason(exc)})") from None


def model_tags(plan: ModelPlan, dataset: str, stage: str) -> dict[str, str]:
    tags = {
        "stage": stage,
        "model_id": plan.model_id,
        "dense_model_id": plan.dense_model_id,
        "role": plan.role,
        "method": plan.method,
        "arch": plan.arch,
        "dataset": dataset,
        "sparsity": str(plan.sparsity),
        "seed": str(plan.seed),
        "config_hash": plan.config_hash,
    }
    if plan.role == "pruned" and plan.method in PRUNING_METHODS:  # not for user checkpoints
        m = PRUNING_METHODS[plan.method]
        tags.update({key: str(value) for key, value in m.taxonomy.items()})
        # MLflow tag values hold 5,000 characters in its SQL stores
        tags["authors_deviations"] = str(len(plan.deviations))
        tags["deviations"] = "; ".join(plan.deviations)[:5000]
    return tags


def clean_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key.replace("/", "_")] = float(value)
    return out


class Tracker:
    def __init__(self, uri: str, grid_name: str, artifact_root: Path | None = None, create: bool = True):
        """`artifact_root`: where a new experiment keeps its artifacts. Without it a SQLite store
        would put them in ./mlruns of whatever folder apgrid was started from. `create=False`
        (readers: status) never creates the experiment; a missing one raises TrackingError."""
        self.uri = uri
        self.client = _client(uri)
        forget_artifact_locations()
        self.source = source_tags()
        self.grid_params: dict[str, str] = {}  # set by the runner: grid_params(spec...)
        self.datasets: dict = {}  # context -> mlflow Dataset, set by the runner: datasets(spec)
        self.grid_name = grid_name
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        try:
            exp = self.client.get_experiment_by_name(grid_name)
            if exp is None and not create:
                raise TrackingError(f"tracking_uri: {uri} has no experiment '{grid_name}'")
            self.experiment_id = (
                exp.experiment_id
                if exp is not None
                else self.client.create_experiment(grid_name, artifact_location=location)
            )
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(f"tracking_uri: {uri} cannot be used ({short_reason(exc)})") from None

    def grid_run(self, fingerprint: str, params: dict[str, str] | None = None) -> str:
        """The grid's parent run, created once and found again on resume. `params` (the spec's
        identity, which a resume cannot change) are logged once, also on a grid that predates them."""
        found = self.client.search_runs(
            [self.experiment_id], filter_string="tags.level = 'grid'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            if params and not found[0].data.params:
                self.log_params(run_id, params)
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"grid-{self.grid_name}",
            tags={"level": "grid", "grid": self.grid_name, "fingerprint": fingerprint, **self.source},
        )
        self.log_params(run.info.run_id, params or {})
        return run.info.run_id

    def runs(self, filter_string: str) -> list:
        """Every run of the grid's experiment matching an MLflow filter, page by page (a store
        answers at most a page of runs per call; a large grid has more)."""
        found, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=PAGE_SIZE, page_token=token
            )
            found += list(page)
            token = page.token
            if not token:
                return found

    def attempts(self, model_id: str, stage: str) -> int:
        return len(self.runs(f"tags.model_id = '{model_id}' and tags.stage = '{stage}'"))

    def start_model_run(
        self,
        parent: str,
        plan: ModelPlan,
        dataset: str,
        stage: str,
        extra_tags: dict | None = None,
        start_time: float | None = None,
    ) -> str:
        """`start_time` (seconds since the epoch): when the work began, for runs opened after it."""
        attempt = self.attempts(plan.model_id, stage) + 1
        tags = {
            "level": "model",
            "mlflow.parentRunId": parent,
            "grid": self.grid_name,
            "attempt": str(attempt),
            **self.source,
            **model_tags(plan, dataset, stage),
            **(extra_tags or {}),
        }
        run = self.client.create_run(
            self.experiment_id, start_time=_ms(start_time), run_name=f"{stage}:{plan.model_id}", tags=tags
        )
        self.log_params(run.info.run_id, {**self.grid_params, **flat_params(plan)})
        self.log_dataset(run.info.run_id, DATASET_CONTEXT.get(stage))
        self.client.log_dict(run.info.run_id, plan.config, "config.json")
        # a number MLflow filters on (tags are text): `metrics.sparsity >= 0.9`, `apgrid query`
        self.log_metrics(run.info.run_id, {"sparsity": plan.sparsity})
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict, step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step or 0) for k, v in clean_metrics(metrics).items()]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        batch = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(batch), PARAMS_PER_CALL):
            self.client.log_batch(run_id, params=batch[start : start + PARAMS_PER_CALL])

    def log_dataset(self, run_id: str, context: str | None) -> None:
        """The data the run trained or was evaluated on, as an MLflow dataset input."""
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = self.datasets.get(context)
        if dataset is not None:
            tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
            self.client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(), tags)])

    def log_model(self, run_id: str, model) -> None:
        """A model (masks folded into its weights) as the run's MLflow PyTorch model."""
        import logging
        import tempfile

        import mlflow.pytorch
        import torch

        from apgrid import __version__

        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"apgrid=={__version__}"]
        pytorch_log = logging.getLogger("mlflow.pytorch")
        level = pytorch_log.level
        pytorch_log.setLevel(logging.ERROR)  # its pickle warning, once per model, would bury the log
        try:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / MODEL_FOLDER
                # pickle: the model is apgrid's own module (pt2 would trace every model, seconds each)
                mlflow.pytorch.save_model(
                    model, folder, pip_requirements=requirements, serialization_format="pickle"
                )
                self.client.log_artifacts(run_id, str(folder), MODEL_FOLDER)
        finally:
            pytorch_log.setLevel(level)

    def set_tag(self, run_id: str, key: str, value) -> None:
        self.client.set_tag(run_id, key, str(value))

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def end(self, run_id: str, status: str = "FINISHED", end_time: float | None = None) -> None:
        self.client.set_terminated(run_id, status=status, end_time=_ms(end_time))

    def summarize_grid(self, parent: str, planned: int) -> None:
        """The grid run's summary: models planned and evaluated, and the mean of every accuracy
        over the evaluated models (their latest FINISHED evaluate run each)."""
        latest = {}
        for run in self.runs("tags.stage = 'evaluate' and attributes.status = 'FINISHED'"):
            model = run.data.tags.get("model_id")
            if model not in latest or run.info.start_time > latest[model].info.start_time:
                latest[model] = run
        metrics = {"models_planned": planned, "models_evaluated": len(latest)}
        names = {k for run in latest.values() for k in run.data.metrics if k.endswith("_acc")}
        for name in sorted(names):
            values = [r.data.metrics[name] for r in latest.values() if name in r.data.metrics]
            metrics[f"mean_{name}"] = sum(values) / len(values)
        self.log_metrics(parent, metrics)

    def finished_models(self, stage: str) -> set[str]:
        """Model ids with a FINISHED run for `stage`."""
        runs = self.runs(f"tags.stage = '{stage}' and attributes.status = 'FINISHED'")
        return {run.data.tags.get("model_id") for run in runs}

    def close_running(self, stage: str, why: str) -> int:
        """Runs of `stage` still RUNNING once the stage is over (their closing call was lost)."""
        stale = self.runs(f"tags.stage = '{stage}' and attributes.status = 'RUNNING'")
        for run in stale:
            self.client.set_tag(run.info.run_id, "ended_by", why)
            self.end(run.info.run_id, "FAILED")
        return len(stale)

    def close_stale_runs(self) -> int:
        """Runs left RUNNING by a killed driver become KILLED (resume calls this first)."""
        stale = self.runs("attributes.status = 'RUNNING' and tags.level = 'model'")
        for run in stale:
            self.client.set_tag(run.info.run_id, "ended_by", "resume: driver was killed")
            self.end(run.info.run_id, "KILLED")
        return len(stale)


# What Ray Tune adds to every reported result: bookkeeping, not a model's metrics.
TUNE_KEYS = {
    "done",
    "trial_id",
    "training_iteration",
    "should_checkpoint",
    "checkpoint_dir_name",
    "timestamp",
    "date",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "pid",
    "hostname",
    "node_ip",
    "ray_node_id",  # a tag, not a metric
    "experiment_tag",
    "config",
}
PLAN_PREFIX = {"dense": "dense", "pruned": "prune"}


def flat_params(plan: ModelPlan) -> dict[str, str]:
    """The model's own config as MLflow params with dotted names (dense.recipe.lr, prune.method,
    prune.sparsity, prune.finetune.epochs, prune.options.rho, ...), so runs filter and compare in
    the UI; the grid's dataset and threat model come from Tracker.grid_params."""
    config = {k: v for k, v in plan.config.items() if k not in ("dataset", "threat_model", "validation")}
    prefix = "checkpoint" if "checkpoint" in config else PLAN_PREFIX.get(plan.role, plan.role)
    if plan.role == "pruned" and "dense" in config:
        config["dense_model_id"] = config.pop("dense")
    return {k: _param(v) for k, v in _flatten(prefix, config).items()}


def spec_params(spec) -> dict[str, str]:
    """The grid's spec as dotted params (threat_model.eps, prune.sparsities, prune.methods.hydra.
    options.rho, ...): its identity only, so that a resume, which may change the rest, logs the
    same values. Methods and checkpoints are keyed by name; lists of values join with commas."""
    from apgrid.grid.spec import identity

    body = identity(spec.to_dict())
    del body["dataset"]["root"]  # None there: not a param
    return {k: _param(v) for k, v in _flatten_spec("", body).items()}


def _flatten_spec(prefix: str, value) -> dict:
    if isinstance(value, dict):
        items = value
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        items = {v.get("name", str(i)): v for i, v in enumerate(value)}
    else:
        return {prefix: value}
    return {
        k: v
        for key, item in items.items()
        for k, v in _flatten_spec(f"{prefix}.{_key(key)}" if prefix else _key(key), item).items()
    }


def _key(name: str) -> str:
    """A spec name as a part of an MLflow param key, which allows only alphanumerics and `_-. :/`
    (flyingbird+ -> flyingbird_plus)."""
    return re.sub(r"[^\w\-. :/]", "_", str(name).replace("+", "_plus"))


def datasets(spec) -> dict:
    """The spec's training and evaluation data as MLflow datasets (name, digest, source), by the
    context they are logged in. The digest names the split (dataset, held-out validation,
    evaluated test samples), so runs on the same data share one dataset."""
    import hashlib
    import json

    from mlflow.data.meta_dataset import MetaDataset

    d = spec.dataset
    source = _dataset_source(d.name, d.root)
    splits = {
        "training": {"dataset": d.name, "split": "train", "validation_held_out": d.validation},
        "evaluation": {"dataset": d.name, "split": "test", "samples": spec.evaluation.settings.num_samples},
    }
    return {
        context: MetaDataset(
            source, name=d.name, digest=hashlib.sha256(json.dumps(split).encode()).hexdigest()[:16]
        )
        for context, split in splits.items()
    }


def _dataset_source(name: str, root: str | None):
    """Where the data comes from: the spec's root (a folder or an object-store URI), else apgrid's
    loader (digits ships with scikit-learn; the others download to torchvision's default)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource

    if root:
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        try:
            return resolve_dataset_source(root)
        except Exception:  # a scheme MLflow has no source for
            pass
    return CodeDatasetSource({"loader": "apgrid.trainables.data.load_dataset", "dataset": name, "root": root})


def grid_params(dataset, threat_model) -> dict[str, str]:
    """The params every model run of a grid shares: its dataset and threat model."""
    out = {
        "dataset.name": dataset.name,
        "dataset.validation": dataset.validation,
        "threat_model.norm": threat_model.norm,
        "threat_model.eps": threat_model.eps,
    }
    return {k: _param(v) for k, v in out.items()}


def _flatten(prefix: str, value) -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(f"{prefix}.{key}", item).items()}
    return {prefix: value}


def _param(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "null" if value is None else str(value)


def source_tags() -> dict[str, str]:
    """What MLflow's own runs carry (mlflow.user, mlflow.source.name and .type), apgrid's version,
    and the git commit of its source when it runs from a checkout."""
    import subprocess

    from mlflow.tracking.context.default_context import DefaultRunContext

    from apgrid import __version__

    try:
        tags = dict(DefaultRunContext().tags())
    except Exception:  # getpass finds no user name (a container's uid without a passwd entry)
        tags = {}
    tags["apgrid.version"] = __version__
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


class TrialTracking(DriverCallback):
    """Opens an MLflow run for every attempt of a Tune trial and closes it with the outcome.

    A tracking server that goes away does not stop the training: the first failed call is
    reported, later ones are skipped, and the runner logs the missing runs from the model cards
    once the server answers again (at the end of the stage, or on `apgrid resume`)."""

    def __init__(
        self, tracker: Tracker, parent_run: str, dataset: str, stage: str, log=print, on_finished=None
    ):
        """`on_finished(plan, run_id)`: logs what a finished trial left (its model) before its run
        is closed."""
        self.tracker, self.parent, self.dataset, self.stage = tracker, parent_run, dataset, stage
        self.on_finished = on_finished
        self.runs: dict[str, str] = {}
        self.placed: set[str] = set()  # trials whose run has its Ray node tag
        self.log = log
        self.outage: str | None = None

    def _safely(self, call, *args) -> None:
        if self.outage is not None:
            return
        try:
            call(*args)
        except Exception as exc:  # MLflow wraps connection and database errors alike
            self.outage = short_reason(exc)
            self.log(
                f"[{self.stage}] MLflow failed ({self.outage}); training goes on, its runs "
                f"are logged when the tracking server answers again"
            )

    def _run_for(self, trial) -> str:
        if trial.trial_id not in self.runs:
            plan = ModelPlan.from_dict(trial.config["model"])
            self.runs[trial.trial_id] = self.tracker.start_model_run(
                self.parent, plan, self.dataset, self.stage, {"ray_trial_id": trial.trial_id}
            )
        return self.runs[trial.trial_id]

    def _close(self, trial, status: str) -> None:
        self.placed.discard(trial.trial_id)  # a retried trial may land on another node
        run_id = self.runs.pop(trial.trial_id, None)
        if run_id is not None:
            if status == "FINISHED" and self.on_finished is not None:
                self.on_finished(ModelPlan.from_dict(trial.config["model"]), run_id)
            self.tracker.end(run_id, status)

    def _log_result(self, trial, result) -> None:
        run_id = self._run_for(trial)
        metrics = {k: v for k, v in result.items() if k not in TUNE_KEYS}
        self.tracker.log_metrics(run_id, metrics, step=result.get("epoch"))
        if trial.trial_id not in self.placed and result.get("ray_node_id"):  # where it trains
            self.tracker.set_tag(run_id, "ray.node_id", result["ray_node_id"])
            self.placed.add(trial.trial_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._safely(self._run_for, trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._safely(self._run_for, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._safely(self._log_result, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._safely(self._close, trial, "FINISHED")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._safely(self._close, trial, "FAILED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safely(self._close, trial, "FAILED")
