"""MLflow as its users expect: every trained model loads from its run with its masks applied,
evaluate runs span their evaluation, runs carry their data, user and source, the grid run holds
the spec and a summary. And an output folder that travels: a copy resumed and analysed writes
only into itself, a moved folder's artifacts list and download from where it is now."""

import hashlib
import shutil

import mlflow
import mlflow.pytorch
import pytest
from mlflow import MlflowClient

from apgrid.grid.cli import main
from apgrid.grid.runner import launch, resume
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
