"""Launch and resume a grid: dense -> prune -> evaluate -> analyze.

Finished work is found by its content-addressed id and skipped, so `resume` simply runs the stages
again: a stage whose models all exist costs nothing, and an interrupted trial continues from its
last epoch checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from apgrid.errors import short_reason
from apgrid.grid import plan as planner
from apgrid.grid.errors import STORAGE_ERRNOS, GridError, ResumableError
from apgrid.grid.objectstore import grid_folder, pull_state, push_state, remote_results
from apgrid.grid.spec import NOT_IDENTITY, GridSpec, SpecError, identity, load_spec
from apgrid.grid.state import (
    ARTIFACTS,
    STAGES,
    follow_folder,
    read_state,
    set_stage,
    state_path,
    write_state,
)
from apgrid.grid.store import ModelStore, SampleStore, atomic_write_bytes
from apgrid.grid.tracking import (
    Tracker,
    TrackingError,
    check_reachable,
    datasets,
    grid_params,
    spec_params,
)
from apgrid.trainables.checkpoints import published_model
from apgrid.trainables.datacache import is_uri
from apgrid.trainables.fields import remote_output

# Tune warns on every epoch checkpoint of small models; our own progress lines replace its tables.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")


def preflight(spec: GridSpec, dry_run: bool = False) -> None:
    """Everything that can be checked before a single file is written. A dry run checks the spec,
    the output folder and the checkpoints, but reads no data and asks no tracking server (a
    cluster's spec can be planned on a laptop)."""
    output = spec.output_dir
    if remote_output(spec.output):  # the grid already there, if any, decides as a local one would
        try:
            pull_state(spec.output, output)
        except OSError as exc:
            raise GridError(f"output: cannot read {spec.output} ({short_reason(exc)})") from None
    if output.exists() and not output.is_dir():
        raise GridError(f"output: {output} exists and is not a folder")
    if state_path(output).is_file():
        owner = read_state(output)
        if owner.get("fingerprint") != spec.fingerprint():
            # grid.json may hold the fingerprint an older apgrid computed (with the data's place,
            # or before a field with a neutral default existed): its spec.yaml, read now, decides
            stored = _stored_spec(output)
            if stored is None or stored.fingerprint() != spec.fingerprint():
                differ = _identity_changes(output, stored, spec)
                why = f"; it differs in {'; '.join(differ[:3])}" if differ else ""
                raise GridError(
                    f"output: {output} belongs to another grid ('{owner.get('name')}'"
                    f"{why}); choose another --output, or `apgrid resume {output}`"
                )
    elif output.is_dir() and any(output.iterdir()):
        raise GridError(f"output: {output} is not empty and holds no apgrid grid")
    parent = output if output.exists() else next(p for p in output.parents if p.exists())
    if not os.access(parent, os.W_OK):
        raise GridError(f"output: {parent} is not writable")
    from apgrid.trainables.data import DATASETS, load_dataset

    info = DATASETS[spec.dataset.name]
    for c in spec.checkpoints:  # raises CheckpointError (exit 2) before anything is written
        channels = info.image_shape[0]
        published_model(c.path, c.arch, channels, info.num_classes, c.normalization, c.sparsity)
    if dry_run:
        return
    root = spec.dataset.root
    if root and not is_uri(root) and not spec.dataset.download and not Path(root).is_dir():
        raise GridError(
            f"dataset.root: {root} is not a folder (relative to {Path.cwd()}); on a cluster every node "
            f"reads it: give a shared volume's path or an object-store URI (s3://bucket/cifar10, "
            f"copied once per node; docs/cluster.md)"
        )
    try:
        check_reachable(spec.resolved_tracking_uri)
    except TrackingError as exc:
        raise GridError(str(exc)) from None
    load_dataset(spec.dataset.name, spec.dataset.root, spec.dataset.download)  # DatasetError: exit 2


def launch(spec: GridSpec, fault: dict | None = None, log=print, until: str | None = None) -> Path:
    """Run a new grid, or continue the same grid in its output folder with this spec's resources,
    tracking and analysis settings (a grid moved to a GPU cluster keeps its finished work).
    `until` stops after that stage (train here, evaluate elsewhere); `resume` runs the rest."""
    stages = stages_until(until)
    preflight(spec)
    _warn_unexplained(spec, log)
    output = spec.output_dir
    output.mkdir(parents=True, exist_ok=True)
    existing = state_path(output).is_file()
    if existing:
        changes = _spec_changes(output, spec)
        if changes:
            log(
                f"[apgrid] continuing grid '{spec.name}' in {output} with its finished work; "
                f"changed: {'; '.join(changes)}"
            )
    text = yaml.safe_dump(_spec_yaml(spec), sort_keys=False)  # what `resume` will run with
    atomic_write_bytes(output / "spec.yaml", lambda f: f.write(text.encode()))
    state = (
        read_state(output)
        if existing
        else {
            "name": spec.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "stages": {},
            "driver_runs": 0,
        }
    )
    write_state(output, {**state, "fingerprint": spec.fingerprint()})
    if remote_output(spec.output):
        push_state(spec.output, output)
        log(
            f"[apgrid] results (models, cards, Parquet, grid state) go to {spec.output}; Ray Tune's "
            f"trial folders, MLflow's store and the report stay in the working folder {output}"
        )
    return _run(spec, fault, log, stages)


def _stored_spec(output: Path) -> GridSpec | None:
    """The spec the grid in `output` was launched with, read by this apgrid (fields added since
    hold their defaults); None when it is gone or no longer valid here (e.g. a checkpoint's path)."""
    try:
        return load_spec(output / "spec.yaml", output=str(output))
    except (SpecError, OSError):
        return None


def _spec_changes(output: Path, spec: GridSpec) -> list[str]:
    """What `spec` changes against the spec the grid in `output` was launched with."""
    before = output / "spec.yaml"
    if not before.is_file():
        return []
    stored = _stored_spec(output)
    old = _as_lists(_spec_yaml(stored)) if stored else yaml.safe_load(before.read_text()) or {}
    return _changes({**old, "output": None}, {**_as_lists(_spec_yaml(spec)), "output": None})


def _identity_changes(output: Path, stored: GridSpec | None, spec: GridSpec) -> list[str]:
    """What `spec` changes in what the grid computes (spec.identity's fields)."""
    if stored is None:  # its YAML as written: leave out the paths that are not identity
        return [c for c in _spec_changes(output, spec) if not c.startswith(NOT_IDENTITY)]
    old, new = (_as_lists(identity(_spec_yaml(s))) for s in (stored, spec))
    return _changes(old, new)


def _named_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value) and bool(value)


