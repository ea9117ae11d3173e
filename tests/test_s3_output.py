"""A grid whose output is an s3:// URI on a real S3 API (moto's server on loopback): its driver is
SIGKILLed mid-evaluate, `apgrid resume URI` finishes it, and the rows read back from S3 equal an
uninterrupted local run's, each (model, sample) once."""

import json

import pandas as pd
import pytest
import yaml

import apgrid
from apgrid.grid.cli import main
from apgrid.grid.objectstore import ObjectResults
from apgrid.grid.runner import launch
from apgrid.grid.spec import parse_spec
from apgrid.grid.store import read_samples
from tests.helpers import quick_evaluation, stated, tiny_grid
from tests.test_datacache import s3  # noqa: F401 (the fixture: moto's server on loopback)
from tests.test_driver_kill import COLUMNS, run_until

pytestmark = pytest.mark.slow  # two end-to-end grids


def grid_raw(output):
    return tiny_grid(
        output,
        dense={"recipe": stated(trainer="fgsm-rs", epochs=1, lr=0.05, batch_size=64)},
        prune={
            "methods": ["lwm-global"],
            "sparsities": [0.9],
            "finetune": stated(trainer="fgsm-rs", epochs=1, lr=0.01, batch_size=128),
        },
        evaluation=quick_evaluation(num_samples=20, block_size=5, shards=4, pgd_steps=2, fmn_steps=20),
    )


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("APGRID_WORKDIR", str(tmp_path / "workdir"))


def test_a_grid_on_s3_killed_mid_evaluate_resumes_to_an_uninterrupted_runs_rows(
    s3,  # noqa: F811
    ray_session,
    tmp_path,
    monkeypatch,
):
    client, endpoint = s3
    client.create_bucket(Bucket="bucket")
    uri = f"s3://bucket/runs/x?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(grid_raw(uri)))
    log: list[str] = []
    assert run_until(["launch", str(spec_file), "--until", "evaluate"], "[evaluate] 1/", log), log[-30:]
    run_until(["resume", uri, "--until", "evaluate"], None, log)
    assert any("stay in the working folder" in line for line in log), log[:20]

    rows = ObjectResults(uri, "tiny").read_samples()
    assert not rows.duplicated(["model_id", "sample_idx"]).any()
    assert len(rows) == 2 * 20
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="bucket")["Contents"]]
    assert {"runs/x/grid.json", "runs/x/spec.yaml"} <= set(keys)
    assert not (tmp_path / "s3:").exists()
    state = json.loads(client.get_object(Bucket="bucket", Key="runs/x/grid.json")["Body"].read())
    assert state["stages"]["evaluate"] == "done" and state["driver_runs"] == 2

    # another machine (an empty working folder) reads the grid from the URI alone
    monkeypatch.setenv("APGRID_WORKDIR", str(tmp_path / "elsewhere"))
    elsewhere = apgrid.open(uri).samples()
    pd.testing.assert_frame_equal(
        elsewhere[COLUMNS].sort_values(["model_id", "sample_idx"], ignore_index=True),
        rows[COLUMNS].sort_values(["model_id", "sample_idx"], ignore_index=True),
    )
    assert main(["analyze", uri, "--no-models", "--format", "html"]) == 0
    assert list((tmp_path / "elsewhere").glob("*/report/index.html"))
    # its models, their RobustBench files and a comparison, from the URI alone
    pruned = next(m for m in rows["model_id"].unique() if m.startswith("lwm-global"))
    model = apgrid.open(uri).load_model(pruned)
    assert sum(int((p == 0).sum()) for p in model.parameters()) > 0
    assert main(["export", uri, str(tmp_path / "robustbench")]) == 0
    assert len(list((tmp_path / "robustbench").rglob("*.json"))) == 2
    assert main(["compare", "--grid", uri, "dense", "lwm-global"]) == 0

    local = tmp_path / "local"
    launch(parse_spec(grid_raw(local)), log=lambda m: None, until="evaluate")
    reference = read_samples(local)
    ours = rows[COLUMNS].sort_values(["model_id", "sample_idx"], ignore_index=True)
    theirs = reference[COLUMNS].sort_values(["model_id", "sample_idx"], ignore_index=True)
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
