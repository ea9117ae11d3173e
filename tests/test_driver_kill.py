"""The driver killed with SIGKILL during dense, prune, evaluate and analyze, and `apgrid resume`
each time: the grid finishes, every (model, sample) row is there exactly once and equal to an
uninterrupted run's, finished work is not redone, and no MLflow run is left RUNNING."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
import yaml

from apgrid.grid.runner import launch
from apgrid.grid.state import read_state
from apgrid.grid.store import read_samples
from tests.helpers import quick_evaluation, stated, tiny_grid

pytestmark = pytest.mark.slow  # end-to-end grids beyond test_grid's: `make test`, not `make check`

COLUMNS = [
    "model_id",
    "sample_idx",
    "clean_pred",
    "clean_correct",
    "logit_margin",
    "pgd_correct",
    "aa_correct",
    "fmn_eps",
    "fmn_found",
]
KILL_POINTS = [  # (stage, a line of the driver's output after which it is killed)
    ("dense", "epoch 1,"),
    ("prune", "[prune]"),
    ("evaluate", "[evaluate] 1/"),
    ("analyze", "[apgrid] stage analyze"),
]


def grid_raw(output):
    return tiny_grid(
        output,
        dense={"recipe": stated(trainer="fgsm-rs", epochs=2, lr=0.05, batch_size=64)},
        prune={
            "methods": ["lwm-global", "hydra"],
            "sparsities": [0.9],
            "finetune": stated(trainer="fgsm-rs", epochs=2, lr=0.01, batch_size=128),
            "search": stated(trainer="fgsm-rs", epochs=1, lr=0.1, batch_size=128, weight_decay=1e-4),
        },
        evaluation=quick_evaluation(num_samples=20, block_size=5, shards=4, pgd_steps=2, fmn_steps=20),
        analysis={
            "transfer_attacks": ["fgsm", "pgd", "universal"],
            "transfer_samples": 100,
            "bootstrap_resamples": 100,
        },
    )


def run_until(args: list[str], needle: str | None, log: list[str]) -> bool:
    """Run `apgrid ARGS` as its own process group; SIGKILL the driver once `needle` shows in its
    output (then whatever Ray processes it left). Returns True when it was killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "apgrid.grid.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    for line in proc.stdout:
        log.append(line.rstrip())
        if needle and needle in line:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            time.sleep(1)
            try:  # a preempted machine takes its Ray processes with it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return True
    assert proc.wait(timeout=600) == 0, "\n".join(log[-30:])
    return False


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    output = tmp_path_factory.mktemp("reference") / "out"
    from apgrid.grid.spec import parse_spec

    launch(parse_spec(grid_raw(output)), log=lambda m: None)
    return read_samples(output)


def test_driver_sigkill_at_every_stage_then_resume(reference, tmp_path):
    output = tmp_path / "out"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(grid_raw(output)))
    log: list[str] = []
    killed_in = []
    for i, (_stage, needle) in enumerate(KILL_POINTS):
        args = ["launch", str(spec_file)] if i == 0 else ["resume", str(output)]
        if run_until(args, needle, log):
            killed_in.append(read_state(output)["stages"])
    assert len(killed_in) >= 3, log[-40:]  # a fast stage may finish before its kill lands
    for (stage, _), stages in zip(KILL_POINTS, killed_in):
        assert stages.get(stage) == "running", (stage, stages)
    dense_model = next(output.glob("models/dense-*/model.pt"))
    dense_written = dense_model.stat().st_mtime_ns
    run_until(["resume", str(output)], None, log)
    state = read_state(output)
    assert all(state["stages"][s] == "done" for s in state["stages"])
    assert state["driver_runs"] == 1 + len(KILL_POINTS)
    assert dense_model.stat().st_mtime_ns == dense_written  # finished work is not redone

    rows = read_samples(output)
    assert not rows.duplicated(["model_id", "sample_idx"]).any()
    assert len(rows) == len(reference) == 3 * 20
    ours = rows[COLUMNS].sort_values(["model_id", "sample_idx"], ignore_index=True)
    theirs = reference[COLUMNS].sort_values(["model_id", "sample_idx"], ignore_index=True)
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    assert (output / "report" / "index.html").is_file()

    client = mlflow.MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and all(
        int(r.data.tags.get("attempt", 0)) >= 1 for r in killed if r.data.tags.get("level") == "model"
    )
    finished = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("stage") == "dense"]
    assert len(finished) == 1  # the dense model was trained to the end once


def test_ctrl_c_in_a_stage_says_interrupted_not_failed(tmp_path):
    """Ctrl-C in a terminal (SIGINT to the whole process group) while Tune runs the dense stage:
    exit 130 and the interrupted line, not a report of trials that failed (Tune returns from
    fit on SIGINT with its unfinished trials, none of them in error)."""
    output = tmp_path / "out"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(grid_raw(output)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "apgrid.grid.cli", "launch", str(spec_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log = []
    for line in proc.stdout:
        log.append(line.rstrip())
        if "epoch 1," in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    log += proc.stdout.read().splitlines()
    assert proc.wait(timeout=120) == 130, log[-20:]
    assert any("interrupted; `apgrid resume DIR`" in line for line in log), log[-20:]
    assert not any("trials failed" in line for line in log), log[-20:]
