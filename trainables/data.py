"""Datasets as plain tensors: images in [0, 1], shape (N, C, H, W), integer labels.

digits (scikit-learn, shipped in the package) is the embedded default; CIFAR-10 is read from the
official binary release (`cifar-10-batches-bin/`) or from torchvision's layout (`cifar-10-batches-py/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


class DatasetError(ValueError):
    """The dataset cannot be found or read; the message names the path."""


def load_dataset(name: str, root: str | None = None, download: bool = False) -> Dataset:
    loaders = {"digits": lambda: load_digits(), "cifar10": lambda: load_cifar10(root, download)}
    if name not in loaders:
        raise DatasetError(f"dataset: unknown '{name}'; allowed: {', '.join(sorted(loaders))}")
    return loaders[name]()


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # pixel values are 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, bunch.target, test_size=DIGITS_TEST_SIZE, stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED)
    return _from_numpy("digits", x_tr, y_tr, x_te, y_te, num_classes=10)


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def load_cifar10(root: str | None, download: bool = False) -> Dataset:
    if root is None:
        raise DatasetError("dataset.root: CIFAR-10 needs a folder holding cifar-10-batches-bin/ "
                           "or cifar-10-batches-py/")
    root_path = Path(root).expanduser()
    if (root_path / "cifar-10-batches-bin").is_dir():
        x_tr, y_tr, x_te, y_te = _read_cifar10_binary(root_path / "cifar-10-batches-bin")
    elif (root_path / "cifar-10-batches-py").is_dir() or download:
        x_tr, y_tr, x_te, y_te = _read_cifar10_torchvision(root_path, download)
    else:
        raise DatasetError(f"dataset.root: no cifar-10-batches-bin/ or cifar-10-batches-py/ in "
                           f"{root_path} (fetch it, or set dataset.download: true)")
    ds = _from_numpy("cifar10", x_tr, y_tr, x_te, y_te, num_classes=10)
    return Dataset(**{**ds.__dict__, "mean": CIFAR10_MEAN, "std": CIFAR10_STD})


def _read_cifar10_binary(folder: Path):
    """Official binary layout: records of 1 label byte + 3,072 pixel bytes (R, G, B planes)."""
    def read(files):
        raw = []
        for name in files:
            path = folder / name
            if not path.is_file():
                raise DatasetError(f"dataset.root: missing {path}")
            data = np.fromfile(path, dtype=np.uint8)
            if data.size % 3073:
                raise DatasetError(f"dataset.root: {path} is truncated ({data.size} bytes)")
            raw.append(data.reshape(-1, 3073))
        records = np.concatenate(raw)
        images = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        return images, records[:, 0].astype(np.int64)

    x_tr, y_tr = read([f"data_batch_{i}.bin" for i in range(1, 6)])
    x_te, y_te = read(["test_batch.bin"])
    return x_tr, y_tr, x_te, y_te


def _read_cifar10_torchvision(root: Path, download: bool):
    from torchvision.datasets import CIFAR10

    def read(train):
        ds = CIFAR10(str(root), train=train, download=download)
        images = ds.data.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # NHWC uint8 -> NCHW
        return images, np.asarray(ds.targets, dtype=np.int64)

    return (*read(True), *read(False))


def _from_numpy(name, x_tr, y_tr, x_te, y_te, num_classes) -> Dataset:
    x_train = torch.from_numpy(np.ascontiguousarray(x_tr))
    mean = tuple(float(m) for m in x_train.mean(dim=(0, 2, 3)))
    std = tuple(float(s) for s in x_train.std(dim=(0, 2, 3)))
    return Dataset(
        name=name, x_train=x_train, y_train=torch.as_tensor(y_tr, dtype=torch.long),
        x_test=torch.from_numpy(np.ascontiguousarray(x_te)),
        y_test=torch.as_tensor(y_te, dtype=torch.long),
        num_classes=num_classes, mean=mean, std=std)
