"""Where results live in the output folder.

    OUTPUT/models/<model_id>/model.pt      final weights + masks (torch.save; loaded weights_only)
    OUTPUT/models/<model_id>/card.json     config, metrics, taxonomy
    OUTPUT/samples/grid=<g>/model_id=<id>/part-0.parquet   one row per (model, test sample)
    OUTPUT/samples/_staging/<id>/shard-<start>-<end>.parquet   shards before the merge

Every write goes to a temporary name and is renamed into place, so a crash leaves either the old
file or the new one, never half a file; a retried shard replaces its own file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

if TYPE_CHECKING:
    from apgrid.grid.objectstore import ObjectResults

from apgrid.analysis.samples import PARTITION_KEYS, PartitionedSamples, read_partition
from apgrid.trainables.checkpoints import CheckpointError, load_state

# The per-sample table: one row per (model, test sample). `grid` and `model_id` are the hive
# partition keys (folder names grid=<g>/model_id=<id>), so the files hold the other columns and
# pandas, pyarrow.dataset(partitioning="hive"), DuckDB and Polars read the folder as one table.
PARTITION_COLUMNS = PARTITION_KEYS
SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_idx", pa.int64()),
        ("label", pa.int64()),
        ("clean_pred", pa.int64()),
        ("clean_correct", pa.bool_()),
        ("logit_margin", pa.float32()),
        ("pgd_correct", pa.bool_()),
        ("aa_correct", pa.bool_()),  # null where AutoAttack did not run (autoattack_samples)
        ("aa_broken_by", pa.string()),  # the AutoAttack attack that flipped it; null if robust
        ("fmn_eps", pa.float32()),  # NaN where FMN found nothing; signed on dense models
        ("fmn_found", pa.bool_()),
        ("fmn_overstated", pa.bool_()),  # PGD or AutoAttack broke it at eps; FMN said farther
        ("fmn_eps_bounded", pa.float32()),  # min(fmn_eps, eps) where FMN overstated
        ("fmn_eps_untargeted", pa.float32()),  # dense, misclassified: minus the distance out of the
        # predicted class (fmn_eps: to the true label)
        ("fmn_eps_ho", pa.float32()),  # HO-FMN's own distance (its tuned attack); NaN when not run
        ("fmn_eps_ensemble", pa.float32()),  # per sample the smaller of fmn_eps and fmn_eps_ho
        ("fmn_ho_config", pa.string()),  # the configuration HO-FMN picked for the model
        ("dense_model_id", pa.string()),
        ("role", pa.string()),
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("method", pa.string()),
        ("sparsity", pa.float64()),
        ("sparsity_measured", pa.float64()),
        ("seed", pa.int64()),
        ("norm", pa.string()),
        ("eps", pa.float64()),
        ("pgd_steps", pa.int64()),
        ("autoattack_version", pa.string()),
        ("autoattack_attacks", pa.string()),
        ("fmn_steps", pa.int64()),
        ("fmn_step_size", pa.float64()),
        ("eval_seed", pa.int64()),
        ("eval_batch_size", pa.int64()),
    ]
)


def _file_table(rows: pd.DataFrame) -> pa.Table:
    """The rows as stored in a partition file: the schema's columns and types, partition keys out."""
    return pa.Table.from_pandas(
        rows.drop(columns=list(PARTITION_COLUMNS), errors="ignore"),
        schema=SAMPLE_SCHEMA,
        preserve_index=False,
    )


def atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(json.dumps(data, indent=2, default=str).encode()))


MODEL_FILES = ("model.pt", "card.json")  # card.json written last: its presence means done


class ModelStore:
    """Models in OUTPUT/models; with `remote` (grid/objectstore.py) the committed models live on
    object storage, and the local folder is this machine's copy of them."""

    def __init__(self, output: Path, remote: ObjectResults | None = None):
        self.root = Path(output) / "models"
        self.remote = remote

    def folder(self, model_id: str) -> Path:
        return self.root / model_id

    def exists(self, model_id: str) -> bool:
        if self.remote is not None:
            return self.remote.committed("models", model_id) is not None
        return (self.folder(model_id) / "card.json").is_file()

    def ids(self) -> list[str]:
        """The stored (on object storage: committed) models' ids, sorted."""
        if self.remote is not None:
            return self.remote.committed_models("models")
        return sorted(p.parent.name for p in self.root.glob("*/card.json"))

    def save(self, model_id: str, state_dict: dict, masks: dict, card: dict) -> None:
        folder = self.folder(model_id)
        atomic_write_bytes(
            folder / "model.pt", lambda fh: torch.save({"state_dict": state_dict, "masks": masks}, fh)
        )
        atomic_write_json(folder / "card.json", card)
        if self.remote is not None:
            self.remote.commit_files("models", model_id, {n: folder / n for n in MODEL_FILES})

    def _local(self, model_id: str, name: str) -> Path:
        """The model's file on this machine, copied from the object store the first time."""
        path = self.folder(model_id) / name
        committed = self.remote.committed("models", model_id) if self.remote else None
        if committed is not None and not path.is_file():
            data = self.remote.read_bytes(committed[name])
            atomic_write_bytes(path, lambda fh: fh.write(data))
        return path

    def load_weights(self, model_id: str) -> tuple[dict, dict]:
        state = load_state(self._local(model_id, "model.pt"))
        if "state_dict" not in state:
            raise CheckpointError(f"checkpoint: {self.folder(model_id) / 'model.pt'} has no state_dict")
        return state["state_dict"], state.get("masks", {})

    def load_model(self, model_id: str, image_shape, num_classes: int) -> torch.nn.Module:
        """The stored model with its masks applied (models stored before the published layout
        are renamed by position; trainables/checkpoints.py)."""
        from apgrid.trainables.checkpoints import fit
        from apgrid.trainables.masks import apply_masks
        from apgrid.trainables.models import build_model

        arch = self.card(model_id)["arch"]
        channels = image_shape[0]
        model = build_model(arch, channels, num_classes, [0.0] * channels, [1.0] * channels)
        state, masks = self.load_weights(model_id)
        masks = fit(model, state, masks, str(self.folder(model_id) / "model.pt"), arch)
        apply_masks(model, masks)
        return model

    def card(self, model_id: str) -> dict:
        return json.loads(self._local(model_id, "card.json").read_text())


