"""deploy/ as real clusters check it: Ray's own validator on the rendered `ray up` config, the
vendored KubeRay CRD schemas and Kubernetes' schemas checked strictly, the KubeRay controller's
validation rules, hadolint on the Dockerfiles, a real compose implementation's `config`, the SLURM
script's commands; and no credential written in any file."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def load_all(name):
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_aws_cluster_config_passes_rays_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "cluster" / "aws-gpu.yaml").read_text())
    validate_config(config)
    validate_config(prepare_config(config))  # with Ray's defaults filled in, as `ray up` does
    import ray

    assert f"ray{ray.__version__}" in config["docker"]["image"]  # image pinned to our Ray
    worker = config["available_node_types"]["gpu_spot"]["node_config"]
    assert worker["InstanceMarketOptions"]["MarketType"] == "spot"
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"][1:])
    assert any("/mnt/apgrid" in c for c in config["initialization_commands"])
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # where Ray reads it


# Variables Ray's launcher itself sets in the shells of node commands.
RAY_SETS = {"RAY_HEAD_IP"}


def test_rendered_ray_up_config_leaves_no_node_variable_unset(tmp_path):
    """`ray up` runs node commands in fresh login shells: everything they use is rendered in or
    set by Ray, never read from the environment of `ray up`."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    render = [sys.executable, str(DEPLOY / "cluster" / "render.py"), str(DEPLOY / "cluster" / "aws-gpu.yaml")]
    env = {k: v for k, v in os.environ.items() if k != "EFS_DNS"}
    refused = subprocess.run(render, capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "render: set EFS_DNS in the environment (see the file's header)"
    )
    done = subprocess.run(
        render,
        capture_output=True,
        text=True,
        env={**env, "EFS_DNS": "fs-0123.efs.us-east-1.amazonaws.com"},
        check=True,
    )
    config = yaml.safe_load(done.stdout)
    validate_config(prepare_config(config))
    commands = [c for key, value in config.items() if key.endswith("commands") for c in value]
    assert any('"fs-0123.efs.us-east-1.amazonaws.com":/ /mnt/apgrid' in c for c in commands)
    used = {m for c in commands for m in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", c)}
    assert used <= RAY_SETS, f"node commands read {used - RAY_SETS} from a shell that lacks them"
    assert not re.search(r"\{[A-Z_]+\}", done.stdout)


STUBS = {  # what the node commands call, recorded instead of run
    "sudo": 'echo "sudo $*" >> "$CALLS"; "$@"',
    "mkdir": 'echo "mkdir $*" >> "$CALLS"',
    "mountpoint": 'echo "mountpoint $*" >> "$CALLS"; exit 1',
    "mount": 'echo "mount $*" >> "$CALLS"',
    "ray": 'echo "RAY_AUTH_MODE=${RAY_AUTH_MODE:-} ray $*" >> "$CALLS"',
    # `docker exec -it NAME /bin/bash -c SCRIPT`, as Ray's DockerCommandRunner wraps a command
    "docker": 'shift; while [ "${1#-}" != "$1" ]; do shift; done; shift; exec "$@"',
}


def ray_up_runner(config: dict, node_ip: str, send):
    """Ray's own DockerCommandRunner for a node at `node_ip`, as `ray up` makes it; `send(ssh
    command, with_output)` stands for ssh, recording or answering what the node would."""
    from ray.autoscaler._private.command_runner import DockerCommandRunner

    class Provider:  # the cloud provider's answer the runner asks for
        def internal_ip(self, node_id):
            return node_ip

    runner = DockerCommandRunner(
        config["docker"],
        log_prefix="",
        node_id="i-0",
        provider=Provider(),
        auth_config=config["auth"],
        cluster_name=config["cluster_name"],
        process_runner=subprocess,
        use_internal_ip=True,
    )
    runner.ssh_command_runner._run_helper = send
    return runner


def test_ray_up_node_commands_run_by_rays_own_runner_in_a_fresh_login_shell(tmp_path):
    """Each node's commands as `ray up` sends them: Ray's DockerCommandRunner (and its SSH runner)
    builds the remote command, with RAY_HEAD_IP added to the workers' start commands the way Ray
    adds it; each then runs here in a login shell with an empty environment and `set -u`
    (unset variables are errors) and the node's programs stubbed. Every command must succeed,
    mount the rendered EFS host, and start Ray with token auth at the head's address."""
    from ray.autoscaler._private.util import with_head_node_ip

    render = [sys.executable, str(DEPLOY / "cluster" / "render.py"), str(DEPLOY / "cluster" / "aws-gpu.yaml")]
    efs = "fs-0123.efs.us-east-1.amazonaws.com"
    config = yaml.safe_load(
        subprocess.run(
            render, capture_output=True, text=True, env={**os.environ, "EFS_DNS": efs}, check=True
        ).stdout
    )

    sent = []

    def send(final_cmd, with_output=False, *args, **kwargs):  # what ssh would run on the node
        if with_output:
            return b"/home/ray"  # the runner asks the container for its HOME
        sent.append(" ".join(final_cmd[final_cmd.index("ubuntu@10.0.0.2") + 1 :]))

    runner = ray_up_runner(config, "10.0.0.2", send)
    head_ip = "10.0.0.1"
    for cmd in config["initialization_commands"]:
        runner.run(cmd, run_env="host")
    for cmd in config["setup_commands"] + config["head_setup_commands"] + config["worker_setup_commands"]:
        runner.run(cmd, run_env="auto")
    for cmd in config["head_start_ray_commands"] + with_head_node_ip(
        config["worker_start_ray_commands"], head_ip
    ):
        runner.run(cmd, environment_variables={"RAY_USAGE_STATS_ENABLED": 0}, run_env="auto")
    assert len(sent) == 5

    stubs, home = tmp_path / "bin", tmp_path / "home"
    stubs.mkdir()
    home.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text(f"#!/bin/bash\n{body}\n")
        (stubs / name).chmod(0o755)
    # Ray's wrapper sources it before the command (a login shell resets PATH from /etc/profile)
    (home / ".bashrc").write_text(f"export PATH={stubs}:$PATH\nset -u\n")
    (home / ".profile").write_text("")
    calls = tmp_path / "calls"
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(home), "CALLS": str(calls)}
    for remote in sent:
        done = subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True)
        assert done.returncode == 0, (remote, done.stderr[-1000:])
    recorded = calls.read_text().splitlines()
    assert f"mount -t nfs4 -o nfsvers=4.1,hard,timeo=600 {efs}:/ /mnt/apgrid" in recorded
    starts = [c for c in recorded if " ray start " in f" {c.split(' ', 1)[1]} "]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    assert f"--address={head_ip}:6379" in starts[1]


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ENV a Dockerfile sets (its `ENV KEY=VALUE ...` lines)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


