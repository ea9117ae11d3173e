"""Ray Tune function trainables for the dense and prune stages.

Each trial checkpoints after every epoch (model, optimiser, phase), so a trial that FailureConfig
retries resumes from its last epoch; it writes its final model to the content-addressed model store,
and returns at once if that model already exists.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from ray import tune

from grid.plan import ModelPlan
from grid.store import ModelStore, atomic_write_bytes, load_state
from trainables import pruning
from trainables.data import load_dataset
from trainables.models import build_model, resolve_device
from trainables.pruning import PRUNING_METHODS
from trainables.training import Recipe, accuracy, make_optimizer, train_epoch


def _context(config: dict):
    grid = config["grid"]
    plan = ModelPlan.from_dict(config["model"])
    store = ModelStore(Path(grid["output"]))
    return grid, plan, store


def _data_and_model(grid: dict, arch: str, seed: int):
    ds = load_dataset(grid["dataset"]["name"], grid["dataset"]["root"], grid["dataset"]["download"])
    device = resolve_device(grid["device"])
    torch.set_num_threads(max(1, int(grid["trial_cpus"])))
    torch.manual_seed(seed)  # the dense model's initial weights
    model = build_model(arch, ds.image_shape[0], ds.num_classes, ds.mean, ds.std).to(device)
    return ds, model, device


def _maybe_fail(config: dict, stage: str, epoch: int) -> None:
    """Fault injection for the tests: fail once at (stage, epoch), remembered by a marker file."""
    fault = config.get("fault")
    if not fault or fault["stage"] != stage or fault["epoch"] != epoch:
        return
    marker = Path(fault["marker"]) / f"{config['model']['model_id']}-{stage}-{epoch}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    if fault.get("kind") == "exit":
        os._exit(1)
    raise RuntimeError(f"injected fault at {stage} epoch {epoch}")


def _report(store: ModelStore, model_id: str, metrics: dict, state: dict) -> None:
    """Report an epoch with its checkpoint: to Tune (for FailureConfig retries) and to the model's
    progress file (for a resumed grid after the driver itself died)."""
    atomic_write_bytes(store.folder(model_id) / "progress.pt", lambda fh: torch.save(state, fh))
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / "state.pt")
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _restore(store: ModelStore, model_id: str) -> dict | None:
    """The latest epoch state: Tune's checkpoint of this trial, else the progress file."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            return load_state(Path(folder) / "state.pt")
    progress = store.folder(model_id) / "progress.pt"
    return load_state(progress) if progress.is_file() else None


def _card(plan: ModelPlan, grid: dict, metrics: dict, extra: dict | None = None) -> dict:
    card = {"model_id": plan.model_id, "role": plan.role, "dense_model_id": plan.dense_model_id,
            "arch": plan.arch, "seed": plan.seed, "method": plan.method,
            "target_sparsity": plan.sparsity, "dataset": grid["dataset"]["name"],
            "config_hash": plan.config_hash, "config": plan.config, "metrics": metrics}
    if plan.role == "pruned":
        m = PRUNING_METHODS[plan.method]
        card["taxonomy"] = {"pipeline": m.pipeline, "structured": m.structured,
                            "scope": m.scope, "criterion": m.criterion}
    return {**card, **(extra or {})}


def dense_trial(config: dict) -> None:
    grid, plan, store = _context(config)
    if store.exists(plan.model_id):
        tune.report({"done": 1, **store.card(plan.model_id)["metrics"]})
        return
    recipe = Recipe(**plan.config["recipe"])
    threat = plan.config["threat_model"]
    ds, model, device = _data_and_model(grid, plan.arch, plan.seed)
    optimizer = make_optimizer(model.parameters(), recipe)
    start = 0
    if (state := _restore(store, plan.model_id)) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"]
    metrics = {}
    for epoch in range(start, recipe.epochs):
        _maybe_fail(config, "dense", epoch)
        metrics = train_epoch(model, optimizer, ds.x_train, ds.y_train, recipe=recipe,
                              eps=threat["eps"], norm=threat["norm"], seed=plan.seed, epoch=epoch,
                              device=device)
        metrics["test_clean_acc"] = accuracy(model, ds.x_test, ds.y_test, device)
        metrics["epoch"] = epoch + 1
        last = epoch + 1 == recipe.epochs
        if last:
            store.save(plan.model_id, pruning.plain_state_dict(model), {},
                       _card(plan, grid, metrics, {"measured_sparsity": 0.0}))
        _report(store, plan.model_id, {**metrics, "done": int(last)},
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch + 1})


