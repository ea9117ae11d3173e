"""Fault injection for the tests: fail at a given point, remembered by a marker file.

A fault is {"stage": dense|prune|evaluate, "epoch": N (trials), "shard": START (inside an
evaluation actor) or "write": START (when the driver writes that shard's rows), "kind": "raise" |
"exit" | "disk-full" | "oom" | "pause", "times": how often it fires (default 1), "marker": FOLDER}; a
grid takes one fault or a list of them. "exit" ends the process with os._exit(1), as a preempted or
OOM-killed worker would; "disk-full" raises the OSError (ENOSPC) that a full disk gives; "oom" raises
the torch.OutOfMemoryError of a CUDA allocation that does not fit; "pause" holds the first model to
get there (one in the whole grid) for "seconds" (default 600) after writing its process id and Ray
node id to MARKER/paused-STAGE, so that a test can kill the node it runs on.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path


def maybe_fail(faults, stage: str, at: int, name: str, key: str = "epoch") -> None:
    for fault in faults if isinstance(faults, list) else [faults] if faults else []:
        if fault["stage"] != stage or fault.get(key) != at:
            continue
        if fault.get("kind") == "pause":
            _pause(fault, stage)
            continue
        marker = Path(fault["marker"]) / f"{name}-{stage}-{key}{at}"
        fired = int(marker.read_text() or 0) if marker.exists() else 0
        if fired >= fault.get("times", 1):
            continue
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(fired + 1))
        if fault.get("kind") == "exit":
            os._exit(1)
        if fault.get("kind") == "oom":  # what a CUDA allocation past the card's memory raises
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if fault.get("kind") == "disk-full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(marker.parent / name))
        raise RuntimeError(f"injected fault at {stage} {key} {at}")


def _pause(fault: dict, stage: str) -> None:
    """Hold the first caller, across processes and nodes sharing the marker folder (the claim is
    an exclusive create); later callers, a retry of the same model included, go on at once."""
    marker = Path(fault["marker"])
    marker.mkdir(parents=True, exist_ok=True)
    try:
        claim = os.open(marker / f"paused-{stage}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    os.write(claim, f"{os.getpid()} {node}\n".encode())
    os.close(claim)
    time.sleep(fault.get("seconds", 600))