def _as_lists(value):
    """The spec's tuples as the lists its YAML reads back as, so equal fields compare equal."""
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def _changes(old, new, prefix: str = "") -> list[str]:
    """'field: old -> new' for every leaf that differs between two specs' YAML layouts."""
    if _named_list(old) and _named_list(new):  # methods, checkpoints: compared by name
        old, new = ({item["name"]: item for item in v} for v in (old, new))
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            change
            for key in dict.fromkeys([*old, *new])
            for change in _changes(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [f"{prefix[:-1]}: {old} -> {new}"]


def load_grid_spec(output: str | Path) -> GridSpec:
    """The spec a grid's output folder (or object-store URI) was launched with."""
    given = str(output) if remote_output(output) else None
    output = grid_folder(output)
    read_state(output)
    try:
        return load_spec(output / "spec.yaml", output=given or str(output))
    except SpecError as exc:
        raise GridError(f"{output / 'spec.yaml'}: {exc}") from None


def resume(output: str | Path, fault: dict | None = None, log=print, until: str | None = None) -> Path:
    stages = stages_until(until)
    spec = load_grid_spec(output)
    output = spec.output_dir
    try:
        check_reachable(spec.resolved_tracking_uri)
    except TrackingError as exc:
        raise GridError(str(exc)) from None
    return _run(spec, fault, log, stages)


def _warn_unexplained(spec: GridSpec, log) -> None:
    """One line when the spec trains a method unlike its authors without saying why."""
    from apgrid.grid.plan import unexplained_deviations

    found = unexplained_deviations(spec)
    if found:
        shown = "; ".join(found[:5]) + (f"; … {len(found) - 5} more" if len(found) > 5 else "")
        log(
            f"[apgrid] warning: {len(found)} deviation(s) from the methods' authors without a reason "
            f"in the spec's because: ({shown}); apgrid launch --dry-run lists them"
        )


def stages_until(until: str | None) -> tuple[str, ...]:
    """The stages up to and including `until` (all of them for None)."""
    if until is None:
        return STAGES
    if until not in STAGES:
        raise GridError(f"--until: unknown stage '{until}'; stages: {', '.join(STAGES)}")
    return STAGES[: STAGES.index(until) + 1]


def _spec_yaml(spec: GridSpec) -> dict:
    """The validated spec in the YAML layout load_spec reads (the dataclasses mirror it)."""
    return spec.to_dict()


# -- the stages --------------------------------------------------------------------------------


@dataclass
class GridRun:
    """What every stage works with: the spec, the MLflow tracker and the grid's parent run, the
    progress log, this driver's attempt number, and the faults tests inject."""

    spec: GridSpec
    tracker: Tracker | None
    parent: str | None
    log: Callable[[str], None]
    attempt: int = 1
    fault: dict | list | None = None

    @property
    def output(self) -> Path:
        return self.spec.output_dir

    @cached_property
    def models(self) -> ModelStore:
        return ModelStore(self.output, remote_results(self.spec.output, self.spec.name))

    @cached_property
    def samples(self) -> SampleStore:
        return SampleStore(self.output, self.spec.name, remote_results(self.spec.output, self.spec.name))


def _run(spec: GridSpec, fault: dict | None, log, stages: tuple[str, ...] = STAGES) -> Path:
    import ray
    from mlflow.exceptions import MlflowException

    output = spec.output_dir
    local_store = spec.resolved_tracking_uri.startswith(("sqlite:", "file:"))
    stage, tracker, parent = "start", None, None
    started = time.time()
    try:
        state = read_state(output)
        state["driver_runs"] = state.get("driver_runs", 0) + 1
        write_state(output, state)
        if spec.tracking_uri is None:  # the folder's own store: a copy logs into itself
            follow_folder(output)
        tracker = Tracker(spec.resolved_tracking_uri, spec.name, output / ARTIFACTS if local_store else None)
        tracker.grid_params = grid_params(spec.dataset, spec.threat_model)
        tracker.datasets = datasets(spec)
        closed = tracker.close_stale_runs()
        if closed:
            log(f"[apgrid] closed {closed} MLflow runs left RUNNING by a killed driver as KILLED")
        parent = tracker.grid_run(spec.fingerprint(), spec_params(spec))
        tracker.log_artifact(parent, output / "spec.yaml")  # the validated spec the grid ran
        state.update(
            grid_run_id=parent, experiment_id=tracker.experiment_id, tracking_uri=spec.tracking_uri
        )  # None: the folder's own SQLite store
        write_state(output, state)
        if not ray.is_initialized():
            ray.init(
                address=spec.ray_address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        for stage in stages:
            set_stage(output, stage, "running")
            log(f"[apgrid] stage {stage} ({time.time() - started:.0f}s)")
            STAGE_FUNCTIONS[stage](GridRun(spec, tracker, parent, log, state["driver_runs"], fault))
            set_stage(output, stage, "done")
            push_state(spec.output, output)
        done = [s for s in STAGES if read_state(output)["stages"].get(s) == "done"]
        tracker.set_tag(parent, "last_stage", done[-1])  # a finished grid's stays analyze
        tracker.end(parent, "FINISHED")
    except BaseException as exc:
        _end_quietly(tracker, parent)
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            where = exc.filename or output
            raise ResumableError(
                f"{stage}: cannot write {where}: {exc.strerror}; finished work "
                f"is kept: free space or fix permissions, then "
                f"`apgrid resume {output}`"
            ) from exc
        if isinstance(exc, (TrackingError, MlflowException)):
            raise ResumableError(
                f"{stage}: MLflow at {spec.resolved_tracking_uri} failed "
                f"({short_reason(exc)}); finished work is kept in {output}: "
                f"bring the tracking server back, then `apgrid resume {output}`"
            ) from exc
        raise
    if stages != STAGES:
        rest = " -> ".join(STAGES[len(stages) :])
        log(
            f"[apgrid] grid '{spec.name}' stopped after {stages[-1]} as asked, in "
            f"{time.time() - started:.0f}s; `apgrid resume {output}` runs {rest}"
        )
        return output
    log(
        f"[apgrid] grid '{spec.name}' finished in {time.time() - started:.0f}s; "
        f"report: {output / 'report' / 'report.md'}"
    )
    return output


def _end_quietly(tracker: Tracker | None, parent: str | None) -> None:
    """Mark the grid run FAILED if the tracking store still answers; the real error matters more."""
    if tracker is not None and parent is not None:
        try:
            tracker.end(parent, "FAILED")
        except Exception:
            pass


def _tune_stage(run: GridRun, stage: str, trainable, plans) -> None:
    from ray import tune

    from apgrid.grid.progress import StageProgress
    from apgrid.grid.tracking import TrialTracking
    from apgrid.grid.trials import TrialContext

    spec, tracker, log, store = run.spec, run.tracker, run.log, run.models
    todo = [p for p in plans if not store.exists(p.model_id)]
    log(f"[{stage}] {len(plans)} models, {len(plans) - len(todo)} already done, {len(todo)} to run")
    if todo:
        r = spec.resources
        tracking = TrialTracking(
            tracker,
            run.parent,
            spec.dataset.name,
            stage,
            log,
            lambda plan, run_id: tracker.log_model(run_id, _plain_model(store, plan, spec.dataset.name)),
        )
        progress = StageProgress(stage, log, len(todo))
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": r.trial_cpus, "gpu": r.trial_gpus}),
            param_space={
                "model": tune.grid_search([p.to_dict() for p in todo]),
                "grid": TrialContext.of(spec),
                "fault": run.fault,
            },
            # one worker process runs trial after trial: a fresh one per trial costs seconds (its
            # imports), more than a small model's training; every trial seeds and sizes itself
            tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"{stage}-run{run.attempt}",
                storage_path=spec.storage_path,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[tracking, progress],
            ),
        )
        previous = signal.getsignal(signal.SIGINT)
        try:
            results = tuner.fit()
        finally:  # Tune leaves its own Ctrl-C handler behind, which would swallow it in evaluate
            signal.signal(signal.SIGINT, previous)
            progress.bar.close()
    _sync_runs(
        run,
        stage,
        [p for p in plans if store.exists(p.model_id)],
        lambda plan, run_id: _log_trained(tracker, run_id, store, plan, spec.dataset.name),
    )
    failed = [p.model_id for p in todo if not store.exists(p.model_id)]
    if failed:
        errors = [short_reason(str(r.error).strip().splitlines()[-1]) for r in results if r.error]
        if not errors:  # Tune returns from fit on Ctrl-C: unfinished trials, none of them failed
            raise KeyboardInterrupt
        raise ResumableError(
            f"{stage}: {len(failed)} trials failed after {spec.max_failures} "
            f"retries ({'; '.join(errors[:3])}); fix the cause, then `apgrid "
            f"resume {spec.output_dir}`"
        )


