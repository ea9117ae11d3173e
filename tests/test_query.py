"""`apgrid query` against a real MLflow store: every operator, `or` and IN done correctly, and
what MLflow cannot express refused in one line (exit 2), never an empty answer."""

import pytest
from mlflow import MlflowClient

from apgrid.grid.cli import main
from apgrid.grid.query import QueryError, mlflow_filters, parse_where, query_runs

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
            experiment, tags={"level": "model", "method": method, "arch": arch, "stage": "evaluate"}
        )
        client.log_metric(run.info.run_id, "sparsity", sparsity)
        client.log_metric(run.info.run_id, "aa_acc", aa)
        client.log_param(run.info.run_id, "prune.method", method)
        client.set_terminated(run.info.run_id, status)
    grid = client.create_run(experiment, tags={"level": "grid"})  # never listed
    client.set_terminated(grid.info.run_id)
    return uri


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
def test_every_operator_against_a_real_store(store, where, expected):
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
def test_what_mlflow_cannot_express_is_refused_in_one_line(store, where, says, capsys, tmp_path):
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
