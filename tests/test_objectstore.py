"""Results on object storage, exactly once without rename, against a real S3 API (moto's server on
loopback): a killed attempt's objects are never read, a committed model is never overwritten."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apgrid.grid.objectstore import ObjectResults
from tests.test_datacache import s3  # noqa: F401 (the fixture: moto's server on loopback)


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def results(s3, bucket: str) -> ObjectResults:  # noqa: F811
    client, endpoint = s3
    client.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/runs/x?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    return ObjectResults(uri, "g")


def rows(model: str, n: int = 5, offset: float = 0.0) -> pa.Table:
    return pa.table({"sample_idx": list(range(n)), "margin": [i + offset for i in range(n)]})


def write_samples(store: ObjectResults, model: str, table: pa.Table, attempt: int) -> str:
    out = pa.BufferOutputStream()
    pq.write_table(table, out)
    return store.put("samples", model, "part.parquet", out.getvalue().to_pybytes(), attempt)


def keys(s3, bucket: str) -> list[str]:  # noqa: F811
    listing = s3[0].list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(o["Key"] for o in listing)


def test_a_killed_attempts_rows_are_never_read_and_a_commit_is_never_overwritten(s3):  # noqa: F811
    store = results(s3, "killed")
    write_samples(store, "m1", rows("m1", offset=100), attempt=1)  # killed before its commit
    assert store.committed("samples", "m1") is None and store.read_samples().empty
    part = write_samples(store, "m1", rows("m1"), attempt=2)
    assert store.commit("samples", "m1", {"part": part})
    late = write_samples(store, "m1", rows("m1", offset=200), attempt=3)  # a duplicate attempt
    assert not store.commit("samples", "m1", {"part": late})
    store.commit("samples", "m2", {"part": write_samples(store, "m2", rows("m2", 3), attempt=1)})

    read = store.read_samples()
    expected = pd.concat(
        [rows("m1").to_pandas().assign(model_id="m1"), rows("m2", 3).to_pandas().assign(model_id="m2")]
    )
    assert (
        read[["model_id", "sample_idx", "margin"]]
        .reset_index(drop=True)
        .equals(expected[["model_id", "sample_idx", "margin"]].reset_index(drop=True))
    )
    assert not read.duplicated(["model_id", "sample_idx"]).any() and set(read["grid"]) == {"g"}
    # nothing was renamed or overwritten: every attempt's object is there, only one is read
    parts = [k for k in keys(s3, "killed") if "/model_id=m1/" in k]
    assert len(parts) == 3 and all(k.endswith(".parquet") for k in parts)
    manifest = json.loads(
        s3[0].get_object(Bucket="killed", Key="runs/x/_manifests/samples/m1.json")["Body"].read()
    )
    assert manifest["objects"] == {"part": part}


def test_a_models_files_are_read_from_its_manifest(s3):  # noqa: F811
    store = results(s3, "models")
    card = json.dumps({"arch": "digits-cnn"}).encode()
    weights = store.put("models", "m1", "model.pt", b"weights", attempt=1)
    card_key = store.put("models", "m1", "card.json", card, attempt=1)
    assert store.committed_models("models") == []
    assert store.commit("models", "m1", {"model.pt": weights, "card.json": card_key})
    committed = store.committed("models", "m1")
    assert store.committed_models("models") == ["m1"]
    assert store.read_bytes(committed["model.pt"]) == b"weights"
    assert json.loads(store.read_bytes(committed["card.json"])) == {"arch": "digits-cnn"}


def test_an_unknown_scheme_is_one_line():
    from apgrid.trainables.fields import FieldError

    with pytest.raises(FieldError, match=r"^output: cannot open nope://x \("):
        ObjectResults("nope://x", "g")


def test_the_grids_stores_commit_to_s3_and_another_machine_reads_them(s3, tmp_path):  # noqa: F811
    """The stores' remote mode: models and partitions committed on one machine are found, read and
    never recomputed or rewritten from another machine's empty local folder."""
    import torch

    from apgrid.grid.store import ModelStore, SampleStore
    from tests.test_store import rows as sample_rows

    remote = results(s3, "stores")
    here, there = tmp_path / "here", tmp_path / "there"
    models = ModelStore(here, remote)
    models.save("dense-a-1", {"w": torch.ones(2)}, {}, {"arch": "digits-cnn", "metrics": {"a": 1}})
    samples = SampleStore(here, "g", remote)
    for start, end in ((0, 4), (4, 8)):
        samples.write_shard("dense-a-1", start, end, sample_rows("dense-a-1", start, end))
    written = samples.finalize("dense-a-1", [(0, 4), (4, 8)])
    before = keys(s3, "stores")

    models_there, samples_there = ModelStore(there, remote), SampleStore(there, "g", remote)
    assert models_there.exists("dense-a-1") and not ModelStore(there).exists("dense-a-1")
    assert models_there.card("dense-a-1")["metrics"] == {"a": 1}
    state, masks = models_there.load_weights("dense-a-1")
    assert torch.equal(state["w"], torch.ones(2)) and masks == {}
    assert samples_there.is_done("dense-a-1") and not SampleStore(there, "g").is_done("dense-a-1")
    read = samples_there.read("dense-a-1")
    assert len(read) == 8 and read["sample_idx"].tolist() == list(range(8))
    assert read["clean_pred"].tolist() == written["clean_pred"].tolist()
    # a resumed attempt of a committed model writes nothing
    models_there.save("dense-a-1", {"w": torch.zeros(2)}, {}, {"arch": "digits-cnn", "metrics": {}})
    assert keys(s3, "stores") == before
    assert ObjectResults(remote.uri, "g").read_samples()["sample_idx"].tolist() == list(range(8))
