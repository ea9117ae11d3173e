"""Per-model work over several processes.

The report's statistics are per model (or per dense parent and its pruned children) and combine as
small summaries, so each worker reads its own partitions and returns only a summary: the driver's
memory stays one model's rows however many models there are, and N cores do N models at a time.
Workers are forked, so they inherit what the work shares (the `Samples` source, the settings)
without pickling it; only the items (model ids) and the summaries cross between processes.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

# Below this many items a pool's start (~0.1 s) costs more than it saves.
MIN_ITEMS = 16
MAX_WORKERS = 8  # the summaries are small; more readers than this contend for one disk

_shared: dict = {}


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Every core this process may use (up to MAX_WORKERS), or 1 inside a running Ray driver,
    whose threads a fork would copy mid-flight."""
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return 1
    return min(available_cpus(), MAX_WORKERS)


def map_models(fn: Callable, items: Iterable, shared, workers: int | None = None) -> list:
    """[fn(shared, item) for item in items], in order, on `workers` forked processes (None: every
    core; 1, few items, or no fork on this platform: in this process)."""
    return list(iter_models(fn, items, shared, workers))


def iter_models(fn: Callable, items: Iterable, shared, workers: int | None = None) -> Iterator:
    """map_models' results one at a time, in order, as the workers return them: a caller that
    folds them (counts, sums) never holds them all."""
    items = list(items)
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(items) < MIN_ITEMS or "fork" not in multiprocessing.get_all_start_methods():
        yield from (fn(shared, item) for item in items)
        return
    _shared["value"] = shared  # set before the pool forks: the workers inherit it
    try:
        context = multiprocessing.get_context("fork")
        chunk = max(1, len(items) // (workers * 8))  # few round trips, yet a balanced tail
        with ProcessPoolExecutor(min(workers, len(items)), mp_context=context) as pool:
            yield from pool.map(_call, [(fn, item) for item in items], chunksize=chunk)
    finally:
        _shared.clear()


def _call(task):
    fn, item = task
    return fn(_shared["value"], item)
