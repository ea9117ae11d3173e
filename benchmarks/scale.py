"""Scale, simulated on one machine: how the driver's costs grow with the number of models.

    python benchmarks/scale.py grid --sizes 100 300 1000    # real grids of tiny models (Ray, MLflow)
    python benchmarks/scale.py mlflow --sizes 100 300 1000  # runs logged: SQLite vs `mlflow server`
    python benchmarks/scale.py merge --sizes 100 300 1000   # Parquet shards merged, the dataset read
    python benchmarks/scale.py analyze --rows 1e6 1e7       # the report on synthetic Parquet: time, peak RSS
    python benchmarks/scale.py project                      # thin-ice.yaml on 8 GPUs, from plan_cost

`grid` runs dense-only grids of N digits CNNs (N seeds, one epoch of FGSM-RS, 10 test samples,
AutoAttack's APGD-CE only) on a local Ray and times each stage from the driver's own log; the
per-trial overhead is the stage's wall time per model less the work itself (the same training
run in-process, divided by the trials running at once). Each part prints a table; what grows
faster than the number of models shows as a rising per-model column.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

STAGE_LINE = re.compile(r"\[apgrid\] stage (\w+) \((\d+)s\)")


def tiny_grid(output: Path, models: int) -> dict:
    return {
        "name": f"scale-{models}",
        "output": str(output),
        "threat_model": {"norm": "Linf", "eps": 0.1},
        "dense": {
            "seeds": list(range(models)),
            "recipe": {"trainer": "fgsm-rs", "epochs": 1, "lr": 0.05, "batch_size": 256},
        },
        "prune": {"methods": []},
        "evaluation": {
            "num_samples": 10,
            "block_size": 10,
            "shards": 1,
            "actors": 2,
            "pgd_steps": 1,
            "fmn_steps": 10,
            "autoattack_attacks": ["apgd-ce"],
        },
        "resources": {"trial_cpus": 1, "actor_cpus": 1},
        "analysis": {"transfer_attacks": [], "costs": False, "slice_samples": 0, "bootstrap_resamples": 100},
    }


def training_seconds(repeats: int = 10) -> float:
    """One tiny model's training, in this process at one thread: the work a trial does."""
    import torch

    from apgrid.trainables.data import load_dataset
    from apgrid.trainables.models import build_model
    from apgrid.trainables.pipeline import DenseJob
    from apgrid.trainables.training import Recipe

    torch.set_num_threads(1)
    ds = load_dataset("digits")
    times = []
    for seed in range(repeats):
        began = time.perf_counter()
        torch.manual_seed(seed)
        model = build_model("digits-cnn", 1, 10, ds.mean, ds.std)
        recipe = Recipe(trainer="fgsm-rs", epochs=1, lr=0.05, batch_size=256)
        DenseJob(recipe, 0.1, "Linf", seed, model, ds, torch.device("cpu")).run(None)
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def run_grid(sizes: list[int]) -> None:
    import yaml

    work = training_seconds()
    print(f"one trial's training, in-process: {work:.2f} s (median of 10)\n")
    print(
        "| models | plan s | dense s | per model s | driver overhead per trial s | evaluate s "
        "| per model s | analyze s | total s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            spec_file = Path(tmp) / "spec.yaml"
            spec_file.write_text(yaml.safe_dump(tiny_grid(Path(tmp) / "out", n)))
            began = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "apgrid.grid.cli", "launch", "--dry-run", str(spec_file)],
                check=True,
                capture_output=True,
            )
            plan_s = time.perf_counter() - began
            began = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "apgrid.grid.cli", "launch", str(spec_file)],
                capture_output=True,
                text=True,
            )
            total = time.perf_counter() - began
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-3000:])
                raise SystemExit(f"the {n}-model grid failed")
            starts = {m[1]: int(m[2]) for m in STAGE_LINE.finditer(done.stdout)}
            finished = int(re.search(r"finished in (\d+)s", done.stdout)[1])
            dense = starts["evaluate"] - starts["dense"]  # the prune stage has no models
            evaluate = starts["analyze"] - starts["evaluate"]
            analyze = finished - starts["analyze"]
            slots = 2  # trials at once: 2 CPUs, one each
            print(
                f"| {n} | {plan_s:.1f} | {dense} | {dense / n:.2f} | {dense / n - work / slots:.2f} | "
                f"{evaluate} | {evaluate / n:.2f} | {analyze} | {total:.0f} |",
                flush=True,
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_runs(uri: str, n: int, artifacts: Path) -> float:
    """Seconds to log n model runs as the evaluate stage does (run, params, metrics, tags, the
    card as an artifact), through apgrid's Tracker."""
    from apgrid.grid.plan import ModelPlan
    from apgrid.grid.tracking import Tracker

    tracker = Tracker(uri, f"scale-{n}-{time.time_ns()}", artifacts)
    parent = tracker.grid_run("fingerprint")
    card = artifacts / "card.json"
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text("{}")
    began = time.perf_counter()
    for i in range(n):
        plan = ModelPlan(f"dense-m{i}", "dense", f"dense-m{i}", "digits-cnn", i, "dense", 0.0, {"recipe": {}})
        run = tracker.start_model_run(parent, plan, "digits", "evaluate")
        tracker.log_params(run, {f"evaluation.p{k}": k for k in range(12)})
        tracker.log_metrics(run, {f"m{k}": 0.5 for k in range(10)})
        tracker.set_tag(run, "samples_uri", f"/x/{i}")
        tracker.log_artifact(run, card)
        tracker.end(run, "FINISHED")
    seconds = time.perf_counter() - began
    tracker.finished_models("evaluate")  # the stage's sync reads them all back once
    return seconds


def run_mlflow(sizes: list[int]) -> None:
    print("| runs | SQLite s | runs/s | server (SQLite behind it) s | runs/s |")
    print("|---|---|---|---|---|")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            local = log_runs(f"sqlite:///{tmp / 'local.db'}", n, tmp / "a")
            port = free_port()
            server = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("mlflow")),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--backend-store-uri",
                    f"sqlite:///{tmp / 'server.db'}",
                    "--artifacts-destination",
                    str(tmp / "server-artifacts"),
                    "--workers",
                    "1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                for _ in range(120):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        time.sleep(0.5)
                remote = log_runs(f"http://127.0.0.1:{port}", n, tmp / "b")
            finally:
                server.terminate()
                server.wait()
            print(f"| {n} | {local:.1f} | {n / local:.1f} | {remote:.1f} | {n / remote:.1f} |", flush=True)


