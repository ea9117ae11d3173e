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
from apgrid.grid.objectstore import remote_results
from apgrid.grid.plan import ModelPlan, fewer_shards_note
from apgrid.grid.progress import StageBar, eta
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
    settings_columns,
    shard_ranges,
    tune_model_fmn,
)
from apgrid.trainables.models import build_model, resolve_device


@ray.remote(max_restarts=2, max_task_retries=2)
class EvalWorker:
    """Holds the test set and every model it has been given, each loaded once."""

    def __init__(
        self,
        output: str,
        dataset_info: dict,
        threads: int,
        device: str,
        gpus: float = 0,
        fault=None,
        results: tuple[str, str] | None = None,
    ):
        torch.set_num_threads(max(1, threads))
        self.threads, self.gpus = threads, gpus
        self.fault = fault
        self.store = ModelStore(Path(output), remote_results(*results) if results else None)
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

    def _fetch(self, data: list) -> None:
        """The test set, from the object store the first time (see evaluate's `data`)."""
        if self.data is None:
            self.data = ray.get(data[0])

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
        fmn_config=None,
    ) -> tuple[pd.DataFrame, float, float, str, list[str]]:
        """The shard's rows, the seconds it took here (queueing and transfer excluded), the CPU
        seconds this process spent meanwhile (below the seconds: it waited for a core), and where
        it ran: the Ray node id and the GPU ids Ray assigned this actor (fake ones included).
        `fmn_config`: HO-FMN's pick for the model (`tune` searched it once, on one actor).
        `data` is [the test set's ref]: each call carries it, so a restarted actor fetches it
        again, and the constructor takes none (Ray warns that restarts may fail when it does,
        ray#53727). The list keeps Ray from fetching the whole set for every shard."""
        self._fetch(data)
        began, cpu_began = time.perf_counter(), time.process_time()
        model = self._model(model_id, arch)
        maybe_fail(self.fault, "evaluate", start, model_id, key="shard")  # tests: die mid-shard
        x, y = self.data["x"][start:end], self.data["y"][start:end]
        rows = evaluate_samples(model, x, y, start, threat, settings, signed, self.device, fmn_config)
        context = ray.get_runtime_context()
        node, gpus = context.get_node_id(), [str(g) for g in ray.get_gpu_ids()]
        return rows, time.perf_counter() - began, time.process_time() - cpu_began, node, gpus

    def tune(self, data: list, model_id: str, arch: str, threat: ThreatModel, settings: EvalSettings):
        """HO-FMN's pick for the model, searched on the first test samples (tune_model_fmn): once
        per model, whichever actor runs it; the scheduler hands it to every shard of the model."""
        self._fetch(data)
        model = self._model(model_id, arch)
        return tune_model_fmn(model, self.data["x"], self.data["y"], threat, settings)


@dataclass
class EvaluationReport:
    """What one run_evaluation measured: the seconds each shard took on its actor, the CPU seconds
    its actor spent meanwhile, the actors' peak resident memory, and the seconds before the first
    shard was sent (actors started, batch sizes chosen). Benchmarks read these; the grid logs the
    peak memory."""

    startup_seconds: float = 0.0
    hofmn_searches: int = 0  # HO-FMN searches run: one per model evaluated now, when tuning is on
    shard_seconds: list[float] = field(default_factory=list)
    shard_cpu_seconds: list[float] = field(default_factory=list)
    actor_peak_rss_mb: list[float] = field(default_factory=list)


@dataclass
class ShardTask:
    plan: ModelPlan
    start: int
    end: int


def metadata_columns(spec: GridSpec, plan: ModelPlan, card: dict, batch_size: int) -> dict:
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
        **settings_columns(spec.threat_model, spec.evaluation.settings, batch_size),
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


