"""Builders shared by several test modules (fixtures live in conftest.py): synthetic rows, the
one tiny grid spec every end-to-end test starts from, published-layout checkpoint files, and
waiting for a local server."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd


def thin_ice_rows(seed=0, n=400):
    """A dense and a pruned model's rows where the pruned one loses the samples near the dense
    boundary (the thin-ice paper's claim, built in)."""
    rng = np.random.default_rng(seed)
    dense_correct = rng.random(n) < 0.8
    eps = np.where(dense_correct, rng.gamma(2, 0.05, n), -rng.gamma(2, 0.05, n))
    # the pruned model loses the samples near the dense boundary (the paper's claim, built in)
    pruned_correct = np.where(
        dense_correct, eps > rng.uniform(0, 0.08, n), np.abs(eps) < rng.uniform(0, 0.05, n)
    )
    base = {"sample_idx": np.arange(n), "label": rng.integers(0, 10, n)}
    dense = pd.DataFrame(
        {**base, "clean_correct": dense_correct, "fmn_eps": eps, "fmn_found": True, "logit_margin": eps * 10}
    )
    pruned = pd.DataFrame(
        {**base, "clean_correct": pruned_correct, "fmn_eps": 0.0, "fmn_found": True, "logit_margin": 0.0}
    )
    return dense, pruned


def write_published_checkpoints(raw: dict, folder) -> None:
    """The spec's checkpoint files under `folder`, in the layouts their codebases publish (random
    weights): a bare state dict in a {"state_dict": ...} container, HYDRA's popup_scores beside the
    weights of a pruned one."""
    import torch
    from torch import nn

    from apgrid.trainables.models import ARCHITECTURES

    for entry in raw.get("checkpoints", []):
        net = ARCHITECTURES[entry["arch"]](3, 10)
        state = dict(net.state_dict())
        if entry.get("sparsity"):
            for name, module in net.named_modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    state[f"{name}.popup_scores"] = torch.randn(module.weight.shape)
        path = Path(folder) / entry["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": state}, path)


# AutoAttack's two APGD attacks only: the end-to-end grids test the orchestration, and Square's
# 5,000 queries would triple the evaluate stage (test_evaluation covers the full ensemble)
QUICK_AA = ["apgd-ce", "apgd-t"]


# The recipe fields a method's authors' values fill when a spec leaves them unset
# (trainables/methods/recipes/): the tests' grids state them at apgrid's defaults, so that every
# method prunes one shared parent and trains as these tests were written to.
STATED = {
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "pgd_steps": 7,
    "step_size": None,
    "beta": 6.0,
    "select": "last",
    "schedule": "cosine",
    "milestones": [],
    "attack_mode": "eval",
}


def stated(**fields) -> dict:
    return {**STATED, **fields}


def tiny_grid(output, **sections) -> dict:
    """The raw spec of the tests' tiny digits grid (the one builder every end-to-end test starts
    from); each keyword replaces that section, or `evaluation=quick_evaluation(...)` for a variant."""
    return {
        "name": "tiny",
        "output": str(output),
        "threat_model": {"norm": "Linf", "eps": 0.1},
        "dense": {"recipe": stated(trainer="fgsm-rs", epochs=3, lr=0.05, batch_size=64)},
        "prune": {
            "methods": ["lwm-global", "hydra"],
            "sparsities": [0.9],
            "finetune": stated(trainer="fgsm-rs", epochs=1, lr=0.01, batch_size=128),
            "search": stated(trainer="fgsm-rs", epochs=1, lr=0.1, batch_size=128, weight_decay=1e-4),
        },
        "evaluation": quick_evaluation(),
        "analysis": {"transfer_samples": 50, "bootstrap_resamples": 200},
        **sections,
    }


def quick_evaluation(**over) -> dict:
    """The evaluation section of the tiny grid: 30 samples, 3 shards, 2 actors, quick attacks."""
    return {
        "num_samples": 30,
        "block_size": 10,
        "shards": 3,
        "actors": 2,
        "pgd_steps": 5,
        "fmn_steps": 50,
        "autoattack_attacks": QUICK_AA,
        **over,
    }


def tiny_spec(output, **sections):
    from apgrid.grid.spec import parse_spec

    return parse_spec(tiny_grid(output, **sections))


def small_grid(output, tracking_uri=None, methods=("lwm-global",), **over):
    """A smaller tiny grid (one epoch each, 20 samples, no model-reading analysis): the tracking
    server and outage tests run it several times."""
    sections = {
        "dense": {"recipe": stated(trainer="fgsm-rs", epochs=1, lr=0.05, batch_size=64)},
        "prune": {
            "methods": list(methods),
            "sparsities": [0.9],
            "finetune": stated(trainer="fgsm-rs", epochs=1, lr=0.01, batch_size=128),
            "search": stated(trainer="fgsm-rs", epochs=1, lr=0.1, batch_size=128, weight_decay=1e-4),
        },
        "evaluation": quick_evaluation(num_samples=20, shards=2, pgd_steps=2, fmn_steps=20),
        "analysis": {"transfer_attacks": [], "costs": False, "slice_samples": 0, "bootstrap_resamples": 0},
    }
    return tiny_spec(output, tracking_uri=tracking_uri, **{**sections, **over})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {seconds} s: {log.read_text()[-2000:]}")


def train_on_digits(model, digits, recipe, params=None, seed: int = 0) -> None:
    """`recipe.epochs` epochs of the recipe's adversarial training on digits at eps 0.1 on the CPU,
    updating `params` (default: every parameter of the model)."""
    from apgrid.trainables.training import make_optimizer, train_epoch

    opt = make_optimizer(model.parameters() if params is None else params, recipe)
    for epoch in range(recipe.epochs):
        train_epoch(
            model,
            opt,
            digits.x_train,
            digits.y_train,
            recipe=recipe,
            eps=0.1,
            norm="Linf",
            seed=seed,
            epoch=epoch,
            device="cpu",
        )


class MlflowServer:
    """`mlflow server` on 127.0.0.1 in its own process group, on a SQLite file in `folder` unless
    `backend_uri` says otherwise; it keeps its port, so it can be stopped and started again."""

    def __init__(self, folder, backend_uri: str | None = None):
        self.folder, self.port = Path(folder), free_port()
        self.backend_uri = backend_uri or f"sqlite:///{self.folder / 'mlflow.db'}"
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.folder / "mlflow-server.log"
        with open(log, "a") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--backend-store-uri",
                    self.backend_uri,
                    "--artifacts-destination",
                    str(self.folder / "artifacts"),
                    "--workers",
                    "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(f"{self.uri}/health", self.process, log)

    def stop(self, graceful: bool = False) -> None:
        """SIGKILL, gone at once like a crashed or preempted server; `graceful`: SIGTERM first."""
        if self.process is None or self.process.poll() is not None:
            return
        if graceful:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
            if self.process.poll() is not None:
                return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
