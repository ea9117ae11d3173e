"""A dataset root on object storage, fetched once per node into a local cache.

`dataset.root` may be a local or shared-volume folder, or a URI that pyarrow's filesystems read
(`s3://bucket/cifar10`, `gs://...`, `hdfs://...`; S3 options in the URI's query, e.g.
`?endpoint_override=host:9000&scheme=http`, credentials from the environment). Every trial and
evaluation actor of a node loads the dataset; the first copies the folder into
`$APGRID_DATA_CACHE` (default `~/.cache/apgrid/datasets`) under a lock, checks the official files
against their published MD5s, and marks the copy complete; the others wait for it and read the
copy. A copy is never used half-written: it is written beside its final name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from apgrid.errors import ApgridError, short_reason

# The official releases' files (cifar-10-batches-bin: shared/scripts/fetch-cifar10; the others:
# torchvision.datasets' CIFAR10.train_list/test_list, CIFAR100.train_list/test_list, SVHN.split_list)
OFFICIAL_MD5 = {
    "cifar-10-batches-bin/data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "cifar-10-batches-bin/data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "cifar-10-batches-bin/data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "cifar-10-batches-bin/data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "cifar-10-batches-bin/data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "cifar-10-batches-bin/test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}
COMPLETE = ".apgrid-complete.json"  # written last: its presence means the copy is whole


class DataCacheError(ApgridError, ValueError):
    """A remote dataset root that cannot be read or does not check out; names the URI."""


def is_uri(root: str | None) -> bool:
    return bool(root) and "://" in str(root) and not str(root).startswith("file://")


def cache_dir() -> Path:
    return Path(os.environ.get("APGRID_DATA_CACHE", "~/.cache/apgrid/datasets")).expanduser()


def local_root(root: str | None) -> str | None:
    """`root` itself when it is a path; for a URI, its local copy (fetched first if need be)."""
    if not is_uri(root):
        return root
    from filelock import FileLock

    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    target = cache_dir() / key
    if (target / COMPLETE).is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / COMPLETE).is_file():  # another process of this node may have finished it
            fetch(str(root), target)
    return str(target)


def _filesystem(uri: str):
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as exc:  # an unknown scheme, a malformed URI
        raise DataCacheError(f"dataset.root: cannot open {uri} ({short_reason(exc)})") from None


def fetch(uri: str, target: Path) -> None:
    """Copy every file under `uri` into `target`, check the official files' MD5s, then mark it
    complete; the copy is written in a sibling folder and renamed into place."""
    from pyarrow import fs

    filesystem, base = _filesystem(uri)
    try:
        infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True))
    except Exception as exc:
        raise DataCacheError(f"dataset.root: cannot list {uri} ({short_reason(exc)})") from None
    files = [i for i in infos if i.type == fs.FileType.File]
    if not files:
        raise DataCacheError(f"dataset.root: {uri} holds no files")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    digests = {}
    for info in files:
        relative = info.path[len(base) :].lstrip("/")
        out = partial / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        digests[relative] = _copy(filesystem, info.path, out, uri)
    wrong = [r for r, (md5, _) in digests.items() if r in OFFICIAL_MD5 and OFFICIAL_MD5[r] != md5]
    if wrong:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataCacheError(
            f"dataset.root: {uri} has files that differ from the official release "
            f"({', '.join(sorted(wrong))}: MD5 mismatch); re-upload them"
        )
    record = {"uri": uri, "files": {r: {"md5": m, "bytes": n} for r, (m, n) in digests.items()}}
    (partial / COMPLETE).write_text(json.dumps(record, indent=1, sort_keys=True))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


def _copy(filesystem, path: str, out: Path, uri: str) -> tuple[str, int]:
    """Stream one object to `out`; its MD5 and size."""
    md5, size = hashlib.md5(usedforsecurity=False), 0
    try:
        with filesystem.open_input_stream(path) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 22):
                md5.update(chunk)
                dst.write(chunk)
                size += len(chunk)
    except OSError as exc:
        raise DataCacheError(f"dataset.root: cannot read {uri} ({short_reason(exc)})") from None
    return md5.hexdigest(), size