def _plain_model(store: ModelStore, plan, dataset: str):
    """The stored model with its masks folded into the weights: a plain module, in eval mode."""
    from apgrid.trainables.data import DATASETS
    from apgrid.trainables.masks import fold_masks

    info = DATASETS[dataset]
    return fold_masks(store.load_model(plan.model_id, info.image_shape, info.num_classes)).eval()


def _log_trained(tracker: Tracker, run_id: str, store: ModelStore, plan, dataset: str) -> None:
    """A trained model's run logged from the output folder: its card's metrics and its model."""
    tracker.log_metrics(run_id, store.card(plan.model_id).get("metrics", {}))
    tracker.log_model(run_id, _plain_model(store, plan, dataset))


def _sync_runs(run: GridRun, stage: str, done_plans, fill) -> None:
    """Make MLflow agree with the output folder, the source of truth: every finished model gets a
    FINISHED run for this stage. Runs whose closing call was lost (tracking outage, driver killed
    between a trial's end and its callback) are closed as FAILED first. `fill(plan, run_id)` logs
    a run's contents."""
    if not done_plans:
        return
    tracker = run.tracker
    lost = tracker.close_running(stage, "its stage ended while MLflow could not be told")
    finished = tracker.finished_models(stage)
    missing = [p for p in done_plans if p.model_id not in finished]
    for plan in missing:
        run_id = tracker.start_model_run(
            run.parent, plan, run.spec.dataset.name, stage, {"logged_by": "sync from the output folder"}
        )
        fill(plan, run_id)
        tracker.end(run_id, "FINISHED")
    if lost or missing:
        run.log(
            f"[{stage}] MLflow synced with the output folder: {len(missing)} runs logged, "
            f"{lost} left open closed as FAILED"
        )


