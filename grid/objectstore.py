"""A grid's durable results under an object-store URI (s3://bucket/runs/x), exactly once without
rename: object stores have no atomic rename, and a killed writer may leave half its objects.

    URI/samples/grid=<g>/model_id=<id>/part-<attempt>-<uuid>.parquet   one attempt's rows
    URI/models/<id>/{model,card}-<attempt>-<uuid>.{pt,json}            its model and card
    URI/_manifests/<kind>/<id>.json                                    written last: committed

Every object is written under a name no other attempt uses, then the model's manifest (a small
JSON object listing its committed objects) is written last. Readers read only what a manifest
lists, so a killed attempt's objects are never read; a resumed grid skips every model whose
manifest exists and overwrites nothing. Two attempts racing to commit one model each list only
their own objects: the last manifest wins whole, never a mix, so no row is read twice.

The URI follows dataset roots' conventions (trainables/datacache.py): pyarrow's
FileSystem.from_uri, S3 options in the URI's query (`?endpoint_override=host:9000&scheme=http`),
credentials from the environment. No Ray, no MLflow, no torch.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd

from apgrid.analysis.samples import PartitionedSamples
from apgrid.errors import short_reason
from apgrid.trainables.fields import FieldError, output_folder, remote_output

KINDS = ("samples", "models")


class ObjectResults:
    """The committed results under one URI (see the module's docstring)."""

    def __init__(self, uri: str, grid: str):
        from pyarrow import fs

        try:
            self.fs, base = fs.FileSystem.from_uri(uri)
        except Exception as exc:  # an unknown scheme, a malformed URI
            raise FieldError(f"output: cannot open {uri} ({short_reason(exc)})") from None
        self.base, self.uri, self.grid = base.rstrip("/"), uri, grid

    # -- writing -------------------------------------------------------------------------------

    def _folder(self, kind: str, model_id: str) -> str:
        if kind == "samples":
            return f"samples/grid={self.grid}/model_id={model_id}"
        return f"models/{model_id}"

    def put(self, kind: str, model_id: str, name: str, data: bytes, attempt: int = 0) -> str:
        """One of a model's objects (`name`: part.parquet, model.pt, card.json) under a name no
        other attempt uses; its key relative to the URI. Not read until committed."""
        stem, _, ext = name.rpartition(".")
        key = f"{self._folder(kind, model_id)}/{stem}-{attempt}-{uuid.uuid4().hex[:12]}.{ext}"
        with self.fs.open_output_stream(f"{self.base}/{key}") as out:
            out.write(data)
        return key

    def commit_files(self, kind: str, model_id: str, files: dict[str, Path], attempt: int = 0) -> bool:
        """Upload a model's local files and commit them; False, nothing written, when the model
        is already committed."""
        if self.committed(kind, model_id) is not None:
            return False
        objects = {n: self.put(kind, model_id, n, Path(f).read_bytes(), attempt) for n, f in files.items()}
        return self.commit(kind, model_id, objects)

    def commit(self, kind: str, model_id: str, objects: dict[str, str]) -> bool:
        """Write the model's manifest listing `objects` ({role: relative key}); False, and nothing
        written, when the model is already committed (a resumed or duplicated attempt)."""
        if self.committed(kind, model_id) is not None:
            return False
        record = json.dumps({"model_id": model_id, "objects": objects}, sort_keys=True).encode()
        with self.fs.open_output_stream(self._manifest(kind, model_id)) as out:
            out.write(record)
        return True

    # -- reading -------------------------------------------------------------------------------

    def _manifest(self, kind: str, model_id: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"manifest kind {kind!r}; kinds: {', '.join(KINDS)}")
        return f"{self.base}/_manifests/{kind}/{model_id}.json"

    def committed(self, kind: str, model_id: str) -> dict[str, str] | None:
        """The committed objects of a model ({role: relative key}), None if not committed."""
        from pyarrow import fs

        key = self._manifest(kind, model_id)
        if self.fs.get_file_info(key).type != fs.FileType.File:
            return None
        with self.fs.open_input_stream(key) as stream:
            return json.loads(stream.read())["objects"]

    def committed_models(self, kind: str) -> list[str]:
        from pyarrow import fs

        folder = f"{self.base}/_manifests/{kind}"
        infos = self.fs.get_file_info(fs.FileSelector(folder, allow_not_found=True))
        return sorted(i.base_name.removesuffix(".json") for i in infos if i.type == fs.FileType.File)

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(f"{self.base}/{relative}") as stream:
            return stream.read()

    def open_samples(self) -> PartitionedSamples:
        """The committed per-sample rows, one model's partition at a time (as
        apgrid.grid.store.open_samples reads a local folder)."""
        files = [
            (self.grid, model_id, f"{self.base}/{key}")
            for model_id in self.committed_models("samples")
            for key in self.committed("samples", model_id).values()
        ]
        return PartitionedSamples(files, filesystem=self.fs)

    def read_samples(self) -> pd.DataFrame:
        samples = self.open_samples()
        frames = [rows for _, rows in samples.each()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# The grid's state (grid.json) and validated spec (spec.yaml): small objects rewritten in place
# (an object PUT replaces the whole object or nothing), mirrored from the local working folder.
STATE_FILES = ("spec.yaml", "grid.json")  # grid.json last: its presence means both


def remote_results(output: str, grid: str) -> ObjectResults | None:
    """The object store a grid's `output` names, None for a local folder."""
    return ObjectResults(output, grid) if remote_output(output) else None


def push_state(output: str, workdir: Path) -> None:
    """Copy the working folder's grid.json and spec.yaml to an object-store output."""
    if not remote_output(output):
        return
    remote = ObjectResults(output, "")
    for name in STATE_FILES:
        if (workdir / name).is_file():
            with remote.fs.open_output_stream(f"{remote.base}/{name}") as out:
                out.write((workdir / name).read_bytes())


def pull_state(output: str, workdir: Path) -> None:
    """A grid on object storage opened on a machine whose working folder lacks it: its grid.json
    and spec.yaml, fetched (when the store holds them)."""
    from pyarrow import fs

    if not remote_output(output) or (workdir / "grid.json").is_file():
        return
    remote = ObjectResults(output, "")
    for name in STATE_FILES:
        key = f"{remote.base}/{name}"
        if remote.fs.get_file_info(key).type == fs.FileType.File:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / name).write_bytes(remote.read_bytes(name))


def grid_folder(output: str | Path) -> Path:
    """The local folder of the grid at `output`: the folder itself, or for an s3:// URI its
    working folder, holding the grid's state fetched from the store if it lacked it."""
    folder = output_folder(output)
    if remote_output(output):
        pull_state(str(output), folder)
    return folder
