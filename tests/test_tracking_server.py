"""A real tracking server: `mlflow server` over HTTP with a SQLite and with a PostgreSQL backend
store, each started here on a loopback port; a tiny grid logs to it and is queried back with
`apgrid query` and a plain MLflow client. And 4 concurrent trials on the default SQLite store."""

import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlflow
import pytest

from apgrid.grid.cli import main
from apgrid.grid.runner import launch
from tests.helpers import MlflowServer, free_port, small_grid

pytestmark = pytest.mark.slow  # end-to-end grids beyond test_grid's: `make test`, not `make check`


@contextlib.contextmanager
def mlflow_server(backend_uri: str, folder: Path):
    server = MlflowServer(folder, backend_uri)
    try:
        server.start()
        yield server.uri
    finally:
        server.stop(graceful=True)


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def postgres_cluster():
    """A throw-away PostgreSQL cluster on a loopback port (Debian's `postgresql` package)."""
    bindir = _postgres_bin()
    if bindir is None:
        if os.environ.get("APGRID_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required here (APGRID_REQUIRE_POSTGRES) but not installed")
        pytest.skip("PostgreSQL not installed (apt-get install postgresql)")
    # Its own folder directly under the system temp dir: as root, the cluster runs as the
    # package's `postgres` user (postgres refuses root), who cannot enter pytest's 0700 folders.
    folder = Path(tempfile.mkdtemp(prefix="apgrid-pg-"))
    data, port = folder / "data", free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*cmd):
        done = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {done.stderr.strip()[-1000:]}")

    try:
        run(bindir / "initdb", "-D", data, "-U", "apgrid", "--auth=trust")
        run(
            bindir / "pg_ctl",
            "-D",
            data,
            "-l",
            folder / "pg.log",
            "-w",
            "start",
            "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -k {folder}",
        )
        try:
            yield f"postgresql://apgrid@127.0.0.1:{port}/postgres"
        finally:
            run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def grid_against(uri: str, output: Path, capsys):
    spec = small_grid(output, tracking_uri=uri)
    launch(spec, log=lambda m: None)
    assert not (output / "mlflow.db").exists()  # everything went to the server
    capsys.readouterr()  # Tune's own console output
    assert (
        main(
            [
                "query",
                "--tracking-uri",
                uri,
                "--experiment",
                "tiny",
                "--where",
                "stage='evaluate'",
                "--format",
                "json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["method"] for r in rows) == ["dense", "lwm-global"]
    assert all(r["status"] == "FINISHED" and 0 <= r["aa_acc"] <= 1 for r in rows)

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(
        experiment_names=["tiny"], filter_string="tags.stage = 'evaluate' and tags.role = 'pruned'"
    )
    assert len(runs) == 1 and runs.loc[0, "tags.method"] == "lwm-global"
    assert runs.loc[0, "metrics.measured_sparsity"] == pytest.approx(0.9, abs=0.01)
    client = mlflow.MlflowClient(uri)
    artifacts = [a.path for a in client.list_artifacts(runs.loc[0, "run_id"])]
    assert "card.json" in artifacts  # uploaded through the server's artifact proxy


def test_grid_against_mlflow_server_with_sqlite(ray_session, tmp_path, capsys):
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as uri:
        grid_against(uri, tmp_path / "out", capsys)
    assert any((tmp_path / "artifacts").rglob("card.json"))


def test_grid_against_mlflow_server_with_postgresql(ray_session, tmp_path, capsys):
    with postgres_cluster() as backend, mlflow_server(backend, tmp_path) as uri:
        grid_against(uri, tmp_path / "out", capsys)


def test_four_concurrent_trials_on_the_default_sqlite_store(ray_session, tmp_path):
    """Four prune trials at once (0.5 CPU each on 2 CPUs), all logging: none fails (the schema
    race on a fresh SQLite store is avoided because only the driver writes to MLflow)."""
    spec = small_grid(
        tmp_path / "out",
        methods=("lwm-local", "lwm-global", "lamp", "random"),
        resources={"trial_cpus": 0.5, "actor_cpus": 1},
    )
    launch(spec, log=lambda m: None)
    client = mlflow.MlflowClient(spec.resolved_tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'prune'")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    # all four were open at once: the last to start started before the first to end ended
    assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)