class SampleStore:
    """Partitions in OUTPUT/samples; with `remote` the committed partitions live on object storage
    (grid/objectstore.py) and the shards are staged in the local folder."""

    def __init__(self, output: Path, grid_name: str, remote: ObjectResults | None = None):
        self.root = Path(output) / "samples"
        self.grid = grid_name
        self.remote = remote

    def partition(self, model_id: str) -> Path:
        return self.root / f"grid={self.grid}" / f"model_id={model_id}"

    def staging(self, model_id: str) -> Path:
        return self.root / "_staging" / model_id

    def shard_path(self, model_id: str, start: int, end: int) -> Path:
        return self.staging(model_id) / f"shard-{start:07d}-{end:07d}.parquet"

    def is_done(self, model_id: str) -> bool:
        if self.remote is not None:
            return self.remote.committed("samples", model_id) is not None
        return (self.partition(model_id) / "part-0.parquet").is_file()

    def read(self, model_id: str) -> pd.DataFrame:
        if self.remote is not None:
            return self.remote.open_samples().rows(model_id)
        return read_partition(
            self.partition(model_id) / "part-0.parquet", {"grid": self.grid, "model_id": model_id}
        )

    def shard_done(self, model_id: str, start: int, end: int) -> bool:
        return self.shard_path(model_id, start, end).is_file()

    def write_shard(self, model_id: str, start: int, end: int, rows: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(rows, preserve_index=False)
        atomic_write_bytes(self.shard_path(model_id, start, end), lambda fh: pq.write_table(table, fh))

    def recorded_batch_sizes(self) -> dict[str, int]:
        """{arch: eval_batch_size} from the rows already written (merged or staged), so a resumed
        grid keeps the batch size its first run chose (it seeds AutoAttack)."""
        files = [
            *self.root.glob(f"grid={self.grid}/model_id=*/part-0.parquet"),
            *self.root.glob("_staging/*/shard-*.parquet"),
        ]
        sizes = {}
        for f in files:
            schema = pq.read_schema(f)
            if "eval_batch_size" in schema.names and "arch" in schema.names:
                row = pq.read_table(f, columns=["arch", "eval_batch_size"]).slice(0, 1).to_pylist()
                if row:
                    sizes.setdefault(row[0]["arch"], int(row[0]["eval_batch_size"]))
        return sizes

    def finalize(self, model_id: str, ranges: list[tuple[int, int]]) -> pd.DataFrame:
        """Merge the shards by sample index into the model's partition; check none is missing."""
        frames = [pq.read_table(self.shard_path(model_id, s, e)).to_pandas() for s, e in ranges]
        rows = pd.concat(frames, ignore_index=True).sort_values("sample_idx", ignore_index=True)
        expected = sum(e - s for s, e in ranges)
        if len(rows) != expected or rows["sample_idx"].duplicated().any():
            raise RuntimeError(f"{model_id}: merged {len(rows)} rows for {expected} samples")
        table = _file_table(rows)
        part = self.partition(model_id) / "part-0.parquet"
        atomic_write_bytes(part, lambda fh: pq.write_table(table, fh))
        if self.remote is not None:
            self.remote.commit_files("samples", model_id, {"part.parquet": part})
        shutil.rmtree(self.staging(model_id), ignore_errors=True)
        return rows  # the shards' rows hold the partition keys too: no need to read the file back


def partition_files(output: Path) -> list[tuple[str, str, Path]]:
    """(grid, model_id, file) of every merged partition of a grid's output folder, sorted."""
    files = sorted((Path(output) / "samples").glob("grid=*/model_id=*/part-0.parquet"))
    return [
        (f.parent.parent.name.removeprefix("grid="), f.parent.name.removeprefix("model_id="), f)
        for f in files
    ]


def read_samples(output: Path) -> pd.DataFrame:
    """Every per-sample row of a grid's output folder (hive partitions grid=/model_id=), with the
    partition keys as plain string columns: one DataFrame (open_samples reads a model at a time)."""
    files = partition_files(output)
    if not files:
        return pd.DataFrame()
    return pd.concat(
        [read_partition(f, {"grid": grid, "model_id": model_id}) for grid, model_id, f in files],
        ignore_index=True,
    )


def open_samples(output: Path) -> PartitionedSamples:
    """The per-sample rows of a grid's output folder, read one model's partition at a time (what
    the analysis reads: its memory does not grow with the number of models)."""
    return PartitionedSamples(partition_files(output))
