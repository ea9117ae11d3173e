"""End to end under Ray: a tiny grid with an injected crash, MLflow runs, Parquet rows, the report,
`apgrid query`, a resume that redoes nothing, and an output folder that belongs to another grid."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from apgrid.grid.cli import main
from apgrid.grid.errors import GridError
from apgrid.grid.plan import all_models
from apgrid.grid.runner import launch, load_grid_spec, resume
from apgrid.grid.spec import load_spec
from apgrid.grid.store import read_samples
from tests.conftest import SIGINT_AT_START  # imported at collection, before any test runs Tune
from tests.helpers import tiny_grid, tiny_spec

N_SAMPLES = 30  # tiny_grid's evaluation.num_samples


@pytest.fixture(scope="module")
def grid_runs(ray_session, tmp_path_factory):
    """The tiny grid launched `--until prune` (what it left then), then launched again to the end."""
    output = tmp_path_factory.mktemp("grid") / "out"
    spec = tiny_spec(output)
    marker = str(output.parent / "faults")
    faults = [
        {"stage": "dense", "epoch": 1, "kind": "raise", "marker": marker},
        {"stage": "prune", "epoch": 1, "kind": "exit", "marker": marker},  # os._exit(1)
        {"stage": "evaluate", "shard": 10, "kind": "exit", "marker": marker},
    ]
    lines = []
    launch(spec, fault=faults, log=lines.append, until="prune")  # trained now, evaluated later
    stopped = {
        "state": json.loads((output / "grid.json").read_text()),
        "parquet": list(output.glob("samples/**/*.parquet")),
        "last_line": lines[-1],
        "grid_run": _grid_run(spec),
    }
    launch(spec, fault=faults, log=lines.append)
    return spec, output, lines, stopped


@pytest.fixture(scope="module")
def finished_grid(grid_runs):
    spec, output, lines, _ = grid_runs
    return spec, output, lines


def _grid_run(spec):
    client = mlflow.MlflowClient(spec.resolved_tracking_uri)
    experiment = client.get_experiment_by_name(spec.name).experiment_id
    return client.search_runs([experiment], "tags.level = 'grid'")[0]


def test_grid_writes_parquet_rows_once_per_model_and_sample(finished_grid):
    spec, output, _ = finished_grid
    samples = read_samples(output)
    models = all_models(spec)
    assert len(models) == 3
    assert len(samples) == len(models) * N_SAMPLES
    assert not samples.duplicated(["model_id", "sample_idx"]).any()
    assert set(samples["model_id"]) == {m.model_id for m in models}
    for column in (
        "grid",
        "dense_model_id",
        "role",
        "sparsity",
        "sparsity_measured",
        "label",
        "clean_correct",
        "logit_margin",
        "pgd_correct",
        "aa_correct",
        "aa_broken_by",
        "fmn_eps",
        "fmn_found",
        "norm",
        "eps",
        "autoattack_version",
    ):
        assert column in samples.columns, column
    assert (samples["eval_batch_size"] == 10).all()  # auto on CPU: the whole block of 10
    assert (samples["autoattack_attacks"] == "apgd-ce,apgd-t").all()
    assert set(samples["aa_broken_by"].dropna()) <= {"apgd-ce", "apgd-t"}
    pruned = samples[samples.role == "pruned"]
    assert pruned["sparsity_measured"].between(0.895, 0.905).all()
    per_model = samples.groupby("model_id")[["pgd_correct", "aa_correct"]].sum()
    assert (per_model["aa_correct"] <= per_model["pgd_correct"]).all()
    opened = pd.read_parquet(output / "samples")  # the standard one-liner reads the folder
    assert len(opened) == len(samples) and set(opened["model_id"].astype(str)) == set(samples["model_id"])


def test_crashed_trial_was_retried_from_its_checkpoint(finished_grid):
    spec, output, lines = finished_grid
    assert any("retrying from its last checkpoint" in line for line in lines)
    mlflow.set_tracking_uri(spec.resolved_tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=["tiny"], filter_string="tags.stage = 'dense'", output_format="list"
    )
    by_status = sorted((r.data.tags["attempt"], r.info.status) for r in runs)
    assert by_status == [("1", "FAILED"), ("2", "FINISHED")]
    retry = next(r for r in runs if r.info.status == "FINISHED")
    client = mlflow.tracking.MlflowClient(spec.resolved_tracking_uri)
    epochs = [m.value for m in client.get_metric_history(retry.info.run_id, "epoch")]
    assert min(epochs) == 2 and max(epochs) == 3  # resumed after epoch 1, not from scratch


def test_trial_killed_by_os_exit_was_retried_from_its_checkpoint(finished_grid):
    spec, output, _ = finished_grid
    client = mlflow.tracking.MlflowClient(spec.resolved_tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'prune' and tags.method = 'hydra'")
    # HYDRA died at the start of its epoch 1, after its score-search epoch was checkpointed
    assert sorted((r.data.tags["attempt"], r.info.status) for r in runs) == [
        ("1", "FAILED"),
        ("2", "FINISHED"),
    ]
    retry = next(r for r in runs if r.info.status == "FINISHED")
    epochs = [m.value for m in client.get_metric_history(retry.info.run_id, "epoch")]
    assert epochs == [2.0]  # resumed after the checkpointed epoch 1, not redone from scratch
    assert [p.name.split("-")[0] for p in (output.parent / "faults").glob("*-prune-epoch1")] == ["hydra"]


def test_evaluation_actor_killed_mid_shard_loses_and_doubles_nothing(finished_grid):
    """Each model's actor died once on shard [10, 20); Ray restarted it and redid the shard. Its
    rows equal an in-process evaluation of the same samples."""
    from apgrid.grid.store import ModelStore
    from apgrid.trainables.data import load_dataset
    from apgrid.trainables.evaluation import evaluate_samples
    from apgrid.trainables.masks import apply_masks
    from apgrid.trainables.models import build_model

    spec, output, _ = finished_grid
    assert len(list((output.parent / "faults").glob("*-evaluate-shard10"))) == 3
    samples = read_samples(output)
    hydra = next(m for m in all_models(spec) if m.method == "hydra")
    rows = samples[samples.model_id == hydra.model_id].set_index("sample_idx").loc[10:19]
    ds = load_dataset("digits")
    model = build_model("digits-cnn", 1, ds.num_classes, ds.mean, ds.std)
    state, masks = ModelStore(output).load_weights(hydra.model_id)
    model.load_state_dict(state)
    apply_masks(model, masks)
    direct = evaluate_samples(
        model.eval(),
        ds.x_test[10:20],
        ds.y_test[10:20],
        10,
        spec.threat_model,
        spec.evaluation.settings,
        False,
        "cpu",
    ).set_index("sample_idx")
    for column in ("clean_correct", "pgd_correct", "aa_correct", "fmn_found"):
        assert rows[column].tolist() == direct[column].tolist(), column
    for column in ("fmn_eps", "logit_margin"):  # other thread counts: float rounding only
        np.testing.assert_allclose(
            rows[column].to_numpy(float), direct[column].to_numpy(float), rtol=1e-5, atol=1e-6, err_msg=column
        )


def test_mlflow_runs_are_nested_tagged_and_closed(finished_grid):
    spec, output, _ = finished_grid
    mlflow.set_tracking_uri(spec.resolved_tracking_uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    grid_run = [r for r in runs if r.data.tags.get("level") == "grid"]
    assert len(grid_run) == 1 and grid_run[0].info.status == "FINISHED"
    evaluate = [r for r in runs if r.data.tags.get("stage") == "evaluate"]
    assert len(evaluate) == 3
    for run in runs:
        assert run.info.status != "RUNNING"
    for run in evaluate:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == grid_run[0].info.run_id
        for tag in (
            "model_id",
            "dense_model_id",
            "method",
            "arch",
            "dataset",
            "sparsity",
            "config_hash",
            "attempt",
        ):
            assert tag in tags
        assert {"clean_acc", "pgd_acc", "aa_acc", "fmn_acc_at_eps"} <= set(run.data.metrics)
        assert run.data.params["evaluation.batch_size"] == "10"  # auto, resolved
        assert run.data.params["evaluation.autoattack_attacks"] == "apgd-ce,apgd-t"
        assert run.data.params["evaluation.seed"] == "0" and "seed" not in run.data.params
        assert run.data.params["threat_model.eps"] == "0.1"
    hydra = next(r for r in evaluate if r.data.tags["method"] == "hydra")
    assert hydra.data.tags["pipeline"] == "A" and hydra.data.tags["scope"] == "local"


def test_mlflow_runs_read_as_mlflow_users_expect(finished_grid):
    """The resolved config as dotted params that MLflow's own search filters on, the code version
    as tags, no Tune bookkeeping among the metrics, the spec an artifact of the grid run."""
    spec, output, _ = finished_grid
    mlflow.set_tracking_uri(spec.resolved_tracking_uri)
    hydra = mlflow.search_runs(
        experiment_names=["tiny"],
        output_format="list",
        filter_string=("params.prune.sparsity = '0.9' and tags.method = 'hydra' and tags.stage = 'evaluate'"),
    )
    assert len(hydra) == 1 and hydra[0].data.metrics["aa_acc"] >= 0
    params = hydra[0].data.params
    assert params["prune.method"] == "hydra" and params["prune.finetune.epochs"] == "1"
    assert params["prune.search.lr"] == "0.1" and params["dataset.name"] == "digits"
    dense = mlflow.search_runs(
        experiment_names=["tiny"],
        output_format="list",
        filter_string="tags.stage = 'dense' and attributes.status = 'FINISHED'",
    )
    assert dense[0].data.params["dense.recipe.trainer"] == "fgsm-rs"
    assert dense[0].data.params["dense.seed"] == "0"
    every = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    for run in every:
        assert run.data.tags["apgrid.version"]
        assert len(run.data.tags.get("mlflow.source.git.commit", "x" * 40)) == 40
        assert not {"should_checkpoint", "training_iteration", "time_total_s", "params"} & set(
            run.data.metrics
        )
    grid = next(r for r in every if r.data.tags["level"] == "grid")
    client = mlflow.MlflowClient(spec.resolved_tracking_uri)
    assert "spec.yaml" in [a.path for a in client.list_artifacts(grid.info.run_id)]


def test_mlflow_artifacts_stay_inside_the_output_folder(finished_grid):
    spec, output, _ = finished_grid
    client = mlflow.tracking.MlflowClient(spec.resolved_tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=["tiny"], filter_string="tags.stage = 'evaluate'", output_format="list"
    )
    for run in runs:
        assert run.info.artifact_uri.startswith((output / "mlartifacts").as_uri())
        assert "card.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_report_is_written_and_logged(finished_grid):
    spec, output, _ = finished_grid
    report = (output / "report" / "report.md").read_text()
    assert "AutoAttack `standard` (apgd-ce, apgd-t only)" in report
    for title in ("Table 1", "Table 2", "Leaderboard", "Transfer attacks", "Cost of the models"):
        assert f"## {title}" in report
    pngs = {p.name.split("_")[0] for p in (output / "report").glob("*.png")}
    assert {"security", "fig1", "fig2", "transfer"} <= pngs
    assert (output / "report" / "index.html").stat().st_size > 10_000
    client = mlflow.MlflowClient(spec.resolved_tracking_uri)
    grid_run = client.search_runs(
        [client.get_experiment_by_name(spec.name).experiment_id], "tags.level = 'grid'"
    )[0]
    logged = [a.path for a in client.list_artifacts(grid_run.info.run_id, "report")]
    assert "report/index.html" in logged and "report/costs.csv" in logged


def test_analyze_selects_models_and_prints_tables(finished_grid, capsys, tmp_path):
    _, output, _ = finished_grid
    full = {p.name: p.read_bytes() for p in (output / "report").iterdir() if p.is_file()}
    hydra = next(m for m in read_samples(output)["model_id"].unique() if m.startswith("hydra-"))
    pattern = hydra.rsplit("-", 1)[0] + "-*"  # the help's shape: hydra-sp95-*
    assert main(["analyze", str(output), "--models", pattern, "--format", "csv", "--no-models"]) == 0
    out = capsys.readouterr().out
    table2 = out.split("# table2_thin_ice\n")[1].split("\n# ")[0].strip().splitlines()
    assert len(table2) == 2 and ",hydra," in table2[1]  # header + the one HYDRA model
    partial = output / "report-partial" / pattern.rstrip("-*")
    assert (partial / "models.csv").read_text().count("\n") == 3  # header, HYDRA, its dense parent
    # the full report is untouched: same files, same bytes, nothing of the partial one beside them
    assert {p.name: p.read_bytes() for p in (output / "report").iterdir() if p.is_file()} == full

    elsewhere = tmp_path / "partial"
    assert main(["analyze", str(output), "--models", "dense-*", "-o", str(elsewhere), "--no-models"]) == 0
    assert "hydra" not in (elsewhere / "models.csv").read_text()
    assert main(["analyze", str(output), "--models", "hydra-*", "-o", str(output / "report")]) == 2
    assert "is the full report's folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (output / "report").iterdir() if p.is_file()} == full

    args = ["query", str(output), "--table", "table2_thin_ice", "--format", "json"]
    assert main([*args, "--where", "method = 'hydra'", "--columns", "method,S10"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["hydra"] and 0 <= rows[0]["S10"] <= 1
    assert main(["analyze", str(output), "--models", "nothing-*"]) == 2
    assert main(["query", str(output), "--table", "nonsense"]) == 2


def test_query_lists_runs(finished_grid, capsys):
    _, output, _ = finished_grid
    assert (
        main(["query", str(output), "--where", "method='hydra' and stage='evaluate'", "--format", "json"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["method"] == "hydra" and 0 <= rows[0]["aa_acc"] <= 1
    assert (
        main(
            [
                "query",
                str(output),
                "--where",
                "sparsity>=0.5 and stage='prune'",
                "--format",
                "csv",
                "--columns",
                "model_id,status",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "model_id,status" and len(lines) == 4  # hydra's failed attempt too
    assert sum(line.endswith(",FAILED") for line in lines) == 1
    assert main(["query", str(output), "--where", "colour='red'"]) == 2


def test_status_shows_stages_and_attempts(finished_grid, capsys):
    _, output, _ = finished_grid
    assert main(["status", str(output)]) == 0
    out = capsys.readouterr().out
    assert "analyze   done" in out and "attempt 2" in out


def test_a_grid_stopped_after_prune_has_its_models_and_nothing_evaluated(grid_runs):
    spec, output, lines, stopped = grid_runs
    assert stopped["state"]["stages"] == {"checkpoints": "done", "dense": "done", "prune": "done"}
    assert stopped["parquet"] == []
    assert "stopped after prune as asked" in stopped["last_line"]
    assert "runs evaluate -> analyze" in stopped["last_line"]
    assert stopped["grid_run"].data.tags["last_stage"] == "prune"
    assert stopped["grid_run"].info.status == "FINISHED"
    # the second launch trained nothing again, and the grid run ended as a whole grid
    assert [line for line in lines if line.startswith("[prune]") and "2 already done" in line]
    grid_run = _grid_run(spec)
    assert grid_run.data.tags["last_stage"] == "analyze" and grid_run.info.status == "FINISHED"


def test_an_unknown_until_stage_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(GridError, match="unknown stage 'train'"):
        launch(tiny_spec(tmp_path / "out"), until="train")
    assert not (tmp_path / "out").exists()


def test_resume_of_a_finished_grid_redoes_nothing(finished_grid):
    spec, output, _ = finished_grid
    before = {p: p.stat().st_mtime_ns for p in output.glob("samples/**/*.parquet")}
    lines = []
    resume(output, log=lines.append)
    assert any("0 to run" in line for line in lines if line.startswith("[dense]"))
    assert any("0 to run" in line for line in lines if line.startswith("[prune]"))
    after = {p: p.stat().st_mtime_ns for p in output.glob("samples/**/*.parquet")}
    assert before == after
    assert len(read_samples(output)) == 3 * N_SAMPLES


def test_resumed_grid_keeps_the_batch_size_its_rows_record(tmp_path):
    """The batch seeds AutoAttack: a resume must reuse the first run's choice, not a new estimate
    (the actor is never asked: None stands in for it)."""
    from apgrid.grid.evaluate import resolve_batch_sizes
    from apgrid.grid.store import SampleStore

    spec = tiny_spec(tmp_path / "out")
    store = SampleStore(spec.output_dir, spec.name)
    store.write_shard(
        "m1", 0, 10, pd.DataFrame({"sample_idx": range(10), "arch": "digits-cnn", "eval_batch_size": 5})
    )
    lines = []
    assert resolve_batch_sizes(spec, ["digits-cnn"], store, [None], lines.append) == {"digits-cnn": 5}
    assert "as its rows already written" in lines[0]
    fixed = tiny_spec(tmp_path / "out", evaluation={"block_size": 10, "batch_size": 64})
    assert resolve_batch_sizes(fixed, ["digits-cnn"], store, [None]) == {"digits-cnn": 10}


def test_a_block_too_big_for_memory_is_one_clear_grid_error(tmp_path, ray_session):
    """An actor that finds no batch fits raises MemoryError; the driver must turn it into one
    GridError naming the architecture, not a Ray traceback."""
    import ray

    from apgrid.grid.errors import GridError
    from apgrid.grid.evaluate import resolve_batch_sizes
    from apgrid.grid.store import SampleStore

    @ray.remote(num_cpus=0)
    class NoRoom:
        def batch_size_for(self, arch, block_size):
            raise MemoryError("one sample needs 9 GB; set evaluation.batch_size")

    spec = tiny_spec(tmp_path / "out")
    store = SampleStore(spec.output_dir, spec.name)
    actor = NoRoom.remote()
    with pytest.raises(GridError, match=r"^evaluate: digits-cnn: .*evaluation\.batch_size"):
        resolve_batch_sizes(spec, ["digits-cnn"], store, [actor])
    ray.kill(actor)


def test_the_batch_size_fits_the_actor_with_the_least_memory(tmp_path, ray_session):
    """On a cluster of mixed cards the actors' budgets differ; the grid's one batch size must fit
    the smallest, or the actor on it runs out of memory mid-grid."""
    import ray

    from apgrid.grid.evaluate import resolve_batch_sizes
    from apgrid.grid.store import SampleStore

    @ray.remote(num_cpus=0)
    class Card:
        def __init__(self, budget):
            self.budget = budget

        def batch_size_for(self, arch, block_size):
            from apgrid.trainables.evaluation import fit_batch_size

            return fit_batch_size(block_size, 2**20, self.budget), 2**20, self.budget

    spec = tiny_spec(tmp_path / "out", evaluation={"block_size": 100})
    store = SampleStore(spec.output_dir, spec.name)
    cards = [Card.remote(200 * 2**20), Card.remote(60 * 2**20), Card.remote(120 * 2**20)]
    lines = []
    assert resolve_batch_sizes(spec, ["digits-cnn"], store, cards, lines.append) == {"digits-cnn": 50}
    assert "smallest of 3 actors' 60 MB budget per actor" in lines[0]
    for card in cards:
        ray.kill(card)


def test_output_of_another_grid_is_refused(finished_grid, tmp_path, capsys):
    _, output, _ = finished_grid
    other = tmp_path / "other.yaml"
    raw = yaml.safe_load((output / "spec.yaml").read_text())
    raw["threat_model"]["eps"] = 0.2
    other.write_text(yaml.safe_dump(raw))
    files_before = sorted(output.rglob("*"))
    assert main(["launch", str(other), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "belongs to another grid ('tiny'; it differs in threat_model.eps: 0.1 -> 0.2)" in err
    assert sorted(output.rglob("*")) == files_before


def test_a_grid_moved_to_other_resources_continues_with_its_finished_work(finished_grid, tmp_path):
    """Resources, retries and the number of actors are how a grid runs, not what it computes: a
    launch into the same folder with new ones redoes nothing, and `resume` then uses them."""
    spec, output, _ = finished_grid
    moved = yaml.safe_load((output / "spec.yaml").read_text())
    moved["resources"]["actor_cpus"] = 0.5
    moved["evaluation"]["actors"] = 1
    moved["max_failures"] = 5
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(moved))
    finished = [*output.glob("models/*/model.pt"), *output.glob("samples/**/*.parquet")]
    before = {p: p.stat().st_mtime_ns for p in finished}
    lines = []
    launch(load_spec(tmp_path / "moved.yaml", output=str(output)), log=lines.append)
    changed = next(line for line in lines if "continuing grid 'tiny'" in line)
    assert changed.split("changed: ")[1] == (
        "max_failures: 2 -> 5; evaluation.actors: 2 -> 1; resources.actor_cpus: 1.0 -> 0.5"
    )
    assert len(before) == 6 and {p: p.stat().st_mtime_ns for p in finished} == before
    assert any("3 models, 3 already evaluated" in line for line in lines)
    assert load_grid_spec(output).resources.actor_cpus == 0.5  # what `resume` runs with now


def test_a_grids_identity_is_what_it_computes_not_where_or_on_what(tmp_path):
    spec = tiny_spec(tmp_path / "out")
    other = tiny_spec(tmp_path / "out", resources={"actor_cpus": 2})
    assert other.fingerprint() == spec.fingerprint()
    assert tiny_spec(tmp_path / "elsewhere").fingerprint() == spec.fingerprint()
    data_here, data_there = ({"name": "digits", "root": str(tmp_path / d)} for d in ("a", "b"))
    here = tiny_spec(tmp_path / "out", dataset=data_here)
    assert here.fingerprint() == tiny_spec(tmp_path / "out", dataset=data_there).fingerprint()
    assert (
        tiny_spec(tmp_path / "out", threat_model={"norm": "Linf", "eps": 0.2}).fingerprint()
        != spec.fingerprint()
    )


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    from apgrid.grid.store import CheckpointError, ModelStore

    store = ModelStore(tmp_path)
    (store.folder("m")).mkdir(parents=True)
    (store.folder("m") / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        store.load_weights("m")


def test_ctrl_c_is_ours_again_after_the_tune_stages(finished_grid):
    """Tune installs a SIGINT handler and leaves it; evaluate would then ignore Ctrl-C. The handler
    must be the one this process started with (SIG_IGN when run as a background job)."""
    import signal

    assert signal.getsignal(signal.SIGINT) is SIGINT_AT_START


@pytest.mark.slow
def test_a_dense_only_grid_trains_evaluates_and_reports_its_dense_models(tmp_path, ray_session):
    spec = tiny_spec(
        tmp_path / "out",
        prune={"methods": []},
        evaluation={
            "num_samples": 10,
            "block_size": 10,
            "shards": 1,
            "actors": 1,
            "pgd_steps": 5,
            "fmn_steps": 20,
            "autoattack_attacks": ["apgd-ce"],
        },
    )
    lines = []
    launch(spec, log=lines.append)
    assert any(line.startswith("[prune] 0 models") for line in lines)
    samples = read_samples(spec.output_dir)
    assert set(samples["role"]) == {"dense"} and len(samples) == 10
    report = (spec.output_dir / "report" / "report.md").read_text()
    assert "1 model (1 dense, 0 pruned)" in report and "No pruned model" in report


def test_the_readmes_python_api_example_runs(finished_grid, capsys):
    import re
    from pathlib import Path

    spec, output, _ = finished_grid
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    namespace = {}
    exec(code.replace('"runs/demo"', repr(str(output))), namespace)
    assert len(namespace["models"]) == 3 and set(namespace["hydra"]["method"]) == {"hydra"}
    assert len(namespace["hydra"]) == N_SAMPLES
    out = capsys.readouterr().out
    assert "aa_acc" in out and out.count("hydra") >= 2
    assert len(namespace["rows"]) == 10 and "clean_correct" in out  # apgrid.evaluate, load_model
    assert namespace["model"].training is False
    import apgrid

    g = apgrid.open(output)
    assert "tiny" in repr(g) and len(g.table("table2_thin_ice")) == 2
    with pytest.raises(GridError, match="no column 'colour'"):
        g.samples(colour="red")


def test_load_model_and_apgrid_evaluate_reproduce_the_grids_rows(finished_grid):
    import apgrid
    from apgrid.trainables.masks import masks_of

    spec, output, _ = finished_grid
    g = apgrid.open(output)
    stored = g.samples()
    evaluation = {k: v for k, v in tiny_grid(output)["evaluation"].items() if k not in ("shards", "actors")}
    for plan in [p for p in all_models(spec) if p.method in ("dense", "hydra")]:
        model = g.load_model(plan.model_id)
        assert not model.training and next(model.parameters()).device.type == "cpu"
        assert bool(masks_of(model)) == (plan.method == "hydra")  # masks applied, pruned weights 0
        grid_rows = stored[stored["model_id"] == plan.model_id].reset_index(drop=True)
        rows = apgrid.evaluate(
            model,
            "digits",
            {"norm": "Linf", "eps": 0.1},
            device="cpu",
            name=plan.model_id,
            signed_fmn=plan.role == "dense",
            batch_size=int(grid_rows["eval_batch_size"].iloc[0]),
            **evaluation,
        )
        assert list(rows.columns) == list(grid_rows.columns)
        exact = ["sample_idx", "label", "clean_pred", "clean_correct", "pgd_correct", "aa_correct"]
        exact += ["fmn_found", "role", "dataset", "norm", "eps", "pgd_steps", "autoattack_attacks"]
        pd.testing.assert_frame_equal(rows[exact], grid_rows[exact])
        for column in ("logit_margin", "fmn_eps", "fmn_eps_bounded", "fmn_eps_untargeted"):
            np.testing.assert_allclose(rows[column], grid_rows[column], rtol=1e-4, atol=1e-5)


def test_load_model_of_an_unknown_id_names_the_closest_ones(finished_grid):
    import apgrid

    spec, output, _ = finished_grid
    hydra = next(p.model_id for p in all_models(spec) if p.method == "hydra")
    with pytest.raises(GridError, match=f"no model '{hydra[:-1]}' in .*; closest ids.*{hydra}"):
        apgrid.open(output).load_model(hydra[:-1])


ROBUSTBENCH_FIELDS = {  # RobustBench/robustbench model_info/cifar10/Linf/*.json, leaderboard.html.j2
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "external",
    "footnote",
    "unreliable",
}


def test_export_writes_robustbench_tree_with_every_field_and_the_users_names(finished_grid, tmp_path, capsys):
    import re

    spec, output, _ = finished_grid
    hydra = next(p.model_id for p in all_models(spec) if p.method == "hydra")
    names = tmp_path / "names.yaml"
    names.write_text(
        yaml.safe_dump(
            {
                hydra: {
                    "file": "Sehwag2020Hydra_tiny",
                    "name": "HYDRA: Pruning Adversarially Robust Neural Networks",
                    "authors": "Vikash Sehwag, Shiqi Wang, Prateek Mittal, Suman Jana",
                    "venue": "NeurIPS 2020",
                    "link": "https://arxiv.org/abs/2002.10509",
                    "reported": 62.24,
                }
            }
        )
    )
    out = tmp_path / "model_info"
    assert main(["export", str(output), str(out), "--names", str(names)]) == 0
    files = sorted(out.rglob("*.json"))
    assert len(files) == 3 and {f.parent.relative_to(out).as_posix() for f in files} == {"digits/Linf"}
    infos = {f.stem: json.loads(f.read_text()) for f in files}
    for info in infos.values():
        assert ROBUSTBENCH_FIELDS <= set(info), ROBUSTBENCH_FIELDS - set(info)
        for key in ("clean_acc", "autoattack_acc", "external"):
            assert re.fullmatch(r"\d{1,3}\.\d\d", info[key]), (key, info[key])
        assert float(info["external"]) <= float(info["autoattack_acc"])  # more attacks, never more robust
        assert info["eps"] == "0.1" and info["dataset"] == "digits" and info["number_forward_passes"] == 1
        assert info["unreliable"] is True and "apgd-ce,apgd-t" in info["footnote"]  # a subset of AA
    named = infos["Sehwag2020Hydra_tiny"]
    assert named["venue"] == "NeurIPS 2020" and named["authors"].startswith("Vikash Sehwag")
    assert named["reported"] == "62.24" and named["apgrid"]["model_id"] == hydra
    dense = next(i for i in infos.values() if i["apgrid"]["role"] == "dense")
    assert dense["link"] == dense["authors"] == dense["venue"] == "" and dense["reported"] == ""
    assert dense["name"] != dense["apgrid"]["model_id"] and "seed" in dense["name"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("[a, b", "is not YAML or JSON"),
        ("- a\n- b\n", "must map model ids to their fields, got list"),
        ("nope: {name: x}", "no model 'nope' in the grid; closest:"),
        ("HYDRA: {venu: NeurIPS}", "HYDRA.venu: unknown field; allowed: file, name"),
        ("HYDRA: {authors: 3}", "HYDRA.authors: must be text, got 3"),
        ("HYDRA: {unreliable: maybe}", "HYDRA.unreliable: 'maybe' is not true or false"),
        ("HYDRA: {file: ../up}", "HYDRA.file: '../up' is not a file name"),
        ("HYDRA: {file: same}\nDENSE: {file: same}", "two models would write"),
    ],
)
def test_export_refuses_a_bad_names_file_in_one_line(finished_grid, tmp_path, capsys, text, message):
    spec, output, _ = finished_grid
    ids = {p.method: p.model_id for p in all_models(spec)}
    names = tmp_path / "names.yaml"
    names.write_text(text.replace("HYDRA", ids["hydra"]).replace("DENSE", ids["dense"]))
    message = message.replace("HYDRA", ids["hydra"])
    out = tmp_path / "model_info"
    assert main(["export", str(output), str(out), "--names", str(names)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_compare_two_grids_and_two_models(finished_grid, capsys, tmp_path):
    import shutil

    spec, output, _ = finished_grid
    copy = tmp_path / "copy"
    shutil.copytree(output / "samples", copy / "samples")
    shutil.copy(output / "grid.json", copy / "grid.json")
    assert main(["compare", str(output), str(copy), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["shared_samples"] == N_SAMPLES for r in rows)
    assert all(
        r["aa_differ"] == 0 and r["fmn_eps_differ"] == 0 and r["aa_mcnemar_p"] == 1.0 for r in rows
    )  # the same rows: nothing differs
    dense, hydra = (next(p.model_id for p in all_models(spec) if p.method == m) for m in ("dense", "hydra"))
    assert main(["compare", dense, hydra, "--grid", str(output), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["model_a"] == dense and row["aa_only_a"] + row["aa_only_b"] == row["aa_differ"]
    assert main(["compare", dense, "nope", "--grid", str(output)]) == 2
    # short selectors: a unique prefix, a pattern; an ambiguous one names its candidates
    assert main(["compare", "dense", "hydra-sp90-*", "--grid", str(output), "--format", "json"]) == 0
    (short,) = json.loads(capsys.readouterr().out)
    assert (short["model_a"], short["model_b"]) == (dense, hydra)
    assert main(["compare", "dense", "*-sp90-*", "--grid", str(output)]) == 2
    err = capsys.readouterr().err
    assert "'*-sp90-*' is ambiguous: it matches " in err and hydra in err and len(err.splitlines()) == 1


def test_a_copied_output_folder_queries_its_own_store(finished_grid, tmp_path, capsys):
    import shutil

    spec, output, _ = finished_grid
    copy = tmp_path / "moved"
    shutil.copytree(output, copy, ignore=shutil.ignore_patterns("ray"))
    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    hydra = client.search_runs([experiment], "tags.method = 'hydra' and tags.stage = 'evaluate'")
    client.delete_run(hydra[0].info.run_id)  # only the copy's store knows
    assert main(["query", str(copy), "--where", "stage = 'evaluate'", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["query", str(output), "--where", "stage = 'evaluate'", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["status", str(copy)]) == 0
    assert "evaluate  FINISHED  2" in capsys.readouterr().out


def test_status_of_a_grid_without_runs_creates_no_store(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "grid.json").write_text(json.dumps({"name": "fresh", "stages": {}}))
    assert main(["status", str(tmp_path / "out")]) == 0
    assert "no runs logged yet" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["grid.json", "out"]


def test_mlflow_tracking_uri_is_honoured_when_the_spec_sets_none(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tiny_spec(tmp_path / "o").resolved_tracking_uri == "http://mlflow.example:5000"
    assert tiny_spec(tmp_path / "o", tracking_uri="sqlite:///x.db").tracking_uri == "sqlite:///x.db"


def test_progress_line_of_a_result_with_validation_pgd_alone():
    """Flying Bird+ reports its validation PGD accuracy while it trains, without a clean one: the
    progress line shows what there is (a callback that raises stops Tune, and the grid)."""
    from types import SimpleNamespace

    from apgrid.grid.progress import StageProgress

    lines = []
    progress = StageProgress("prune", lines.append, total=2)
    trial = SimpleNamespace(config={"model": {"model_id": "fb"}})
    progress.on_trial_result(0, [], trial, {"epoch": 3, "phase": "search", "val_pgd_acc": 0.25})
    progress.on_trial_result(0, [], trial, {"epoch": 4, "val_clean_acc": 0.5, "val_pgd_acc": 0.25})
    assert "epoch 3 search, loss 0.000, validation PGD 0.250" in lines[0]
    assert "validation clean 0.500 PGD 0.250" in lines[1]
