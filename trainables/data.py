"""Datasets as plain tensors: images in [0, 1], shape (N, C, H, W), integer labels.

digits (scikit-learn, shipped in the package) is the embedded default. CIFAR-10 and CIFAR-100 are
read from the official binary releases (`cifar-10-batches-bin/`, `cifar-100-binary/`) or from
torchvision's layouts (`cifar-10-batches-py/`, `cifar-100-python/`); SVHN from torchvision's
`train_32x32.mat` / `test_32x32.mat`. `download: true` fetches through torchvision. The files are
parsed here rather than by torchvision's classes, which refuse any file whose MD5 differs (so the
tests can use small files in the real formats).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from apgrid.errors import ApgridError
from apgrid.trainables.datacache import local_root

DIGITS_TEST_SIZE = 360  # fixed stratified split: 1,437 train / 360 test
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, used by the normalisation layer inside the model
    std: tuple[float, ...]
    x_val: torch.Tensor | None = None  # held out of the training set (with_validation)
    y_val: torch.Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


class DatasetError(ApgridError, ValueError):
    """The dataset cannot be found or read; the message names the path."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a researcher needs to know before choosing ε: classes, image size, conventions."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    eps_conventions: str
    augment: str  # the references' training augmentation (a recipe's default)
    test_size: int  # samples in the test split
    train_size: int  # samples in the training split (before a validation split is held out)


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "digits",
            10,
            (1, 8, 8),
            "Linf 0.1 (apgrid demo; pixels scaled from 0..16 to [0, 1])",
            "none",
            360,
            1437,
        ),
        DatasetInfo(
            "cifar10", 10, (3, 32, 32), "Linf 8/255 (all three papers), L2 0.5", "crop-flip", 10_000, 50_000
        ),
        DatasetInfo(
            "cifar100",
            100,
            (3, 32, 32),
            "Linf 8/255 (compressed-models paper), L2 0.5",
            "crop-flip",
            10_000,
            50_000,
        ),
        # digits are not mirror-symmetric: SVHN trains with crops only
        DatasetInfo(
            "svhn", 10, (3, 32, 32), "Linf 8/255 (survey; HYDRA trains SVHN at 8/255)", "crop", 26_032, 73_257
        ),
    )
}


def load_dataset(name: str, root: str | None = None, download: bool = False) -> Dataset:
    """`root`: a folder, or an object-store URI whose local copy is made once per node
    (trainables/datacache.py)."""
    if name != "digits":
        root = local_root(root)
    loaders = {
        "digits": lambda: load_digits(),
        "cifar10": lambda: load_cifar10(root, download),
        "cifar100": lambda: load_cifar100(root, download),
        "svhn": lambda: load_svhn(root, download),
    }
    if name not in loaders:
        raise DatasetError(f"dataset: unknown '{name}'; allowed: {', '.join(sorted(loaders))}")
    return loaders[name]()


VALIDATION_SPLIT_SEED = 0  # one split for every model of every grid: models compare on equal data


def with_validation(ds: Dataset, size: int) -> Dataset:
    """The dataset with `size` training samples held out as a validation split (a fixed seeded
    draw), for model selection and the catastrophic-overfitting check; never the test set."""
    if size <= 0:
        return ds
    if size >= len(ds.y_train):
        raise DatasetError(
            f"dataset.validation: {size} is not below the {len(ds.y_train)} training samples of {ds.name}"
        )
    order = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(VALIDATION_SPLIT_SEED))
    val, train = order[:size].sort().values, order[size:].sort().values
    return Dataset(
        **{
            **ds.__dict__,
            "x_train": ds.x_train[train],
            "y_train": ds.y_train[train],
            "x_val": ds.x_train[val],
            "y_val": ds.y_train[val],
        }
    )


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # pixel values are 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        images,
        bunch.target,
        test_size=DIGITS_TEST_SIZE,
        stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    return _from_numpy("digits", x_tr, y_tr, x_te, y_te, num_classes=10)


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def load_cifar10(root: str | None, download: bool = False) -> Dataset:
    if root is None:
        raise DatasetError(
            "dataset.root: CIFAR-10 needs a folder holding cifar-10-batches-bin/ or cifar-10-batches-py/"
        )
    root_path = Path(root).expanduser()
    if (root_path / "cifar-10-batches-bin").is_dir():
        x_tr, y_tr, x_te, y_te = _read_cifar10_binary(root_path / "cifar-10-batches-bin")
    elif (root_path / "cifar-10-batches-py").is_dir() or download:
        x_tr, y_tr, x_te, y_te = _read_cifar10_torchvision(root_path, download)
    else:
        raise DatasetError(
            f"dataset.root: no cifar-10-batches-bin/ or cifar-10-batches-py/ in "
            f"{root_path} (fetch it, or set dataset.download: true)"
        )
    ds = _from_numpy("cifar10", x_tr, y_tr, x_te, y_te, num_classes=10)
    return Dataset(**{**ds.__dict__, "mean": CIFAR10_MEAN, "std": CIFAR10_STD})


def _read_cifar10_binary(folder: Path):
    """Official binary layout: records of 1 label byte + 3,072 pixel bytes (R, G, B planes)."""
    train = [_read_records(folder / f"data_batch_{i}.bin", label_bytes=1) for i in range(1, 6)]
    x_te, y_te = _read_records(folder / "test_batch.bin", label_bytes=1)
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_te, y_te)


