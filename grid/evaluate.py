"""The evaluate stage: test samples split into shards, processed by a pool of Ray actors.

The test tensors go into Ray's object store once; each actor loads a model the first time it is
given one of its shards and keeps it. Shards are written as they finish (a retried shard replaces
its own file) and merged by sample index into the model's Parquet partition when all are in.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import ray
import torch

from apgrid.errors import short_reason
from apgrid.grid.errors import GridError, ResumableError
from apgrid.grid.faults import maybe_fail
from apgrid.grid.plan import ModelPlan
from apgrid.grid.progress import eta
from apgrid.grid.spec import GridSpec
from apgrid.grid.store import ModelStore, SampleStore
from apgrid.trainables.evaluation import (
    EvalSettings,
    ThreatModel,
    attack_bytes_per_sample,
    effective_batch_size,
    evaluate_samples,
    fit_batch_size,
    memory_budget,
    shard_ranges,
)
from apgrid.trainables.models import build_model, resolve_device


@ray.remote(max_restarts=2, max_task_retries=2)
class EvalWorker:
    """Holds the test set and every model it has been given, each loaded once."""

    def __init__(
        self, output: str, dataset_info: dict, threads: int, device: str, gpus: float = 0, fault=None
    ):
        torch.set_num_threads(max(1, threads))
        self.threads, self.gpus = threads, gpus
        self.fault = fault
        self.store = ModelStore(Path(output))
        self.info = dataset_info  # image shape, classes, normalisation: what models are built from
        self.data = None  # the test set itself, fetched from the object store by the first shard
        self.device = resolve_device(device)
        self.models: dict[str, torch.nn.Module] = {}

    def _build(self, arch: str) -> torch.nn.Module:
        d = self.info
        return build_model(arch, d["image_shape"][0], d["num_classes"], d["mean"], d["std"])

    def batch_size_for(self, arch: str, block_size: int) -> tuple[int, int, int]:
        """(batch size, estimated bytes per sample, budget) for `arch`'s dense model on this
        actor's share of its device: its GPUs, or its CPUs' share of the node's memory."""
        model = self._build(arch).to(self.device).eval()
        per_sample = attack_bytes_per_sample(model, tuple(self.info["image_shape"]))
        share = (self.gpus or 1.0) if self.device.type == "cuda" else self.threads / (os.cpu_count() or 1)
        budget = memory_budget(self.device, share)
        return fit_batch_size(block_size, per_sample, budget), per_sample, budget

    def _model(self, model_id: str, arch: str) -> torch.nn.Module:
        if model_id not in self.models:
            model = self.store.load_model(model_id, self.info["image_shape"], self.info["num_classes"])
            self.models = {model_id: model.to(self.device).eval()}  # keep the current model only
        return self.models[model_id]

    def peak_rss_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    def evaluate(
        self,
        data: list,
        model_id: str,
        arch: str,
        signed: bool,
        start: int,
        end: int,
        threat: ThreatModel,
        settings: EvalSettings,
    ) -> tuple[pd.DataFrame, float, float]:
        """The shard's rows, the seconds it took here (queueing and transfer excluded) and the CPU
        seconds this process spent meanwhile (below the seconds: it waited for a core).
        `data` is [the test set's ref]: each call carries it, so a restarted actor fetches it
        again, and the constructor takes none (Ray warns that restarts may fail when it does,
        ray#53727). The list keeps Ray from fetching the whole set for every shard."""
        if self.data is None:
            self.data = ray.get(data[0])
        began, cpu_began = time.perf_counter(), time.process_time()
        model = self._model(model_id, arch)
        maybe_fail(self.fault, "evaluate", start, model_id, key="shard")  # tests: die mid-shard
        x, y = self.data["x"][start:end], self.data["y"][start:end]
        rows = evaluate_samples(model, x, y, start, threat, settings, signed, self.device)
        return rows, time.perf_counter() - began, time.process_time() - cpu_began


@dataclass
class EvaluationReport:
    """What one run_evaluation measured: the seconds each shard took on its actor, the CPU seconds
    its actor spent meanwhile, the actors' peak resident memory, and the seconds before the first
    shard was sent (actors started, batch sizes chosen). Benchmarks read these; the grid logs the
    peak memory."""

    startup_seconds: float = 0.0
    shard_seconds: list[float] = field(default_factory=list)
    shard_cpu_seconds: list[float] = field(default_factory=list)
    actor_peak_rss_mb: list[float] = field(default_factory=list)


@dataclass
class ShardTask:
    plan: ModelPlan
    start: int
    end: int


