"""A grid on a real multi-node Ray cluster (a head and two worker nodes, separate `ray start`
processes on this machine), with a worker node killed by SIGKILL mid-prune and again
mid-evaluate, each replaced by a fresh node as an autoscaler would: the grid completes, every
(model, sample) row is written exactly once, no MLflow run is left RUNNING, trials spread over
the nodes, and evaluation actors asking for half a (fake) GPU share the one GPU node's card."""

import json
import os
import subprocess
import sys
import time

import mlflow
import pytest
import yaml

from apgrid.grid.state import read_state
from apgrid.grid.store import read_samples
from tests.helpers import quick_evaluation, stated, tiny_grid
from tests.ray_nodes import LocalRayCluster

pytestmark = pytest.mark.slow

N_SAMPLES = 20
DRIVER = (
    "import json, sys\n"
    "from apgrid.grid.runner import launch\n"
    "from apgrid.grid.spec import load_spec\n"
    "launch(load_spec(sys.argv[1]), fault=json.loads(sys.argv[2]))\n"
)


def grid_raw(output, address):
    return tiny_grid(
        output,
        name="multinode",
        ray_address=address,
        dense={"recipe": stated(trainer="fgsm-rs", epochs=1, lr=0.05, batch_size=64)},
        prune={  # 4 one-CPU trials fill both 2-CPU workers: they cannot all land on one node
            "methods": ["lwm-global", "lwm-local"],
            "sparsities": [0.5, 0.9],
            "finetune": stated(trainer="fgsm-rs", epochs=2, lr=0.01, batch_size=128),
        },
        evaluation=quick_evaluation(num_samples=N_SAMPLES, block_size=5, shards=4, pgd_steps=2, fmn_steps=20),
        # half a GPU per actor: both actors fit on the one GPU node, and only there; the device
        # stays the CPU (the GPUs are fake)
        resources={"device": "cpu", "trial_cpus": 1, "actor_cpus": 0.5, "actor_gpus": 0.5},
        max_failures=3,
        analysis={"transfer_samples": 20, "bootstrap_resamples": 50},
    )


def wait_for_pause(marker, stage: str, driver, deadline: float) -> int:
    """The process id the paused trial or actor wrote (see grid/faults.py, kind "pause")."""
    path = marker / f"paused-{stage}"
    while not (path.is_file() and path.read_text().endswith("\n")):
        assert driver.poll() is None, f"the driver ended before {stage} paused"
        assert time.time() < deadline, f"{stage} never paused"
        time.sleep(0.5)
    return int(path.read_text().split()[0])


@pytest.fixture
def cluster(tmp_path):
    nodes = LocalRayCluster(tmp_path / "ray")
    nodes.folder.mkdir()
    try:
        nodes.start("head", cpus=0, gpus=0, head=True)  # the driver's node: no trial lands here
        nodes.start("gpu-worker", cpus=2, gpus=1)
        nodes.start("cpu-worker", cpus=2, gpus=0)
        yield nodes
    finally:
        nodes.shutdown()


def test_grid_survives_worker_nodes_killed_mid_prune_and_mid_evaluate(cluster, tmp_path):
    output, marker = tmp_path / "out", tmp_path / "faults"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(grid_raw(output, cluster.address)))
    faults = [
        {"stage": "prune", "epoch": 1, "kind": "pause", "marker": str(marker)},  # after epoch 0's checkpoint
        {"stage": "evaluate", "shard": 5, "kind": "pause", "marker": str(marker)},
    ]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(spec_file), json.dumps(faults)],
        env={**cluster.env, "PYTHONUNBUFFERED": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    killed = {}
    try:
        deadline = time.time() + 600
        for stage in ("prune", "evaluate"):
            victim = cluster.label_of(wait_for_pause(marker, stage, driver, deadline))
            killed[stage] = cluster.node_ids[victim]
            cluster.kill(victim)
            cpus, gpus = cluster.resources[victim]
            cluster.start(f"{victim}-after-{stage}", cpus, gpus)  # the autoscaler's replacement
        rc = driver.wait(timeout=max(1, deadline - time.time()))
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    driver_log = (tmp_path / "driver.log").read_text()
    assert rc == 0, driver_log[-4000:]

    state = read_state(output)
    assert all(state["stages"][s] == "done" for s in state["stages"]), state
    rows = read_samples(output)
    assert not rows.duplicated(["model_id", "sample_idx"]).any()
    assert len(rows) == 5 * N_SAMPLES  # 1 dense + 4 pruned models, each sample once

    client = mlflow.MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("multinode").experiment_id
    runs = client.search_runs([experiment], "tags.level = 'model'", max_results=1000)
    assert not [
        r for r in client.search_runs([experiment], "", max_results=1000) if r.info.status == "RUNNING"
    ]

    prune = [r for r in runs if r.data.tags["stage"] == "prune"]
    finished = [r for r in prune if r.info.status == "FINISHED"]
    assert len(finished) == 4
    gpu_nodes = {cluster.node_ids[k] for k in cluster.node_ids if k.startswith("gpu-worker")}
    workers = set(cluster.node_ids.values()) - {cluster.node_ids["head"]}
    assert killed["evaluate"] in gpu_nodes  # the only nodes the actors fit on
    trial_nodes = {r.data.tags["ray.node_id"] for r in prune if "ray.node_id" in r.data.tags}
    assert trial_nodes <= workers and len(trial_nodes) >= 2, trial_nodes
    # a trial killed before its first epoch's report has no node tag yet
    lost = [
        r for r in prune if r.data.tags.get("ray.node_id") == killed["prune"] and r.info.status == "FAILED"
    ]
    assert lost  # the paused trial's run, and that of any trial beside it on the node
    for run in lost:  # each retried on a live node from its last checkpoint, and finished
        (redone,) = [r for r in finished if r.data.tags["model_id"] == run.data.tags["model_id"]]
        assert redone.data.tags["ray.node_id"] != killed["prune"]

    evaluate = [r for r in runs if r.data.tags["stage"] == "evaluate" and r.info.status == "FINISHED"]
    assert len(evaluate) == 5
    for r in evaluate:
        assert set(r.data.tags["ray.nodes"].split(",")) <= gpu_nodes, r.data.tags["ray.nodes"]
        assert r.data.tags["ray.gpu_ids"] == "0"  # two half-GPU actors share the node's card
    assert "on 2 actors" in driver_log
    assert os.path.isfile(output / "report" / "report.md")
