"""The grid's environment failing part-way: a full disk while results are written, a full disk
that fails a trial on every retry, an actor out of GPU memory, and the MLflow server going away
mid-grid. Each time: one clear
error, finished work kept, and `apgrid resume` finishing the grid with every result exactly once,
in the Parquet and in MLflow."""

import contextlib
import errno
import os
from pathlib import Path

import mlflow
import pytest
import yaml

from apgrid.grid import runner
from apgrid.grid.cli import main
from apgrid.grid.errors import ResumableError
from apgrid.grid.runner import launch, resume
from apgrid.grid.state import read_state
from apgrid.grid.store import read_samples
from tests.helpers import MlflowServer, quick_evaluation, small_grid

pytestmark = pytest.mark.slow  # end-to-end grids beyond test_grid's: `make test`, not `make check`

N_SAMPLES = 20  # small_grid's evaluation.num_samples


def assert_complete(output: Path, uri: str, models: int) -> None:
    """Every (model, sample) row once; one FINISHED run per model and stage; none left open."""
    rows = read_samples(output)
    assert len(rows) == models * N_SAMPLES
    assert not rows.duplicated(["model_id", "sample_idx"]).any()
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"])
    model_runs = runs[runs["tags.level"] == "model"]
    assert "RUNNING" not in set(runs["status"])
    finished = model_runs[model_runs["status"] == "FINISHED"]
    for stage, count in [("dense", 1), ("prune", models - 1), ("evaluate", models)]:
        per_model = finished[finished["tags.stage"] == stage].groupby("tags.model_id").size()
        assert len(per_model) == count and (per_model == 1).all(), (stage, per_model)
    grid_run = runs[runs["tags.level"] == "grid"]
    assert list(grid_run["status"]) == ["FINISHED"]


def test_disk_full_in_a_trial_then_while_writing_results_resumed_each_time(ray_session, tmp_path):
    output, marker = tmp_path / "out", str(tmp_path / "faults")
    evaluation = quick_evaluation(num_samples=N_SAMPLES, shards=2, actors=1, pgd_steps=2, fmn_steps=20)
    spec = small_grid(output, max_failures=1, evaluation=evaluation)
    # 1. the disk is full on every attempt of the pruning trial
    trial_fault = [{"stage": "prune", "epoch": 0, "kind": "disk-full", "times": 2, "marker": marker}]
    with pytest.raises(ResumableError) as failed:
        launch(spec, fault=trial_fault, log=lambda m: None)
    message = str(failed.value)
    assert message.startswith("prune: 1 trials failed after 1 retries (")
    assert "No space left on device" in message and f"apgrid resume {output}" in message

    # 2. resumed; now the disk fills while the driver writes the dense model's second shard
    write_fault = [{"stage": "evaluate", "write": 10, "kind": "disk-full", "marker": marker}]
    lines: list[str] = []
    with pytest.raises(ResumableError) as failed:
        resume(output, fault=write_fault, log=lines.append)
    assert any("[dense] 1 models, 1 already done, 0 to run" in line for line in lines)
    message = str(failed.value)
    assert message.startswith("evaluate: cannot write ") and "No space left on device" in message
    assert f"apgrid resume {output}" in message and "\n" not in message
    assert read_state(output)["stages"]["evaluate"] == "running"

    # 3. continued on 2 actors, one of which runs out of GPU memory on the shard it is given
    # (the dense model's [10, 20)); the other actor's shard in flight is still written
    oom_fault = [{"stage": "evaluate", "shard": 10, "kind": "oom", "marker": marker}]
    two_actors = small_grid(output, max_failures=1, evaluation={**evaluation, "actors": 2})
    lines.clear()
    with pytest.raises(ResumableError) as failed:
        launch(two_actors, fault=oom_fault, log=lines.append)
    message = str(failed.value)
    assert (
        message.startswith("evaluate: dense-")
        and "[10, 20) ran out of memory at batch size 10" in message
        and "CUDA out of memory" in message
        and "\n" not in message
    )
    assert "resources.actor_gpus" in message and f"--output {output}`" in message
    assert any("writing the 1 shards in flight first" in line for line in lines), lines
    assert read_state(output)["stages"]["evaluate"] == "running"

    # 4. resumed: only the missing work is done
    lines.clear()
    resume(output, log=lines.append)
    assert any("[prune] 1 models, 1 already done, 0 to run" in line for line in lines)
    # the dense model's first shard was written before the disk filled, the pruned model's first
    # while the other actor ran out of memory
    assert any("= 2 shard tasks" in line for line in lines), lines
    uri = spec.resolved_tracking_uri
    assert_complete(output, uri, models=2)
    prune = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.stage = 'prune'")
    assert sorted(zip(prune["tags.attempt"], prune["status"])) == [
        ("1", "FAILED"),
        ("2", "FAILED"),
        ("3", "FINISHED"),
    ]


def test_cli_reports_a_full_disk_in_one_line_with_exit_code_1(ray_session, tmp_path, monkeypatch, capsys):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "models"))

    monkeypatch.setitem(runner.STAGE_FUNCTIONS, "dense", disk_full)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "output": str(tmp_path / "out"),
                "threat_model": {"norm": "Linf", "eps": 0.1},
                "prune": {"methods": ["lwm-global"], "sparsities": [0.9]},
            }
        )
    )
    assert main(["launch", str(spec_file)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own INFO lines
    assert err == (
        f"apgrid: error: dense: cannot write {tmp_path / 'out' / 'models'}: No space "
        f"left on device; finished work is kept: free space or fix permissions, then "
        f"`apgrid resume {tmp_path / 'out'}`"
    )


def test_tracking_server_going_away_mid_grid_then_resume(ray_session, tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        output = tmp_path / "out"
        spec = small_grid(output, tracking_uri=server.uri)
        lines: list[str] = []

        def log(line: str) -> None:  # the server dies as soon as the first pruning trial starts
            lines.append(line)
            if line.startswith("[prune]") and "started" in line:
                server.stop()

        with pytest.raises(ResumableError) as failed:
            launch(spec, log=log)
        message = str(failed.value)
        assert message.startswith(f"prune: MLflow at {server.uri} failed (")
        assert f"apgrid resume {output}" in message
        assert any("training goes on" in line for line in lines)  # the trial was not stopped
        assert read_state(output)["stages"] == {"checkpoints": "done", "dense": "done", "prune": "running"}
        assert len(list((output / "models").glob("lwm-global-*"))) == 1  # its work was kept

        server.start()
        lines.clear()
        resume(output, log=lines.append)
        assert any("[prune] 1 models, 1 already done, 0 to run" in line for line in lines)
        assert any("MLflow synced with the output folder: 1 runs logged" in line for line in lines)
        assert_complete(output, server.uri, models=2)
    finally:
        with contextlib.suppress(Exception):
            server.stop()