def metadata_columns(spec: GridSpec, plan: ModelPlan, card: dict, batch_size: int) -> dict:
    s, t = spec.evaluation.settings, spec.threat_model
    return {
        "grid": spec.name,
        "model_id": plan.model_id,
        "dense_model_id": plan.dense_model_id,
        "role": plan.role,
        "dataset": spec.dataset.name,
        "arch": plan.arch,
        "method": plan.method,
        "sparsity": plan.sparsity,
        "sparsity_measured": card.get("measured_sparsity", 0.0),
        "seed": plan.seed,
        "norm": t.norm,
        "eps": t.eps,
        "pgd_steps": s.pgd_steps,
        "autoattack_version": s.autoattack_version,
        "autoattack_attacks": s.autoattack_ensemble,
        "fmn_steps": s.fmn_steps,
        "fmn_step_size": s.fmn_step_size,
        "eval_seed": s.seed,
        "eval_batch_size": batch_size,
    }


def resolve_batch_sizes(
    spec: GridSpec, archs: list[str], samples: SampleStore, actors: list, log=print
) -> dict[str, int]:
    """Samples per model call for each architecture, fixed for the whole grid (the batch seeds
    AutoAttack): a number from the spec; else the one recorded in rows already written, so a
    resumed grid keeps it; else the smallest of the actors' estimates for the dense model, so it
    fits the smallest card (or memory share) any of them landed on."""
    settings = spec.evaluation.settings
    if settings.batch_size != "auto":
        return {arch: effective_batch_size(settings) for arch in archs}
    recorded = samples.recorded_batch_sizes()
    sizes = {}
    for arch in archs:
        if arch in recorded:
            sizes[arch] = recorded[arch]
            log(f"[evaluate] batch size {arch}: {sizes[arch]}, as its rows already written")
            continue
        try:
            estimates = ray.get([a.batch_size_for.remote(arch, settings.block_size) for a in actors])
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, MemoryError):
                raise GridError(f"evaluate: {arch}: {exc.cause}") from None
            raise
        sizes[arch], per_sample, budget = min(estimates, key=lambda e: (e[0], e[2]))
        of = f"smallest of {len(actors)} actors' " if len(actors) > 1 else ""
        log(
            f"[evaluate] batch size {arch}: {sizes[arch]} (block {settings.block_size}; "
            f"~{per_sample / 2**20:.1f} MB a sample in an attack step, "
            f"{of}{budget / 2**20:.0f} MB budget per actor)"
        )
    return sizes


def out_of_memory(
    exc: ray.exceptions.RayTaskError, task: ShardTask, batch_size: int, spec: GridSpec
) -> ResumableError | None:
    """A shard that ran out of (GPU) memory, as one line saying how to go on; None otherwise.
    The batch size is part of the results, so the fix is more memory per actor, not a smaller
    batch: resources are not part of a grid's identity and may change."""
    if not isinstance(exc.cause, (torch.OutOfMemoryError, MemoryError)):
        return None
    cause = short_reason(exc.cause) if str(exc.cause).strip() else "out of memory"
    return ResumableError(
        f"evaluate: {task.plan.model_id} [{task.start}, {task.end}) ran out of memory at batch "
        f"size {batch_size} ({cause}); give each actor more memory (a larger "
        f"resources.actor_gpus, so fewer actors share a card, or actor_cpus) and `apgrid launch "
        f"SPEC --output {spec.output_dir}` to continue (`apgrid resume` if another process held "
        f"the memory); finished shards are kept"
    )


