"""MLflow as its users expect: every trained model loads from its run with its masks applied,
evaluate runs span their evaluation, runs carry their data, user and source, the grid run holds
the spec and a summary. And an output folder that travels: a copy resumed and analysed writes
only into itself, a moved folder's artifacts list and download from where it is now."""

import getpass
import hashlib
import shutil
import statistics

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient

import apgrid
from apgrid.grid.cli import main
from apgrid.grid.runner import launch, resume
from apgrid.grid.spec import EXAMPLES, load_spec
from apgrid.grid.tracking import Tracker, spec_params
from apgrid.trainables.data import load_digits
from apgrid.trainables.masks import prunable_layers
from tests.helpers import small_grid


@pytest.fixture(scope="module")
def grid(ray_session, tmp_path_factory):
    output = tmp_path_factory.mktemp("tracked") / "out"
    launch(small_grid(output), log=lambda m: None)
    return output


def client(output) -> MlflowClient:
    return MlflowClient(f"sqlite:///{output / 'mlflow.db'}")


def runs(output, where: str) -> list:
    c = client(output)
    return c.search_runs([c.get_experiment_by_name("tiny").experiment_id], where)


def test_each_trained_model_loads_from_its_run_with_its_masks_applied(grid):
    mlflow.set_tracking_uri(f"sqlite:///{grid / 'mlflow.db'}")
    finished = runs(grid, "tags.level = 'model' and attributes.status = 'FINISHED'")
    trained = [r for r in finished if r.data.tags["stage"] != "evaluate"]
    assert sorted(r.data.tags["stage"] for r in trained) == ["dense", "prune"]
    x = load_digits().x_test[:16]
    for run in trained:
        logged = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model").eval()
        stored = apgrid.open(grid).load_model(run.data.tags["model_id"])
        with torch.no_grad():
            torch.testing.assert_close(logged(x), stored(x))
        assert not any(name.endswith("_mask") for name, _ in logged.named_buffers())  # folded in
        weights = torch.cat([m.weight.flatten() for _, m in prunable_layers(logged)])
        zeros = float((weights == 0).float().mean())
        assert zeros == pytest.approx(float(run.data.tags["sparsity"]), abs=0.01)


def test_evaluate_runs_span_their_evaluation(grid):
    """A run starts when its model's first shard is sent and ends once its rows are merged."""
    evaluate = runs(grid, "tags.stage = 'evaluate'")
    assert len(evaluate) == 2
    for run in evaluate:
        merged = (grid / run.data.tags["samples_uri"] / "part-0.parquet").stat().st_mtime_ns / 1e6
        assert run.info.start_time <= merged <= run.info.end_time


def test_runs_carry_their_data_user_and_source(grid):
    model_runs = runs(grid, "tags.level = 'model'")
    digests = {}
    for run in model_runs:
        tags = run.data.tags
        assert tags["mlflow.user"] == run.info.user_id == getpass.getuser()
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
        (used,) = run.inputs.dataset_inputs
        assert used.dataset.name == "digits" and used.dataset.source_type == "code"
        context = {t.key: t.value for t in used.tags}["mlflow.data.context"]
        assert context == ("evaluation" if tags["stage"] == "evaluate" else "training")
        digests.setdefault(context, set()).add(used.dataset.digest)
    assert [len(d) for d in digests.values()] == [1, 1] and digests["training"] != digests["evaluation"]


def test_the_grid_run_holds_the_specs_params_and_a_summary(grid):
    (parent,) = runs(grid, "tags.level = 'grid'")
    params = parent.data.params
    assert params["threat_model.eps"] == "0.1" and params["prune.sparsities"] == "0.9"
    assert params["dense.recipe.epochs"] == "1" and params["evaluation.num_samples"] == "20"
    assert params["prune.methods.lwm-global.name"] == "lwm-global"
    assert not [k for k in params if k.startswith(("output", "resources.", "analysis."))]  # not identity
    evaluated = runs(grid, "tags.stage = 'evaluate'")
    metrics = parent.data.metrics
    assert metrics["models_planned"] == metrics["models_evaluated"] == 2
    assert metrics["mean_aa_acc"] == pytest.approx(
        statistics.mean(r.data.metrics["aa_acc"] for r in evaluated)
    )
    assert metrics["mean_clean_acc"] == pytest.approx(
        statistics.mean(r.data.metrics["clean_acc"] for r in evaluated)
    )


def tree_digest(folder) -> dict:
    """Every file's content and modification time: a file rewritten with the same bytes counts."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_copied_grid_resumes_and_analyzes_into_itself_and_leaves_the_original_untouched(
    grid, tmp_path, capsys
):
    before = tree_digest(grid)
    copy = tmp_path / "copy"
    shutil.copytree(grid, copy)
    lines = []
    resume(copy, log=lines.append)  # logs the spec and the report to the grid run again
    assert main(["analyze", str(copy)]) == 0
    assert main(["query", str(copy), "--where", "stage = 'evaluate'"]) == 0
    capsys.readouterr()
    assert tree_digest(grid) == before
    for run in runs(copy, "tags.stage = 'evaluate'"):
        assert run.info.artifact_uri.startswith((copy / "mlartifacts").resolve().as_uri())
        assert (copy / run.data.tags["samples_uri"] / "part-0.parquet").is_file()
    (parent,) = runs(copy, "tags.level = 'grid'")
    assert "report/index.html" in [a.path for a in client(copy).list_artifacts(parent.info.run_id, "report")]


def test_a_moved_grids_artifacts_list_and_download_from_where_it_is(grid, tmp_path, capsys):
    moved = grid.rename(tmp_path / "moved")
    try:
        assert main(["status", str(moved)]) == 0  # any apgrid command opens the folder where it is
        for run in runs(moved, "tags.stage = 'evaluate'"):
            model_id = run.data.tags["model_id"]
            assert "card.json" in [a.path for a in client(moved).list_artifacts(run.info.run_id)]
            card = client(moved).download_artifacts(run.info.run_id, "card.json", str(tmp_path))
            assert open(card).read() == (moved / "models" / model_id / "card.json").read_text()
        mlflow.set_tracking_uri(f"sqlite:///{moved / 'mlflow.db'}")
        trained = runs(moved, "tags.stage = 'prune'")[0].info.run_id
        (tmp_path / "m").mkdir()
        assert mlflow.pytorch.load_model(f"runs:/{trained}/model", dst_path=str(tmp_path / "m")) is not None
    finally:
        moved.rename(grid)
        main(["status", str(grid)])  # and back, for any test after this one
        capsys.readouterr()


@pytest.mark.parametrize("example", ["survey-cifar-tiny", "survey", "thin-ice", "compressed"])
def test_every_example_grids_params_are_keys_mlflow_accepts(example, tmp_path):
    # flyingbird+ as a key part made MLflow refuse the survey grids' parent run at launch
    spec = load_spec(EXAMPLES / f"{example}.yaml")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", spec.name, artifact_root=tmp_path / "artifacts")
    run_id = tracker.grid_run(spec.fingerprint(), spec_params(spec))
    params = MlflowClient(tracker.uri).get_run(run_id).data.params
    assert len(params) == len(spec_params(spec))
    if example.startswith("survey"):
        assert params["prune.methods.flyingbird_plus.name"] == "flyingbird+"