def test_ray_up_gpu_workers_see_their_gpus(tmp_path):
    """The `docker run` that Ray's DockerCommandRunner builds on a GPU worker (NVIDIA runtime
    installed, nvidia-smi working) starts the worker image with the NVIDIA runtime *and*
    NVIDIA_VISIBLE_DEVICES set: without the variable the runtime exposes no device, and trials
    that Ray placed on the node's GPU find no CUDA device. Ray's CPU base image sets none, so
    the worker image must (deploy/Dockerfile)."""
    config = yaml.safe_load((DEPLOY / "cluster" / "aws-gpu.yaml").read_text())
    base_env = ["PATH=/home/ray/anaconda3/bin:/usr/bin:/bin", "HOME=/home/ray", "LANG=C.UTF-8"]
    image_env = base_env + [f"{k}={v}" for k, v in dockerfile_env(DEPLOY / "Dockerfile").items()]
    answers = {  # what the GPU node answers the runner's questions with
        "command -v docker": b"/usr/bin/docker",
        ".State.Running": b"",  # no container yet
        "docker info": b"map[nvidia:{nvidia-container-runtime [] <nil>} runc:{runc [] <nil>}]",
        ".Config.Env": json.dumps(image_env).encode(),
    }
    sent = []

    def send(final_cmd, with_output=False, *args, **kwargs):
        remote = " ".join(final_cmd[final_cmd.index("ubuntu@10.0.0.3") + 1 :])
        sent.append(remote)
        if with_output:
            return next(answer for key, answer in answers.items() if key in remote)

    runner = ray_up_runner(config, "10.0.0.3", send)
    runner.run_init(as_head=False, file_mounts={}, sync_run_yet=True)
    (login,) = [shlex.split(c) for c in sent if " run --rm " in c]  # bash --login -c -i SCRIPT
    run = shlex.split(login[-1].split("&& (", 1)[1].removesuffix(")"))  # the script's `docker run`
    assert "--runtime=nvidia" in run or any(a.startswith("--gpus") for a in run), run
    env = dict(e.split("=", 1) for e in image_env)
    env.update(run[i + 1].split("=", 1) for i, a in enumerate(run) if a in ("-e", "--env"))
    assert env.get("NVIDIA_VISIBLE_DEVICES") == "all", env
    assert "compute" in env.get("NVIDIA_DRIVER_CAPABILITIES", "compute")


