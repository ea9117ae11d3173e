"""A dataset root on object storage: a real S3 API (moto's server on loopback), copied once per
node into a local cache, the official files checked against their published MD5s."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from apgrid.trainables import data
from apgrid.trainables.datacache import COMPLETE, DataCacheError, local_root
from tests.helpers import free_port


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on loopback; yields (boto3 client, endpoint host:port)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    yield client, f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("APGRID_DATA_CACHE", str(tmp_path / "cache"))


def upload_cifar100(client, bucket: str, n: int = 20) -> np.ndarray:
    """A small CIFAR-100 in its binary layout (the official names are MD5-checked; these are not)."""
    client.create_bucket(Bucket=bucket)
    images = np.random.default_rng(0).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    fine = np.arange(n) % 100
    records = np.concatenate([fine[:, None] // 5, fine[:, None], images.reshape(n, -1)], axis=1)
    for split in ("train", "test"):
        client.put_object(
            Bucket=bucket,
            Key=f"cifar100/cifar-100-binary/{split}.bin",
            Body=records.astype(np.uint8).tobytes(),
        )
    return images


def uri(bucket: str, endpoint: str) -> str:
    return f"s3://{bucket}/cifar100?endpoint_override={endpoint}&scheme=http&region=us-east-1"


def test_a_dataset_on_s3_is_read_through_a_local_copy(s3, tmp_path):
    client, endpoint = s3
    images = upload_cifar100(client, "data-a")
    ds = data.load_dataset("cifar100", uri("data-a", endpoint))
    assert torch.equal(ds.x_test[3], torch.as_tensor(images[3] / 255.0, dtype=torch.float32))
    (copy,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert (copy / COMPLETE).is_file() and (copy / "cifar-100-binary" / "train.bin").is_file()
    # fetched once: with the bucket emptied, the node still reads its copy
    for split in ("train", "test"):
        client.delete_object(Bucket="data-a", Key=f"cifar100/cifar-100-binary/{split}.bin")
    assert local_root(uri("data-a", endpoint)) == str(copy)
    assert len(data.load_dataset("cifar100", uri("data-a", endpoint)).y_train) == 20


def test_processes_of_one_node_share_one_copy(s3, tmp_path):
    client, endpoint = s3
    upload_cifar100(client, "data-b")
    code = "import sys; from apgrid.trainables.datacache import local_root; print(local_root(sys.argv[1]))"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri("data-b", endpoint)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    paths = {r.communicate(timeout=120)[0].strip() for r in runs}
    assert len(paths) == 1 and all(r.returncode == 0 for r in runs)
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_a_file_unlike_the_official_release_is_refused(s3):
    client, endpoint = s3
    client.create_bucket(Bucket="data-c")
    client.put_object(Bucket="data-c", Key="cifar10/cifar-10-batches-bin/data_batch_1.bin", Body=b"\0" * 3073)
    with pytest.raises(DataCacheError, match="data_batch_1.bin: MD5 mismatch"):
        local_root(f"s3://data-c/cifar10?endpoint_override={endpoint}&scheme=http&region=us-east-1")


def test_an_unreadable_root_is_one_line(s3):
    _, endpoint = s3
    with pytest.raises(DataCacheError, match="dataset.root: .*no-such-bucket"):
        local_root(f"s3://no-such-bucket/x?endpoint_override={endpoint}&scheme=http&region=us-east-1")
    with pytest.raises(DataCacheError, match="dataset.root: cannot open"):
        local_root("nosuchscheme://x/y")
    assert local_root("data/cifar10") == "data/cifar10"  # a path stays a path
