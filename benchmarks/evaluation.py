"""Evaluation throughput: sharding scale-out, wrapper overhead, where the time goes, work avoided,
peak memory per actor and batch size. Prints a table per part and one JSON line with every figure.

    python benchmarks/evaluation.py                      # digits, a model trained here (~5 min)
    python benchmarks/evaluation.py --grid runs/cifar10-cpu --block-size 100 --scale-samples 400
    python benchmarks/evaluation.py --dataset cifar10 --root data/cifar10 --arch resnet18 \\
        --train-samples 5000 --epochs 3 --eps 0.0314 --samples 50 --threads 2 --project \\
        --skip scale wrapper batch                        # part 4 on a ResNet-18 (~35 min)

Each timing is the median of --repeats runs; configurations alternate within a repeat, so drift
on a noisy machine hits them alike. Targets (issue 6): scale-out efficiency >= 0.9, wrapper
overhead <= 3 %, share of time in model forward/backward >= 90 %. Part 7 has no target: it shows
why `batch_size: auto` keeps the whole block.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import platform
import pstats
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from apgrid.trainables.attacks import fmn as apgrid_fmn
from apgrid.trainables.data import load_dataset
from apgrid.trainables.evaluation import EvalSettings, ThreatModel, evaluate_samples


@dataclass
class Subject:
    model: torch.nn.Module
    ds: object
    threat: ThreatModel
    arch: str
    dataset: dict  # the spec's dataset section
    described: str


def load_subject(args) -> Subject:
    """The grid's first dense model, or one adversarially trained here (FGSM-RS) on the first
    --train-samples of --dataset: by default a digits CNN in about a minute."""
    from apgrid.trainables.models import build_model

    if args.grid:
        from apgrid.grid.runner import load_grid_spec
        from apgrid.grid.store import ModelStore

        spec = load_grid_spec(Path(args.grid))
        ds = load_dataset(spec.dataset.name, spec.dataset.root)
        store = ModelStore(spec.output_dir)
        model_id = next(p.name for p in sorted(store.root.iterdir()) if p.name.startswith("dense-"))
        card = store.card(model_id)
        model = store.load_model(model_id, ds.image_shape, ds.num_classes)
        return Subject(
            model.eval(),
            ds,
            spec.threat_model,
            card["arch"],
            {"name": spec.dataset.name, "root": spec.dataset.root},
            f"{model_id} ({spec.dataset.name})",
        )
    from apgrid.trainables.training import Recipe, train_epoch

    ds = load_dataset(args.dataset, args.root)
    torch.manual_seed(0)
    model = build_model(args.arch, ds.image_shape[0], ds.num_classes, ds.mean, ds.std)
    recipe = Recipe(trainer="fgsm-rs", epochs=args.epochs, lr=0.05, batch_size=64)
    threat = ThreatModel(norm="Linf", eps=args.eps)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9)
    n = min(args.train_samples or len(ds.y_train), len(ds.y_train))
    began = time.perf_counter()
    torch.set_num_threads(args.train_threads)
    for epoch in range(recipe.epochs):
        train_epoch(
            model,
            opt,
            ds.x_train[:n],
            ds.y_train[:n],
            recipe=recipe,
            eps=threat.eps,
            norm=threat.norm,
            seed=0,
            epoch=epoch,
            device=torch.device("cpu"),
        )
    torch.set_num_threads(args.threads)
    print(
        f"trained {args.arch} on {n} {args.dataset} samples ({args.epochs} epochs FGSM-RS) in "
        f"{time.perf_counter() - began:.0f} s",
        flush=True,
    )
    return Subject(
        model.eval(),
        ds,
        threat,
        args.arch,
        {"name": args.dataset, **({"root": args.root} if args.root else {})},
        f"{args.arch} trained here ({args.dataset}, {n} samples, FGSM-RS, {args.epochs} epochs)",
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# -- 2. wrapper overhead ------------------------------------------------------------------------


def wrapper_overhead(model, x, y, threat, settings, repeats):
    from pyautoattack import AutoAttack
    from secmlt.adv.evasion.fmn import FMN
    from secmlt.models.pytorch.base_pytorch_nn import BasePyTorchClassifier
    from torch.utils.data import DataLoader, TensorDataset

    def ours_aa(x=x, y=y):
        from apgrid.trainables.attacks import autoattack

        return autoattack(
            model,
            x,
            y,
            eps=threat.eps,
            norm=threat.norm,
            version=settings.autoattack_version,
            seed=0,
            batch_size=len(y),
        )

    def plain_aa(x=x, y=y):
        adversary = AutoAttack(
            model, eps=threat.eps, norm=threat.norm, version=settings.autoattack_version, seed=0, device="cpu"
        )
        adversary.verbose = False
        return adversary.run_standard_evaluation(x, y, batch_size=len(y))

    def ours_fmn(x=x, y=y):
        return apgrid_fmn(
            model,
            x,
            y,
            norm=threat.norm,
            steps=settings.fmn_steps,
            step_size=settings.fmn_step_size,
            batch_size=len(y),
        )

    def plain_fmn(x=x, y=y):
        attack = FMN(
            perturbation_model="linf",
            num_steps=settings.fmn_steps,
            step_size=settings.fmn_step_size,
            backend="native",
        )
        loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
        return [a for a, _ in attack(BasePyTorchClassifier(model), loader, stream=True)]

    # Warm-up: the first call of an attack pays its imports and lazy set-up (1.4 s for FMN on a
    # CIFAR model, 65 % of one timed call); neither side should be charged for it.
    for fn in (ours_aa, plain_aa, ours_fmn, plain_fmn):
        fn(x[:4], y[:4])
    times = {k: [] for k in ("ours_aa", "plain_aa", "ours_fmn", "plain_fmn")}
    for r in range(repeats):
        order = [
            ("ours_aa", ours_aa),
            ("plain_aa", plain_aa),
            ("ours_fmn", ours_fmn),
            ("plain_fmn", plain_fmn),
        ]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(fn)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "aa_ours_s": med["ours_aa"],
        "aa_plain_s": med["plain_aa"],
        "aa_overhead": med["ours_aa"] / med["plain_aa"] - 1,
        "fmn_ours_s": med["ours_fmn"],
        "fmn_plain_s": med["plain_fmn"],
        "fmn_overhead": med["ours_fmn"] / med["plain_fmn"] - 1,
    }


# -- 4. where the time goes; 5. work avoided ----------------------------------------------------

OUTSIDE_ATTACKS = "clean, other"  # part 4's row for model time outside any wrapped attack


class Counting(torch.nn.Module):
    """Counts the samples pushed through the model, and those with a graph for a backward pass,
    and times the model's passes where they happen: each forward call, and each backward from
    the moment autograd reaches the model's output to the moment it reaches its input (tensor
    hooks; the attack's loss and its own ops fall outside both)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.forward_samples, self.backward_samples = model, 0, 0
        self.calls: list[tuple[tuple, bool]] = []  # (input shape, with a graph) of every call
        self.forward_s = self.backward_s = 0.0
        self._backward_began = None
        self.attack = OUTSIDE_ATTACKS  # set by attributed(): the attack now running
        self.model_s_by_attack: dict[str, float] = {}

    def _add(self, seconds):
        self.model_s_by_attack[self.attack] = self.model_s_by_attack.get(self.attack, 0.0) + seconds

    def forward(self, x):
        graph = torch.is_grad_enabled() and x.requires_grad
        self.forward_samples += len(x)
        self.backward_samples += len(x) if graph else 0
        self.calls.append((tuple(x.shape), graph))
        start = time.perf_counter()
        out = self.model(x)
        seconds = time.perf_counter() - start
        self.forward_s += seconds
        self._add(seconds)
        if graph:
            out.register_hook(self._reached_output)
            x.register_hook(self._reached_input)
        return out

    def _reached_output(self, grad):
        self._backward_began = time.perf_counter()

    def _reached_input(self, grad):
        if self._backward_began is not None:
            seconds = time.perf_counter() - self._backward_began
            self.backward_s += seconds
            self._add(seconds)
            self._backward_began = None