SCHEMAS = DEPLOY / "schemas" / "kuberay-v1.7.0"


@pytest.mark.parametrize("path", ["k8s/raycluster.yaml", "k8s/rayjob.yaml", "k8s/mlflow.yaml"])
def test_manifests_pass_the_crd_and_kubernetes_schemas_strictly(path):
    """KubeRay objects against the operator's CRD schemas (release v1.7.0, vendored without
    descriptions, unknown fields refused as `kubectl apply --validate=strict` refuses them); the
    rest against Kubernetes' own schemas (kubernetes-validate, strict)."""
    import jsonschema
    import kubernetes_validate

    for doc in load_all(path):
        if doc["apiVersion"] == "ray.io/v1":
            schema = json.loads((SCHEMAS / f"{doc['kind'].lower()}.json").read_text())
            errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
            assert not errors, f"{path} {doc['kind']}: {errors[:3]}"
        else:
            kubernetes_validate.validate(doc, "1.33", strict=True)


def test_the_schemas_refuse_an_unknown_field():
    import jsonschema

    (job,) = load_all("k8s/rayjob.yaml")
    job["spec"]["backofflimit"] = 3  # a typo
    schema = json.loads((SCHEMAS / "rayjob.json").read_text())
    assert any("backofflimit" in e.message for e in jsonschema.Draft7Validator(schema).iter_errors(job))


def rayjob_errors(job: dict) -> list[str]:
    """KubeRay v1.7.0's RayJob rules (ray-operator/controllers/ray/utils/validation.go,
    ValidateRayJobMetadata and ValidateRayJobSpec), as far as a manifest shows them."""
    spec, errors = job["spec"], []
    name = job["metadata"]["name"]
    if len(name) > 47 or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        errors.append("RayJob name: at most 47 characters, a DNS-1035 label")
    selector = spec.get("clusterSelector") or {}
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        errors.append("suspend needs shutdownAfterJobFinishes")
    if selector and spec.get("suspend"):
        errors.append("the ClusterSelector mode doesn't support the suspend operation")
    if not selector and "rayClusterSpec" not in spec:
        errors.append("one of RayClusterSpec or ClusterSelector must be set")
    if selector:
        if not selector.get("ray.io/cluster"):
            errors.append("cluster name in ClusterSelector should not be empty")
        if spec.get("submissionMode") == "SidecarMode":
            errors.append("ClusterSelector is not supported in SidecarMode")
        if spec.get("backoffLimit", 0) > 0:
            errors.append("BackoffLimit is incompatible with ClusterSelector mode")
    if spec.get("submissionMode") == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errors.append("BackoffLimit is incompatible with InteractiveMode")
    return errors


def raycluster_errors(cluster: dict) -> list[str]:
    """KubeRay v1.7.0's RayCluster rules (validation.go: ValidateRayClusterMetadata,
    ValidateRayClusterSpec) for the fields our manifest sets."""
    spec, errors = cluster["spec"], []
    name = cluster["metadata"]["name"]
    if len(name) > 53 or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        errors.append("RayCluster name: at most 53 characters, a DNS-1035 label")
    if not spec["headGroupSpec"]["template"]["spec"].get("containers"):
        errors.append("headGroupSpec should have at least one container")
    for group in spec.get("workerGroupSpecs", []):
        if not group["template"]["spec"].get("containers"):
            errors.append(f"worker group {group['groupName']} has no container")
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31)
        if low < 0 or high < 0 or low > high:
            errors.append(f"worker group {group['groupName']}: minReplicas/maxReplicas")
        if not spec.get("enableInTreeAutoscaling") and (
            "minReplicas" not in group or "maxReplicas" not in group
        ):
            errors.append("without autoscaling, minReplicas and maxReplicas are both required")
    if (spec.get("authOptions") or {}).get("mode") == "token":
        version = tuple(int(p) for p in str(spec.get("rayVersion", "0")).split(".")[:3])
        if version < (2, 52, 0):
            errors.append("authOptions.mode token needs rayVersion 2.52.0 or later")
    return errors


