"""A grid's per-sample rows, read one model at a time.

The report reads its rows through `Samples`: one model's rows (or a dense model's and a pruned
one's) at a time, only the columns a step needs, so that it holds per-model summaries and never
the whole grid, however many models it has. Two sources: rows already in a DataFrame
(`FrameSamples`: the Python API, tests) and a hive-partitioned Parquet folder with one model's rows
a partition (`PartitionedSamples`: what `apgrid analyze` reads, apgrid.grid.store.open_samples).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

PARTITION_KEYS = ("grid", "model_id")  # folder names grid=<g>/model_id=<id>, not file columns


class Samples:
    """Per-sample rows of several models: `model_ids` in the order the rows hold them, each
    model's rows on demand, and each model's first row (its identity: role, arch, method, ...;
    constant over a model's rows), kept once read."""

    def __init__(self, model_ids: Sequence[str]):
        self.model_ids = list(model_ids)
        self._first: dict[str, pd.Series] = {}

    def _read(self, model_id: str, columns: Sequence[str] | None) -> pd.DataFrame:
        raise NotImplementedError

    def rows(self, model_id: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One model's rows: every column, or those of `columns` it has."""
        rows = self._read(model_id, columns)
        if columns is None and len(rows):
            self._first[model_id] = rows.iloc[0]
        return rows

    def first(self, model_id: str) -> pd.Series:
        """The model's first row, every column."""
        if model_id not in self._first:
            self.rows(model_id)
        return self._first[model_id]

    def remember_first(self, model_id: str, first: pd.Series) -> None:
        """Keep a first row read elsewhere (by a worker process) so that first() need not read it."""
        self._first[model_id] = first

    def each(
        self, columns: Sequence[str] | None = None, model_ids=None
    ) -> Iterator[tuple[str, pd.DataFrame]]:
        for model_id in self.model_ids if model_ids is None else model_ids:
            yield model_id, self.rows(model_id, columns)

    def select(self, model_ids) -> Samples:
        """The same rows restricted to `model_ids` (kept in this source's order)."""
        keep = set(model_ids)
        view = copy.copy(self)
        view.model_ids = [m for m in self.model_ids if m in keep]
        return view

    def __len__(self) -> int:
        return len(self.model_ids)


class FrameSamples(Samples):
    """Rows already in memory, one DataFrame with a model_id column."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self._positions = frame.groupby("model_id", sort=False).indices if len(frame) else {}
        super().__init__(pd.unique(frame["model_id"]) if len(frame) else [])

    def _read(self, model_id, columns):
        rows = self.frame.iloc[self._positions[model_id]]
        if columns is None:
            return rows
        wanted = set(columns)
        return rows[[c for c in rows.columns if c in wanted]]


def read_partition(
    path: Path | str, keys: dict[str, str], columns: Sequence[str] | None = None, filesystem=None
) -> pd.DataFrame:
    """A partition file's rows with its partition keys as leading string columns (files written
    before the keys left the files, which held them as columns, read the same); `filesystem`: a
    pyarrow filesystem the path is on (an object store's), else the local one."""
    file = pq.ParquetFile(str(path), filesystem=filesystem) if filesystem else pq.ParquetFile(path)
    names = file.schema_arrow.names
    wanted = set(names if columns is None else columns)
    rows = file.read(columns=[c for c in names if c in wanted and c not in keys]).to_pandas()
    for key in reversed([k for k in keys if columns is None or k in wanted]):
        rows.insert(0, key, keys[key])
    return rows


class PartitionedSamples(Samples):
    """Parquet files, each one model's rows: [(grid, model_id, path)] in the order to read them
    (a model under two grids reads as both files' rows, as one concatenated table would); on
    `filesystem` (pyarrow's: an object store's), else local files."""

    def __init__(self, files: Sequence[tuple[str, str, Path | str]], filesystem=None):
        self.files: dict[str, list[tuple[str, Path | str]]] = {}
        self.filesystem = filesystem
        for grid, model_id, path in files:
            self.files.setdefault(model_id, []).append((grid, path if filesystem else Path(path)))
        super().__init__(self.files)

    def _read(self, model_id, columns):
        parts = [
            read_partition(path, {"grid": grid, "model_id": model_id}, columns, self.filesystem)
            for grid, path in self.files[model_id]
        ]
        return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def as_samples(samples: pd.DataFrame | Samples) -> Samples:
    return samples if isinstance(samples, Samples) else FrameSamples(samples)


def streamed_quantile(
    chunks: Callable[[], Iterable[np.ndarray]] | None,
    q: float,
    each: Callable[[Callable[[np.ndarray], object]], Iterable] | None = None,
) -> float:
    """The q-quantile of the non-negative values that `chunks()` yields (NaN left out), numpy's
    linear interpolation between two order statistics, computed in float64 without holding the
    values: a first pass counts them by their leading 24 bits (a float's order is its bits'
    order), a second keeps the values of the one or two bins that hold the two order statistics
    (bins 2^-12 of a value wide). The order statistics are exact; pandas interpolates float32
    values in float32, so its quantile of them can differ in the 8th digit. NaN when no value.
    `each(fn)`, in place of `chunks`: fn of every chunk, one at a time (e.g. from workers)."""
    if each is None:

        def each(fn):
            return (fn(values) for values in chunks())

    counts: Counter = Counter()
    for chunk_counts in each(_bit_counts):
        counts.update(chunk_counts)
    total = sum(counts.values())
    if total == 0:
        return float("nan")
    virtual = (total - 1) * q  # numpy's virtual index for "linear"
    low = int(np.floor(virtual))
    high = min(low + 1, total - 1)
    below, holding = 0, {}
    for key in sorted(counts):
        for rank in (low, high):
            if below <= rank < below + counts[key]:
                holding.setdefault(key, below)
        below += counts[key]
    picked = np.sort(np.concatenate(list(each(partial(_in_bins, bins=tuple(holding))))))
    offset = min(holding.values())
    a, b = picked[low - offset], picked[high - offset]
    gamma = virtual - low
    return float(b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma)  # numpy's _lerp


def _bit_counts(values) -> dict[int, int]:
    keys, n = np.unique(_leading_bits(_present(values)), return_counts=True)
    return dict(zip(keys.tolist(), n.tolist()))


def _in_bins(values, bins: tuple[int, ...]) -> np.ndarray:
    values = _present(values)
    return values[np.isin(_leading_bits(values), list(bins))]


def _present(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[~np.isnan(values)]


def _leading_bits(values: np.ndarray) -> np.ndarray:
    return values.view(np.uint64) >> np.uint64(40)