def actors_that_fit(nodes: list[dict], cpus: float, gpus: float) -> int:
    """How many actors of `cpus` CPUs and `gpus` GPUs the cluster's live nodes hold at once,
    node by node (ray.nodes()). More actors than fit would wait for resources that never come."""
    total = 0
    for node in nodes:
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        fits = [int(res.get("CPU", 0) / cpus + 1e-9)] if cpus > 0 else []
        fits += [int(res.get("GPU", 0) / gpus + 1e-9)] if gpus > 0 else []
        total += min(fits) if fits else 0
    return total


class ShardScheduler:
    """Keeps a pool of evaluation actors busy with shard tasks: an actor that returns a shard gets
    the next one before the driver writes the rows; an actor that dies is replaced (a bounded
    number of times: a shard that kills every actor it meets must not loop forever) and its shard
    requeued; a shard out of memory stops the queue, and the shards in flight are still written."""

    def __init__(self, spec: GridSpec, tasks: list[ShardTask], data_ref, info: dict, fault, log):
        self.spec, self.data_ref, self.info, self.fault, self.log = spec, data_ref, info, fault, log
        self.queue = list(tasks)
        self.in_flight: dict = {}  # result ref -> (actor, task)
        self.actors: list = []
        self.idle: list = []
        self.settings: dict[str, EvalSettings] = {}  # per architecture, once batch sizes are known
        self.stopping: ResumableError | None = None
        self.nodes: dict[str, set[str]] = {}  # model id -> Ray node ids its shards ran on
        self.gpu_ids: dict[str, set[str]] = {}  # model id -> the GPU ids Ray gave its actors
        self.started: dict[str, float] = {}  # model id -> when its first shard was dispatched
        # HO-FMN's pick per model: one actor searches it (EvalWorker.tune) before the model's
        # shards go, each carrying it, so a model is searched once, not once per actor it meets
        self.tuning = bool(spec.evaluation.settings.fmn_tuning_trials)
        self.fmn_configs: dict[str, object] = {}
        self.searching: dict = {}  # the ref of a search in flight -> its model id
        self.searches = 0  # made, counted apart from the picks: a model searched twice shows
        n_actors = min(spec.evaluation.actors, len(tasks))
        for _ in range(n_actors):
            self.add_actor()
        self.replacements_left = 2 * n_actors

    def add_actor(self) -> None:
        res = self.spec.resources
        actor = EvalWorker.options(num_cpus=res.actor_cpus, num_gpus=res.actor_gpus).remote(
            str(self.spec.output_dir),
            self.info,
            int(max(1, res.actor_cpus)),
            res.device,
            res.actor_gpus,
            self.fault,
            (self.spec.output, self.spec.name),
        )
        self.actors.append(actor)
        self.idle.append(actor)

    def _next(self) -> tuple[str, ShardTask] | None:
        """What an idle actor does next: ("shard", the first queued shard whose model's HO-FMN
        pick is known, or every shard when HO-FMN is off), else ("tune", a shard of the first
        model nobody searches yet: search its pick), else None (every queued model is searched
        now; its shards wait)."""
        searched = set(self.searching.values())
        waiting = None
        for i, task in enumerate(self.queue):
            model_id = task.plan.model_id
            if not self.tuning or model_id in self.fmn_configs:
                return "shard", self.queue.pop(i)
            if waiting is None and model_id not in searched:
                waiting = task
        return ("tune", waiting) if waiting is not None else None

    def fill(self) -> None:
        """Give every idle actor a shard, or a model's HO-FMN search, while any can go."""
        while self.idle and self.queue:
            found = self._next()
            if found is None:
                return
            (kind, task), actor = found, self.idle.pop()
            plan, settings = task.plan, self.settings[task.plan.arch]
            self.started.setdefault(plan.model_id, time.time())  # its search is its evaluation's
            if kind == "tune":
                threat = self.spec.threat_model
                ref = actor.tune.remote([self.data_ref], plan.model_id, plan.arch, threat, settings)
                self.searching[ref] = plan.model_id
            else:
                ref = actor.evaluate.remote(
                    [self.data_ref],
                    plan.model_id,
                    plan.arch,
                    plan.role == "dense",
                    task.start,
                    task.end,
                    self.spec.threat_model,
                    settings,
                    self.fmn_configs.get(plan.model_id),
                )
            self.in_flight[ref] = (actor, task)

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.in_flight)

    def next_shard(self) -> tuple[ShardTask, pd.DataFrame, float, float] | None:
        """Wait for one shard: (task, rows, seconds, CPU seconds), or None when it did not come
        back (its actor died, or it ran out of memory) and was dealt with."""
        self.fill()
        ready, _ = ray.wait(list(self.in_flight), num_returns=1)
        actor, task = self.in_flight.pop(ready[0])
        searched = self.searching.pop(ready[0], None)  # a search, not a shard: nothing to write
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:
            self._out_of_memory(exc, task)
            self.idle.append(actor)
            return None
        except ray.exceptions.RayActorError:
            self._actor_lost(actor, None if searched else task)  # a lost search is asked again
            return None
        if searched is not None:
            self.fmn_configs[searched] = result
            self.searches += 1
            self.idle.append(actor)
            return None
        rows, seconds, cpu_seconds, node_id, gpu_ids = result
        self.nodes.setdefault(task.plan.model_id, set()).add(node_id)
        self.gpu_ids.setdefault(task.plan.model_id, set()).update(gpu_ids)
        self.idle.append(actor)
        self.fill()  # its next shard first: the actor works while the driver writes
        return task, rows, seconds, cpu_seconds

    def _out_of_memory(self, exc: ray.exceptions.RayTaskError, task: ShardTask) -> None:
        oom = out_of_memory(exc, task, self.settings[task.plan.arch].batch_size, self.spec)
        if oom is None:
            raise exc
        if self.stopping is None and self.in_flight:
            self.log(f"[evaluate] {oom}; writing the {len(self.in_flight)} shards in flight first")
        self.stopping = self.stopping or oom
        self.queue.clear()  # the other actors' shards in flight are still written

    def _actor_lost(self, actor, task: ShardTask | None) -> None:
        """`task`: the shard it held, requeued; None for a search, which its model's shards,
        still queued, ask again."""
        # Ray may be restarting it (max_restarts): stop that, or the restarted actor would hold
        # the resources its replacement needs (on a full GPU node the replacement would wait forever)
        ray.kill(actor, no_restart=True)
        if task is None:
            self.log("[evaluate] actor lost during an HO-FMN search; searched again on another actor")
        else:
            self.log(
                f"[evaluate] actor lost on {task.plan.model_id} [{task.start}, {task.end}); "
                f"requeued on a new actor"
            )
            self.queue.insert(0, task)
        if self.replacements_left > 0:
            self.replacements_left -= 1
            self.add_actor()
        if not self.idle and not self.in_flight:
            raise ResumableError(
                f"evaluate: every evaluation actor died; `apgrid resume {self.spec.output_dir}` continues"
            )

    def stop(self, report: bool) -> list[float]:
        return _stop(self.actors, report)


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
    """Evaluate every plan whose Parquet partition is missing; call on_model_done(plan, rows,
    placement), placement being {"nodes": Ray node ids, "gpu_ids": GPU ids} of the actors that
    ran its shards now and "started", when its first shard was dispatched (empty for a model
    merged from shards written before). A shard whose
    actor dies is retried by Ray on the restarted actor (max_task_retries); past that, on a
    fresh actor that replaces the dead one."""
    output = spec.output_dir
    remote = remote_results(spec.output, spec.name)
    samples, models = SampleStore(output, spec.name, remote), ModelStore(output, remote)
    ranges = shard_ranges(len(test_y), spec.evaluation.settings.block_size, spec.evaluation.shards)
    todo = [p for p in plans if not samples.is_done(p.model_id)]
    tasks = [ShardTask(p, s, e) for p in todo for s, e in ranges if not samples.shard_done(p.model_id, s, e)]
    for plan in todo:  # models whose shards all survived a crash only need the merge
        if all(samples.shard_done(plan.model_id, s, e) for s, e in ranges):
            on_model_done(plan, samples.finalize(plan.model_id, ranges), {})
    report, began = EvaluationReport(), time.perf_counter()
    if not tasks:
        return report
    res = spec.resources
    fit = actors_that_fit(ray.nodes(), res.actor_cpus, res.actor_gpus)
    if fit < min(spec.evaluation.actors, len(tasks)):
        log(
            f"[evaluate] the cluster holds {fit} actors of {res.actor_cpus} CPUs and "
            f"{res.actor_gpus} GPUs now; using {max(1, fit)} of the {spec.evaluation.actors} asked"
        )
        spec = replace(spec, evaluation=replace(spec.evaluation, actors=max(1, fit)))
    info = {**dataset_info, "image_shape": tuple(test_x.shape[1:])}
    pool = ShardScheduler(spec, tasks, ray.put({"x": test_x, "y": test_y}), info, fault, log)
    asked, block = spec.evaluation.shards, spec.evaluation.settings.block_size
    log(
        f"[evaluate] {len(todo)} models x {len(ranges)} shards"
        f"{fewer_shards_note(asked, len(ranges), len(test_y), block)} = {len(tasks)} shard tasks "
        f"on {len(pool.actors)} actors"
    )
    cards = {p.model_id: models.card(p.model_id) for p in todo}
    remaining = {p.model_id: sum(1 for t in tasks if t.plan.model_id == p.model_id) for p in todo}
    done, started = 0, time.time()
    bar = StageBar("evaluate", len(tasks), "shards", log)
    try:
        archs = sorted({p.arch for p in todo})
        batch_sizes = resolve_batch_sizes(spec, archs, samples, pool.actors, log)
        pool.settings = {a: replace(spec.evaluation.settings, batch_size=n) for a, n in batch_sizes.items()}
        report.startup_seconds = time.perf_counter() - began
        while pool.busy:
            shard = pool.next_shard()
            if shard is None:
                continue
            task, rows, seconds, cpu_seconds = shard
            model_id = task.plan.model_id
            rows = rows.assign(
                **metadata_columns(spec, task.plan, cards[model_id], batch_sizes[task.plan.arch])
            )
            maybe_fail(fault, "evaluate", task.start, model_id, key="write")  # disk full
            samples.write_shard(model_id, task.start, task.end, rows)
            report.shard_seconds.append(seconds)
            report.shard_cpu_seconds.append(cpu_seconds)
            done += 1
            remaining[model_id] -= 1
            elapsed = time.time() - started
            if bar:
                bar.advance(f"{model_id} [{task.start}, {task.end})")
            else:
                log(
                    f"[evaluate] {done}/{len(tasks)} shards  {model_id} "
                    f"[{task.start}, {task.end}) in {seconds:.1f}s  ({elapsed:.0f}s elapsed"
                    f"{eta(elapsed, done, len(tasks))})"
                )
            if remaining[model_id] == 0:
                placement = {
                    "nodes": pool.nodes.get(model_id, set()),
                    "gpu_ids": pool.gpu_ids.get(model_id, set()),
                    "started": pool.started[model_id],
                }
                on_model_done(task.plan, samples.finalize(model_id, ranges), placement)
        if pool.stopping:
            raise pool.stopping
        report.hofmn_searches = pool.searches
        report.actor_peak_rss_mb = pool.stop(report=True)
    finally:  # a stopped evaluation must not leave actors holding CPUs in a long-lived Ray
        bar.close()
        pool.stop(report=False)
    peaks = report.actor_peak_rss_mb
    if peaks:
        log(f"[evaluate] actors' peak RSS {max(peaks):.0f} MB (max of {len(peaks)})")
    if pool.tuning:
        evaluated = len({t.plan.model_id for t in tasks})
        log(f"[evaluate] HO-FMN searched {report.hofmn_searches} times for {evaluated} models")
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