def test_kuberay_controller_accepts_our_cluster_and_job():
    (cluster,) = [d for d in load_all("k8s/raycluster.yaml") if d["kind"] == "RayCluster"]
    assert raycluster_errors(cluster) == []
    (job,) = load_all("k8s/rayjob.yaml")
    assert rayjob_errors(job) == []


def test_the_controller_rules_catch_what_broke_before():
    (job,) = load_all("k8s/rayjob.yaml")
    assert rayjob_errors({**job, "spec": {**job["spec"], "backoffLimit": 3}}) == [
        "BackoffLimit is incompatible with ClusterSelector mode"
    ]
    (cluster,) = [d for d in load_all("k8s/raycluster.yaml") if d["kind"] == "RayCluster"]
    old = {**cluster, "spec": {**cluster["spec"], "rayVersion": "2.50.0"}}
    assert raycluster_errors(old) == ["authOptions.mode token needs rayVersion 2.52.0 or later"]


def test_the_rayjob_relaunches_only_when_apgrid_was_stopped_by_its_environment(tmp_path):
    """Exit 1 (stopped, resumable) relaunches; 0 and 2 end the job with that code."""
    (job,) = load_all("k8s/rayjob.yaml")
    script = job["spec"]["entrypoint"].replace("sleep 60", "true")
    for codes, expected_runs, expected_exit in (("1 1 0", 3, 0), ("2", 1, 2), ("1 1 1 1", 4, 1)):
        fake = tmp_path / f"bin-{codes.replace(' ', '')}"
        fake.mkdir()
        (fake / "apgrid").write_text(
            f"#!/bin/bash\necho run >> {fake}/runs\n"
            f"codes=({codes}); n=$(wc -l < {fake}/runs)\n"
            f"exit ${{codes[$((n-1))]}}\n"
        )
        (fake / "apgrid").chmod(0o755)
        done = subprocess.run(
            ["bash", "-c", script.removeprefix("bash -c ").strip("'")],
            env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
        )
        assert done.returncode == expected_exit
        assert (fake / "runs").read_text().count("run") == expected_runs


def test_kuberay_cluster_and_job():
    docs = {d["kind"]: d for d in load_all("k8s/raycluster.yaml")}
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["authOptions"]["mode"] == "token"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    workers = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert workers["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for pod in (head, workers):
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        ]
        assert claims == ["apgrid-shared"]
        assert pod["containers"][0]["image"] == head["containers"][0]["image"]
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    (job,) = load_all("k8s/rayjob.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["clusterSelector"]["ray.io/cluster"] == "apgrid"
    assert "apgrid launch /etc/apgrid/spec.yaml --output /mnt/apgrid/" in job["spec"]["entrypoint"]
    # the workers read the data where every pod mounts it, not the head's working directory
    assert "--set dataset.root=/mnt/apgrid/" in job["spec"]["entrypoint"]
    assert docs["PersistentVolumeClaim"]["spec"]["storageClassName"]


def test_mlflow_server_has_postgres_s3_auth_and_allowed_hosts():
    docs = load_all("k8s/mlflow.yaml")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "Service", "Service", "StatefulSet"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["args"])
    for needed in (
        "--app-name basic-auth",
        '--backend-store-uri "postgresql://',
        "--artifacts-destination s3://",
        "--allowed-hosts",
    ):
        assert needed in command
    assert container["image"] == "apgrid-mlflow:3.17.2" and "pip install" not in command
    assert "FROM ghcr.io/mlflow/mlflow:v3.17.2" in (DEPLOY / "mlflow.Dockerfile").read_text()
    assert "127.0.0.1:5000" in command  # kubectl port-forward's Host header is allowed
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert services == {"apgrid-mlflow", "apgrid-postgres"}