def stage_checkpoints(run: GridRun) -> None:
    """Import the spec's user checkpoints into the model store (once; ids hash the file)."""
    from apgrid.trainables.data import load_dataset
    from apgrid.trainables.masks import apply_masks, masks_of, model_facts, plain_state_dict

    spec, store = run.spec, run.models
    plans = planner.checkpoint_models(spec)
    todo = [p for p in plans if not store.exists(p.model_id)]
    if not todo:
        return
    ds = load_dataset(spec.dataset.name, spec.dataset.root, spec.dataset.download)
    entries = {c.name: c for c in spec.checkpoints}
    for plan in todo:
        entry = entries[plan.config["name"]]
        model, masks = published_model(
            entry.path, entry.arch, ds.image_shape[0], ds.num_classes, entry.normalization, entry.sparsity
        )
        apply_masks(model, masks)
        card = planner.model_card(
            plan, spec.dataset.name, {}, {**model_facts(model), "reported": entry.reported}
        )
        store.save(plan.model_id, plain_state_dict(model), masks_of(model), card)
        run.log(f"[checkpoints] imported {plan.config['checkpoint']} as {plan.model_id}")


def stage_dense(run: GridRun) -> None:
    from apgrid.grid.trials import dense_trial

    _tune_stage(run, "dense", dense_trial, planner.dense_models(run.spec))


