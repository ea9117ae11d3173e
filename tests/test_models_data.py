"""Architectures (parameter counts against the published CIFAR-variant values), structured-pruned
models reloaded from a plain state dict, datasets read from small files in the real formats."""

import pickle

import numpy as np
import pytest
import torch

from apgrid.trainables import data, masks
from apgrid.trainables.methods import filters
from apgrid.trainables.models import ARCHITECTURES, build_model, fit_to_state, parameter_count

# Published / reference counts for 10 classes (kuangliu/pytorch-cifar variants; WRN-28-10 from
# Zagoruyko & Komodakis 2016, 36.5M).
KNOWN = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "vgg16": 14_728_266,
    "vgg19": 20_040_522,
    "wrn-28-10": 36_479_194,
    "densenet121": 6_956_298,
    "mobilenetv1": 3_217_226,
}


@pytest.mark.parametrize("arch", sorted(KNOWN))
def test_parameter_counts_match_the_reference(arch):
    with torch.device("meta"):
        model = ARCHITECTURES[arch](3, 10)
    assert parameter_count(model) == KNOWN[arch]


def test_wrn_28_4_is_the_5_8m_model():
    with torch.device("meta"):
        assert parameter_count(ARCHITECTURES["wrn-28-4"](3, 10)) == pytest.approx(5.85e6, rel=0.01)


def test_cifar_tiny_is_cifar_small_without_pooling():
    """Same weights (156,298), stride-2 convolutions instead of max-pooling."""
    tiny, small = ARCHITECTURES["cifar-tiny"](3, 10), ARCHITECTURES["cifar-small"](3, 10)
    assert parameter_count(tiny) == parameter_count(small) == 156_298
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in tiny.modules())
    assert tiny(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv1", "densenet121", "wrn-28-4"])
def test_filter_pruned_model_reloads_from_plain_state_dict(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3, 10, (0.5,) * 3, (0.25,) * 3).eval()
    original = masks.filter_counts(model)
    filters.prune_filters(model, "fpgm", 0.5, original, torch.rand(1, 3, 32, 32))
    assert parameter_count(model) < 0.4 * parameter_count(build_model(arch, 3, 10, (0,) * 3, (1,) * 3))
    fresh = build_model(arch, 3, 10, (0.5,) * 3, (0.25,) * 3)
    fresh.load_state_dict(fit_to_state(fresh, model.state_dict()).state_dict())
    fresh.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(fresh.eval()(x), model(x), atol=1e-5)


def fake_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def test_cifar100_binary_and_python_layouts_agree(tmp_path):
    images, fine = fake_images(30, 0), np.arange(30) % 100
    coarse = fine // 5
    (tmp_path / "bin" / "cifar-100-binary").mkdir(parents=True)
    for split in ("train", "test"):
        records = np.concatenate([coarse[:, None], fine[:, None], images.reshape(30, -1)], axis=1)
        records.astype(np.uint8).tofile(tmp_path / "bin" / "cifar-100-binary" / f"{split}.bin")
    (tmp_path / "py" / "cifar-100-python").mkdir(parents=True)
    for split in ("train", "test"):
        with open(tmp_path / "py" / "cifar-100-python" / split, "wb") as fh:
            pickle.dump(
                {
                    "data": images.reshape(30, -1),
                    "fine_labels": fine.tolist(),
                    "coarse_labels": coarse.tolist(),
                },
                fh,
            )
    a = data.load_dataset("cifar100", str(tmp_path / "bin"))
    b = data.load_dataset("cifar100", str(tmp_path / "py"))
    assert a.num_classes == 100 and a.image_shape == (3, 32, 32)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.y_test, torch.as_tensor(fine))
    assert torch.equal(a.x_test[3], torch.as_tensor(images[3] / 255.0, dtype=torch.float32))


def test_svhn_mat_layout(tmp_path):
    from scipy.io import savemat

    images = fake_images(12, 1)
    labels = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1])  # SVHN stores digit 0 as 10
    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": labels[:, None]})
    ds = data.load_dataset("svhn", str(tmp_path))
    assert ds.y_test.tolist()[:3] == [0, 1, 2]
    assert torch.equal(ds.x_train[5], torch.as_tensor(images[5] / 255.0, dtype=torch.float32))


def test_cifar10_torchvision_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = fake_images(10, 2)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": images.reshape(10, -1), "labels": list(range(10))}, fh)
    ds = data.load_dataset("cifar10", str(tmp_path))
    assert len(ds.y_train) == 50 and len(ds.y_test) == 10
    assert torch.equal(ds.x_test[7], torch.as_tensor(images[7] / 255.0, dtype=torch.float32))


def test_truncated_and_missing_files_are_named(tmp_path):
    (tmp_path / "cifar-100-binary").mkdir()
    (tmp_path / "cifar-100-binary" / "train.bin").write_bytes(b"\0" * 100)
    with pytest.raises(data.DatasetError, match="train.bin is truncated"):
        data.load_dataset("cifar100", str(tmp_path))
    with pytest.raises(data.DatasetError, match="train_32x32.mat"):
        data.load_dataset("svhn", str(tmp_path))


def test_every_dataset_states_its_conventions():
    for info in data.DATASETS.values():
        assert info.num_classes >= 10 and len(info.image_shape) == 3 and "Linf" in info.eps_conventions
