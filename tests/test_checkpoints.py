"""Published checkpoints load as they are: state dicts built here in the layouts the AP codebases
and RobustBench publish (the key names and shapes are facts; the weights are random), in every
container form, and HYDRA's popup_scores; a mismatch says why in one line."""

import pytest
import torch
from torch import nn

from apgrid.trainables.checkpoints import CheckpointError, published_model
from apgrid.trainables.models import ARCHITECTURES

# Keys each codebase publishes, as facts: kuangliu/pytorch-cifar (ResNet, VGG, DenseNet, MobileNet,
# the layout HYDRA's resnet_cifar.py, R-ADMM and ATMC share), RobustBench/TRADES/HYDRA WideResNet,
# HYDRA's vgg_cifar.py vgg16_bn.
PUBLISHED_KEYS = {
    "resnet18": [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.running_mean",
        "layer4.1.bn2.weight",
        "linear.weight",
        "linear.bias",
    ],
    "resnet34": ["layer3.5.conv2.weight", "layer4.2.bn2.bias", "linear.weight"],
    "resnet50": ["layer1.0.conv3.weight", "layer1.0.shortcut.0.weight", "layer4.2.bn3.weight"],
    "vgg16": [
        "features.0.weight",
        "features.0.bias",
        "features.40.weight",
        "features.41.running_var",
        "classifier.weight",
    ],
    "vgg19": ["features.49.weight", "features.50.running_mean", "classifier.bias"],
    "vgg16-hydra": [
        "features.0.weight",
        "features.40.weight",
        "classifier.0.weight",
        "classifier.2.weight",
        "classifier.4.bias",
    ],
    "wrn-28-4": [
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.convShortcut.weight",
        "block2.layer.0.convShortcut.weight",
        "block3.layer.3.conv2.weight",
        "bn1.running_var",
        "fc.weight",
        "fc.bias",
    ],
    "wrn-28-10": ["block3.layer.3.bn2.weight", "fc.weight"],
    "densenet121": [
        "conv1.weight",
        "dense1.0.bn1.weight",
        "dense1.5.conv2.weight",
        "trans1.bn.weight",
        "trans1.conv.weight",
        "dense4.15.conv2.weight",
        "bn.weight",
        "linear.weight",
    ],
    "mobilenetv1": [
        "conv1.weight",
        "bn1.weight",
        "layers.0.conv1.weight",
        "layers.12.conv2.weight",
        "layers.12.bn2.running_var",
        "linear.weight",
    ],
}
CONTAINERS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": torch.tensor(3)},
    "model": lambda s: {"model": s},
    "net": lambda s: {"net": s, "acc": torch.tensor(0.5)},
    "dataparallel": lambda s: {f"module.{k}": v for k, v in s.items()},
}


def published(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = ARCHITECTURES[arch](3, 10)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    for name, buf in net.named_buffers():
        if name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("arch", sorted(PUBLISHED_KEYS))
def test_published_layout_loads_strictly_with_the_same_logits(arch, tmp_path):
    net = published(arch)
    state = net.state_dict()
    assert set(PUBLISHED_KEYS[arch]) <= set(state), "apgrid names its layers as published"
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
    for form, wrap in CONTAINERS.items():
        path = tmp_path / f"{form}.pt"
        torch.save(wrap(state), path)
        model, masks = published_model(path, arch, 3, 10, "none")
        assert masks == {}
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), expected, msg=f"{arch} {form}")


def test_normalization_is_the_checkpoints_not_the_datasets(tmp_path):
    net = published("resnet18")
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    x = torch.rand(2, 3, 32, 32)
    raw, _ = published_model(tmp_path / "bare.pt", "resnet18", 3, 10, "none")
    stats = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
    normalised, _ = published_model(tmp_path / "bare.pt", "resnet18", 3, 10, stats)
    with torch.no_grad():
        torch.testing.assert_close(raw.eval()(x), net(x))
        mean, std = torch.tensor(stats["mean"]).view(1, 3, 1, 1), torch.tensor(stats["std"]).view(1, 3, 1, 1)
        torch.testing.assert_close(normalised.eval()(x), net((x - mean) / std))
    with pytest.raises(CheckpointError, match="bare network: say which input normalisation"):
        published_model(tmp_path / "bare.pt", "resnet18", 3, 10, None)