def model_rows(m: int, samples: int, rng: np.random.Generator) -> pd.DataFrame:
    """Model m's rows in SAMPLE_SCHEMA's columns (models 0, 10, 20, ... are dense, each the parent
    of the nine after it)."""
    dense = m % 10 == 0
    correct = rng.random(samples) < 0.8
    eps = rng.gamma(2, 0.02, samples).astype(np.float32)
    robust = correct & (eps > 8 / 255)
    return pd.DataFrame(
        {
            "grid": "scale",
            "model_id": model_name(m),
            "sample_idx": np.arange(samples),
            "label": rng.integers(0, 10, samples),
            "clean_pred": rng.integers(0, 10, samples),
            "clean_correct": correct,
            "logit_margin": rng.normal(0, 1, samples).astype(np.float32),
            "pgd_correct": robust | (correct & (rng.random(samples) < 0.05)),
            "aa_correct": robust,
            "aa_broken_by": np.where(robust, None, "apgd-ce"),
            "fmn_eps": np.where(dense & ~correct, -eps, eps),
            "fmn_found": True,
            "fmn_overstated": False,
            "fmn_eps_bounded": eps,
            "fmn_eps_untargeted": np.where(dense & ~correct, -eps, np.nan).astype(np.float32),
            "fmn_eps_ho": np.full(samples, np.nan, np.float32),
            "fmn_eps_ensemble": np.full(samples, np.nan, np.float32),
            "fmn_ho_config": pd.array([None] * samples, dtype="string"),
            "dense_model_id": model_name(m - m % 10),
            "role": "dense" if dense else "pruned",
            "dataset": "cifar10",
            "arch": "resnet18",
            "method": "dense" if dense else "lwm-global",
            "sparsity": 0.0 if dense else 0.9 + 0.01 * (m % 10 > 5),
            "sparsity_measured": 0.0 if dense else 0.9,
            "seed": m // 10,
            "norm": "Linf",
            "eps": 8 / 255,
            "pgd_steps": 10,
            "autoattack_version": "standard",
            "autoattack_attacks": "apgd-ce,apgd-t,fab-t,square",
            "fmn_steps": 100,
            "fmn_step_size": 1.0,
            "eval_seed": 0,
            "eval_batch_size": 500,
        }
    )


