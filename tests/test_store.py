"""The per-sample Parquet folder is a hive-partitioned dataset the ecosystem's readers open as is."""

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from apgrid.grid.store import SAMPLE_SCHEMA, SampleStore, open_samples, read_samples

MODELS = {"dense-a-1": "dense", "hydra-sp90-a-2": "pruned"}


def rows(model_id: str, start: int, end: int) -> pd.DataFrame:
    n = end - start
    rng = np.random.default_rng(start)
    return pd.DataFrame(
        {
            "sample_idx": np.arange(start, end),
            "label": rng.integers(0, 10, n),
            "clean_pred": rng.integers(0, 10, n),
            "clean_correct": rng.random(n) > 0.2,
            "logit_margin": rng.normal(size=n).astype(np.float32),
            "pgd_correct": rng.random(n) > 0.5,
            "aa_correct": pd.array([True, None] * (n // 2), dtype="boolean"),
            "aa_broken_by": pd.array(["apgd-ce", None] * (n // 2), dtype="string"),
            "fmn_eps": rng.random(n).astype(np.float32),
            "fmn_found": np.ones(n, bool),
            "fmn_overstated": np.zeros(n, bool),
            "fmn_eps_bounded": rng.random(n).astype(np.float32),
            "fmn_eps_untargeted": rng.random(n).astype(np.float32),
            "fmn_eps_ho": np.full(n, np.nan, np.float32),
            "fmn_eps_ensemble": np.full(n, np.nan, np.float32),
            "fmn_ho_config": pd.array([None] * n, dtype="string"),
            "grid": "g",
            "model_id": model_id,
            "dense_model_id": "dense-a-1",
            "role": MODELS[model_id],
            "dataset": "digits",
            "arch": "digits-cnn",
            "method": "hydra",
            "sparsity": 0.9,
            "sparsity_measured": 0.9,
            "seed": 0,
            "norm": "Linf",
            "eps": 0.1,
            "pgd_steps": 10,
            "autoattack_version": "standard",
            "autoattack_attacks": "apgd-ce",
            "fmn_steps": 10,
            "fmn_step_size": 1.0,
            "eval_seed": 0,
            "eval_batch_size": 10,
        }
    )


@pytest.fixture
def output(tmp_path):
    store = SampleStore(tmp_path, "g")
    ranges = [(0, 10), (10, 20)]
    for model_id in MODELS:
        for s, e in ranges:
            store.write_shard(model_id, s, e, rows(model_id, s, e))
        store.finalize(model_id, ranges)
    store.write_shard("still-running", 0, 10, rows("dense-a-1", 0, 10))  # staged, not merged
    return tmp_path


def test_pandas_reads_the_folder_with_every_row_once(output):
    table = pd.read_parquet(output / "samples")
    assert len(table) == 40
    assert not table.duplicated(["model_id", "sample_idx"]).any()
    assert set(table["model_id"].astype(str)) == set(MODELS)  # the staging folder is not read
    assert set(table["grid"].astype(str)) == {"g"}


def test_pyarrow_hive_dataset_prunes_partitions(output):
    dataset = pads.dataset(output / "samples", partitioning="hive", format="parquet")
    assert dataset.count_rows() == 40
    chosen = dataset.filter(pads.field("model_id") == "hydra-sp90-a-2")
    fragments = list(dataset.get_fragments(filter=pads.field("model_id") == "hydra-sp90-a-2"))
    assert len(fragments) == 1 and chosen.count_rows() == 20


def test_files_hold_the_documented_schema_without_the_partition_keys(output):
    files = sorted((output / "samples").glob("grid=g/model_id=*/part-0.parquet"))
    assert len(files) == 2
    for f in files:
        assert pq.read_schema(f).remove_metadata() == SAMPLE_SCHEMA


def test_read_samples_matches_pandas_and_reads_files_of_older_grids(output):
    ours = read_samples(output).sort_values(["model_id", "sample_idx"], ignore_index=True)
    theirs = pd.read_parquet(output / "samples")
    theirs = theirs.assign(grid=theirs["grid"].astype(str), model_id=theirs["model_id"].astype(str))
    theirs = theirs.sort_values(["model_id", "sample_idx"], ignore_index=True)[ours.columns]
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    old = output / "samples" / "grid=g" / "model_id=dense-a-1" / "part-0.parquet"
    pq.write_table(pq.read_table(old).append_column("model_id", pq.read_table(old)["role"]), old)
    again = read_samples(output)
    assert set(again["model_id"]) == set(MODELS) and len(again) == 40


def test_open_samples_reads_a_model_at_a_time_what_read_samples_reads_at_once(output):
    """The analysis' reader: each model's rows (or the columns asked for, partition keys
    included) as read_samples holds them, files of older grids (keys in the file) alike."""
    whole = read_samples(output)
    samples = open_samples(output)
    assert samples.model_ids == list(whole["model_id"].unique())
    for model_id in samples.model_ids:
        mine = whole[whole["model_id"] == model_id].reset_index(drop=True)
        pd.testing.assert_frame_equal(samples.rows(model_id), mine)
        assert samples.first(model_id).equals(mine.iloc[0])
    part = samples.rows("hydra-sp90-a-2", ["fmn_eps", "model_id", "no-such-column"])
    assert list(part.columns) == ["model_id", "fmn_eps"] and len(part) == 20
    old = output / "samples" / "grid=g" / "model_id=dense-a-1" / "part-0.parquet"
    pq.write_table(pq.read_table(old).append_column("model_id", pq.read_table(old)["role"]), old)
    assert (open_samples(output).rows("dense-a-1", ["model_id"])["model_id"] == "dense-a-1").all()
    assert open_samples(output).select(["dense-a-1", "unknown"]).model_ids == ["dense-a-1"]


@pytest.mark.parametrize("reader", ["duckdb", "polars"])
def test_duckdb_and_polars_read_the_folder(output, reader):
    module = pytest.importorskip(reader)
    pattern = str(output / "samples" / "grid=*" / "model_id=*" / "*.parquet")
    if reader == "duckdb":
        count = (
            module.connect()
            .execute(
                f"select count(*), count(distinct model_id) from read_parquet('{pattern}', "
                f"hive_partitioning = true)"
            )
            .fetchall()
        )
        assert count == [(40, 2)]
    else:
        frame = module.read_parquet(pattern, hive_partitioning=True)
        assert frame.height == 40 and frame["model_id"].n_unique() == 2
