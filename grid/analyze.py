"""The analyze stage: the per-sample Parquet, plus the stored models for costs, transfer attacks and
decision slices, into OUTPUT/report. Used by the grid's last stage and by `apgrid analyze`."""

from __future__ import annotations

import fnmatch
from functools import cache, lru_cache
from pathlib import Path

import torch
from torch.nn.utils import prune

from apgrid.analysis.report import ModelAccess, write_report
from apgrid.analysis.samples import Samples
from apgrid.errors import ApgridError
from apgrid.grid.objectstore import remote_results
from apgrid.grid.spec import GridSpec
from apgrid.grid.store import ModelStore, open_samples


class AnalysisError(ApgridError, RuntimeError):
    pass


def select_models(samples: Samples, patterns: list[str] | None) -> Samples:
    """The models whose id matches any pattern (shell-style), and their dense parents, which the
    thin-ice statistics need."""
    if not patterns:
        return samples
    ids = samples.model_ids
    chosen = {m for m in ids if any(fnmatch.fnmatchcase(m, p) for p in patterns)}
    if not chosen:
        raise AnalysisError(
            f"--models: no model matches {' '.join(patterns)}; known: {', '.join(sorted(ids))}"
        )
    parents = {samples.first(m)["dense_model_id"] for m in chosen}
    return samples.select(chosen | parents)


def model_access(spec: GridSpec, log=print) -> ModelAccess:
    """Loads stored models (masks folded into the weights) and the test set, once each."""
    from apgrid.trainables import masks
    from apgrid.trainables.data import load_dataset
    from apgrid.trainables.models import resolve_device

    store = ModelStore(spec.output_dir, remote_results(spec.output, spec.name))
    device = resolve_device(spec.resources.device)
    dataset = lru_cache(maxsize=1)(
        lambda: load_dataset(spec.dataset.name, spec.dataset.root, spec.dataset.download)
    )

    @cache
    def load(model_id: str) -> torch.nn.Module:
        ds = dataset()
        model = store.load_model(model_id, ds.image_shape, ds.num_classes)
        for _, layer in masks.prunable_layers(model):
            if prune.is_pruned(layer):
                prune.remove(layer, "weight")  # fold: no mask multiply in the timed forward pass
        return model.to(device).eval()

    def test_data(n: int):
        ds = dataset()
        return ds.x_test[:n], ds.y_test[:n]

    cards = {}
    if store.root.is_dir():
        cards = {p.name: store.card(p.name) for p in store.root.iterdir() if store.exists(p.name)}
    return ModelAccess(
        load=load,
        test_data=test_data,
        input_shape=tuple(dataset().image_shape),
        device=device,
        cards=cards,
        log=log,
    )


def analyze(
    spec: GridSpec, models: list[str] | None = None, log=print, with_models: bool = True
) -> dict[str, Path]:
    """Write OUTPUT/report for the grid's evaluated models (or those matching `models`)."""
    # Small tensor operations oversubscribe the cores at torch's default thread count when other
    # processes share the machine (14 s quiet, several minutes under load); trials and actors
    # set theirs, and the analysis takes a trial's share.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec.resources.trial_cpus)))
    try:
        return _analyze(spec, models, log, with_models)
    finally:
        torch.set_num_threads(threads)


def _analyze(spec: GridSpec, models, log, with_models: bool) -> dict[str, Path]:
    from apgrid.grid import plan as planner

    remote = remote_results(spec.output, spec.name)
    # read one model (or dense/pruned pair) at a time
    samples = remote.open_samples() if remote else open_samples(spec.output_dir)
    if not samples.model_ids:
        raise AnalysisError(f"analyze: {spec.output_dir} has no evaluated models yet")
    samples = select_models(samples.select(p.model_id for p in planner.all_models(spec)), models)
    access = model_access(spec, log) if with_models else None
    store = ModelStore(spec.output_dir, remote)
    cards = {m: store.card(m) for m in samples.model_ids if store.exists(m)}
    reported = {m: card["reported"] for m, card in cards.items() if card.get("reported")}
    deviations = {c["method"]: c["deviations"] for c in cards.values() if "deviations" in c}
    return write_report(
        samples, spec.output_dir / "report", spec.name, spec.analysis, access, reported, deviations
    )
