"""The analyze stage: the per-sample Parquet, plus the stored models for costs, transfer attacks and
decision slices, into OUTPUT/report. Used by the grid's last stage and by `apgrid analyze`."""

from __future__ import annotations

import fnmatch
import re
import shutil
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


def report_folder(spec: GridSpec, models: list[str] | None, output: Path | None) -> Path:
    """Where a report goes. The full report is OUTPUT/report; a partial one (`models`) never goes
    there: it goes to `output`, by default OUTPUT/report-partial/<the patterns>."""
    full = spec.output_dir / "report"
    if output is None:
        if not models:
            return full
        name = "+".join(re.sub(r"[^A-Za-z0-9._-]+", "", p).strip("-_.") or "all" for p in models)
        return spec.output_dir / "report-partial" / name
    output = Path(output).expanduser().resolve()
    if models and (output == full or full in output.parents):
        raise AnalysisError(
            f"--output: {output} is the full report's folder; a partial report goes elsewhere"
        )
    if output.is_dir() and any(output.iterdir()) and not (output / "report.md").is_file():
        raise AnalysisError(f"--output: {output} holds files and no report; give an empty or new folder")
    return output


def analyze(
    spec: GridSpec,
    models: list[str] | None = None,
    log=print,
    with_models: bool = True,
    output: Path | None = None,
) -> dict[str, Path]:
    """Write OUTPUT/report for the grid's evaluated models, or a partial report of those matching
    `models` to `output` (see report_folder): a report folder holds one report's files only."""
    # Small tensor operations oversubscribe the cores at torch's default thread count when other
    # processes share the machine (14 s quiet, several minutes under load); trials and actors
    # set theirs, and the analysis takes a trial's share.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec.resources.trial_cpus)))
    try:
        return _analyze(spec, models, log, with_models, report_folder(spec, models, output))
    finally:
        torch.set_num_threads(threads)


def _analyze(spec: GridSpec, models, log, with_models: bool, folder: Path) -> dict[str, Path]:
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
    reported.update(_reported_by_methods(spec, samples.model_ids))
    deviations = {c["method"]: c["deviations"] for c in cards.values() if "deviations" in c}
    partial = folder != spec.output_dir / "report"
    if partial and folder.is_dir():
        shutil.rmtree(folder)  # a previous partial report's figures would stay beside the new tables
    cache = spec.output_dir / "analysis_cache" / ("partial" if partial else "")
    return write_report(samples, folder, spec.name, spec.analysis, access, reported, deviations, cache=cache)


def _reported_by_methods(spec: GridSpec, model_ids) -> dict[str, dict]:
    """{model id: its paper's figures} for the pruned models whose method's `reported` names
    their architecture and sparsity (thin-ice.yaml carries the seed paper's Table 1 so)."""
    from apgrid.grid import plan as planner

    methods = {m.name: m for m in spec.prune.methods}
    found = {}
    for p in planner.pruned_models(spec):
        figures = methods[p.method].reported_for(p.arch, p.sparsity) if p.method in methods else None
        if figures and p.model_id in model_ids:
            found[p.model_id] = {**figures, "retrained": True}  # the paper's model is not this one
    return found
