"""A real multi-node Ray cluster on one machine: a head and worker nodes, each a separate
`ray start --block` process with its own CPUs, fake GPUs and node label, each killed by PID.

Every node gets its own ports and worker-port range (nodes on one host would otherwise race for
the same ones), and the cluster a token of its own (`ray start` turns token authentication on).
Nothing here calls `ray stop`, which would take down every Ray instance on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import free_port

RAY = str(Path(sys.executable).with_name("ray"))


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (Linux /proc; Ray's workers are the raylet's children)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, i = [pid], 0
    while i < len(tree):
        tree += children.get(tree[i], [])
        i += 1
    return tree


class LocalRayCluster:
    def __init__(self, folder: Path):
        self.folder = folder  # the nodes' own output
        # Ray's session folder holds Unix sockets, whose paths may not pass 107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="apgrid-ray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            # the GCS declares a killed node dead within seconds, not Ray's default half minute
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_ids: dict[str, str] = {}  # label -> Ray node id, killed nodes included
        self.resources: dict[str, tuple[int, int]] = {}  # label -> (cpus, gpus)
        self._worker_ports = iter(range(20000, 60000, 2000))

    def start(self, label: str, cpus: int, gpus: int, head: bool = False) -> str:
        """Start a node and wait until it has registered with the GCS; returns its node id."""
        low = next(self._worker_ports)
        ports = [
            f"--{name}={free_port()}"
            for name in (
                "node-manager-port",
                "object-manager-port",
                "runtime-env-agent-port",
                "dashboard-agent-grpc-port",
                "dashboard-agent-listen-port",
                "metrics-export-port",
            )
        ]
        where = (
            ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"]
            if head
            else [f"--address={self.address}"]
        )
        log = self.folder / f"node-{label}.log"
        self.nodes[label] = subprocess.Popen(
            [
                RAY,
                "start",
                "--block",
                "--node-ip-address=127.0.0.1",
                *where,
                f"--num-cpus={cpus}",
                f"--num-gpus={gpus}",
                f"--labels=apgrid-test-node={label}",
                f"--min-worker-port={low}",
                f"--max-worker-port={low + 1999}",
                f"--object-store-memory={256 * 2**20}",
                *ports,
            ],
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.resources[label] = (cpus, gpus)
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text():
            if self.nodes[label].poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray node {label} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        self.node_ids[label] = self._node_id(label)
        return self.node_ids[label]

    def _node_id(self, label: str) -> str:
        for pid in process_tree(self.nodes[label].pid):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"/raylet"):
                return next(a for a in args if a.startswith(b"--node_id=")).split(b"=", 1)[1].decode()
        raise RuntimeError(f"no raylet under node {label}")

    def label_of(self, pid: int) -> str:
        """The node whose process tree holds `pid`."""
        for label, proc in self.nodes.items():
            if pid in process_tree(proc.pid):
                return label
        raise LookupError(f"process {pid} is on no node of this cluster")

    def kill(self, label: str) -> None:
        """SIGKILL a node's raylet, workers and agents at once, as a lost machine."""
        proc = self.nodes.pop(label)
        for pid in process_tree(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

    def shutdown(self) -> None:
        for label in list(self.nodes)[::-1]:  # workers first, the head last
            self.kill(label)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