def run_evaluation(
    spec: GridSpec,
    plans: list[ModelPlan],
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    dataset_info: dict,
    on_model_done,
    log=print,
    fault=None,
) -> EvaluationReport:
    """Evaluate every plan whose Parquet partition is missing; call on_model_done(plan, rows).
    A shard whose actor dies is retried by Ray on the restarted actor (max_task_retries); past
    that, on a fresh actor that replaces the dead one."""
    output = spec.output_dir
    samples, models = SampleStore(output, spec.name), ModelStore(output)
    ranges = shard_ranges(len(test_y), spec.evaluation.settings.block_size, spec.evaluation.shards)
    todo = [p for p in plans if not samples.is_done(p.model_id)]
    tasks = [ShardTask(p, s, e) for p in todo for s, e in ranges if not samples.shard_done(p.model_id, s, e)]
    for plan in todo:  # models whose shards all survived a crash only need the merge
        if all(samples.shard_done(plan.model_id, s, e) for s, e in ranges):
            on_model_done(plan, samples.finalize(plan.model_id, ranges))
    report, began = EvaluationReport(), time.perf_counter()
    if not tasks:
        return report
    res = spec.resources
    data_ref = ray.put({"x": test_x, "y": test_y})
    info = {**dataset_info, "image_shape": tuple(test_x.shape[1:])}
    n_actors = min(spec.evaluation.actors, len(tasks))

    def new_actor():
        return EvalWorker.options(num_cpus=res.actor_cpus, num_gpus=res.actor_gpus).remote(
            str(output), info, int(max(1, res.actor_cpus)), res.device, res.actor_gpus, fault
        )

    actors = [new_actor() for _ in range(n_actors)]
    replacements = 2 * n_actors  # a shard that kills every actor it meets must not loop forever
    log(
        f"[evaluate] {len(todo)} models x {len(ranges)} shards = {len(tasks)} shard tasks "
        f"on {n_actors} actors"
    )
    cards = {p.model_id: models.card(p.model_id) for p in todo}
    remaining = {p.model_id: sum(1 for t in tasks if t.plan.model_id == p.model_id) for p in todo}
    queue, in_flight, done, started = list(tasks), {}, 0, time.time()
    stopping = None  # an out-of-memory error, raised once the shards in flight are written
    idle = list(actors)

    def submit(actor, task):
        ref = actor.evaluate.remote(
            [data_ref],
            task.plan.model_id,
            task.plan.arch,
            task.plan.role == "dense",
            task.start,
            task.end,
            spec.threat_model,
            settings[task.plan.arch],
        )
        in_flight[ref] = (actor, task)

    try:
        batch_sizes = resolve_batch_sizes(spec, sorted({p.arch for p in todo}), samples, actors, log)
        settings = {arch: replace(spec.evaluation.settings, batch_size=n) for arch, n in batch_sizes.items()}
        report.startup_seconds = time.perf_counter() - began
        while queue or in_flight:
            while idle and queue:
                submit(idle.pop(), queue.pop(0))
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor, task = in_flight.pop(ready[0])
            try:
                rows, seconds, cpu_seconds = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                oom = out_of_memory(exc, task, batch_sizes[task.plan.arch], spec)
                if oom is None:
                    raise
                if stopping is None and in_flight:
                    log(f"[evaluate] {oom}; writing the {len(in_flight)} shards in flight first")
                stopping = stopping or oom
                queue.clear()  # the other actors' shards in flight are still written
                idle.append(actor)
                continue
            except ray.exceptions.RayActorError:
                log(
                    f"[evaluate] actor lost on {task.plan.model_id} [{task.start}, {task.end}); "
                    f"requeued on a new actor"
                )
                queue.insert(0, task)
                if replacements > 0:
                    replacements -= 1
                    actors.append(new_actor())
                    idle.append(actors[-1])
                continue  # the dead actor is not returned to the idle list
            idle.append(actor)
            while idle and queue:  # its next shard first: the actor works while the driver writes
                submit(idle.pop(), queue.pop(0))
            rows = rows.assign(
                **metadata_columns(spec, task.plan, cards[task.plan.model_id], batch_sizes[task.plan.arch])
            )
            maybe_fail(fault, "evaluate", task.start, task.plan.model_id, key="write")  # disk full
            samples.write_shard(task.plan.model_id, task.start, task.end, rows)
            report.shard_seconds.append(seconds)
            report.shard_cpu_seconds.append(cpu_seconds)
            done += 1
            remaining[task.plan.model_id] -= 1
            elapsed = time.time() - started
            log(
                f"[evaluate] {done}/{len(tasks)} shards  {task.plan.model_id} "
                f"[{task.start}, {task.end}) in {seconds:.1f}s  ({elapsed:.0f}s elapsed"
                f"{eta(elapsed, done, len(tasks))})"
            )
            if remaining[task.plan.model_id] == 0:
                on_model_done(task.plan, samples.finalize(task.plan.model_id, ranges))
            if not idle and not in_flight and queue:
                raise ResumableError(
                    f"evaluate: every evaluation actor died; `apgrid resume {output}` continues"
                )
        if stopping:
            raise stopping
        report.actor_peak_rss_mb = _stop(actors, report=True)
    finally:  # a stopped evaluation must not leave actors holding CPUs in a long-lived Ray
        _stop(actors, report=False)
    peaks = report.actor_peak_rss_mb
    if peaks:
        log(f"[evaluate] actors' peak RSS {max(peaks):.0f} MB (max of {len(peaks)})")
    return report


def _stop(actors, report: bool) -> list[float]:
    """Kill the actors (again: a no-op); with `report`, first ask the live ones their peak RSS."""
    peaks = []
    for actor in actors:
        if report:
            try:
                peaks.append(ray.get(actor.peak_rss_mb.remote(), timeout=30))
            except (ray.exceptions.RayError, TimeoutError):
                pass  # a dead actor has nothing to report
        ray.kill(actor)
    return peaks