def model_name(m: int) -> str:
    return f"{'dense' if m % 10 == 0 else 'lwm-global'}-m{m}"


def synthetic_rows(models: int, samples: int, seed: int = 0) -> pd.DataFrame:
    """Rows in SAMPLE_SCHEMA's columns for `models` models (one dense parent for every 10)."""
    rng = np.random.default_rng(seed)
    return pd.concat([model_rows(m, samples, rng) for m in range(models)], ignore_index=True)


def run_merge(sizes: list[int], shards: int = 10, rows: int = 100) -> None:
    from apgrid.grid.store import SampleStore, read_samples

    print("| models | shards written s | merged s | per model ms | dataset read s | rows |")
    print("|---|---|---|---|---|---|")
    template = synthetic_rows(1, shards * rows)
    ranges = [(i * rows, (i + 1) * rows) for i in range(shards)]
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = SampleStore(Path(tmp), "scale")
            began = time.perf_counter()
            for m in range(n):
                for s, e in ranges:
                    store.write_shard(f"m{m}", s, e, template.iloc[s:e].drop(columns=["grid", "model_id"]))
            written = time.perf_counter() - began
            began = time.perf_counter()
            for m in range(n):
                store.finalize(f"m{m}", ranges)
            merged = time.perf_counter() - began
            began = time.perf_counter()
            got = read_samples(Path(tmp))
            read = time.perf_counter() - began
            print(
                f"| {n} | {written:.1f} | {merged:.1f} | {1000 * merged / n:.1f} | {read:.2f} "
                f"| {len(got):,} |",
                flush=True,
            )


def write_dataset(output: Path, models: int, samples: int, seed: int = 0) -> int:
    """A grid's per-sample Parquet under output/samples, written one model at a time (this process
    never holds more than one model's rows); returns the number of rows."""
    import pyarrow.parquet as pq

    from apgrid.grid.store import SampleStore, _file_table

    store = SampleStore(output, "scale")
    rng = np.random.default_rng(seed)
    for m in range(models):
        path = store.partition(model_name(m)) / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_file_table(model_rows(m, samples, rng)), path)
    return models * samples


def analyze_once(output: Path, read: str, workers: int | None = None) -> None:
    """The analysis of output/samples in this (fresh) process, as `apgrid analyze` runs it without
    the models; prints one JSON line: seconds, peak resident memory and that after the imports.
    read = frame: every row read into one DataFrame first (read_samples, the code before 2026-12-04);
    stream: the report reads one model (or one dense/pruned pair) at a time, on `workers`
    processes (None: every core, analysis.parallel); their CPU time counts with this process's."""
    import json
    import resource

    from apgrid.analysis.report import write_report
    from apgrid.analysis.settings import AnalysisSettings
    from apgrid.grid.store import read_samples

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def cpu_seconds() -> float:  # user + system time of this process and its workers: what other
        # work cannot inflate
        whose = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime for w in whose)

    settings = AnalysisSettings(bootstrap_resamples=200, workers=workers)
    imported = peak_mib()
    cpu = cpu_seconds()
    began = time.perf_counter()
    if read == "frame":
        samples = read_samples(output)
    else:
        from apgrid.grid.store import open_samples

        samples = open_samples(output)
    write_report(samples, output / "report", "scale", settings)
    seconds = time.perf_counter() - began
    cpu = cpu_seconds() - cpu
    print(
        json.dumps(
            {"seconds": seconds, "cpu_s": cpu, "peak_rss_mib": peak_mib(), "after_imports_mib": imported}
        )
    )


