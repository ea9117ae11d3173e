"""Ray Tune function trainables for the dense and prune stages.

Each trial checkpoints after every epoch (model, optimiser, phase), so a trial that FailureConfig
retries resumes from its last epoch; it writes its final model to the content-addressed model store,
and returns at once if that model already exists.
"""

from __future__ import annotations

import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray import tune

from apgrid.grid.faults import maybe_fail
from apgrid.grid.objectstore import remote_results
from apgrid.grid.plan import ModelPlan, model_card
from apgrid.grid.spec import DatasetSpec, GridSpec
from apgrid.grid.store import ModelStore, atomic_write_bytes, load_state
from apgrid.trainables import masks
from apgrid.trainables.data import load_dataset, with_validation
from apgrid.trainables.evaluation import ThreatModel
from apgrid.trainables.fields import remote_output
from apgrid.trainables.models import build_model, resolve_device
from apgrid.trainables.pipeline import DenseJob, PruneJob, PruneSettings
from apgrid.trainables.training import Recipe


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a stage shares, fixed when the stage starts (Tune passes it in the
    trial's config, beside the model's plan)."""

    output: str
    dataset: DatasetSpec
    threat_model: ThreatModel
    device: str
    trial_cpus: float
    results: str | None = None  # the object-store URI that holds the models (None: `output`)
    name: str = ""

    @classmethod
    def of(cls, spec: GridSpec) -> TrialContext:
        r = spec.resources
        results = spec.output if remote_output(spec.output) else None
        return cls(
            str(spec.output_dir), spec.dataset, spec.threat_model, r.device, r.trial_cpus, results, spec.name
        )


def _context(config: dict) -> tuple[TrialContext, ModelPlan, ModelStore]:
    _reset_peak_rss()
    grid: TrialContext = config["grid"]
    remote = remote_results(grid.results, grid.name) if grid.results else None
    return grid, ModelPlan.from_dict(config["model"]), ModelStore(Path(grid.output), remote)


def _data_and_model(grid: TrialContext, arch: str, seed: int):
    d = grid.dataset
    ds = with_validation(load_dataset(d.name, d.root, d.download), d.validation)
    device = resolve_device(grid.device)
    torch.set_num_threads(max(1, int(grid.trial_cpus)))
    torch.manual_seed(seed)  # the dense model's initial weights
    model = build_model(arch, ds.image_shape[0], ds.num_classes, ds.mean, ds.std).to(device)
    return ds, model, device


def _reset_peak_rss() -> None:
    """Restart the process's peak RSS at its current RSS (Linux, proc(5): clear_refs "5"). Ray
    reuses a worker process for later trials; without this they would report the peak of the
    trials before them."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak is then the process's lifetime peak


def _maybe_fail(config: dict, stage: str, epoch: int) -> None:
    maybe_fail(config.get("fault"), stage, epoch, config["model"]["model_id"])


def _report(store: ModelStore, model_id: str, metrics: dict, state: dict) -> None:
    """Report an epoch with its checkpoint: to Tune (for FailureConfig retries) and to the model's
    progress file (for a resumed grid after the driver itself died)."""
    atomic_write_bytes(store.folder(model_id) / "progress.pt", lambda fh: torch.save(state, fh))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    node = ray.get_runtime_context().get_node_id()  # tagged on the trial's MLflow run
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / "state.pt")
        tune.report(
            {**metrics, "peak_rss_mb": peak_rss_mb, "ray_node_id": node},
            checkpoint=tune.Checkpoint.from_directory(tmp),
        )


def _restore(store: ModelStore, model_id: str) -> dict | None:
    """The latest epoch state: Tune's checkpoint of this trial, else the progress file."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            return load_state(Path(folder) / "state.pt")
    progress = store.folder(model_id) / "progress.pt"
    return load_state(progress) if progress.is_file() else None


def dense_trial(config: dict) -> None:
    """Adversarially train a dense model (trainables.pipeline.DenseJob), checkpointing each epoch."""
    grid, plan, store = _context(config)
    if store.exists(plan.model_id):
        tune.report({"done": 1, **store.card(plan.model_id)["metrics"]})
        return
    threat = plan.config["threat_model"]
    ds, model, device = _data_and_model(grid, plan.arch, plan.seed)

    def save(model, metrics, extra):
        store.save(
            plan.model_id,
            masks.plain_state_dict(model),
            {},
            model_card(plan, grid.dataset.name, metrics, {**masks.model_facts(model), **extra}),
        )

    DenseJob(
        Recipe(**plan.config["recipe"]),
        threat["eps"],
        threat["norm"],
        plan.seed,
        model,
        ds,
        device,
        report=lambda metrics, state: _report(store, plan.model_id, metrics, state),
        before_epoch=lambda epoch: _maybe_fail(config, "dense", epoch),
        on_finish=save,
    ).run(_restore(store, plan.model_id))


def prune_trial(config: dict) -> None:
    """Prune a dense model: [mask search] -> masks or removed filters -> adversarial fine-tuning.

    One epoch counter runs over both phases: epochs [0, S) are the search phase (HYDRA's scores,
    the ADMM phase of R-ADMM and ATMC), epochs [S, S + F) fine-tune the pruned weights.
    """
    grid, plan, store = _context(config)
    if store.exists(plan.model_id):
        tune.report({"done": 1, **store.card(plan.model_id)["metrics"]})
        return
    ds, initial, device = _data_and_model(grid, plan.arch, plan.seed)  # the dense trial's init
    model = store.load_model(plan.dense_model_id, ds.image_shape, ds.num_classes).to(device)
    threat = grid.threat_model
    job = PruneJob(
        PruneSettings(
            method=plan.method,
            sparsity=plan.sparsity,
            seed=plan.seed,
            eps=threat.eps,
            norm=threat.norm,
            finetune=Recipe(**plan.config["finetune"]),
            search=Recipe(**plan.config["search"]) if "search" in plan.config else None,
            options=plan.config.get("options", {}),
        ),
        model,
        ds,
        device,
        report=lambda metrics, state: _report(store, plan.model_id, metrics, state),
        before_epoch=lambda epoch: _maybe_fail(config, "prune", epoch),
        on_finish=lambda model, metrics, extra: store.save(
            plan.model_id,
            masks.plain_state_dict(model),
            masks.masks_of(model),
            model_card(plan, grid.dataset.name, metrics, extra),
        ),
        # the seeded initialisation the dense trial started from (for a checkpoint parent: a
        # fresh one of its architecture, since its own was not published)
        initial_state={k: v.detach().clone() for k, v in initial.state_dict().items()},
    )
    job.run(_restore(store, plan.model_id))