def _require_root(name: str, root: str | None, download: bool) -> Path:
    if root is None:
        raise DatasetError(f"dataset.root: {name} needs a folder holding its files")
    path = Path(root).expanduser()
    if download:
        path.mkdir(parents=True, exist_ok=True)
    return path


def load_cifar100(root: str | None, download: bool = False) -> Dataset:
    """CIFAR-100 with its 100 fine labels."""
    root_path = _require_root("cifar100", root, download)
    if (root_path / "cifar-100-binary").is_dir():
        folder = root_path / "cifar-100-binary"
        x_tr, y_tr = _read_records(folder / "train.bin", label_bytes=2)
        x_te, y_te = _read_records(folder / "test.bin", label_bytes=2)
    else:
        if not (root_path / "cifar-100-python").is_dir():
            if not download:
                raise DatasetError(
                    f"dataset.root: no cifar-100-binary/ or cifar-100-python/ in "
                    f"{root_path} (fetch it, or set dataset.download: true)"
                )
            from torchvision.datasets import CIFAR100

            _download(lambda: CIFAR100(str(root_path), download=True), "cifar100", root_path)
        x_tr, y_tr = _read_cifar_pickle(root_path / "cifar-100-python" / "train", "fine_labels")
        x_te, y_te = _read_cifar_pickle(root_path / "cifar-100-python" / "test", "fine_labels")
    ds = _from_numpy("cifar100", x_tr, y_tr, x_te, y_te, num_classes=100)
    return ds


def _read_records(path: Path, label_bytes: int):
    """Binary CIFAR records: label byte(s) then 3,072 pixel bytes; CIFAR-100 stores
    (coarse, fine) labels and apgrid uses the fine one."""
    if not path.is_file():
        raise DatasetError(f"dataset.root: missing {path}")
    size = label_bytes + 3072
    data = np.fromfile(path, dtype=np.uint8)
    if data.size % size:
        raise DatasetError(f"dataset.root: {path} is truncated ({data.size} bytes)")
    records = data.reshape(-1, size)
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32)  # uint8: _from_numpy scales it once
    return images, records[:, label_bytes - 1].astype(np.int64)


def _read_cifar_pickle(path: Path, label_key: str):
    """torchvision's python layout (the official pickle files; trusted data, as torchvision does)."""
    import pickle

    if not path.is_file():
        raise DatasetError(f"dataset.root: missing {path}")
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except Exception as exc:
        raise DatasetError(f"dataset.root: {path} is not a CIFAR pickle ({type(exc).__name__})") from None
    return images, labels  # uint8: _from_numpy scales it once


def load_svhn(root: str | None, download: bool = False) -> Dataset:
    """SVHN cropped digits (train split only, as the survey and HYDRA use it); label 10 means 0."""
    from scipy.io import loadmat

    root_path = _require_root("svhn", root, download)

    def read(split):
        path = root_path / f"{split}_32x32.mat"
        if not path.is_file():
            if not download:
                raise DatasetError(f"dataset.root: missing {path} (fetch it, or set dataset.download: true)")
            from torchvision.datasets import SVHN

            _download(lambda: SVHN(str(root_path), split=split, download=True), "svhn", root_path)
        try:
            mat = loadmat(str(path))
            images = np.transpose(mat["X"], (3, 2, 0, 1))  # HWCN -> NCHW, uint8
            labels = mat["y"].astype(np.int64).reshape(-1) % 10
        except Exception as exc:
            raise DatasetError(
                f"dataset.root: {path} is not an SVHN .mat file ({type(exc).__name__})"
            ) from None
        return images, labels

    return _from_numpy("svhn", *read("train"), *read("test"), num_classes=10)


def _read_cifar10_torchvision(root: Path, download: bool):
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir():
        from torchvision.datasets import CIFAR10

        root.mkdir(parents=True, exist_ok=True)
        _download(lambda: CIFAR10(str(root), download=download), "cifar10", root)
    train = [_read_cifar_pickle(folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
    x_te, y_te = _read_cifar_pickle(folder / "test_batch", "labels")
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_te, y_te)


def _download(fetch, name: str, root: Path) -> None:
    """torchvision's download, its failures (no network, a refused or truncated file) as one line."""
    try:
        fetch()
    except Exception as exc:
        from apgrid.errors import short_reason

        raise DatasetError(
            f"dataset.download: {name} could not be downloaded into {root} "
            f"({short_reason(exc)}); fetch it on a machine with a network and "
            f"point dataset.root at it"
        ) from None


def _images(x: np.ndarray) -> torch.Tensor:
    """Float images in [0, 1]; 8-bit pixels are converted once, in place (a CIFAR-10 training set
    is 150 MB of bytes and 614 MB of floats: no intermediate float copies)."""
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    return torch.from_numpy(np.ascontiguousarray(x))


def _from_numpy(name, x_tr, y_tr, x_te, y_te, num_classes) -> Dataset:
    x_train = _images(x_tr)
    mean = tuple(float(m) for m in x_train.mean(dim=(0, 2, 3)))
    std = tuple(
        float(x_train[:, c].std()) for c in range(x_train.shape[1])
    )  # one channel's temporaries at a time
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=torch.as_tensor(y_tr, dtype=torch.long),
        x_test=_images(x_te),
        y_test=torch.as_tensor(y_te, dtype=torch.long),
        num_classes=num_classes,
        mean=mean,
        std=std,
    )