@contextlib.contextmanager
def attributed(counting: Counting, wall_by_attack: dict[str, float]):
    """Label the time of each attack of evaluate_samples (PGD, each of AutoAttack's, FMN): their
    entry points are wrapped for the duration, so `counting` files the model's passes under the
    attack running, and `wall_by_attack` gets each attack's wall time."""
    import pyautoattack.autopgd_base as apgd
    import pyautoattack.fab_base as fab
    import pyautoattack.square as square

    import apgrid.trainables.evaluation as ev

    entry_points = [
        (ev, "pgd", "PGD"),
        (ev, "fmn", "FMN"),
        (apgd.APGDAttack, "perturb", "APGD-CE"),
        (apgd.APGDAttack_targeted, "perturb", "APGD-T"),
        (fab.FABAttack, "perturb", "FAB-T"),
        (square.SquareAttack, "perturb", "Square"),
    ]

    def labelled(fn, label):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            outer, counting.attack = counting.attack, label
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                wall_by_attack[label] = wall_by_attack.get(label, 0.0) + time.perf_counter() - start
                counting.attack = outer

        return run

    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in entry_points]
    try:
        for owner, name, label in entry_points:
            setattr(owner, name, labelled(getattr(owner, name), label))
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def replay_model_time(model, calls) -> float:
    """The model passes alone: every recorded call again, at its batch size, on random inputs,
    with an input-gradient backward pass where the attack took one. No profiler in the way."""
    start = time.perf_counter()
    for shape, graph in calls:
        x = torch.rand(shape)
        if graph:
            x.requires_grad_(True)
            torch.autograd.grad(model(x).sum(), x)
        else:
            with torch.no_grad():
                model(x)
    return time.perf_counter() - start


