"""`apgrid status` reads grid.json and the SQLite store without importing Ray, torch or MLflow
(seconds of imports for a few lines of output); what it prints is what MLflow holds."""

import json
import subprocess
import sys

from mlflow import MlflowClient

HEAVY = {"ray", "torch", "mlflow", "matplotlib"}
RUN_STATUS = (
    "import sys; from apgrid.grid.cli import main; code = main(sys.argv[1:]); "
    "print(sorted({m.split('.')[0] for m in sys.modules}), file=sys.stderr); sys.exit(code)"
)


def test_status_imports_no_ray_torch_or_mlflow_and_counts_runs(tmp_path):
    (tmp_path / "grid.json").write_text(json.dumps({"name": "g", "stages": {"dense": "done"}}))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("g", artifact_location=(tmp_path / "art").as_uri())
    for stage, attempt, status in [
        ("dense", "1", "FINISHED"),
        ("prune", "2", "FAILED"),
        ("prune", "1", "FINISHED"),
    ]:
        tags = {"level": "model", "stage": stage, "attempt": attempt, "model_id": f"{stage}-{attempt}"}
        client.set_terminated(client.create_run(experiment, tags=tags).info.run_id, status)
    client.create_run(experiment, tags={"level": "grid"})  # not a model run: not counted

    done = subprocess.run(
        [sys.executable, "-c", RUN_STATUS, "status", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = [" ".join(line.split()) for line in done.stdout.splitlines()]
    assert "dense done" in lines and "analyze pending" in lines
    assert {"dense FINISHED 1", "prune FAILED 1", "prune FINISHED 1"} <= set(lines), lines
    assert "attempt 2: prune-2 (prune, FAILED)" in lines
    imported = set(json.loads(done.stderr.strip().splitlines()[-1].replace("'", '"')))
    assert not imported & HEAVY, imported & HEAVY