def test_compose_stack():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) >= {"mlflow", "postgres", "minio"}
    mlflow = compose["services"]["mlflow"]
    command = " ".join(mlflow["command"])
    assert "basic-auth" in command and "postgresql://" in command and "s3://" in command
    assert all(
        p.startswith("127.0.0.1:") for s in compose["services"].values() for p in s.get("ports", [])
    )  # nothing exposed beyond the workstation
    assert "pip install" not in command  # the image has its clients: it starts with no network
    assert "FROM rayproject/ray:2.60.0" in (DEPLOY / "Dockerfile").read_text()


def _podman_compose():
    found = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    if not (Path(found).exists() and shutil.which("podman")):
        if os.environ.get("APGRID_REQUIRE_PODMAN"):
            pytest.fail("podman and podman-compose are required here (CI installs them)")
        pytest.skip("podman-compose needs podman (apt-get install podman)")
    return found


def test_compose_file_passes_a_real_compose_implementations_config():
    tool = _podman_compose()
    env = {
        **os.environ,
        "POSTGRES_PASSWORD": "p",
        "MINIO_ROOT_USER": "u",
        "MINIO_ROOT_PASSWORD": "m",
        "MLFLOW_SECRET_KEY": "k",
        "MLFLOW_ADMIN_PASSWORD": "a",
    }
    done = subprocess.run(
        [tool, "-f", str(DEPLOY / "compose.yaml"), "config"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    assert rendered["services"]["mlflow"]["build"]["dockerfile"] == "mlflow.Dockerfile"
    missing = {k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"}
    refused = subprocess.run(
        [tool, "-f", str(DEPLOY / "compose.yaml"), "config"], env=missing, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stdout + refused.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "mlflow.Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(DEPLOY / dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_worker_image_base_and_torch_agree_on_cuda():
    """No CUDA toolkit in the base image: torch 2.14.1's wheel brings CUDA 13.0's runtime, and the
    image's own check fails the build if that changes; the header names the driver it needs."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311-cpu$", text, re.M)
    assert "'${TORCH_CUDA}'.removeprefix('cu') or '130'" in text and "R580" in text
    assert "import apgrid.grid.cli" in text and "grid.cli," not in text.replace("apgrid.grid.cli,", "")


def run_slurm_script(tmp_path, args, **slurm) -> list[str]:
    """deploy/slurm/apgrid.sbatch under a stubbed Slurm (scontrol, srun) and apgrid on three nodes;
    the calls it made, once all five (hostname, head, two workers, driver) are written."""
    import time

    script = DEPLOY / "slurm" / "apgrid.sbatch"
    log = tmp_path / "calls"
    log.unlink(missing_ok=True)
    fakes = {
        "scontrol": "printf 'gpu01\\ngpu02\\ngpu03\\n'",
        "srun": f'echo "srun $*" >> {log}; if [[ "$*" == *hostname* ]]; then echo 10.0.0.1; fi',
        "apgrid": f'echo "apgrid $* RAY_ADDRESS=$RAY_ADDRESS RAY_AUTH_MODE=$RAY_AUTH_MODE" >> {log}',
    }
    for name, body in fakes.items():
        (tmp_path / name).write_text(f"#!/bin/bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu[01-03]")
    env.update(SLURM_CPUS_PER_TASK="8", APGRID_RAY_WAIT_S="0", **slurm)
    subprocess.run(["bash", str(script), *args], env=env, check=True)
    for _ in range(600):  # the workers' `srun ... &` may still be writing when the script ends
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= 5:
            return lines
        time.sleep(0.05)
    return lines


def test_slurm_script_starts_a_head_then_workers_then_the_driver(tmp_path):
    assert subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "apgrid.sbatch")]).returncode == 0
    calls = run_slurm_script(
        tmp_path, ["spec.yaml", "/scratch/out"], SLURM_GPUS_PER_TASK="1", SLURM_JOB_ID="4242"
    )
    (head,) = [c for c in calls if "ray start --head" in c]
    workers = [c for c in calls if "ray start --address" in c]
    port = 20000 + 4242 % 2000 * 10
    assert head.startswith(
        f"srun --nodes=1 --ntasks=1 -w gpu01 ray start --head --node-ip-address=10.0.0.1 --port={port}"
    )
    assert sorted(c.split(" -w ")[1].split()[0] for c in workers) == ["gpu02", "gpu03"]
    assert all(f"--address=10.0.0.1:{port} " in c and "--num-cpus=8 --num-gpus=1" in c for c in workers)
    (driver,) = [c for c in calls if c.startswith("apgrid")]
    assert (
        driver
        == f"apgrid launch spec.yaml --output /scratch/out RAY_ADDRESS=10.0.0.1:{port} RAY_AUTH_MODE=token"
    )
    calls = run_slurm_script(tmp_path, ["-", "/scratch/out", "resume"], SLURM_GPUS_PER_TASK="1")
    (driver,) = [c for c in calls if c.startswith("apgrid")]
    assert driver.startswith("apgrid resume /scratch/out RAY_ADDRESS=")


@pytest.mark.parametrize(
    "allocation, gpus",
    [
        ({"SLURM_GPUS_ON_NODE": "4", "SLURM_GPUS_PER_NODE": "4"}, 4),
        ({"SLURM_GPUS_PER_NODE": "a100:2"}, 2),
        ({}, 0),
    ],
)
def test_slurm_ray_gets_the_gpus_however_the_job_asked(tmp_path, allocation, gpus):
    """--gpus-per-node (or --gres) sets no SLURM_GPUS_PER_TASK: Ray must still be given the GPUs,
    or trials asking for one wait forever."""
    calls = run_slurm_script(tmp_path, ["spec.yaml", "/out"], **allocation)
    starts = [c for c in calls if " ray start " in c]
    assert len(starts) == 3 and all(f"--num-gpus={gpus} " in c for c in starts)


def test_two_slurm_jobs_on_one_node_share_no_ray_port(tmp_path):
    def ports(job):
        calls = run_slurm_script(tmp_path, ["spec.yaml", "/out"], SLURM_JOB_ID=job)
        used = {int(p) for c in calls if " ray start " in c for p in re.findall(r"-port=(\d+)", c)}
        temp = {re.search(r"--temp-dir=(\S+)", c).group(1) for c in calls if " ray start " in c}
        return used, temp

    (a, temp_a), (b, temp_b) = ports("1000"), ports("1001")
    assert len(a) >= 8 and not a & b and not temp_a & temp_b


SECRET = re.compile(r"password|secret|token|access_key", re.IGNORECASE)


def _literal_secrets(node, found):
    """Mappings whose secret-looking key holds a literal value (not ${VAR} or a secretKeyRef)."""
    if isinstance(node, dict):
        name = node.get("name")
        if isinstance(name, str) and SECRET.search(name) and isinstance(node.get("value"), str):
            found.append(f"{name}={node['value']}")
        for key, value in node.items():
            if (
                isinstance(key, str)
                and SECRET.search(key)
                and isinstance(value, str)
                and value
                and not value.startswith(("${", "~/", "/"))
                and key != "mode"
            ):
                found.append(f"{key}={value}")
            _literal_secrets(value, found)
    elif isinstance(node, list):
        for item in node:
            _literal_secrets(item, found)
    return found


@pytest.mark.parametrize(
    "path",
    ["compose.yaml", "cluster/aws-gpu.yaml", "k8s/raycluster.yaml", "k8s/rayjob.yaml", "k8s/mlflow.yaml"],
)
def test_no_credentials_in_deploy_files(path):
    found = []
    for doc in load_all(path):
        _literal_secrets(doc, found)
    assert not found, f"{path}: literal credentials {found}; take them from the environment"
    assert not re.search(r"^ENV .*(PASSWORD|SECRET|ACCESS_KEY)", (DEPLOY / "Dockerfile").read_text(), re.M)


def test_the_credential_check_catches_literals():
    assert _literal_secrets({"env": [{"name": "POSTGRES_PASSWORD", "value": "hunter2"}]}, [])
    assert _literal_secrets({"environment": {"MINIO_ROOT_PASSWORD": "hunter2"}}, [])
    assert not _literal_secrets({"environment": {"MINIO_ROOT_PASSWORD": "${MINIO_ROOT_PASSWORD}"}}, [])