def projected_share(arch: str, subject: Subject, calls, attack_own_s: float, sampled: int) -> dict:
    """The model share the same evaluation would have with a costlier model of `arch`.

    The attacks' own work (the time outside model passes) depends on the batch shapes and the
    iteration counts, not on the model, so it is carried over from the measured run; the model's
    passes are replayed through `arch` on an evenly spaced sample of the recorded calls. The
    trajectory is held fixed: a model that is more robust keeps more samples under attack."""
    from apgrid.trainables.models import build_model

    ds = subject.ds
    other = build_model(arch, ds.image_shape[0], ds.num_classes, ds.mean, ds.std).eval()
    every = max(1, len(calls) // sampled)
    replay_s = replay_model_time(other, calls[::every]) * every
    return {
        "arch": arch,
        "model_replay_s": replay_s,
        "calls_replayed": len(calls[::every]),
        "model_share": replay_s / (replay_s + attack_own_s),
    }


def profile_and_count(model, x, y, threat, settings, cross_check: bool):
    """The model's share of one evaluate_samples call, timed in place (Counting); with
    `cross_check`, also by cProfile (which taxes every Python call, the model's modules included)
    and by replaying the recorded calls alone (outside the attack, so with warmer caches)."""
    counting, wall_by_attack = Counting(model).eval(), {}
    with attributed(counting, wall_by_attack):
        wall, rows = timed(lambda: evaluate_samples(counting, x, y, 0, threat, settings, True))
    wall_by_attack[OUTSIDE_ATTACKS] = wall - sum(wall_by_attack.values())
    by_attack = {
        k: {"wall_s": v, "model_s": counting.model_s_by_attack.get(k, 0.0)} for k, v in wall_by_attack.items()
    }
    n = len(y)
    # Naive AutoAttack standard: every attack on every sample, all restarts, no early stop:
    # APGD-CE 100 + APGD-T 9x100 + FAB-T 9x100 (x2 passes) + Square 5000 queries.
    naive_aa = 100 + 900 + 1800 + 5000
    result = {
        "wall_s": wall,
        "forward_s": counting.forward_s,
        "backward_s": counting.backward_s,
        "model_share": (counting.forward_s + counting.backward_s) / wall,
        "forward_passes_per_sample": counting.forward_samples / n,
        "backward_passes_per_sample": counting.backward_samples / n,
        "naive_passes_per_sample": naive_aa + settings.pgd_steps + 2 * settings.fmn_steps + 1,
        "clean_correct": int(rows["clean_correct"].sum()),
        "aa_robust": int(rows["aa_correct"].astype(bool).sum()),
        "by_attack": by_attack,
        "calls": counting.calls,
    }
    if not cross_check:
        return result
    profiler = cProfile.Profile()
    profiler.enable()
    evaluate_samples(Counting(model).eval(), x, y, 0, threat, settings, True)
    profiler.disable()
    stats = pstats.Stats(profiler)
    forward = backward = 0.0
    for (file, _, func), (_, _, _, cumulative, _) in stats.stats.items():
        if func == "forward" and file.endswith("benchmarks/evaluation.py"):
            forward += cumulative  # the outermost model call, submodules included
        elif func in ("grad", "backward") and "torch/autograd" in file:
            backward += cumulative
    profiled = sum(s[2] for s in stats.stats.values())  # every function's own time, summed
    model_alone = replay_model_time(model, counting.calls)
    return {
        **result,
        "cprofile_share": (forward + backward) / profiled,
        "model_replay_s": model_alone,
        "model_share_replay": model_alone / wall,
    }


# -- 1. scale-out, 6. memory ----------------------------------------------------------------------


def _evaluate_block(arch: str, data: tuple, state: dict, x, y, threat, settings) -> float:
    """Seconds for one plain evaluate_samples call on one thread, in a process of its own."""
    from apgrid.trainables.models import build_model

    torch.set_num_threads(1)
    model = build_model(arch, *data)
    model.load_state_dict(state)
    start = time.perf_counter()
    evaluate_samples(model.eval(), x, y, 0, threat, settings, True)
    return time.perf_counter() - start


def machine_ceiling(subject: Subject, x, y, settings) -> float:
    """The scale-out this machine allows at best for this work, with no Ray: the same evaluation
    (the first block) in one plain process alone, then in two at once (one thread each); alone /
    the slower of the two. Shared caches, memory bandwidth and the host's other tenants show here."""
    import multiprocessing

    ds = subject.ds
    first = slice(0, settings.block_size)
    job = (
        subject.arch,
        (ds.image_shape[0], ds.num_classes, ds.mean, ds.std),
        subject.model.state_dict(),
        x[first],
        y[first],
        subject.threat,
        settings,
    )
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        alone = pool.apply(_evaluate_block, job)
    with ctx.Pool(2) as pool:
        together = max(pool.starmap(_evaluate_block, [job, job]))
    return alone / together


def ray_side_cpu() -> dict[int, float]:
    """{pid: CPU seconds} of this driver and Ray's own processes (raylet, GCS, agents, idle
    workers), not of the evaluation actors, from /proc (Linux; empty elsewhere). The difference
    of two readings is what Ray and the driver took from the actors' cores."""
    import glob
    import os

    tick = os.sysconf("SC_CLK_TCK")
    seen = {}
    for folder in glob.glob("/proc/[0-9]*"):
        try:
            cmd = Path(folder, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(folder, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(folder[6:])
        ray_own = ("/ray/" in cmd or cmd.startswith("ray::")) and not cmd.startswith("ray::EvalWorker")
        if ray_own or pid == os.getpid():
            seen[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return seen


def steal_and_total() -> tuple[float, float]:
    """Jiffies the hypervisor gave to other guests (steal) and all jiffies, over every CPU, from
    /proc/stat (Linux; zeros elsewhere): a VM's noisy neighbours show here."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return 0.0, 0.0
    return fields[7], sum(fields)


def steal_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def same_outcomes(a, b) -> bool:
    """Per-sample outcomes equal; distances equal up to float rounding (thread counts differ)."""
    import numpy as np

    flags = ["clean_correct", "pgd_correct", "aa_correct", "fmn_found", "sample_idx"]
    return all(a[c].astype(str).tolist() == b[c].astype(str).tolist() for c in flags) and np.allclose(
        a["fmn_eps"].astype(float), b["fmn_eps"].astype(float), rtol=1e-4, equal_nan=True
    )


def scale_out(subject: Subject, x, y, settings, repeats):
    """The grid's own evaluation path (Ray actors over shards) with 1 actor x 1 thread,
    1 actor x 2 threads and 2 actors x 1 thread, on the same model and samples."""
    import ray

    from apgrid.grid.evaluate import run_evaluation
    from apgrid.grid.plan import checkpoint_models
    from apgrid.grid.runner import GridRun, stage_checkpoints
    from apgrid.grid.spec import parse_spec

    model, threat, ds = subject.model, subject.threat, subject.ds
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    configs = {"1 actor x 1 thread": (1, 1), "1 actor x 2 threads": (1, 2), "2 actors x 1 thread": (2, 1)}
    times = {k: [] for k in configs}
    busy = {k: [] for k in configs}  # summed shard seconds on the actors
    startup = {k: [] for k in configs}  # seconds before the first shard: actors up, batch sizes
    ray_cpu = {k: [] for k in configs}  # share of the 2 cores Ray and the driver took
    actor_cpu = {k: [] for k in configs}  # the actors' CPU seconds / their shards' seconds
    steal = {k: [] for k in configs}  # share of the CPUs the hypervisor gave elsewhere
    rows_seen, peaks = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), ckpt)
        for r in range(repeats):
            for name, (actors, threads) in (
                list(configs.items()) if r % 2 == 0 else list(configs.items())[::-1]
            ):
                out = Path(tmp) / f"{r}-{actors}-{threads}"
                ev = {
                    "num_samples": len(y),
                    "block_size": settings.block_size,
                    "shards": len(y),
                    "actors": actors,  # one shard per block
                    "pgd_steps": settings.pgd_steps,
                    "fmn_steps": settings.fmn_steps,
                    "autoattack_version": settings.autoattack_version,
                }
                spec = parse_spec(
                    {
                        "name": "bench",
                        "output": str(out),
                        "threat_model": {"norm": threat.norm, "eps": threat.eps},
                        "evaluation": ev,
                        "resources": {"actor_cpus": threads, "trial_cpus": 1},
                        "checkpoints": [{"name": "m", "arch": subject.arch, "path": str(ckpt)}],
                        "dataset": subject.dataset,
                    }
                )
                stage_checkpoints(GridRun(spec, None, None, lambda m: None))
                plans = checkpoint_models(spec)
                got = {}
                ray_before, steal_before = ray_side_cpu(), steal_and_total()
                seconds, report = timed(
                    lambda: run_evaluation(
                        spec,  # noqa: B023 - called at once, in this iteration
                        plans,  # noqa: B023 - called at once, in this iteration
                        x,
                        y,
                        {"num_classes": ds.num_classes, "mean": ds.mean, "std": ds.std},
                        lambda p, rows, placement: got.update(rows=rows),  # noqa: B023 - called at once, in this iteration
                        log=lambda m: None,
                    )
                )
                times[name].append(seconds)
                ray_cpu[name].append(cpu_used(ray_before, ray_side_cpu()) / (seconds * 2))
                steal[name].append(steal_share(steal_before, steal_and_total()))
                busy[name].append(sum(report.shard_seconds))
                startup[name].append(report.startup_seconds)
                actor_cpu[name].append(sum(report.shard_cpu_seconds) / sum(report.shard_seconds))
                peaks += report.actor_peak_rss_mb
                rows_seen[name] = got["rows"]
    ray.shutdown()
    med = {k: statistics.median(v) for k, v in times.items()}
    med_busy = {k: statistics.median(v) for k, v in busy.items()}
    identical = all(same_outcomes(rows, rows_seen["1 actor x 1 thread"]) for rows in rows_seen.values())
    one, two = med["1 actor x 1 thread"], med["2 actors x 1 thread"]
    # Where the 2-actor run loses against a perfect halving: its actors compute slower when both
    # cores are busy (contention), the actors start and size their batches before any shard runs
    # (start-up), or one idles while the other finishes (the blocks' imbalance), or neither (the
    # driver, Ray's scheduling and the merge).
    contention = med_busy["2 actors x 1 thread"] / med_busy["1 actor x 1 thread"] - 1
    med_startup = {k: statistics.median(v) for k, v in startup.items()}
    idle_tail = (two - med_startup["2 actors x 1 thread"]) / (med_busy["2 actors x 1 thread"] / 2) - 1
    return {
        **{f"{k} s": v for k, v in med.items()},
        "speedup_vs_1x1": one / two,
        "efficiency_vs_1x1": one / two / 2,
        "speedup_vs_1x2": med["1 actor x 2 threads"] / two,
        "efficiency_vs_1x2": med["1 actor x 2 threads"] / two / 2,
        "shard_slowdown_2_actors": contention,
        "makespan_over_busy_half": idle_tail,
        "startup_s_1_actor": med_startup["1 actor x 1 thread"],
        "startup_s_2_actors": med_startup["2 actors x 1 thread"],
        "ray_side_cpu_share_2_actors": statistics.median(ray_cpu["2 actors x 1 thread"]),
        "actor_cpu_per_shard_second_1_actor": statistics.median(actor_cpu["1 actor x 1 thread"]),
        "actor_cpu_per_shard_second_2_actors": statistics.median(actor_cpu["2 actors x 1 thread"]),
        "steal_share_1_actor": statistics.median(steal["1 actor x 1 thread"]),
        "steal_share_2_actors": statistics.median(steal["2 actors x 1 thread"]),
        "blocks": -(-len(y) // settings.block_size),
        "machine_ceiling": statistics.median(
            machine_ceiling(subject, x, y, settings) for _ in range(repeats)
        ),
        "rows_identical": identical,
        "actor_peak_rss_mb": max(peaks) if peaks else float("nan"),
    }


# -- 7. batch size within a block ---------------------------------------------------------------


def batch_sizes(model, x, y, threat, settings, sizes, repeats) -> list[dict]:
    """One block evaluated at several batch sizes (alternating within each repeat)."""
    import dataclasses

    times = {n: [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            chosen = dataclasses.replace(settings, block_size=len(y), batch_size=n)
            times[n].append(timed(lambda: evaluate_samples(model, x, y, 0, threat, chosen, True))[0])  # noqa: B023 - called at once, in this iteration
    return [
        {"batch_size": n, "seconds": statistics.median(t), "s_per_sample": statistics.median(t) / len(y)}
        for n, t in times.items()
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", help="take the first dense model (and dataset) of this grid")
    trained = parser.add_argument_group("without --grid: a model trained here")
    trained.add_argument("--dataset", default="digits", help="dataset (default digits)")
    trained.add_argument(
        "--root",
        help="its folder, as the spec's dataset.root (CIFAR-10: the folder holding cifar-10-batches-bin/)",
    )
    trained.add_argument("--arch", default="digits-cnn", help="architecture (default digits-cnn)")
    trained.add_argument(
        "--train-samples", type=int, help="train on the first N training samples (default all)"
    )
    trained.add_argument("--epochs", type=int, default=4, help="FGSM-RS epochs (default 4)")
    trained.add_argument(
        "--eps",
        type=float,
        default=0.1,
        help="Linf radius, for training and evaluation (default 0.1; CIFAR: 8/255 = 0.0314)",
    )
    trained.add_argument(
        "--train-threads",
        type=int,
        default=2,
        help="threads while training (default 2; the timed parts use 1)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=100,
        help="test samples for the wrapper and profile parts (default 100)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for the wrapper, profile and batch parts (default 1; scale-out sets its own)",
    )
    parser.add_argument("--fmn-steps", type=int, default=100, help="FMN steps (default 100)")
    parser.add_argument(
        "--block-size",
        type=int,
        default=EvalSettings.block_size,
        help="samples per block (default: the grid's, %(default)s); scale-out runs one shard per block",
    )
    parser.add_argument(
        "--scale-samples",
        type=int,
        help="samples for the scale-out part (default: 4 blocks' worth, so that 2 actors share 4 shards)",
    )
    parser.add_argument(
        "--project",
        nargs="*",
        default=["resnet18"],
        metavar="ARCH",
        help="also give the model share projected for these architectures (default: resnet18)",
    )
    parser.add_argument(
        "--project-calls",
        type=int,
        default=200,
        help="model calls replayed per projection (evenly spaced; default 200)",
    )
    parser.add_argument(
        "--cross-check",
        action="store_true",
        help="part 4: also measure the model share by cProfile and by replaying "
        "the model calls alone (two more evaluations' time)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="*",
        metavar="N",
        help="batch sizes to time on one block (default: the block, a half and a quarter of it)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["scale", "wrapper", "profile", "batch"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    subject = load_subject(args)
    model, ds, threat, described = subject.model, subject.ds, subject.threat, subject.described
    x, y = ds.x_test[: args.samples], ds.y_test[: args.samples]
    settings = EvalSettings(fmn_steps=args.fmn_steps, block_size=args.block_size)
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s) "
        f"per process, torch {torch.__version__}, {platform.system()}"
    )
    print(
        f"model: {described}; {args.samples} samples; threat {threat.norm} eps={threat.eps:.4g}; "
        f"blocks of {settings.block_size}; AutoAttack {settings.autoattack_version}, "
        f"FMN {settings.fmn_steps} steps; "
        f"medians of {args.repeats}; {machine}"
    )
    result = {"model": described, "samples": args.samples, "repeats": args.repeats}

    if "wrapper" not in args.skip:
        w = wrapper_overhead(model, x, y, threat, settings, args.repeats)
        result["wrapper"] = w
        print("\n2. wrapper overhead (one process, 1 thread)       apgrid    plain    overhead  target")
        print(
            f"   AutoAttack ({settings.autoattack_version})                  {w['aa_ours_s']:8.2f} "
            f"{w['aa_plain_s']:8.2f}   {w['aa_overhead']:+7.1%}   <= +3 %"
        )
        print(
            f"   FMN                                           {w['fmn_ours_s']:8.2f} "
            f"{w['fmn_plain_s']:8.2f}   {w['fmn_overhead']:+7.1%}   <= +3 %"
        )
    if "profile" not in args.skip:
        p = profile_and_count(model, x, y, threat, settings, args.cross_check)
        calls = p.pop("calls")
        attack_own = p["wall_s"] - p["forward_s"] - p["backward_s"]
        p["projected"] = [
            projected_share(arch, subject, calls, attack_own, args.project_calls) for arch in args.project
        ]
        result["profile"] = p
        print("\n4. where the time goes (one evaluate_samples call, the model's passes timed in place)")
        print(
            f"   model forward {p['forward_s']:.1f} s + backward {p['backward_s']:.1f} s of "
            f"{p['wall_s']:.1f} s = {p['model_share']:.1%} (target >= 90 %); the attacks' own "
            f"work {attack_own:.1f} s"
        )
        print("   by attack          wall s   model s   the attack's own s")
        for name, t in p["by_attack"].items():
            print(f"   {name:<16} {t['wall_s']:8.1f}  {t['model_s']:8.1f}  {t['wall_s'] - t['model_s']:8.1f}")
        if args.cross_check:
            print(
                f"   cross-checks: cProfile {p['cprofile_share']:.1%} (taxes the model's Python "
                f"calls too); the recorded calls replayed alone {p['model_replay_s']:.1f} s = "
                f"{p['model_share_replay']:.1%} (caches warmer than inside the attack)"
            )
        for proj in p["projected"]:
            print(
                f"   projected for {proj['arch']}: its passes would take {proj['model_replay_s']:.1f} s "
                f"beside the attacks' own {attack_own:.1f} s = {proj['model_share']:.1%} "
                f"(same calls; {proj['calls_replayed']} replayed)"
            )
        print("\n5. work avoided (samples through the model, per test sample)")
        print(
            f"   forward {p['forward_passes_per_sample']:.0f}, with backward "
            f"{p['backward_passes_per_sample']:.0f}; naive count "
            f"{p['naive_passes_per_sample']:.0f} (every AutoAttack attack on every sample); "
            f"{p['clean_correct']} clean-correct, {p['aa_robust']} AutoAttack-robust of {args.samples}"
        )
    if "scale" not in args.skip:
        n = args.scale_samples or 4 * settings.block_size
        s = scale_out(subject, ds.x_test[:n], ds.y_test[:n], settings, args.repeats)
        result["scale_out"] = s
        print(f"\n1. sharding scale-out (the grid's Ray actors; AutoAttack + FMN + PGD; {n} samples)")
        for k in ("1 actor x 1 thread s", "1 actor x 2 threads s", "2 actors x 1 thread s"):
            print(f"   {k[:-2]:22s} {s[k]:8.2f} s")
        print(
            f"   speed-up 2 actors vs 1x1: {s['speedup_vs_1x1']:.2f} (efficiency "
            f"{s['efficiency_vs_1x1']:.2f}, target >= 0.9); vs 1x2 threads: "
            f"{s['speedup_vs_1x2']:.2f} (efficiency {s['efficiency_vs_1x2']:.2f}); "
            f"rows identical across configurations: {s['rows_identical']}"
        )
        print(
            f"   the loss: each shard {s['shard_slowdown_2_actors']:+.1%} slower with both cores "
            f"busy; {s['startup_s_2_actors']:.1f} s before the first shard (actors started, batch "
            f"size chosen; {s['startup_s_1_actor']:.1f} s with 1 actor); after it, the run "
            f"{s['makespan_over_busy_half']:+.1%} longer than its actors' busy time / 2 (idle "
            f"tail across {s['blocks']} blocks, Ray, merge)"
        )
        print(
            f"   with the shards at their 1-actor speed (the contention taken out), the efficiency "
            f"would be {s['efficiency_vs_1x1'] * (1 + s['shard_slowdown_2_actors']):.2f}"
        )
        print(
            f"   Ray's own processes and the driver used {s['ray_side_cpu_share_2_actors']:.1%} "
            f"of the 2 cores during the 2-actor runs"
        )
        print(
            f"   an actor's CPU seconds per shard second (1.00: it had its core throughout; "
            f"below: it waited for one): 1 actor {s['actor_cpu_per_shard_second_1_actor']:.2f}, "
            f"2 actors {s['actor_cpu_per_shard_second_2_actors']:.2f}; steal time (the "
            f"hypervisor serving other guests): {s['steal_share_1_actor']:.1%} of the CPUs "
            f"with 1 actor, {s['steal_share_2_actors']:.1%} with 2"
        )
        print(
            f"   this machine's ceiling: two plain 1-thread processes evaluating the first block "
            f"at once run at {s['machine_ceiling']:.2f} of the speed of one alone (no Ray)"
        )
        print(f"\n6. peak resident memory of an evaluation actor: {s['actor_peak_rss_mb']:.0f} MB")
    if "batch" not in args.skip:
        block = min(settings.block_size, len(ds.y_test))
        sizes = args.batch_sizes or [block, block // 2, block // 4]
        b = batch_sizes(model, ds.x_test[:block], ds.y_test[:block], threat, settings, sizes, args.repeats)
        result["batch_sizes"] = b
        print(f"\n7. batch size within one block of {block} (AutoAttack's iterations are per batch)")
        for row in b:
            print(
                f"   batch {row['batch_size']:5d}: {row['seconds']:8.2f} s  "
                f"{row['s_per_sample']:.3f} s/sample  ({row['seconds'] / b[0]['seconds']:.2f}x "
                f"the first)"
            )
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