def run_analyze(row_counts: list[float], read: str, workers: int | None, samples: int = 10_000) -> None:
    """Each size written as a grid's Parquet, then analysed in a fresh process (its peak memory is
    the driver's): PYTHONPATH chooses the code, e.g. a checkout of an older commit."""
    import json

    print(f"analysis: read = {read}, workers = {workers or 'every core'}")
    print(
        "| rows | models | written s | analysis s | its CPU s | per million rows s | peak RSS MiB "
        "| after imports MiB"
    )
    print("|---|---|---|---|---|---|---|---")
    for total in row_counts:
        models = int(total) // samples
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            rows = write_dataset(Path(tmp), models, samples)
            written = time.perf_counter() - began
            done = subprocess.run(
                [sys.executable, __file__, "analyze-once", "--output", tmp, "--read", read]
                + (["--workers", str(workers)] if workers else []),
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"the analysis of {rows:,} rows failed:\n{done.stderr[-3000:]}")
            got = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {rows:,} | {models} | {written:.1f} | {got['seconds']:.1f} | {got['cpu_s']:.1f} | "
            f"{got['seconds'] / (rows / 1e6):.2f} | {got['peak_rss_mib']:.0f} | "
            f"{got['after_imports_mib']:.0f}",
            flush=True,
        )


def run_project(gpus: int = 8) -> None:
    from apgrid.grid.plan import all_models, forward_flops, plan_cost
    from apgrid.grid.spec import load_spec

    spec = load_spec(str(Path(__file__).parents[1] / "grid" / "examples" / "thin-ice.yaml"))
    cost = plan_cost(spec)
    archs = sorted({p.arch for p in all_models(spec)})
    print(f"thin-ice.yaml: {len(all_models(spec))} models ({', '.join(archs)})")
    for arch in archs:
        print(f"  {arch}: {forward_flops(arch, (3, 32, 32), 10) / 1e9:.2f} GFLOPs a forward pass")
    print("| stage | model passes | A100 GPU-hours | wall on 8 GPUs, h |")
    print("|---|---|---|---|")
    share = cost.training_passes / (cost.training_passes + cost.evaluation_passes)
    for name, passes, hours in (
        ("train (dense + prune)", cost.training_passes, cost.gpu_hours * share),
        ("evaluate", cost.evaluation_passes, cost.gpu_hours * (1 - share)),
        ("all", cost.training_passes + cost.evaluation_passes, cost.gpu_hours),
    ):
        print(f"| {name} | {passes / 1e9:.2f} G | {hours:.1f} | {hours / gpus:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=("grid", "mlflow", "merge", "analyze", "analyze-once", "project"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000], help="models per grid")
    parser.add_argument("--rows", type=float, nargs="+", default=[1e6, 1e7], help="rows for analyze")
    parser.add_argument(
        "--read", choices=("frame", "stream"), default="stream", help="analyze: all rows at once, or streamed"
    )
    parser.add_argument("--output", type=Path, help="analyze-once: the output folder (run by analyze)")
    parser.add_argument("--workers", type=int, help="analyze: processes (default: every core)")
    args = parser.parse_args()
    {
        "grid": lambda: run_grid(args.sizes),
        "mlflow": lambda: run_mlflow(args.sizes),
        "merge": lambda: run_merge(args.sizes),
        "analyze": lambda: run_analyze(args.rows, args.read, args.workers),
        "analyze-once": lambda: analyze_once(args.output, args.read, args.workers),
        "project": run_project,
    }[args.part]()


if __name__ == "__main__":
    main()