def prune_trial(config: dict) -> None:
    """Prune a dense model: [HYDRA score phase] -> masks -> adversarial fine-tuning under masks.

    Epoch counter runs over both phases: epochs [0, S) score the weights (HYDRA only), epochs
    [S, S + F) fine-tune them.
    """
    grid, plan, store = _context(config)
    if store.exists(plan.model_id):
        tune.report({"done": 1, **store.card(plan.model_id)["metrics"]})
        return
    threat = grid["threat_model"]
    finetune = Recipe(**plan.config["finetune"])
    score = Recipe(**plan.config["score"]) if plan.method == "hydra" else None
    score_epochs = score.epochs if score else 0
    ds, model, device = _data_and_model(grid, plan.arch, plan.seed)
    dense_state, _ = store.load_weights(plan.dense_model_id)
    model.load_state_dict(dense_state)

    state = _restore(store, plan.model_id)
    epoch = state["epoch"] if state else 0
    if score and epoch < score_epochs:
        params = pruning.hydra_attach_scores(model, plan.sparsity)
        if state:
            for p, saved in zip(params, state["scores"]):
                p.data.copy_(saved)
        optimizer = make_optimizer(params, score)
        if state:
            optimizer.load_state_dict(state["optimizer"])
        for epoch in range(epoch, score_epochs):
            _maybe_fail(config, "prune", epoch)
            metrics = train_epoch(model, optimizer, ds.x_train, ds.y_train, recipe=score,
                                  eps=threat["eps"], norm=threat["norm"], seed=plan.seed,
                                  epoch=epoch, device=device)
            _report(store, plan.model_id, {**metrics, "phase": "score", "epoch": epoch + 1, "done": 0},
                    {"scores": [p.detach().cpu() for p in params],
                     "optimizer": optimizer.state_dict(), "epoch": epoch + 1})
        pruning.hydra_finalize(model)
        state, epoch = None, score_epochs
    elif state is not None:  # resuming fine-tuning: weights and masks come from the checkpoint
        model.load_state_dict(state["model"])
        pruning.apply_masks(model, state["masks"])
    if not pruning.masks_of(model):
        if plan.method == "hydra":  # resumed exactly at the phase boundary
            raise RuntimeError("HYDRA resumed without masks")
        pruning.prune_one_shot(model, plan.method, plan.sparsity, plan.seed)

    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], finetune)
    if state is not None and "model" in state:
        optimizer.load_state_dict(state["optimizer"])
    metrics = {"measured_sparsity": pruning.measured_sparsity(model)}
    total = score_epochs + finetune.epochs
    for epoch in range(max(epoch, score_epochs), total):
        _maybe_fail(config, "prune", epoch)
        metrics = train_epoch(model, optimizer, ds.x_train, ds.y_train, recipe=finetune,
                              eps=threat["eps"], norm=threat["norm"], seed=plan.seed,
                              epoch=epoch - score_epochs, device=device)
        metrics.update(test_clean_acc=accuracy(model, ds.x_test, ds.y_test, device),
                       measured_sparsity=pruning.measured_sparsity(model), epoch=epoch + 1)
        if epoch + 1 == total:
            _save_pruned(store, plan, grid, model, metrics)
        _report(store, plan.model_id, {**metrics, "phase": "finetune", "done": int(epoch + 1 == total)},
                {"model": pruning.plain_state_dict(model), "masks": pruning.masks_of(model),
                 "optimizer": optimizer.state_dict(), "epoch": epoch + 1})
    if finetune.epochs == 0:
        metrics.update(test_clean_acc=accuracy(model, ds.x_test, ds.y_test, device))
        _save_pruned(store, plan, grid, model, metrics)
        tune.report({**metrics, "done": 1})


def _save_pruned(store: ModelStore, plan: ModelPlan, grid: dict, model, metrics: dict) -> None:
    store.save(plan.model_id, pruning.plain_state_dict(model), pruning.masks_of(model),
               _card(plan, grid, metrics, {"measured_sparsity": pruning.measured_sparsity(model)}))