def stage_prune(run: GridRun) -> None:
    from apgrid.grid.trials import prune_trial

    _tune_stage(run, "prune", prune_trial, planner.pruned_models(run.spec))


def stage_evaluate(run: GridRun) -> None:
    from apgrid.analysis.tables import summarize
    from apgrid.grid.evaluate import run_evaluation
    from apgrid.trainables.data import load_dataset

    spec, tracker, log = run.spec, run.tracker, run.log
    ds = load_dataset(spec.dataset.name, spec.dataset.root, spec.dataset.download)
    n = spec.evaluation.settings.num_samples or len(ds.y_test)
    samples, models = run.samples, run.models
    plans = planner.all_models(spec)
    log(
        f"[evaluate] {len(plans)} models, {sum(samples.is_done(p.model_id) for p in plans)} "
        f"already evaluated, {n} test samples each"
    )
    eval_params = {
        f"evaluation.{k}": v
        for k, v in {
            **dataclasses.asdict(spec.evaluation.settings),
            "autoattack_attacks": spec.evaluation.settings.autoattack_ensemble,
        }.items()
    }

    outage = []

    def log_run(plan, run_id, rows):
        chosen = (
            {"evaluation.batch_size": int(rows["eval_batch_size"].iloc[0])}
            if "eval_batch_size" in rows
            else {}
        )  # rows written before it was recorded lack it
        tracker.log_params(run_id, {**eval_params, **chosen})
        tracker.log_metrics(
            run_id,
            {
                **summarize(rows, spec.threat_model.eps),
                "measured_sparsity": float(rows["sparsity_measured"].iloc[0]),
            },
        )
        # relative to the output folder, which may move (docs/results.md)
        tracker.set_tag(
            run_id, "samples_uri", samples.partition(plan.model_id).relative_to(run.output).as_posix()
        )
        tracker.log_artifact(run_id, models.folder(plan.model_id) / "card.json")
        tracker.log_artifact(run_id, samples.partition(plan.model_id) / "part-0.parquet", "samples")

    def on_model_done(plan, rows, placement):
        started = placement.pop("started", None)  # its first shard's dispatch, in this driver
        metrics = summarize(rows, spec.threat_model.eps)
        log(
            f"[evaluate] {plan.model_id}: clean {metrics['clean_acc']:.3f}  "
            f"PGD {metrics['pgd_acc']:.3f}  AA {metrics['aa_acc']:.3f}  "
            f"FMN@eps {metrics['fmn_acc_at_eps']:.3f}"
        )
        if outage:
            return  # logged by the sync below once the server answers
        try:
            run_id = tracker.start_model_run(
                run.parent, plan, spec.dataset.name, "evaluate", start_time=started
            )
            log_run(plan, run_id, rows)
            for key, values in placement.items():  # where its shards ran: Ray node and GPU ids
                if values:
                    tracker.set_tag(run_id, f"ray.{key}", ",".join(sorted(values)))
            tracker.end(run_id, "FINISHED")
        except Exception as exc:  # the evaluation goes on; its Parquet is the source of truth
            outage.append(short_reason(exc))
            log(
                f"[evaluate] MLflow failed ({outage[0]}); evaluation goes on, its runs are "
                f"logged when the tracking server answers again"
            )

    run_evaluation(
        spec,
        plans,
        ds.x_test[:n],
        ds.y_test[:n],
        {"num_classes": ds.num_classes, "mean": ds.mean, "std": ds.std},
        on_model_done,
        log,
        run.fault,
    )
    _sync_runs(
        run,
        "evaluate",
        [p for p in plans if samples.is_done(p.model_id)],
        lambda plan, run_id: log_run(plan, run_id, samples.read(plan.model_id)),
    )
    tracker.summarize_grid(run.parent, len(plans))  # the sync above raised if MLflow is still away


def stage_analyze(run: GridRun) -> None:
    from apgrid.grid.analyze import analyze

    paths = analyze(run.spec, log=run.log)
    for path in paths.values():
        run.tracker.log_artifact(run.parent, path, "report")
    run.log(f"[analyze] wrote {len(paths)} files to {run.output / 'report'}")


STAGE_FUNCTIONS = {
    "checkpoints": stage_checkpoints,
    "dense": stage_dense,
    "prune": stage_prune,
    "evaluate": stage_evaluate,
    "analyze": stage_analyze,
}