def test_hydra_popup_scores_give_the_masked_model_at_the_right_sparsity(tmp_path):
    """HYDRA (models/layers.py GetSubnet): with k = 1 - sparsity kept, the int((1 - k) n)
    smallest |popup_scores| of each layer are cut; the rest of the weights are used as stored."""
    net = published("vgg16-hydra")
    state = dict(net.state_dict())
    g = torch.Generator().manual_seed(1)
    layers = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    scores = {n: torch.randn(dict(net.named_modules())[n].weight.shape, generator=g) for n in layers}
    state.update({f"{n}.popup_scores": s for n, s in scores.items()})
    torch.save({"state_dict": state}, tmp_path / "hydra.pt")
    model, masks = published_model(tmp_path / "hydra.pt", "vgg16-hydra", 3, 10, "none", sparsity=0.95)
    assert sorted(masks) == sorted(f"1.{n}" for n in layers)
    for n in layers:
        mask, s = masks[f"1.{n}"], scores[n].abs()
        assert int((mask == 0).sum()) == int((1 - (1 - 0.95)) * s.numel())
        assert s[mask == 1].min() >= s[mask == 0].max()
    with pytest.raises(CheckpointError, match="give its sparsity"):
        published_model(tmp_path / "hydra.pt", "vgg16-hydra", 3, 10, "none")


def test_the_unused_sub_block_of_tradess_wideresnet_is_dropped(tmp_path):
    net = published("wrn-28-4")
    state = {**net.state_dict(), "sub_block1.layer.0.conv1.weight": torch.zeros(64, 16, 3, 3)}
    torch.save(state, tmp_path / "trades.pt")
    model, _ = published_model(tmp_path / "trades.pt", "wrn-28-4", 3, 10, "none")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), net(x))


def test_a_mismatch_names_keys_and_the_nearest_architecture_in_one_line(tmp_path):
    torch.save(published("resnet34").state_dict(), tmp_path / "r34.pt")
    with pytest.raises(CheckpointError) as err:
        published_model(tmp_path / "r34.pt", "resnet18", 3, 10, "none")
    message = str(err.value)
    assert "\n" not in message and "does not fit architecture resnet18" in message
    assert "missing 0 keys" in message and "unexpected 96 (layer1.2.conv1.weight, " in message
    assert "nearest architecture: resnet34 (100% of keys shared)" in message


def test_vgg16_hydra_has_the_parameters_of_its_published_layer_list():
    """13 bias-free 3x3 convolutions 3-64-64-128-128-256x3-512x6 (14,710,464), their batch norms
    (8,448), and the head 2048-256-256-10 (592,906): HYDRA's vgg16_bn."""
    assert sum(p.numel() for p in ARCHITECTURES["vgg16-hydra"](3, 10).parameters()) == 15_311_818


def test_models_stored_before_the_published_layout_still_load(tmp_path):
    """An apgrid folder written before the renaming holds the same tensors under older names."""
    from apgrid.trainables.checkpoints import fit
    from apgrid.trainables.models import build_model

    model = build_model("resnet18", 3, 10, [0.5] * 3, [0.25] * 3).eval()
    old = {
        k.replace("1.layer1.", "1.layers.0.X").replace("1.layer2.", "1.layers.2.X"): v
        for k, v in model.state_dict().items()
    }
    assert set(old) != set(model.state_dict())
    fresh = build_model("resnet18", 3, 10, [0.0] * 3, [1.0] * 3).eval()
    masks = fit(fresh, old, {"1.layers.0.X0.conv1": torch.ones(64, 64, 3, 3)}, "old.pt", "resnet18")
    assert list(masks) == ["1.layer1.0.conv1"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
