"""`apgrid query` against a real MLflow store: every operator, `or` and IN done correctly, and
what MLflow cannot express refused in one line (exit 2), never an empty answer."""

import json

import pytest
from mlflow import MlflowClient

from apgrid.grid import query
from apgrid.grid.cli import main
from apgrid.grid.query import QueryError, format_runs, mlflow_filters, parse_where, query_runs, resolve_model

RUNS = [  # (method, arch, sparsity, aa_acc, status)
    ("hydra", "resnet18", 0.9, 0.41, "FINISHED"),
    ("hydra", "vgg16", 0.95, 0.35, "FINISHED"),
    ("lwm-global", "resnet18", 0.9, 0.44, "FINISHED"),
    ("lwm-local", "resnet18", 0.99, 0.20, "FAILED"),
    ("dense", "resnet18", 0.0, 0.47, "FINISHED"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("g", artifact_location=(folder / "art").as_uri())
    for method, arch, sparsity, aa, status in RUNS:
        run = client.create_run(
            experiment,
            tags={"level": "model", "method": method, "arch": arch, "stage": "evaluate"},
            run_name=f"evaluate {method} {arch}",
        )
        client.set_tag(run.info.run_id, "seed", "0")  # MLflow holds tags as text
        client.set_tag(run.info.run_id, "attempt", "1")
        client.log_metric(run.info.run_id, "sparsity", sparsity)
        client.log_metric(run.info.run_id, "aa_acc", aa)
        client.log_param(run.info.run_id, "prune.method", method)
        client.set_terminated(run.info.run_id, status)
    grid = client.create_run(experiment, tags={"level": "grid"})  # never listed
    client.set_terminated(grid.info.run_id)
    return uri


@pytest.fixture(params=["sqlite", "mlflow"])
def reader(request, monkeypatch):
    """Each filter answered twice: read from the SQLite file here, and by MLflow's search (as a
    tracking server's store is), which must agree."""
    if request.param == "mlflow":
        monkeypatch.setattr(query, "sqlite_store", lambda uri: None)
    return request.param


def methods(uri, where):
    return sorted(query_runs(uri, "g", where, None)["method"])


@pytest.mark.parametrize(
    "where, expected",
    [
        ("", ["dense", "hydra", "hydra", "lwm-global", "lwm-local"]),
        ("method = 'hydra'", ["hydra", "hydra"]),
        ("method != 'hydra'", ["dense", "lwm-global", "lwm-local"]),
        ("sparsity > 0.9", ["hydra", "lwm-local"]),
        ("sparsity >= 0.9", ["hydra", "hydra", "lwm-global", "lwm-local"]),
        ("sparsity < 0.9", ["dense"]),
        ("sparsity <= 0.9", ["dense", "hydra", "lwm-global"]),
        ("method LIKE 'lwm%'", ["lwm-global", "lwm-local"]),
        ("method ILIKE 'LWM-G%'", ["lwm-global"]),
        ("method IN ('hydra', 'lwm-local')", ["hydra", "hydra", "lwm-local"]),
        ("method NOT IN ('hydra', 'lwm-local')", ["dense", "lwm-global"]),
        ("method = 'hydra' or method = 'lwm-global'", ["hydra", "hydra", "lwm-global"]),
        ("method = 'hydra' and arch = 'vgg16' or aa_acc > 0.45", ["dense", "hydra"]),
        ("status = 'FAILED'", ["lwm-local"]),
        ("tags.method = 'hydra' and metrics.aa_acc > 0.4", ["hydra"]),
        ("params.`prune.method` = 'lwm-global'", ["lwm-global"]),
        ("tags.method IS NULL", []),
        ("(method = 'hydra' or method = 'dense') and arch = 'vgg16'", ["hydra"]),
        (
            "method = 'lwm-local' or (method = 'hydra' and (arch = 'vgg16' or sparsity > 0.9))",
            ["hydra", "lwm-local"],
        ),
    ],
)
def test_every_operator_against_a_real_store(store, reader, where, expected):
    assert methods(store, where) == expected


@pytest.mark.parametrize(
    "where, says",
    [
        ("method == 'hydra'", "use = to compare"),
        ("(method = 'hydra' or method = 'dense'", "is not closed"),
        ("method = 'hydra')", "closes no"),
        ("method = 'hydra' and ()", "expected a field name"),
        ("colour = 'red'", "unknown field 'colour'"),
        ("method = hydra", "expected a value"),
        ("method = 'hydra' and", "ends with"),
        ("method ~ 'x'", "cannot read"),
        ("method IN 'hydra'", "needs a list"),
        ("metrics.aa_acc LIKE 'x'", "MLflow refused it"),
    ],
)
def test_what_mlflow_cannot_express_is_refused_in_one_line(store, reader, where, says, capsys, tmp_path):
    with pytest.raises(QueryError, match=says.replace("(", r"\(")):
        query_runs(store, "g", where, None)
    assert main(["query", "--tracking-uri", store, "--experiment", "g", "--where", where]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apgrid: error: --where") and len(err.splitlines()) == 1, err


def test_in_over_tags_becomes_one_server_filter_per_value():
    assert mlflow_filters(parse_where("method IN ('a', 'b') and sparsity > 0.5")) == [
        "tags.level = 'model' and tags.method = 'a' and metrics.sparsity > 0.5",
        "tags.level = 'model' and tags.method = 'b' and metrics.sparsity > 0.5",
    ]


def test_columns_the_matched_runs_lack_are_shown_empty(store, reader):
    runs = query_runs(store, "g", "method = 'dense'", "method,aa_acc,pgd_acc,tags.dense_model_id")
    assert list(runs.columns) == ["method", "aa_acc", "pgd_acc", "dense_model_id"]
    assert runs["method"].tolist() == ["dense"] and runs["pgd_acc"].isna().all()


def test_run_name_is_a_column_as_it_is_a_filter(store, reader):
    runs = query_runs(store, "g", "run_name LIKE '%vgg16'", "run_name,method")
    assert runs.to_dict("records") == [{"run_name": "evaluate hydra vgg16", "method": "hydra"}]


def test_an_unknown_column_gets_one_line_with_close_names(store, capsys):
    with pytest.raises(QueryError, match="unknown column 'aa_ac'; did you mean aa_acc"):
        query_runs(store, "g", "", "method,aa_ac")
    assert main(["query", "--tracking-uri", store, "--experiment", "g", "--columns", "aa_ac"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apgrid: error: --columns") and len(err.splitlines()) == 1, err


def test_seed_and_attempt_are_integers_in_runs_and_json(store, reader):
    runs = query_runs(store, "g", "method = 'dense'", "seed,attempt")
    assert runs["seed"].tolist() == [0] and runs["attempt"].tolist() == [1]
    assert json.loads(format_runs(runs, "json")) == [{"seed": 0, "attempt": 1}]


@pytest.mark.parametrize(
    "selector, found",
    [
        ("hydra-sp95-digits-cnn-seed0-aa11", "hydra-sp95-digits-cnn-seed0-aa11"),
        ("hydra-sp95-digits-cnn-seed1", "hydra-sp95-digits-cnn-seed1-bb22"),
        ("dense-*", "dense-digits-cnn-seed0-cc33"),
        ("*-bb22", "hydra-sp95-digits-cnn-seed1-bb22"),
    ],
)
def test_a_model_is_named_by_a_unique_prefix_or_pattern(selector, found):
    assert resolve_model(selector, IDS) == found


def test_an_ambiguous_model_selector_lists_its_candidates():
    with pytest.raises(
        QueryError, match="'hydra-sp95' is ambiguous: it matches hydra-sp95-digits-cnn-seed0-aa11, "
    ):
        resolve_model("hydra-sp95", IDS)
    with pytest.raises(QueryError, match="no model 'lamp'"):
        resolve_model("lamp", IDS)


IDS = ["hydra-sp95-digits-cnn-seed0-aa11", "hydra-sp95-digits-cnn-seed1-bb22", "dense-digits-cnn-seed0-cc33"]


def test_the_grids_own_store_is_read_without_importing_mlflow(store):
    """`apgrid query` on a grid's SQLite store answers without MLflow's import and store set-up
    (seconds); a filter only MLflow can judge still goes to MLflow."""
    import subprocess
    import sys

    code = (
        "import sys; from apgrid.grid.query import query_runs; "
        f"print(sorted(query_runs({store!r}, 'g', sys.argv[1], None)['method'])); "
        "print('mlflow' in sys.modules)"
    )
    for where, expected, imported in [
        ("method LIKE 'lwm%' and aa_acc > 0.3", "['lwm-global']", "False"),
        ("tags.method IS NULL", "[]", "True"),
    ]:
        done = subprocess.run([sys.executable, "-c", code, where], capture_output=True, text=True)
        assert done.stdout.splitlines() == [expected, imported], done.stdout + done.stderr
