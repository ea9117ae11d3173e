"""Fault injection for the tests: fail once at a given point, remembered by a marker file.

A fault is {"stage": dense|prune|evaluate, "epoch": N (trials) or "shard": START (evaluation),
"kind": "raise" | "exit", "marker": FOLDER}; a grid takes one fault or a list of them. "exit" ends
the process with os._exit(1), as a preempted or OOM-killed worker would.
"""

from __future__ import annotations

import os
from pathlib import Path


def maybe_fail(faults, stage: str, at: int, name: str, key: str = "epoch") -> None:
    for fault in faults if isinstance(faults, list) else [faults] if faults else []:
        if fault["stage"] != stage or fault.get(key) != at:
            continue
        marker = Path(fault["marker"]) / f"{name}-{stage}-{key}{at}"
        if marker.exists():
            continue
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        if fault.get("kind") == "exit":
            os._exit(1)
        raise RuntimeError(f"injected fault at {stage} {key} {at}")
